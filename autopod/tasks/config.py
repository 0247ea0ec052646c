"""autopod's own settings: a first run in one command."""

from __future__ import annotations

import sys
from typing import Any

from ._base import command


@command(iterable=["gpu"], help={
    "ssh_key": "private key for pods (default: ~/.ssh/id_ed25519, else ~/.ssh/id_rsa)",
    "create_key": "create the key (ed25519, no passphrase) when it does not exist",
    "api_key_stdin": "read the RunPod API key from one line on stdin (it is never taken as an argument)",
    "volume_id": "network volume with your models, as the default for new pods",
    "gpu": "default GPU type, repeatable for the fallback order",
    "tunnel_backend": "sshtunnel (default) or openssh",
    "yes": "ask nothing, even on a terminal: flags and defaults decide",
    "json": "print one JSON document",
})
def init(c, ssh_key=None, create_key=False, api_key_stdin=False, volume_id=None, gpu=None, tunnel_backend=None,
         yes=False, json=False):
    """First run: find or create an SSH key, check the RunPod API key, write AUTOPOD_HOME/config.yaml."""
    from ..core.errors import UsageError
    from ..core.firstrun import InitAnswers, init_config
    from ..core.output import emit_outcome
    from ..core.ui import progress

    api_key = None
    if api_key_stdin:
        from ..core.files import read_line

        api_key = read_line(sys.stdin.buffer, what="--api-key-stdin").strip()
        if not api_key:
            raise UsageError("--api-key-stdin: stdin gave no key (pipe it in: `printenv KEY | autopod config.init "
                             "--api-key-stdin`)")
    answers = InitAnswers(ssh_key=ssh_key, create_key=create_key, api_key=api_key, volume_id=volume_id,
                          gpus=list(gpu or []), tunnel_backend=tunnel_backend)
    account = _Account()
    ask = _ask if sys.stdin.isatty() and not yes and not api_key_stdin else None
    outcome = init_config(answers, check_key=account.check, list_volumes=account.volumes, ask=ask, progress=progress)
    emit_outcome(outcome, as_json=json)


class _Account:
    """The RunPod calls config.init needs, with the key it was given (or the configured one)."""

    def __init__(self) -> None:
        self.api: Any = None

    def check(self, key: str | None) -> dict:
        from ..core.config import ApiCredentials, api_credentials
        from ..core.errors import AuthError
        from ..core.flags import env_setting
        from ..runpod.api import connect

        creds = api_credentials() if key is None else ApiCredentials(
            key, env_setting("RUNPOD_API_BASE_URL"), "config.init")
        self.api = connect(creds)
        user = self.api.user()
        if not user.get("id"):
            raise AuthError("RunPod accepted the request but named no account; check the API key")
        return {"id": user["id"]}

    def volumes(self) -> list[dict]:
        return self.api.list_volumes() if self.api is not None else []


def _ask(prompt: str, default: str | None, secret: bool) -> str:
    """A question on the terminal (stderr), the answer from stdin; hidden for secrets."""
    text = f"{prompt}" + (f" [{default}]" if default else "") + ": "
    if secret:
        import getpass

        return getpass.getpass(text, stream=sys.stderr)
    print(text, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        from ..core.errors import UsageError

        raise UsageError("no answer (end of input); pass the settings as flags, see `autopod --help config.init`")
    return line.rstrip("\n")

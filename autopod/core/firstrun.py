"""``config.init``: a first run in one command. Find or create an SSH key, check the RunPod API key
against the API, and write ``AUTOPOD_HOME/config.yaml``.

On a terminal it asks (the task passes an ``ask`` function); in scripts every answer comes from a
flag and nothing is asked. The API key never goes through argv: it comes from ``RUNPOD_API_KEY``,
``~/.runpod/config.toml``, one line on stdin (``--api-key-stdin``) or a hidden prompt, and a new
one is written to ``~/.runpod/config.toml`` (0600), the file the SDK and runpodctl read. The check
itself is passed in (``check_key``), so this module needs nothing from the RunPod room.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import config as _config
from .errors import AuthError, ConfigError, UsageError
from .files import MAX_SMALL_FILE, read_text
from .output import Outcome
from .paths import autopod_home
from .state import write_private

# (prompt, default shown, secret) -> the answer; "" takes the default.
Ask = Callable[[str, str | None, bool], str]
# (api key, or None for the configured one) -> the account ({"id": ...}); raises AuthError when rejected.
CheckKey = Callable[[str | None], dict[str, Any]]

API_KEY_RE = re.compile(r"^[A-Za-z0-9_\-.]{8,256}$")
SETTINGS = ("ssh_key", "volume_id", "gpus", "tunnel_backend")


@dataclass
class InitAnswers:
    """What the flags said; None where the user (or a default) decides."""

    ssh_key: str | None = None
    create_key: bool = False
    api_key: str | None = None  # from stdin, never from argv
    volume_id: str | None = None
    gpus: list[str] = field(default_factory=list)
    tunnel_backend: str | None = None


def init_config(answers: InitAnswers, *, check_key: CheckKey, list_volumes: Callable[[], list[dict]] | None = None,
                ask: Ask | None = None, progress: Callable[[str], None] = lambda m: None) -> Outcome:
    """Bring config.yaml to what ``answers`` (and, on a terminal, the user) say; ``ok`` when it already is."""
    path = autopod_home() / "config.yaml"
    current = _config.user_config()
    key, key_note = _ssh_key(answers, ask, progress)
    account, key_source = _api_key(answers, check_key, ask, progress)
    volume_id = answers.volume_id
    volumes = list_volumes() if list_volumes is not None and (volume_id or ask is not None) else None
    if volume_id is None and ask is not None and volumes:
        volume_id = _ask_volume(volumes, current.get("volume_id"), ask)
    wanted: dict[str, Any] = {"ssh_key": str(key)}
    if volume_id:
        known = {v.get("id") for v in volumes or []}
        if volumes is not None and volume_id not in known:
            raise UsageError(f"network volume {volume_id!r} is not on this account; volumes: "
                             + (", ".join(sorted(str(k) for k in known)) or "none"))
        wanted["volume_id"] = volume_id
    if answers.gpus:
        wanted["gpus"] = list(answers.gpus)
    if answers.tunnel_backend:
        if answers.tunnel_backend not in ("sshtunnel", "openssh"):
            raise UsageError(f"--tunnel-backend must be sshtunnel or openssh, got {answers.tunnel_backend!r}")
        wanted["tunnel_backend"] = answers.tunnel_backend
    merged = {**current, **wanted}
    data = {"config": str(path), "ssh_key": str(key), "api_key_source": key_source, "account": account,
            "settings": {k: merged[k] for k in SETTINGS if k in merged}}
    notes = "; ".join(n for n in (key_note,) if n)
    if merged == current:
        return Outcome(False, f"{path} already holds these settings" + (f"; {notes}" if notes else ""),
                       key="init", data=data)
    _write_yaml(path, merged)
    return Outcome(True, f"wrote {path} (ssh_key {key}" + (f", volume {volume_id}" if volume_id else "") + ")"
                   + (f"; {notes}" if notes else ""), key="init", data=data)


# -- the SSH key -----------------------------------------------------------------------------------------


def _ssh_key(answers: InitAnswers, ask: Ask | None, progress: Callable[[str], None]) -> tuple[Path, str]:
    """(private key path, what was done). The key must have its .pub beside it: pods get that half."""
    if answers.ssh_key:
        key = Path(answers.ssh_key).expanduser()
        if not key.is_file():
            if not answers.create_key:
                raise UsageError(f"SSH key {key} does not exist; pass --create-key to make it")
            return _create_key(key, progress), f"created the SSH key {key}"
        _config.public_key_text(key)  # the .pub must exist
        return key, ""
    try:
        key = _config.ssh_key_path(None)
        _config.public_key_text(key)
        if ask is not None:
            answer = ask("SSH key for pods", str(key), False).strip()
            if answer:
                return _ssh_key(InitAnswers(ssh_key=answer, create_key=answers.create_key), None, progress)
        return key, ""
    except ConfigError:
        pass
    default = Path("~/.ssh/id_ed25519").expanduser()
    create = answers.create_key
    if not create and ask is not None:
        create = ask(f"No SSH key found. Create one at {default}? [Y/n]", "y", False).strip().lower() in ("", "y", "yes")
    if not create:
        raise UsageError(f"no SSH key in ~/.ssh: pass --create-key to make {default}, or --ssh-key PATH")
    return _create_key(default, progress), f"created the SSH key {default}"


def _create_key(path: Path, progress: Callable[[str], None]) -> Path:
    if not shutil.which("ssh-keygen"):
        raise ConfigError("`ssh-keygen` (OpenSSH) is not installed; install it, or pass --ssh-key PATH")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    progress(f"creating an ed25519 SSH key at {path} (no passphrase; add one with `ssh-keygen -p -f {path}`)")
    done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autopod", "-f", str(path)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"ssh-keygen could not create {path}: {done.stderr.strip() or done.returncode}")
    return path


# -- the API key -----------------------------------------------------------------------------------------


def _api_key(answers: InitAnswers, check_key: CheckKey, ask: Ask | None,
             progress: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """(the account, where the key came from). A new key is checked first, then saved."""
    key = answers.api_key
    if key is None:
        try:
            creds = _config.api_credentials()
        except AuthError:
            creds = None
        if creds is not None:
            progress(f"checking the RunPod API key from {creds.source}")
            return check_key(None), creds.source
        if ask is None:
            raise AuthError("no RunPod API key: export RUNPOD_API_KEY=..., or pipe it to "
                            "`autopod config.init --api-key-stdin` (it is never taken as an argument); "
                            "to try autopod without an account run `autopod sim.start`")
        key = ask("RunPod API key (https://www.runpod.io/console/user/settings; input hidden)", None, True)
    key = key.strip()
    if not API_KEY_RE.match(key):
        raise UsageError("that does not look like a RunPod API key (letters, digits, '_', '-' or '.', 8-256 "
                         "characters)")
    from .log import register_secret

    register_secret(key)
    progress("checking the RunPod API key")
    account = check_key(key)
    _save_api_key(key)
    return account, "~/.runpod/config.toml"


def _save_api_key(key: str) -> None:
    """``[default] api_key`` in ~/.runpod/config.toml, the file the SDK and runpodctl read. Other
    content is kept; an existing ``api_key`` line in ``[default]`` is replaced."""
    path = Path("~/.runpod/config.toml").expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = []
    if path.exists():
        lines = read_text(path, what="RunPod config", limit=MAX_SMALL_FILE, error=ConfigError)[1].splitlines()
    line = f'api_key = "{key}"'
    out, in_default, done = [], False, False
    for ln in lines:
        head = ln.strip()
        if head.startswith("["):
            if in_default and not done:
                out.append(line)
                done = True
            in_default = head == "[default]"
        elif in_default and re.match(r"^api_key\s*=", head):
            if not done:
                out.append(line)
                done = True
            continue
        out.append(ln)
    if not done:
        if not in_default:
            out += ([""] if out else []) + ["[default]"]
        out.append(line)
    write_private(path, "\n".join(out) + "\n")


# -- the models volume -----------------------------------------------------------------------------------


def _ask_volume(volumes: list[dict[str, Any]], current: str | None, ask: Ask) -> str | None:
    if not volumes:
        return None
    listing = ", ".join(f"{v['id']} ({v.get('name')}, {v.get('dataCenterId') or v.get('datacenter')})"
                        for v in volumes)
    answer = ask(f"Network volume with your models ({listing}); '-' for none", current, False).strip()
    if answer == "-":
        return None
    return answer or current


# -- files -----------------------------------------------------------------------------------------------


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    text = "# autopod settings (`autopod config.init` wrote this; any key of the inventory defaults)\n"
    text += yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)
    write_private(path, text)



"""Running ``puller.py`` in a pod: one SSH session per call, the program and the request on stdin.

The session runs a short POSIX shell script that finds the pod's Python and hands it a bootstrap
(``python3 -c``) that reads exactly the program's bytes from standard input and runs them; the rest
of standard input is the request, one JSON line, tokens included. So nothing secret is ever in a
command line (``ps`` on the pod shows the bootstrap and the byte count), in the pod's environment,
or in a file; and the program needs no copy in the pod before it runs. It answers in JSON lines
(progress, notes) and ends with one ``{"event": "result"}`` line.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

from ..core import config as _config
from ..core.errors import AutopodError, ConfigError, ExitCode, UsageError
from ..core.inventory import load_inventory
from ..runpod.access import ssh_command
from ..runpod.records import Pod

log = logging.getLogger(__name__)

PROGRAM = Path(__file__).with_name("puller.py")
BOOT = ("import sys;n=int(sys.argv[1]);s=sys.stdin.buffer.read(n);g={'__name__':'autopod_puller'};"
        "exec(compile(s,'puller.py','exec'),g);sys.exit(g['main'](sys.argv[2:],s))")
CONNECT_TIMEOUT_S = 15
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_TOKEN", "RUNPOD_API_KEY")


def _script(size: int) -> str:
    return ("umask 022\n"
            'py="$(command -v python3 || command -v python || true)"\n'
            "if [ -z \"$py\" ]; then echo '{\"event\": \"result\", \"result\": \"failed\", \"code\": 1, \"error\": "
            "\"the pod has no python3, which model pulls run on\"}'; exit 0; fi\n"
            f'exec "$py" -c {shlex.quote(BOOT)} {size}\n')


def call(pod: Pod, request: dict[str, Any], *, on_event: Callable[[dict[str, Any]], None] | None = None,
         timeout: float | None = None) -> dict[str, Any]:
    """Send ``request`` to the program in ``pod``; returns its result document. Failures the program
    reports are AutopodErrors with its message (exit 1, or 2 for bad input)."""
    if not shutil.which("ssh"):
        raise ConfigError("the OpenSSH client `ssh` is not installed")
    source = PROGRAM.read_bytes()
    key = _config.configured_ssh_key(load_inventory())
    argv = ssh_command(pod, key, "sh -c " + shlex.quote(_script(len(source))))
    argv[1:1] = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
    log.info("model %s on pod %s (%s)", request.get("op"), pod.name, pod.id)
    # The tokens travel in the request on stdin; ssh itself gets no copy in its environment (SendEnv could pass it).
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    payload = source + json.dumps(request).encode() + b"\n"

    def feed() -> None:
        try:
            proc.stdin.write(payload)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # ssh ended early: its exit status and stderr say why

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    errs: list[bytes] = []
    drain = threading.Thread(target=lambda: errs.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    result = None
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    try:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == "result":
                result = doc
            elif on_event is not None:
                on_event(doc)
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    drain.join(5)
    if result is None:
        tail = (b"".join(errs).decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1][:300]
        raise AutopodError(f"pod {pod.name} ({pod.id}): the model command failed over SSH "
                           f"(exit {proc.returncode}): {tail}")
    if result.get("result") == "failed":
        msg = f"pod {pod.name} ({pod.id}): {result.get('error') or 'failed'}"
        if int(result.get("code") or 1) == ExitCode.USAGE:
            raise UsageError(msg, data={"pod": {"id": pod.id, "name": pod.name}})
        raise AutopodError(msg, data={"pod": {"id": pod.id, "name": pod.name}, "job": result.get("job")})
    return result


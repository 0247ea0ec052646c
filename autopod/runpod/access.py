"""Reaching a pod: ``pod.ssh`` with OpenSSH over the pod's direct endpoint, and the OpenSSH
command line every SSH call into a pod uses (host keys pinned in AUTOPOD_HOME)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

from ..core import chain
from ..core import config as _config
from ..core.errors import AutopodError, ConfigError, UsageError
from ..core.inventory import load_inventory
from ..core.paths import autopod_home
from .records import Pod
from .registry import resolve_pod

log = logging.getLogger(__name__)


def running_pod(api: Any, ref: str | Pod | None, *, why: str) -> Pod:
    """The pod ``ref`` names (recorded as this command line's pod), which must run with its direct SSH
    endpoint up: the watchdog and model pulls run inside it. ``why`` says so in the error."""
    pod = ref if isinstance(ref, Pod) else resolve_pod(api, ref)
    chain.set_pod(pod.id)
    if pod.status != "RUNNING" or not pod.ssh_direct:
        raise AutopodError(f"pod {pod.name} ({pod.id}) is {pod.status}: {why} "
                           f"(`autopod pod.start --pod {pod.name}`)")
    return pod


def ssh_command(pod: Pod, key: Any, command: str | None = None, *, user: str | None = None,
                known_hosts: Any = None) -> list[str]:
    """The OpenSSH argv for the pod's direct endpoint. Host keys are pinned on first use in
    AUTOPOD_HOME/known_hosts (the file the tunnel checks too); a changed key is refused."""
    if not pod.ssh_direct:
        hint = f" (proxy fallback, shell only: ssh -i {key} {pod.ssh_proxy})" if pod.ssh_proxy else ""
        raise AutopodError(f"pod {pod.name} ({pod.id}) has no direct SSH endpoint ({pod.status}); "
                           f"wait with `autopod pod.wait --pod {pod.name}`{hint}")
    host, port = pod.ssh_direct
    known_hosts = known_hosts or (autopod_home() / "known_hosts")
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ServerAliveInterval=30"]
    if command is not None:
        argv.append("-T")  # no terminal: exact output and the remote exit code, for scripts
    argv += ["--", f"{user or _config.pod_ssh_user()}@{host}"]
    if command is not None:
        argv.append(command)
    return argv


def ssh(api: Any, ref: str | None, command: str | None = None, *, capture: bool = False) -> Any:
    """Run the system ``ssh`` against the pod; returns its exit code (the remote command's).

    With ``capture`` (``pod.ssh --command C --json``) returns a dict with the exit code and
    the command's stdout and stderr instead of passing them through."""
    if capture and command is None:
        raise UsageError("--json needs --command: an interactive shell has no output to report")
    pod = resolve_pod(api, ref)
    chain.set_pod(pod.id)
    key = _config.configured_ssh_key(load_inventory())
    if not shutil.which("ssh"):
        raise ConfigError("the OpenSSH client `ssh` is not installed")
    argv = ssh_command(pod, key, command)
    log.info("running %s", " ".join(argv if command is None else argv[:-1] + ["<command>"]))
    if not capture:
        return subprocess.call(argv)
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    return {"pod": pod.id, "name": pod.name, "command": command, "exit_code": done.returncode,
            "stdout": done.stdout, "stderr": done.stderr}

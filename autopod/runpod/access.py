"""Reaching a pod: everything ``pod.info`` shows (SSH commands, the HTTP proxy, spend) and
``pod.ssh`` with OpenSSH over the pod's direct endpoint."""

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
from .records import Pod, fmt_duration, proxy_urls
from .registry import resolve_pod

log = logging.getLogger(__name__)


def pod_info(api: Any, ref: str | None) -> dict[str, Any]:
    """Everything ``pod.list`` shows, plus image, ports, volume, SSH commands and spend so far."""
    pod = resolve_pod(api, ref)
    chain.set_pod(pod.id)
    info = pod.to_dict()
    volume = None
    if pod.volume_id:
        vols = {v["id"]: v for v in api.list_volumes()}
        v = vols.get(pod.volume_id, {})
        volume = {"id": pod.volume_id, "name": v.get("name"), "size_gb": v.get("size"),
                  "mount": pod.volume_mount, "datacenter": v.get("dataCenterId") or pod.datacenter}
    info["volume"] = volume
    try:
        key = str(_config.configured_ssh_key(load_inventory()))
    except ConfigError:
        key = "~/.ssh/id_ed25519"
    user = _config.pod_ssh_user()
    info["ssh"] = {
        "direct": (f"ssh -i {key} -p {pod.ssh_direct[1]} {user}@{pod.ssh_direct[0]}" if pod.ssh_direct else None),
        "proxy": f"ssh -i {key} {pod.ssh_proxy}" if pod.ssh_proxy else None,
    }
    spend = None
    if pod.cost_per_hr is not None and pod.uptime_s is not None:
        spend = round(pod.cost_per_hr * pod.uptime_s / 3600, 4)
    info["spend_usd"] = spend
    info["http_proxy"] = proxy_urls(pod)
    return info


INFO_FIELDS = [("name", "NAME"), ("id", "ID"), ("status", "STATUS"), ("gpu", "GPU"), ("gpu_count", "GPU COUNT"),
               ("datacenter", "DATACENTER"), ("uptime", "UPTIME"), ("cost_per_hr", "$/HR"), ("spend", "SPENT (EST.)"),
               ("image", "IMAGE"), ("ports", "PORTS"), ("volume", "VOLUME"), ("ssh", "SSH"),
               ("ssh_fallback", "SSH (PROXY, SHELL ONLY)"), ("comfy_address", "COMFYUI (IN POD)"),
               ("proxy", "HTTP PROXY (PUBLIC, NO LOGIN)")]


def info_view(info: dict[str, Any]) -> dict[str, Any]:
    """``pod_info`` flattened for the human KEY/VALUE table."""
    v = info.get("volume")
    return {
        **info,
        "uptime": fmt_duration(info.get("uptime_s")),
        "spend": f"${info['spend_usd']:.2f}" if info.get("spend_usd") is not None else None,
        "volume": (f"{v['id']} ({v.get('name') or '?'}, {v.get('size_gb') or '?'} GB, {v.get('datacenter')}) "
                   f"at {v.get('mount')}") if v else None,
        "ssh": info["ssh"]["direct"] or "(no direct endpoint yet: the pod is not running)",
        "ssh_fallback": info["ssh"]["proxy"],
        "proxy": [u["url"] for u in info.get("http_proxy") or []],
    }


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

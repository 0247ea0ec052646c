"""What a tunnel connects to: a pod's direct SSH endpoint, or an inventory host.

Resolution order for a reference (``--pod P``):

1. an inventory host named P (a home GPU box, any server that runs ComfyUI);
2. a tunnel that is already recorded and whose daemon still runs (no API call,
   no ``runpod`` import: ``autopod comfy.status`` stays fast);
3. a RunPod pod, looked up through the API, reached on the public IP and port
   mapped to its private 22/tcp.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, NotFound, TunnelError

log = logging.getLogger(__name__)

HOST_PREFIX = "host:"
# What a user and a host may look like. Both reach ssh's command line, where "-oProxyCommand=..."
# would be an option (a command run on this machine), so they are checked wherever a target is made.
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")  # fullmatch: "$" would let "root\n" through
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
ADDRESS_CHARS_RE = re.compile(r"[A-Za-z0-9_.:%-]{1,253}")


def check_user(user: Any, where: str = "") -> str:
    """``user`` when it is a plain login name; else a ConfigError (exit 2) naming the value."""
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise ConfigError(f"invalid SSH user {user!r}{where}: use letters, digits, '_', '.' and '-', "
                          "starting with a letter or '_' (at most 32)")
    return user


def check_host(host: Any, where: str = "", *, what: str = "SSH host") -> str:
    """``host`` when it is a host name, an IPv4 or an IPv6 address (never starting with '-')."""
    # ipaddress takes any text as an IPv6 scope ("fe80::1%a b"); a host also lands in known_hosts lines.
    if isinstance(host, str) and ADDRESS_CHARS_RE.fullmatch(host) and not host.startswith("-"):
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            if HOSTNAME_RE.fullmatch(host):
                return host
    raise ConfigError(f"invalid {what} {host!r}{where}: expected a host name, an IPv4 or an IPv6 address")


def check_port(port: Any, where: str = "", *, what: str = "SSH port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"invalid {what} {port!r}{where}: expected 1..65535")
    return port


@dataclass
class SSHTarget:
    id: str  # pod id, or "host:<name>" for an inventory host
    name: str  # pod name or host name
    kind: str  # "pod" | "host"
    host: str
    port: int
    user: str
    key_path: Path
    remote_host: str = "127.0.0.1"  # ComfyUI address as seen from the SSH server
    remote_port: int = 8188
    from_record: bool = False  # taken from tunnels.json: the endpoint may be stale

    def __post_init__(self) -> None:
        where = f" for {self.name}"
        check_user(self.user, where)
        check_host(self.host, where)
        check_host(self.remote_host, where, what="ComfyUI host")
        check_port(self.port, where)
        check_port(self.remote_port, where, what="ComfyUI port")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key_path"] = str(self.key_path)
        d.pop("from_record")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSHTarget":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["key_path"] = Path(kw["key_path"])
        return cls(**kw)  # __post_init__ checks every field that reaches ssh

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def split_address(addr: str, *, what: str = "comfy_address") -> tuple[str, int]:
    """ "host:port" -> (host, port); "[::1]:8188" works too."""
    host, sep, port = str(addr).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{what} must look like host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def resolve_target(ref: str | None, *, remote_port: int | None = None, fresh: bool = False) -> SSHTarget:
    """The SSH target behind ``ref`` (see the module docstring for the order).

    ``fresh=True`` skips the recorded tunnels, so a pod's endpoint is looked up
    again (after ``pod.start`` its public SSH port may have changed).
    """
    from . import chain, config
    from .inventory import load_inventory

    if ref is None:
        # `autopod pod.create ... tunnel.start`: the pod of this command line, not an older tunnel.
        ref = chain.pod_id()
    inv = load_inventory()
    if ref is not None:
        name = ref[len(HOST_PREFIX):] if ref.startswith(HOST_PREFIX) else ref
        host = inv.hosts.get(name)
        if host is not None:
            return _host_target(host, inv, remote_port)
        if ref.startswith(HOST_PREFIX):
            raise NotFound(f"no host '{name}' in the inventory")

    if not fresh:
        rec = _recorded_target(ref)
        if rec is not None:
            if remote_port is not None:
                rec.remote_port = int(remote_port)
            return rec

    return _pod_target(ref, inv, remote_port, config)


def _host_target(host: Any, inv: Any, remote_port: int | None) -> SSHTarget:
    from . import config

    rhost, rport = split_address(host.comfy_address or config.BUILTIN["comfy_address"],
                                 what=f"hosts.{host.name}.comfy_address")
    return SSHTarget(id=HOST_PREFIX + host.name, name=host.name, kind="host", host=host.host, port=int(host.port),
                     user=host.user, key_path=config.configured_ssh_key(inv, host.key), remote_host=rhost,
                     remote_port=int(remote_port) if remote_port is not None else rport)


def _recorded_target(ref: str | None) -> SSHTarget | None:
    """The target of a live recorded tunnel: by id or name, or the only one when ``ref`` is None."""
    from . import tunnel

    live = [e for e in tunnel.recorded_entries() if tunnel.entry_process_alive(e)]
    if ref is None:
        chosen = live[0] if len(live) == 1 else None
    else:
        chosen = next((e for e in live if e.get("target_id") == ref), None) or \
            next((e for e in live if e.get("name") == ref), None)
    if chosen is None or not chosen.get("target"):
        return None
    try:
        t = SSHTarget.from_dict(chosen["target"])
    except (KeyError, TypeError, ValueError, ConfigError):
        return None
    t.from_record = True
    return t


def _pod_target(ref: str | None, inv: Any, remote_port: int | None, config: Any) -> SSHTarget:
    from .pods import resolve_pod
    from .runpod_api import RunPodAPI

    pod = resolve_pod(RunPodAPI(config.api_credentials()), ref)
    direct = getattr(pod, "ssh_direct", None)
    if not direct:
        raise no_direct_ssh(pod)
    ip, port = direct
    spec = inv.pods.get(getattr(pod, "name", "") or "") or {}
    cfg = config.user_config()
    key = config.configured_ssh_key(inv)  # ssh_key is a global setting: pod specs cannot set it
    rhost, rport = split_address(getattr(pod, "comfy_address", None)
                                 or config.resolve("comfy_address", None, inventory=inv, pod_spec=spec, config=cfg))
    return SSHTarget(id=pod.id, name=pod.name or pod.id, kind="pod", host=str(ip), port=int(port),
                     user=config.pod_ssh_user(), key_path=key, remote_host=rhost,
                     remote_port=int(remote_port) if remote_port is not None else rport)


def no_direct_ssh(pod: Any) -> TunnelError:
    """Why ``pod`` offers no endpoint to tunnel through, and what to do, by its state (exit 1)."""
    name = getattr(pod, "name", None) or pod.id
    cmd_ref = shlex.quote(name)
    status = getattr(pod, "status", "") or ""
    if status == "TERMINATED":
        return TunnelError(f"pod {name} ({pod.id}) is terminated: it is gone, and no tunnel can reach it; "
                           "create a new one with `autopod pod.create`")
    if not any(str(p).strip().lower() == "22/tcp" for p in getattr(pod, "ports", None) or []):
        # Checked before "stopped": starting such a pod would not help.
        return TunnelError(
            f"pod {name} ({pod.id}) has no direct SSH endpoint, only RunPod's proxied SSH "
            f"({getattr(pod, 'ssh_proxy', None) or 'ssh.runpod.io'}), which cannot forward ports. "
            "A tunnel needs the pod's 22/tcp exposed on a public port: recreate the pod with --port 22/tcp "
            "(autopod's default ports include it) and a PUBLIC_KEY"
        )
    if status == "EXITED":
        return TunnelError(f"pod {name} is stopped: start it with `autopod pod.start --pod {cmd_ref}`")
    return TunnelError(f"pod {name} is still starting ({status or 'status unknown'}, its SSH port is not "
                       f"published yet): wait with `autopod pod.wait --pod {cmd_ref}`")

"""What a tunnel connects to (``SSHTarget``): a pod's direct SSH endpoint, or an inventory host,
with every user, host and port checked wherever a target is made. Which target a ``--pod``
reference means is decided in ``autopod.tunnels.resolve``."""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, TunnelError

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

"""SSH host key pinning: trust on first use, refuse a changed key.

Keys live in ``AUTOPOD_HOME/known_hosts`` in OpenSSH's format (``[host]:port type
base64``), so the same file serves paramiko (the sshtunnel backend) and the
OpenSSH client (``-o UserKnownHostsFile=... -o StrictHostKeyChecking=yes``).
sshtunnel itself accepts any host key, so every connection autopod opens is
checked against this file first and pins the key it finds there.
"""

from __future__ import annotations

import base64
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from ..core.errors import ConfigError, HostKeyMismatch, TunnelError
from ..core.paths import autopod_home

if TYPE_CHECKING:  # paramiko costs ~0.2 s to import; only connections need it
    import paramiko

log = logging.getLogger(__name__)


def known_hosts_path() -> Path:
    return autopod_home() / "known_hosts"


def host_entry_name(host: str, port: int) -> str:
    """OpenSSH writes a bare host for port 22 and ``[host]:port`` otherwise."""
    return host if int(port) == 22 else f"[{host}]:{int(port)}"


def _read_entries() -> list[tuple[str, str, str]]:
    """(names, keytype, base64) per line; comments, markers and hashed names are skipped."""
    path = known_hosts_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        # Not skipped line by line: a garbled pinned key must not turn into a fresh trust-on-first-use.
        raise ConfigError(f"{path} is not UTF-8 text; fix it, or remove it to pin every host key again") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.lstrip().startswith(("#", "@")):
            continue
        out.append((parts[0], parts[1], parts[2]))
    return out


def is_pinned(host: str, port: int) -> bool:
    """A key for host:port is in known_hosts (read as text: no paramiko, no connection)."""
    name = host_entry_name(host, port)
    return any(name in names.split(",") for names, _, _ in _read_entries())


def pinned_keys(host: str, port: int) -> list["paramiko.PKey"]:
    import paramiko

    name = host_entry_name(host, port)
    keys = []
    for names, ktype, b64 in _read_entries():
        if name in names.split(","):
            try:
                keys.append(paramiko.PKey.from_type_string(ktype, base64.b64decode(b64)))
            except Exception as e:  # an unknown key type must not hide the others
                log.debug("skipping known_hosts key %s for %s: %s", ktype, name, e)
    return keys


def pinned_key(host: str, port: int) -> "paramiko.PKey | None":
    keys = pinned_keys(host, port)
    return keys[0] if keys else None


def fetch_host_key(host: str, port: int, *, timeout: float = 10.0,
                   key_types: list[str] | None = None) -> "paramiko.PKey":
    """The key the server presents, after a key exchange and before any authentication."""
    import paramiko

    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as e:
        raise TunnelError(f"cannot reach SSH at {host}:{port}: {e.strerror or e}") from None
    t = paramiko.Transport(sock)
    try:
        t.banner_timeout = timeout
        if key_types:
            # Ask for the pinned type, so a server with several host keys shows the one we know.
            opts = t.get_security_options()
            wanted = [k for k in opts.key_types if k in _algorithms_for(key_types)]
            if wanted:
                opts.key_types = wanted
        t.start_client(timeout=timeout)
        return t.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TunnelError(f"SSH handshake with {host}:{port} failed: {e}") from None
    finally:
        t.close()


def _algorithms_for(key_types: list[str]) -> set[str]:
    # An ssh-rsa key is offered through its SHA-2 signature algorithms.
    out = set(key_types)
    if "ssh-rsa" in out:
        out |= {"rsa-sha2-512", "rsa-sha2-256"}
    return out


def mismatch_message(host: str, port: int, got: "paramiko.PKey") -> str:
    name = host_entry_name(host, port)
    return (
        f"the SSH host key of {name} has CHANGED (now {got.get_name()} {got.fingerprint}); refusing to connect. "
        f"Someone may be intercepting the connection, or the machine was recreated and got a new key. "
        f"If you know why it changed, remove the old key with: ssh-keygen -R '{name}' -f {known_hosts_path()}"
    )


def pin_on_first_use(host: str, port: int, *, timeout: float = 10.0) -> "paramiko.PKey":
    """The server's key, pinned: stored on first contact, compared ever after.

    Raises HostKeyMismatch when the server shows a key other than the pinned one.
    """
    from .targets import check_host

    check_host(host)  # it becomes part of a known_hosts line: no spaces, no newlines
    pinned = pinned_keys(host, port)
    got = fetch_host_key(host, port, timeout=timeout, key_types=[k.get_name() for k in pinned] or None)
    if pinned:
        if any(_same(got, k) for k in pinned):
            return got
        log.error("host key mismatch for %s: got %s", host_entry_name(host, port), got.fingerprint)
        raise HostKeyMismatch(mismatch_message(host, port, got))
    with FileLock(str(known_hosts_path()) + ".lock", timeout=30):
        # Another process may have pinned it while we were connecting.
        pinned = pinned_keys(host, port)
        if pinned:
            if any(_same(got, k) for k in pinned):
                return got
            raise HostKeyMismatch(mismatch_message(host, port, got))
        path = known_hosts_path()
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{host_entry_name(host, port)} {got.get_name()} {got.get_base64()}\n")
        path.chmod(0o600)
    log.info("pinned SSH host key of %s on first use: %s %s", host_entry_name(host, port), got.get_name(),
             got.fingerprint)
    return got


def forget_host(host: str, port: int) -> bool:
    """Drop the pinned keys of host:port (a recreated machine). True if any were removed."""
    name = host_entry_name(host, port)
    path = known_hosts_path()
    with FileLock(str(path) + ".lock", timeout=30):
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            return False
        keep = [ln for ln in lines if not (ln.split() and name in ln.split()[0].split(","))]
        if len(keep) == len(lines):
            return False
        path.write_text("".join(keep), encoding="utf-8")
    log.info("forgot the pinned SSH host key of %s", name)
    return True


def _same(a: "paramiko.PKey", b: "paramiko.PKey") -> bool:
    return a.asbytes() == b.asbytes()

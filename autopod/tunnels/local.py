"""What a tunnel needs on this machine: a free port on 127.0.0.1, and the user's private key."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from ..core.errors import AutopodError, ConfigError, TunnelError
from ..core.flags import env_setting
from ..core.ui import progress
from .registry import as_int, entry_process_alive, recorded_entries

PORT_SEARCH = 50  # how far past a taken default port to look for a free one
PASSPHRASE_ENV = "AUTOPOD_SSH_PASSPHRASE"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # Same options as the forwarders: a TIME_WAIT leftover must not count as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str:
    """Who listens on ``port``, in words, for error messages."""
    try:
        entries = recorded_entries()
    except AutopodError:  # a damaged tunnels.json must not replace the error being reported
        entries = []
    for e in entries:
        if as_int(e, "local_port") == int(port) and entry_process_alive(e):
            return f"the autopod tunnel to {e.get('name') or e['target_id']} (pid {e['pid']})"
    import psutil

    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(port) and c.pid:
                try:
                    what = psutil.Process(c.pid).name()  # not its command line: it may hold a password
                except psutil.Error:
                    what = "?"
                return f"pid {c.pid} ({what})"
    except (psutil.Error, OSError):
        pass
    return "another program"


def choose_local_port(want: int, *, explicit: bool) -> int:
    if port_is_free(want):
        return want
    holder = port_holder(want)
    if explicit:
        raise TunnelError(f"local port {want} is already in use by {holder}; choose another with --local-port "
                          "or stop that program")
    p = next_free_port(want)
    progress(f"local port {want} is in use by {holder}; using {p} instead")
    return p


def next_free_port(taken: int) -> int:
    """The first free port after ``taken``, within PORT_SEARCH of it; says nothing (the caller tells why)."""
    for p in range(taken + 1, taken + 1 + PORT_SEARCH):
        if p < 65536 and port_is_free(p):
            return p
    raise TunnelError(f"no free local port in {taken}..{taken + PORT_SEARCH}; pass --local-port")


def load_private_key(path: Path) -> Any:
    """The paramiko key at ``path``; None means "use ssh-agent" (a protected key without a passphrase).

    A passphrase comes from AUTOPOD_SSH_PASSPHRASE or ssh-agent; autopod never prompts.
    """
    import paramiko

    from ..core.log import register_secret

    passphrase = env_setting(PASSPHRASE_ENV, secret=True, blanks_ok=True)
    register_secret(passphrase)
    try:
        return paramiko.PKey.from_path(Path(path).expanduser(), password=passphrase.encode() if passphrase else None)
    except FileNotFoundError:
        raise ConfigError(f"SSH key {path} does not exist") from None
    except (paramiko.PasswordRequiredException, TypeError) as e:
        # paramiko's from_path lets cryptography's TypeError through for protected OpenSSH-format keys.
        if isinstance(e, TypeError) and "password" not in str(e).lower():
            raise
        if os.environ.get("SSH_AUTH_SOCK"):
            return None
        raise ConfigError(f"SSH key {path} is protected by a passphrase: load it into ssh-agent (ssh-add {path}) "
                          f"or export {PASSPHRASE_ENV}; autopod never prompts") from None
    except (paramiko.SSHException, ValueError) as e:
        hint = f" (wrong {PASSPHRASE_ENV}?)" if passphrase else ""
        raise ConfigError(f"cannot read SSH key {path}: {e}{hint}") from None

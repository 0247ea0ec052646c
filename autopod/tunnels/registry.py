"""``tunnels.json``: the recorded tunnels, and the daemons behind them.

A recorded pid is only ever signalled after its command line proves it is our
daemon for that target, in our AUTOPOD_HOME, serving what the entry says: pids
get reused, and the file can be edited by hand.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, UsageError
from ..core.paths import autopod_home
from ..core.procs import cmdline, environ, terminate_pid
from ..core.state import StateFile, check_fields, require
from .targets import HOST_PREFIX, check_host, check_user

log = logging.getLogger(__name__)

STATE_NAME = "tunnels.json"
DAEMON_MODULE = "autopod.tunnels.daemon"


# What each recorded field must be; anything else makes tunnels.json corrupt (CorruptState, exit 2),
# so no reader has to guess what a string pid or a list of tunnels means.
_NUMBER = (int, float)
ENTRY_TYPES: dict[str, Any] = {
    "target_id": str, "name": str, "kind": str, "state": str, "backend": str, "remote_host": str, "ssh_host": str,
    "error": str, "error_kind": str, "pid": int, "child_pid": int, "local_port": int, "remote_port": int,
    "ssh_port": int, "restarts": int, "started_at": _NUMBER, "updated_at": _NUMBER, "up_since": _NUMBER,
    "target": dict,
}
TARGET_TYPES: dict[str, Any] = {
    "id": str, "name": str, "kind": str, "host": str, "user": str, "key_path": str, "remote_host": str,
    "port": int, "remote_port": int,
}


def validate_state(data: dict[str, Any]) -> None:
    """The shape of tunnels.json: ``{"tunnels": {target_id: entry}}``; ValueError names what is wrong."""
    tunnels = data.get("tunnels")
    if tunnels is None:
        return
    require(isinstance(tunnels, dict), "'tunnels' is not an object")
    for tid, entry in tunnels.items():
        where = f"tunnels[{tid!r}]"
        check_fields(entry, where, ENTRY_TYPES)
        require(entry.get("target_id") in (None, tid), f"{where}.target_id is not {tid!r}")
        for key in ("pid", "child_pid"):
            require(entry.get(key) is None or entry[key] > 0, f"{where}.{key} is not a process id")
        for key in ("local_port", "remote_port", "ssh_port"):
            require(entry.get(key) is None or 0 < entry[key] < 65536, f"{where}.{key} is not a port (1..65535)")
        target = entry.get("target")
        if target is not None:
            check_fields(target, f"{where}.target", TARGET_TYPES)
            for key in ("port", "remote_port"):
                require(target.get(key) is None or 0 < target[key] < 65536,
                        f"{where}.target.{key} is not a port (1..65535)")
            # Recorded targets are handed to ssh again: what could not be configured cannot be recorded.
            try:
                if target.get("user") is not None:
                    check_user(target["user"])
                for key in ("host", "remote_host"):
                    if target.get(key) is not None:
                        check_host(target[key], what=key)
            except ConfigError as e:
                raise ValueError(f"{where}.target: {e}") from None


def state_file() -> StateFile:
    return StateFile.named(STATE_NAME, validate=validate_state)


def as_int(entry: dict[str, Any] | None, key: str) -> int:
    """A recorded integer field (pid, port), 0 when absent or null (validate_state vouches for the type)."""
    v = (entry or {}).get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def recorded_entries() -> list[dict[str, Any]]:
    tunnels = state_file().read().get("tunnels") or {}
    return [{**e, "target_id": tid} for tid, e in tunnels.items()]


def recorded_entry(target_id: str) -> dict[str, Any] | None:
    e = (state_file().read().get("tunnels") or {}).get(target_id)
    return None if e is None else {**e, "target_id": target_id}


def update_entry(target_id: str, *, pid: int, **fields: Any) -> bool:
    """Merge ``fields`` into the entry of ``target_id`` when it still belongs to ``pid``.

    Creates the entry when there is none. False when another process owns it.
    """
    with state_file().update() as data:
        tunnels = data.setdefault("tunnels", {})
        cur = tunnels.get(target_id)
        if cur is not None and as_int(cur, "pid") != pid:
            return False
        tunnels[target_id] = {**(cur or {}), **fields, "target_id": target_id, "pid": pid}
    return True


def drop_entry(target_id: str, *, pid: int | None = None) -> bool:
    with state_file().update() as data:
        tunnels = data.setdefault("tunnels", {})
        cur = tunnels.get(target_id)
        if cur is None or (pid is not None and as_int(cur, "pid") != pid):
            return False
        del tunnels[target_id]
    return True


def find_entry(ref: str | None) -> dict[str, Any] | None:
    """A recorded entry by target id, name, or "host:<name>"; the only one when ``ref`` is None."""
    entries = recorded_entries()
    if ref is None:
        if len(entries) > 1:
            names = ", ".join(sorted(e.get("name") or e["target_id"] for e in entries))
            raise UsageError(f"several tunnels are recorded ({names}); name one with --pod")
        return entries[0] if entries else None
    for key in ("target_id", "name"):
        for e in entries:
            if e.get(key) == ref:
                return e
    return None


def check_known_ref(ref: str, entries: list[dict[str, Any]] | None = None) -> None:
    """UsageError (exit 2) when ``ref`` names no recorded tunnel, no inventory host and no pod autopod
    has seen: a typo must not read as "no tunnel is running" (exit 0). No API call."""
    entries = recorded_entries() if entries is None else entries
    if any(ref in (e.get("target_id"), e.get("name")) for e in entries):
        return
    from ..runpod.registry import known_refs

    if not ref.startswith(HOST_PREFIX) and ref in known_refs():
        return
    from ..core.inventory import load_inventory

    if (ref[len(HOST_PREFIX):] if ref.startswith(HOST_PREFIX) else ref) in load_inventory().hosts:
        return
    names = ", ".join(sorted(e.get("name") or e["target_id"] for e in entries)) or "none"
    raise UsageError(f"no tunnel, inventory host or known pod is called {ref!r} (recorded tunnels: {names})")


# -- processes -------------------------------------------------------------------
def _arg(cmd: list[str], flag: str) -> str | None:
    try:
        return cmd[cmd.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def _runs_in_our_home(pid: Any) -> bool:
    """The process has our AUTOPOD_HOME: a daemon of another home (another user, a test) for the same
    pod is not ours to signal. One we may not inspect is not ours either."""
    home = (environ(pid) or {}).get("AUTOPOD_HOME")
    try:
        return bool(home) and Path(home).resolve() == autopod_home().resolve()
    except OSError:
        return False


def _is_daemon_for(cmd: list[str], target_id: str) -> bool:
    return DAEMON_MODULE in cmd and _arg(cmd, "--target-id") == target_id


def process_is_ours(pid: int | None, target_id: str) -> bool:
    """True only for a live autopod tunnel daemon for ``target_id`` in our AUTOPOD_HOME: a reused pid is never ours."""
    return _is_daemon_for(cmdline(pid), target_id) and _runs_in_our_home(pid)


_TARGET_KEYS = ("host", "port", "user", "remote_host", "remote_port")


def entry_process_alive(entry: dict[str, Any]) -> bool:
    """The recorded daemon runs, is ours, and serves what the entry says (port, backend, endpoint).

    The daemon's command line is the truth: a recorded port that was edited since must not
    send ComfyUI requests to whatever else listens there.
    """
    pid = entry.get("pid")
    cmd = cmdline(pid)
    if not _is_daemon_for(cmd, entry.get("target_id") or ""):
        return False
    for key, flag in (("local_port", "--local-port"), ("backend", "--backend")):
        if entry.get(key) is not None and _arg(cmd, flag) != str(entry[key]):
            return False
    rec = entry.get("target")
    if rec is not None:
        try:
            real = json.loads(_arg(cmd, "--target") or "")
        except ValueError:
            return False
        if not isinstance(real, dict) or any(real.get(k) != rec.get(k) for k in _TARGET_KEYS):
            return False
    return _runs_in_our_home(pid)


def child_is_ours(entry: dict[str, Any]) -> bool:
    """The OpenSSH child of one of our daemons: ssh with our exact -L forward and our known_hosts
    (a user's own ``ssh -L`` on a reused pid has not)."""
    from .hostkeys import known_hosts_path

    cmd = cmdline(entry.get("child_pid"))
    fwd = f"127.0.0.1:{entry.get('local_port')}:"
    ours = f"UserKnownHostsFile={known_hosts_path().resolve()}"
    return bool(cmd) and os.path.basename(cmd[0]) == "ssh" and any(a.startswith(fwd) for a in cmd) and ours in cmd


def terminate(pid: int, timeout: float = 5.0) -> None:
    terminate_pid(pid, timeout, on_kill=lambda: log.warning("tunnel process %d ignored SIGTERM; killing it", pid))


def kill_entry_processes(entry: dict[str, Any]) -> bool:
    """Stop the daemon of ``entry`` (and an orphaned ssh child), only after proving they are ours."""
    killed = False
    if entry_process_alive(entry):
        terminate(as_int(entry, "pid"))
        killed = True
    elif entry.get("pid"):
        log.info("recorded tunnel pid %s for %s is not our daemon any more; not signalling it",
                 entry.get("pid"), entry.get("target_id"))
    if child_is_ours(entry):
        terminate(as_int(entry, "child_pid"))
        killed = True
    return killed

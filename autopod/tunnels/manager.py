"""SSH tunnels that outlive the terminal, are found again by every autopod command, and recover.

Each tunnel is one detached daemon (``python -m autopod.tunnels.daemon``, a new
session from a fresh interpreter) that holds the forward on 127.0.0.1 and
restarts it with backoff when the SSH connection dies. Daemons are recorded in
``AUTOPOD_HOME/tunnels.json``; a recorded pid is only ever signalled after its
command line proves it is our daemon for that target, because pids get reused.

Two backends share the state, health checks and recovery: ``sshtunnel``
(paramiko, pure Python) and ``openssh`` (a supervised ``ssh -N -L``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import AutopodError, TunnelError, UsageError
from ..core.output import Outcome
from ..core.paths import autopod_home, open_private
from ..core.ui import progress
from .local import choose_local_port, next_free_port, port_holder
from .logs import log_tail, tunnel_log_path
from .registry import (
    DAEMON_MODULE,
    as_int,
    check_known_ref,
    child_is_ours,
    drop_entry,
    entry_process_alive,
    find_entry,
    kill_entry_processes,
    recorded_entries,
    recorded_entry,
    state_file,
    terminate,
)
from .targets import SSHTarget

log = logging.getLogger(__name__)

BACKENDS = ("sshtunnel", "openssh")
DEFAULT_LOCAL_PORT = 8188
RECOVERY_GRACE_S = 10.0  # how long a start waits for a recovering daemon before replacing it
# The start lock covers one AUTOPOD_HOME only: autopod under other homes (other accounts, parallel CI jobs) can
# take a free port between our check and the daemon's bind, once per tunnel it starts meanwhile.
PORT_RACE_TRIES = 10


@dataclass
class TunnelInfo:
    target_id: str
    name: str
    pid: int
    local_port: int
    remote_host: str
    remote_port: int
    ssh_host: str
    ssh_port: int
    started_at: float
    backend: str
    healthy: bool = False
    state: str = ""  # daemon's view: starting | up | recovering | failed
    alive: bool = False  # the recorded process runs and is our daemon
    error: str | None = None

    @property
    def local_address(self) -> str:
        return f"127.0.0.1:{self.local_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- health ----------------------------------------------------------------------
def probe(port: int, *, timeout: float = 3.0) -> bool:
    """Does a TCP connection through the tunnel on 127.0.0.1:``port`` reach the far side?

    Accepting is not proof: the forwarder accepts locally and then closes the
    socket when the remote side refuses. So we send a harmless HTTP request and
    count any answer, or a connection held open, as working.
    """
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            try:
                return bool(s.recv(1))
            except socket.timeout:
                return True  # the far side accepted and keeps the connection open
    except OSError:
        return False


def _info(entry: dict[str, Any], *, check: bool = True) -> TunnelInfo:
    alive = entry_process_alive(entry)
    state = entry.get("state") or ""
    healthy = bool(check and alive and state == "up" and probe(as_int(entry, "local_port")))
    started = entry.get("started_at")
    return TunnelInfo(
        target_id=entry["target_id"], name=entry.get("name") or entry["target_id"], pid=as_int(entry, "pid"),
        local_port=as_int(entry, "local_port"), remote_host=entry.get("remote_host") or "",
        remote_port=as_int(entry, "remote_port"), ssh_host=entry.get("ssh_host") or "",
        ssh_port=as_int(entry, "ssh_port"), started_at=float(started) if isinstance(started, (int, float)) else 0.0,
        backend=entry.get("backend") or "", healthy=healthy, state=state if alive else "gone", alive=alive,
        error=entry.get("error"),
    )


def find_tunnel(target_id: str) -> TunnelInfo | None:
    """The recorded tunnel for ``target_id`` when its daemon is ours and a connection through it works."""
    entry = recorded_entry(target_id)
    if entry is None:
        return None
    info = _info(entry)
    return info if info.healthy else None


def tunnel_status(target_id: str | None) -> TunnelInfo | None:
    """The recorded tunnel (by target id or name; the only one if None), health-checked; None if none.

    A ref that names nothing autopod knows is a UsageError (see check_known_ref).
    """
    entry = find_entry(target_id)
    if entry is None and target_id is not None:
        check_known_ref(target_id)
    return _info(entry) if entry else None


def list_tunnels() -> list[TunnelInfo]:
    return sorted((_info(e) for e in recorded_entries()), key=lambda i: (i.name, i.target_id))


# -- start / stop ------------------------------------------------------------------
def _backend_for(backend: str | None, target: SSHTarget) -> str:
    if not backend:
        from ..core import config
        from ..core.inventory import load_inventory

        # A broken inventory or config.yaml is reported, not replaced by the built-in backend.
        backend = config.resolve("tunnel_backend", None, inventory=load_inventory(), config=config.user_config())
    if backend not in BACKENDS:
        raise UsageError(f"unknown tunnel backend {backend!r} (choose {' or '.join(BACKENDS)})")
    return backend


def _matches(entry: dict[str, Any], target: SSHTarget, local_port: int | None, backend: str) -> bool:
    """Does the recorded tunnel lead to the same place, the same way, as asked now?"""
    rec = entry.get("target") or {}
    same = (rec.get("host"), as_int(rec, "port"), rec.get("user"), rec.get("remote_host"),
            as_int(rec, "remote_port")) == (target.host, target.port, target.user, target.remote_host,
                                           target.remote_port)
    return (same and entry.get("backend") == backend
            and (local_port is None or as_int(entry, "local_port") == local_port))


def _describe(info: TunnelInfo) -> str:
    return (f"tunnel to {info.name} on {info.local_address} -> {info.remote_host}:{info.remote_port} "
            f"via {info.ssh_host}:{info.ssh_port} ({info.backend}, pid {info.pid})")


def _start_lock(timeout: float) -> Any:
    from filelock import FileLock

    return FileLock(str(autopod_home() / "tunnels.start.lock"), timeout=timeout)


def ensure_tunnel(target: SSHTarget, *, local_port: int | None = None, explicit_port: bool = False,
                  backend: str | None = None, timeout: float = 30.0, require_remote: bool = False) -> Outcome:
    """A running tunnel to ``target``: reuse the recorded one, or start (or replace) a daemon.

    ``Outcome.data`` is the TunnelInfo; ``changed`` is False when a running tunnel was reused.
    Concurrent calls for the same target end with one tunnel. The tunnel counts
    as running once its daemon holds an SSH connection and the local port. With
    ``require_remote`` (``tunnel.start``) a TCP connection through it must also
    work, i.e. ComfyUI must answer; callers that probe ComfyUI themselves (the
    comfy tasks, which report "starting" while it boots) leave it False.
    """
    backend = _backend_for(backend, target)
    want = int(local_port) if local_port else DEFAULT_LOCAL_PORT
    pin_port = want if explicit_port else None

    reused = _reuse(target, pin_port, backend, require_remote)  # lock-free: every comfy task comes here
    if reused:
        return reused
    from filelock import Timeout as LockTimeout

    try:
        with _start_lock(timeout + 30):
            reused = _reuse(target, pin_port, backend, require_remote)  # a concurrent start may have finished
            if reused:
                return reused
            return _replace_and_start(target, want, explicit_port, backend, timeout, require_remote)
    except LockTimeout:
        raise TunnelError("another autopod process is starting a tunnel and did not finish in time") from None


def _reuse(target: SSHTarget, pin_port: int | None, backend: str, require_remote: bool) -> Outcome | None:
    entry = recorded_entry(target.id)
    if entry and _matches(entry, target, pin_port, backend) and entry.get("state") == "up":
        info = _info(entry, check=require_remote)
        if info.healthy or (info.alive and not require_remote):
            log.info("reusing %s", _describe(info))
            return Outcome(False, f"{_describe(info)} already runs", key="tunnel", data=info)
    return None


def _replace_and_start(target: SSHTarget, want: int, explicit: bool, backend: str, timeout: float,
                       require_remote: bool) -> Outcome:
    entry = recorded_entry(target.id)
    deadline = time.monotonic() + timeout
    note = ""
    if entry is not None:
        alive = entry_process_alive(entry)
        if alive and _matches(entry, target, want if explicit else None, backend):
            if entry.get("state") == "up":
                # SSH is up, the far side does not answer yet (ComfyUI still loading): wait, don't churn.
                info = _wait_healthy(entry, deadline, require_remote)
                if info:
                    return Outcome(False, f"{_describe(info)} already runs", key="tunnel", data=info)
                if entry_process_alive(entry):
                    raise _not_answering(target, entry)
            else:
                progress(f"tunnel to {target.name} is {entry.get('state') or 'starting'}; waiting for it")
                info = _wait_healthy(entry, min(deadline, time.monotonic() + RECOVERY_GRACE_S), require_remote)
                if info:
                    return Outcome(False, f"{_describe(info)} recovered", key="tunnel", data=info)
            progress(f"tunnel to {target.name} did not recover; replacing it")
            note = "replaced a tunnel that did not recover"
        elif alive:
            progress(f"the tunnel to {target.name} leads elsewhere or uses other settings; restarting it")
            note = "restarted with new settings"
        else:
            progress(f"the tunnel daemon for {target.name} (pid {entry.get('pid')}) is gone; starting a new one")
            note = "recreated a tunnel whose daemon was gone"
        log.info("replacing tunnel entry %s: %s", target.id, note)
        kill_entry_processes(entry)
        drop_entry(target.id, pid=as_int(entry, "pid"))
        if target.from_record:
            # The recorded endpoint is what failed: look the pod up again (its SSH port may have changed).
            from .resolve import resolve_target

            target = resolve_target(target.id, remote_port=target.remote_port, fresh=True, key_path=target.key_path)
    info = _start_daemon(target, want, explicit, backend, deadline, require_remote)
    msg = f"started {_describe(info)}" + (f"; {note}" if note else "")
    if info.local_port != want:
        msg += f" (local port {want} was in use)"
    return Outcome(True, msg, key="tunnel", data=info)


def _wait_healthy(entry: dict[str, Any], deadline: float, require_remote: bool) -> TunnelInfo | None:
    while True:
        cur = recorded_entry(entry["target_id"])
        if cur is None or as_int(cur, "pid") != as_int(entry, "pid"):
            return None
        info = _info(cur, check=require_remote)
        if info.healthy or (not require_remote and info.alive and cur.get("state") == "up"):
            return info
        if not info.alive or cur.get("state") == "failed" or time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _not_answering(target: SSHTarget, entry: dict[str, Any]) -> TunnelError:
    return TunnelError(
        f"SSH to {target.name} works, but nothing answers on {target.remote_host}:{target.remote_port} behind it "
        f"(is ComfyUI running?). The tunnel daemon keeps running on 127.0.0.1:{entry.get('local_port')}; "
        "`autopod tunnel.status` tells when it works"
    )


def _start_daemon(target: SSHTarget, want: int, explicit: bool, backend: str, deadline: float,
                  require_remote: bool) -> TunnelInfo:
    # The daemon reads the key and checks (or first pins) the host key itself, and says what is wrong
    # through tunnels.json (a bad key is a ConfigError, exit 2): checking here too would cost a second
    # SSH handshake and paramiko's import on every start.
    progress(f"connecting to {target.endpoint} ({target.name})")
    port = choose_local_port(want, explicit=explicit)
    for _attempt in range(PORT_RACE_TRIES):
        proc, log_start = _spawn(target, port, backend)
        try:
            with state_file().update() as data:
                tunnels = data.setdefault("tunnels", {})
                cur = tunnels.get(target.id)
                if cur is None or as_int(cur, "pid") != proc.pid:  # the daemon may have recorded itself already
                    tunnels[target.id] = _new_entry(target, proc.pid, port, backend, time.time())
            log.info("spawned tunnel daemon pid %d for %s on 127.0.0.1:%d (%s)", proc.pid, target.id, port, backend)
            return _wait_started(target, proc, port, deadline, require_remote, log_start)
        except _PortTaken:
            if explicit:
                raise TunnelError(f"local port {port} is already in use by {port_holder(port)}; "
                                  "choose another with --local-port") from None
            # Say so, or the last line on stderr names the port lost here instead of the one used.
            taken, port = port, next_free_port(port)
            progress(f"local port {taken} was taken by {port_holder(taken)} before the tunnel could bind it; "
                     f"using {port} instead")
        except TunnelError:
            raise  # _wait_started stopped the daemon, or left it on purpose (SSH up, ComfyUI not yet)
        except BaseException:
            # Ctrl-C, SIGTERM/SIGHUP (Interrupted), or tunnels.json broke meanwhile: nobody would be
            # told about this daemon, so it must not outlive the command that spawned it.
            _abandon(target, proc)
            raise
    raise TunnelError(f"could not bind a local port for the tunnel to {target.name}")


def _abandon(target: SSHTarget, proc: subprocess.Popen) -> None:
    """Stop the daemon this command spawned and drop its entry; a further signal waits until done."""
    from ..core.procs import stop_child
    from ..core.signals import shielded

    with shielded():
        log.info("start of the tunnel to %s did not finish; stopping its daemon (pid %d)", target.id, proc.pid)
        stop_child(proc, timeout=5.0)  # our own child: no pid-reuse question
        try:
            drop_entry(target.id, pid=proc.pid)
        except AutopodError as e:
            log.warning("could not remove the tunnel entry of %s: %s", target.id, e)


class _PortTaken(Exception):
    pass


def _wait_started(target: SSHTarget, proc: subprocess.Popen, port: int, deadline: float,
                  require_remote: bool, log_start: tuple[int, int] = (0, 0)) -> TunnelInfo:
    """Until the daemon says it is up (and, if required, a connection through the tunnel works)."""
    last_state = ""
    while True:
        entry = recorded_entry(target.id) or {}
        mine = as_int(entry, "pid") == proc.pid
        state = (entry.get("state") or "") if mine else ""
        if state != last_state and state:
            log.debug("tunnel daemon %d: %s", proc.pid, state)
            last_state = state
        if state == "failed" or proc.poll() is not None:
            err = entry.get("error") if mine else None
            kind = entry.get("error_kind") if mine else None
            _reap(proc)
            drop_entry(target.id, pid=proc.pid)
            if kind == "port_in_use":
                raise _PortTaken()
            if kind == "host_key":
                from ..core.errors import HostKeyMismatch

                raise HostKeyMismatch(err or "host key mismatch")
            if kind == "config":  # the key file, a passphrase: the user's to fix (exit 2)
                from ..core.errors import ConfigError

                raise ConfigError(err or f"the tunnel to {target.name} is misconfigured")
            raise TunnelError(f"the tunnel to {target.name} failed: {err or log_tail(target.id, log_start)}")
        if state == "up" and (not require_remote
                              or probe(port, timeout=min(3.0, max(0.5, deadline - time.monotonic())))):
            info = _info(recorded_entry(target.id) or entry, check=False)
            info.healthy = require_remote
            log.info("tunnel up: %s", _describe(info))
            return info
        if time.monotonic() >= deadline:
            if state == "up":
                raise _not_answering(target, entry)
            kill_entry_processes(entry if mine else {"pid": proc.pid, "target_id": target.id})
            _reap(proc)
            drop_entry(target.id, pid=proc.pid)
            raise TunnelError(f"the tunnel to {target.name} did not come up in time "
                              f"(last state: {state or 'starting'}); see {tunnel_log_path(target.id)}")
        time.sleep(0.01)  # a read of a small file: cheap, and every ms shows in tunnel.start


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def _new_entry(target: SSHTarget, pid: int, port: int, backend: str, now: float) -> dict[str, Any]:
    return {
        "target_id": target.id, "name": target.name, "kind": target.kind, "pid": pid, "local_port": port,
        "remote_host": target.remote_host, "remote_port": target.remote_port, "ssh_host": target.host,
        "ssh_port": target.port, "started_at": now, "backend": backend, "state": "starting",
        "target": target.to_dict(),
    }


def daemon_argv(target: SSHTarget, port: int, backend: str) -> list[str]:
    """No secrets here: argv is visible to every local user."""
    return [sys.executable, "-m", DAEMON_MODULE, "--target-id", target.id, "--local-port", str(port),
            "--backend", backend, "--target", json.dumps(target.to_dict(), sort_keys=True)]


def _spawn(target: SSHTarget, port: int, backend: str) -> tuple[subprocess.Popen, tuple[int, int]]:
    """The daemon, and where its own lines begin in its log: (inode, size) before it started."""
    env = dict(os.environ)
    env["AUTOPOD_HOME"] = str(autopod_home().resolve())  # the daemon runs from / ; a relative home would move
    pkg_root = str(Path(__file__).resolve().parents[2])  # the folder that holds the autopod package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    # Raw stdout/stderr (a crash before logging is set up) go to the same file as the daemon's log records.
    fd = open_private(tunnel_log_path(target.id))
    try:
        os.fchmod(fd, 0o600)
        st = os.fstat(fd)
        start = (st.st_ino, st.st_size)
        proc = subprocess.Popen(daemon_argv(target, port, backend), start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, close_fds=True,
                                cwd="/", env=env)
    finally:
        os.close(fd)
    return proc, start


def stop_tunnel_for(target_id: str) -> bool:
    """Stop the tunnel of ``target_id`` if one is recorded (pod.stop, pod.kill). True if a daemon was stopped.

    Raises only AutopodError (CorruptState for a damaged tunnels.json), so the pod command
    that calls it can warn and carry on.
    """
    try:
        return _stop_tunnel_for(target_id)
    except AutopodError:
        raise
    except Exception as e:  # e.g. psutil refusing to signal: still only a warning for pod.stop
        log.debug("stopping the tunnel to %s failed", target_id, exc_info=True)
        raise TunnelError(f"could not stop the tunnel to {target_id}: {type(e).__name__}: {e}") from None


def _stop_tunnel_for(target_id: str) -> bool:
    entry = recorded_entry(target_id)
    if entry is None:
        return False
    killed = kill_entry_processes(entry)
    drop_entry(target_id, pid=as_int(entry, "pid"))
    log.info("stopped tunnel to %s (pid %s)%s", entry.get("name") or target_id, entry.get("pid"),
             "" if killed else "; its daemon was already gone")
    return killed


def stop_tunnel(target: SSHTarget | str | None) -> Outcome:
    """Stop the tunnel for a target, a target id/name, or the only recorded one (None)."""
    ref = target.id if isinstance(target, SSHTarget) else target
    entry = find_entry(ref)
    if entry is None and isinstance(target, SSHTarget):
        entry = find_entry(target.name)
    if entry is None:
        if ref and not isinstance(target, SSHTarget):
            check_known_ref(ref)
        return Outcome(False, f"no tunnel to {ref} is running" if ref else "no tunnel is running")
    info = _info(entry, check=False)
    killed = stop_tunnel_for(entry["target_id"])
    what = f"stopped the tunnel to {info.name} on {info.local_address}"
    return Outcome(True, what if killed else f"{what} (removed a stale entry: its daemon was already gone)",
                   key="tunnel", data=info)


def stop_all() -> Outcome:
    stopped, failed = [], []
    for entry in recorded_entries():
        try:
            stop_tunnel_for(entry["target_id"])
        except TunnelError as e:  # one tunnel that resists must not keep the others running
            failed.append(str(e))
            continue
        stopped.append(entry.get("name") or entry["target_id"])
    if failed:
        done = f"stopped {', '.join(sorted(stopped))}; " if stopped else ""
        raise TunnelError(done + "; ".join(failed))
    if not stopped:
        return Outcome(False, "no tunnel is running", key="stopped", data=[])
    return Outcome(True, f"stopped {len(stopped)} tunnel(s): {', '.join(sorted(stopped))}", key="stopped",
                   data=sorted(stopped))


def cleanup() -> Outcome:
    """Drop entries whose daemon is gone (or whose pid now belongs to another process)."""
    dropped = []
    for entry in recorded_entries():
        if entry_process_alive(entry):
            continue
        if child_is_ours(entry):  # an ssh left behind by a killed daemon still holds the port
            terminate(as_int(entry, "child_pid"))
        if drop_entry(entry["target_id"], pid=as_int(entry, "pid")):
            dropped.append(entry.get("name") or entry["target_id"])
            log.info("cleanup: dropped stale tunnel entry %s (pid %s)", entry["target_id"], entry.get("pid"))
    if not dropped:
        return Outcome(False, "no stale tunnel entries", key="removed", data=[])
    return Outcome(True, f"removed {len(dropped)} stale tunnel entr{'y' if len(dropped) == 1 else 'ies'}: "
                         f"{', '.join(sorted(dropped))}", key="removed", data=sorted(dropped))


def start_tunnel(ref: str | None, *, local_port: int | None = None, remote_port: int | None = None,
                 backend: str | None = None, timeout: float = 30.0, ssh_key: str | None = None) -> Outcome:
    """``tunnel.start``: resolve ``ref`` (inventory host, recorded tunnel, or pod) and ensure its tunnel.

    ``ssh_key`` replaces the configured key for this tunnel (a running tunnel is reused as it is:
    it is already logged in)."""
    from .resolve import resolve_target

    key = None
    if ssh_key is not None:
        key = Path(ssh_key).expanduser()
        if not key.is_file():
            raise UsageError(f"--ssh-key {ssh_key!r} is not a file")
    if local_port is not None and not 0 < int(local_port) < 65536:
        raise UsageError(f"--local-port must be 1..65535, got {local_port}")
    if remote_port is not None and not 0 < int(remote_port) < 65536:
        raise UsageError(f"--remote-port must be 1..65535, got {remote_port}")
    target = resolve_target(ref, remote_port=remote_port, key_path=key)
    return ensure_tunnel(target, local_port=local_port, explicit_port=local_port is not None, backend=backend,
                         timeout=timeout, require_remote=True)

"""The detached process that holds one tunnel and brings it back when it dies.

Started by ``autopod.tunnels.manager.ensure_tunnel`` as ``python -m autopod.tunnels.daemon``
in a new session (no controlling terminal, so closing the shell does not end
it). It records its state in ``AUTOPOD_HOME/tunnels.json`` (starting, up,
recovering, failed), checks the SSH connection every few seconds, and
reconnects with exponential backoff. SIGTERM stops the forward and removes the
entry. It never prompts: a key passphrase comes from ssh-agent or
AUTOPOD_SSH_PASSPHRASE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ..core.errors import ConfigError, HostKeyMismatch, TunnelError
from .targets import SSHTarget

log = logging.getLogger("autopod.tunneld")

CHECK_INTERVAL_S = float(os.environ.get("AUTOPOD_TUNNEL_CHECK_S", "1"))  # how often the forward is checked
# How often the daemon checks that tunnels.json still names it, and retries a write that failed.
RECORD_INTERVAL_S = float(os.environ.get("AUTOPOD_TUNNEL_RECORD_S", "5"))
PING_INTERVAL_S = float(os.environ.get("AUTOPOD_TUNNEL_PING_S", "10"))  # SSH-level liveness probe
PING_TIMEOUT_S = 10.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
GIVE_UP_S = float(os.environ.get("AUTOPOD_TUNNEL_GIVE_UP_S", "3600"))  # unreachable this long: stop trying
CONNECT_TIMEOUT_S = 15.0
# The relay reads the client and the channel's buffer in chunks of this size (sshtunnel's own is 16 KiB).
# Most downloaded data never takes that path: paramiko's transport thread sends it to the client directly
# (autopod/relay.py). See bench/README.md for the measurements.
RELAY_CHUNK = 256 * 1024
# SSH channel window, the same as OpenSSH's (2 MiB). Wider windows measured slower on loopback:
# paramiko then buffers more and copies more bytes objects.
WINDOW_SIZE = 2 * 1024 * 1024
MAX_PACKET = 32768  # larger packets (sshd allows 256 KiB) measured no faster


class PortInUse(TunnelError):
    pass


class _Stop(BaseException):
    """Raised by SIGTERM while connecting, which can take CONNECT_TIMEOUT_S: stop now, not after."""


class _ErrorTrap(logging.Handler):
    """sshtunnel only logs the cause of a failed start; keep the last messages for the error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages = (self.messages + [record.getMessage()])[-3:]


# -- backends ----------------------------------------------------------------------
class SSHTunnelBackend:
    """An sshtunnel SSHTunnelForwarder with every unsafe default overridden."""

    name = "sshtunnel"
    child_pid = None

    def __init__(self, target: SSHTarget, local_port: int):
        self.target = target
        self.local_port = local_port
        self.fwd: Any = None
        self.trap = _ErrorTrap()
        self.logger = logging.getLogger("autopod.tunneld.sshtunnel")
        self.logger.addHandler(self.trap)
        self._last_ping = 0.0

    def start(self) -> None:
        from .hostkeys import pinned_key
        from .local import load_private_key, port_is_free

        t = self.target
        _pin_first_time(t)
        host_key = pinned_key(t.host, t.port)
        pkey = load_private_key(t.key_path)
        if not port_is_free(self.local_port):
            raise PortInUse(f"local port {self.local_port} is already in use")
        self.trap.messages = []
        fwd = _forwarder_class()(
            (t.host, t.port),
            ssh_username=t.user,
            ssh_pkey=pkey,
            allow_agent=pkey is None,  # only a passphrase-protected key without AUTOPOD_SSH_PASSPHRASE
            host_pkey_directories=[],  # None would load ~/.ssh/id_* behind our back
            ssh_config_file=None,  # ~/.ssh/config must not rewrite host, user, key or proxy
            ssh_host_key=host_key,  # pinned; sshtunnel accepts any key otherwise
            remote_bind_address=(t.remote_host, t.remote_port),
            local_bind_address=("127.0.0.1", self.local_port),  # sshtunnel's default is 0.0.0.0
            set_keepalive=15.0,
            logger=self.logger,  # None would add a stderr handler and capture warnings process-wide
            mute_exceptions=False,
        )
        try:
            fwd.start()
        except Exception as e:
            detail = "; ".join(self.trap.messages) or str(e)
            bound = bool(getattr(fwd, "_server_list", None))
            fwd.stop(force=True)
            if not bound and "might be in use" in detail:
                raise PortInUse(f"local port {self.local_port} is already in use") from None
            if "Bad host key" in detail:  # paramiko compared the key with the pinned one during the handshake
                raise _changed_key(t) from None
            raise TunnelError(f"cannot open the tunnel through {t.endpoint}: {detail}") from None
        self.fwd = fwd
        self._last_ping = time.monotonic()

    def check(self) -> str | None:
        """None when healthy, else why not."""
        fwd = self.fwd
        if fwd is None or not fwd.is_active:
            return "SSH session is not active"
        if time.monotonic() - self._last_ping >= PING_INTERVAL_S:
            self._last_ping = time.monotonic()
            return _ping(fwd._transport)
        return None

    def stop(self) -> None:
        if self.fwd is not None:
            try:
                self.fwd.stop(force=True)  # without force, stop() waits for open client connections
            except Exception as e:  # a dead transport may fail to close; the port is released either way
                log.debug("forwarder stop: %s", e)
            self.fwd = None


def _pin_first_time(t: SSHTarget) -> None:
    """Pin the host key on first contact. A key already pinned costs no extra handshake here: the
    connection itself is checked against it (paramiko's ``hostkey``, ssh's StrictHostKeyChecking)."""
    from .hostkeys import is_pinned, pin_on_first_use

    if not is_pinned(t.host, t.port):
        pin_on_first_use(t.host, t.port, timeout=CONNECT_TIMEOUT_S)  # HostKeyMismatch: a clear error, no retry


def _changed_key(t: SSHTarget) -> TunnelError:
    """The error for a handshake refused over its host key: the pinned-key message with the new key's fingerprint."""
    from .hostkeys import fetch_host_key, mismatch_message

    try:
        now = fetch_host_key(t.host, t.port, timeout=CONNECT_TIMEOUT_S)
        return HostKeyMismatch(mismatch_message(t.host, t.port, now))
    except TunnelError:
        return HostKeyMismatch(f"the SSH host key of {t.host}:{t.port} has CHANGED; refusing to connect")


def _ping(transport: Any) -> str | None:
    """Open and close a session channel: a dead link cannot answer, a live sshd always does."""
    import paramiko

    try:
        chan = transport.open_session(timeout=PING_TIMEOUT_S)
        chan.close()
    except paramiko.ChannelException:
        return None  # the server answered (it refused a session): the link is alive
    except (paramiko.SSHException, EOFError, OSError) as e:
        return f"SSH keepalive failed: {e or type(e).__name__}"
    return None


_FWD_CLASS: Any = None


def _forwarder_class() -> Any:
    """SSHTunnelForwarder with a relay that costs about what OpenSSH costs per byte (bench/README.md)."""
    global _FWD_CLASS
    if _FWD_CLASS is not None:
        return _FWD_CLASS
    if os.environ.get("AUTOPOD_TUNNEL_RELAY") == "stock":  # sshtunnel as shipped, for comparisons
        import sshtunnel

        return sshtunnel.SSHTunnelForwarder
    import paramiko
    import sshtunnel

    from . import relay

    class _Handler(sshtunnel._ForwardHandler):
        def handle(self) -> None:
            try:
                chan = self.ssh_transport.open_channel(
                    kind="direct-tcpip", dest_addr=self.remote_address, src_addr=self.request.getpeername(),
                    timeout=sshtunnel.TUNNEL_TIMEOUT, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET)
            except Exception as e:
                self.logger.info("open channel to %s failed: %s", self.remote_address, e)
                raise sshtunnel.HandlerSSHTunnelForwarderError(str(e))
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay.relay(self.request, chan, RELAY_CHUNK)  # closes both when done

    class _Forwarder(sshtunnel.SSHTunnelForwarder):
        def _make_ssh_forward_handler_class(self, remote_address_: Any) -> Any:
            fwd = self

            class Handler(_Handler):
                remote_address = remote_address_
                ssh_transport = fwd._transport
                logger = fwd.logger

            return Handler

        def _get_transport(self) -> Any:
            if self.ssh_proxy:  # never set by autopod (ssh_config_file=None, no ssh_proxy)
                return self._tune(super()._get_transport())
            # What sshtunnel does for a (host, port), with our socket and Transport classes (relay).
            try:
                sock = relay.ReadAheadSocket.connect((self.ssh_host, self.ssh_port), CONNECT_TIMEOUT_S)
            except OSError as e:  # worded as paramiko words it; sshtunnel logs args[0]
                raise paramiko.SSHException(f"Unable to connect to {self.ssh_host}: {e}") from e
            transport_class = relay.DirectTransport if relay.direct_supported() else paramiko.Transport
            if transport_class is paramiko.Transport:
                self.logger.warning("this paramiko lacks the internals the direct relay uses; relaying through it")
            try:
                t = transport_class(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
            except BaseException:
                sock.close()
                raise
            t.set_keepalive(self.set_keepalive)
            t.use_compression(compress=self.compression)
            t.daemon = self.daemon_transport
            return self._tune(t)

        @staticmethod
        def _tune(t: paramiko.Transport) -> paramiko.Transport:
            t.default_window_size = WINDOW_SIZE
            # AES-GCM needs no separate MAC pass: the cheapest cipher paramiko offers.
            opts = t.get_security_options()
            fast = [c for c in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr") if c in opts.ciphers]
            opts.ciphers = tuple(fast + [c for c in opts.ciphers if c not in fast])
            return t

    _FWD_CLASS = _Forwarder
    return _FWD_CLASS


class OpenSSHBackend:
    """A supervised ``ssh -N -L`` with the pinned known_hosts and no user config."""

    name = "openssh"

    def __init__(self, target: SSHTarget, local_port: int):
        self.target = target
        self.local_port = local_port
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: list[str] = []

    @property
    def child_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        from .hostkeys import known_hosts_path

        t = self.target
        remote = f"[{t.remote_host}]" if ":" in t.remote_host else t.remote_host  # an IPv6 address
        return [
            "ssh", "-N", "-L", f"127.0.0.1:{self.local_port}:{remote}:{t.remote_port}",
            "-p", str(t.port), "-i", str(t.key_path),
            "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts_path()}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT_S)}",
            # "--": nothing after it is an option, whatever the inventory says (SSHTarget checks it too).
            "-o", "LogLevel=ERROR", "-F", "/dev/null", "--", f"{t.user}@{t.host}",
        ]

    def start(self) -> None:
        from .local import port_is_free

        t = self.target
        _pin_first_time(t)
        if not port_is_free(self.local_port):
            raise PortInUse(f"local port {self.local_port} is already in use")
        self.stderr_tail = []
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, close_fds=True, preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True, name="ssh-stderr").start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the pump read the last words
                detail = "; ".join(self.stderr_tail) or f"ssh exited with {self.proc.returncode}"
                self.proc = None
                if "Address already in use" in detail or "cannot listen" in detail:
                    raise PortInUse(f"local port {self.local_port} is already in use")
                if "REMOTE HOST IDENTIFICATION HAS CHANGED" in detail or "Host key verification failed" in detail:
                    log.error("ssh refused the host key of %s:%s: %s", t.host, t.port, detail)
                    raise _changed_key(t)
                raise TunnelError(f"ssh to {t.endpoint} failed: {detail}")
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TunnelError(f"ssh to {t.endpoint} did not open the forward in time")

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                log.info("ssh: %s", line)
                self.stderr_tail = (self.stderr_tail + [line])[-3:]

    def check(self) -> str | None:
        if self.proc is None:
            return "ssh is not running"
        if self.proc.poll() is not None:
            return f"ssh exited with {self.proc.returncode}: {'; '.join(self.stderr_tail) or 'no message'}"
        return None

    def stop(self) -> None:
        from ..core.procs import stop_child

        stop_child(self.proc)
        self.proc = None


def _die_with_parent() -> None:
    """Linux: ssh gets SIGTERM when the daemon dies, even by SIGKILL, so no orphan holds the port."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


BACKENDS = {"sshtunnel": SSHTunnelBackend, "openssh": OpenSSHBackend}


# -- supervision -------------------------------------------------------------------
class Daemon:
    def __init__(self, target: SSHTarget, local_port: int, backend: str):
        self.target = target
        self.local_port = local_port
        self.backend_name = backend
        self.backend = BACKENDS[backend](target, local_port)
        self.stop_event = threading.Event()
        self.pid = os.getpid()
        self.state = ""
        self._unsaved: dict[str, Any] = {}  # fields a failed record() still has to write
        self._trouble: set[str] = set()  # state-file problems logged since the file last worked
        self.connecting = False  # inside backend.start(): a stop request interrupts it

    def _start_backend(self) -> None:
        self.connecting = True
        try:
            if self.stop_event.is_set():
                raise _Stop()
            self.backend.start()
        finally:
            self.connecting = False

    def record(self, **fields: Any) -> bool:
        """Write our state to tunnels.json. A failure (a damaged or locked file) is only a warning:
        the forward matters more than the bookkeeping, and the fields are written on a later try."""
        from .registry import update_entry

        if "state" in fields:
            self.state = fields["state"]
        t = self.target
        fields = {**self._unsaved, **fields}
        base = {
            "name": t.name, "kind": t.kind, "local_port": self.local_port, "remote_host": t.remote_host,
            "remote_port": t.remote_port, "ssh_host": t.host, "ssh_port": t.port, "backend": self.backend_name,
            "target": t.to_dict(), "child_pid": self.backend.child_pid, "updated_at": time.time(),
        }
        try:
            ok = update_entry(t.id, pid=self.pid, **base, **fields)
        except Exception as e:
            self._unsaved = fields
            self._state_trouble("cannot record the tunnel state (will retry)", e)
            return False
        self._unsaved = {}
        self._trouble.clear()
        return ok

    def still_recorded(self) -> bool:
        """False once our entry was removed or taken over; True while the state cannot be read."""
        from .registry import as_int, recorded_entry

        try:
            entry = recorded_entry(self.target.id)
        except Exception as e:  # a damaged state file is the user's to fix; keep the tunnel up meanwhile
            self._state_trouble("cannot read the tunnel state", e)
            return True
        if not self._unsaved:
            self._trouble.clear()
        return entry is not None and as_int(entry, "pid") == self.pid

    def _state_trouble(self, what: str, e: BaseException) -> None:
        # Once at WARNING, then DEBUG while the trouble lasts: a broken file must not flood the log.
        msg = f"{what}: {e}"
        log.log(logging.DEBUG if msg in self._trouble else logging.WARNING, "%s", msg)
        self._trouble.add(msg)

    def run(self) -> int:
        t = self.target
        log.info("tunnel daemon for %s (%s): 127.0.0.1:%d -> %s:%d via %s, backend %s", t.name, t.id,
                 self.local_port, t.remote_host, t.remote_port, t.endpoint, self.backend_name)
        self.record(state="starting", started_at=time.time())
        try:
            try:
                self._start_backend()
            except Exception as e:
                return self._fail(e)
            self.record(state="up", up_since=time.time(), error=None, error_kind=None, restarts=0)
            log.info("tunnel to %s is up on 127.0.0.1:%d", t.name, self.local_port)
            return self._supervise()
        finally:
            self.backend.stop()
            if self.state != "failed":
                from .manager import drop_entry

                try:
                    drop_entry(t.id, pid=self.pid)
                except Exception as e:
                    log.warning("cannot remove the tunnel entry: %s", e)
            log.info("tunnel daemon for %s exits", t.name)

    def _fail(self, e: BaseException) -> int:
        kind = ("port_in_use" if isinstance(e, PortInUse) else "host_key" if isinstance(e, HostKeyMismatch)
                else "config" if isinstance(e, ConfigError) else "error")
        msg = str(e) if isinstance(e, TunnelError) or hasattr(e, "exit_code") else f"{type(e).__name__}: {e}"
        log.error("tunnel to %s failed: %s", self.target.name, msg)
        self.record(state="failed", error=msg, error_kind=kind)
        return 1

    def _supervise(self) -> int:
        restarts = 0
        last_seen = time.monotonic()
        while not self.stop_event.wait(CHECK_INTERVAL_S):
            if time.monotonic() - last_seen >= RECORD_INTERVAL_S:
                last_seen = time.monotonic()
                if not self.still_recorded():
                    log.info("tunnel entry for %s was removed or taken over; stopping", self.target.id)
                    return 0
                if self._unsaved:
                    self.record()
            why = self.backend.check()
            if why is None:
                continue
            log.warning("tunnel to %s lost: %s; reconnecting", self.target.name, why)
            self.record(state="recovering", error=why)
            self.backend.stop()
            code = self._recover()
            if code is not None:
                return code
            restarts += 1
            self.record(state="up", up_since=time.time(), error=None, error_kind=None, restarts=restarts)
            log.info("tunnel to %s is back on 127.0.0.1:%d (restart %d)", self.target.name, self.local_port, restarts)
        log.info("stop requested")
        return 0

    def _recover(self) -> int | None:
        """Reconnect with backoff. None when back up, an exit code when giving up or stopped."""
        lost_at = time.monotonic()
        delay = BACKOFF_START_S
        while not self.stop_event.is_set():
            try:
                self._start_backend()
                return None
            except HostKeyMismatch as e:  # never retried: it would keep knocking on a possibly hostile host
                return self._fail(e)
            except Exception as e:
                log.warning("reconnect to %s failed: %s (next try in %.1fs)", self.target.name, e, delay)
                self.record(state="recovering", error=str(e))
            if time.monotonic() - lost_at > GIVE_UP_S:
                log.error("giving up on the tunnel to %s after %.0fs", self.target.name, GIVE_UP_S)
                return 1
            if self.stop_event.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX_S)
        return 0


def _log_to_own_file(target_id: str) -> None:
    """This tunnel's own rotated log (``autopod tunnel.start`` quotes it when the daemon fails)."""
    from ..core.errors import ConfigError
    from ..core.log import RedactingFilter, private_log_handler
    from .logs import LOG_BACKUPS, LOG_MAX_BYTES, log_format, tunnel_log_path

    try:
        h = private_log_handler(tunnel_log_path(target_id), max_bytes=LOG_MAX_BYTES, backups=LOG_BACKUPS)
    except (OSError, ConfigError) as e:  # the shared autopod.log still has everything
        log.warning("cannot open this tunnel's log: %s", e)
        return
    h.setFormatter(logging.Formatter(log_format()))
    h.setLevel(logging.INFO)
    h.addFilter(RedactingFilter())
    logging.getLogger("autopod").addHandler(h)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopod.tunnels.daemon", description=__doc__.splitlines()[0])
    p.add_argument("--target-id", required=True)
    p.add_argument("--local-port", type=int, required=True)
    p.add_argument("--backend", choices=sorted(BACKENDS), default="sshtunnel")
    p.add_argument("--target", required=True, help="the SSHTarget as JSON (no secrets)")
    args = p.parse_args(argv)

    from ..core.log import setup_logging

    setup_logging(stderr=False, name="tunneld")
    _log_to_own_file(args.target_id)
    try:
        target = SSHTarget.from_dict(json.loads(args.target))
    except Exception as e:  # only autopod writes --target; say what is wrong, not a traceback
        log.error("bad --target: %s: %s", type(e).__name__, e)
        return 2
    if target.id != args.target_id:
        log.error("--target-id %s does not match the target %s", args.target_id, target.id)
        return 2
    daemon = Daemon(target, args.local_port, args.backend)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        daemon.stop_event.set()
        if daemon.connecting:
            raise _Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal to hang up on, but be sure
    try:
        return daemon.run()
    except _Stop:
        log.info("stopped while connecting")
        return 0
    except Exception:
        log.exception("tunnel daemon crashed")
        return 1


if __name__ == "__main__":
    sys.exit(main())

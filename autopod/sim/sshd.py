"""A real OpenSSH ``sshd`` on a loopback port, owned by this process.

Used by the tunnel tests, the tunnel benchmark and the offline simulator (each
simulated pod runs one). It runs in the foreground (``-D -e``) as our own child;
stopping it ends the sessions it accepted too, as a pod that stops ends them. It
listens on 127.0.0.1 only and accepts public keys only.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..core.paths import open_private
from ..core.procs import stop_child

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/opt/homebrew/sbin/sshd")


def find_sshd() -> str | None:
    """Absolute path of OpenSSH's sshd (it refuses to re-exec from a relative path), or None."""
    for cand in SSHD_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalSSHD:
    """``with LocalSSHD(workdir, authorized_keys_text) as sshd: ... sshd.port ...``"""

    def __init__(self, workdir: Path, authorized_keys: str, *, host_key: Path | None = None, port: int = 0,
                 sshd_path: str | None = None, startup_timeout: float = 10.0, env: dict[str, str] | None = None):
        self.workdir = Path(workdir).resolve()
        self.authorized_keys = authorized_keys
        self.host_key = Path(host_key) if host_key else None
        self.port = int(port)
        self.sshd_path = sshd_path or find_sshd()
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})  # set in every session (SetEnv), like a container's environment
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None
        self.host_key_pub = ""

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> "LocalSSHD":
        if not self.sshd_path:
            raise FileNotFoundError("OpenSSH sshd not found (install openssh-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.host_key is None:
            self.host_key = self.workdir / "ssh_host_ed25519_key"
            if not self.host_key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autopod-sim-host",
                                "-f", str(self.host_key)], check=True, stdin=subprocess.DEVNULL)
        self.host_key.chmod(0o600)
        self.host_key_pub = Path(str(self.host_key) + ".pub").read_text().strip()
        auth = self.workdir / "authorized_keys"
        auth.write_text(self.authorized_keys.rstrip("\n") + "\n")
        auth.chmod(0o600)
        if os.geteuid() == 0:
            # sshd's privilege separation directory; Debian creates it only through systemd.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        fixed = bool(self.port)
        last_err = ""
        for _ in range(1 if fixed else 5):  # a random port can be taken between pick and bind
            port = self.port if fixed else free_port()
            cfg = self._write_config(port)
            log = os.fdopen(open_private(self.workdir / "sshd.log"), "ab")
            self.proc = subprocess.Popen([self.sshd_path, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, close_fds=True)
            log.close()
            if self._wait_ready(port):
                self.port = port
                return self
            last_err = self._log_tail()
            self._terminate()
        raise RuntimeError(f"sshd did not start: {last_err}")

    def stop(self) -> None:
        self._terminate()

    def __enter__(self) -> "LocalSSHD":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- internals --------------------------------------------------------------
    def _write_config(self, port: int) -> Path:
        cfg = self.workdir / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "AllowTcpForwarding yes",
            "PermitOpen any",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            *([_set_env(self.env)] if self.env else []),
            "",
        ]))
        return cfg

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return (self.workdir / "sshd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _terminate(self) -> None:
        """The listener and every session it forked, as the end of a container ends them: sshd leaves its
        sessions running when the listener stops, and a stopped pod must not keep a tunnel into it. Each
        process is frozen before its children are listed, so none forks one that would be missed (sshd's
        title overwrites its environment, so a marker there cannot find them afterwards)."""
        if self.proc is not None and self.proc.poll() is None:
            import psutil

            frozen, todo = [], [self.proc.pid]
            while todo:
                try:
                    proc = psutil.Process(todo.pop())
                    proc.suspend()
                    frozen.append(proc)
                    todo += [c.pid for c in proc.children()]
                except psutil.Error:
                    continue  # gone meanwhile
            for proc in frozen:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        stop_child(self.proc)  # reaps the listener
        self.proc = None


def _set_env(env: dict[str, str]) -> str:
    """An sshd ``SetEnv`` line; each NAME=VALUE quoted, so paths with spaces survive."""
    for k, v in env.items():
        if '"' in k + v or "\n" in k + v or "=" in k:
            raise ValueError(f"cannot pass {k!r} through sshd's SetEnv")
    return "SetEnv " + " ".join(f'"{k}={v}"' for k, v in env.items())

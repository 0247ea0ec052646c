"""Fixtures for tests against a real OpenSSH server on loopback.

``sshd`` (session): OpenSSH's sshd on a free 127.0.0.1 port, with a generated
ed25519 host key and an authorized user key; ``http_backend`` (session): a small
threaded HTTP server behind it; ``ssh_box``: an inventory host "box" pointing at
both, and a teardown that stops every tunnel daemon the test started.

Without sshd these tests skip with a reason; under CI (``CI=true``) they fail.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["require_sshd", "ssh_user_key", "sshd", "http_backend", "ssh_box", "SSHBox", "write_host_inventory",
           "kill_tunnel_daemons"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BODY = b"hello through the tunnel\n"


def require_sshd() -> str:
    """The sshd path, or skip (fail under CI) with the reason."""
    from autopod.sim.sshd import find_sshd

    path = find_sshd()
    missing = [] if path else ["sshd (apt-get install openssh-server)"]
    missing += [t for t in ("ssh", "ssh-keygen") if not shutil.which(t)]
    if missing:
        reason = "OpenSSH is not installed: " + ", ".join(missing)
        if IN_CI:
            pytest.fail(reason + " (CI=true: these tests must run)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def ssh_user_key(tmp_path_factory) -> Path:
    require_sshd()
    d = tmp_path_factory.mktemp("userkey")
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autopod-test", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    return key


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        size = BODY
        if self.path.startswith("/bytes/"):
            size = b"x" * int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(size)))
        self.end_headers()
        self.wfile.write(size)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="session")
def http_backend():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, ssh_user_key):
    from autopod.sim.sshd import LocalSSHD

    path = require_sshd()
    pub = Path(str(ssh_user_key) + ".pub").read_text()
    server = LocalSSHD(tmp_path_factory.mktemp("sshd"), pub, sshd_path=path)
    try:
        server.start()
    except (OSError, RuntimeError) as e:
        if IN_CI:
            pytest.fail(f"sshd did not start: {e}")
        pytest.skip(f"sshd did not start here: {e}")
    yield server
    server.stop()


@dataclass
class SSHBox:
    name: str
    target_id: str
    ssh_port: int
    http_port: int
    key: Path
    user: str
    inventory: Path


def write_host_inventory(path: Path, hosts: dict[str, dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"hosts": hosts}, sort_keys=False))
    return path


@contextlib.contextmanager
def comfy_behind_host(sshd, key: Path, comfy_port: int, inventory: Path, monkeypatch, home: Path):  # noqa: ANN001
    """Inventory host "gpu" (this test sshd) in front of a ComfyUI on ``comfy_port``, with quick tunnel pings;
    every tunnel autopod starts meanwhile is stopped afterwards."""
    write_host_inventory(inventory, {"gpu": {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                                             "key": str(key), "comfy_address": f"127.0.0.1:{comfy_port}"}})
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inventory))
    monkeypatch.setenv("AUTOPOD_TUNNEL_PING_S", "1")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    try:
        yield
    finally:
        from autopod.tunnels.manager import stop_all

        try:
            stop_all()
        finally:
            kill_tunnel_daemons(home.resolve())


def kill_tunnel_daemons(home: Path) -> list[int]:
    """Stop every tunnel daemon whose AUTOPOD_HOME is ``home``, recorded or not (a test's safety net)."""
    import psutil

    killed = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "autopod.tunnels.daemon" not in (p.info["cmdline"] or []):
                continue
            if p.environ().get("AUTOPOD_HOME") != str(home):
                continue
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)
        except psutil.Error:
            continue
    return killed


@pytest.fixture
def ssh_box(sshd, http_backend, ssh_user_key, tmp_path, monkeypatch, autopod_home):
    """Inventory host "box" = the test sshd, with the HTTP server as its "ComfyUI"."""
    inv = write_host_inventory(tmp_path / "inventory.yml", {"box": {
        "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(ssh_user_key),
        "comfy_address": f"127.0.0.1:{http_backend}",
    }})
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    monkeypatch.setenv("AUTOPOD_TUNNEL_PING_S", "1")  # detect a dead link within a second
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield SSHBox("box", "host:box", sshd.port, http_backend, ssh_user_key, sshd.user, inv)
    from autopod.tunnels.manager import stop_all

    try:
        stop_all()
    except Exception:  # a test may leave tunnels.json damaged on purpose: the sweep below still runs
        pass
    finally:
        kill_tunnel_daemons(autopod_home.resolve())


def wait_until(pred, timeout: float = 10.0, interval: float = 0.1):
    """``pred()``'s first true value within ``timeout``, else its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()

"""Tunnels against a real OpenSSH sshd on loopback, driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from sshd_server import BODY, wait_until

from autopod.sim.sshd import free_port

pytestmark = pytest.mark.sshd


def fetch(port: int, path: str = "/", timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def entries(home) -> dict:
    path = home / "tunnels.json"
    return json.loads(path.read_text()).get("tunnels", {}) if path.exists() else {}


def daemons_for(home) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "autopod.tunnels.daemon" in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE \
                    and p.environ().get("AUTOPOD_HOME") == str(home.resolve()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_tunnel_outlives_the_process_that_started_it(ssh_box, run_autopod, autopod_home):
    port = free_port()
    r = run_autopod("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["changed"] is True and doc["local_port"] == port
    info = doc["tunnel"]
    assert info["healthy"] is True and info["target_id"] == "host:box"
    # The CLI process has exited; the daemon it started still forwards.
    assert fetch(port) == BODY
    rec = entries(autopod_home)["host:box"]
    assert rec["pid"] == info["pid"] and rec["local_port"] == port
    assert (rec["ssh_host"], rec["ssh_port"], rec["remote_port"]) == ("127.0.0.1", ssh_box.ssh_port, ssh_box.http_port)
    assert rec["started_at"] <= time.time() and rec["state"] == "up"
    # A session of its own: closing the terminal sends it no SIGHUP.
    assert os.getsid(rec["pid"]) == rec["pid"] != os.getsid(0)
    # Every listening socket of the daemon is on 127.0.0.1, never 0.0.0.0.
    listening = [c for c in psutil.Process(rec["pid"]).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    # The operation is in the autopod log, the daemon's side included.
    log_text = (autopod_home / "logs" / "autopod.log").read_text()
    assert "spawned tunnel daemon" in log_text and "tunneld" in log_text


def test_reuse_status_list_stop(ssh_box, cli, autopod_home):
    port = free_port()
    first = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert first.code == 0, first.err
    again = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert again.code == 0 and again.json["changed"] is False and again.json["status"] == "ok"
    assert again.json["tunnel"]["pid"] == first.json["tunnel"]["pid"]
    # Without flags, the only tunnel is meant; the default port does not matter for reuse.
    plain = cli("tunnel.start", "--pod", "box")
    assert plain.code == 0 and plain.out.startswith("ok: ") and f"127.0.0.1:{port}" in plain.out
    assert len(daemons_for(autopod_home)) == 1 and list(entries(autopod_home)) == ["host:box"]

    st = cli("tunnel.status", "--json")
    assert st.code == 0 and st.json["healthy"] is True and st.json["local_port"] == port
    human = cli("tunnel.status", "--pod", "box")
    assert human.code == 0 and "HEALTHY  yes" in human.out
    rows = cli("tunnel.list", "--json").json
    assert [(r["name"], r["local_port"], r["healthy"]) for r in rows] == [("box", port, True)]

    stop = cli("tunnel.stop", "--pod", "box")
    assert stop.code == 0 and stop.out.startswith("changed: stopped the tunnel to box")
    assert wait_until(lambda: not daemons_for(autopod_home), 5)
    assert entries(autopod_home) == {}
    down = cli("tunnel.status", "--pod", "box", "--json")
    assert down.code == 1 and down.json["healthy"] is False
    assert cli("tunnel.stop", "--pod", "box").out.startswith("ok: ")
    assert cli("tunnel.list", "--json").json == []


def test_sigkill_of_the_daemon_then_start_recreates_it(ssh_box, cli, autopod_home):
    port = free_port()
    pid = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json").json["tunnel"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5)
    assert cli("tunnel.status", "--pod", "box").code == 1
    listed = cli("tunnel.list", "--json").json
    assert listed[0]["alive"] is False and listed[0]["state"] == "gone"

    r = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert r.code == 0, r.err
    assert r.json["changed"] is True and r.json["tunnel"]["pid"] != pid
    assert "gone" in r.err and "recreated" in r.json["msg"]
    assert fetch(port) == BODY


def test_cleanup_drops_dead_entries_only(ssh_box, cli, autopod_home):
    port = free_port()
    pid = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json").json["tunnel"]["pid"]
    assert cli("tunnel.cleanup", "--json").json["changed"] is False  # alive: kept
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: cli("tunnel.status").code == 1, 5)
    r = cli("tunnel.cleanup", "--json")
    assert r.code == 0 and r.json["changed"] is True and r.json["removed"] == ["box"]
    assert entries(autopod_home) == {}


def test_daemon_reconnects_when_the_ssh_connection_dies(ssh_box, sshd, cli, autopod_home):
    port = free_port()
    pid = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json").json["tunnel"]["pid"]
    # Kill the per-connection sshd processes: the SSH session dies under the daemon.
    sessions = psutil.Process(sshd.proc.pid).children(recursive=True)
    assert sessions
    for p in sessions:
        p.kill()
    assert wait_until(lambda: entries(autopod_home)["host:box"].get("restarts", 0) >= 1, 15), entries(autopod_home)
    assert fetch(port) == BODY
    assert entries(autopod_home)["host:box"]["pid"] == pid  # the same daemon recovered
    log_text = (autopod_home / "logs" / "autopod.log").read_text()
    assert "lost" in log_text and "is back" in log_text


def test_taken_default_port_moves_to_the_next_free_one(ssh_box, cli):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", 8188))
            squatter.listen()
        except OSError:
            pass  # something else already holds 8188: the same situation
        r = cli("tunnel.start", "--pod", "box", "--json")
        assert r.code == 0, r.err
        got = r.json["local_port"]
        assert got != 8188
        assert "local port 8188 is in use" in r.err and f"using {got}" in r.err
        assert "(local port 8188 was in use)" in r.json["msg"]
        assert fetch(got) == BODY


def test_taken_explicit_port_fails_and_names_the_holder(ssh_box, cli, autopod_home):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert r.code == 1
    assert f"local port {port} is already in use by pid {os.getpid()}" in r.err
    assert r.json["failed"] is True
    assert entries(autopod_home) == {} and not daemons_for(autopod_home)


def test_port_held_by_another_tunnel_is_named(ssh_box, cli, tmp_path, monkeypatch):
    from sshd_server import write_host_inventory

    port = free_port()
    assert cli("tunnel.start", "--pod", "box", "--local-port", str(port)).code == 0
    hosts = {"box": {"host": "127.0.0.1", "port": ssh_box.ssh_port, "user": ssh_box.user, "key": str(ssh_box.key),
                     "comfy_address": f"127.0.0.1:{ssh_box.http_port}"}}
    hosts["box2"] = dict(hosts["box"])
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(write_host_inventory(tmp_path / "two.yml", hosts)))
    r = cli("tunnel.start", "--pod", "box2", "--local-port", str(port))
    assert r.code == 1 and "the autopod tunnel to box" in r.err


@pytest.mark.parametrize("backend", ["sshtunnel", "openssh"])
def test_changed_host_key_is_refused(ssh_box, cli, autopod_home, tmp_path, backend):
    """A pinned key is checked in the tunnel's own handshake (no second connection just to look)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "known_hosts").write_text(f"[127.0.0.1]:{ssh_box.ssh_port} {other[0]} {other[1]}\n")
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(free_port()), "--backend", backend, "--json")
    assert r.code == 1
    assert "host key" in r.err and "CHANGED" in r.err and "ssh-keygen -R" in r.err
    assert entries(autopod_home) == {} and not daemons_for(autopod_home)


def test_concurrent_starts_give_one_tunnel(ssh_box, autopod_home):
    port = free_port()
    cmd = [sys.executable, "-m", "autopod", "tunnel.start", "--pod", "box", "--local-port", str(port), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(3)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert sorted(d["changed"] for d in docs) == [False, False, True]
    assert len({d["tunnel"]["pid"] for d in docs}) == 1
    assert len(daemons_for(autopod_home)) == 1 and list(entries(autopod_home)) == ["host:box"]
    assert fetch(port) == BODY


def test_openssh_backend(ssh_box, cli, autopod_home):
    port = free_port()
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--backend", "openssh", "--json")
    assert r.code == 0, r.err
    assert r.json["tunnel"]["backend"] == "openssh"
    assert fetch(port) == BODY
    rec = entries(autopod_home)["host:box"]
    ssh = psutil.Process(rec["child_pid"])
    argv = ssh.cmdline()
    assert argv[0] == "ssh" and f"127.0.0.1:{port}:127.0.0.1:{ssh_box.http_port}" in argv
    for opt in ("StrictHostKeyChecking=yes", f"UserKnownHostsFile={autopod_home.resolve() / 'known_hosts'}",
                "ExitOnForwardFailure=yes", "BatchMode=yes", "IdentitiesOnly=yes", "ServerAliveInterval=15"):
        assert opt in argv
    assert "-F" in argv and argv[argv.index("-F") + 1] == "/dev/null"
    assert argv[-2:] == ["--", f"{ssh_box.user}@127.0.0.1"]  # the destination can never be read as an option
    # Recovery: ssh dies, the daemon starts a new one on the same port.
    ssh.kill()
    assert wait_until(lambda: entries(autopod_home)["host:box"].get("restarts", 0) >= 1, 15)
    assert fetch(port) == BODY
    # SIGKILL of the daemon takes its ssh along: nothing keeps holding the port.
    child = entries(autopod_home)["host:box"]["child_pid"]
    os.kill(rec["pid"], signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 5)
    r2 = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--backend", "openssh", "--json")
    assert r2.code == 0 and r2.json["changed"] is True, r2.err


def test_start_requires_a_working_connection_but_comfy_callers_do_not(ssh_box, cli, autopod_home):
    from autopod.tunnels.manager import ensure_tunnel
    from autopod.tunnels.resolve import resolve_target

    closed = free_port()  # nothing listens there behind the SSH server
    port = free_port()
    r = cli("tunnel.start", "--pod", "box", "--remote-port", str(closed), "--local-port", str(port), "--timeout", "2")
    assert r.code == 1 and "nothing answers" in r.err
    # SSH itself works, so the daemon stays for when the service comes up.
    assert entries(autopod_home)["host:box"]["state"] == "up"
    assert cli("tunnel.status").code == 1
    o = ensure_tunnel(resolve_target("box", remote_port=closed), local_port=port, explicit_port=True)
    assert o.changed is False and o.data.local_port == port


def test_changed_endpoint_restarts_the_tunnel(ssh_box, cli, autopod_home):
    from autopod.tunnels.manager import ensure_tunnel
    from autopod.tunnels.resolve import resolve_target

    port = free_port()
    first = ensure_tunnel(resolve_target("box"), local_port=port, explicit_port=True, require_remote=True)
    moved = resolve_target("box", remote_port=free_port())
    second = ensure_tunnel(moved, local_port=port, explicit_port=True)
    assert second.changed is True and second.data.pid != first.data.pid
    assert entries(autopod_home)["host:box"]["remote_port"] == moved.remote_port
    assert not psutil.pid_exists(first.data.pid) or psutil.Process(first.data.pid).status() == psutil.STATUS_ZOMBIE


def test_stop_all_and_pod_stop_hook(ssh_box, cli, autopod_home):
    from autopod.tunnels.manager import stop_tunnel_for

    port = free_port()
    assert cli("tunnel.start", "--pod", "box", "--local-port", str(port)).code == 0
    assert stop_tunnel_for("host:box") is True
    assert stop_tunnel_for("host:box") is False
    assert cli("tunnel.start", "--pod", "box", "--local-port", str(port)).code == 0
    r = cli("tunnel.stop-all", "--json")
    assert r.code == 0 and r.json["stopped"] == ["box"]
    assert cli("tunnel.stop-all").out.startswith("ok: ")
    assert wait_until(lambda: not daemons_for(autopod_home), 5)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_daemon_keeps_its_forward_while_the_state_file_is_damaged(ssh_box, sshd, cli, autopod_home, monkeypatch):
    monkeypatch.setenv("AUTOPOD_TUNNEL_CHECK_S", "0.1")
    monkeypatch.setenv("AUTOPOD_TUNNEL_RECORD_S", "0.2")
    port = free_port()
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(port), "--json")
    assert r.code == 0, r.err
    pid = r.json["tunnel"]["pid"]
    path = autopod_home / "tunnels.json"
    good = path.read_text()
    bad = json.dumps({"tunnels": {"host:box": {"pid": "abc", "local_port": str(port)}}})
    path.write_text(bad)
    log_file = autopod_home / "logs" / "autopod.log"
    # The daemon read the damaged file at least once (a supervision cycle went by) and is still there.
    wait_until(lambda: "cannot read the tunnel state" in log_file.read_text() or not _alive(pid), 10)
    assert _alive(pid), log_file.read_text()[-2000:]
    assert "cannot read the tunnel state" in log_file.read_text() and fetch(port) == BODY
    # The SSH connection dies while the file is damaged: the daemon reconnects, its writes only warn.
    for p in psutil.Process(sshd.proc.pid).children(recursive=True):
        p.kill()
    assert wait_until(lambda: "is back" in log_file.read_text(), 15)
    assert "cannot record the tunnel state" in log_file.read_text()
    assert _alive(pid) and fetch(port) == BODY
    assert path.read_text() == bad  # the daemon never overwrites what it cannot read
    warnings = [ln for ln in log_file.read_text().splitlines() if " WARNING " in ln and "tunnel state" in ln]
    assert len(warnings) <= 3, warnings  # once per kind of trouble, not once per cycle
    # Once the file is repaired, the daemon writes what it could not write meanwhile.
    path.write_text(good)
    assert wait_until(lambda: entries(autopod_home)["host:box"].get("restarts") == 1, 10), entries(autopod_home)
    assert entries(autopod_home)["host:box"]["state"] == "up" and _alive(pid)


def test_each_tunnel_has_its_own_private_log(ssh_box, cli, autopod_home):
    from autopod.tunnels.manager import tunnel_log_path

    port = free_port()
    assert cli("tunnel.start", "--pod", "box", "--local-port", str(port)).code == 0
    path = tunnel_log_path("host:box")
    assert path.parent == autopod_home.resolve() / "logs" and path.name.startswith("tunnel-host-box")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "tunnel to box is up" in path.read_text()
    assert not (autopod_home / "logs" / "tunneld.out").exists()
    assert tunnel_log_path("host:a/b") != tunnel_log_path("host:a_b")  # unfit characters cannot collide
    assert "/" not in tunnel_log_path("host:../x").name


def test_a_failed_start_quotes_only_lines_of_its_own_daemon(ssh_box, cli, autopod_home, monkeypatch):
    from autopod.tunnels import logs, manager

    real_argv = manager.daemon_argv
    # A daemon that fails on its command line, leaving a line in the log.
    monkeypatch.setattr(manager, "daemon_argv", lambda *a: real_argv(*a) + ["--stale-marker"])
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(free_port()))
    assert r.code == 1 and "--stale-marker" in r.err
    # A daemon that dies without a word (OOM killer): the stale line is not its story.
    monkeypatch.setattr(manager, "daemon_argv", lambda *a: [
        sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(free_port()))
    assert r.code == 1 and "stale-marker" not in r.err
    assert f"no details (see {logs.tunnel_log_path('host:box')})" in r.err
    monkeypatch.setattr(manager, "daemon_argv", lambda *a: real_argv(*a) + ["--fresh-marker"])
    r = cli("tunnel.start", "--pod", "box", "--local-port", str(free_port()))
    assert r.code == 1 and "--fresh-marker" in r.err and "stale-marker" not in r.err
    assert entries(autopod_home) == {} and not daemons_for(autopod_home)


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
@pytest.mark.parametrize("field", ["user", "host"])
def test_option_like_user_or_host_is_refused_before_ssh_runs(field, backend, ssh_box, cli, autopod_home, tmp_path,
                                                             monkeypatch):
    from sshd_server import write_host_inventory

    marker = tmp_path / "pwned"
    evil = f"-oProxyCommand=touch {marker}"
    spec = {"host": "127.0.0.1", "port": ssh_box.ssh_port, "user": ssh_box.user, "key": str(ssh_box.key),
            "comfy_address": f"127.0.0.1:{ssh_box.http_port}", field: evil}
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(write_host_inventory(tmp_path / "evil.yml", {"box": spec})))
    r = cli("tunnel.start", "--pod", "box", "--backend", backend, "--local-port", str(free_port()), "--json")
    assert r.code == 2, r.err
    # The inventory loader refuses it first (with file and line); targets.py checks again for any other source.
    assert f"'{field}' in hosts.box must be" in r.err and "evil.yml:" in r.err
    assert not marker.exists() and entries(autopod_home) == {} and not daemons_for(autopod_home)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_start_leaves_no_daemon_behind(sig, code, ssh_box, autopod_home):
    port, closed = free_port(), free_port()  # nothing answers behind the tunnel: the start keeps waiting
    cmd = [sys.executable, "-m", "autopod", "tunnel.start", "--pod", "box", "--local-port", str(port),
           "--remote-port", str(closed), "--timeout", "60"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: entries(autopod_home).get("host:box", {}).get("state") == "up", 20)
        pid = entries(autopod_home)["host:box"]["pid"]
        p.send_signal(sig)
        _out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == code, err
    assert wait_until(lambda: not _alive(pid), 5)
    assert entries(autopod_home) == {} and not daemons_for(autopod_home)


def test_plain_word_ssh_key_flag_and_ls_alias(ssh_box, cli, tmp_path, monkeypatch):
    """`tunnel.start box --ssh-key K`: the key is the one the tunnel logs in with."""
    import shutil

    # A key the server does not know: the tunnel cannot log in with it.
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    r = cli("tunnel.start", "box", "--ssh-key", str(stranger), "--local-port", str(free_port()), "--timeout", "10")
    assert r.code == 1 and "Traceback" not in r.err, r.err
    # The inventory names a key that does not exist, the flag the one that works.
    copy = tmp_path / "copy_of_key"
    shutil.copy(ssh_box.key, copy)
    copy.chmod(0o600)
    broken = {"host": "127.0.0.1", "port": ssh_box.ssh_port, "user": ssh_box.user, "key": str(tmp_path / "gone"),
              "comfy_address": f"127.0.0.1:{ssh_box.http_port}"}
    from sshd_server import write_host_inventory

    monkeypatch.setenv("AUTOPOD_INVENTORY", str(write_host_inventory(tmp_path / "inv2.yml", {"box": broken})))
    assert cli("tunnel.start", "box").code == 2  # the configured key is missing
    r = cli("tunnel.start", "box", "--ssh-key", str(copy), "--json")
    assert r.code == 0, r.err
    assert r.json["changed"] is True and r.json["tunnel"]["name"] == "box"
    assert cli("tunnel.status", "box").code == 0
    listing = cli("tunnel.ls", "--json")
    assert [t["name"] for t in listing.json] == ["box"]
    assert cli("tunnel.start", "box", "--ssh-key", str(tmp_path / "nope")).code == 2
    assert cli("tunnel.stop", "box").code == 0


def test_a_key_the_daemon_cannot_read_is_a_usage_error(ssh_box, cli, autopod_home, tmp_path, monkeypatch):
    """The daemon reads the key; what is wrong with it comes back as exit 2, and no daemon is left."""
    from sshd_server import write_host_inventory

    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)], check=True)
    spec = {"host": "127.0.0.1", "port": ssh_box.ssh_port, "user": ssh_box.user, "key": str(locked),
            "comfy_address": f"127.0.0.1:{ssh_box.http_port}"}
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(write_host_inventory(tmp_path / "inv.yml", {"box": spec})))
    monkeypatch.delenv("AUTOPOD_SSH_PASSPHRASE", raising=False)
    r = cli("tunnel.start", "box", "--local-port", str(free_port()), "--json")
    assert r.code == 2, r.err
    assert "protected by a passphrase" in r.json["msg"]
    assert entries(autopod_home) == {} and not daemons_for(autopod_home)

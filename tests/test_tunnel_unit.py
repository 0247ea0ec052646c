"""Tunnel bookkeeping without an SSH server: state, pid ownership, ports, targets, flags."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from autopod.core.errors import AuthError, ConfigError, NotFound, TunnelError, UsageError
from autopod.tunnels import local, logs, manager, registry
from autopod.tunnels.resolve import resolve_target
from autopod.tunnels.targets import SSHTarget, split_address


def _target(target_id: str, name: str | None = None) -> SSHTarget:
    return SSHTarget(id=target_id, name=name or target_id, kind="pod", host="10.0.0.9", port=40022,
                     user="root", key_path="/nonexistent/key", remote_port=8188)


def _record(target_id: str, pid: int, **extra) -> None:
    t = _target(target_id, extra.pop("name", target_id))
    entry = manager._new_entry(t, pid, extra.pop("local_port", 18188), "sshtunnel", time.time())
    entry.update(state="up", **extra)
    with registry.state_file().update() as data:
        data.setdefault("tunnels", {})[target_id] = entry


_READY = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)"


def _sleeper(argv: list[str], **kw) -> subprocess.Popen:
    """A process that sleeps with ``argv`` as its command line (argv[0] included), returned once it
    runs. Until the child has exec'd, /proc shows the parent's command line and environment, so a
    check made right after Popen reads pytest's (a busy machine makes that window wide)."""
    p = subprocess.Popen([argv[0], "-c", _READY, *argv[1:]], executable=sys.executable, stdout=subprocess.PIPE,
                         **kw)
    try:
        assert p.stdout.readline() == b"up\n", "the sleeper did not start"
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        p.stdout.close()
    return p


@pytest.fixture
def stranger():
    """A process that is not ours, for pid-reuse scenarios."""
    p = _sleeper([sys.executable])
    yield p
    p.kill()
    p.wait()


@pytest.fixture
def fake_daemon():
    """A process whose command line is our daemon's for target pod123 on port 18188 (it only sleeps)."""
    p = _sleeper(manager.daemon_argv(_target("pod123"), 18188, "sshtunnel"))
    yield p
    p.kill()
    p.wait()


def test_reused_pid_is_never_ours_and_never_signalled(stranger, cli):
    _record("podX", stranger.pid)
    assert registry.process_is_ours(stranger.pid, "podX") is False
    r = cli("tunnel.stop", "--pod", "podX", "--json")
    assert r.code == 0 and "already gone" in r.json["msg"]
    time.sleep(0.2)
    assert stranger.poll() is None  # still running: it was not ours to kill
    _record("podX", stranger.pid)
    r = cli("tunnel.cleanup", "--json")
    assert r.json["removed"] == ["podX"] and stranger.poll() is None
    assert registry.recorded_entries() == []


def test_ownership_needs_the_module_and_the_target_id(fake_daemon):
    assert registry.process_is_ours(fake_daemon.pid, "pod123") is True
    assert registry.process_is_ours(fake_daemon.pid, "pod999") is False
    assert registry.process_is_ours(999999999, "pod123") is False
    assert registry.process_is_ours(None, "pod123") is False


def test_status_without_tunnels_exits_1(cli):
    r = cli("tunnel.status", "--json")
    assert r.code == 1 and r.json["healthy"] is False and r.json["running"] is False
    assert cli("tunnel.status").code == 1
    assert cli("tunnel.list", "--json").json == []
    assert cli("tunnel.cleanup").out.startswith("ok: ")


def test_several_tunnels_need_a_name(fake_daemon, stranger, cli):
    _record("pod123", fake_daemon.pid, name="one")
    _record("pod456", stranger.pid, name="two")
    r = cli("tunnel.stop")
    assert r.code == 2 and "several tunnels" in r.err
    # A live daemon whose local port does not answer is not healthy.
    st = cli("tunnel.status", "--pod", "one", "--json")
    assert st.code == 1 and st.json["running"] is True and st.json["healthy"] is False


def test_bad_flags_are_usage_errors(cli):
    assert cli("tunnel.start", "--local-port", "abc").code == 2
    assert cli("tunnel.start", "--local-port", "70000").code == 2
    r = cli("tunnel.start", "--pod", "nosuch", "--json")
    assert r.code == 2 and "RUNPOD_API_KEY" in r.json["msg"]  # not a host, not recorded: a pod needs the API


def test_unknown_backend_is_a_usage_error(tmp_path, monkeypatch, cli):
    key = tmp_path / "k"
    key.write_text("x")
    inv = tmp_path / "inv.yml"
    inv.write_text(f"hosts:\n  box: {{host: 127.0.0.1, port: 1, key: {key}}}\n")
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    r = cli("tunnel.start", "--pod", "box", "--backend", "putty")
    assert r.code == 2 and "--backend must be sshtunnel or openssh" in r.err
    # The same check for a value from the config key tunnel_backend.
    with pytest.raises(UsageError, match="unknown tunnel backend 'putty'"):
        manager._backend_for("putty", resolve_target("box"))


def test_choose_local_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert local.port_is_free(taken) is False
        with pytest.raises(TunnelError, match=f"local port {taken} is already in use by pid"):
            local.choose_local_port(taken, explicit=True)
        got = local.choose_local_port(taken, explicit=False)
        assert got > taken and local.port_is_free(got)


def test_a_default_port_taken_again_and_again_before_the_bind_moves_on(monkeypatch, autopod_home, capsys):
    """autopod under other AUTOPOD_HOMEs (the start lock is per home) takes the port we picked before our daemon
    binds it, six times running: the start moves on to the next port each time instead of giving up, and says
    which port it moved to each time, so the last line names the port really used."""
    tried = []

    def spawn(target, port, backend):
        tried.append(port)
        return types.SimpleNamespace(pid=900000 + len(tried)), (0, 0)

    def wait_started(target, proc, port, deadline, require_remote, log_start):
        if len(tried) <= 6:
            raise manager._PortTaken()
        return f"up on {port}"

    monkeypatch.setattr(manager, "_spawn", spawn)
    monkeypatch.setattr(manager, "_wait_started", wait_started)
    monkeypatch.setattr(manager, "choose_local_port", lambda want, explicit: want)  # each looks free when checked
    monkeypatch.setattr(manager, "next_free_port", lambda taken: taken + 1)
    monkeypatch.setattr(manager, "port_holder", lambda port: f"pid {port - 8000} (python3)")
    got = manager._start_daemon(_target("pod123"), 8188, False, "sshtunnel", time.monotonic() + 30, False)
    assert got == "up on 8194" and tried == list(range(8188, 8195))
    moves = [line for line in capsys.readouterr().err.splitlines() if line.startswith("local port")]
    assert moves == [f"local port {p} was taken by pid {p - 8000} (python3) before the tunnel could bind it; "
                     f"using {p + 1} instead" for p in range(8188, 8194)]
    tried.clear()
    with pytest.raises(TunnelError, match="local port 8188 is already in use"):  # a port the user named: no moving
        manager._start_daemon(_target("pod123"), 8188, True, "sshtunnel", time.monotonic() + 30, False)
    assert tried == [8188]


def test_probe_tells_a_dead_port_from_a_live_service():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert manager.probe(port, timeout=1) is False  # bound, not listening: refused
        s.listen()
        assert manager.probe(port, timeout=0.3) is True  # accepts and holds the connection


def test_inventory_host_target(tmp_path, monkeypatch):
    key = tmp_path / "id_ed25519"
    key.write_text("x")
    inv = tmp_path / "inv.yml"
    inv.write_text(f"hosts:\n  gpu: {{host: box.lan, port: 2222, user: me, key: {key}, "
                   "comfy_address: '10.1.1.1:8190'}\n")
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    t = resolve_target("gpu")
    assert (t.id, t.kind, t.host, t.port, t.user, t.key_path) == ("host:gpu", "host", "box.lan", 2222, "me", key)
    assert (t.remote_host, t.remote_port) == ("10.1.1.1", 8190)
    assert resolve_target("host:gpu", remote_port=9000).remote_port == 9000
    with pytest.raises(NotFound):
        resolve_target("host:nope")


def test_split_address():
    assert split_address("127.0.0.1:8188") == ("127.0.0.1", 8188)
    assert split_address("[::1]:8188") == ("::1", 8188)
    with pytest.raises(ConfigError):
        split_address("nohost")


def test_fast_path_uses_the_recorded_tunnel_without_runpod(fake_daemon, autopod_home):
    _record("pod123", fake_daemon.pid, name="mypod")
    code = ("import sys; from autopod.tunnels.resolve import resolve_target; t = resolve_target(None); "
            "u = resolve_target('mypod'); print(t.id, u.id, t.host, t.port, t.from_record, 'runpod' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["pod123", "pod123", "10.0.0.9", "40022", "True", "False"]


def test_dead_recorded_tunnel_is_not_a_fast_path(stranger):
    _record("pod123", stranger.pid, name="mypod")
    with pytest.raises(AuthError):  # falls through to the API, which has no key here
        resolve_target("mypod")


def test_passphrase_keys_never_prompt(tmp_path, monkeypatch):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-pass", "-f", str(key)], check=True)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv(local.PASSPHRASE_ENV, raising=False)
    with pytest.raises(ConfigError, match="ssh-agent") as e:
        local.load_private_key(key)
    assert e.value.exit_code == 2
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    assert local.load_private_key(key) is None  # the daemon will ask the agent
    monkeypatch.setenv(local.PASSPHRASE_ENV, "wrong-pass")
    with pytest.raises(ConfigError, match="wrong"):
        local.load_private_key(key)
    monkeypatch.setenv(local.PASSPHRASE_ENV, "s3cret-pass")
    assert local.load_private_key(key).get_name() == "ssh-ed25519"
    from autopod.core.log import redact

    assert redact("pass s3cret-pass") == "pass ***"


def test_daemon_argv_carries_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv(local.PASSPHRASE_ENV, "s3cret-pass")
    t = SSHTarget(id="pod1", name="p", kind="pod", host="1.2.3.4", port=40022, user="root", key_path=tmp_path / "k")
    argv = manager.daemon_argv(t, 8188, "sshtunnel")
    assert argv[1:3] == ["-m", "autopod.tunnels.daemon"] and "pod1" in argv
    assert "s3cret-pass" not in " ".join(argv)
    assert SSHTarget.from_dict(json.loads(argv[argv.index("--target") + 1])) == t


def test_chained_pod_wins_over_an_older_tunnel(fake_daemon, monkeypatch):
    """`pod.create ... tunnel.start`: without --pod the pod of this command line is meant."""
    from autopod.core import chain

    _record("pod123", fake_daemon.pid, name="old")
    monkeypatch.setattr(chain, "_pod_id", "pod123")
    assert resolve_target(None).id == "pod123"
    monkeypatch.setattr(chain, "_pod_id", "newpod")
    with pytest.raises(AuthError):  # not the recorded tunnel: looked up through the API
        resolve_target(None)


def test_missing_sshd_skips_locally_but_fails_under_ci(monkeypatch):
    import sshd_server

    import autopod.sim.sshd as sim_sshd

    monkeypatch.setattr(sim_sshd, "find_sshd", lambda: None)
    monkeypatch.setattr(sshd_server, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="openssh-server"):
        sshd_server.require_sshd()
    monkeypatch.setattr(sshd_server, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        sshd_server.require_sshd()


BAD_STATES = {
    "list": '{"tunnels": [1, 2]}',
    "string pid": '{"tunnels": {"x": {"pid": "abc"}}}',
    "string port": '{"tunnels": {"x": {"pid": 123, "local_port": "8188", "target_id": "x"}}}',
    "bool pid": '{"tunnels": {"x": {"pid": true}}}',
    "entry not an object": '{"tunnels": {"x": 5}}',
    "port out of range": '{"tunnels": {"x": {"pid": 123, "local_port": 99999}}}',
    "target of the wrong type": '{"tunnels": {"x": {"pid": 123, "target": {"port": "22"}}}}',
    "key and target_id differ": '{"tunnels": {"x": {"pid": 123, "target_id": "y"}}}',
}
TUNNEL_COMMANDS = [("tunnel.start", "--pod", "box"), ("tunnel.start",), ("tunnel.stop", "--pod", "x"), ("tunnel.stop",),
                   ("tunnel.status", "--pod", "x"), ("tunnel.status",), ("tunnel.list",), ("tunnel.cleanup",),
                   ("tunnel.stop-all",), ("comfy.status", "--pod", "x")]


@pytest.mark.parametrize("content", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_damaged_state_is_reported_by_every_tunnel_command(content, cli, autopod_home):
    autopod_home.mkdir(exist_ok=True)
    path = autopod_home / "tunnels.json"
    path.write_text(content)
    for argv in TUNNEL_COMMANDS:
        r = cli(*argv, "--json")
        assert r.code == 2, (argv, r.err)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "corrupt" in lines[0], (argv, r.err)
        assert "internal error" not in r.err and r.json["failed"] is True
        assert path.read_text() == content  # never overwritten
    assert [p.read_text() for p in autopod_home.glob("tunnels.json.corrupt-*")] == [content]


@pytest.mark.parametrize("content", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_stop_tunnel_for_raises_only_autopod_errors(content, autopod_home):
    """pod.stop and pod.kill call it and warn on AutopodError; anything else would abort them."""
    from autopod.core.errors import AutopodError
    from autopod.core.state import CorruptState

    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "tunnels.json").write_text(content)
    with pytest.raises(CorruptState) as e:
        manager.stop_tunnel_for("x")
    assert isinstance(e.value, AutopodError) and e.value.exit_code == 2


def test_null_fields_are_not_a_crash(stranger, cli, autopod_home):
    """null is "not recorded yet" (the shape check allows it); no reader may int() it."""
    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "tunnels.json").write_text(json.dumps({"tunnels": {"x": {
        "pid": stranger.pid, "local_port": None, "remote_port": None, "ssh_port": None, "started_at": None,
        "name": None, "state": None, "target": None}}}))
    rows = cli("tunnel.list", "--json")
    assert rows.code == 0 and rows.json[0]["target_id"] == "x" and rows.json[0]["local_port"] == 0
    assert cli("tunnel.status", "--pod", "x").code == 1
    assert manager.stop_tunnel_for("x") is False and stranger.poll() is None
    assert registry.recorded_entries() == []


GOOD_USERS = ["root", "ubuntu", "_svc", "a.b-c_d", "User1", "x" * 32]
BAD_USERS = ["-oProxyCommand=id", "", "1root", "a b", "a@b", "x" * 33, "r\u00f6ot", "root\n", None, 0]
GOOD_HOSTS = ["127.0.0.1", "::1", "fe80::1%eth0", "2001:db8::2", "box.lan", "my_box", "a-b.example.com", "10.0.0.9"]
BAD_HOSTS = ["-oProxyCommand=id", "-1.2.3.4", "", "a b", "user@host", "[::1]", "host;id", "h\tx", "fe80::1%a b",
             "fe80::1%a\nb", None, 22]


@pytest.mark.parametrize("user", GOOD_USERS)
def test_plain_users_make_targets(user):
    assert SSHTarget(id="p", name="p", kind="pod", host="1.2.3.4", port=22, user=user, key_path="k").user == user


@pytest.mark.parametrize("user", BAD_USERS)
def test_option_like_or_odd_users_are_config_errors(user):
    with pytest.raises(ConfigError, match=f"invalid SSH user {re.escape(repr(user))} for p") as e:
        SSHTarget(id="p", name="p", kind="pod", host="1.2.3.4", port=22, user=user, key_path="k")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_names_and_addresses_make_targets(host):
    t = SSHTarget(id="p", name="p", kind="pod", host=host, port=22, user="root", key_path=Path("k"),
                  remote_host=host)
    assert SSHTarget.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_option_like_or_odd_hosts_are_config_errors(host):
    with pytest.raises(ConfigError, match=f"invalid SSH host {re.escape(repr(host))}"):
        SSHTarget(id="p", name="p", kind="pod", host=host, port=22, user="root", key_path="k")
    with pytest.raises(ConfigError, match="invalid ComfyUI host"):
        SSHTarget(id="p", name="p", kind="pod", host="h", port=22, user="root", key_path="k", remote_host=host)


def test_loaded_targets_are_checked_too(autopod_home):
    from autopod.core.state import CorruptState

    good = SSHTarget(id="p", name="p", kind="pod", host="1.2.3.4", port=22, user="root", key_path="k").to_dict()
    for bad in ({"user": "-oProxyCommand=id"}, {"host": "-x"}, {"port": 0}, {"remote_port": "8188"}):
        with pytest.raises(ConfigError):
            SSHTarget.from_dict({**good, **bad})
        autopod_home.mkdir(exist_ok=True)
        doc = {"tunnels": {"p": {"pid": 1, "target": {**good, **bad}}}}
        (autopod_home / "tunnels.json").write_text(json.dumps(doc))
        with pytest.raises(CorruptState):
            registry.recorded_entries()


def test_openssh_argv_ends_the_options_before_the_destination(tmp_path):
    from autopod.tunnels.daemon import OpenSSHBackend

    t = SSHTarget(id="p", name="p", kind="pod", host="::1", port=2222, user="root", key_path=tmp_path / "k",
                  remote_host="::1", remote_port=8188)
    argv = OpenSSHBackend(t, 18188).argv()
    assert argv[-2:] == ["--", "root@::1"]
    assert argv[argv.index("-L") + 1] == "127.0.0.1:18188:[::1]:8188"


def _fake_pod(status: str, ports: list[str], direct=None, name: str = "flux"):
    from autopod.runpod.records import Pod

    return Pod(id="abc123", name=name, status=status, ports=ports, ssh_direct=direct,
               ssh_proxy="abc123-64411c8f@ssh.runpod.io")


@pytest.fixture
def fake_pod(monkeypatch):
    """``tunnel.start --pod flux`` finds the pod put in ``box[0]``, with no API call."""
    import autopod.runpod.api
    import autopod.runpod.registry

    box = []
    monkeypatch.setenv("RUNPOD_API_KEY", "dummy-key-for-tests")
    monkeypatch.setattr(autopod.runpod.api, "RunPodAPI", lambda *a, **k: object())
    monkeypatch.setattr(autopod.runpod.registry, "resolve_pod", lambda api, ref, pods=None: box[0])
    return box


@pytest.mark.parametrize("status, ports, want, not_want", [
    ("EXITED", ["8188/http", "22/tcp"], "pod flux is stopped: start it with `autopod pod.start --pod flux`",
     "recreate"),
    ("RUNNING", ["8188/http", "22/tcp"], "pod flux is still starting", "recreate"),
    ("RUNNING", ["8188/http", "22/tcp"], "wait with `autopod pod.wait --pod flux`", "stopped"),
    ("TERMINATED", ["22/tcp"], "is terminated: it is gone", "recreate the pod"),
    ("RUNNING", ["8188/http"], "recreate the pod with --port 22/tcp", "wait"),
    ("EXITED", ["8188/http"], "cannot forward ports", "start it"),
    ("RUNNING", [], "and a PUBLIC_KEY", "wait"),
])
def test_advice_for_a_pod_without_direct_ssh_follows_its_state(status, ports, want, not_want, fake_pod, cli):
    fake_pod.append(_fake_pod(status, ports))
    r = cli("tunnel.start", "--pod", "flux", "--json")
    assert r.code == 1, r.err  # a state, not bad input
    assert want in r.err and not_want not in r.err, r.err
    assert registry.recorded_entries() == []


def test_advice_quotes_a_pod_name_for_the_shell(fake_pod, cli):
    fake_pod.append(_fake_pod("EXITED", ["22/tcp"], name="my pod"))
    assert "`autopod pod.start --pod 'my pod'`" in cli("tunnel.start", "--pod", "my pod").err


def test_a_ref_nobody_knows_is_a_usage_error_not_a_quiet_success(stranger, cli, autopod_home, tmp_path, monkeypatch):
    _record("pod456", stranger.pid, name="two")
    for argv in (("tunnel.stop", "--pod", "nosuch"), ("tunnel.status", "--pod", "nosuch"),
                 ("tunnel.stop", "--pod", "host:nosuch")):
        r = cli(*argv, "--json")
        assert r.code == 2, (argv, r.err)
        assert "'nosuch'" in r.err or "'host:nosuch'" in r.err
        assert "recorded tunnels: two" in r.err and r.json["failed"] is True
    assert len(registry.recorded_entries()) == 1


def test_a_known_pod_or_host_without_a_tunnel_is_fine(cli, autopod_home, tmp_path, monkeypatch):
    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "pods.json").write_text(json.dumps({"abc123": {"name": "flux"}}))
    inv = tmp_path / "inv.yml"
    inv.write_text("hosts:\n  homebox: {host: box.lan}\n")
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    for ref in ("flux", "abc123", "homebox", "host:homebox"):
        r = cli("tunnel.stop", "--pod", ref)
        assert r.code == 0 and r.out.startswith(f"ok: no tunnel to {ref} is running"), (ref, r.err)
        st = cli("tunnel.status", "--pod", ref, "--json")
        assert st.code == 1 and st.json["running"] is False, (ref, st.err)
    assert cli("tunnel.status", "--pod", "host:flux").code == 2  # a pod is not an inventory host


def test_daemon_stops_at_once_when_told_to_while_connecting(autopod_home, tmp_path):
    """SIGTERM (tunnel.stop, an interrupted start) must not wait out a 15 s connect timeout."""
    import os

    from autopod.sim.sshd import free_port

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen()  # the kernel accepts, nobody ever sends an SSH banner
        t = SSHTarget(id="host:hole", name="hole", kind="host", host="127.0.0.1", port=hole.getsockname()[1],
                      user="root", key_path=tmp_path / "k")
        p = subprocess.Popen(manager.daemon_argv(t, free_port(), "sshtunnel"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 10
            while not (registry.recorded_entry("host:hole") or {}).get("state") == "starting":
                assert time.monotonic() < end and p.poll() is None
                time.sleep(0.05)
            t0 = time.monotonic()
            p.terminate()
            assert p.wait(timeout=5) == 0
            assert time.monotonic() - t0 < 3
        finally:
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
    assert registry.recorded_entries() == []


@pytest.mark.parametrize("argv, says", [
    (("--local-port", "0"), "--local-port must be between 1 and 65535"),
    (("--local-port", "65536"), "--local-port must be between 1 and 65535"),
    (("--remote-port", "70000"), "--remote-port must be between 1 and 65535"),
    (("--remote-port", "-1"), "--remote-port must be between 1 and 65535"),
    (("--timeout", "0"), "--timeout must be between 1 and 3600"),
    (("--timeout", "3601"), "--timeout must be between 1 and 3600"),
    (("--timeout", "1.5"), "--timeout must be a whole number"),
    (("--backend", "putty"), "--backend must be sshtunnel or openssh, got 'putty'"),
])
def test_start_flags_out_of_range_exit_2_before_any_lookup(argv, says, cli):
    r = cli("tunnel.start", "--pod", "nosuch", *argv, "--json")
    assert r.code == 2 and says in r.err, r.err
    assert "RUNPOD_API_KEY" not in r.err  # refused before resolving the pod


def test_a_daemon_of_another_autopod_home_is_not_ours(cli, tmp_path):
    import os

    argv = manager.daemon_argv(_target("pod123"), 18188, "sshtunnel")
    other = _sleeper(argv, env={**os.environ, "AUTOPOD_HOME": str(tmp_path / "other-home")})
    try:
        _record("pod123", other.pid)
        assert registry.process_is_ours(other.pid, "pod123") is False
        r = cli("tunnel.stop", "--pod", "pod123", "--json")
        assert r.code == 0 and "already gone" in r.json["msg"]
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


def test_the_target_id_must_be_the_daemons_own():
    # Several times: /proc/PID/cmdline is empty for a moment after Popen returns (vfork lets the parent
    # go on before the kernel sets the new program's arguments), so a helper that returned too early
    # would be caught here and not only on a busy machine.
    argv = [sys.executable, "-m", "autopod.tunnels.daemon", "--target-id", "other", "--x", "pod123"]
    for _ in range(30):
        p = _sleeper(argv)
        try:
            assert registry.process_is_ours(p.pid, "other") is True
            assert registry.process_is_ours(p.pid, "pod123") is False
        finally:
            p.kill()
            p.wait()


def test_a_recorded_port_or_endpoint_the_daemon_does_not_serve_is_not_trusted(fake_daemon, cli):
    _record("pod123", fake_daemon.pid, name="one")  # the daemon's own: 127.0.0.1:18188
    assert registry.entry_process_alive(registry.recorded_entry("pod123")) is True
    for change in ({"local_port": 22}, {"backend": "openssh"}, {"target": {**_target("pod123").to_dict(),
                                                                           "host": "10.6.6.6"}}):
        with registry.state_file().update() as data:
            data["tunnels"]["pod123"].update(change)
        assert registry.entry_process_alive(registry.recorded_entry("pod123")) is False, change
        st = cli("tunnel.status", "--pod", "one", "--json")
        assert st.code == 1 and st.json["running"] is False and st.json["state"] == "gone"
        _record("pod123", fake_daemon.pid, name="one")


def test_cleanup_never_kills_a_users_own_ssh_on_a_recorded_child_pid(stranger, cli):
    users_ssh = _sleeper(["ssh", "-N", "-L", "127.0.0.1:18188:127.0.0.1:8188", "me@example.com"])
    try:
        _record("pod123", stranger.pid, child_pid=users_ssh.pid)
        assert registry.child_is_ours(registry.recorded_entry("pod123")) is False
        r = cli("tunnel.cleanup", "--json")
        assert r.code == 0 and r.json["removed"] == ["pod123"]
        assert users_ssh.poll() is None
    finally:
        users_ssh.kill()
        users_ssh.wait()


def test_port_holder_survives_a_damaged_state_file(autopod_home):
    import os

    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "tunnels.json").write_text('{"tunnels": [1]}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(TunnelError, match=f"in use by pid {os.getpid()} \\("):
            local.choose_local_port(port, explicit=True)


def test_unreadable_known_hosts_is_a_config_error(autopod_home):
    from autopod.tunnels.hostkeys import pin_on_first_use, pinned_keys

    autopod_home.mkdir(exist_ok=True)
    (autopod_home / "known_hosts").write_bytes(b"[10.0.0.9]:40022 ssh-ed25519 \xff\xfe\n")
    with pytest.raises(ConfigError, match="known_hosts is not UTF-8"):
        pinned_keys("10.0.0.9", 40022)
    (autopod_home / "known_hosts").unlink()
    (autopod_home / "known_hosts").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        pinned_keys("10.0.0.9", 40022)
    with pytest.raises(ConfigError, match="invalid SSH host"):
        pin_on_first_use("evil\n[10.0.0.9]:40022", 22)


def test_stop_all_stops_the_others_when_one_resists(stranger, monkeypatch, cli):
    _record("pod1", stranger.pid, name="one")
    _record("pod2", stranger.pid, name="two")
    real = manager._stop_tunnel_for

    def flaky(target_id):
        if target_id == "pod1":
            raise PermissionError("operation not permitted")
        return real(target_id)

    monkeypatch.setattr(manager, "_stop_tunnel_for", flaky)
    r = cli("tunnel.stop-all")
    assert r.code == 1 and "stopped two" in r.err and "could not stop the tunnel to pod1" in r.err
    assert [e["target_id"] for e in registry.recorded_entries()] == ["pod1"]


def test_log_tail_reads_only_this_spawns_lines_across_a_rotation(autopod_home):
    path = logs.tunnel_log_path("host:box")
    path.with_name(path.name + ".1").write_text("rotated long ago\n")
    path.write_text("earlier spawn failed\n2026-01-01 10:00:00,000 42 tunneld ERROR autopod.tunneld: old error\n")
    st = path.stat()
    start = (st.st_ino, st.st_size)
    with path.open("a") as f:
        f.write("2026-01-01 10:00:01,000 43 tunneld INFO autopod.tunneld: chatter\nmine before rotation\n")
    assert logs.log_tail("host:box", start) == "mine before rotation"
    path.rename(path.with_name(path.name + ".1"))  # what RotatingFileHandler does
    path.write_text("2026-01-01 10:00:02,000 43 tunneld ERROR autopod.tunneld: mine after rotation\n"
                    "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: boom\n")
    assert logs.log_tail("host:box", start) == "mine before rotation / mine after rotation / ValueError: boom"
    assert logs.log_tail("host:nothing", (0, 0)).startswith("no details (see ")


def test_a_process_command_line_and_environment_read_as_psutil_reads_them():
    """core.procs reads /proc on Linux (no psutil import on every comfy command): the same answers."""
    import psutil

    from autopod.core.procs import cmdline, environ

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "a b", "é", ""],
                             stdin=subprocess.PIPE)
    try:
        assert manager_wait(lambda: psutil.Process(child.pid).cmdline()[-3:] == ["a b", "é", ""])  # exec'd
        assert cmdline(child.pid) == psutil.Process(child.pid).cmdline()
        assert environ(child.pid) == psutil.Process(child.pid).environ() and environ(child.pid)["AUTOPOD_HOME"]
        child.kill()
        assert manager_wait(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE)
        assert cmdline(child.pid) == []  # a zombie is gone
    finally:
        child.kill()
        child.wait()
    assert cmdline(child.pid) == [] and cmdline(None) == [] and cmdline(0) == []
    assert environ(child.pid) is None and environ(None) is None


def manager_wait(predicate, timeout: float = 5.0) -> bool:
    from autopod.core.procs import wait_for

    return wait_for(predicate, timeout, interval=0.01)


def test_the_private_log_rotates_like_the_standard_one_and_stays_private(tmp_path):
    import logging
    import logging.handlers

    from autopod.core.log import private_log_handler

    def fill(folder, handler):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger(f"autopod.test-rotation.{folder.name}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            for i in range(30):
                logger.warning("line %02d %s", i, "x" * 20)  # 29 bytes a line: 6 to a file of 200
        finally:
            logger.removeHandler(handler)
            handler.close()
        return {p.name: p.read_text() for p in folder.iterdir()}

    ours, std = tmp_path / "ours", tmp_path / "std"
    ours.mkdir()
    std.mkdir()
    got = fill(ours, private_log_handler(ours / "x.log", max_bytes=200, backups=2))
    want = fill(std, logging.handlers.RotatingFileHandler(std / "x.log", maxBytes=200, backupCount=2))
    assert got == want and sorted(got) == ["x.log", "x.log.1", "x.log.2"]  # the oldest dropped
    assert got["x.log"].splitlines()[-1].startswith("line 29")
    assert all(p.stat().st_size <= 200 and p.stat().st_mode & 0o777 == 0o600 for p in ours.iterdir())

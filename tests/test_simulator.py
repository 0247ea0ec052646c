"""The offline simulator: the whole chain with real processes, faults, and the pure-Python SSH server."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import ROOT
from sshd_server import IN_CI, kill_tunnel_daemons, require_sshd, wait_until

from autopod.sim.comfyui import editor


@pytest.fixture
def sim_env(tmp_path, autopod_home):
    """Env for `autopod` subprocesses: scratch AUTOPOD_HOME and HOME with an SSH key; tears everything down."""
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
                   check=True, stdin=subprocess.DEVNULL)
    env = {**os.environ, "AUTOPOD_HOME": str(autopod_home), "HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHON": sys.executable}
    env.pop("RUNPOD_API_KEY", None)
    env.pop("RUNPOD_API_BASE_URL", None)
    yield env
    autopod(env, "sim.stop")
    kill_tunnel_daemons(autopod_home)


def autopod(env: dict, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autopod", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def sim_world(env: dict) -> dict:
    sim = json.loads((Path(env["AUTOPOD_HOME"]) / "sim.json").read_text())
    r = requests.get(sim["base_url"] + "/_sim/world", headers={"Authorization": f"Bearer {sim['api_key']}"}, timeout=5)
    return r.json()


def volume_id(env: dict, name: str = "comfy-models") -> str:
    p = autopod(env, "volume.list", "--json")
    assert p.returncode == 0, p.stderr
    return next(v["id"] for v in json.loads(p.stdout) if v["name"] == name)


@pytest.mark.sshd
@pytest.mark.parametrize("api,sim_flags", [("graphql", ""), ("rest", ""), ("auto", "--graphql-retired")],
                         ids=["graphql", "rest", "auto-after-graphql-retired"])
def test_e2e_chain_script(sim_env, api, sim_flags):
    """tests/e2e_chain.sh: the user's script, every exit code and JSON document checked, run twice for idempotency;
    on GraphQL, on REST v2, and on auto while GraphQL answers that it is retired."""
    require_sshd()
    env = {**sim_env, "AUTOPOD_RUNPOD_API": api, "E2E_SIM_FLAGS": sim_flags}
    p = subprocess.run(["bash", str(ROOT / "tests" / "e2e_chain.sh")], env=env, capture_output=True, text=True,
                       timeout=400, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "e2e OK" in p.stderr
    if sim_flags:
        assert p.stderr.count("GraphQL API is retired") == 1  # said once, then remembered
        assert "REST v2" in p.stderr


@pytest.mark.sshd
def test_one_line_chain_targets_the_new_pod(sim_env):
    """`autopod sim.start pod.create --volume-id V tunnel.start comfy.info` on one line, as in the README."""
    require_sshd()
    start = autopod(sim_env, "sim.start", "--comfy-ready-after", "1")
    assert start.returncode == 0, start.stderr
    vol = volume_id(sim_env)
    # A second pod exists, so only the chain can tell which pod the later tasks mean.
    other = autopod(sim_env, "pod.create", "--name", "other", "--volume-id", vol, "--no-wait")
    assert other.returncode == 0, other.stderr
    p = autopod(sim_env, "pod.create", "--name", "chained", "--volume-id", vol, "tunnel.start", "comfy.info", "--json")
    assert p.returncode == 0, p.stderr
    created, tunnel, info = json.loads(p.stdout)  # --json in a chain: one array, a document per task
    assert created["changed"] is True and created["msg"].startswith("created pod chained")
    assert tunnel["changed"] is True and tunnel["msg"].startswith("started tunnel to chained")
    assert info["name"] == "chained" and info["comfyui_version"] == "0.3.64"
    assert requests.get(info["url"] + "/system_stats", timeout=10).json()["system"]["comfyui_version"] == "0.3.64"
    # the printed URL opens the editor through the tunnel: its page and its 11 MB main script
    static = editor.static_root()
    page = requests.get(info["url"] + "/", timeout=10)
    assert page.status_code == 200
    if static is None:  # without the editor extra: a page that says how to get it
        assert "pip install -e '.[editor]'" in page.text
    else:
        assert page.content == (static / "index.html").read_bytes()
        script = re.search(r'src="\./(assets/index-[^"]+\.js)"', page.text).group(1)
        assert requests.get(f"{info['url']}/{script}", timeout=30).content == (static / script).read_bytes()


@pytest.mark.sshd
@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_retries_through_injected_5xx_complete_without_duplicate_pods(sim_env, api):
    """Every third API call answers 502: the chain still completes and exactly one pod exists, on both APIs."""
    require_sshd()
    sim_env = {**sim_env, "AUTOPOD_RUNPOD_API": api}
    assert autopod(sim_env, "sim.start", "--comfy-ready-after", "0").returncode == 0
    vol = volume_id(sim_env)
    on = autopod(sim_env, "sim.start", "--fail-every", "3", "--json")
    assert on.returncode == 0 and json.loads(on.stdout)["changed"] is True, on.stderr
    runs = [autopod(sim_env, "pod.create", "--name", "flaky", "--volume-id", vol, "tunnel.start", "comfy.status")
            for _ in range(2)]  # the second run must find the pod, not make another
    for p in runs:
        assert p.returncode == 0, p.stderr
    assert "retrying" in runs[0].stderr  # the faults really happened
    world = sim_world(sim_env)
    assert [pod["name"] for pod in world["pods"].values()] == ["flaky"]


@pytest.mark.sshd
def test_pod_that_never_becomes_ready_times_out_stopped(sim_env):
    require_sshd()
    assert autopod(sim_env, "sim.start", "--never-ready").returncode == 0
    vol = volume_id(sim_env)
    p = autopod(sim_env, "pod.create", "--name", "stuck", "--volume-id", vol, "--timeout", "4", "--json")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    assert doc["failed"] is True and "stopped" in doc["msg"]
    [pod] = sim_world(sim_env)["pods"].values()
    assert pod["name"] == "stuck" and pod["desiredStatus"] == "EXITED"


def test_sim_status_and_stop_without_a_simulator(cli):
    r = cli("sim.status", "--json")
    assert r.code == 1 and r.json == {"running": False}
    r = cli("sim.stop", "--json")
    assert r.code == 0 and r.json["status"] == "ok"


def test_sim_start_rejects_bad_flags(cli):
    assert cli("sim.start", "--fail-every", "1").code == 2
    assert cli("sim.start", "--latency", "soon").code == 2
    assert cli("sim.start", "--ssh-server", "telnet").code == 2


def test_fault_flags_map_to_stand_in_settings():
    from autopod.sim.control import fault_settings

    assert fault_settings(latency=0.5, fail_every=3, hang_every=5, never_ready=True, reject_key=True) == {
        "latency_s": 0.5, "fail_every": 3, "hang_every": 5, "never_ready": True, "reject_key": True}
    assert fault_settings() == {}


def test_rejected_key_exits_2_with_a_clear_message(sim_env):
    assert autopod(sim_env, "sim.start", "--reject-key").returncode == 0
    p = autopod(sim_env, "pod.list", "--json")
    assert p.returncode == 2 and "API key rejected" in p.stderr
    assert json.loads(p.stdout)["failed"] is True
    assert "sim-" not in p.stderr  # the (dummy) key is never printed


def test_sim_world_file_errors_name_the_file(cli, tmp_path):
    bad = tmp_path / "world.yml"
    bad.write_text("stock: {}\n")
    r = cli("sim.start", "--world", str(bad))
    assert r.code == 2 and "world.yml" in r.err and "stock" in r.err


@pytest.mark.sshd
def test_world_file_sets_stock_so_gpu_fallback_happens(sim_env, tmp_path):
    require_sshd()
    world = tmp_path / "world.yml"
    world.write_text("data_centers:\n  EU-RO-1:\n    stock:\n      NVIDIA RTX A40: 0\n")
    assert autopod(sim_env, "sim.start", "--world", str(world)).returncode == 0
    p = autopod(sim_env, "pod.create", "--name", "fb", "--volume-id", volume_id(sim_env), "--no-wait", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [a["result"] for a in doc["gpu_attempts"]] == ["no capacity", "created"]
    assert doc["pod"]["gpu"] == "RTX A6000"


def client_key(tmp_path: Path) -> Path:
    """An ed25519 key for OpenSSH's client, which these tests need (a failure under CI, else a skip)."""
    if not shutil.which("ssh"):
        if IN_CI:
            pytest.fail("ssh client missing under CI")
        pytest.skip("no OpenSSH client")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_pure_python_ssh_server_forwards_and_runs_commands(tmp_path):
    """Where no sshd is installed, simulated pods use asyncssh: real OpenSSH clients must work against it."""
    pytest.importorskip("asyncssh", reason="the sim-ssh extra (asyncssh) is not installed")
    from autopod.sim.comfyui_standin import ComfyUIStandin
    from autopod.sim.pyssh import PySSHD

    key = client_key(tmp_path)
    known = tmp_path / "known_hosts"
    with PySSHD(tmp_path / "pod", key.with_suffix(".pub").read_text()) as server, ComfyUIStandin() as comfy:
        known.write_text(f"[127.0.0.1]:{server.port} {server.host_key_pub}\n")
        base = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(server.port), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", f"{server.user}@127.0.0.1"]
        p = subprocess.run([*base, "echo hi; exit 3"], capture_output=True, text=True, timeout=30)
        assert (p.returncode, p.stdout) == (3, "hi\n"), p.stderr
        from autopod.sim.sshd import free_port

        local = free_port()
        fwd = subprocess.Popen([*base[:-1], "-N", "-o", "ExitOnForwardFailure=yes",
                                "-L", f"127.0.0.1:{local}:127.0.0.1:{comfy.port}", base[-1]])
        try:
            import time

            deadline = time.time() + 20
            while True:
                try:
                    r = requests.get(f"http://127.0.0.1:{local}/system_stats", timeout=5)
                    break
                except requests.ConnectionError:
                    assert time.time() < deadline and fwd.poll() is None, "forward never came up"
                    time.sleep(0.2)
            assert r.json()["system"]["comfyui_version"] == "0.3.64"
        finally:
            fwd.terminate()
            fwd.wait(10)
        # A key that is not the pod's is refused.
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        base[4] = str(other)
        p = subprocess.run([*base, "true"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 255


@pytest.mark.parametrize("server", ["openssh", "python"])
def test_stopping_a_pods_ssh_server_ends_the_tunnels_into_it(tmp_path, server):
    """A stopped pod ends every connection into it. OpenSSH's listener leaves its sessions running when it
    exits (and the pure-Python one left them hanging), so a tunnel opened while a pod was being stopped
    kept reaching the stopped pod's ComfyUI."""
    if server == "openssh":
        require_sshd()
        from autopod.sim.sshd import LocalSSHD as Server
    else:
        pytest.importorskip("asyncssh", reason="the sim-ssh extra (asyncssh) is not installed")
        from autopod.sim.pyssh import PySSHD as Server
    from autopod.sim.sshd import free_port

    key = client_key(tmp_path)
    sshd = Server(tmp_path / "pod", key.with_suffix(".pub").read_text()).start()
    local = free_port()
    with socket.socket() as service:  # what the tunnel leads to on the pod (ComfyUI)
        service.bind(("127.0.0.1", 0))
        service.listen()
        tunnel = subprocess.Popen(["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(sshd.port), "-o", "BatchMode=yes",
                                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-N",
                                   "-o", "ExitOnForwardFailure=yes",
                                   "-L", f"127.0.0.1:{local}:127.0.0.1:{service.getsockname()[1]}",
                                   f"{sshd.user}@127.0.0.1"], stderr=subprocess.DEVNULL)
        try:
            client = wait_until(lambda: _connect(local), 20)
            assert client, "the tunnel never came up"
            service.settimeout(10)
            inside, _ = service.accept()
            with client, inside:
                client.sendall(b"x")
                assert inside.recv(1) == b"x"
                sshd.stop()
                tunnel.wait(10)  # the server closed the connection: the client ends at once
                inside.settimeout(10)
                assert inside.recv(1) == b""  # and what it forwarded inside the pod is closed too
        finally:
            sshd.stop()
            tunnel.kill()
            tunnel.wait()


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None


@pytest.mark.parametrize("damage", ["{oops", '{"base_url": 5, "api_key": "k", "pid": 1}'])
def test_sim_stop_finds_the_simulator_when_its_record_is_corrupt(sim_env, damage):
    """A corrupt sim.json must not strand the simulator and its pods: sim.stop finds them anyway."""
    import psutil

    assert autopod(sim_env, "sim.start", "--comfy-ready-after", "0").returncode == 0
    home = Path(sim_env["AUTOPOD_HOME"])
    pid = json.loads((home / "sim.json").read_text())["pid"]
    vol = volume_id(sim_env)
    assert autopod(sim_env, "pod.create", "--name", "orphan", "--volume-id", vol, "--no-wait").returncode == 0
    (home / "sim.json").write_text(damage)
    p = autopod(sim_env, "pod.list")
    assert p.returncode == 2 and "sim.stop" in p.stderr  # the error says how to get out
    p = autopod(sim_env, "sim.stop", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["changed"] is True and "1 simulated pods gone" in doc["msg"] and "set aside" in doc["msg"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (home / "sim.json").exists() and list(home.glob("sim.json.corrupt-*"))
    assert autopod(sim_env, "sim.status").returncode == 1

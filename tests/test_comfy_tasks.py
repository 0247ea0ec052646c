"""comfy.status and comfy.info: exit codes, output, JSON shape, waiting, and tunnels made on demand."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from comfy_fixtures import refused_url  # noqa: F401  (fixture)

from autopod.comfy import ops
from autopod.sim.comfyui_standin import ComfyUIStandin


def use_url(home, url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(f"comfy_url: {url}\n")


@pytest.fixture
def standin(autopod_home):
    with ComfyUIStandin(state="busy") as s:
        use_url(autopod_home, s.url)
        yield s


@pytest.fixture
def refused(autopod_home):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    use_url(autopod_home, f"http://127.0.0.1:{s.getsockname()[1]}")
    yield s
    s.close()


# -- comfy.status --no-tunnel ------------------------------------------------------------------------

def test_status_ready_exits_0(cli, standin):
    r = cli("comfy.status", "--no-tunnel")
    assert (r.code, r.out) == (0, "Ready\n")


def test_status_json_shape(cli, standin):
    r = cli("comfy.status", "--no-tunnel", "--json")
    assert r.code == 0
    doc = r.json
    assert doc["ready"] is True and doc["status"] == "ready" and doc["url"] == standin.url
    assert doc["comfyui_version"] == "0.3.64" and doc["tunnel"] is None and doc["pod"] is None
    assert set(doc) == {"ready", "status", "url", "pod", "name", "tunnel", "comfyui_version", "waited_s", "detail"}


def test_status_starting_exits_1_with_first_boot_hint(cli, refused):
    r = cli("comfy.status", "--no-tunnel")
    assert r.code == 1
    assert r.out == "Starting…\n"
    assert "first boot" in r.err and "copies ComfyUI onto the network volume" in r.err
    assert "connection refused" in r.err
    j = cli("comfy.status", "--no-tunnel", "--json")
    assert j.code == 1 and j.json["ready"] is False and j.json["status"] == "starting"
    assert "connection refused" in j.json["detail"]


def test_status_starting_then_ready_with_wait(cli, autopod_home):
    import threading

    with ComfyUIStandin(ready_after=3600) as s:
        use_url(autopod_home, s.url)
        first = cli("comfy.status", "--no-tunnel")
        assert (first.code, first.out) == (1, "Starting…\n")
        threading.Timer(0.5, s.become_ready).start()  # ComfyUI starts listening while status waits
        waited = cli("comfy.status", "--no-tunnel", "--wait", "20", "--json")
        assert waited.code == 0 and waited.json["ready"] is True
        assert waited.json["waited_s"] > 0
        assert "not answering yet; waiting up to 20s" in waited.err


def test_wait_runs_out_exits_1(cli, refused):
    r = cli("comfy.status", "--no-tunnel", "--wait", "0.5", "--json")
    assert r.code == 1 and r.json["ready"] is False and r.json["waited_s"] >= 0.5


@pytest.mark.parametrize("args,msg", [
    (["--wait", "soon"], "--wait must be a number"),
    (["--wait", "-3"], "--wait must be between 0 and"),
    (["--pod", "p1"], "takes no --pod"),
])
def test_bad_input_exits_2(cli, standin, args, msg):
    r = cli("comfy.status", "--no-tunnel", *args)
    assert r.code == 2 and msg in r.err and "Traceback" not in r.err


def test_status_polls_with_injected_clock(refused):
    now = [0.0]
    slept = []

    def sleep(d):
        slept.append(d)
        now[0] += d

    st = ops.comfy_status(no_tunnel=True, wait=5, sleep=sleep, clock=lambda: now[0])
    assert st.ready is False and slept == [2.0, 2.0, 1.0] and st.waited_s == 5.0


# -- comfy.info --no-tunnel -------------------------------------------------------------------------

def test_info_table_and_url(cli, standin):
    r = cli("comfy.info", "--no-tunnel")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    row = {ln.split("  ")[0]: ln.split("  ", 1)[1].strip() for ln in lines[:10] if "  " in ln}
    assert row["ComfyUI"] == "0.3.64" and row["Python"] == "3.11.7" and row["PyTorch"] == "2.13.0+cpu"
    assert row["RAM"] == "22.7 GiB free of 23.5 GiB"
    assert row["Queue"] == "1 running, 4 pending" and row["History"] == "11" and row["Node types"] == "477"
    assert any(ln.split()[:2] == ["cpu", "cpu"] and "23.5 GiB" in ln for ln in lines)  # the device table
    assert lines[-1] == f"Open {standin.url} in a browser."


def test_info_json_shape(cli, standin):
    r = cli("comfy.info", "--no-tunnel", "--json")
    assert r.code == 0
    doc = r.json
    assert doc["comfyui_version"] == "0.3.64" and doc["pytorch_version"] == "2.13.0+cpu"
    assert doc["queue"] == {"running": 1, "pending": 4}
    assert doc["history_size"] == 11 and doc["node_types"] == 477 and doc["url"] == standin.url
    assert doc["devices"][0]["vram_total"] == 25276063744 and doc["devices"][0]["vram_free"] == 24386744320
    assert doc["ram_total"] == 25276063744


def test_info_when_down_exits_1_with_one_line(cli, refused):
    r = cli("comfy.info", "--no-tunnel", "--json")
    assert r.code == 1
    assert r.json["failed"] is True and "connection refused" in r.json["msg"]
    assert "first boot" in r.err and "Traceback" not in r.err


# -- the tunnel path, with the tunnel layer replaced ------------------------------------------------

@pytest.fixture
def fake_tunnel(monkeypatch, standin):
    """resolve_target/ensure_tunnel stand-ins: the first call creates, later calls reuse."""
    from autopod.core.output import Outcome

    calls = []

    def resolve_target(ref, **kw):
        calls.append(("resolve", ref))
        return types.SimpleNamespace(id="pod123", name=ref or "my-pod", remote_host="127.0.0.1", remote_port=8188)

    def ensure_tunnel(target, **kw):
        calls.append(("ensure", target.id))
        changed = sum(1 for c in calls if c[0] == "ensure") == 1
        return Outcome(changed, "tunnel", data=types.SimpleNamespace(local_port=standin.port))

    for name, attr, fn in (("autopod.tunnels.resolve", "resolve_target", resolve_target),
                           ("autopod.tunnels.manager", "ensure_tunnel", ensure_tunnel)):
        if importlib.util.find_spec(name) is None:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        mod = importlib.import_module(name)
        monkeypatch.setattr(mod, attr, fn, raising=False)
    return calls


def test_status_ensures_a_tunnel_and_talks_to_its_local_port(cli, fake_tunnel, standin):
    first = cli("comfy.status", "--pod", "my-pod", "--json")
    assert first.code == 0, first.err
    assert first.json["tunnel"] == "created" and first.json["pod"] == "pod123"
    assert first.json["url"] == f"http://127.0.0.1:{standin.port}"
    again = cli("comfy.info", "--json")
    assert again.code == 0 and again.json["tunnel"] == "reused" and again.json["name"] == "my-pod"
    assert fake_tunnel == [("resolve", "my-pod"), ("ensure", "pod123"), ("resolve", None), ("ensure", "pod123")]


def test_no_tunnel_never_resolves_a_target(cli, fake_tunnel, standin):
    assert cli("comfy.info", "--no-tunnel").code == 0
    assert fake_tunnel == []


# -- the console script's quick path for comfy.status -----------------------------------------------

@pytest.mark.parametrize("argv,expect", [
    (["comfy.status"], {"pod": None, "no_tunnel": False, "wait": None, "json": False}),
    (["comfy.status", "--pod", "p1", "--wait", "30", "--json"], {"pod": "p1", "no_tunnel": False, "wait": "30", "json": True}),
    (["comfy.status", "--pod", "p1", "--wait=30"], None),  # --flag=value: the full CLI parses it
    (["comfy.status", "--wait", "5", "--wait", "8"], None),  # repeated: the full CLI refuses it
    (["comfy.status", "--json", "--json"], None),
    (["comfy.status", "--pod", ""], None),  # empty: the full CLI refuses it
    (["comfy.status", "--pod", "\udcff"], None),  # not UTF-8
    (["comfy.status", "--pod", "-x"], None),
    (["comfy.status", "flux", "--json"], {"pod": "flux", "no_tunnel": False, "wait": None, "json": True}),
    (["comfy.status", "flux", "--pod", "flux"], None),  # given twice: the full CLI refuses it
    (["comfy.status", "flux.v2"], None),  # a dot: could be a task, the full CLI decides
    (["comfy.status", "--no-tunnel", "--wait", "5"], {"pod": None, "no_tunnel": True, "wait": "5", "json": False}),
    (["comfy.status", "comfy.info"], None),  # a chain: invoke runs it
    (["comfy.status", "--help"], None),
    (["comfy.status", "--pod"], None),  # missing value: invoke words the error
    (["--debug", "comfy.status"], None),
    (["comfy.info"], None),
    ([], None),
])
def test_quick_path_takes_only_plain_status_command_lines(argv, expect):
    from autopod.launch import parse_comfy_status

    assert parse_comfy_status(argv) == expect


def test_quick_path_matches_the_task_and_skips_invoke_and_runpod(run_autopod, cli, standin, refused_url,
                                                                  autopod_home):
    quick = run_autopod("comfy.status", "--no-tunnel", "--json")
    task = cli("comfy.status", "--no-tunnel", "--json")
    assert quick.code == task.code == 0
    assert {k: v for k, v in quick.json.items() if k != "waited_s"} == \
        {k: v for k, v in task.json.items() if k != "waited_s"}
    r = run_autopod("comfy.status", "--no-tunnel")
    assert (r.code, r.out) == (0, "Ready\n")
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "autopod", "comfy.status", "--no-tunnel"],
                       capture_output=True, text=True, timeout=60)
    mods = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in p.stderr.splitlines() if "|" in ln}
    assert p.returncode == 0 and "http" in mods
    assert "runpod" not in mods and "invoke" not in mods and "tabulate" not in mods and "requests" not in mods

    use_url(autopod_home, refused_url)
    down = run_autopod("comfy.status", "--no-tunnel")
    assert (down.code, down.out) == (1, "Starting…\n") and "first boot" in down.err
    bad = run_autopod("comfy.status", "--no-tunnel", "--wait", "soon", "--json")
    assert bad.code == 2 and bad.json["failed"] is True and bad.err.strip() == "error: --wait must be a number, got 'soon'"



# -- end to end: a real OpenSSH sshd in front of the ComfyUI stand-in --------------------------------

HAVE_TUNNELS = importlib.util.find_spec("autopod.tunnels.manager") is not None and \
    (Path(__file__).with_name("sshd_server.py")).exists()
needs_sshd = pytest.mark.skipif(not HAVE_TUNNELS, reason="the tunnel layer or tests/sshd_server.py is missing")


@pytest.fixture
def comfy_box(request, tmp_path, monkeypatch, autopod_home):
    """Inventory host "gpu": the test sshd, with a ComfyUI stand-in behind it (``ready_after`` via indirect param)."""
    from sshd_server import comfy_behind_host

    sshd = request.getfixturevalue("sshd")
    key = request.getfixturevalue("ssh_user_key")
    ready_after = getattr(request, "param", 0.0)
    with ComfyUIStandin(ready_after=ready_after) as standin, \
            comfy_behind_host(sshd, key, standin.port, tmp_path / "inventory.yml", monkeypatch, autopod_home):
        yield standin


def tunnel_entry(home) -> dict:
    import json

    return json.loads((home / "tunnels.json").read_text())["tunnels"]["host:gpu"]


@needs_sshd
@pytest.mark.sshd
def test_status_creates_a_tunnel_then_reuses_it(comfy_box, cli, run_autopod, autopod_home):
    first = cli("comfy.status", "--pod", "gpu", "--json")
    assert first.code == 0, first.err
    assert first.json["ready"] is True and first.json["tunnel"] == "created" and first.json["pod"] == "host:gpu"
    rec = tunnel_entry(autopod_home)
    assert first.json["url"] == f"http://127.0.0.1:{rec['local_port']}"
    # The next call, in a fresh process on the quick path, reuses the same daemon.
    again = run_autopod("comfy.status", "--pod", "gpu", "--json")
    assert again.code == 0, again.err
    assert again.json["tunnel"] == "reused" and again.json["url"] == first.json["url"]
    assert tunnel_entry(autopod_home)["pid"] == rec["pid"]
    plain = run_autopod("comfy.status")  # no --pod: the pod with the only live tunnel
    assert (plain.code, plain.out) == (0, "Ready\n")
    # With the tunnel up, neither the RunPod SDK nor invoke is loaded.
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "autopod", "comfy.status", "--pod", "gpu"],
                       capture_output=True, text=True, timeout=60)
    mods = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in p.stderr.splitlines() if "|" in ln}
    assert p.returncode == 0 and "runpod" not in mods and "invoke" not in mods
    assert ("GET", "/system_stats") in comfy_box.requests


@needs_sshd
@pytest.mark.sshd
def test_sigkilled_tunnel_daemon_is_recreated_by_info(comfy_box, cli, autopod_home):
    import os
    import signal

    import psutil

    assert cli("comfy.status", "--pod", "gpu").code == 0
    old = tunnel_entry(autopod_home)
    os.kill(old["pid"], signal.SIGKILL)
    end = time.monotonic() + 5
    while psutil.pid_exists(old["pid"]) and psutil.Process(old["pid"]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < end
        time.sleep(0.05)
    r = cli("comfy.info", "--pod", "gpu", "--json")
    assert r.code == 0, r.err
    assert r.json["tunnel"] == "created" and r.json["comfyui_version"] == "0.3.64" and r.json["node_types"] == 477
    new = tunnel_entry(autopod_home)
    assert new["pid"] != old["pid"] and r.json["url"] == f"http://127.0.0.1:{new['local_port']}"
    assert "gone" in r.err  # the tunnel layer says what it did, on stderr
    human = cli("comfy.info", "--pod", "gpu")
    assert human.code == 0 and human.out.splitlines()[-1] == f"Open http://127.0.0.1:{new['local_port']} in a browser."
    assert "gpu (host:gpu)" in human.out


@needs_sshd
@pytest.mark.sshd
@pytest.mark.parametrize("comfy_box", [3600.0], indirect=True)
def test_late_comfyui_shows_starting_then_ready_through_the_tunnel(comfy_box, cli, autopod_home):
    early = cli("comfy.status", "--pod", "gpu", "--json")
    assert early.code == 1, early.err
    assert early.json["ready"] is False and early.json["status"] == "starting" and early.json["tunnel"] == "created"
    human = cli("comfy.status", "--pod", "gpu")
    assert (human.code, human.out) == (1, "Starting…\n") and "first boot" in human.err
    import threading

    threading.Timer(1.0, comfy_box.become_ready).start()  # ComfyUI comes up while status waits
    waited = cli("comfy.status", "--pod", "gpu", "--wait", "30", "--json")
    assert waited.code == 0, waited.err
    assert waited.json["ready"] is True and waited.json["tunnel"] == "reused"
    assert comfy_box.ready

"""The cost guard against the simulator, with real processes: the idle watchdog inside the pod
(installed over real SSH, stopping the pod through the pod's runpodctl after autopod exited),
RunPod's own timers, spend, and the daily budget. Intervals are seconds, not minutes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import requests
from sshd_server import require_sshd, wait_until
from test_simulator import autopod, sim_env, sim_world, volume_id  # noqa: F401 (fixtures)


pytestmark = pytest.mark.sshd

IDLE = "0.05"  # minutes: the watchdog acts after 3 s without ComfyUI activity


def pod_of(env: dict, name: str) -> dict:
    return next(p for p in sim_world(env)["pods"].values() if p["name"] == name)


def status_of(env: dict, name: str) -> str:
    return pod_of(env, name)["desiredStatus"]


def comfy_url(env: dict, name: str) -> str:
    pod = pod_of(env, name)
    addr = next(e.split("=", 1)[1] for e in pod["env"] if e.startswith("AUTOPOD_COMFY_ADDRESS="))
    return f"http://{addr}"


def stops_requested(env: dict) -> int:
    sim = json.loads((Path(env["AUTOPOD_HOME"]) / "sim.json").read_text())
    r = requests.get(sim["base_url"] + "/_sim/requests", headers={"Authorization": f"Bearer {sim['api_key']}"},
                     timeout=5)
    doc = r.json()  # the pod's runpodctl speaks REST v2; autopod, GraphQL by default
    return doc["by_field"].get("podStop", 0) + doc.get("rest", {}).get("POST /v2/pods/{id}/action stop", 0)


def guard_status(env: dict, name: str) -> tuple[int, dict]:
    p = autopod(env, "pod.guard", "--status", "--pod", name, "--json")
    return p.returncode, json.loads(p.stdout)


def pod_state(env: dict, name: str) -> dict:
    """The watchdog's state file in the simulated pod (cheaper to poll than `pod.guard --status`)."""
    path = Path(env["AUTOPOD_HOME"]) / "sim" / pod_of(env, name)["id"] / "guard" / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def status_when(env: dict, name: str, pred, timeout: float = 5) -> dict | None:
    """`pod.guard --status` once ``pred`` holds for the watchdog's state, or None."""
    if not wait_until(lambda: pred(pod_state(env, name)), timeout, interval=0.05):
        return None
    return guard_status(env, name)[1]


def sleep_prompt(seconds: float) -> dict:
    return {"prompt": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 4}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }, "client_id": "guard-test"}


def watchdog_processes(pod_dir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(c.endswith("watchdog.py") for c in cmd) and "run" in cmd and any(pod_dir in c for c in cmd):
            found.append(proc)
    return found


@pytest.fixture
def sim(sim_env):  # noqa: F811
    require_sshd()
    p = autopod(sim_env, "sim.start", "--comfy-ready-after", "0.3")
    assert p.returncode == 0, p.stderr
    return sim_env


def create(env: dict, name: str, *extra: str) -> dict:
    p = autopod(env, "pod.create", "--name", name, "--volume-id", volume_id(env), *extra, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# --- the watchdog ---------------------------------------------------------------------------


def test_an_idle_pod_is_stopped_by_its_watchdog_after_autopod_exited(sim):
    # 12 s, not IDLE's 3: the watchdog's status is read over SSH after pod.create (and again after pod.start)
    # returns, which on a loaded machine can take several seconds, by when the pod would rightly be stopped
    t0, before = time.monotonic(), stops_requested(sim)
    doc = create(sim, "idle1", "--idle-minutes", "0.2")
    assert "idle watchdog stops it after 12 s idle" in doc["msg"]
    # autopod has exited; the pod runs, guarded from inside
    assert status_of(sim, "idle1") == "RUNNING"
    code, st = guard_status(sim, "idle1")
    assert code == 0 and st["running"] and st["action"] == "stop" and st["idle_minutes"] == 0.2
    assert st["comfy"] == "up" and st["busy"] == [] and 0 <= st["acts_in_s"] <= 12
    assert wait_until(lambda: status_of(sim, "idle1") == "EXITED", 30)
    assert time.monotonic() - t0 >= 12  # never before the idle time
    assert stops_requested(sim) == before + 1  # the stand-in saw the pod's own runpodctl stop it
    # The reason is on the pod's disk; after a start (which installs the watchdog again) status shows it.
    p = autopod(sim, "pod.start", "--pod", "idle1")
    assert p.returncode == 0, p.stderr
    assert "the idle watchdog stops it after 12 s idle" in p.stdout
    code, st = guard_status(sim, "idle1")
    assert st["acted"]["action"] == "stop"
    assert "nothing was connected to ComfyUI" in st["acted"]["why"]
    assert any("stopping pod" in line for line in st["log_tail"])
    assert wait_until(lambda: status_of(sim, "idle1") == "EXITED", 30)  # and it guards the started pod again


def test_running_and_pending_prompts_keep_the_pod(sim):
    create(sim, "busy1", "--idle-minutes", IDLE)
    url = comfy_url(sim, "busy1")
    for seconds in (4.5, 4.6):  # one runs, one waits (different, so ComfyUI cannot reuse the first's result)
        assert requests.post(url + "/prompt", json=sleep_prompt(seconds), timeout=5).status_code == 200

    st = status_when(sim, "busy1", lambda s: "1 prompt(s) pending" in s.get("busy", []))
    assert st and "a prompt is running" in st["busy"] and st["acts_in_s"] == 0
    # the first prompt's 4.5 s are past the idle time; then the second runs, nothing waits
    assert wait_until(lambda: pod_state(sim, "busy1").get("busy") == ["a prompt is running"], 10, 0.05)
    assert status_of(sim, "busy1") == "RUNNING"
    # once the queue is done, the idle clock runs from the prompt's end
    assert wait_until(lambda: status_of(sim, "busy1") == "EXITED", 20)


def test_an_open_connection_keeps_the_pod_and_closing_it_starts_the_clock(sim):
    create(sim, "conn1")
    p = autopod(sim, "tunnel.start", "--pod", "conn1", "--json")
    assert p.returncode == 0, p.stderr
    local = json.loads(p.stdout)["tunnel"]["local_port"]
    from websocket import create_connection

    ws = create_connection(f"ws://127.0.0.1:{local}/ws?clientId=editor", timeout=5)  # the editor, through the tunnel
    try:
        # guarded once the editor is open: on a busy machine the tunnel's start can take longer than the idle time
        p = autopod(sim, "pod.guard", "--pod", "conn1", "--idle-minutes", IDLE, "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["changed"] is True, p.stderr
        st = status_when(sim, "conn1", lambda s: s.get("busy"))
        assert st and st["busy"] == ["1 connection(s) to ComfyUI"]
        time.sleep(5)
        assert status_of(sim, "conn1") == "RUNNING"
    finally:
        ws.close()  # the laptop sleeps: the tunnel's connection is gone
    t_closed = time.monotonic()
    assert wait_until(lambda: status_of(sim, "conn1") == "EXITED", 20)
    assert time.monotonic() - t_closed >= 2.5


def test_a_short_comfyui_outage_is_tolerated_and_a_long_one_stops_the_pod(sim):
    # Connected before the short idle time is set: only the outage may stop this pod, however long a loaded
    # machine takes between the commands
    create(sim, "dead1", "--idle-minutes", "1")
    url = comfy_url(sim, "dead1")
    port = int(url.rpartition(":")[2])
    hold = socket.create_connection(("127.0.0.1", port))  # a client holds a connection: never idle while it answers
    try:
        p = autopod(sim, "pod.guard", "--pod", "dead1", "--idle-minutes", IDLE, "--dead-minutes", "0.06", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["changed"] is True  # new settings: the running watchdog is replaced
        assert requests.post(url + "/_sim/faults", json={"outage_s": 1.5}, timeout=5).status_code == 200
        st = wait_until(lambda: (lambda s: s if s.get("comfy") == "down" else None)(pod_state(sim, "dead1")), 5, 0.05)
        assert st and st["busy"][0].startswith("ComfyUI is not answering") and st["acts_in_s"] <= 3.6
        time.sleep(4.5)  # the outage ended after 1.5 s, within the 3.6 s grace
        assert status_of(sim, "dead1") == "RUNNING"
        assert pod_state(sim, "dead1")["comfy"] == "up"
        requests.post(url + "/_sim/faults", json={"outage_s": 120}, timeout=5)
        assert wait_until(lambda: status_of(sim, "dead1") == "EXITED", 20)
    finally:
        hold.close()
    log = next(Path(sim["AUTOPOD_HOME"]).glob("sim/*/guard/guard.log")).read_text()
    assert "has not answered for" in log


def test_installing_twice_gives_one_watchdog_and_off_removes_it(sim):
    create(sim, "twice")
    pid = pod_of(sim, "twice")["id"]
    runs = [subprocess.Popen([sys.executable, "-m", "autopod", "pod.guard", "--pod", "twice", "--idle-minutes", "30",
                              "--json"], env=sim, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1] for o in outs]
    assert sorted(json.loads(o[0])["changed"] for o in outs) == [False, False, True]  # installs queue on the pod
    again = autopod(sim, "pod.guard", "--pod", "twice", "--idle-minutes", "30", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    assert "ok:" not in again.stdout  # one JSON document
    pod_dir = str(Path(sim["AUTOPOD_HOME"]) / "sim" / pid)
    assert len(wait_until(lambda: watchdog_processes(pod_dir) if len(watchdog_processes(pod_dir)) == 1 else None,
                        5) or watchdog_processes(pod_dir)) == 1
    # pod.create for the pod that exists converges on the watchdog asked for
    doc = create(sim, "twice", "--idle-minutes", "30")
    assert doc["changed"] is False and "already exists" in doc["msg"]
    doc = create(sim, "twice", "--idle-minutes", "45")
    assert doc["changed"] is True and "the idle watchdog stops it after 45 min idle" in doc["msg"]
    assert len(watchdog_processes(pod_dir)) == 1
    info = json.loads(autopod(sim, "pod.info", "--pod", "twice", "--json").stdout)
    assert info["guards"]["watchdog"]["running"] is True and info["guards"]["watchdog"]["idle_minutes"] == 45
    off = autopod(sim, "pod.guard", "--pod", "twice", "--off")
    assert off.returncode == 0 and off.stdout.startswith("changed:")
    assert autopod(sim, "pod.guard", "--pod", "twice", "--off").stdout.startswith("ok:")
    assert wait_until(lambda: not watchdog_processes(pod_dir), 5)
    code, st = guard_status(sim, "twice")
    assert code == 1 and st["running"] is False and st["removed"] is True


def test_stopping_a_simulated_pod_ends_what_runs_in_it(sim):
    create(sim, "ends", "--idle-minutes", "30")
    pod_dir = str(Path(sim["AUTOPOD_HOME"]) / "sim" / pod_of(sim, "ends")["id"])
    assert len(watchdog_processes(pod_dir)) == 1
    p = autopod(sim, "pod.stop", "--pod", "ends")
    assert p.returncode == 0 and "it ran" in p.stdout and "/hr, about $" in p.stdout
    assert not watchdog_processes(pod_dir)
    code, st = guard_status(sim, "ends")
    assert code == 1 and st["pod_status"] == "EXITED"


def test_guard_needs_a_running_pod_and_valid_settings(sim):
    vid = volume_id(sim)
    p = autopod(sim, "pod.create", "--name", "nw", "--volume-id", vid, "--idle-minutes", "5", "--no-wait")
    assert p.returncode == 2 and "--no-wait" in p.stderr
    assert not [q for q in sim_world(sim)["pods"].values() if q["name"] == "nw"]
    create(sim, "g2")
    for args, needle in ((["--idle-minutes", "0"], "--idle-minutes"), (["--idle-minutes", "soon"], "--idle-minutes"),
                         (["--idle-minutes", "5", "--action", "pause"], "--action"),
                         (["--status", "--off"], "not both"), (["--status", "--idle-minutes", "3"], "take no"),
                         ([], "give --idle-minutes")):
        p = autopod(sim, "pod.guard", "--pod", "g2", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr
    autopod(sim, "pod.stop", "--pod", "g2")
    p = autopod(sim, "pod.guard", "--pod", "g2", "--idle-minutes", "5")
    assert p.returncode == 1 and "is EXITED" in p.stderr


def test_the_inventory_sets_the_watchdog(sim, tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text(f"pods:\n  inv1:\n    volume_id: {volume_id(sim)}\n    idle_minutes: 30\n    idle_action: terminate\n")
    env = {**sim, "AUTOPOD_INVENTORY": str(inv)}
    p = autopod(env, "pod.up", "--name", "inv1", "--json")
    assert p.returncode == 0, p.stderr
    assert "terminates it after 30 min idle" in json.loads(p.stdout)["msg"]
    code, st = guard_status(env, "inv1")
    assert code == 0 and st["action"] == "terminate" and st["dead_minutes"] == 30
    p = autopod(env, "pod.up", "--name", "inv1", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["changed"] is False  # converged: same watchdog


@pytest.mark.parametrize("bad", ["idle_minutes: soon", "idle_minutes: 0", "idle_minutes: '5'",
                                 "idle_action: pause", "stop_after: tomorrow", "budget_usd_per_day: -1"])
def test_bad_guard_settings_in_the_inventory_are_exit_2(cli, tmp_path, monkeypatch, bad):
    inv = tmp_path / "inventory.yml"
    inv.write_text(f"defaults:\n  {bad}\n")
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(inv))
    r = cli("pod.create", "--name", "x", "--dry-run")
    assert r.code == 2 and str(inv) in r.err and bad.split(":")[0] in r.err


def test_the_watchdog_runs_unchanged_behind_the_pure_python_ssh_server(sim_env):  # noqa: F811
    pytest.importorskip("asyncssh")
    p = autopod(sim_env, "sim.start", "--comfy-ready-after", "0.3", "--ssh-server", "python")
    assert p.returncode == 0, p.stderr
    create(sim_env, "py1", "--idle-minutes", IDLE)
    assert wait_until(lambda: status_of(sim_env, "py1") == "EXITED", 20)


def test_the_watchdog_stops_the_pod_after_graphql_is_retired(sim_env):  # noqa: F811
    """autopod switches to REST v2, and the pod's runpodctl speaks it too: the guard still works."""
    require_sshd()
    assert autopod(sim_env, "sim.start", "--comfy-ready-after", "0.3", "--graphql-retired").returncode == 0
    doc = create(sim_env, "late", "--idle-minutes", IDLE)
    assert "idle watchdog" in doc["msg"]
    assert wait_until(lambda: status_of(sim_env, "late") == "EXITED", 20)
    assert stops_requested(sim_env) == 1


# --- RunPod's timers ------------------------------------------------------------------------


def test_timers_arrive_in_the_create_request_as_absolute_times(sim):
    before = datetime.now(timezone.utc).timestamp()
    create(sim, "t1", "--stop-after", "2h", "--terminate-after", "1d", "--no-wait")
    after = datetime.now(timezone.utc).timestamp()
    pod = pod_of(sim, "t1")
    stop = datetime.strptime(pod["stopAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    term = datetime.strptime(pod["terminateAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert before + 7200 - 1 <= stop <= after + 7200
    assert before + 86400 - 1 <= term <= after + 86400
    info = json.loads(autopod(sim, "pod.info", "--pod", "t1", "--json").stdout)
    assert info["guards"]["stop_at"]["at"] == pod["stopAfter"] and info["guards"]["terminate_at"]["in_s"] > 86000
    # an ISO time, as written; without a zone it is local time
    at = datetime.fromtimestamp(int(after) + 3 * 86400, timezone.utc)
    create(sim, "t2", "--stop-after", at.strftime("%Y-%m-%dT%H:%M:%SZ"), "--no-wait")
    assert pod_of(sim, "t2")["stopAfter"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
    create(sim, "t3", "--stop-after", at.astimezone().replace(tzinfo=None).isoformat(), "--no-wait")
    assert pod_of(sim, "t3")["stopAfter"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_runpod_stops_the_pod_at_its_timer_with_nothing_running_here(sim):
    # --no-wait: on a loaded machine the wait for SSH can outlast a 2 s timer, and pod.create then rightly
    # fails on a pod that stopped under it.
    create(sim, "t3", "--stop-after", "2s", "--no-wait")
    assert wait_until(lambda: status_of(sim, "t3") == "EXITED", 15)
    assert stops_requested(sim) == 0  # RunPod's own timer: nobody asked for the stop


def test_a_bad_timer_is_exit_2_and_creates_nothing(sim):
    p = autopod(sim, "pod.create", "--name", "bad", "--volume-id", volume_id(sim), "--stop-after", "soon")
    assert p.returncode == 2 and "--stop-after" in p.stderr and "Traceback" not in p.stderr
    assert sim_world(sim)["pods"] == {}


@pytest.mark.parametrize("flag", ["--stop-after", "--terminate-after"])
@pytest.mark.parametrize("value", ["soon", "90", "-5m", "0m", "2000-01-01T00:00:00Z", "2026-12-01", "400d", "1h30"])
def test_bad_timers_are_refused_before_anything_is_asked(cli, flag, value):
    for task in ("pod.create", "pod.up"):
        r = cli(task, "--name", "bad", flag, value)
        assert r.code == 2, r.err
        assert flag in r.err and "Traceback" not in r.err and "API key" not in r.err


def test_up_on_an_existing_pod_says_the_timer_is_not_applied(sim):
    create(sim, "t4", "--no-wait")
    p = autopod(sim, "pod.up", "--name", "t4", "--stop-after", "1h")
    assert p.returncode == 0, p.stderr
    assert "not applied" in p.stderr and "--stop-after" in p.stderr
    assert pod_of(sim, "t4").get("stopAfter") is None


# --- spend and the budget -------------------------------------------------------------------


@pytest.fixture
def dear_sim(sim_env, tmp_path):  # noqa: F811
    """A world where an RTX A40 costs $360/hr, so a few seconds of uptime are visible money."""
    require_sshd()
    world = tmp_path / "world.yml"
    world.write_text("gpu_types:\n  NVIDIA RTX A40:\n    securePrice: 360\n  NVIDIA RTX A6000:\n    securePrice: 720\n")
    p = autopod(sim_env, "sim.start", "--world", str(world), "--comfy-ready-after", "0.3")
    assert p.returncode == 0, p.stderr
    return sim_env


def test_spend_is_uptime_times_rate_and_the_total_is_their_sum(dear_sim):
    create(dear_sim, "s1", "--gpu", "RTX A40")
    create(dear_sim, "s2", "--gpu", "RTX A6000", "--no-wait")
    time.sleep(2)
    pods = json.loads(autopod(dear_sim, "pod.list", "--json").stdout)
    for p in pods:
        assert p["uptime_s"] > 0 and p["cost_per_hr"] in (360.0, 720.0)
        assert p["spend_usd"] == round(p["cost_per_hr"] * p["uptime_s"] / 3600, 4)
    table = autopod(dear_sim, "pod.list").stdout
    total = table.strip().splitlines()[-1]
    assert total.startswith("total: 2 of 2 pod(s) running at $1080.000/hr; spent $")
    spent = float(total.split("spent $")[1].split()[0])
    # the table is read a moment after the JSON: the sum may have grown by that moment's spend
    assert sum(p["spend_usd"] for p in pods) - 0.01 <= spent <= sum(p["spend_usd"] for p in pods) + 2 * 1080 / 3600
    for p in pods:
        assert f"${p['spend_usd']:.2f}" in table or p["uptime_s"] > 0
    kill = autopod(dear_sim, "pod.kill", "--pod", "s1", "--yes", "--json")
    doc = json.loads(kill.stdout)
    assert doc["spend"]["cost_per_hr"] == 360.0 and doc["spend"]["spend_usd"] > 0
    assert "it ran" in doc["msg"] and "at $360.000/hr, about $" in doc["msg"]


def test_the_daily_budget_refuses_a_pod_and_force_overrides(dear_sim):
    home = Path(dear_sim["AUTOPOD_HOME"])
    (home / "config.yaml").write_text("budget_usd_per_day: 10000\n")  # 360 x 24 = 8640 fits; two do not
    create(dear_sim, "b1", "--gpu", "RTX A40")
    p = autopod(dear_sim, "pod.create", "--name", "b2", "--volume-id", volume_id(dear_sim), "--gpu", "RTX A40",
                "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert "budget_usd_per_day $10000.00" in doc["msg"] and "--force" in doc["msg"]
    assert doc["budget"]["committed_usd"] > 8600 and doc["budget"]["projected_usd"] > 10000
    assert [q["name"] for q in sim_world(dear_sim)["pods"].values()] == ["b1"]
    dry = autopod(dear_sim, "pod.create", "--name", "b2", "--volume-id", volume_id(dear_sim), "--gpu", "RTX A40",
                  "--dry-run")
    assert dry.returncode == 1 and "budget" in dry.stderr
    # a timer bounds what a pod can spend: 2 h of a second pod fits
    p = autopod(dear_sim, "pod.create", "--name", "b3", "--volume-id", volume_id(dear_sim), "--gpu", "RTX A40",
                "--stop-after", "2h", "--no-wait")
    assert p.returncode == 0, p.stderr
    p = autopod(dear_sim, "pod.create", "--name", "b2", "--volume-id", volume_id(dear_sim), "--gpu", "RTX A40",
                "--force", "--no-wait")
    assert p.returncode == 0, p.stderr
    # starting a stopped pod is held to the budget too
    assert autopod(dear_sim, "pod.stop", "--pod", "b1").returncode == 0
    p = autopod(dear_sim, "pod.start", "--pod", "b1", "--no-wait")
    assert p.returncode == 1 and "budget" in p.stderr
    assert status_of(dear_sim, "b1") == "EXITED"
    assert autopod(dear_sim, "pod.start", "--pod", "b1", "--no-wait", "--force").returncode == 0


def test_the_budget_skips_a_fallback_gpu_it_cannot_afford(dear_sim):
    (Path(dear_sim["AUTOPOD_HOME"]) / "config.yaml").write_text("budget_usd_per_day: 9000\n")
    p = autopod(dear_sim, "pod.create", "--name", "fb", "--volume-id", volume_id(dear_sim), "--gpu", "RTX A6000",
                "--gpu", "RTX A40", "--no-wait", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["pod"]["gpu"] == "RTX A40"
    assert "skipping RTX A6000" in p.stderr

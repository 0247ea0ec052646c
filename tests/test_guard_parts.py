"""The cost guard's parts without processes: durations and timers, the budget's arithmetic, the
watchdog's decision from one look at ComfyUI, and the programs that run inside a pod."""

from __future__ import annotations

import ast
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autopod.core.errors import BudgetExceeded, UsageError
from autopod.core.flags import deadline, duration_seconds, point_in_time
from autopod.runpod import watchdog
from autopod.runpod.budget import Budget, billable_hours, gpu_rate
from autopod.runpod.records import Pod, totals
from autopod.runpod.spec import build_create_input, resolve_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text,secs", [("90m", 5400), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45s", 45),
                                       ("0.5h", 1800), ("1d2h3m4s", 93784), (" 2H ", 7200)])
def test_durations(text, secs):
    assert duration_seconds(text) == secs


@pytest.mark.parametrize("text", ["", "90", "m", "2 h", "h2", "1h30", "-5m", "1w", "nan", "2h1d"])
def test_not_durations(text):
    assert duration_seconds(text) is None


def test_points_in_time_are_local_without_a_zone():
    assert point_in_time("2026-11-30T08:00:00Z") == datetime(2026, 11, 30, 8, tzinfo=timezone.utc)
    local = point_in_time("2026-11-30T08:00")
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2026, 11, 30, 8)
    assert point_in_time("2026-11-30") is None  # a bare date is refused: midnight is rarely meant
    assert point_in_time("tomorrow") is None


def test_deadlines_are_in_the_future_and_within_a_year():
    now = 1_800_000_000.0
    assert deadline("2h", "--stop-after", now) == now + 7200
    assert deadline("2027-01-15T12:00:00+00:00", "--stop-after", now) == \
        datetime(2027, 1, 15, 12, tzinfo=timezone.utc).timestamp()
    for bad, why in (("0m", "not in the future"), ("2020-01-01T00:00Z", "not in the future"),
                     ("400d", "more than 365 days"), ("soon", "a duration like 90m")):
        with pytest.raises(UsageError, match=why):
            deadline(bad, "--stop-after", now)


def test_timers_go_into_the_create_request_as_utc_times():
    spec = resolve_spec({"name": "p", "stop_after": "90m", "terminate_after": "1d"})
    now = datetime(2026, 11, 29, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    timers = spec.timers(now)
    inp = build_create_input(spec, "p", {"id": "NVIDIA RTX A40"}, None, "ssh-ed25519 AAAA", timers)
    assert inp["stopAfter"] == "2026-11-29T11:30:00Z"
    assert inp["terminateAfter"] == "2026-11-30T10:00:00Z"
    plain = build_create_input(resolve_spec({"name": "p"}), "p", {"id": "X"}, None, None)
    assert "stopAfter" not in plain and "terminateAfter" not in plain


def test_guard_settings_in_the_spec():
    spec = resolve_spec({"name": "p", "idle_minutes": "0.25", "idle_action": "terminate"})
    assert spec.guard_settings() == {"idle_minutes": 0.25, "action": "terminate", "dead_minutes": None}
    assert resolve_spec({"name": "p"}).guard_settings() is None
    with pytest.raises(UsageError, match="--idle-action"):
        resolve_spec({"name": "p", "idle_minutes": "5", "idle_action": "sleep"})
    with pytest.raises(UsageError, match="--idle-minutes"):
        resolve_spec({"name": "p", "idle_minutes": "nan"})


# --- spend and budget -----------------------------------------------------------------------


def pod(pid: str, status: str, rate: float, uptime: int | None) -> Pod:
    return Pod(id=pid, name=pid, status=status, cost_per_hr=rate, uptime_s=uptime)


def test_spend_is_rate_times_uptime_and_totals_add_up():
    pods = [pod("a", "RUNNING", 0.44, 3600), pod("b", "RUNNING", 1.99, 900), pod("c", "EXITED", 0.0, None)]
    assert [p.spend_usd for p in pods] == [0.44, 0.4975, None]
    assert pods[0].to_dict()["spend_usd"] == 0.44
    assert totals(pods) == {"running": 2, "pods": 3, "cost_per_hr": 2.43, "spend_usd": 0.9375}


def test_gpu_rates_by_cloud():
    g = {"securePrice": 0.5, "communityPrice": 0.3}
    assert gpu_rate(g, "SECURE", 2) == 1.0
    assert gpu_rate(g, "COMMUNITY", 1) == 0.3
    assert gpu_rate(g, "ALL", 1) == 0.5  # the dearer, to be safe
    assert gpu_rate({"securePrice": None}, "SECURE", 1) is None


def test_the_budget_counts_timers_and_refuses_with_the_numbers():
    now = 1_000_000.0
    pods = [pod("a", "RUNNING", 1.0, 60), pod("b", "RUNNING", 2.0, 60), pod("c", "EXITED", 5.0, None)]
    entries = {"b": {"timers": {"stop_at": now + 2 * 3600}}}
    b = Budget.of(50.0, pods, entries, now)
    assert b.committed == 24.0 + 4.0  # a for 24 h, b until its timer, c not running
    assert b.room_for(0.9, 24) and not b.room_for(1.0, 24.1)
    assert b.room_for(10.0, billable_hours({"stop_at": now + 7200}, now))
    err = b.refuse("pod x on RTX A40", 1.5, 24)
    assert isinstance(err, BudgetExceeded) and err.exit_code == 1
    assert err.data["budget"]["projected_usd"] == 64.0 and "budget_usd_per_day $50.00" in str(err)
    assert Budget.of(50.0, pods, entries, now, exclude="a").committed == 4.0


# --- the watchdog's decision ----------------------------------------------------------------


CONFIG = {"pod_id": "p1", "comfy_address": "127.0.0.1:8188", "idle_s": 60.0, "dead_s": 300.0, "action": "stop",
          "poll_s": 5.0, "http_timeout_s": 2.0}


@pytest.fixture
def comfy(monkeypatch):
    """What the watchdog sees: ComfyUI's answers (or an error) and the established connections."""
    seen = {"queue": {"queue_running": [], "queue_pending": []}, "history": {}, "conns": 0, "down": False}

    def get(address, path, timeout):
        if seen["down"]:
            raise ConnectionRefusedError("refused")
        return seen["queue"] if path == "/queue" else seen["history"]

    monkeypatch.setattr(watchdog, "comfy_get", get)
    monkeypatch.setattr(watchdog, "established", lambda port: seen["conns"])
    return seen


def test_idle_after_n_and_never_before(comfy):
    state = {"last_activity": 0.0}
    assert watchdog.check(CONFIG, state, 30.0) is None and state["acts_in_s"] == 30.0
    why = watchdog.check(CONFIG, state, 60.0)
    assert why and "nothing was connected to ComfyUI for 60 s" in why


def test_running_pending_and_connections_are_activity(comfy):
    state = {"last_activity": 0.0}
    comfy["queue"] = {"queue_running": [[1, "a", {}, {}, []]], "queue_pending": [[2, "b", {}, {}, []]]}
    assert watchdog.check(CONFIG, state, 500.0) is None
    assert state["busy"] == ["a prompt is running", "1 prompt(s) pending"] and state["last_activity"] == 500.0
    comfy["queue"] = {"queue_running": [], "queue_pending": []}
    comfy["conns"] = 2
    assert watchdog.check(CONFIG, state, 1000.0) is None and state["busy"] == ["2 connection(s) to ComfyUI"]
    comfy["conns"] = 0
    assert watchdog.check(CONFIG, state, 1059.0) is None  # the clock restarted when the connection went
    assert watchdog.check(CONFIG, state, 1060.0)


def test_a_prompt_that_finished_between_looks_restarts_the_clock(comfy):
    recorded = json.loads((ROOT / "autopod/sim/data/comfyui/history_max_items_1.json").read_text())["body"]
    finished = watchdog.last_finished(recorded)
    assert finished == 1795887394.807  # the newest message of the newest entry, in seconds
    state = {"last_activity": finished - 1000}
    comfy["history"] = recorded
    assert watchdog.check(CONFIG, state, finished + 30) is None and state["last_activity"] == finished
    assert watchdog.check(CONFIG, state, finished + 60)


def test_comfyui_not_answering_is_not_idle_until_it_counts_as_dead(comfy):
    state = {"last_activity": 0.0}
    comfy["down"] = True
    assert watchdog.check(CONFIG, state, 100.0) is None  # idle time long past, but a silent ComfyUI is not idle
    assert state["comfy"] == "down" and state["acts_in_s"] == 300.0
    assert watchdog.check(CONFIG, state, 399.0) is None
    comfy["down"] = False
    assert watchdog.check(CONFIG, state, 400.0) is None and "down_since" not in state  # back: the clock restarts
    comfy["down"] = True
    watchdog.check(CONFIG, state, 500.0)
    why = watchdog.check(CONFIG, state, 800.0)
    assert why and "has not answered for 5.0 min" in why


def test_the_watchdog_reads_the_pods_facts_from_pid_1(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    assert watchdog.pod_id(CONFIG) in ("p1", watchdog.pid1_environment().get("RUNPOD_POD_ID"))
    monkeypatch.setenv("RUNPOD_POD_ID", "fromenv")
    assert watchdog.pod_id(CONFIG) == "fromenv"


def test_established_counts_only_connections_to_the_port(tmp_path, monkeypatch):
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    before = watchdog.established(port)
    if before is None:
        pytest.skip("no /proc/net/tcp here")
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = srv.accept()
    try:
        assert watchdog.established(port) == before + 1  # the server's end only, not the client's
    finally:
        for s in (c, a, srv):
            s.close()


@pytest.mark.parametrize("path", ["autopod/runpod/watchdog.py", "autopod/sim/runpodctl.py"])
def test_programs_that_run_in_a_pod_need_only_the_standard_library(path):
    """The watchdog runs on the pod's own Python; the simulated runpodctl must start fast."""
    tree = ast.parse((ROOT / path).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path} imports from its package"
            names.add((node.module or "").split(".")[0])
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names - set(sys.stdlib_module_names)


def test_the_watchdog_program_compiles_for_older_pythons():
    """Pods run whatever Python their image has: no syntax newer than 3.6 (no walrus, no match)."""
    src = (ROOT / "autopod/runpod/watchdog.py").read_text()
    tree = ast.parse(src, feature_version=(3, 6))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]  # %-formatting only


def test_watchdog_status_of_an_empty_folder(tmp_path):
    doc = watchdog.status_doc(str(tmp_path))
    assert doc["running"] is False and doc["acted"] is None and doc["log_tail"] == []
    (tmp_path / "state.json").write_text(json.dumps({"acting": {"at": time.time(), "action": "stop", "why": "w"}}))
    doc = watchdog.status_doc(str(tmp_path))
    assert doc["acted"]["why"] == "w" and doc["acted"]["confirmed"] is False and doc["removed"] is True


def test_sim_runpodctl_reads_both_syntaxes():
    from autopod.sim.runpodctl import parse

    assert parse(["stop", "pod", "x"]) == ("stop", "x")
    assert parse(["pod", "stop", "x"]) == ("stop", "x")
    assert parse(["remove", "pod", "x"]) == ("terminate", "x")
    assert parse(["pod", "delete", "x"]) == ("terminate", "x")
    with pytest.raises(ValueError):
        parse(["stop", "x"])


def test_a_model_download_in_this_pod_is_activity(comfy, tmp_path, monkeypatch):
    """A pull writes its job beside the guard's folder on the volume; while its heartbeat is fresh the pod
    is busy, so the watchdog never stops a pod half way through a model download."""
    guard = tmp_path / ".autopod" / "guard" / "p1"
    jobs = tmp_path / ".autopod" / "models" / "jobs"
    guard.mkdir(parents=True)
    monkeypatch.delenv("AUTOPOD_MODELS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def job(key, **doc):
        (jobs / key).mkdir(parents=True, exist_ok=True)
        (jobs / key / "job.json").write_text(json.dumps(doc))

    job("mine", pod="p1", status="downloading", heartbeat=1000.0)
    job("other-pod", pod="p2", status="downloading", heartbeat=1000.0)  # same volume, another pod
    job("done", pod="p1", status="done", heartbeat=1000.0)
    (jobs / "broken").mkdir()
    (jobs / "broken" / "job.json").write_text("[1, 2")
    state = {"last_activity": 0.0}
    assert watchdog.check(CONFIG, state, 1005.0, str(guard)) is None
    assert state["busy"] == ["1 model download(s)"] and state["last_activity"] == 1005.0
    # The pull was killed (its heartbeat stops): idle from then on, and the pod is stopped after idle_s.
    assert watchdog.check(CONFIG, state, 1005.0 + watchdog.PULL_FRESH_S, str(guard)) is None
    assert state["busy"] == []
    assert watchdog.check(CONFIG, state, 1005.0 + 60.0, str(guard))
    # Without the folder (an older install), no job is found: nothing else changes.
    assert watchdog.pulls_running(CONFIG, None, 1005.0) == 0

"""The simulator's Serverless platform model, over real HTTP: workers up to workers.max, cold starts, idle
timeouts, runsync, retry, stream, retention, payload limits, execution timeouts and TTLs."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from sls_fixtures import sleep_save, sls, wait_for  # noqa: F401 (sls is a fixture)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def most_at_once(entries: list[dict]) -> int:
    """How many attempts ran at the same time, from the job log's attempt intervals."""
    edges = []
    for e in entries:
        for a in e["attempts"]:
            edges += [(_ts(a["started_at"]), 1), (_ts(a["ended_at"]), -1)]
    now = peak = 0
    for _, step in sorted(edges, key=lambda x: (x[0], x[1])):
        now += step
        peak = max(peak, now)
    return peak


def test_a_batch_never_runs_on_more_workers_than_workers_max(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    ep = sls.create(workers={"min": 0, "max": 3, "idleTimeout": 5})
    eid = ep["id"]
    jids = [sls.run(eid, {"workflow": sleep_save(0.15, prefix=f"b{i}")}) for i in range(9)]
    peak_workers = 0
    while True:
        summary = sls.workers(eid)["summary"]
        peak_workers = max(peak_workers, summary["total"])
        if sls.health(eid)["jobs"]["completed"] == 9:
            break
        time.sleep(0.02)
    assert peak_workers == 3
    done = [sls.status(eid, j) for j in jids]
    assert {d["status"] for d in done} == {"COMPLETED"}
    log = sls.jobs_log(eid)
    assert len({e["worker_id"] for e in log}) == 3
    assert most_at_once(log) == 3  # all three busy at once, never a fourth
    assert all(len(e["attempts"]) == 1 for e in log)
    # each prompt ran once, and 9 prompts of 0.15 s on 3 workers take about 3 rounds, not 9
    assert max(_ts(e["ended_at"]) for e in log) - min(_ts(e["submitted_at"]) for e in log) < 9 * 0.15


def test_cold_start_off_and_on_and_flashboot(sls):
    # A 2 s cold start against pickups that take up to a second on a loaded machine: the two never meet
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    done = sls.wait(eid, sls.run(eid, {"workflow": sleep_save()}))
    assert done["delayTime"] < 1000  # no cold start: picked up at once
    sls.control(settings={"sls_cold_start_s": 2.0, "sls_flashboot_start_s": 0.1, "sls_time_scale": 0.01})
    cold = sls.create(name="cold")["id"]
    done = sls.wait(cold, sls.run(cold, {"workflow": sleep_save()}))
    assert done["delayTime"] >= 2000
    flash = sls.create(name="flash", flashboot="FLASHBOOT")["id"]
    first = sls.wait(flash, sls.run(flash, {"workflow": sleep_save()}))
    assert first["delayTime"] >= 2000  # the first worker of an endpoint has nothing to boot from
    wait_for(lambda: sls.workers(flash)["summary"]["total"] == 0, what="the idle worker to stop")
    again = sls.wait(flash, sls.run(flash, {"workflow": sleep_save(prefix="again")}))
    assert 100 <= again["delayTime"] < 2000  # FlashBoot's 0.1 s start, not the 2 s boot


def test_idle_workers_stop_after_idle_timeout_but_workers_min_stay(sls):
    sls.control(settings={"sls_cold_start_s": 0, "sls_time_scale": 0.02})  # idleTimeout 5 s -> 0.1 s
    eid = sls.create(workers={"min": 1, "max": 3, "idleTimeout": 5})["id"]
    wait_for(lambda: sls.workers(eid)["summary"]["idle"] == 1, what="the minimum worker")  # no job needed
    jids = [sls.run(eid, {"workflow": sleep_save(0.3, prefix=f"i{i}")}) for i in range(3)]
    for j in jids:
        sls.wait(eid, j)
    assert len({e["worker_id"] for e in sls.jobs_log(eid)}) == 3
    wait_for(lambda: sls.workers(eid)["summary"]["total"] == 1, what="idle workers to stop")
    sls.ticks(20)  # 20 ticks of 20 ms: four idle timeouts later the minimum is still there
    assert sls.workers(eid)["summary"] == {"running": 0, "idle": 1, "initializing": 0, "throttled": 0,
                                           "unhealthy": 0, "total": 1}
    assert sls.health(eid)["workers"]["idle"] == 1


def test_lowering_workers_max_and_a_new_release(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create(workers={"min": 2, "max": 2, "idleTimeout": 60})["id"]
    wait_for(lambda: sls.workers(eid)["summary"]["idle"] == 2, what="two workers")
    sls.call("PATCH", f"/v2/serverless/{eid}", json={"workers": {"min": 1, "max": 1}})
    wait_for(lambda: sls.workers(eid)["summary"]["total"] == 1, what="the extra worker to stop")
    old = sls.workers(eid)["workers"][0]
    jid = sls.run(eid, {"workflow": sleep_save(1.0)})
    sls.wait(eid, jid, until={"IN_PROGRESS"})
    r = sls.call("PATCH", f"/v2/serverless/{eid}", json={"env": {"X": "1"}})
    listing = sls.workers(eid)
    assert listing["endpointVersion"] == 2
    busy = next(w for w in listing["workers"] if w["id"] == old["id"])
    assert busy["isStale"] and busy["status"] == "RUNNING" and busy["version"] == 1  # finishes its job first
    assert r.json()["env"] == {"X": "1"}
    assert sls.wait(eid, jid)["status"] == "COMPLETED"
    wait_for(lambda: [w["version"] for w in sls.workers(eid)["workers"]] == [2], what="the new release")


def test_runsync_answers_with_the_result_or_the_id_to_poll(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    r = sls.call("POST", f"/v2/{eid}/runsync", json={"input": {"workflow": sleep_save()}})
    doc = r.json()
    assert r.status_code == 200 and doc["status"] == "COMPLETED" and doc["id"].startswith("sync-")
    assert doc["output"]["images"][0]["filename"] == "sls_00001_.png"
    r = sls.call("POST", f"/v2/{eid}/runsync?wait=1000", json={"input": {"workflow": sleep_save(3, prefix="l")}})
    slow = r.json()
    assert set(slow) == {"id", "status"} and slow["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert sls.call("POST", f"/v2/{eid}/cancel/{slow['id']}").json()["status"] == "CANCELLED"


def test_runsync_results_are_kept_a_shorter_time_than_run_results(sls):
    sls.control(settings={"sls_cold_start_s": 0, "sls_retention_s": 30, "sls_runsync_retention_s": 0.1})
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": sleep_save()})
    sync = sls.call("POST", f"/v2/{eid}/runsync", json={"input": {"workflow": sleep_save(prefix="s")}}).json()
    sls.wait(eid, jid)
    wait_for(lambda: sls.call("GET", f"/v2/{eid}/status/{sync['id']}").status_code == 404, what="expiry")
    assert sls.status(eid, jid)["status"] == "COMPLETED"


def test_results_expire_after_the_retention_and_cannot_be_retried(sls):
    sls.control(settings={"sls_cold_start_s": 0, "sls_retention_s": 1.0})
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": {"1": {"class_type": "AutopodFail", "inputs": {}}}})
    assert sls.wait(eid, jid)["status"] == "FAILED"
    ended = time.monotonic()
    wait_for(lambda: sls.call("GET", f"/v2/{eid}/status/{jid}").status_code == 404, what="expiry")
    assert time.monotonic() - ended >= 0.5
    assert sls.call("POST", f"/v2/{eid}/retry/{jid}").status_code == 404
    assert sls.jobs_log(eid)[0]["removed"] == "retention"


def test_retry_runs_a_failed_job_again_under_the_same_id(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    ok = sls.run(eid, {"workflow": sleep_save()})
    failing = sls.run(eid, {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
                                         "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0]}},
                                         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}}})
    assert sls.wait(eid, failing)["status"] == "FAILED"
    assert sls.wait(eid, ok)["status"] == "COMPLETED"
    r = sls.call("POST", f"/v2/{eid}/retry/{ok}")
    assert r.status_code == 400 and "FAILED or TIMED_OUT" in r.json()["error"]
    assert sls.call("POST", f"/v2/{eid}/retry/{failing}").json() == {"id": failing, "status": "IN_QUEUE"}
    again = sls.wait(eid, failing)
    assert again["status"] == "FAILED" and again["id"] == failing
    entry = next(e for e in sls.jobs_log(eid) if e["id"] == failing)
    assert len(entry["attempts"]) == 2 and entry["retries"] == 1
    assert sls.health(eid)["jobs"]["retried"] == 1


def test_stream_has_no_chunks_for_worker_comfyui_and_holds_until_the_end(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": sleep_save(0.3)})
    t0 = time.monotonic()
    doc = sls.call("GET", f"/v2/{eid}/stream/{jid}").json()
    assert doc == {"status": "COMPLETED", "stream": []}
    assert time.monotonic() - t0 >= 0.2  # it held while the job ran
    t0 = time.monotonic()
    held = sls.call("GET", f"/v2/{eid}/stream/{sls.run(eid, {'workflow': sleep_save(2, prefix='x')})}?wait=100")
    assert held.json()["stream"] == [] and time.monotonic() - t0 < 1.5


def test_payload_limits_of_run_and_runsync(sls):
    eid = sls.create()["id"]
    big = {"workflow": {}, "pad": "x" * (10 * 1024 * 1024)}  # just over 10 MB once wrapped
    r = sls.call("POST", f"/v2/{eid}/run", json={"input": big})
    assert r.status_code == 413 and "10485760" in r.json()["error"]
    sls.control(settings={"sls_cold_start_s": 30})
    r = sls.call("POST", f"/v2/{eid}/runsync?wait=1000", json={"input": big})  # /runsync takes 20 MB
    assert r.status_code == 200 and r.json()["status"] == "IN_QUEUE"
    assert [e["op"] for e in sls.jobs_log(eid)] == ["runsync"]


def test_execution_timeout_ends_a_job_timed_out_and_frees_the_worker(sls):
    sls.control(settings={"sls_cold_start_s": 0, "sls_time_scale": 0.02})  # 5000 ms -> 0.1 s
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": sleep_save(5)}, policy={"executionTimeout": 5000})
    t0 = time.monotonic()
    done = sls.wait(eid, jid)
    assert done["status"] == "TIMED_OUT" and time.monotonic() - t0 < 2
    # the endpoint's own timeout applies without a policy
    sls.call("PATCH", f"/v2/serverless/{eid}", json={"timeout": 10000})
    other = sls.run(eid, {"workflow": sleep_save(5, prefix="o")})
    assert sls.wait(eid, other)["status"] == "TIMED_OUT"
    wait_for(lambda: sls.workers(eid)["summary"]["idle"] == 1, timeout=3, what="the worker to be free")


def test_ttl_times_out_a_queued_job_and_deletes_a_running_one(sls):
    sls.control(settings={"sls_cold_start_s": 30, "sls_time_scale": 0.01})  # ttl 10 s -> 0.1 s
    eid = sls.create()["id"]
    queued = sls.run(eid, {"workflow": sleep_save()}, policy={"ttl": 10000})
    assert sls.wait(eid, queued)["status"] == "TIMED_OUT"
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create(name="warm")["id"]  # the first one's worker is still in its 30 s cold start
    running = sls.run(eid, {"workflow": sleep_save(5, prefix="r")}, policy={"ttl": 100000})  # 1 s
    sls.wait(eid, running, until={"IN_PROGRESS"})
    wait_for(lambda: sls.call("GET", f"/v2/{eid}/status/{running}").status_code == 404, what="the ttl")
    wait_for(lambda: sls.workers(eid)["summary"]["idle"] == 1, timeout=3, what="the worker to be free")
    entry = next(e for e in sls.jobs_log(eid) if e["id"] == running)
    assert entry["removed"] == "ttl"


@pytest.mark.parametrize("policy", [{"executionTimeout": 10}, {"ttl": 5}, {"executionTimeout": "1"}, "x"])
def test_policy_values_are_checked(sls, policy):
    eid = sls.create()["id"]
    r = sls.call("POST", f"/v2/{eid}/run", json={"input": {}, "policy": policy})
    assert r.status_code == 400
    assert sls.jobs_log() == []


def test_cancel_of_a_running_job_answers_at_once_but_the_worker_finishes_the_prompt(sls):
    """worker-comfyui's handler is synchronous and never interrupts ComfyUI: the job reads CANCELLED, the worker
    stays busy until the prompt ends, and no output is kept."""
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create(workers={"min": 0, "max": 1, "idleTimeout": 5})["id"]
    jid = sls.run(eid, {"workflow": sleep_save(1.0)})
    sls.wait(eid, jid, until={"IN_PROGRESS"})
    assert sls.call("POST", f"/v2/{eid}/cancel/{jid}").json() == {"id": jid, "status": "CANCELLED"}
    assert sls.workers(eid)["summary"]["running"] == 1
    nxt = sls.run(eid, {"workflow": sleep_save(prefix="next")})
    done = sls.wait(eid, nxt)
    assert done["delayTime"] >= 300  # waited for the cancelled prompt to end on the only worker
    cancelled = sls.status(eid, jid)
    assert cancelled["status"] == "CANCELLED" and "output" not in cancelled
    attempt = next(e for e in sls.jobs_log(eid) if e["id"] == jid)["attempts"][0]
    assert attempt["outcome"] == "CANCELLED"
    # the log shows both: cancelled at once, the worker free only when the prompt ended
    assert _ts(attempt["worker_free_at"]) - _ts(attempt["ended_at"]) >= 0.3


def test_request_count_scaling_and_low_priority_jobs(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create(scaling={"type": "REQUEST_COUNT", "requestCount": 3},
                     workers={"min": 0, "max": 4})["id"]
    jids = [sls.run(eid, {"workflow": sleep_save(0.2, prefix=f"r{i}", color=i)}) for i in range(6)]
    for j in jids:
        sls.wait(eid, j)
    assert len({e["worker_id"] for e in sls.jobs_log(eid)}) == 2  # ceil(6 / 3)
    quiet = sls.create(name="quiet")["id"]
    low = sls.run(quiet, {"workflow": sleep_save()}, policy={"lowPriority": True})
    sls.ticks(5)  # a low-priority job scales nothing up
    assert sls.status(quiet, low)["status"] == "IN_QUEUE" and sls.workers(quiet)["summary"]["total"] == 0
    sls.run(quiet, {"workflow": sleep_save(prefix="normal")})
    assert sls.wait(quiet, low)["status"] == "COMPLETED"

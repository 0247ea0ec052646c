"""The simulator's Serverless test hooks: settings, faults (429s, a worker dying mid-job, COMPLETED without
output, a lost /run answer, throttled and unhealthy workers) and the job log tests use to prove nothing ran
twice."""

from __future__ import annotations

import pytest
import requests
from sls_fixtures import KEY, sleep_save, sls, wait_for  # noqa: F401 (sls is a fixture)

from autopod.sim.serverless import digest


def test_control_shows_and_checks_settings_and_faults(sls):
    defaults = sls.call("GET", "/_sim/serverless").json()["settings"]
    # RunPod's: results kept 30 min (/runsync 1 min), 10 MB /run and 20 MB /runsync bodies, real time
    assert (defaults["sls_retention_s"], defaults["sls_runsync_retention_s"]) == (1800, 60)
    assert (defaults["sls_run_limit_bytes"], defaults["sls_runsync_limit_bytes"]) == (10 * 2**20, 20 * 2**20)
    assert defaults["sls_time_scale"] == 1
    doc = sls.control(settings={"sls_retention_s": 5}, faults={"no_output": {"times": 2}})
    assert doc["settings"]["sls_retention_s"] == 5 and doc["faults"] == {"no_output": {"times": 2}}
    assert sls.call("GET", "/_sim/serverless").json()["faults"] == {"no_output": {"times": 2}}
    for bad in ({"settings": {"sls_nope": 1}}, {"settings": {"sls_retention_s": -1}}, {"faults": {"nope": {}}},
                {"faults": {"http": [{"op": "run"}]}}, {"other": 1}):
        assert sls.call("POST", "/_sim/serverless", json=bad).status_code == 400, bad
    assert requests.get(sls.url + "/_sim/serverless", timeout=5).status_code == 401
    assert sls.control(faults={"no_output": None})["faults"] == {}


def test_429_for_the_next_n_calls_of_an_operation(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    sls.control(faults={"http": [{"op": "run", "status": 429, "times": 2, "retry_after": 1}]})
    for _ in range(2):
        r = sls.call("POST", f"/v2/{eid}/run", json={"input": {"workflow": sleep_save()}})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert sls.call("GET", f"/v2/{eid}/health").status_code == 200  # other operations are not affected
    jid = sls.run(eid, {"workflow": sleep_save()})
    assert sls.wait(eid, jid)["status"] == "COMPLETED"
    assert [e["id"] for e in sls.jobs_log()] == [jid]  # a 429 accepted nothing


def test_a_worker_that_dies_mid_job_puts_the_job_back_in_the_queue(sls):
    sls.control(settings={"sls_cold_start_s": 0}, faults={"worker_dies": {"times": 1, "after_s": 0.1}})
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": sleep_save(0.4)})
    done = sls.wait(eid, jid)
    assert done["status"] == "COMPLETED"
    entry = sls.jobs_log(eid)[0]
    first, second = entry["attempts"]
    assert first["outcome"] == "worker died" and second["outcome"] == "COMPLETED"
    assert first["worker_id"] != second["worker_id"] == done["workerId"]
    assert sls.health(eid)["jobs"]["retried"] == 1
    assert first["worker_id"] not in [w["id"] for w in sls.workers(eid)["workers"]]


def test_a_dying_worker_can_also_time_the_job_out(sls):
    sls.control(settings={"sls_cold_start_s": 0},
                faults={"worker_dies": {"times": 1, "after_s": 0, "then": "timed_out"}})
    eid = sls.create()["id"]
    jid = sls.run(eid, {"workflow": sleep_save(0.4)})
    assert sls.wait(eid, jid)["status"] == "TIMED_OUT"


def test_completed_without_output(sls):
    sls.control(settings={"sls_cold_start_s": 0}, faults={"no_output": {"times": 1}})
    eid = sls.create()["id"]
    empty = sls.wait(eid, sls.run(eid, {"workflow": sleep_save()}))
    assert empty["status"] == "COMPLETED" and "output" not in empty
    full = sls.wait(eid, sls.run(eid, {"workflow": sleep_save(prefix="b")}))
    assert full["output"]["images"]


def test_a_lost_run_answer_still_creates_the_job(sls):
    sls.control(settings={"sls_cold_start_s": 0}, faults={"lost_answer": {"times": 1}})
    eid = sls.create()["id"]
    inp = {"workflow": sleep_save(prefix="lost")}
    with pytest.raises(requests.ConnectionError):
        sls.call("POST", f"/v2/{eid}/run", json={"input": inp})
    entry = wait_for(lambda: (lambda log: log[0] if log and log[0]["status"] == "COMPLETED" else None)(
        sls.jobs_log(eid)), what="the job whose answer was lost")
    assert entry["answer_lost"] is True and entry["input_sha256"] == digest(inp)
    assert sls.status(eid, entry["id"])["output"]["images"][0]["filename"] == "lost_00001_.png"


@pytest.mark.parametrize("state", ["THROTTLED", "UNHEALTHY"])
def test_workers_that_never_take_a_job(sls, state):
    """No capacity in the pools (throttled) or a crash loop (unhealthy): the job waits, the workers list tells why."""
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create()["id"]
    sls.control(faults={"workers": {eid: state}})
    jid = sls.run(eid, {"workflow": sleep_save()})
    wait_for(lambda: sls.workers(eid)["summary"][state.lower()] == 1, what="the worker")
    assert sls.status(eid, jid)["status"] == "IN_QUEUE"
    assert sls.health(eid)["workers"][state.lower()] == 1
    sls.control(faults={"workers": {eid: None}})  # capacity comes back, the crash loop ends
    assert sls.wait(eid, jid)["status"] == "COMPLETED"
    assert sls.workers(eid)["summary"]["total"] == 1


def test_excluding_every_gpu_of_the_pools_leaves_workers_throttled(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    eid = sls.create(gpu={"pools": ["ADA_24"], "excludedTypes": ["NVIDIA GeForce RTX 4090"]})["id"]
    jid = sls.run(eid, {"workflow": sleep_save()})
    assert sls.workers(eid)["workers"][0]["status"] == "THROTTLED"
    sls.call("PATCH", f"/v2/serverless/{eid}", json={"gpu": {"pools": ["ADA_24"]}})  # clears the exclusion
    assert sls.wait(eid, jid)["status"] == "COMPLETED"


def test_the_job_log_keeps_every_accepted_job_with_its_input_digest(sls):
    sls.control(settings={"sls_cold_start_s": 0})
    a, b = sls.create(name="a")["id"], sls.create(name="b")["id"]
    same = {"workflow": sleep_save(prefix="same")}
    j1, j2 = sls.run(a, same), sls.run(b, same)
    j3 = sls.run(a, {"workflow": sleep_save(prefix="other")})
    for eid, jid in ((a, j1), (b, j2), (a, j3)):
        sls.wait(eid, jid)
    sls.control(settings={"sls_retention_s": 0.05})
    wait_for(lambda: all(e["removed"] == "retention" for e in sls.jobs_log()), what="expiry")
    log = sls.jobs_log()  # the log outlives retention
    assert [e["id"] for e in log] == [j1, j2, j3]
    assert [e["id"] for e in sls.jobs_log(a)] == [j1, j3]
    assert log[0]["input_sha256"] == log[1]["input_sha256"] != log[2]["input_sha256"]
    for e in log:
        assert e["status"] == "COMPLETED" and len(e["attempts"]) == 1
        assert e["submitted_at"] <= e["started_at"] <= e["ended_at"]
        assert e["attempts"][0]["worker_id"] == e["worker_id"]

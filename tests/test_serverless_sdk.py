"""Interop: RunPod's own SDK (``runpod`` 1.12.0) drives the simulator's job API, pointed at it with
``RUNPOD_ENDPOINT_BASE_URL``. The SDK reads that variable when it is imported, so it runs in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from sls_fixtures import KEY, png_of, sleep_save, sls  # noqa: F401 (sls is a fixture)

SCRIPT = textwrap.dedent("""
    import json, sys
    import runpod

    args = json.loads(sys.argv[1])
    runpod.api_key = args["key"]
    endpoint = runpod.Endpoint(args["endpoint"])
    out = {"base": runpod.endpoint_url_base}
    try:
        endpoint.run({"workflow": args["workflow"]})
    except Exception as e:  # urllib3's Retry leaves POST alone: a 429 on /run reaches the caller
        out["throttled"] = type(e).__name__ + ": " + str(e)
    job = endpoint.run({"workflow": args["workflow"]})  # the SDK wraps it as {"input": ...}
    out["id"] = job.job_id
    out["first_status"] = job.status()
    out["output"] = job.output(timeout=30)
    out["status"] = job.status()
    out["sync_output"] = endpoint.run_sync({"input": {"workflow": args["workflow"]}}, timeout=30)
    out["health"] = endpoint.health()
    out["purge"] = endpoint.purge_queue()
    try:
        runpod.Endpoint("nosuchendpoint").run({"workflow": {}})
    except Exception as e:  # an HTTPError for 404
        out["unknown"] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out))
""")


def test_runpods_sdk_runs_a_job_and_reads_its_status_and_output(sls):
    sls.control(settings={"sls_cold_start_s": 0.05},
                faults={"http": [{"op": "run", "status": 429, "times": 1, "retry_after": 0},
                                 {"op": "status", "status": 429, "times": 1, "retry_after": 0}]})
    eid = sls.create()["id"]
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": f"{sls.url}/v2"}
    args = {"key": KEY, "endpoint": eid, "workflow": sleep_save(0.2, prefix="sdk")}
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["base"] == f"{sls.url}/v2"
    assert out["throttled"].startswith("HTTPError: 429")
    # the first /status met a 429 too, which the SDK's retry (GETs on plain http only) got past
    assert sls.control()["faults"]["http"][1]["times"] == 0
    log = sls.jobs_log(eid)  # the throttled /run made no job
    assert out["id"] == log[0]["id"] and log[0]["op"] == "run"
    assert out["first_status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert out["status"] == "COMPLETED"
    assert [i["filename"] for i in out["output"]["images"]] == ["sdk_00001_.png"]
    png_of(out["output"]["images"][0])
    assert out["sync_output"]["images"][0]["filename"] == "sdk_00001_.png"  # the warm worker's cached prompt
    assert out["health"]["jobs"]["completed"] == 2 and out["health"]["workers"]["idle"] == 1
    assert out["purge"] == {"removed": 0, "status": "completed"}
    assert out["unknown"].startswith("HTTPError: 404")
    assert [e["op"] for e in log] == ["run", "runsync"]

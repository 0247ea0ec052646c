"""RunPod Serverless in the simulator, over real HTTP: endpoints on REST v2, the job API, jobs run like
worker-comfyui 5.8.5 by the simulated ComfyUI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import requests
from sls_fixtures import KEY, Sls, endpoint_body, png_of, sleep_save, sls, wait_for  # noqa: F401 (a fixture)

from test_simulator import autopod, sim_env  # noqa: F401 (sim_env is a fixture)

from autopod.sim.comfyui.images import decode
from autopod.sim.runpod_standin import RunPodStandin

WORKFLOWS = Path(__file__).parent / "data" / "workflows"


# --- REST v2 management --------------------------------------------------------------------------


def test_create_fills_runpods_defaults_and_the_request_urls(sls):
    r = sls.call("POST", "/v2/serverless", json={"name": "bare", "type": "QUEUE", "image": "img:1",
                                                 "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
                                                 "gpu": {"pools": ["AMPERE_24"]}})
    assert r.status_code == 201, r.text
    ep = r.json()
    # REST v2's schema defaults, not the console's
    assert ep["workers"] == {"min": 0, "max": 3, "idleTimeout": 10}
    assert ep["timeout"] == 300000 and ep["flashboot"] == "OFF" and ep["gpu"]["count"] == 1
    assert ep["requestUrls"]["run"] == f"{sls.url}/v2/{ep['id']}/run"
    assert set(ep["requestUrls"]) == {"run", "runSync", "status", "stream", "cancel", "retry", "purgeQueue", "health"}
    assert sls.call("GET", f"/v2/serverless/{ep['id']}").json() == ep
    assert [e["id"] for e in sls.call("GET", "/v2/serverless").json()["endpoints"]] == [ep["id"]]


def test_patch_changes_only_what_it_sends(sls):
    ep = sls.create(workers={"min": 0, "max": 2, "idleTimeout": 5})
    r = sls.call("PATCH", f"/v2/serverless/{ep['id']}", json={"workers": {"max": 4}})
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["workers"] == {"min": 0, "max": 4, "idleTimeout": 5}
    assert {k: v for k, v in after.items() if k != "workers"} == {k: v for k, v in ep.items() if k != "workers"}
    # pools without excludedTypes clear the exclusions, as RunPod documents
    sls.call("PATCH", f"/v2/serverless/{ep['id']}", json={"gpu": {"excludedTypes": ["NVIDIA RTX A5000"]}})
    after = sls.call("PATCH", f"/v2/serverless/{ep['id']}", json={"gpu": {"pools": ["AMPERE_24"]}}).json()
    assert after["gpu"]["excludedTypes"] == [] and after["gpu"]["pools"] == ["AMPERE_24"]


def test_closed_bodies_and_rules(sls):
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(workersMax=3))
    assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["errors"] == ["$.workersMax: additional properties are not allowed"]
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(workers={"min": 3, "max": 1}))
    assert r.status_code == 400 and "workers.min" in r.json()["detail"]
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(gpu={"pools": ["NO_SUCH_POOL"]}))
    assert r.status_code == 400 and "NO_SUCH_POOL" in r.json()["detail"]
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(timeout=10))
    assert r.status_code == 422 and "$.timeout" in r.json()["errors"][0]
    r = sls.call("POST", "/v2/serverless", json={k: v for k, v in endpoint_body().items() if k != "type"})
    assert r.status_code == 422 and "$.type: is required" in r.json()["errors"]
    ep = sls.create()
    r = sls.call("PATCH", f"/v2/serverless/{ep['id']}", json={"type": "LOAD_BALANCER"})
    assert r.status_code == 422
    assert sls.call("GET", "/v2/serverless").json()["endpoints"] == [ep]  # nothing half-made or changed


def test_a_volume_pins_the_endpoint_to_its_data_center(sls):
    vols = sls.call("GET", "/v2/network-volumes").json()["networkVolumes"]
    vol = next(v for v in vols if v["dataCenter"] == "EU-RO-1")
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(networkVolumes=[vol["id"]], dataCenterIds=["US-KS-2"]))
    assert r.status_code == 400 and "EU-RO-1" in r.json()["detail"]
    r = sls.call("POST", "/v2/serverless", json=endpoint_body(networkVolumes=["nosuchvol"]))
    assert r.status_code == 404


def test_delete_removes_the_endpoint_and_its_jobs(sls):
    ep = sls.create()
    sls.control(settings={"sls_cold_start_s": 30})  # the job stays queued
    jid = sls.run(ep["id"], {"workflow": sleep_save()})
    assert sls.call("DELETE", f"/v2/serverless/{ep['id']}").status_code == 204
    assert sls.call("GET", f"/v2/serverless/{ep['id']}").status_code == 404
    assert sls.call("GET", f"/v2/{ep['id']}/status/{jid}").status_code == 404
    entry = sls.jobs_log()[0]
    assert entry["status"] == "CANCELLED" and entry["removed"] == "endpoint deleted" and entry["attempts"] == []


def test_catalog_names_each_gpus_pool_and_serverless_price(sls):
    gpus = {g["id"]: g for g in sls.call("GET", "/v2/catalog/gpus").json()["gpus"]}
    g = gpus["NVIDIA GeForce RTX 4090"]
    assert g["pool"] == "ADA_24"
    assert g["price"]["serverless"] == round(0.00031 * 3600, 4)  # RunPod's per-second flex price, per hour
    assert gpus["NVIDIA RTX A5000"]["pool"] == gpus["NVIDIA GeForce RTX 3090"]["pool"] == "AMPERE_24"


# --- the job API ---------------------------------------------------------------------------------


def test_a_job_runs_the_workflow_and_returns_its_saved_images_as_base64(sls):
    ep = sls.create()
    pipeline = json.loads((WORKFLOWS / "image_pipeline.api.json").read_text())
    jid = sls.run(ep["id"], {"workflow": pipeline})
    done = sls.wait(ep["id"], jid)
    assert done["status"] == "COMPLETED", done
    assert set(done) == {"id", "status", "delayTime", "executionTime", "output", "workerId"}
    assert done["delayTime"] >= 50  # the cold start (0.05 s) was spent waiting
    images = done["output"]["images"]
    # SaveImage's file only: PreviewImage writes a temp image, which worker-comfyui leaves out
    assert [i["filename"] for i in images] == ["pipeline_00001_.png"]
    png = decode(png_of(images[0]))
    assert (png.width, png.height) == (640, 384)
    assert png.text == {}  # ComfyUI runs with --disable-metadata in the worker
    assert "errors" not in done["output"]


def test_status_health_and_workers_while_a_cold_start_runs(sls):
    ep = sls.create()
    eid = ep["id"]
    sls.control(settings={"sls_cold_start_s": 0.8})
    jid = sls.run(eid, {"workflow": sleep_save()})
    assert sls.status(eid, jid) == {"id": jid, "status": "IN_QUEUE"}
    health = sls.health(eid)
    assert health["jobs"]["inQueue"] == 1 and health["workers"]["initializing"] == 1
    summary = sls.workers(eid)["summary"]
    assert summary == {"running": 0, "idle": 0, "initializing": 1, "throttled": 0, "unhealthy": 0, "total": 1}
    done = sls.wait(eid, jid)
    assert done["status"] == "COMPLETED" and done["delayTime"] >= 800
    health = sls.health(eid)
    assert health["jobs"]["completed"] == 1 and health["jobs"]["inQueue"] == 0
    assert health["workers"]["idle"] == 1
    worker = sls.workers(eid)["workers"][0]
    assert worker["id"] == done["workerId"] and worker["status"] == "IDLE"
    assert worker["gpuTypeId"] == "NVIDIA GeForce RTX 4090" and worker["image"] == ep["image"]


def test_cancel_a_queued_job_and_purge_the_queue(sls):
    ep = sls.create()
    eid = ep["id"]
    sls.control(settings={"sls_cold_start_s": 30})
    first, second, third = (sls.run(eid, {"workflow": sleep_save(prefix=f"p{i}")}) for i in range(3))
    r = sls.call("POST", f"/v2/{eid}/cancel/{first}")
    assert r.json() == {"id": first, "status": "CANCELLED"}
    assert sls.status(eid, first)["status"] == "CANCELLED"
    assert sls.health(eid)["jobs"]["inQueue"] == 2
    assert sls.call("POST", f"/v2/{eid}/purge-queue").json() == {"removed": 2, "status": "completed"}
    assert sls.health(eid)["jobs"]["inQueue"] == 0
    assert sls.call("GET", f"/v2/{eid}/status/{second}").status_code == 404
    log = {e["id"]: e for e in sls.jobs_log(eid)}
    assert log[third]["status"] == "PURGED" and log[third]["removed"] == "purged"
    assert all(e["attempts"] == [] for e in log.values())  # none of them ever ran


def test_job_api_answers_401_404_and_checks_the_key(sls):
    ep = sls.create()
    eid = ep["id"]
    r = sls.http.post(f"{sls.url}/v2/{eid}/run", json={"input": {}}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert sls.call("POST", "/v2/nosuchendpoint/run", json={"input": {}}).status_code == 404
    assert sls.call("GET", f"/v2/{eid}/status/nosuchjob").status_code == 404
    assert sls.call("POST", f"/v2/{eid}/run", json={"notinput": 1}).status_code == 400
    assert sls.jobs_log() == []  # nothing was accepted
    # RunPod's docs also show the key sent alone, without "Bearer"
    assert sls.http.get(f"{sls.url}/v2/{eid}/health", headers={"Authorization": KEY}).status_code == 200


def test_stopping_the_stand_in_ends_every_worker_and_wait(tmp_path):
    standin = RunPodStandin(api_key=KEY, root=tmp_path / "sim").start()
    client = Sls(standin)
    client.control(settings={"sls_cold_start_s": 0})
    eid = client.create(workers={"min": 2, "max": 3, "idleTimeout": 60})["id"]
    client.wait(eid, client.run(eid, {"workflow": sleep_save()}))
    client.run(eid, {"workflow": sleep_save(30, prefix="long")})  # still running at stop
    held = {}
    waiter = threading.Thread(target=lambda: held.update(r=client.call(
        "POST", f"/v2/{eid}/runsync", json={"input": {"workflow": sleep_save(30, prefix="sync")}})))
    waiter.start()
    wait_for(lambda: len(client.jobs_log()) == 3, what="the runsync job")
    assert (tmp_path / "sim" / "serverless" / eid).is_dir()
    t0 = time.monotonic()
    standin.stop()
    waiter.join(10)
    assert not waiter.is_alive() and time.monotonic() - t0 < 5
    assert [t.name for t in threading.enumerate() if t.name.startswith("serverless")] == []
    assert list((tmp_path / "sim" / "serverless" / eid).iterdir()) == []  # workers' files went with them


# --- the simulator process -----------------------------------------------------------------------


def test_sim_start_serves_the_job_api_at_its_endpoint_base_url(sim_env):  # noqa: F811
    """`sim.start` says where the job API is (RUNPOD_ENDPOINT_BASE_URL); a job sent there runs, on the same
    server and world as REST v2."""
    start = autopod(sim_env, "sim.start", "--json", "--cold-start", "0")
    assert start.returncode == 0, start.stderr
    base = json.loads(start.stdout)["simulator"]["endpoint_base_url"]
    state = json.loads((Path(sim_env["AUTOPOD_HOME"]) / "sim.json").read_text())
    assert base == state["base_url"] + "/v2"
    status = autopod(sim_env, "sim.status")
    assert f"RUNPOD_ENDPOINT_BASE_URL={base}" in status.stdout
    assert autopod(sim_env, "sim.start", "--cold-start", "-1").returncode == 2
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {state['api_key']}"
    assert http.get(state["base_url"] + "/_sim/serverless", timeout=10).json()["settings"]["sls_cold_start_s"] == 0
    ep = http.post(state["base_url"] + "/v2/serverless", json=endpoint_body(), timeout=10).json()
    jid = http.post(f"{base}/{ep['id']}/run", json={"input": {"workflow": sleep_save()}}, timeout=10).json()["id"]
    done = wait_for(lambda: (lambda d: d if d["status"] == "COMPLETED" else None)(
        http.get(f"{base}/{ep['id']}/status/{jid}", timeout=10).json()), what="the job")
    png_of(done["output"]["images"][0])
    listed = autopod(sim_env, "sim.status")
    assert ep["id"] in listed.stdout and "ENDPOINT" in listed.stdout

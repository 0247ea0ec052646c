"""``comfy.run --endpoint``'s parts that need no endpoint: planning on kept or given node definitions, job
sizes, the worker's error strings as one line per problem, outputs matched to their nodes and decoded."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path

import pytest

from autopod.comfy import endpoint as sls
from autopod.comfy.run import RunOptions
from autopod.core.errors import UsageError

DATA = Path(__file__).resolve().parent.parent / "autopod" / "sim" / "data"


@pytest.fixture(scope="module")
def object_info():
    from autopod.sim.comfyui.nodes import SIM_NODES

    with gzip.open(next(DATA.rglob("object_info_full.json.gz")), "rt", encoding="utf-8") as f:
        info = json.load(f)
    info.update({name: n.info for name, n in SIM_NODES.items()})
    return info


SLEEP = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": 0.1, "steps": 1}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sls"}}}


def _wf(tmp_path, prompt=SLEEP, name="sleep.json"):
    p = tmp_path / name
    p.write_text(json.dumps(prompt))
    return p


def test_node_definitions_come_from_a_file_or_the_image_copy_else_exit_2(tmp_path, object_info):
    from autopod.comfy.nodedefs import image_key, store

    ep = sls.Endpoint(id="ep1", name="render", image="runpod/worker-comfyui:5.8.5-base")
    with pytest.raises(UsageError) as e:
        sls.node_definitions(ep, None, note=print)
    assert "--object-info FILE" in str(e.value) and "runpod/worker-comfyui:5.8.5-base" in str(e.value)
    f = tmp_path / "oi.json"
    f.write_text(json.dumps({"SaveImage": object_info["SaveImage"]}))
    assert set(sls.node_definitions(ep, str(f), note=print)) == {"SaveImage"}
    f.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not ComfyUI's node definitions"):
        sls.node_definitions(ep, str(f), note=print)
    store(image_key(ep.image), object_info, note=print)
    assert sls.node_definitions(ep, None, note=print) == object_info


def test_a_pods_definitions_are_kept_for_its_image_too(monkeypatch, object_info):
    from autopod.comfy import nodedefs
    from autopod.runpod import registry

    monkeypatch.setattr(registry, "entries_or_warn", lambda: {"pod123": {"spec": {"image": "img:1"}}})
    nodedefs.store(("pod123", "127.0.0.1:8188"), {"SaveImage": object_info["SaveImage"]}, note=print)
    kept = nodedefs.load(nodedefs.image_key("img:1"), note=print)
    assert kept == {"SaveImage": object_info["SaveImage"]}
    assert nodedefs.load(nodedefs.image_key("other:1"), note=print) is None


def test_planning_names_inputs_by_content_and_refuses_a_job_over_the_limit(tmp_path, object_info, monkeypatch):
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sls"}}}
    img = tmp_path / "cat.png"
    img.write_bytes(b"\x89PNG" + b"0" * 3000)
    f = tmp_path / "oi.json"
    f.write_text(json.dumps(object_info))
    opts = RunOptions(workflows=[str(_wf(tmp_path, wf))], inputs=[f"1.image={img}"], object_info=str(f),
                      output_dir=str(tmp_path / "out"), timeout=60)
    ep = sls.Endpoint(id="ep1", name="render")
    notes = []
    planned, _template, payloads = sls.plan_endpoint(opts, ep, notes.append)
    name = planned[0].prompt["1"]["inputs"]["image"]
    assert name.endswith("-cat.png") and len(name) == len("-cat.png") + 12
    body = payloads.build(planned[0].prompt)
    assert body["input"]["images"] == [{"name": name, "image": base64.b64encode(img.read_bytes()).decode()}]
    assert body["policy"] == {"executionTimeout": 60_000, "ttl": 60_000}
    import autopod.runpod.jobapi as jobapi

    monkeypatch.setattr(jobapi, "RUN_PAYLOAD_LIMIT", 2000)
    with pytest.raises(UsageError, match=r"over RunPod's limit"):
        sls.plan_endpoint(opts, ep, notes.append)


def test_policy_bounds_each_job_from_timeout():
    assert sls.policy_for(None) is None
    assert sls.policy_for(1) == {"executionTimeout": 5_000, "ttl": 10_000}  # RunPod's minimums
    assert sls.policy_for(900) == {"executionTimeout": 900_000, "ttl": 900_000}


def test_outputs_the_worker_never_returns_are_named_before_submitting(tmp_path, object_info):
    from autopod.comfy.run import Planned

    p = Planned(workflow="a.json", job="a", workflow_hash="h", overrides={}, seeds={}, prompt={
        **SLEEP, "4": {"class_type": "AutopodSaveGIF", "inputs": {}},
        "5": {"class_type": "AutopodSaveAudio", "inputs": {}}})
    notes = []
    lines = sls.warn_unreturned([p, p], notes.append, previews=False)
    assert len(lines) == 2 and "'gifs'" in lines[0] and "'audio'" in lines[1]
    assert all(n.startswith("warning: ") for n in notes)
    assert sls.warn_unreturned([Planned("b.json", "b", "h", SLEEP, {}, {})], notes.append, previews=False) == []


def test_worker_errors_become_a_line_per_problem():
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {}, "_meta": {"title": "Load it"}},
              "7": {"class_type": "AutopodFail", "inputs": {}}}
    errors = [{"type": "value_not_in_list", "message": "Value not in list",
               "details": "ckpt_name: 'x.safetensors' not in ['a.safetensors']", "extra_info": {"input_name": "ckpt_name"}}]
    job = {"status": "FAILED", "error": "Workflow validation failed:\n"
           f"• Node 4 (errors): {errors!r}\n• Node 4 (dependent_outputs): ['9']\n• Node 4 (class_type): CheckpointLoaderSimple"}
    kind, lines = sls.error_lines(job, prompt)
    assert kind == "rejected"
    assert lines == ["node 4 (CheckpointLoaderSimple, 'Load it') input ckpt_name: Value not in list: "
                     "ckpt_name: 'x.safetensors' not in ['a.safetensors']"]
    job = {"status": "FAILED", "error": "Job processing failed",
           "output": {"details": ["Workflow execution error: Node Type: AutopodFail, Node ID: 7, Message: boom"]}}
    kind, lines = sls.error_lines(job, prompt)
    assert kind == "error" and lines == ["Job processing failed", "node 7 (AutopodFail): boom"]
    raised = json.dumps({"error_type": "RuntimeError", "error_message": "worker died"})
    assert sls.error_lines({"error": raised}, prompt) == ("error", ["RuntimeError: worker died"])
    assert sls.error_lines({"error": "Missing 'workflow' parameter"}, prompt) == ("error", ["Missing 'workflow' parameter"])
    body = {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}, "node_errors": {}}
    assert sls.error_lines({"error": f"Prompt has no outputs. Raw response: {json.dumps(body)}"}, prompt) == (
        "rejected", ["prompt_no_outputs: Prompt has no outputs"])


def test_returned_files_go_to_the_node_that_saved_them():
    prompt = {"3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sub/cat"}},
              "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cat_big"}}}
    assert sls.output_node("cat_00001_.png", prompt) == "3"
    assert sls.output_node("cat_big_00002_.png", prompt) == "4"
    assert sls.output_node("other_00001_.png", prompt) == "output"
    assert sls.output_node("x_00001_.png", {"9": {"inputs": {"filename_prefix": "y"}}}) == "9"


def test_base64_is_decoded_in_pieces_with_its_hash(monkeypatch):
    import hashlib

    monkeypatch.setattr(sls, "B64_CHUNK", 8)
    raw = bytes(range(256)) * 5
    f = io.BytesIO()
    size, digest = sls.decode_to("data:image/png;base64," + base64.b64encode(raw).decode(), f)
    assert f.getvalue() == raw and size == len(raw) and digest == hashlib.sha256(raw).hexdigest()
    with pytest.raises(Exception, match="not base64"):
        sls.decode_to("!!!!", io.BytesIO())


def test_workers_tell_a_cold_start_from_no_capacity_and_a_crash_loop():
    assert sls.describe_workers({"running": 0, "initializing": 2}, 5) == "0 running, 2 starting (cold start)"
    assert "no capacity" in sls.describe_workers({"running": 0}, 3)
    assert "crash loop" in sls.describe_workers({"running": 1, "unhealthy": 2}, 3)
    assert sls.describe_workers(None, 3) == "unknown"


def test_endpoint_flags_are_checked_before_anything_runs():
    from autopod.comfy.spread import run_options

    with pytest.raises(UsageError, match="no --pod"):
        run_options(workflow=["a.json"], endpoint="e", pod="p")
    with pytest.raises(UsageError, match="--detach is for pods"):
        run_options(workflow=["a.json"], endpoint="e", detach=True)
    with pytest.raises(UsageError, match="--object-info"):
        run_options(workflow=["a.json"], object_info="oi.json")
    assert run_options(workflow=["a.json"], endpoint="e", object_info="oi.json").endpoint == "e"


def test_resubmit_unknown_is_for_resuming_an_endpoint_batch(monkeypatch):
    from autopod.comfy import spread

    with pytest.raises(UsageError, match="goes with --resume BATCH"):
        spread.run_options(workflow=["a.json"], resubmit_unknown=True)
    opts = spread.run_options(resume="b1", resubmit_unknown=True)
    monkeypatch.setattr(spread, "_endpoint_batch", lambda opts: False)  # a batch that ran on a pod
    with pytest.raises(UsageError, match="for a batch that ran on a Serverless endpoint"):
        spread.render(opts)


# -- the runner against an in-process job API: the ledger, outputs, sidecars, Ctrl-C and --resume ------------


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 64).decode()


class FakeJobs:
    """The job API's behaviour as the reference describes it, in memory: each /status call moves a job one
    step (IN_QUEUE, IN_PROGRESS, then final); a workflow with AutopodFail fails as worker-comfyui reports it."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.runs, self.cancelled, self.lose_next, self.gone = [], [], 0, set()

    def run(self, payload):
        from autopod.runpod.jobapi import SubmitLost

        job_id = f"job-{len(self.runs) + 1}"
        self.runs.append(payload)
        self.jobs[job_id] = {"id": job_id, "status": "IN_QUEUE", "steps": 0, "payload": payload}
        if self.lose_next:
            self.lose_next -= 1
            raise SubmitLost("the answer was lost")
        return {"id": job_id, "status": "IN_QUEUE"}

    def status(self, job_id):
        from autopod.runpod.jobapi import JobGone

        if job_id in self.gone:
            raise JobGone("gone")
        j = self.jobs[job_id]
        if j["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            j["steps"] += 1
            j["status"] = "IN_PROGRESS" if j["steps"] == 1 else "DONE"
        if j["status"] == "DONE":
            wf = j["payload"]["input"]["workflow"]
            if any(n["class_type"] == "AutopodFail" for n in wf.values()):
                j.update(status="FAILED", error="Job processing failed", output={"details": [
                    "Workflow execution error: Node Type: AutopodFail, Node ID: 2, Message: on purpose"]})
            else:
                prefix = next(n["inputs"]["filename_prefix"] for n in wf.values() if n["class_type"] == "SaveImage")
                j.update(status="COMPLETED", output={"images": [{"filename": f"{prefix}_00001_.png",
                                                                 "type": "base64", "data": PNG}]})
            j.update(delayTime=120, executionTime=2000, workerId="w1")
        return {k: v for k, v in j.items() if k not in ("steps", "payload")}

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        self.jobs[job_id]["status"] = "CANCELLED"
        return {"id": job_id, "status": "CANCELLED"}

    def purge_queue(self):
        return {"removed": 0, "status": "completed"}


@pytest.fixture
def fake(monkeypatch, tmp_path, object_info):
    jobs = FakeJobs()
    ep = sls.Endpoint(id="ep1", name="render", image="img:1", price_per_s=0.0005, gpu="ADA_24")
    monkeypatch.setattr(sls, "resolve", lambda name: ep)
    monkeypatch.setattr(sls, "job_client", lambda endpoint: jobs)
    monkeypatch.setattr(sls, "workers_summary", lambda endpoint: {"running": 1})
    monkeypatch.setattr(sls, "POLL_MIN_S", 0.001)
    monkeypatch.setattr(sls, "POLL_MAX_S", 0.002)
    from autopod.comfy.nodedefs import image_key, store

    store(image_key("img:1"), object_info, note=print)
    return jobs


def _opts(tmp_path, **kw):
    return RunOptions(workflows=[str(_wf(tmp_path))], output_dir=str(tmp_path / "out"), endpoint="render", **kw)


def test_a_sweep_runs_one_job_each_with_outputs_and_sidecars(fake, tmp_path):
    from autopod.comfy.ledger import Ledger

    report = sls.render(_opts(tmp_path, sweeps=["2.seconds=0.1,0.2,0.3"], timeout=120))
    assert report["exit_code"] == 0, report["msg"]
    assert len(fake.runs) == 3 and all(r["policy"] == {"executionTimeout": 120_000, "ttl": 120_000} for r in fake.runs)
    files = sorted(p.name for p in (tmp_path / "out" / "sleep").iterdir())
    assert [f for f in files if f.endswith(".png")] == ["3_sls_00001_ (1).png", "3_sls_00001_ (2).png",
                                                        "3_sls_00001_.png"]
    sidecars = [json.loads((tmp_path / "out" / "sleep" / f).read_text()) for f in files if f.endswith(".json")]
    assert len(sidecars) == 3
    s = sidecars[0]
    assert s["job_id"].startswith("job-") and s["endpoint"]["name"] == "render"
    assert s["timings"]["delay_ms"] == 120 and s["timings"]["execution_ms"] == 2000
    assert s["cost_usd"] == pytest.approx(0.001) and s["endpoint"]["worker_id"] == "w1"
    with Ledger.open() as led:
        rows = led.prompts(report["batch"])
        assert {r.status for r in rows} == {"success"} and all(r.fetched_at for r in rows)
        assert led.batch(report["batch"]).target_id == "endpoint:ep1"


def test_a_failing_node_is_exit_1_with_the_workers_error_as_lines(fake, tmp_path):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
          "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "on purpose"}}}
    opts = RunOptions(workflows=[str(_wf(tmp_path, wf, "fail.json"))], output_dir=str(tmp_path / "out"),
                      endpoint="render")
    report = sls.render(opts)
    assert report["exit_code"] == 1
    assert report["prompts"][0]["error"] == ("Job processing failed; node 2 (AutopodFail, 'Fail (autopod sim)'): on purpose")


def test_a_lost_submit_is_unknown_and_never_sent_again(fake, tmp_path):
    from autopod.comfy.ledger import Ledger

    fake.lose_next = 1
    report = sls.render(_opts(tmp_path, repeat=2, seed="increment"))
    assert report["exit_code"] == 1 and "status unknown" in report["msg"]
    assert [p["status"] for p in report["prompts"]] == ["unknown", "success"]
    again = sls.render(RunOptions(resume=report["batch"], endpoint=None))
    assert len(fake.runs) == 2 and again["prompts"][0]["status"] == "unknown"
    with Ledger.open() as led:
        assert led.batches()[0]["unknown"] == 1


def test_ctrl_c_cancels_this_runs_jobs_and_resume_finishes_the_batch(fake, tmp_path, monkeypatch):
    from autopod.core.errors import AutopodError

    real = fake.status
    calls = {"n": 0}

    def interrupted(job_id):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job_id)

    fake.status = interrupted
    with pytest.raises(AutopodError) as e:
        sls.render(_opts(tmp_path, repeat=4, seed="increment"))
    assert e.value.exit_code == 130 and "--resume" in str(e.value)
    assert fake.cancelled and len(fake.jobs) == 4
    assert all(v["status"] == "COMPLETED" or j in fake.cancelled for j, v in fake.jobs.items())
    batch = e.value.data["batch"]
    fake.status = real
    done = sls.render(RunOptions(resume=batch))
    assert done["exit_code"] == 0 and len(done["prompt_ids"]) == 4
    assert len(list((tmp_path / "out" / "sleep").glob("*.png"))) == 4


def test_an_expired_result_is_reported_and_run_again_on_resume(fake, tmp_path, monkeypatch):
    real_finish = sls.EndpointRunner.finish
    monkeypatch.setattr(sls.EndpointRunner, "finish", lambda self, row, job: None)  # never fetched in time
    first = sls.render(_opts(tmp_path, timeout=0.3))
    assert first["timed_out"] and first["exit_code"] == 1 and "comfy.watch" in first["msg"]
    monkeypatch.setattr(sls.EndpointRunner, "finish", real_finish)
    fake.gone = {"job-1"}  # past RunPod's retention
    fetched = sls.fetch(first["batch"], progress=sls.Progress(enabled=False))
    assert "1 result(s) RunPod no longer has" in fetched["msg"] and fetched["prompts"][0]["status"] == "error"
    done = sls.render(RunOptions(resume=first["batch"]))
    assert done["exit_code"] == 0 and len(fake.runs) == 2
    assert len(list((tmp_path / "out" / "sleep").glob("*.png"))) == 1


def test_watch_fetch_and_cancel_of_an_endpoint_batch_go_to_its_jobs(fake, tmp_path, monkeypatch):
    from autopod.comfy import jobs
    from autopod.runpod import jobapi

    monkeypatch.setattr(sls, "MAX_IN_FLIGHT", 2)
    real_status = fake.status
    monkeypatch.setattr(fake, "status", lambda job_id: (_ for _ in ()).throw(jobapi.JobAPIError("down")))
    with pytest.raises(jobapi.JobAPIError, match=r"the jobs sent go on: `autopod comfy.watch \d"):
        sls.render(_opts(tmp_path, repeat=3, seed="increment"))  # submitted 2, then RunPod stopped answering
    monkeypatch.setattr(fake, "status", real_status)
    cancelled = jobs.cancel(batch=None, ref="job-2")
    assert cancelled["removed"] == ["job-2"] and fake.cancelled == ["job-2"]
    watched = jobs.watch(None, progress=sls.Progress(enabled=False))
    assert [p["status"] for p in watched["prompts"]] == ["success", "cancelled", "planned"]
    assert len(list((tmp_path / "out" / "sleep").glob("*.png"))) == 1
    again = jobs.fetch(None, progress=sls.Progress(enabled=False))
    assert again["changed"] is False and again["fetched"] == 0
    done = sls.render(RunOptions(resume=watched["batch"]))
    assert done["exit_code"] == 0 and len(fake.runs) == 4  # the cancelled and the never-sent one


def test_queued_jobs_far_back_are_polled_less_often(fake, tmp_path):
    from autopod.comfy.ledger import Ledger

    with Ledger.open() as led:
        batch = led.new_batch("b", target_id="endpoint:ep1", target_name="render", output_dir=str(tmp_path),
                              template="{job}/{filename}", options={}, prompts=[
                                  {"workflow": "w", "workflow_hash": "h", "prompt": SLEEP, "prompt_hash": str(i)}
                                  for i in range(20)])
        runner = sls.EndpointRunner(led, batch, fake, sls.resolve("render"), progress=sls.Progress(enabled=False),
                                    payloads=sls.Payloads([], None))
        for r in led.prompts(batch.id):
            runner.submit(r)
        asked = []
        fake.status = lambda job_id: asked.append(job_id) or {"id": job_id, "status": "IN_QUEUE"}
        runner.poll()
        assert len(asked) == 20  # every job on the first round
        asked.clear()
        runner.poll()
        assert asked == [f"job-{i}" for i in range(1, sls.QUEUED_AHEAD + 1)]  # then the oldest queued ones
        runner._workers = {"running": 12}
        asked.clear()
        runner.poll()
        assert len(asked) == 12


@pytest.mark.parametrize("argv,says", [
    (["--endpoint", "render", "--then", "stop"], "--then with an endpoint must be purge"),
    (["--endpoint", "render", "--fleet", "f"], "no --pod, --fleet or --no-tunnel"),
    (["--object-info", "oi.json"], "--object-info gives the node definitions for an --endpoint run"),
    (["--endpoint", "render", "--detach"], "--detach is for pods"),
])
def test_bad_endpoint_flags_are_exit_2_with_one_line(cli, tmp_path, argv, says):
    r = cli("comfy.run", str(_wf(tmp_path)), *argv)
    assert r.code == 2 and r.err.startswith("error: ") and says in r.err and "Traceback" not in r.err


def test_the_workers_list_is_read_again_early_when_it_cannot_be_right(fake, tmp_path, monkeypatch):
    from autopod.comfy.ledger import Ledger

    clock = [100.0]
    monkeypatch.setattr(sls.time, "monotonic", lambda: clock[0])
    reads = []
    with Ledger.open() as led:
        batch = led.new_batch("b", target_id="endpoint:ep1", target_name="render", output_dir=str(tmp_path),
                              template="{job}/{filename}", options={}, prompts=[])
        runner = sls.EndpointRunner(led, batch, fake, sls.resolve("render"), progress=sls.Progress(enabled=False),
                                    payloads=sls.Payloads([], None),
                                    workers=lambda: reads.append(1) or {"running": 0, "initializing": 4})
        runner._workers_now(0)
        clock[0] += 0.6
        runner._workers_now(0)
        assert len(reads) == 1  # nothing says it is wrong: every WORKERS_EVERY_S
        runner._workers_now(3)
        assert len(reads) == 2  # 3 jobs running on 0 workers: a cold start ended, read again
        clock[0] += sls.WORKERS_EVERY_S
        runner._workers_now(0)
        assert len(reads) == 3


def test_s3_url_outputs_are_downloaded_and_a_bad_one_fails_the_prompt(fake, tmp_path):
    import http.server
    import threading

    body = b"\x89PNG\r\n\x1a\n" + b"s3" * 1000

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/bucket/ok.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(403)
                self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/bucket"
    real = fake.status

    def s3(job_id):
        doc = real(job_id)
        if doc["status"] == "COMPLETED":
            doc["output"] = {"images": [{"filename": "sls_00001_.png", "type": "s3_url", "data": f"{base}/ok.png"},
                                        {"filename": "sls_00002_.png", "type": "s3_url", "data": f"{base}/no.png"}]}
        return doc

    fake.status = s3
    try:
        report = sls.render(_opts(tmp_path))
    finally:
        server.shutdown()
    assert report["exit_code"] == 1
    saved = list((tmp_path / "out" / "sleep").glob("*.png"))
    assert [p.read_bytes() for p in saved] == [body]
    assert "sls_00002_.png: the s3_url answered HTTP 403" in report["prompts"][0]["error"]


def test_a_job_file_runs_on_an_endpoint_with_at_most_max_queued_jobs_out(fake, tmp_path):
    from autopod.comfy.spread import run_options

    _wf(tmp_path)
    job = tmp_path / "frames.yml"
    job.write_text("workflow: sleep.json\nsweep: ['2.steps=1..5']\noutput: '{index}_{filename}'\npod: somepod\n")
    real, most = fake.status, [0]

    def counting(job_id):
        most[0] = max(most[0], sum(j["status"] in ("IN_QUEUE", "IN_PROGRESS") for j in fake.jobs.values()))
        return real(job_id)

    fake.status = counting
    opts = run_options(job=str(job), endpoint="render", max_queued="2", output_dir=str(tmp_path / "out"))
    report = sls.render(opts)
    assert report["exit_code"] == 0 and len(fake.runs) == 5 and most[0] == 2
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "out").glob("*.png")) == ["0", "1", "2", "3", "4"]

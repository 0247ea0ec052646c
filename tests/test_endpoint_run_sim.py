"""``comfy.run --endpoint`` end to end: the ``autopod`` command (a real process, so Ctrl-C and kill -9 are real)
against the simulator's RunPod Serverless, whose job log (``/_sim/serverless/jobs``) says what ran."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sls_fixtures import KEY, sleep_save, sls, wait_for  # noqa: F401 (sls is a fixture)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "tests" / "data" / "workflows"


@pytest.fixture
def env(sls, tmp_path, autopod_home):
    """``autopod`` subprocesses on the stand-in, an endpoint ``render`` (workers.max 4) and its node definitions."""
    from autopod.sim.comfyui.nodes import SIM_NODES

    with gzip.open(next((ROOT / "autopod" / "sim" / "data").rglob("object_info_full.json.gz")), "rt") as f:
        info = json.load(f)
    info.update({name: n.info for name, n in SIM_NODES.items()})
    (tmp_path / "object_info.json").write_text(json.dumps(info))
    ep = sls.create(name="render", workers={"min": 0, "max": 4, "idleTimeout": 5})
    e = {**os.environ, "AUTOPOD_HOME": str(autopod_home), "RUNPOD_API_KEY": KEY, "RUNPOD_API_BASE_URL": sls.url,
         "AUTOPOD_INVENTORY": os.environ["AUTOPOD_INVENTORY"], "HOME": os.environ["HOME"]}
    e.pop("RUNPOD_ENDPOINT_BASE_URL", None)
    return {"env": e, "sls": sls, "id": ep["id"], "tmp": tmp_path, "oi": str(tmp_path / "object_info.json")}


def autopod(env, *argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "autopod", *argv], env=env["env"], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=env["tmp"])


def start(env, *argv):
    return subprocess.Popen([sys.executable, "-m", "autopod", *argv], env=env["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=env["tmp"])


def workflow(env, name="sleep.json", **kw):
    p = env["tmp"] / name
    p.write_text(json.dumps(sleep_save(**kw)))
    return str(p)


def run(env, *argv, timeout=120):
    return autopod(env, "comfy.run", "--endpoint", "render", "--object-info", env["oi"], *argv, "--json",
                   timeout=timeout)


def jobs_log(env):
    return env["sls"].jobs_log(env["id"])


def ledger_rows(env) -> list[dict]:
    """The prompts as the ledger has them (read-only: the run under test writes it)."""
    import sqlite3

    path = Path(env["env"]["AUTOPOD_HOME"]) / "ledger.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [dict(zip(("status", "prompt_id"), r)) for r in db.execute("SELECT status, prompt_id FROM prompts")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def pngs(folder: Path) -> list[Path]:
    """The batch's outputs: its contact sheet (the batch's own folder) left out."""
    return sorted(f for f in folder.rglob("*.png") if f.name != "contact.png")


def test_a_sweep_of_12_over_4_workers_every_output_once_on_disk(env):
    p = run(env, workflow(env, seconds=0.2), "--sweep", "2.steps=1..12", "--output", "{index:0>2}_{filename}",
            "--then", "purge")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["counts"] == {"success": 12} and report["endpoint"] == "render"
    assert "then purged endpoint render's queue" in report["msg"]
    files = pngs(env["tmp"] / "outputs")
    assert [f.name[:3] for f in files] == [f"{i:02d}_" for i in range(12)]  # one each, none twice
    # an endpoint batch ends with its contact sheet and page, as a pod's does
    assert Path(report["sheet"]["sheet"]).is_file() and Path(report["sheet"]["page"]).is_file()
    log = jobs_log(env)
    assert len(log) == 12 and len({j["input_sha256"] for j in log}) == 12
    assert {j["status"] for j in log} == {"COMPLETED"} and len({j["worker_id"] for j in log}) <= 4
    assert {p["prompt_id"] for p in report["prompts"]} == {j["id"] for j in log}
    sidecar = json.loads(next((env["tmp"] / "outputs").rglob("sleep-0003-*.json")).read_text())
    assert sidecar["job_id"] == report["prompts"][3]["prompt_id"]
    assert sidecar["endpoint"]["id"] == env["id"] and sidecar["endpoint"]["worker_id"]
    assert sidecar["timings"]["execution_ms"] >= 200 and sidecar["timings"]["delay_ms"] is not None
    assert sidecar["cost_usd"] == pytest.approx(sidecar["endpoint"]["price_per_s"]
                                                * sidecar["timings"]["execution_ms"] / 1000, abs=1e-6)
    assert "workers:" in p.stderr and "running" in p.stderr


def test_an_editor_file_runs_as_the_editor_would_queue_it(env):
    p = run(env, str(WORKFLOWS / "image_pipeline.json"))
    assert p.returncode == 0, p.stderr
    # Node 11 (SaveImage) is muted and 3 bypassed, as the editor queues it; PreviewImage's temp file never comes back.
    assert [f.name for f in pngs(env["tmp"] / "outputs")] == ["8_pipeline_00001_.png"]
    sidecar = json.loads(next((env["tmp"] / "outputs").rglob("*.json")).read_text())
    assert "11" not in sidecar["prompt"] and sidecar["prompt"]["4"]["inputs"]["image"] == ["1", 0]
    assert sidecar["prompt"]["4"]["inputs"]["width"] == 640  # from the primitive node
    assert len(jobs_log(env)) == 1


def test_an_input_file_travels_inside_the_job(env):
    src = env["tmp"] / "in"
    first = run(env, workflow(env, color=255, size=24), "--output-dir", str(src))
    assert first.returncode == 0, first.stderr
    image = pngs(src)[0]
    blur = env["tmp"] / "blur.json"
    blur.write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "blurred"}}}))
    p = run(env, str(blur), "--input", f"LoadImage={image}")
    assert p.returncode == 0, p.stderr
    out = pngs(env["tmp"] / "outputs")
    assert [f.name for f in out] == ["3_blurred_00001_.png"]
    from PIL import Image

    assert Image.open(out[0]).width == 24  # the uploaded 24x24 image, blurred
    sent = jobs_log(env)[-1]
    assert sent["status"] == "COMPLETED"


def test_a_failing_node_is_exit_1_with_the_workers_error_as_one_line(env):
    fail = env["tmp"] / "fail.json"
    fail.write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "out of luck"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}}}))
    p = run(env, str(fail))
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert report["prompts"][0]["status"] == "error"
    assert "node 2 (AutopodFail" in report["prompts"][0]["error"] and "out of luck" in report["prompts"][0]["error"]
    missing = env["tmp"] / "missing.json"
    missing.write_text(json.dumps({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}))
    oi = json.loads(Path(env["oi"]).read_text())  # a copy of the definitions that lists the model: the worker has not
    oi["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["nope.safetensors"]
    Path(env["oi"]).write_text(json.dumps(oi))
    p = run(env, str(missing))
    assert p.returncode == 1, p.stderr
    got = json.loads(p.stdout)["prompts"][0]
    assert got["status"] == "rejected", got
    assert got["error"].startswith("node 1 (CheckpointLoaderSimple") and "nope.safetensors" in got["error"], got
    assert "rejected: node 1 (CheckpointLoaderSimple" in p.stderr
    assert "model(s) this run names were not checked: endpoint render has no network volume" in p.stderr


def test_ctrl_c_cancels_every_job_of_the_run(env):
    proc = start(env, "comfy.run", "--endpoint", "render", "--object-info", env["oi"],
                 workflow(env, seconds=1.0), "--sweep", "2.steps=1..8")
    wait_for(lambda: sum(r["prompt_id"] is not None for r in ledger_rows(env)) == 8
             and any(r["status"] == "running" for r in ledger_rows(env)),
             timeout=30, what="the batch submitted and seen running")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "--resume" in err
    # RunPod answers CANCELLED at once, but worker-comfyui's running prompt goes on: its worker stays busy.
    assert "may stay busy" in err
    busy = env["sls"].workers(env["id"])["summary"]
    assert busy["running"] >= 1, busy
    log = jobs_log(env)
    assert {j["status"] for j in log} <= {"CANCELLED", "COMPLETED"} and any(j["status"] == "CANCELLED" for j in log)
    assert all(j["status"] == "CANCELLED" or j["ended_at"] for j in log)
    p = autopod(env, "comfy.jobs", "--json")
    assert json.loads(p.stdout)[0]["active"] in (0, None)


def test_kill_9_then_resume_runs_nothing_twice(env):
    proc = start(env, "comfy.run", "--endpoint", "render", "--object-info", env["oi"],
                 workflow(env, seconds=0.4), "--sweep", "2.steps=1..10")
    wait_for(lambda: len(pngs(env["tmp"] / "outputs")) >= 2, timeout=30, what="the first outputs on disk")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    batch = json.loads(autopod(env, "comfy.jobs", "--json").stdout)[0]["id"]
    p = autopod(env, "comfy.run", "--resume", batch, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"] == {"success": 10}
    log = jobs_log(env)
    assert len(log) == 10 and len({j["input_sha256"] for j in log}) == 10  # each prompt ran once
    assert len(pngs(env["tmp"] / "outputs")) == 10
    again = autopod(env, "comfy.run", "--resume", batch, "--json")
    assert again.returncode == 0 and "nothing left to do" in json.loads(again.stdout)["msg"]
    assert len(jobs_log(env)) == 10


def test_an_expired_result_is_reported_then_run_again_by_resume(env):
    env["sls"].control(settings={"sls_retention_s": 0.3})
    proc = start(env, "comfy.run", "--endpoint", "render", "--object-info", env["oi"],
                 workflow(env, seconds=0.3), "--repeat", "2")
    wait_for(lambda: sum(r["prompt_id"] is not None for r in ledger_rows(env)) == 2, timeout=30,
             what="both job ids recorded")
    os.kill(proc.pid, signal.SIGKILL)  # nobody fetches the results
    proc.communicate(timeout=10)
    wait_for(lambda: all(j["ended_at"] for j in jobs_log(env)), timeout=30, what="both jobs to end")
    sls = env["sls"]
    wait_for(lambda: all(sls.call("GET", f"/v2/{env['id']}/status/{j['id']}").status_code == 404
                         for j in jobs_log(env)), timeout=30, what="RunPod to drop the results")
    fetched = autopod(env, "comfy.fetch", "--json")
    assert fetched.returncode == 1 and "RunPod no longer has" in json.loads(fetched.stdout)["msg"]
    p = autopod(env, "comfy.run", "--resume", json.loads(fetched.stdout)["batch"], "--json")
    assert p.returncode == 0, p.stderr
    assert len(pngs(env["tmp"] / "outputs")) == 2 and len(jobs_log(env)) == 4


def test_a_lost_submit_answer_is_unknown_and_not_sent_again(env):
    env["sls"].control(faults={"lost_answer": {"times": 1}})
    p = run(env, workflow(env), "--repeat", "3")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert sorted(x["status"] for x in report["prompts"]) == ["success", "success", "unknown"]
    assert "status unknown" in report["msg"] and len(jobs_log(env)) == 3
    again = autopod(env, "comfy.run", "--resume", report["batch"], "--json")
    assert len(jobs_log(env)) == 3 and json.loads(again.stdout)["counts"]["unknown"] == 1
    listed = autopod(env, "comfy.jobs", report["batch"], "--json")
    assert [x["status"] for x in json.loads(listed.stdout)["prompts"]].count("unknown") == 1
    table = autopod(env, "comfy.jobs").stdout.splitlines()
    assert table[0].split()[-1] == "UNKNOWN" and table[2].split()[-1] == "1"
    # Once the user has checked RunPod, they may send it again: one more job, and the batch is whole.
    p = autopod(env, "comfy.run", "--resubmit-unknown", "--json")
    assert p.returncode == 2 and "--resubmit-unknown goes with --resume BATCH" in p.stderr
    again = autopod(env, "comfy.run", "--resume", report["batch"], "--resubmit-unknown", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"success": 3} and len(jobs_log(env)) == 4
    # the lost job did exist on RunPod: its prompt has now run twice, as the user chose
    assert [j["status"] for j in jobs_log(env)].count("COMPLETED") == 4


def test_no_definitions_or_no_such_endpoint_is_exit_2_before_anything_is_sent(env):
    p = autopod(env, "comfy.run", "--endpoint", "render", workflow(env))
    assert p.returncode == 2 and "--object-info FILE" in p.stderr
    p = autopod(env, "comfy.run", "--endpoint", "nope", "--object-info", env["oi"], workflow(env))
    assert p.returncode == 2 and "no endpoint 'nope'" in p.stderr
    assert jobs_log(env) == []


def test_timeout_bounds_each_job_and_a_completed_job_without_output_runs_again(env):
    env["sls"].control(settings={"sls_time_scale": 0.02})  # RunPod's 5 s minimum executionTimeout is 0.1 s here
    p = run(env, workflow(env, seconds=1.0), "--timeout", "5")
    assert p.returncode == 1
    got = json.loads(p.stdout)["prompts"][0]
    assert got["status"] == "error" and "timed out on RunPod" in got["error"]
    assert jobs_log(env)[0]["status"] == "TIMED_OUT"
    env["sls"].control(settings={"sls_time_scale": 1.0}, faults={"no_output": {"times": 1}})
    p = run(env, workflow(env, name="quick.json"))
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert "returned no output" in report["prompts"][0]["error"]
    again = autopod(env, "comfy.run", "--resume", report["batch"], "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"success": 1} and len(pngs(env["tmp"] / "outputs")) == 1


def test_watch_and_fetch_reattach_to_an_endpoint_batch(env):
    proc = start(env, "comfy.run", "--endpoint", "render", "--object-info", env["oi"],
                 workflow(env, seconds=1.0), "--sweep", "2.steps=1..6")  # 4 workers: a second wave follows
    wait_for(lambda: len(pngs(env["tmp"] / "outputs")) >= 1, timeout=30, what="the first output on disk")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    watched = autopod(env, "comfy.watch", "--json")
    assert watched.returncode == 0, watched.stderr
    report = json.loads(watched.stdout)
    assert report["counts"] == {"success": 6} and "on endpoint render" in watched.stderr
    assert len(pngs(env["tmp"] / "outputs")) == 6 and len(jobs_log(env)) == 6
    fetched = autopod(env, "comfy.fetch", "--json")
    assert fetched.returncode == 0 and json.loads(fetched.stdout)["fetched"] == 0


def test_unreturned_outputs_are_named_first_and_a_job_over_the_limit_is_exit_2(env):
    wf = sleep_save()
    wf["4"] = {"class_type": "AutopodSaveGIF", "inputs": {"images": ["2", 0], "filename_prefix": "anim",
                                                          "frame_rate": 8.0}}
    gif = env["tmp"] / "gif.json"
    gif.write_text(json.dumps(wf))
    p = run(env, str(gif))
    assert p.returncode == 0, p.stderr
    warning = next(line for line in p.stderr.splitlines() if line.startswith("warning: "))
    assert "node 4 (AutopodSaveGIF)" in warning and "'gifs'" in warning
    assert p.stderr.index("warning: ") < p.stderr.index("batch ")  # before anything was sent
    assert [f.suffix for f in (env["tmp"] / "outputs").rglob("*") if f.is_file() and f.suffix != ".json"
            and f.name not in ("contact.png", "index.html")] == [".png"]

    big = env["tmp"] / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(8 * 1024 * 1024))  # 10.7 MB as base64
    blur = env["tmp"] / "blur.json"
    blur.write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}}}))
    before = len(jobs_log(env))
    p = run(env, str(blur), "--input", f"LoadImage={big}")
    assert p.returncode == 2 and "over RunPod's limit of 10 MB" in p.stderr and "MB" in p.stderr
    assert len(jobs_log(env)) == before

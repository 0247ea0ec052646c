"""comfy.run end to end: the executing ComfyUI stand-in behind a real sshd, reached through an autopod tunnel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autopod.sim.comfyui import images as im
from comfy_fixtures import refused_url  # noqa: F401
from sshd_server import kill_tunnel_daemons
from test_comfyui_exec_clients import tunneled  # noqa: F401  (fixture: stand-in + tunnel to inventory host "gpu")

pytestmark = pytest.mark.sshd

IMAGE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFF0000},
               "_meta": {"title": "Canvas"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "red"}}}


def sleepy(seconds: float, steps: int = 4, prefix: str = "slow") -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def posts(standin) -> int:
    return sum(1 for m, path in standin.requests if m == "POST" and path in ("/prompt", "/api/prompt"))


def run(cli, tmp_path, *argv):
    return cli("comfy.run", *argv, "--pod", "gpu", "--output-dir", str(tmp_path / "out"))


def test_a_workflow_renders_to_disk_with_a_sidecar(tunneled, cli, tmp_path, autopod_home):
    standin, _ = tunneled
    wf = write(tmp_path, "red.json", IMAGE)
    r = run(cli, tmp_path, str(wf), "--set", "Canvas.width=32", "--json")
    assert r.code == 0, r.err
    doc = r.json
    (p,) = doc["prompts"]
    assert p["status"] == "success" and doc["counts"] == {"success": 1}
    (path,) = p["outputs"]
    assert path.startswith(str(tmp_path / "out" / "red")) and Path(path).name == "2_red_00001_.png"
    png = im.decode(Path(path).read_bytes())
    assert (png.width, png.height) == (32, 8)
    (side,) = (tmp_path / "out" / "red").glob("red-0000-*.json")
    meta = json.loads(side.read_text())
    assert meta["prompt"]["1"]["inputs"]["width"] == 32 and meta["overrides"] == {"1.width": 32}
    assert meta["outputs"][0]["sha256"] and meta["status"] == "success" and meta["pod"]["name"] == "gpu"
    assert meta["timings"]["run_s"] is not None
    jobs = cli("comfy.jobs", "--json").json
    assert jobs[0]["id"] == doc["batch"] and jobs[0]["done"] == 1


def test_bad_input_exits_2_before_anything_is_sent(tunneled, cli, tmp_path):
    standin, _ = tunneled
    wf = write(tmp_path, "red.json", IMAGE)
    for argv, words in ((["--set", "Canvas.width=0"], ["width", "Canvas", "minimum 1"]),
                        (["--set", "Nope.width=3"], ["Nope"]),
                        (["--set", "1.colour=3"], ["colour"]),
                        (["--input", "1=./missing.png"], ["missing.png"]),
                        (["--output", "{nope}/{filename}"], ["nope"]),
                        (["--seed", "sometimes"], ["--seed"])):
        r = run(cli, tmp_path, str(wf), *argv, "--json")
        assert r.code == 2, (argv, r.err)
        assert all(w in r.json["msg"] for w in words), (argv, r.json["msg"])
    assert posts(standin) == 0


def test_servers_validation_errors_exit_1_one_line_each(tunneled, cli, tmp_path):
    bad = {**IMAGE, "1": {**IMAGE["1"], "inputs": {**IMAGE["1"]["inputs"], "width": 0}}}
    r = run(cli, tmp_path, str(write(tmp_path, "bad.json", bad)))
    assert r.code == 1 and "node 1 (EmptyImage, 'Canvas') input width: Value 0 smaller than min of 1" in r.err
    # One valid output, one invalid: ComfyUI answers 200 and runs the valid one; that is still a failure.
    partial = {**IMAGE, "3": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1,
                                                                     "color": 0}},
               "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}}}
    r = run(cli, tmp_path, str(write(tmp_path, "partial.json", partial)), "--json")
    assert r.code == 1 and r.json["failed"] is True
    (p,) = r.json["prompts"]
    assert p["status"] == "success" and len(p["outputs"]) == 1 and "smaller than min" in r.err


def test_a_runtime_error_exits_1_naming_the_node(tunneled, cli, tmp_path):
    failing = {**sleepy(0.01), "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "boom"}}}
    r = run(cli, tmp_path, str(write(tmp_path, "fail.json", failing)), "--json")
    assert r.code == 1
    (p,) = r.json["prompts"]
    assert p["status"] == "error" and "node 2 (AutopodFail)" in p["error"] and "boom" in p["error"]
    assert "traceback" not in r.err
    r = cli("--debug", "comfy.run", str(tmp_path / "fail.json"), "--pod", "gpu", "--output-dir", str(tmp_path / "o"))
    assert r.code == 1 and "ComfyUI's traceback:" in r.err and "File " in r.err


def test_an_interruption_on_the_server_exits_1(tunneled, cli, tmp_path, autopod_home):
    """Someone interrupts the prompt in ComfyUI (the editor's cancel button, another autopod): exit 1."""
    import requests

    standin, port = tunneled
    p = _spawn_run(tmp_path, autopod_home, str(write(tmp_path, "slow.json", sleepy(30.0, steps=300))))
    _wait_running(standin)
    requests.post(f"http://127.0.0.1:{port}/interrupt", json={}, timeout=5)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    (q,) = json.loads(out)["prompts"]
    assert q["status"] == "interrupted" and "interrupted at node" in q["error"]


def test_a_job_file_names_its_pod_and_overrides(tunneled, cli, tmp_path):
    wf = write(tmp_path, "red.json", IMAGE)
    job = tmp_path / "job.yml"
    job.write_text(f"workflow: {wf.name}\npod: gpu\nset: ['Canvas.width=24']\nsweep: ['2.filename_prefix=j1,j2']\n"
                   "output: '{job}/{index}-{filename}'\n")
    r = cli("comfy.run", "--job", str(job), "--output-dir", str(tmp_path / "out"), "--json")
    assert r.code == 0, r.err
    outs = sorted(Path(o).name for q in r.json["prompts"] for o in q["outputs"])
    assert outs == ["0-j1_00001_.png", "1-j2_00001_.png"]
    assert all(Path(o).parent.name == "job" for q in r.json["prompts"] for o in q["outputs"])


def test_a_cached_run_and_several_kinds_of_output(tunneled, cli, tmp_path):
    kinds = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 255}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "img"}},
             "3": {"class_type": "AutopodSaveGIF", "inputs": {"images": ["1", 0], "filename_prefix": "anim",
                                                              "frame_rate": 4.0}},
             "4": {"class_type": "AutopodSaveAudio", "inputs": {"filename_prefix": "snd", "seconds": 0.05,
                                                                "frequency": 440.0, "sample_rate": 8000}},
             "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    wf = write(tmp_path, "kinds.json", kinds)
    r = run(cli, tmp_path, str(wf), "--previews", "--json")
    assert r.code == 0, r.err
    names = [Path(o).name for o in r.json["prompts"][0]["outputs"]]
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["gif", "png", "png", "png", "png", "wav"]
    again = run(cli, tmp_path, str(wf), "--json")  # fully cached: no executing events, old filenames
    assert again.code == 0, again.err
    outs = again.json["prompts"][0]["outputs"]
    assert len(outs) == 4 and all(Path(o).exists() for o in outs)  # the previews are skipped without --previews
    assert any(" (1)" in Path(o).name for o in outs)  # same names as the first run: never overwritten


def test_inputs_are_uploaded_once(tunneled, cli, tmp_path):
    standin, _ = tunneled
    import io

    cat = tmp_path / "cat.png"
    buf = io.BytesIO()
    im.save_png(buf, im.solid(4, 4, 0x00FF00))
    cat.write_bytes(buf.getvalue())
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
          "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cat"}}}
    path = write(tmp_path, "load.json", wf)
    for _ in range(2):
        r = run(cli, tmp_path, str(path), "--input", f"LoadImage={cat}", "--json")
        assert r.code == 0, r.err
    assert sum(1 for m, p in standin.requests if p.endswith("/upload/image")) == 1
    assert "unchanged, already on the pod" in r.err


def test_an_editor_workflow_is_converted_and_run(tunneled, cli, tmp_path):
    data = Path(__file__).parent / "data" / "workflows"
    ui = next(p for p in sorted(data.glob("*.json")) if not p.name.endswith(".api.json") and
              "image_pipeline" in p.name)
    r = run(cli, tmp_path, str(ui), "--json")
    assert r.code == 0, r.err
    assert r.json["prompts"][0]["outputs"]


def test_sweeps_and_repeats_make_a_batch(tunneled, cli, tmp_path):
    wf = write(tmp_path, "red.json", IMAGE)
    r = run(cli, tmp_path, str(wf), "--sweep", "1.width=8,16,24", "--sweep", "1.height=4..5", "--repeat", "2",
            "--max-queued", "2", "--json")
    assert r.code == 0, r.err
    widths = sorted((p["overrides"]["1.width"], p["overrides"]["1.height"]) for p in r.json["prompts"])
    assert len(widths) == 12 and widths[0] == (8, 4) and widths[-1] == (24, 5)
    assert all(p["status"] == "success" and p["outputs"] for p in r.json["prompts"])


def test_dry_run_prints_the_prompt_and_sends_nothing(tunneled, cli, tmp_path):
    standin, _ = tunneled
    r = run(cli, tmp_path, str(write(tmp_path, "red.json", IMAGE)), "--set", "1.width=64", "--dry-run")
    assert r.code == 0 and json.loads(r.out)["1"]["inputs"]["width"] == 64
    assert posts(standin) == 0


def test_a_dropped_websocket_loses_no_result(tunneled, cli, tmp_path):
    import requests

    standin, port = tunneled
    requests.post(f"http://127.0.0.1:{port}/_sim/faults", json={"ws_drop_after": 3}, timeout=5)
    r = run(cli, tmp_path, str(write(tmp_path, "slow.json", sleepy(0.6, steps=6))), "--json")
    assert r.code == 0, r.err
    assert r.json["prompts"][0]["outputs"] and "WebSocket dropped" in r.err


def test_a_tunnel_killed_mid_run_is_recovered(tunneled, cli, tmp_path, autopod_home):
    import threading

    wf = write(tmp_path, "slow.json", sleepy(2.0, steps=10))
    killer = threading.Timer(0.8, lambda: kill_tunnel_daemons(autopod_home.resolve()))
    killer.start()
    try:
        r = run(cli, tmp_path, str(wf), "--json")
    finally:
        killer.cancel()
    assert r.code == 0, r.err
    assert r.json["prompts"][0]["outputs"]


def _spawn_run(tmp_path, autopod_home, *argv):
    env = {**os.environ, "AUTOPOD_HOME": str(autopod_home)}
    return subprocess.Popen([sys.executable, "-m", "autopod", "comfy.run", *argv, "--pod", "gpu",
                             "--output-dir", str(tmp_path / "out"), "--json"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(standin, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if standin.running:
            return
        time.sleep(0.05)
    raise AssertionError("nothing started running")


def test_ctrl_c_interrupts_this_runs_prompt_and_clears_its_queue(tunneled, tmp_path, autopod_home):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(30.0, steps=300))
    p = _spawn_run(tmp_path, autopod_home, str(wf), "--repeat", "3", "--sweep", "3.filename_prefix=a,b")
    _wait_running(standin)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    doc = json.loads(out)
    assert doc["failed"] is True and "--resume" in doc["msg"]
    assert not standin.running and not standin.pending  # interrupted, and the rest left the queue


def test_resume_after_ctrl_c_runs_the_interrupted_prompt_again(tunneled, cli, tmp_path, autopod_home):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(1.5, steps=10))
    p = _spawn_run(tmp_path, autopod_home, str(wf), "--sweep", "3.filename_prefix=r0,r1")
    _wait_running(standin)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted 1 running prompt(s)" in json.loads(out)["msg"]
    batch = cli("comfy.jobs", "--json").json[0]["id"]
    r = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert r.code == 0, r.err
    assert [q["status"] for q in r.json["prompts"]] == ["success", "success"]
    assert all(len(q["outputs"]) == 1 for q in r.json["prompts"])
    # The interrupted prompt ran again; the one Ctrl-C took off the queue ran for the first time.
    runs = sorted((e["prompt"][2]["3"]["inputs"]["filename_prefix"], e["status"]["status_str"])
                  for e in standin.history.values())
    assert [s for _, s in runs].count("error") == 1
    assert [x for x in runs if x[1] == "success"] == [("r0", "success"), ("r1", "success")]


def test_resume_after_sigkill_runs_every_prompt_exactly_once(tunneled, cli, tmp_path, autopod_home):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(0.4, steps=2))
    p = _spawn_run(tmp_path, autopod_home, str(wf), "--sweep", "3.filename_prefix=p0,p1,p2,p3,p4",
                   "--max-queued", "2")
    end = time.monotonic() + 60
    while time.monotonic() < end and len(standin.history) < 1:
        time.sleep(0.02)
    p.kill()  # SIGKILL: no cleanup, the ledger is all that is left
    p.wait(30)
    batch = cli("comfy.jobs", "--json").json[0]["id"]
    r = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert r.code == 0, r.err
    assert [q["status"] for q in r.json["prompts"]] == ["success"] * 5
    assert all(len(q["outputs"]) == 1 for q in r.json["prompts"])
    # Each prompt ran once to completion on the server: one history entry per prefix.
    prefixes = sorted(e["prompt"][2]["3"]["inputs"]["filename_prefix"] for e in standin.history.values())
    assert prefixes == ["p0", "p1", "p2", "p3", "p4"]
    again = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert again.code == 0 and len(standin.history) == 5


def test_detach_then_watch_and_fetch(tunneled, cli, tmp_path):
    wf = write(tmp_path, "slow.json", sleepy(0.3, steps=2))
    r = run(cli, tmp_path, str(wf), "--sweep", "3.filename_prefix=d0,d1", "--detach")
    assert r.code == 0, r.err
    ids = r.out.split()
    assert len(ids) == 2
    w = cli("comfy.watch", "--json")
    assert w.code == 0, w.err
    assert [p["status"] for p in w.json["prompts"]] == ["success", "success"]
    f = cli("comfy.fetch", ids[0], "--json")
    assert f.code == 0 and f.json["fetched"] == 0, (w.json, f.json)  # watch already fetched everything


def test_queue_history_and_cancel(tunneled, cli, tmp_path):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(30.0, steps=300))
    r = run(cli, tmp_path, str(wf), "--sweep", "3.filename_prefix=q0,q1", "--detach")
    assert r.code == 0, r.err
    _wait_running(standin)
    q = cli("comfy.queue", "gpu", "--json").json
    assert [x["state"] for x in q] == ["running", "pending"] and all(x.get("batch") for x in q)
    c = cli("comfy.cancel", "--batch", q[0]["batch"], "--json")
    assert c.code == 0 and len(c.json["interrupted"]) == 1 and len(c.json["removed"]) == 1
    end = time.monotonic() + 20
    while time.monotonic() < end and standin.running:
        time.sleep(0.05)
    assert not standin.running and not standin.pending  # the batch's second prompt never started
    h = cli("comfy.history", "gpu", "--json").json
    assert h and h[0]["status"] == "interrupted"
    assert cli("comfy.cancel", "--json").code == 2  # one of: a prompt, --batch, --all

"""comfy.run keeps each pod's node definitions and checks the classes a plan uses against the server,
so a kept copy never lets a bad value through nor refuses a good one (``autopod.comfy.nodedefs``).

The runs go to a ComfyUI stand-in with ``--no-tunnel`` (the kept copy is keyed by the URL then; a
pod's by its id and ComfyUI's address, covered by the tunnel test at the end)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from comfy_fixtures import empty_save, sleep_save
from test_comfyui_exec_clients import tunneled  # noqa: F401  (fixture: stand-in behind inventory host "gpu")

from autopod.comfy.nodedefs import Consulted
from autopod.sim.comfyui_standin import ComfyUIStandin

CKPT = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


@pytest.fixture
def comfy(tmp_path, autopod_home):
    """A stand-in (no nodes of its own) with model files a.safetensors and b.safetensors, as comfy_url."""
    ckpts = tmp_path / "comfyui" / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        (ckpts / name).write_bytes(b"weights")
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "config.yaml").write_text("comfy_url: URL\n")
    box = {"standin": None}

    def start(**kw):
        if box["standin"] is not None:
            box["standin"].stop()
        port = box["standin"].port if box["standin"] is not None else 0
        box["standin"] = ComfyUIStandin(port=port, root=tmp_path / "comfyui", **kw).start()
        (autopod_home / "config.yaml").write_text(f"comfy_url: {box['standin'].url}\n")
        return box["standin"]

    start()
    yield start, ckpts, lambda: box["standin"]
    box["standin"].stop()


def write(tmp_path: Path, name: str, doc: dict) -> str:
    (tmp_path / name).write_text(json.dumps(doc))
    return str(tmp_path / name)


def gets(standin, path: str) -> int:
    return sum(1 for m, p in standin.requests if m == "GET" and p == path)


def posts(standin) -> int:
    return sum(1 for m, p in standin.requests if m == "POST" and p == "/prompt")


def kept_files(autopod_home: Path) -> list[Path]:
    return sorted((autopod_home / "cache" / "object_info").glob("*.json"))


def run(cli, tmp_path, *argv):
    return cli("comfy.run", *argv, "--no-tunnel", "--output-dir", str(tmp_path / "out"))


def test_a_second_run_plans_on_the_kept_definitions_and_checks_only_its_classes(comfy, cli, tmp_path,
                                                                                 autopod_home):
    _, _, current = comfy
    standin = current()
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf).code == 0
    assert gets(standin, "/object_info") == 1
    [kept] = kept_files(autopod_home)
    assert kept.stat().st_mode & 0o777 == 0o600
    doc = json.loads(kept.read_text())
    assert doc["target"] == "url" and doc["address"] == standin.url and len(doc["object_info"]) == 477
    standin.requests.clear()
    second = run(cli, tmp_path, wf, "--set", "1.width=32", "--json")
    assert second.code == 0, second.err
    assert gets(standin, "/object_info") == 0  # not fetched again: only the two classes the plan used
    assert {p for m, p in standin.requests if p.startswith("/object_info/")} == \
        {"/object_info/EmptyImage", "/object_info/SaveImage"}


def test_a_run_reads_the_kept_file_once_and_checks_few_classes_without_threads(comfy, cli, tmp_path, monkeypatch):
    import threading

    from autopod.comfy import nodedefs

    _, _, current = comfy
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf).code == 0  # keeps the definitions
    loads, threads = [], []
    real_load, real_start = nodedefs.load, threading.Thread.start
    monkeypatch.setattr(nodedefs, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(threading.Thread, "start", lambda self: threads.append(self.name) or real_start(self))
    current().requests.clear()
    assert run(cli, tmp_path, wf).code == 0
    assert len(loads) == 1  # the model check and the plan share one read of the 0.5 MB file
    assert gets(current(), "/object_info") == 0
    assert gets(current(), "/object_info/EmptyImage") == gets(current(), "/object_info/SaveImage") == 1
    assert not [t for t in threads if "ThreadPoolExecutor" in t]  # two classes: checked one after the other


def test_a_model_added_on_the_pod_is_taken_without_clearing_anything(comfy, cli, tmp_path):
    _, ckpts, current = comfy
    wf = write(tmp_path, "ckpt.json", CKPT)
    assert run(cli, tmp_path, wf, "--dry-run").code == 0  # the definitions are kept: a and b
    (ckpts / "c.safetensors").write_bytes(b"new weights")  # a model pull
    r = run(cli, tmp_path, wf, "--set", "1.ckpt_name=c.safetensors", "--dry-run")
    assert r.code == 0, r.err
    assert json.loads(r.out)["1"]["inputs"]["ckpt_name"] == "c.safetensors"
    assert gets(current(), "/object_info") == 2  # the kept list lacked it: checked, and fetched again


def test_a_model_removed_on_the_pod_is_refused_before_anything_is_sent(comfy, cli, tmp_path):
    _, ckpts, current = comfy
    wf = write(tmp_path, "ckpt.json", CKPT)
    assert run(cli, tmp_path, wf, "--set", "1.ckpt_name=b.safetensors", "--dry-run").code == 0
    (ckpts / "b.safetensors").unlink()
    r = run(cli, tmp_path, wf, "--set", "1.ckpt_name=b.safetensors", "--json")
    assert r.code == 2, r.err
    assert "b.safetensors" in r.json["msg"] and "a.safetensors" in r.json["msg"]  # the value and what is there
    assert posts(current()) == 0


def test_a_kept_definition_the_server_no_longer_has_is_never_used(comfy, cli, tmp_path, autopod_home):
    """Whatever the kept copy says (a pack updated on a restart, a damaged edit), a plan stands only on
    the server's answer: here the copy allows a width the server refuses, and one the server takes not."""
    _, _, current = comfy
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    [kept] = kept_files(autopod_home)
    doc = json.loads(kept.read_text())
    width = doc["object_info"]["EmptyImage"]["input"]["required"]["width"][1]
    assert width["max"] == 16384
    width["max"] = 100_000
    kept.write_text(json.dumps(doc))
    r = run(cli, tmp_path, wf, "--set", "1.width=20000", "--json")
    assert r.code == 2 and "16384" in r.json["msg"], r.out
    width["max"] = 8
    kept.write_text(json.dumps(doc))
    assert run(cli, tmp_path, wf, "--set", "1.width=32", "--dry-run").code == 0
    assert posts(current()) == 0


def test_a_refusal_the_server_agrees_with_needs_no_full_fetch(comfy, cli, tmp_path):
    _, _, current = comfy
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    r = run(cli, tmp_path, wf, "--set", "1.width=0", "--json")
    assert r.code == 2 and "minimum 1" in r.json["msg"]
    assert gets(current(), "/object_info") == 1 and gets(current(), "/object_info/EmptyImage") == 1


def test_a_restarted_comfyui_with_new_custom_nodes_is_seen(comfy, cli, tmp_path):
    start, _, current = comfy
    assert run(cli, tmp_path, write(tmp_path, "tiny.json", empty_save("tiny")), "--dry-run").code == 0
    start(sim_nodes=True)  # restarted on the same address, with a node pack installed
    r = run(cli, tmp_path, write(tmp_path, "sleep.json", sleep_save(0.05, prefix="after")), "--json")
    assert r.code == 0, r.err
    assert r.json["counts"] == {"success": 1}
    start()  # and without it again: the class is gone, refused before anything is sent
    r = run(cli, tmp_path, str(tmp_path / "sleep.json"), "--json")
    assert r.code == 2 and "AutopodSleep" in r.json["msg"]
    assert posts(current()) == 0


def test_an_input_file_gone_from_the_pod_is_uploaded_again(comfy, cli, tmp_path):
    from autopod.sim.comfyui import images as im

    _, _, current = comfy
    cat = tmp_path / "cat.png"
    with cat.open("wb") as f:
        im.save_png(f, im.solid(4, 4, 0x336699))
    wf = write(tmp_path, "load.json", {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cat"}}})
    first = run(cli, tmp_path, wf, "--input", "LoadImage=" + str(cat))
    assert first.code == 0 and "uploading" in first.err, first.err
    again = run(cli, tmp_path, wf, "--input", "LoadImage=" + str(cat))
    assert again.code == 0 and "unchanged, already on the pod" in again.err, again.err
    (current().root / "input" / "cat.png").unlink()  # the pod lost it (a new volume, a clean-up)
    third = run(cli, tmp_path, wf, "--input", "LoadImage=" + str(cat), "--json")
    assert third.code == 0 and "uploading" in third.err, third.err


def test_a_damaged_kept_file_is_said_set_aside_and_fetched_again(comfy, cli, tmp_path, autopod_home):
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    [kept] = kept_files(autopod_home)
    kept.write_text('{"version": 1, "object_info": {"Empty')
    r = run(cli, tmp_path, wf, "--json")
    assert r.code == 0, r.err
    [line] = [x for x in r.err.splitlines() if "damaged" in x]
    [copy] = kept.parent.glob(kept.name + ".corrupt-*")
    assert str(kept) in line and str(copy) in line and "fetching them from ComfyUI" in line
    assert copy.read_text() == '{"version": 1, "object_info": {"Empty'  # kept as it was, never overwritten
    assert len(json.loads(kept.read_text())["object_info"]) == 477  # and a whole copy kept again


def test_a_kept_copy_that_trips_planning_up_is_replaced_not_a_crash(comfy, cli, tmp_path, autopod_home):
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    [kept] = kept_files(autopod_home)
    doc = json.loads(kept.read_text())
    doc["object_info"]["EmptyImage"]["input_order"] = {"required": 5}  # parses, has the right outer shape
    kept.write_text(json.dumps(doc))
    r = run(cli, tmp_path, wf, "--set", "1.width=32", "--json")
    assert r.code == 0, r.err
    assert json.loads(kept.read_text())["object_info"]["EmptyImage"]["input_order"]["required"][0] == "width"


def test_copies_unused_for_30_days_are_removed_when_another_is_written(comfy, cli, tmp_path, autopod_home):
    import os
    import time

    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    [kept] = kept_files(autopod_home)
    folder = kept.parent
    old, recent, aside = folder / "0ld.json", folder / "recent.json", folder / "x.json.corrupt-abc"
    for f in (old, recent, aside):
        f.write_text("{}")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    os.utime(aside, (month_ago, month_ago))
    os.utime(kept, (month_ago, month_ago))
    assert run(cli, tmp_path, wf, "--dry-run").code == 0  # a hit: marks the pod's copy as used
    assert kept.stat().st_mtime > month_ago + 86400 and old.exists()  # nothing written, nothing pruned
    kept.write_text("damaged")  # the next run writes a fresh copy, and prunes
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    assert not old.exists() and recent.exists() and aside.exists() and kept.exists()


def test_conversion_notes_come_once_from_the_plan_that_counts(comfy, cli, tmp_path, autopod_home):
    """A plan on a stale kept copy is made again on the server's definitions: its notes must not print twice."""
    from workflow_fixtures import DATA

    data = json.loads((DATA / "image_pipeline.json").read_text())
    next(n for n in data["nodes"] if n["id"] == 8)["widgets_values"] = []  # SaveImage: no value saved
    wf = write(tmp_path, "pipeline.json", data)
    assert run(cli, tmp_path, wf, "--dry-run").code == 0
    [kept] = kept_files(autopod_home)
    doc = json.loads(kept.read_text())
    doc["object_info"]["SaveImage"]["description"] = "changed since"  # stale: the plan is made again
    kept.write_text(json.dumps(doc))
    r = run(cli, tmp_path, wf, "--dry-run")
    assert r.code == 0, r.err
    assert r.err.count("took the default of filename_prefix") == 1, r.err
    assert json.loads(kept.read_text())["object_info"]["SaveImage"]["description"] != "changed since"


def test_the_checks_keep_to_the_runs_timeout(comfy, cli, tmp_path, autopod_home):
    """--timeout bounds the whole run: a ComfyUI that takes connections but never answers while the kept copy
    is checked ends the run at the timeout (not the client's 30 s per request), with nothing sent."""
    import socket

    from autopod.comfy.nodedefs import store

    _, _, current = comfy
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        store(("url", url), current().full_object_info(), note=print)  # a kept copy for that address
        (autopod_home / "config.yaml").write_text(f"comfy_url: {url}\n")
        wf = write(tmp_path, "tiny.json", empty_save("tiny"))
        t0 = time.monotonic()
        r = run(cli, tmp_path, wf, "--timeout", "2", "--json")
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert r.code == 1 and "--timeout 2s" in r.json["msg"] and "nothing was sent" in r.json["msg"], r.out
    assert took < 15, took


def test_consulted_records_what_planning_reads():
    c = Consulted({"A": {"x": 1}, "B": {}})
    assert c.get("A") == {"x": 1} and "Nope" not in c and c["B"] == {} and c.get(7) is None
    assert c.names == {"A", "B", "Nope"} and not c.whole
    for whole_read in (list, len, lambda d: d.items(), lambda d: d.copy(), lambda d: dict(d)):
        c = Consulted({"A": {}})
        whole_read(c)
        assert c.whole, whole_read


@pytest.mark.sshd
def test_a_pod_keeps_its_definitions_by_id_and_address(tunneled, cli, tmp_path, autopod_home):
    standin, _ = tunneled
    wf = write(tmp_path, "tiny.json", empty_save("tiny"))
    for _ in range(2):
        r = cli("comfy.run", wf, "--pod", "gpu", "--output-dir", str(tmp_path / "out"))
        assert r.code == 0, r.err
    assert gets(standin, "/object_info") == 1
    [kept] = kept_files(autopod_home)
    doc = json.loads(kept.read_text())
    assert (doc["target"], doc["address"]) == ("host:gpu", f"127.0.0.1:{standin.port}")


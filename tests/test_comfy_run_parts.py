"""The parts of comfy.run that need no server: the ledger, output naming and saving, reading results."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat

import pytest

from autopod.comfy.ledger import Ledger
from autopod.comfy.outputs import check_template, output_items, save_stream, target_path, write_sidecar
from autopod.comfy.run import node_error_lines, outcome_of
from autopod.core.errors import UsageError

# Shapes as recorded from ComfyUI 0.3.64 (shared/reference/comfyui): a 400 for a value below its minimum,
# and the history status of a runtime error and of an interrupt.
REJECTED = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min",
                                              "message": "Value 0 smaller than min of 1", "details": "width",
                                              "extra_info": {"input_name": "width", "received_value": 0}}],
                                  "dependent_outputs": ["2"], "class_type": "EmptyImage"}}}
ERRORED = {"status_str": "error", "completed": False, "messages": [
    ["execution_start", {"prompt_id": "p", "timestamp": 1795887388908}],
    ["execution_cached", {"nodes": [], "prompt_id": "p", "timestamp": 1795887388910}],
    ["execution_error", {"prompt_id": "p", "node_id": "1", "node_type": "LoadImage", "executed": [],
                         "exception_message": "cannot identify image file '/opt/ComfyUI/input/corrupt.png'\n",
                         "exception_type": "PIL.UnidentifiedImageError", "traceback": ["  File ..."],
                         "timestamp": 1795887388915}]]}
INTERRUPTED = {"status_str": "error", "completed": False, "messages": [
    ["execution_start", {"prompt_id": "p", "timestamp": 1795887389611}],
    ["execution_interrupted", {"prompt_id": "p", "node_id": "3", "node_type": "SaveImage", "executed": ["1", "2"],
                               "timestamp": 1795887391820}]]}


def test_a_rejected_prompt_reads_one_line_per_problem():
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}, "_meta": {"title": "Canvas"}}}
    assert node_error_lines(REJECTED["node_errors"], prompt) == [
        "node 1 (EmptyImage, 'Canvas') input width: Value 0 smaller than min of 1: width"]


def test_history_tells_an_error_from_an_interrupt():
    assert outcome_of({"status": {"status_str": "success", "completed": True, "messages": []}}) == ("success", None)
    status, err = outcome_of({"status": ERRORED})
    assert status == "error" and err["execution_error"]["exception_type"] == "PIL.UnidentifiedImageError"
    assert err["summary"].startswith("node 1 (LoadImage): PIL.UnidentifiedImageError: cannot identify")
    status, err = outcome_of({"status": INTERRUPTED})
    assert status == "interrupted" and "node 3" in err["summary"]


def test_every_output_kind_is_listed_and_previews_only_when_asked():
    outputs = {"3": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]},
               "4": {"images": [{"filename": "ComfyUI_temp_x_00001_.png", "subfolder": "", "type": "temp"}]},
               "5": {"gifs": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}],
                     "audio": [{"filename": "s.wav", "subfolder": "a", "type": "output"}], "text": ["not a file"]},
               "6": {"animated": [True]}}
    kinds = [(n, k, i["filename"]) for n, k, i in output_items(outputs)]
    assert kinds == [("3", "images", "a_00001_.png"), ("5", "gifs", "v.mp4"), ("5", "audio", "s.wav")]
    assert ("4", "images", "ComfyUI_temp_x_00001_.png") in [(n, k, i["filename"])
                                                              for n, k, i in output_items(outputs, previews=True)]


def test_templates_are_checked_and_paths_stay_inside(tmp_path):
    assert check_template("{job}/{node}_{filename}") == "{job}/{node}_{filename}"
    for bad in ("{nope}/{filename}", "{job}.png", "/abs/{filename}", "../{filename}", "{filename", "{job.x}/{filename}"):
        with pytest.raises(UsageError):
            check_template(bad)
    p = target_path(tmp_path, "{job}/{node}_{filename}", job="../../etc", node="3", filename="../../passwd")
    assert tmp_path.resolve() in p.parents and p.name == "3_passwd"
    p = target_path(tmp_path, "{subfolder}/{filename}", subfolder="..", filename="x.png")
    assert tmp_path.resolve() in p.parents


def test_saving_never_overwrites_and_leaves_no_partial_file(tmp_path):
    def writer(data):
        def write(f):
            f.write(data)
            return len(data), "sha"
        return write

    dest = tmp_path / "out" / "a.png"
    first, n, _ = save_stream(dest, writer(b"one"))
    second, _, _ = save_stream(dest, writer(b"two"))
    assert (first.name, second.name) == ("a.png", "a (1).png") and first.read_bytes() == b"one" and n == 3

    def broken(f):
        f.write(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        save_stream(dest, broken)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a (1).png", "a.png"]  # no .part left behind
    side = write_sidecar(tmp_path / "out" / "p.json", {"prompt_id": "p"})
    assert json.loads(side.read_text()) == {"prompt_id": "p"}


def _plan(n):
    return [{"workflow": "wf.json", "workflow_hash": "h", "prompt": {"1": {"class_type": "X", "inputs": {"i": i}}},
             "prompt_hash": f"ph{i}", "overrides": {"1.i": i}, "seeds": {}} for i in range(n)]


def test_the_ledger_records_batches_prompts_outputs_and_uploads(tmp_path):
    with Ledger.open(tmp_path / "ledger.db") as led:
        b = led.new_batch("wf", target_id="pod1", target_name="flux", output_dir=str(tmp_path), template="{filename}",
                          options={"previews": False}, prompts=_plan(3))
        rows = led.prompts(b.id)
        assert [r.idx for r in rows] == [0, 1, 2] and all(r.status == "planned" for r in rows)
        led.update(b.id, 1, prompt_id="pid-1", status="queued", submitted_at=1.0)
        assert led.find("pid-1")[1][0].idx == 1
        assert led.find(b.id[:10])[0].id == b.id
        led.add_output("pid-1", "3", "images", {"filename": "a.png", "type": "output"}, "/x/a.png", 3, "abc")
        assert list(led.saved_outputs("pid-1").values())[0]["sha256"] == "abc"
        led.add_upload("sha", "pod1", {"name": "cat.png", "subfolder": "", "type": "input"})
        assert led.upload_for("sha", "pod1")["name"] == "cat.png" and led.upload_for("sha", "pod2") is None
        assert led.batches()[0]["total"] == 3
        with pytest.raises(UsageError):
            led.find("nope")
    assert stat.S_IMODE((tmp_path / "ledger.db").stat().st_mode) == 0o600
    with Ledger.open(tmp_path / "ledger.db") as led:  # migrations run once; a second open finds the data
        assert led.batch(b.id).client_id == b.client_id


def test_a_ledger_from_a_newer_autopod_is_refused(tmp_path):
    from autopod.core.errors import ConfigError

    with Ledger.open(tmp_path / "ledger.db") as led:
        led.db.execute("INSERT INTO _autopod_migrations VALUES ('m999_future', 0)")
    with pytest.raises(ConfigError, match="newer autopod"):
        Ledger.open(tmp_path / "ledger.db")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="cannot be used"):
        Ledger.open(tmp_path / "junk.db")


def _writer(path, worker, n):
    with Ledger.open(path) as led:
        for i in range(n):
            led.new_batch(f"w{worker}-{i}", target_id=None, target_name=None, output_dir="/tmp", template="{filename}",
                          options={}, prompts=_plan(2))


def test_several_processes_write_the_ledger_at_once(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger.open(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Ledger.open(path) as led:
        assert len(led.batches(limit=1000)) == 60
        assert led.db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0] == 120
    assert os.path.exists(path)


def test_batch_ids_drawn_twice_in_one_second_do_not_collide(tmp_path, monkeypatch):
    """Parallel runs started in the same second could draw the same short id: the second draws again."""
    import secrets

    draws = iter(["abcd", "abcd", "ef01"])
    monkeypatch.setattr(secrets, "token_hex", lambda n=16: next(draws) if n == 2 else "c" * (2 * n))
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20261129-120000-")
    with Ledger.open(tmp_path / "ledger.db") as led:
        a = led.new_batch("a", target_id=None, target_name=None, output_dir="/tmp", template="{filename}",
                          options={}, prompts=_plan(1))
        b = led.new_batch("b", target_id=None, target_name=None, output_dir="/tmp", template="{filename}",
                          options={}, prompts=_plan(1))
    assert (a.id, b.id) == ("20261129-120000-abcd", "20261129-120000-ef01")

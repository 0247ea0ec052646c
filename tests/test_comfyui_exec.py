"""The stand-in executes workflows the way the recorded ComfyUI 0.3.64 answered them.

Recordings are the oracle: responses, history entries and WebSocket event sequences are
compared with them by value where nothing varies, and by shape (keys, event order) where
ids, timestamps and tracebacks differ.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid

import pytest
import requests
from comfy_fixtures import (WS, empty_save, post_prompt, queue, recorded, recorded_ws, shape, sim,  # noqa: F401
                            sleep_save, standin, wait_history, wait_until)

from PIL import Image

from autopod.sim.comfyui import images as im
from autopod.sim.comfyui_standin import ComfyUIStandin

def png_bytes(w: int, h: int, color: int = 0x102030, *, alpha: int | None = None) -> bytes:
    buf = io.BytesIO()
    if alpha is None:
        im.save_png(buf, im.solid(w, h, color))
    else:
        Image.new("RGBA", (w, h), im.solid(1, 1, color).color + (alpha,)).save(buf, "PNG")
    return buf.getvalue()


def upload(url: str, name: str, data: bytes, field: str = "image", **fields) -> requests.Response:
    return requests.post(url + "/upload/image", files={field: (name, data, "image/png")}, data=fields, timeout=10)


def view(url: str, filename: str, type_: str = "output", subfolder: str = "", **extra) -> requests.Response:
    return requests.get(url + "/view", params={"filename": filename, "type": type_, "subfolder": subfolder, **extra},
                        timeout=10)


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def history_shape(entry: dict) -> dict:
    """Keys and message events of a history entry (ids and timestamps differ between runs)."""
    return {"keys": list(entry), "prompt_len": len(entry["prompt"]), "status_keys": list(entry["status"]),
            "status": (entry["status"]["status_str"], entry["status"]["completed"]),
            "events": [(e, sorted(d)) for e, d in entry["status"]["messages"]],
            "outputs": {k: {kk: [sorted(i) for i in vv] for kk, vv in v.items()} for k, v in entry["outputs"].items()},
            "meta": entry["meta"] and {k: sorted(v) for k, v in entry["meta"].items()}}


# -- a run, as recorded --------------------------------------------------------------------------

def test_a_run_sends_the_recorded_events_and_writes_the_recorded_png(standin):
    rec = recorded("prompt_ok")
    with WS(standin.url, rec["request"]["json"]["client_id"]) as ws:
        ws.recv()
        r = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"] == rec["headers"]["Content-Type"]
        doc = r.json()
        assert without(doc, "prompt_id") == without(rec["body"], "prompt_id")
        events = ws.until_done(doc["prompt_id"])
    want = recorded_ws("ws_messages")[1:]
    assert shape(events) == shape(want)
    executed = next(m for m in events if m["type"] == "executed")
    want_executed = next(m for m in want if m["type"] == "executed")
    assert without(executed["data"], "prompt_id") == without(want_executed["data"], "prompt_id")  # ref_00001_.png
    assert all(m["data"]["prompt_id"] == doc["prompt_id"] for m in events if "prompt_id" in m["data"])

    entry = wait_history(standin.url, doc["prompt_id"])
    rec_entry = recorded("history_one")["body"][rec["body"]["prompt_id"]]
    assert history_shape(entry) == history_shape(rec_entry)
    assert entry["outputs"] == rec_entry["outputs"] and entry["meta"] == rec_entry["meta"]
    assert entry["prompt"][0] == 0 and entry["prompt"][2:] == rec_entry["prompt"][2:]

    v = view(standin.url, "ref_00001_.png")
    rec_view = recorded("view_output")
    assert v.status_code == 200
    assert {k: v.headers[k] for k in ("Content-Type", "Content-Disposition")} == \
        without(rec_view["headers"], "Content-Length")
    assert int(v.headers["Content-Length"]) == len(v.content)
    png = im.decode(v.content)
    assert [png.width, png.height] == rec_view["png_size_wh"] and png.rgb == bytes(64 * 64 * 3)
    assert png.text == rec_view["png_text_chunks"]  # the prompt, as json.dumps wrote it
    assert hashlib.sha256(v.content).hexdigest() == rec_view["body"]["sha256"]  # the real file, byte for byte


def test_a_resubmit_is_fully_cached_and_resends_the_old_file(standin):
    cid = "4c768085db474152ad87b2550d88e27d"
    with WS(standin.url, cid) as ws:
        ws.recv()
        first = queue(standin.url, empty_save(), cid)
        ws.until_done(first)
        again = queue(standin.url, empty_save(), cid)
        events = ws.until_done(again)
    want = recorded_ws("ws_messages_cached")[1:]
    assert shape(events) == shape(want)
    cached = next(m for m in events if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2"]
    assert not [m for m in events if m["type"] == "executing" and m["data"]["node"] is not None]
    executed = next(m for m in events if m["type"] == "executed")
    assert executed["data"]["output"] == {"images": [{"filename": "ref_00001_.png", "subfolder": "", "type": "output"}]}
    progress = next(m for m in events if m["type"] == "progress_state")["data"]["nodes"]
    want_progress = next(m for m in want if m["type"] == "progress_state")["data"]["nodes"]
    assert progress == {"2": {**want_progress["2"], "prompt_id": again}}  # ints, as recorded for a cached node
    entry = wait_history(standin.url, again)
    rec_entry = next(iter(recorded("history_one_cached")["body"].values()))
    assert history_shape(entry) == history_shape(rec_entry) and entry["outputs"] == rec_entry["outputs"]
    assert view(standin.url, "ref_00002_.png").status_code == 404  # nothing was written again


def test_partial_cache_and_the_classic_cache_keeps_only_the_last_prompt(sim):
    with WS(sim.url) as ws:
        ws.recv()
        ws.until_done(queue(sim.url, empty_save("a"), ws.client_id))
        events = ws.until_done(queue(sim.url, empty_save("b"), ws.client_id))
        assert next(m for m in events if m["type"] == "execution_cached")["data"]["nodes"] == ["1"]
        assert [m["data"]["node"] for m in events if m["type"] == "executing"] == ["2", None]
        ws.until_done(queue(sim.url, empty_save("c", color=9), ws.client_id))
        events = ws.until_done(queue(sim.url, empty_save("b"), ws.client_id))  # "b" was dropped meanwhile
        assert next(m for m in events if m["type"] == "execution_cached")["data"]["nodes"] == []
        requests.post(sim.url + "/free", json={"unload_models": True, "free_memory": True}, timeout=5)
        events = ws.until_done(queue(sim.url, empty_save("b"), ws.client_id))
        assert next(m for m in events if m["type"] == "execution_cached")["data"]["nodes"] == []
    assert sorted(p.name for p in (sim.root / "output").iterdir()) == \
        ["a_00001_.png", "b_00001_.png", "b_00002_.png", "b_00003_.png", "c_00001_.png"]


def test_file_names_counters_subfolders_and_batches(sim):
    pid = queue(sim.url, empty_save("sub/dir/pic_%batch_num%", batch=3, width=8, height=4, color=0xFF0000))
    images = wait_history(sim.url, pid)["outputs"]["2"]["images"]
    assert images == [{"filename": f"pic_{i}_{i + 1:05}_.png", "subfolder": "sub/dir", "type": "output"}
                      for i in range(3)]
    png = im.decode(view(sim.url, "pic_2_00003_.png", subfolder="sub/dir").content)
    assert (png.width, png.height, png.rgb[:3]) == (8, 4, b"\xff\x00\x00")
    (sim.root / "output" / "n_00041_.png").write_bytes(b"")  # the counter continues from what is on disk
    pid = queue(sim.url, empty_save("n", color=1))
    assert wait_history(sim.url, pid)["outputs"]["2"]["images"][0]["filename"] == "n_00042_.png"
    pid = queue(sim.url, empty_save("../escape"))
    entry = wait_history(sim.url, pid)
    assert entry["status"]["status_str"] == "error"
    assert "outside the output folder" in entry["status"]["messages"][-1][1]["exception_message"]


def test_preview_image_writes_temp_files(standin):
    rec = recorded("prompt_preview_image")
    pid = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5).json()["prompt_id"]
    entry = wait_history(standin.url, pid)
    rec_entry = next(iter(recorded("history_one_preview_image")["body"].values()))
    assert history_shape(entry) == history_shape(rec_entry)
    names = [i["filename"] for i in entry["outputs"]["2"]["images"]]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", names[0]) and names[1] == names[0].replace("1_.", "2_.")
    assert {i["type"] for i in entry["outputs"]["2"]["images"]} == {"temp"}
    assert view(standin.url, names[1], "temp").status_code == 200
    assert view(standin.url, names[1], "output").status_code == 404


# -- validation ----------------------------------------------------------------------------------

def _no_tracebacks(doc):
    if isinstance(doc, dict):
        return {k: ("<tb>" if k == "traceback" else _no_tracebacks(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_no_tracebacks(v) for v in doc]
    return doc


@pytest.mark.parametrize("name", ["prompt_missing_input", "prompt_value_below_min", "prompt_bad_type_value",
                                  "prompt_bad_link", "prompt_return_type_mismatch", "prompt_value_not_in_list",
                                  "prompt_invalid_class", "prompt_missing_class_type", "prompt_no_outputs",
                                  "prompt_no_prompt_key"])
def test_invalid_prompts_get_the_recorded_400(standin, name):
    rec = recorded(name)
    r = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (rec["status"], rec["headers"]["Content-Type"])
    assert _no_tracebacks(r.json()) == _no_tracebacks(rec["body"])
    assert requests.get(standin.url + "/queue", timeout=5).json() == {"queue_running": [], "queue_pending": []}


def test_more_input_errors_and_both_combo_styles(standin):
    base = empty_save()
    bad = {**base, "3": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bogus",
                                                                 "width": 99999, "height": 8, "crop": "disabled"}},
           "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    r = post_prompt(standin.url, bad)
    assert r.status_code == 200  # node 2 still runs
    errors = r.json()["node_errors"]["3"]
    assert errors["dependent_outputs"] == ["4"] and errors["class_type"] == "ImageScale"
    assert [e["type"] for e in errors["errors"]] == ["value_not_in_list", "value_bigger_than_max"]
    assert errors["errors"][0]["details"] == \
        "upscale_method: 'bogus' not in ['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"
    assert errors["errors"][1]["message"] == "Value 99999 bigger than max of 16384"
    # v3 combos (["COMBO", {"options": [...]}]) are checked too; this node validates but the stand-in cannot run it
    webm = {**base, "2": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "w",
                                                                "codec": "h265", "fps": 24.0, "crf": 32.0}}}
    err = post_prompt(standin.url, webm).json()["node_errors"]["2"]["errors"][0]
    assert (err["type"], err["details"]) == ("value_not_in_list", "codec: 'h265' not in ['vp9', 'av1']")
    webm["2"]["inputs"]["codec"] = "vp9"
    pid = post_prompt(standin.url, webm).json()["prompt_id"]
    last = wait_history(standin.url, pid)["status"]["messages"][-1]
    assert last[0] == "execution_error" and last[1]["exception_type"] == "NotImplementedError"
    # values are converted like ComfyUI converts them, and the converted value is what gets stored
    loose = empty_save("loose")
    loose["1"]["inputs"]["width"] = "32"
    pid = post_prompt(standin.url, loose).json()["prompt_id"]
    assert wait_history(standin.url, pid)["prompt"][2]["1"]["inputs"]["width"] == 32


def test_one_valid_output_runs_the_other_is_dropped(standin):
    rec = recorded("prompt_partial_valid_other_invalid")
    r = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5)
    assert r.status_code == 200 and r.json()["node_errors"] == rec["body"]["node_errors"]
    entry = wait_history(standin.url, r.json()["prompt_id"])
    assert entry["prompt"][4] == ["2"] and list(entry["outputs"]) == ["2"]


def test_numbers_count_every_post_front_is_negative_explicit_is_a_float(standin):
    assert post_prompt(standin.url, empty_save()).json()["number"] == 0
    assert requests.post(standin.url + "/prompt", json={"client_id": "x"}, timeout=5).status_code == 400
    assert post_prompt(standin.url, {"1": {"inputs": {}}}).status_code == 400
    r = post_prompt(standin.url, empty_save(color=8), front=True).json()
    assert r["number"] == -3  # rejected posts counted too, as recorded
    r = requests.post(standin.url + "/prompt", json={"prompt": empty_save(color=9), "number": 12.5}, timeout=5)
    assert r.text.count('"number": 12.5') == 1
    r = requests.post(standin.url + "/prompt", json={"prompt": empty_save(color=10), "number": 7}, timeout=5)
    assert '"number": 7.0' in r.text  # echoed as a float
    assert post_prompt(standin.url, empty_save(color=11)).json()["number"] == 4  # explicit numbers don't count


def test_front_jumps_the_queue_and_sensitive_extra_data_stays_hidden(sim):
    blocker = queue(sim.url, sleep_save(seconds=0.5, steps=5))
    later = queue(sim.url, empty_save("later"))
    first = queue(sim.url, empty_save("first"), front=True,
                  extra_data={"api_key_comfy_org": "secret", "extra_pnginfo": {"workflow": {"n": 1}}})
    pending = requests.get(sim.url + "/queue", timeout=5).json()["queue_pending"]
    assert sorted(p[0] for p in pending)[0] < 0 and "secret" not in json.dumps(pending)
    entries = [wait_history(sim.url, p) for p in (blocker, first, later)]
    assert list(requests.get(sim.url + "/history", timeout=5).json()) == [blocker, first, later]
    assert entries[1]["prompt"][3] == {"extra_pnginfo": {"workflow": {"n": 1}}}
    png = im.decode(view(sim.url, "first_00001_.png").content)
    assert json.loads(png.text["workflow"]) == {"n": 1}


# -- failures and interrupts ---------------------------------------------------------------------

def test_a_corrupt_input_is_the_recorded_execution_error(standin):
    assert upload(standin.url, "corrupt.png", b"not a png at all", overwrite="true").status_code == 200
    rec = recorded("prompt_runtime_error_submit")["request"]["json"]
    with WS(standin.url, rec["client_id"]) as ws:
        ws.recv()
        pid = requests.post(standin.url + "/prompt", json=rec, timeout=5).json()["prompt_id"]
        events = ws.until_done(pid)
    want = recorded_ws("ws_messages_execution_error")[1:]
    assert shape(events) == shape(want)
    err = next(m for m in events if m["type"] == "execution_error")["data"]
    want_err = next(m for m in want if m["type"] == "execution_error")["data"]
    assert list(err) == list(want_err)
    assert without(err, "prompt_id", "timestamp", "traceback", "exception_message") == \
        without(want_err, "prompt_id", "timestamp", "traceback", "exception_message")
    assert err["exception_message"] == f"cannot identify image file '{standin.root / 'input' / 'corrupt.png'}'\n"
    assert err["traceback"] and all(isinstance(line, str) for line in err["traceback"])
    entry = wait_history(standin.url, pid)
    assert history_shape(entry) == history_shape(next(iter(recorded("history_one_execution_error")["body"].values())))


def test_fail_node(sim):
    wf = {**empty_save(), "3": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "boom"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}}}
    entry = wait_history(sim.url, queue(sim.url, wf))
    event, data = entry["status"]["messages"][-1]
    assert (event, data["exception_type"], data["exception_message"], data["node_id"], data["executed"]) == \
        ("execution_error", "RuntimeError", "boom\n", "3", ["1"])
    assert data["current_inputs"] == {"image": ["IMAGE(batch=1, width=64, height=64)"], "message": ["boom"]}
    assert (entry["status"]["status_str"], entry["status"]["completed"], entry["outputs"]) == ("error", False, {})


def test_load_image_reads_what_pillow_reads_as_comfyui_does(sim):
    """Grey PNG, JPEG, an EXIF-rotated JPEG, a GIF (every frame a batch item), a truncated PNG (read anyway)."""
    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    rotated = Image.new("RGB", (6, 2), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    whole = save(noisy, "PNG")
    gif = save(Image.new("RGB", (5, 3), (255, 0, 0)), "GIF", save_all=True,
               append_images=[Image.new("RGB", (5, 3), (0, 0, 255))])
    files = {"gray.png": (save(Image.new("L", (4, 4), 90), "PNG"), (4, 4, 1), (90, 90, 90)),
             "photo.jpg": (save(Image.new("RGB", (8, 8), (0, 255, 0)), "JPEG", quality=95), (8, 8, 1), None),
             "turned.jpg": (save(rotated, "JPEG", exif=exif), (2, 6, 1), None),
             "two.gif": (gif, (5, 3, 2), (255, 0, 0)),
             "cut.png": (whole[:len(whole) * 2 // 3], (64, 64, 1), None)}
    for name, (data, (w, h, n), first) in files.items():
        upload(sim.url, name, data)
        wf = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
              "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "show"}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
        err = wait_history(sim.url, queue(sim.url, wf))["status"]["messages"][-1][1]
        assert err["current_inputs"]["image"] == [f"IMAGE(batch={n}, width={w}, height={h})"], name
        if first:
            wf = {"1": wf["1"], "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": name}}}
            out = wait_history(sim.url, queue(sim.url, wf))["outputs"]["2"]["images"][0]["filename"]
            assert Image.open(sim.root / "output" / out).getpixel((0, 0)) == first, name


def test_targeted_interrupt_stops_at_the_next_step(sim):
    with WS(sim.url) as ws:
        ws.recv()
        pid = queue(sim.url, sleep_save(seconds=30, steps=300), ws.client_id)
        other = queue(sim.url, empty_save("after"), ws.client_id)
        ws.until(lambda m: m["type"] == "progress")
        requests.post(sim.url + "/interrupt", json={"prompt_id": other}, timeout=5)  # not running: ignored
        ws.until(lambda m: m["type"] == "progress" and m["data"]["value"] >= 3)
        start = time.monotonic()
        r = requests.post(sim.url + "/interrupt", json={"prompt_id": pid}, timeout=5)
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)
        events = ws.until_done(pid)
        assert time.monotonic() - start < 2
        ws.until_done(other)
    interrupted = next(m for m in events if m["type"] == "execution_interrupted")["data"]
    rec = next(m for m in recorded_ws("ws_messages_targeted_interrupt") if m["type"] == "execution_interrupted")
    assert sorted(interrupted) == sorted(rec["data"])
    assert (interrupted["node_id"], interrupted["node_type"], interrupted["executed"]) == ("2", "AutopodSleep", ["1"])
    assert [m["type"] for m in events][-3:] == ["execution_interrupted", "status", "executing"]
    entry = wait_history(sim.url, pid)
    rec_entry = next(iter(recorded("history_interrupted_one")["body"].values()))
    assert history_shape(entry) == history_shape(rec_entry)
    assert wait_history(sim.url, other)["status"]["status_str"] == "success"


def test_a_global_interrupt_hits_the_next_node_boundary_and_not_the_next_prompt(sim):
    wf = sleep_save(seconds=0.3, steps=1)
    wf["4"] = {"class_type": "AutopodSleep", "inputs": {"image": ["2", 0], "seconds": 0.0, "steps": 1}}
    wf["3"]["inputs"]["images"] = ["4", 0]
    with WS(sim.url) as ws:
        ws.recv()
        pid = queue(sim.url, wf, ws.client_id)
        ws.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        requests.post(sim.url + "/interrupt", timeout=5)
        events = ws.until_done(pid)
    data = next(m for m in events if m["type"] == "execution_interrupted")["data"]
    assert (data["node_id"], data["executed"]) == ("2", ["1"])
    requests.post(sim.url + "/interrupt", timeout=5)  # nothing runs: the next prompt starts clean
    assert wait_history(sim.url, queue(sim.url, empty_save("clean")))["status"]["status_str"] == "success"


# -- queue and history ---------------------------------------------------------------------------

def test_queue_delete_and_clear_touch_pending_only(sim):
    cid = uuid.uuid4().hex
    with WS(sim.url, cid) as ws:
        ws.recv()
        running = queue(sim.url, sleep_save(seconds=30, steps=300), cid)
        ws.until(lambda m: m["type"] == "progress")
        pending = [queue(sim.url, empty_save("p", color=i), cid) for i in range(4)]
        q = requests.get(sim.url + "/api/queue", timeout=5).json()
        rec = recorded("queue_busy")["body"]
        assert (len(q["queue_running"]), len(q["queue_pending"])) == (1, 4)
        assert [len(i) for i in q["queue_running"] + q["queue_pending"]] == [5] * 5
        assert q["queue_running"][0][1] == running and q["queue_running"][0][3] == {"client_id": cid}
        assert [type(x).__name__ for x in q["queue_pending"][0]] == [type(x).__name__ for x in rec["queue_pending"][0]]
        assert requests.get(sim.url + "/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 5}}
        ws.until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 5)
        r = requests.post(sim.url + "/queue", json={"delete": [pending[-1]]}, timeout=5)
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)
        ws.until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 4)
        assert [i[1] for i in requests.get(sim.url + "/queue", timeout=5).json()["queue_pending"]] == pending[:3]
        requests.post(sim.url + "/queue", json={"clear": True}, timeout=5)
        q = requests.get(sim.url + "/queue", timeout=5).json()
        assert [i[1] for i in q["queue_running"]] == [running] and q["queue_pending"] == []
        requests.post(sim.url + "/interrupt", timeout=5)
        ws.until_done(running)
    assert requests.get(sim.url + "/queue", timeout=5).json() == recorded("queue_idle_end")["body"]
    assert all(p not in requests.get(sim.url + "/history", timeout=5).json() for p in pending)


def test_history_listing_slicing_and_deleting(sim):
    ids = [queue(sim.url, empty_save(f"h{i}", color=i)) for i in range(4)]
    wait_history(sim.url, ids[-1])

    def listing(**params):
        return list(requests.get(sim.url + "/history", params=params, timeout=5).json())

    assert listing() == ids
    assert listing(max_items=1) == ids[-1:]  # the newest
    assert listing(max_items=2, offset=1) == ids[1:3]  # counted from the oldest
    assert listing(offset=2) == ids[2:]
    assert requests.get(f"{sim.url}/history/nope", timeout=5).json() == {}
    r = requests.post(sim.url + "/history", json={"delete": [ids[0]]}, timeout=5)
    assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)
    assert requests.get(f"{sim.url}/history/{ids[0]}", timeout=5).json() == recorded("history_after_delete_one")["body"]
    requests.post(sim.url + "/api/history", json={"clear": True}, timeout=5)
    assert requests.get(sim.url + "/history", timeout=5).json() == recorded("history_after_clear")["body"]
    assert requests.post(sim.url + "/history", data="", timeout=5).status_code == 500  # no JSON at all


def test_the_busy_replay_runs_its_queue_once_interrupted():
    with ComfyUIStandin(state="busy") as s:
        held = recorded("queue_busy")["body"]["queue_running"][0][1]
        with WS(s.url, recorded("queue_busy")["body"]["queue_running"][0][3]["client_id"]) as ws:
            assert ws.recv()["data"]["status"]["exec_info"]["queue_remaining"] == 5  # held until interrupted
            requests.post(s.url + "/interrupt", json={"prompt_id": "not-running"}, timeout=5)
            assert [i[1] for i in s.running] == [held] and len(s.pending) == 4
            requests.post(s.url + "/interrupt", json={"prompt_id": held}, timeout=5)
            ws.until(lambda m: m["type"] == "execution_interrupted")  # to the recorded prompt's client
        entry = wait_history(s.url, held)
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        last = recorded("queue_busy")["body"]["queue_pending"][-1][1]
        assert wait_history(s.url, last, timeout=30)["outputs"]["3"]["images"][0]["filename"] == "slow_00004_.png"


def test_stand_ins_share_nothing(tmp_path):
    with ComfyUIStandin(sim_nodes=True, root=tmp_path / "a") as a, ComfyUIStandin(root=tmp_path / "b") as b:
        pa = queue(a.url, sleep_save(seconds=0.3, steps=3, prefix="same"))
        pb = queue(b.url, empty_save("same"))
        assert wait_history(b.url, pb)["prompt"][0] == 0 and pa not in requests.get(b.url + "/history").json()
        assert wait_history(a.url, pa)["outputs"]["3"]["images"][0]["filename"] == "same_00001_.png"
        assert "AutopodSleep" not in requests.get(b.url + "/object_info", timeout=5).json()
        assert post_prompt(b.url, sleep_save()).json()["error"]["type"] == "invalid_prompt"


# -- files ---------------------------------------------------------------------------------------

def test_uploads_like_comfyui(standin):
    first, other = png_bytes(4, 4, 1), png_bytes(4, 4, 2)
    r = upload(standin.url, "ref_upload.png", first, overwrite="true")
    assert (r.status_code, r.json()) == (200, recorded("upload_image")["body"])
    assert upload(standin.url, "ref_upload.png", first).json() == \
        recorded("upload_image_same_no_overwrite_identical")["body"]
    assert upload(standin.url, "ref_upload.png", other).json() == \
        recorded("upload_image_same_no_overwrite_different")["body"]
    assert upload(standin.url, "ref_upload.png", other).json()["name"] == "ref_upload (1).png"  # identical again
    assert upload(standin.url, "ref_upload.png", first, overwrite="true", subfolder="refsub", type="temp").json() == \
        recorded("upload_image_subfolder_temp")["body"]
    assert upload(standin.url, "ref_upload.png", first, overwrite="1", subfolder="refsub").json() == \
        recorded("upload_image_type_input_subfolder")["body"]
    for r in (upload(standin.url, "x.png", first, field="file"),
              requests.post(standin.url + "/upload/image", data={"overwrite": "true"}, timeout=5)):
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (400, b"", None)
    assert upload(standin.url, "../../evil.png", first, overwrite="true").status_code == 400
    assert upload(standin.url, "x.png", first, subfolder="../..").status_code == 400
    assert not list(standin.root.parent.glob("evil.png"))
    rec = recorded("upload_mask")
    mask = png_bytes(4, 4, 0, alpha=77)
    r = requests.post(standin.url + "/upload/mask", files={"image": ("ref_mask.png", mask, "image/png")},
                      data=rec["request"]["multipart"]["fields"], timeout=5)
    assert r.json() == rec["body"]
    masked = im.decode((standin.root / "input" / "ref_mask.png").read_bytes())
    assert masked.rgb == im.decode(first).rgb and set(masked.alpha) == {77}
    got = requests.get(standin.url + "/object_info/LoadImage", timeout=5).json()
    assert got == recorded("object_info_LoadImage_after_upload")["body"]  # the input folder's images, sorted
    v = view(standin.url, "ref_upload.png", "input")
    assert v.content == first and v.headers["Content-Disposition"] == 'filename="ref_upload.png"'
    assert view(standin.url, "ref_upload.png [input]", "output").content == first  # an annotated name wins
    assert requests.post(standin.url + "/upload/image", files={"image": ("a.png", first)}, data={"type": "bogus"},
                         timeout=5).status_code == 500


def test_view_errors_ranges_and_channels(standin):
    wait_history(standin.url, queue(standin.url, empty_save()))
    for name, status in (("view_missing", 404), ("view_bad_type", 400), ("view_path_traversal", 400),
                         ("view_no_filename", 404)):
        rec = recorded(name)
        r = requests.get(standin.url + "/view", params=rec["request"]["query"], timeout=5)
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (rec["status"], b"", None) == \
            (status, b"", None)
    assert view(standin.url, "ref_00001_.png", subfolder="../input").status_code == 403
    assert view(standin.url, "ref_00001_.png", "").status_code == 400
    assert requests.get(standin.url + "/view?filename=ref_00001_.png", timeout=5).status_code == 200  # output
    full = view(standin.url, "ref_00001_.png").content
    r = requests.get(standin.url + "/view", params={"filename": "ref_00001_.png"}, headers={"Range": "bytes=8-15"},
                     timeout=5)
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, full[8:16], f"bytes 8-15/{len(full)}")
    assert requests.head(standin.url + "/view?filename=ref_00001_.png", timeout=5).headers["Content-Length"] == \
        str(len(full))
    alpha = view(standin.url, "ref_00001_.png", channel="a")
    assert alpha.headers["Content-Type"] == recorded("view_channel_a")["headers"]["Content-Type"]
    png = im.decode(alpha.content)
    assert set(png.alpha) == {255} and set(png.rgb) == {0}
    for name, r in (("view_channel_a", alpha), ("view_preview_webp", requests.get(
            standin.url + "/view", params=recorded("view_preview_webp")["request"]["query"], timeout=5))):
        rec = recorded(name)  # what the real ComfyUI sent for the same file, byte for byte
        assert (r.headers["Content-Type"], hashlib.sha256(r.content).hexdigest()) == \
            (rec["headers"]["Content-Type"], rec["body"]["sha256"])
    rgb = view(standin.url, "ref_00001_.png", channel="rgb")
    assert rgb.headers["Content-Type"] == "image/png" and im.decode(rgb.content).alpha is None
    jpeg = view(standin.url, "ref_00001_.png", preview="jpeg;80")
    assert jpeg.headers["Content-Type"] == "image/jpeg" and im.decode(jpeg.content).format == "JPEG"
    forced = view(standin.url, "ref_00001_.png", preview="jpeg;80", channel="a")
    assert forced.headers["Content-Type"] == "image/webp"  # an alpha channel cannot go to JPEG
    (standin.root / "output" / "notes.png").write_bytes(b"not an image")
    assert view(standin.url, "notes.png", channel="rgb").status_code == 500  # ComfyUI's /view raises in Pillow
    assert view(standin.url, "notes.png").content == b"not an image"  # served as it is without a channel


# -- the stand-in's own nodes --------------------------------------------------------------------

def test_sim_nodes_are_listed_like_real_ones(sim):
    info = requests.get(sim.url + "/object_info", timeout=5).json()
    real_keys = set(recorded("object_info_EmptyImage")["body"]["EmptyImage"])
    for name in ("AutopodSleep", "AutopodFail", "AutopodSaveGIF", "AutopodSaveVideo", "AutopodSaveAudio",
                 "AutopodBigFile"):
        node = info[name]
        assert set(node) == real_keys and node["category"] == "autopod/sim" and node["name"] == name
        assert node["input_order"]["required"] == list(node["input"]["required"])
    assert len(info) == 477 + 6
    assert requests.get(sim.url + "/object_info/AutopodSleep", timeout=5).json() == {"AutopodSleep":
                                                                                       info["AutopodSleep"]}


def test_sleep_sends_progress_step_by_step(sim):
    with WS(sim.url) as ws:
        ws.recv()
        pid = queue(sim.url, sleep_save(seconds=0.2, steps=4), ws.client_id)
        events = ws.until_done(pid)
    progress = [m["data"] for m in events if m["type"] == "progress"]
    assert progress == [{"value": i, "max": 4, "prompt_id": pid, "node": "2"} for i in range(1, 5)]
    states = [m["data"]["nodes"]["2"] for m in events if m["type"] == "progress_state" and "2" in m["data"]["nodes"]]
    assert [(s["state"], s["value"], s["max"]) for s in states] == \
        [("running", 0.0, 1.0)] + [("running", i, 4) for i in range(1, 5)] + [("finished", 4, 4)] * 3


def test_output_kinds_gif_video_audio_and_a_big_file(sim):
    import wave

    buf = io.BytesIO()  # three different frames: Pillow (and so ComfyUI) merges identical ones into one
    first, *rest = (Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    first.save(buf, "GIF", save_all=True, append_images=rest)
    upload(sim.url, "rgb.gif", buf.getvalue())
    frames = {"1": {"class_type": "LoadImage", "inputs": {"image": "rgb.gif"}}}
    wf = {**frames,
          "2": {"class_type": "AutopodSaveGIF", "inputs": {"images": ["1", 0], "filename_prefix": "anim/g",
                                                           "frame_rate": 10.0}},
          "3": {"class_type": "AutopodSaveVideo", "inputs": {"images": ["1", 0], "filename_prefix": "v",
                                                             "frame_rate": 5.0}},
          "4": {"class_type": "AutopodSaveAudio", "inputs": {"filename_prefix": "audio/tone", "seconds": 0.5,
                                                             "frequency": 440.0, "sample_rate": 8000}},
          "5": {"class_type": "AutopodBigFile", "inputs": {"size_mb": 3, "filename_prefix": "big"}},
          "6": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["1", 0], "filename_prefix": "apng",
                                                            "fps": 6.0, "compress_level": 4}},
          "7": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "webp", "fps": 4.0,
                                                             "lossless": True, "quality": 80, "method": "fastest"}}}
    with WS(sim.url) as ws:
        ws.recv()
        pid = queue(sim.url, wf, ws.client_id)
        events = ws.until_done(pid)
    outputs = wait_history(sim.url, pid)["outputs"]
    assert {m["data"]["node"]: m["data"]["output"] for m in events if m["type"] == "executed"} == outputs
    gif = outputs["2"]["gifs"][0]
    assert without(gif, "fullpath") == {"filename": "g_00001.gif", "subfolder": "anim", "type": "output",
                                        "format": "image/gif", "frame_rate": 10.0, "workflow": "g_00001.png"}
    r = view(sim.url, gif["filename"], subfolder="anim")
    assert r.headers["Content-Type"] == "image/gif" and Image.open(io.BytesIO(r.content)).n_frames == 3
    video = outputs["3"]["gifs"][0]
    assert (video["filename"], video["format"]) == ("v_00001.avi", "video/avi")
    r = view(sim.url, video["filename"])
    assert r.headers["Content-Type"] == "video/x-msvideo" and r.content[:4] == b"RIFF" and r.content[8:12] == b"AVI "
    assert outputs["4"] == {"audio": [{"filename": "tone_00001_.wav", "subfolder": "audio", "type": "output"}]}
    with wave.open(io.BytesIO(view(sim.url, "tone_00001_.wav", subfolder="audio").content)) as w:
        assert (w.getframerate(), w.getnframes()) == (8000, 4000)
    assert outputs["5"] == {"files": [{"filename": "big_00001_.bin", "subfolder": "", "type": "output"}]}
    r = requests.get(sim.url + "/view", params={"filename": "big_00001_.bin"}, stream=True, timeout=10)
    size = sum(len(c) for c in r.iter_content(1 << 16))
    assert (r.headers["Content-Type"], int(r.headers["Content-Length"]), size) == \
        ("application/octet-stream", 3 * 1024 * 1024, 3 * 1024 * 1024)
    big_progress = [m["data"]["value"] for m in events if m["type"] == "progress" and m["data"]["node"] == "5"]
    assert big_progress[-1] == 3
    assert outputs["6"] == {"images": [{"filename": "apng_00001_.png", "subfolder": "", "type": "output"}],
                            "animated": [True]}
    apng = view(sim.url, "apng_00001_.png").content
    img = Image.open(io.BytesIO(apng))
    assert (img.n_frames, img.info["duration"], getattr(img, "text", {})) == (3, 166, {})
    img.seek(2)
    assert img.convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    # ComfyUI's APNG keeps the prompt in private "comf" chunks after the image data, not in tEXt
    comf = apng.index(b"comf")
    assert comf > apng.index(b"IDAT") and apng[comf + 4:].startswith(b"prompt\0{")
    assert outputs["7"] == {"images": [{"filename": "webp_00001_.webp", "subfolder": "", "type": "output"}],
                            "animated": [True]}
    r = view(sim.url, "webp_00001_.webp")
    webp = Image.open(io.BytesIO(r.content))
    assert (r.headers["Content-Type"], webp.format, webp.n_frames) == ("image/webp", "WEBP", 3)
    webp.seek(1)
    assert (webp.convert("RGB").getpixel((23, 15)), webp.info["duration"]) == ((0, 255, 0), 250)  # lossless
    assert json.loads(webp.getexif()[0x0110].removeprefix("prompt:")) == wf  # EXIF Model holds the prompt


def test_one_frame_webp_is_not_animated_and_identical_frames_merge(sim):
    wf = {**empty_save("one", color=0x00FF00),
          "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "one", "fps": 6.0,
                                                             "lossless": False, "quality": 80, "method": "default"}}}
    assert wait_history(sim.url, queue(sim.url, wf))["outputs"]["2"] == \
        {"images": [{"filename": "one_00001_.webp", "subfolder": "", "type": "output"}], "animated": [False]}
    wf["1"]["inputs"]["batch_size"] = 3  # three identical frames: Pillow writes one, as in ComfyUI's own files
    wf["2"]["inputs"]["filename_prefix"] = "same"
    assert wait_history(sim.url, queue(sim.url, wf))["outputs"]["2"]["animated"] == [True]
    assert Image.open(sim.root / "output" / "same_00001_.webp").n_frames == 1


def test_load_scale_blur_save_on_real_pixels(sim):
    rows = [b"".join(bytes((x * 10, y * 20, 100)) for x in range(12)) for y in range(6)]
    buf = io.BytesIO()
    Image.frombytes("RGB", (12, 6), b"".join(rows)).save(buf, "PNG")
    upload(sim.url, "grad.png", buf.getvalue())
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "grad.png"}},
          "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                       "width": 24, "height": 0, "crop": "disabled"}},
          "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 2, "sigma": 1.0}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "real"}},
          "5": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}}}
    entry = wait_history(sim.url, queue(sim.url, wf))
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    scaled = im.decode(view(sim.url, "scaled_00001_.png").content)
    assert (scaled.width, scaled.height) == (24, 12) and scaled.rgb[:6] == bytes((0, 0, 100, 0, 0, 100))
    blurred = im.decode(view(sim.url, "real_00001_.png").content)
    assert (blurred.width, blurred.height) == (24, 12) and blurred.rgb != scaled.rgb


def test_a_big_file_is_written_and_served_with_flat_memory(sim):
    import threading

    import psutil

    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wf = {"1": {"class_type": "AutopodBigFile", "inputs": {"size_mb": 160, "filename_prefix": "bench"}}}
        entry = wait_history(sim.url, queue(sim.url, wf), timeout=60)
        assert entry["outputs"]["1"]["files"][0]["filename"] == "bench_00001_.bin"
        r = requests.get(sim.url + "/view", params={"filename": "bench_00001_.bin"}, stream=True, timeout=30)
        got = sum(len(c) for c in r.iter_content(1 << 16))
    finally:
        done.set()
        sampler.join()
    assert got == 160 * 1024 * 1024
    assert peak[0] - base < 48 * 1024 * 1024  # the worker writes 1 MiB at a time; /view uses sendfile

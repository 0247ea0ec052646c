"""The ComfyUI stand-in answers like the recordings of a real ComfyUI 0.3.64."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from comfy_fixtures import busy, recorded, standin, wait_history  # noqa: F401  (fixtures)

from autopod.sim.comfyui_standin import DATA_DIR, ComfyUIStandin


@pytest.mark.parametrize("path,name", [
    ("/system_stats", "system_stats"), ("/api/system_stats", "api_prefix_system_stats"), ("/queue", "queue_idle"),
    ("/history", "history_empty"), ("/prompt", "prompt_get_idle"), ("/embeddings", "embeddings"),
    ("/extensions", "extensions"), ("/features", "features"), ("/models", "models"),
    ("/models/checkpoints", "models_checkpoints"), ("/object_info/SaveImage", "object_info_SaveImage"),
    ("/object_info/KSampler", "object_info_KSampler"), ("/object_info/NoSuchNode", "object_info_unknown"),
    ("/object_info/EmptyImage", "object_info_EmptyImage"), ("/object_info/ImageBlur", "object_info_ImageBlur"),
    ("/object_info/PreviewImage", "object_info_PreviewImage"), ("/object_info/LoadImage", "object_info_LoadImage"),
    ("/object_info/CheckpointLoaderSimple", "object_info_CheckpointLoaderSimple"),
    ("/history/00000000-0000-0000-0000-000000000000", "history_unknown_id"),
])
def test_idle_answers_match_recordings(standin, path, name):
    rec = recorded(name)
    r = requests.get(standin.url + path, timeout=5)
    assert r.status_code == rec["status"]
    assert r.headers["Content-Type"] == rec["headers"]["Content-Type"]
    assert r.json() == rec["body"]


def test_full_object_info_is_the_recorded_body(standin):
    with gzip.open(DATA_DIR / "object_info_full.json.gz", "rt") as f:
        full = json.load(f)
    got = requests.get(standin.url + "/api/object_info", timeout=5).json()
    assert got == full and len(got) == 477


@pytest.mark.parametrize("path,name", [("/queue", "queue_busy"), ("/api/queue", "api_prefix_queue_busy"),
                                       ("/history", "history_all"), ("/history?max_items=1", "history_max_items_1"),
                                       ("/history?max_items=2&offset=1", "history_max_items_2_offset_1")])
def test_busy_state_replays_queue_and_history(busy, path, name):
    got = requests.get(busy.url + path, timeout=5).json()
    assert got == recorded(name)["body"]
    assert list(got) == list(recorded(name)["body"])  # history keeps completion order


def test_errors_and_empty_bodies_like_comfyui(standin):
    r = requests.get(standin.url + "/models/not_a_folder", timeout=5)
    assert (r.status_code, r.content, r.headers.get("Content-Type")) == (404, b"", None)
    r = requests.get(standin.url + "/free", timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (404, "application/octet-stream")
    r = requests.post(standin.url + "/prompt", data="this is not json", headers={"Content-Type": "application/json"},
                      timeout=5)
    assert (r.status_code, r.text) == (500, recorded("prompt_not_json")["body"])
    assert r.headers["Content-Type"].startswith("text/plain")
    for name in ("prompt_no_prompt_key", "prompt_invalid_class", "prompt_missing_class_type", "prompt_no_outputs"):
        rec = recorded(name)
        r = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5)
        assert (r.status_code, r.json()) == (rec["status"], rec["body"]), name
    for path, name in (("/interrupt", "interrupt"), ("/free", "free")):
        rec = recorded(name)
        r = requests.post(standin.url + path, json=rec["request"].get("json"), timeout=5)
        assert (r.status_code, r.content, r.headers.get("Content-Type")) == (200, b"", None)


def test_prompt_is_recorded_in_history_and_control_endpoints_change_state(standin, busy):
    rec = recorded("prompt_ok")
    r = requests.post(standin.url + "/prompt", json=rec["request"]["json"], timeout=5)
    assert r.status_code == 200
    doc = r.json()
    assert set(doc) == set(rec["body"]) and doc["number"] == 0 and doc["node_errors"] == {}
    entry = wait_history(standin.url, doc["prompt_id"])
    number, pid, prompt, extra, outputs = entry["prompt"]
    assert (number, pid, outputs) == (0, doc["prompt_id"], ["2"])
    assert extra == {"client_id": rec["request"]["json"]["client_id"]}
    assert entry["status"]["status_str"] == "success"
    # the counter goes on; "front" gives a negative number, an explicit number is echoed as a float
    later = []
    for extra_body, want in (({}, 1), ({"front": True}, -2), ({"number": 12.5}, 12.5)):
        doc = requests.post(standin.url + "/prompt", json={"prompt": prompt, **extra_body}, timeout=5).json()
        assert doc["number"] == want
        later.append(doc["prompt_id"])
    for pid in later:
        wait_history(standin.url, pid)  # all done: nothing lands in the history after the clear
    requests.post(standin.url + "/history", json={"clear": True}, timeout=5)
    assert requests.get(standin.url + "/history", timeout=5).json() == {}

    requests.post(busy.url + "/queue", json={"clear": True}, timeout=5)
    q = requests.get(busy.url + "/queue", timeout=5).json()
    assert len(q["queue_running"]) == 1 and q["queue_pending"] == []  # clear keeps the running prompt


def _connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except ConnectionRefusedError:
        return False


def test_not_listening_until_ready_after():
    with ComfyUIStandin(ready_after=0.6) as s:
        assert s.port > 0 and not s.ready
        assert not _connect(s.port)  # refused, like a pod whose ComfyUI is still being copied
        assert s.wait_ready(5)
        assert _connect(s.port)
        assert requests.get(s.url + "/system_stats", timeout=5).status_code == 200
    assert not _connect(s.port)  # stopped


def test_become_ready_early_and_stop_before_ready():
    s = ComfyUIStandin(ready_after=60).start()
    s.become_ready()
    assert requests.get(s.url + "/queue", timeout=5).status_code == 200
    s.stop()
    never = ComfyUIStandin(ready_after=60).start()
    never.stop()  # cancels the timer, frees the port
    assert not _connect(never.port)


def test_command_line_prints_url_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.Popen([sys.executable, "-m", "autopod.sim.comfyui_standin", "--port", "0", "--ready-after", "0.3"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(p.stdout.readline())
        assert info["url"] == f"http://127.0.0.1:{info['port']}" and info["pid"] == p.pid
        deadline = time.monotonic() + 10
        while not _connect(info["port"]):
            assert time.monotonic() < deadline, "stand-in never listened"
            time.sleep(0.05)
        assert requests.get(info["url"] + "/system_stats", timeout=5).json()["system"]["comfyui_version"] == "0.3.64"
        p.terminate()
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_nagle_is_off_and_a_reply_is_one_write_like_aiohttp(standin, monkeypatch):
    """aiohttp (ComfyUI's server) sets TCP_NODELAY and sends a small reply in one write; otherwise every
    request on a kept-alive connection waits about 40 ms for a delayed ACK, which no real pod shows."""
    accepted, nodelay, writes = [], [], []
    accept = standin._httpd.get_request

    def recording_accept():
        sock, addr = accept()
        accepted.append(sock)
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return sock, addr

    send = socket.socket.send

    def recording_send(self, data, *args):
        if any(self is a for a in accepted):
            writes.append(bytes(data))
        return send(self, data, *args)

    monkeypatch.setattr(standin._httpd, "get_request", recording_accept)
    monkeypatch.setattr(socket.socket, "send", recording_send)
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(standin.url + "/history/nope", timeout=5).json() == {}
    assert nodelay == [1]  # one kept-alive connection, Nagle off
    assert len(writes) == 3 and all(w.startswith(b"HTTP/1.1 200") and w.endswith(b"\r\n\r\n{}") for w in writes)


def test_model_files_are_listed_like_comfyui_in_definitions_and_models(standin):
    """A model pull changes the node definitions: the loaders' lists are the files under models/ now."""
    def choices(cls, name):
        spec = requests.get(f"{standin.url}/object_info/{cls}", timeout=5).json()[cls]["input"]["required"][name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    assert choices("CheckpointLoaderSimple", "ckpt_name") == [] and choices("VAELoader", "vae_name") == ["pixel_space"]
    ckpts = standin.root / "models" / "checkpoints"
    (ckpts / "sdxl").mkdir(parents=True, exist_ok=True)
    for name in ("b.safetensors", "sdxl/a.ckpt", "notes.txt", ".hidden.safetensors"):
        (ckpts / name).write_bytes(b"x")
    (standin.root / "models" / "vae").mkdir(exist_ok=True)  # ComfyUI makes its model folders at start
    (standin.root / "models" / "vae" / "ae.sft").write_bytes(b"x")
    (standin.root / "models" / "upscale_models").mkdir(exist_ok=True)
    (standin.root / "models" / "upscale_models" / "4x.pth").write_bytes(b"x")
    # Hidden files too: ComfyUI's lists skip only .git folders (its /experiment/models skips hidden files).
    assert choices("CheckpointLoaderSimple", "ckpt_name") == [".hidden.safetensors", "b.safetensors", "sdxl/a.ckpt"]
    assert choices("VAELoader", "vae_name") == ["ae.sft", "pixel_space"]
    assert choices("UpscaleModelLoader", "model_name") == ["4x.pth"]  # a v3 combo: its options
    assert requests.get(standin.url + "/models/checkpoints", timeout=5).json() == [
        ".hidden.safetensors", "b.safetensors", "sdxl/a.ckpt"]
    listed = requests.get(standin.url + "/api/experiment/models/checkpoints", timeout=5).json()  # the editor's library
    assert [(m["name"], m["pathIndex"], m["size"]) for m in listed] == [("b.safetensors", 0, 1), ("sdxl/a.ckpt", 0, 1)]
    full = requests.get(standin.url + "/object_info", timeout=5).json()
    assert full["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        ".hidden.safetensors", "b.safetensors", "sdxl/a.ckpt"]
    (ckpts / "b.safetensors").unlink()
    assert choices("CheckpointLoaderSimple", "ckpt_name") == [".hidden.safetensors", "sdxl/a.ckpt"]
    # ComfyUI checks a prompt against the same lists.
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    r = requests.post(standin.url + "/prompt", json={"prompt": prompt}, timeout=5)
    assert r.status_code == 400 and r.json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"

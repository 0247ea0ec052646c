"""Models on the volume, part by part and without SSH: the pod-side program against the model hub
stand-in and the ComfyUI stand-in (both real HTTP servers on loopback), the checks of URLs, names and
hashes, the tokens, and the inventory's ``models:``. End to end through SSH: tests/test_models_sim.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autopod.core.errors import ConfigError, UsageError
from autopod.models import sources
from autopod.models import tokens as tok
from autopod.models.folders import LOADER_INPUTS
from autopod.sim.comfyui_standin import ComfyUIStandin
from autopod.sim.modelhub import ModelHub

ROOT = Path(__file__).resolve().parent.parent
PULLER = ROOT / "autopod" / "models" / "puller.py"
TINY = "https://huggingface.co/autopod-sim/tiny-models/resolve/main/tiny-sd15.safetensors"


# -- the program that runs in the pod -------------------------------------------------------------------


def test_the_pod_program_needs_only_the_standard_library_and_an_older_python():
    tree = ast.parse(PULLER.read_text(), feature_version=(3, 6))  # pods run whatever Python their image has
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the pod program imports from its package"
            names.add((node.module or "").split(".")[0])
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]  # no f-strings: 3.5 images exist too


@pytest.fixture
def pod(tmp_path):
    """A hub, a ComfyUI whose models live on a "volume" folder, and a way to run the program as a pod would."""
    volume = tmp_path / "volume"
    volume.mkdir()
    hub = ModelHub(tmp_path / "hub").start()
    comfy = ComfyUIStandin(root=tmp_path / "comfy", models_dir=volume / "runpod-slim" / "ComfyUI" / "models").start()
    env = {**os.environ, "HF_ENDPOINT": hub.url("hf"), "CIVITAI_ENDPOINT": hub.url("civitai"),
           "AUTOPOD_VOLUME_DIR": str(volume)}

    class Pod:
        def __init__(self):
            self.hub, self.comfy, self.volume, self.env = hub, comfy, volume, env
            self.models = volume / "runpod-slim" / "ComfyUI" / "models"

        def run(self, op: str, **req) -> dict:
            doc = {"op": op, "mount": "/workspace", "comfy_address": f"127.0.0.1:{comfy.port}", "stall_s": 1,
                   "attempts": 2, **req}
            p = subprocess.run([sys.executable, str(PULLER)], input=json.dumps(doc) + "\n", capture_output=True,
                               text=True, env=env, timeout=60)
            lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
            assert lines and lines[-1]["event"] == "result", (p.stdout, p.stderr)
            return lines[-1]

        def served(self, fid: str) -> int:
            return hub.state()["served"][fid]

    yield Pod()
    hub.stop()
    comfy.stop()


def test_pull_verifies_renames_and_comfyui_lists_it_without_a_restart(pod):
    listed_before = json.load(urllib.request.urlopen(pod.comfy.url + "/models/checkpoints"))
    scans = pod.comfy.models.scans
    json.load(urllib.request.urlopen(pod.comfy.url + "/models/checkpoints"))
    assert pod.comfy.models.scans == scans  # ComfyUI's cache: nothing changed, nothing read again
    doc = pod.run("pull", url=TINY, folder="checkpoints")
    assert doc["result"] == "changed" and doc["verified"] and doc["sha256_source"] == "X-Linked-Etag"
    # The file is where worker-comfyui reads the volume; ComfyUI's own folder links to it.
    path = pod.volume / "models" / "checkpoints" / "tiny-sd15.safetensors"
    assert path.stat().st_size == 1_500_000 and doc["path"] == str(path) and not path.is_symlink()
    link = pod.models / "checkpoints" / "tiny-sd15.safetensors"
    assert link.is_symlink() and os.readlink(link) == "../../../../models/checkpoints/tiny-sd15.safetensors"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]
    assert listed_before == [] and doc["listed"] is True
    # The same running ComfyUI, no restart: its lists and the loader's choices show the file.
    assert json.load(urllib.request.urlopen(pod.comfy.url + "/models/checkpoints")) == ["tiny-sd15.safetensors"]
    info = json.load(urllib.request.urlopen(pod.comfy.url + "/object_info/CheckpointLoaderSimple"))
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["tiny-sd15.safetensors"]
    assert pod.comfy.models.scans > scans  # found because the folder's mtime changed, as ComfyUI finds it


def test_a_part_file_is_never_listed_by_comfyui(pod):
    d = pod.models / "loras"
    (d / ".x.safetensors.abc.part").write_bytes(b"half")
    (d / "y.safetensors.part").write_bytes(b"half")
    assert json.load(urllib.request.urlopen(pod.comfy.url + "/models/loras")) == []
    (d / "sub").mkdir()
    (d / "sub" / "z.safetensors").write_bytes(b"whole")
    assert json.load(urllib.request.urlopen(pod.comfy.url + "/models/loras")) == ["sub/z.safetensors"]


def test_legacy_folder_names_map_and_files_go_to_the_workers_folder_names(pod):
    f = pod.hub.add_hf("o/r", "u.safetensors", size=1000)
    doc = pod.run("pull", url=f.public_url(), folder="unet")
    assert doc["folder"] == "diffusion_models" and doc["path"] == str(pod.volume / "models" / "unet" / "u.safetensors")
    assert (pod.models / "unet" / "u.safetensors").is_symlink()  # ComfyUI's first path for diffusion models
    t = pod.hub.add_hf("o/r", "t5.safetensors", size=1000)
    doc = pod.run("pull", url=t.public_url(), folder="text_encoders")
    assert doc["path"] == str(pod.volume / "models" / "clip" / "t5.safetensors")  # not models/text_encoders
    assert os.readlink(pod.models / "text_encoders" / "t5.safetensors") == "../../../../models/clip/t5.safetensors"
    assert json.load(urllib.request.urlopen(pod.comfy.url + "/models/text_encoders")) == ["t5.safetensors"]
    doc = pod.run("pull", url=f.public_url(), folder="nosuchfolder")
    assert doc["result"] == "failed" and doc["code"] == 2 and "no model folder 'nosuchfolder'" in doc["error"]


def test_names_from_content_disposition_and_bad_names_refused(pod):
    doc = pod.run("pull", url="https://civitai.com/api/download/models/1002", folder="checkpoints",
                  tokens={"civitai": "civ-token"})
    assert doc["name"] == "TinyCheckpoint_v2.safetensors"  # the served name, not files[].name
    assert doc["sha256_source"] == "Civitai model-version API" and doc["verified"]
    for bad in ("../x.safetensors", "a/b.safetensors", "x\x1b.safetensors", ".hidden.safetensors"):
        doc = pod.run("pull", url=TINY, folder="checkpoints", name=bad)
        assert doc["result"] == "failed" and doc["code"] == 2, bad
    served = pod.hub.add_hf("o/r", "evil.safetensors", size=100)
    served.name = "..evil.safetensors"  # what the CDN puts in Content-Disposition
    doc = pod.run("pull", url=served.public_url(), folder="loras")
    assert doc["result"] == "failed" and doc["code"] == 2 and "the server names the file" in doc["error"]
    assert pod.served(served.id) == 0


def test_a_download_killed_mid_way_resumes_with_range(pod):
    f = pod.hub.add_hf("o/r", "big.safetensors", size=4_000_000, faults={"slow": 1_000_000, "times": 1})
    doc = pod.run("pull", url=f.public_url(), folder="checkpoints", detach=True)
    assert doc["result"] == "started"
    job = Path(pod.volume / ".autopod" / "models" / "jobs" / doc["job"]["key"] / "job.json")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (json.loads(job.read_text()).get("bytes") or 0) < 500_000:
        time.sleep(0.05)
    os.kill(json.loads(job.read_text())["pid"], 9)
    doc = pod.run("pull", url=f.public_url(), folder="checkpoints")
    assert doc["result"] == "changed" and 0 < doc["resumed_from"] < f.size, doc
    ranges = [r["range"] for r in pod.hub.state()["requests"] if r["file"] == f.id and r["method"] == "GET"
              and r["listener"] == "cdn"]
    assert ranges[0] is None and ranges[-1] == f"bytes={doc['resumed_from']}-"
    assert pod.served(f.id) <= 1.1 * f.size


class _OneWrite:
    """A plain-HTTP server that sends the headers and the first part of the body in one write, so some body
    bytes are already in http.client's buffer when the download takes over the socket; then the rest."""

    def __init__(self, body: bytes, first: int = 3000):
        import socket
        import threading

        self.body, self.first = body, first
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d/m.safetensors" % self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.srv.accept()
        with conn:
            conn.recv(65536)
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                    % len(self.body))
            conn.sendall(head + self.body[:self.first])
            time.sleep(0.05)  # the client has parsed the headers with the first bytes buffered
            conn.sendall(self.body[self.first:])


class _Job:
    last_write = 0.0

    def save(self, force=False, **fields):
        pass


@pytest.mark.parametrize("way", ["splice", "no splice", "file system refuses splice"])
def test_the_download_writes_and_hashes_every_byte_in_order(tmp_path, monkeypatch, way):
    import hashlib

    from autopod.models import puller

    body = os.urandom(5_000_000)
    part = tmp_path / "m.part"
    part.write_bytes(body[:1000])  # a resume: the hash so far covers what is on disk
    h = [hashlib.sha256(body[:1000]), 1000]
    calls = []
    real = getattr(os, "splice", None)
    if way == "no splice":
        monkeypatch.delattr(os, "splice", raising=False)
    elif real is not None:
        def splice(src, dst, count, offset_src=None, offset_dst=None, flags=0):
            calls.append("to file" if offset_dst is not None else "from socket")
            if way == "file system refuses splice" and offset_dst is not None:
                raise OSError(__import__("errno").EINVAL, "refused")
            return real(src, dst, count, offset_src=offset_src, offset_dst=offset_dst, flags=flags)

        monkeypatch.setattr(os, "splice", splice)
    srv = _OneWrite(body[1000:])
    ans = puller.fetch(srv.url, None, None)
    try:
        assert puller.stream(ans, str(part), h, _Job(), 5, [], srv.url) == "done"
    finally:
        ans.close()
    assert part.read_bytes() == body
    assert h[1] == len(body) and h[0].hexdigest() == hashlib.sha256(body).hexdigest()
    if real is None or way == "no splice":
        assert calls == []
    elif way == "splice":
        assert "from socket" in calls and "to file" in calls
    else:
        assert calls.count("to file") == 1  # refused once, then copied through the buffer


def test_following_a_download_wakes_when_it_exits():
    from autopod.models import puller

    r, w = os.pipe()
    pid = os.fork()
    if not pid:
        os.close(r)
        os._exit(0)
    os.close(w)
    child = puller.Child(pid, r)
    t0 = time.monotonic()
    child.nap(60)
    assert time.monotonic() - t0 < 30  # woken by the exit, not by the end of the nap
    assert child.wait(10) == 0 and child.ended is None


def test_without_hf_endpoint_urls_go_to_their_own_host(monkeypatch):
    from autopod.models import puller

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(puller, "_PID1", {})
    assert puller.mapped(TINY) == (TINY, "hf")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/mirror/")
    assert puller.mapped(TINY)[0] == "http://127.0.0.1:9/mirror/autopod-sim/tiny-models/resolve/main/tiny-sd15.safetensors"
    assert puller.mapped("https://example.com/x.bin") == ("https://example.com/x.bin", "other")


def test_the_standin_fills_every_loader_list_it_knows(tmp_path):
    with ComfyUIStandin(root=tmp_path) as c:
        (c.models.models_dir / "loras" / "a.safetensors").write_bytes(b"x")
        (c.models.models_dir / "vae" / "v.sft").write_bytes(b"x")
        full = json.load(urllib.request.urlopen(c.url + "/object_info"))
        known = [(cls, inp) for cls, inp in LOADER_INPUTS if cls in full]
        assert len(known) >= 25
        assert full["LoraLoader"]["input"]["required"]["lora_name"][0] == ["a.safetensors"]
        assert full["VAELoader"]["input"]["required"]["vae_name"][0] == ["v.sft", "pixel_space"]
        assert full["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] == []
        folders = json.load(urllib.request.urlopen(c.url + "/experiment/models"))
        assert {f["name"] for f in folders} >= {"checkpoints", "text_encoders"} and \
            "configs" not in {f["name"] for f in folders}
        items = json.load(urllib.request.urlopen(c.url + "/experiment/models/loras"))
        assert items[0]["name"] == "a.safetensors" and items[0]["size"] == 1 and items[0]["pathIndex"] == 0


# -- checks on this side --------------------------------------------------------------------------------


def test_urls_blob_pages_become_resolve_links_and_bad_ones_are_refused():
    assert sources.check_url("https://huggingface.co/o/r/blob/main/x.safetensors") == \
        "https://huggingface.co/o/r/resolve/main/x.safetensors"
    assert sources.check_url("https://huggingface.co/datasets/o/r/blob/main/x.bin") == \
        "https://huggingface.co/datasets/o/r/resolve/main/x.bin"
    for bad in ("ftp://x/y", "https://", "notaurl", "https://u:p@huggingface.co/x", "https://x/ y",
                "https://civitai.com/api/download/models/1?token=abc", "https://x:99999/y"):
        with pytest.raises(UsageError):
            sources.check_url(bad)


def test_folder_names_and_hashes():
    assert sources.check_folder("clip") == "text_encoders" and sources.check_folder("loras") == "loras"
    assert sources.folder_from_url("https://huggingface.co/Comfy-Org/x/resolve/main/split_files/vae/v.safetensors") \
        == "vae"
    assert sources.folder_from_url("https://huggingface.co/o/r/resolve/main/x.safetensors") is None
    assert sources.check_sha256("SHA256:" + "AB" * 32) == "ab" * 32
    for bad in ("../x", "a b", ""):
        with pytest.raises(UsageError):
            sources.check_folder(bad)
    with pytest.raises(UsageError, match="64 hexadecimal"):
        sources.check_sha256("abc")
    with pytest.raises(UsageError, match="'/'"):
        sources.check_name("a/b.safetensors")


def test_tokens_come_from_the_environment_first_then_config_yaml(autopod_home, monkeypatch):
    for v in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_TOKEN"):
        monkeypatch.delenv(v, raising=False)
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "config.yaml").write_text("hf_token: hf_fromfile\ncivitai_api_token: civ_fromfile\n")
    assert tok.tokens() == {"hf": "hf_fromfile", "civitai": "civ_fromfile"}
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_older")
    assert tok.tokens()["hf"] == "hf_older"
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    assert tok.tokens()["hf"] == "hf_fromenv"
    from autopod.core.log import redact

    assert redact("a hf_fromenv b civ_fromfile") == "a *** b ***"  # never in a log line
    monkeypatch.setenv("CIVITAI_API_TOKEN", "two words")
    with pytest.raises(ConfigError, match="CIVITAI_API_TOKEN must be the token alone") as e:
        tok.tokens()
    assert "two words" not in str(e.value)


def test_the_inventory_refuses_tokens_and_checks_models(tmp_path):
    from autopod.core.inventory import load_inventory

    inv = tmp_path / "inv.yml"
    inv.write_text("defaults:\n  hf_token: hf_x\n")
    with pytest.raises(ConfigError, match=r"inv.yml:2: 'hf_token' is a secret: put it in config.yaml"):
        load_inventory(inv)
    inv.write_text("pods:\n  p:\n    models:\n      - {url: 'https://huggingface.co/o/r/resolve/main/x.safetensors', "
                   "folder: checkpoints, sha256: '" + "a" * 64 + "'}\n")
    assert load_inventory(inv).pods["p"]["models"][0]["folder"] == "checkpoints"
    for bad, msg in [
        ("[x]", "must be a mapping like"),
        ("[{folder: checkpoints}]", "needs 'url'"),
        ("[{url: 'https://a/b'}]", "needs 'folder'"),
        ("[{url: 'ftp://a/b', folder: x}]", "must be an http"),
        ("[{url: 'https://a/b', folder: '../x'}]", "must be a ComfyUI model folder name"),
        ("[{url: 'https://a/b', folder: x, name: '../y'}]", "must be a file name"),
        ("[{url: 'https://a/b', folder: x, sha256: abc}]", "64 hexadecimal"),
        ("[{url: 'https://a/b', folder: x, size: 3}]", "unknown key 'size'"),
        ("[{url: 'https://a/b', folder: x}, {url: 'https://a/b', folder: x}]", "repeats the model of item 1"),
    ]:
        inv.write_text(f"defaults:\n  models: {bad}\n")
        with pytest.raises(ConfigError, match=msg):
            load_inventory(inv)


def test_declared_models_merge_config_defaults_and_pod_spec():
    from autopod.runpod.spec import declared_models

    a = {"url": "https://h/a.safetensors", "folder": "vae"}
    b = {"url": "https://h/b.safetensors", "folder": "checkpoints", "name": "b.safetensors"}
    b2 = {**b, "url": "https://mirror/b.safetensors"}
    assert declared_models({"models": [a]}, {"models": [b]}, {"models": [b2]}) == [a, b2]


def test_a_pull_abandoned_for_a_week_is_forgotten_with_its_part_file(pod):
    f = pod.hub.add_hf("o/r", "old.safetensors", size=2_000_000, faults={"stall_at": 500_000})
    doc = pod.run("pull", url=f.public_url(), folder="loras")
    assert doc["result"] == "failed" and "stopped sending" in doc["error"]
    jobs = list((pod.volume / ".autopod" / "models" / "jobs").glob("*/job.json"))
    job = json.loads(jobs[0].read_text())
    assert Path(job["part"]).stat().st_size == 500_000  # kept: the next pull resumes from it
    assert [j["status"] for j in pod.run("status")["jobs"]] == ["failed"]
    job["finished_at"] = job["heartbeat"] = time.time() - 8 * 86400
    jobs[0].write_text(json.dumps(job))
    assert pod.run("status")["jobs"] == []
    assert not Path(job["part"]).exists() and not jobs[0].parent.exists()


def test_job_files_declare_models_checked_like_model_pull(tmp_path):
    from autopod.comfy.jobfile import load_job
    from autopod.comfy.workflow import WorkflowError

    (tmp_path / "wf.json").write_text("{}")
    job = tmp_path / "job.yml"
    job.write_text("workflow: wf.json\nmodels:\n  - url: https://huggingface.co/o/r/blob/main/x.safetensors\n"
                   "    folder: clip\n")
    assert load_job(job).models == [{"url": "https://huggingface.co/o/r/resolve/main/x.safetensors",
                                     "folder": "text_encoders", "name": None, "sha256": None}]
    for bad, msg in [("  - {url: 'https://h/x'}\n", "needs 'url' and 'folder'"),
                     ("  - {url: 'https://h/x', folder: vae, name: ../x}\n", "invalid --name"),
                     ("  - {url: 'https://h/x', folder: vae, size: 3}\n", "unknown key 'size'"),
                     ("  - https://h/x\n", "must be a mapping")]:
        job.write_text("workflow: wf.json\nmodels:\n" + bad)
        with pytest.raises(WorkflowError, match=msg) as e:
            load_job(job)
        assert str(e.value).startswith(f"{job}:3: ")


def test_editor_needs_follow_the_editors_rule():
    from autopod.comfy.needs import editor_needs, loader_needs
    from autopod.comfy.workflow import Workflow

    url = "https://huggingface.co/o/r/resolve/main/a.safetensors"
    node = {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["a.safetensors"],
            "properties": {"models": [{"name": "a.safetensors", "url": url, "directory": "checkpoints",
                                       "hash": "AB" * 32, "hash_type": "SHA256"},
                                      {"name": "b.safetensors", "url": url, "directory": "checkpoints"},
                                      {"name": "a.safetensors", "url": url, "directory": "../x"}]}}
    sub = {"id": 9, "type": "UNETLoader", "widgets_values": ["u.safetensors", "default"],
           "properties": {"models": [{"name": "u.safetensors", "url": url, "directory": "unet"}]}}
    wf = Workflow(None, "ui", {"nodes": [node], "definitions": {"subgraphs": [{"id": "s", "nodes": [sub]}]},
                               "models": [{"name": "w.safetensors", "url": url, "directory": "vae"}]})
    needs = {(n.folder, n.name): n for n in editor_needs(wf)}
    assert set(needs) == {("checkpoints", "a.safetensors"), ("diffusion_models", "u.safetensors"),
                          ("vae", "w.safetensors")}  # b is in no widget; '../x' is no folder
    assert needs["checkpoints", "a.safetensors"].sha256 == "ab" * 32
    api = {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "l.safetensors", "model": ["2", 0]}},
           "2": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    assert [(n.folder, n.name, n.url) for n in loader_needs(api, "x")] == [("loras", "l.safetensors", None)]


def test_a_file_pulled_into_comfyuis_folder_before_is_moved_where_workers_see_it(pod):
    f = pod.hub.add_hf("o/r", "old.safetensors", size=1000)
    old = pod.models / "loras" / "old.safetensors"
    data = Path(f.disk).read_bytes()
    old.write_bytes(data)
    before = pod.run("list", folder="loras")["models"]
    assert before[0]["worker"] == {"sees": False, "path": None,
                                   "why": "in runpod-slim/ComfyUI/models/loras, outside models/ on the volume: "
                                          "worker-comfyui reads only models/{checkpoints,clip,clip_vision,configs,"
                                          "controlnet,embeddings,loras,unet,upscale_models,vae}"}
    doc = pod.run("pull", url=f.public_url(), folder="loras")
    shared = pod.volume / "models" / "loras" / "old.safetensors"
    assert doc["result"] == "ok" and doc["path"] == str(shared) and shared.read_bytes() == data
    assert old.is_symlink() and pod.served(f.id) == 0  # moved on the volume, not downloaded again
    (row,) = pod.run("list", folder="loras")["models"]
    assert row["worker"] == {"sees": True, "path": "/runpod-volume/models/loras/old.safetensors", "why": None}


def test_worker_view_names_the_folders_worker_comfyui_does_not_read(tmp_path):
    from autopod.models.folders import WORKER_FOLDERS

    spec = importlib.util.spec_from_file_location("puller_for_view", PULLER)
    puller = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(puller)
    assert puller.WORKER_FOLDERS == WORKER_FOLDERS  # the pod program keeps its own copy of the table
    vol = tmp_path / "vol"
    for rel in ("models/text_encoders/t.safetensors", "models/model_patches/p.safetensors", "models/clip/c.sft"):
        (vol / rel).parent.mkdir(parents=True, exist_ok=True)
        (vol / rel).write_bytes(b"1")
    view = puller.worker_view
    assert view(str(vol / "models/text_encoders/t.safetensors"), str(vol))["why"] == \
        "worker-comfyui 5.8.5 does not read models/text_encoders (it reads models/clip)"
    assert view(str(vol / "models/model_patches/p.safetensors"), str(vol))["why"] == \
        "worker-comfyui 5.8.5 does not read models/model_patches at all"
    assert view(str(vol / "models/clip/c.sft"), str(vol))["path"] == "/runpod-volume/models/clip/c.sft"
    assert view(str(tmp_path / "elsewhere.safetensors"), str(vol))["why"] == "not on the network volume"


def test_rm_removes_the_file_and_comfyuis_link(pod):
    doc = pod.run("pull", url=TINY, folder="checkpoints")
    shared, link = Path(doc["path"]), pod.models / "checkpoints" / "tiny-sd15.safetensors"
    gone = pod.run("rm", name="tiny-sd15.safetensors", folder="checkpoints")
    assert gone["result"] == "changed" and not shared.exists() and not os.path.lexists(link)
    assert json.load(urllib.request.urlopen(pod.comfy.url + "/models/checkpoints")) == []

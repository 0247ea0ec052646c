"""Real ComfyUI clients run unchanged against the stand-in, directly and through an autopod SSH tunnel.

* a client written the way ComfyUI's ``script_examples/websockets_api_example.py`` works
  (websocket-client, urllib, wait for ``executing`` with ``node: null``, then history and /view);
* Comfy-Org's comfy-cli: ``comfy run --workflow F --host H --port P --wait``, API and UI format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket
from comfy_fixtures import sim, wait_history  # noqa: F401  (fixtures)
from sshd_server import comfy_behind_host, require_sshd

from autopod.sim.comfyui import images as im
from autopod.sim.comfyui_standin import ComfyUIStandin

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 2, "color": 0xFF8000}},
    "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": 0.2, "steps": 4}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 3, "sigma": 1.0}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "example"}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def example_client(server_address: str, prompt: dict) -> tuple[dict[str, list[bytes]], list[str]]:
    """ComfyUI's script-style client: returns ({node_id: [file bytes]}, message types seen)."""
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_address}/ws?clientId={client_id}")
    try:
        body = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
        req = urllib.request.Request(f"http://{server_address}/prompt", data=body)
        prompt_id = json.loads(urllib.request.urlopen(req, timeout=10).read())["prompt_id"]
        seen = []
        while True:
            out = ws.recv()
            if not isinstance(out, str):
                continue  # binary preview frames
            message = json.loads(out)
            seen.append(message["type"])
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    break
        with urllib.request.urlopen(f"http://{server_address}/history/{prompt_id}", timeout=10) as r:
            history = json.loads(r.read())[prompt_id]
        files: dict[str, list[bytes]] = {}
        for node_id, node_output in history["outputs"].items():
            for image in node_output.get("images", []):
                query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                                "type": image["type"]})
                with urllib.request.urlopen(f"http://{server_address}/view?{query}", timeout=10) as r:
                    files.setdefault(node_id, []).append(r.read())
        return files, seen
    finally:
        ws.close()


def check_example_result(files: dict[str, list[bytes]], seen: list[str]) -> None:
    assert sorted(files) == ["4", "5"] and [len(v) for v in (files["4"], files["5"])] == [2, 2]
    for data in files["4"] + files["5"]:
        png = im.decode(data)
        assert (png.width, png.height, png.rgb[:3]) == (48, 32, b"\xff\x80\x00")  # blurring a solid keeps it
    assert seen.count("progress") == 4 and seen[-1] == "executing" and "execution_success" in seen


def test_comfyuis_example_client_runs_directly(sim):
    check_example_result(*example_client(f"127.0.0.1:{sim.port}", WORKFLOW))


@pytest.fixture
def tunneled(request, tmp_path, monkeypatch, autopod_home, cli):
    """A stand-in (with its nodes) behind inventory host "gpu" (the test sshd), and an autopod tunnel to it."""
    require_sshd()
    sshd = request.getfixturevalue("sshd")
    key = request.getfixturevalue("ssh_user_key")
    with ComfyUIStandin(sim_nodes=True, root=tmp_path / "comfyui") as standin, \
            comfy_behind_host(sshd, key, standin.port, tmp_path / "inventory.yml", monkeypatch, autopod_home):
        r = cli("tunnel.start", "--pod", "gpu", "--json")
        assert r.code == 0, r.err
        port = r.json["local_port"]
        assert port != standin.port
        yield standin, port


@pytest.mark.sshd
def test_comfyuis_example_client_runs_through_an_autopod_tunnel(tunneled):
    standin, port = tunneled
    check_example_result(*example_client(f"127.0.0.1:{port}", WORKFLOW))
    assert ("GET", "/ws") in standin.requests  # the WebSocket went through the tunnel to the stand-in


# -- comfy-cli -----------------------------------------------------------------------------------

UI_WORKFLOW = {  # what ComfyUI's "Save" writes (not "Export (API)"): comfy-cli converts it with /object_info
    "last_node_id": 3, "last_link_id": 2, "version": 0.4,
    "nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [40, 24, 1, 0x00FF00]},
        {"id": 2, "type": "AutopodSleep", "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": [0.1, 2]},
        {"id": 3, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 2}],
         "outputs": [], "widgets_values": ["fromui"]},
    ],
    "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
}


@pytest.fixture
def comfy_cli(tmp_path, refused_proxy):
    """Run Comfy-Org's comfy-cli as a subprocess that never asks and never phones home.

    Its telemetry consent lives in ``$HOME/.config/comfy-cli/config.ini`` (``enable_tracking``); HOME is a
    scratch folder in tests (conftest), the file says False, DO_NOT_TRACK / COMFY_NO_TELEMETRY turn every
    tracking path off before it starts, ``--skip-prompt`` and a closed stdin rule out questions, and a proxy
    that refuses connections stops any other outbound HTTP (loopback is exempt)."""
    pytest.importorskip("comfy_cli")
    config = Path(os.environ["HOME"]) / ".config" / "comfy-cli"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.ini").write_text("[DEFAULT]\nenable_tracking = False\n")
    env = {**os.environ, "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "HTTP_PROXY": refused_proxy,
           "HTTPS_PROXY": refused_proxy, "http_proxy": refused_proxy, "https_proxy": refused_proxy,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)

    yield run
    assert (config / "config.ini").read_text() == "[DEFAULT]\nenable_tracking = False\n"  # no id, no consent


@pytest.fixture
def refused_proxy():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def envelope(p: subprocess.CompletedProcess) -> dict:
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["type"] == "envelope", p.stdout + p.stderr
    return lines[-1]


@pytest.mark.sshd
def test_comfy_cli_runs_api_and_ui_workflows_through_an_autopod_tunnel(tunneled, comfy_cli, tmp_path):
    standin, port = tunneled
    api = tmp_path / "api.json"
    api.write_text(json.dumps(WORKFLOW))
    p = comfy_cli("run", "--workflow", str(api), "--host", "127.0.0.1", "--port", str(port), "--wait")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = envelope(p)
    assert doc["ok"] is True and doc["data"]["status"] == "completed"
    entry = wait_history(standin.url, doc["data"]["prompt_id"])
    names = sorted(i["filename"] for o in entry["outputs"].values() for i in o["images"])
    assert [u.split("filename=")[1].split("&")[0] for u in sorted(doc["data"]["outputs"])] == names
    assert set(doc["data"]["executed_node_ids"]) == {"1", "2", "3", "4", "5"}

    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(UI_WORKFLOW))
    p = comfy_cli("--json-stream", "run", "--workflow", str(ui), "--host", "127.0.0.1", "--port", str(port), "--wait")
    assert p.returncode == 0, p.stdout + p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [e["type"] for e in events][:3] == ["converted", "prompt_preview", "queued"]
    assert any(e["type"] == "progress" for e in events)
    done = events[-1]
    assert done["ok"] is True
    png = im.decode((standin.root / "output" / "fromui_00001_.png").read_bytes())
    assert (png.width, png.height, png.rgb[:3]) == (40, 24, b"\x00\xff\x00")


@pytest.mark.sshd
def test_comfy_cli_reports_a_failing_node_with_exit_1(tunneled, comfy_cli, tmp_path):
    _, port = tunneled
    failing = {"1": WORKFLOW["1"], "2": {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "no"}},
               "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "never"}}}
    wf = tmp_path / "fail.json"
    wf.write_text(json.dumps(failing))
    p = comfy_cli("run", "--workflow", str(wf), "--host", "127.0.0.1", "--port", str(port), "--wait")
    assert p.returncode == 1, p.stdout + p.stderr
    doc = envelope(p)
    assert doc["ok"] is False and doc["error"]["details"]["class_type"] == "AutopodFail"

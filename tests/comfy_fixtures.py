"""ComfyUI fixtures shared by the client, stand-in and task tests, and helpers to drive a stand-in."""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
import requests

from autopod.sim.comfyui_standin import DATA_DIR, ComfyUIStandin


def recorded(name: str):
    """A recording of the real ComfyUI 0.3.64: {request, status, headers, body}."""
    return json.loads((DATA_DIR / f"{name}.json").read_text())


@pytest.fixture
def standin():
    """An idle ComfyUI stand-in (fresh state: empty queue and history), the recorded 477 node types."""
    with ComfyUIStandin() as s:
        yield s


@pytest.fixture
def busy():
    """A stand-in with the recorded busy queue (1 running, 4 pending) and history (11 entries)."""
    with ComfyUIStandin(state="busy") as s:
        yield s


@pytest.fixture
def sim(tmp_path):
    """An idle stand-in with its own nodes (AutopodSleep, ...) and its folders under tmp_path/comfyui."""
    with ComfyUIStandin(sim_nodes=True, root=tmp_path / "comfyui") as s:
        yield s


@pytest.fixture
def refused_url():
    """A loopback URL nobody listens on (the port stays bound, never listening, so nobody else takes it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


# -- workflows -----------------------------------------------------------------------------------

def empty_save(prefix: str = "ref", *, color: int = 0, width: int = 64, height: int = 64, batch: int = 1) -> dict:
    """The recorded prompt_ok workflow: EmptyImage -> SaveImage."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def sleep_save(seconds: float = 0.2, steps: int = 4, prefix: str = "slept") -> dict:
    """EmptyImage -> AutopodSleep -> SaveImage (needs sim_nodes)."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 5}},
            "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


# -- driving a stand-in --------------------------------------------------------------------------

def post_prompt(url: str, prompt: dict, **body) -> requests.Response:
    return requests.post(url + "/prompt", json={"prompt": prompt, **body}, timeout=10)


def queue(url: str, prompt: dict, client_id: str | None = None, **body) -> str:
    if client_id is not None:
        body["client_id"] = client_id
    r = post_prompt(url, prompt, **body)
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


def wait_history(url: str, prompt_id: str, timeout: float = 10.0) -> dict:
    """The history entry of a prompt, once it has finished (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = requests.get(f"{url}/history/{prompt_id}", timeout=5).json()
        if prompt_id in doc:
            return doc[prompt_id]
        assert time.monotonic() < deadline, f"prompt {prompt_id} did not finish within {timeout}s"
        time.sleep(0.02)


def wait_until(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.02)


class WS:
    """A websocket-client connection that keeps every message it reads."""

    def __init__(self, url: str, client_id: str | None = None, *, path: str = "/ws", timeout: float = 10.0):
        import websocket

        self.client_id = client_id if client_id is not None else uuid.uuid4().hex
        base = url.replace("http://", "ws://")
        self.ws = websocket.WebSocket()
        query = f"?clientId={self.client_id}" if self.client_id else ""
        self.ws.connect(f"{base}{path}{query}", timeout=timeout)
        self.messages: list[dict] = []

    def recv(self) -> dict:
        msg = json.loads(self.ws.recv())
        self.messages.append(msg)
        return msg

    def until(self, pred, limit: int = 10000) -> list[dict]:
        """Read until ``pred(msg)``; returns the messages read by this call (the last one matched)."""
        got = []
        for _ in range(limit):
            m = self.recv()
            got.append(m)
            if pred(m):
                return got
        raise AssertionError(f"no matching message in {limit}")

    def until_done(self, prompt_id: str) -> list[dict]:
        """Everything up to ``executing {node: null}`` for this prompt (how ComfyUI's examples wait)."""
        return self.until(lambda m: m["type"] == "executing" and m["data"].get("node") is None
                          and m["data"].get("prompt_id") == prompt_id)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "WS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shape(messages: list[dict]) -> list[tuple]:
    """A comparable outline of WebSocket messages: type, data keys, and progress_state's node states."""
    out = []
    for m in messages:
        data = m.get("data") or {}
        if m["type"] == "progress_state":
            out.append(("progress_state", tuple(sorted(data)),
                        tuple((k, v["state"], tuple(sorted(v))) for k, v in data["nodes"].items())))
        else:
            out.append((m["type"], tuple(sorted(data))))
    return out


def recorded_ws(name: str) -> list[dict]:
    return [f["msg"] for f in recorded(name)["body"] if "msg" in f]

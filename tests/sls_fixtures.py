"""Driving the simulator's RunPod Serverless over real HTTP: an endpoint's REST v2 calls, its job API and the
``/_sim/serverless`` hooks."""

from __future__ import annotations

import base64
import time
from typing import Any, Callable

import pytest
import requests

from autopod.sim.runpod_standin import RunPodStandin

KEY = "sls-test-key"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def sleep_save(seconds: float = 0.0, prefix: str = "sls", color: int = 5, size: int = 16) -> dict:
    """EmptyImage -> AutopodSleep -> SaveImage: one PNG after ``seconds``."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                          "color": color}},
            "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 2}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def endpoint_body(name: str = "sls", **over: Any) -> dict:
    body = {"name": name, "type": "QUEUE", "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "image": "runpod/worker-comfyui:5.8.5-base", "gpu": {"pools": ["ADA_24"], "count": 1},
            "workers": {"min": 0, "max": 2, "idleTimeout": 5}, "timeout": 600000, "flashboot": "OFF"}
    body.update(over)
    return body


def wait_for(fn: Callable[[], Any], timeout: float = 15.0, every: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class Sls:
    """A started stand-in and a session with its key."""

    def __init__(self, standin: RunPodStandin):
        self.standin = standin
        self.url = standin.url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {KEY}"

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def control(self, settings: dict | None = None, faults: dict | None = None) -> dict:
        r = self.call("POST", "/_sim/serverless", json={"settings": settings or {}, "faults": faults or {}})
        assert r.status_code == 200, r.text
        return r.json()

    def create(self, **over: Any) -> dict:
        r = self.call("POST", "/v2/serverless", json=endpoint_body(**over))
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, eid: str, inp: Any, **body: Any) -> str:
        r = self.call("POST", f"/v2/{eid}/run", json={"input": inp, **body})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "IN_QUEUE"
        return r.json()["id"]

    def status(self, eid: str, jid: str) -> dict:
        r = self.call("GET", f"/v2/{eid}/status/{jid}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, eid: str, jid: str, timeout: float = 15.0, until: set[str] = TERMINAL) -> dict:
        return wait_for(lambda: (lambda d: d if d["status"] in until else None)(self.status(eid, jid)),
                        timeout, what=f"job {jid} to reach {sorted(until)}")

    def health(self, eid: str) -> dict:
        return self.call("GET", f"/v2/{eid}/health").json()

    def workers(self, eid: str) -> dict:
        r = self.call("GET", f"/v2/serverless/{eid}/workers")
        assert r.status_code == 200, r.text
        return r.json()

    def ticks(self, n: int) -> None:
        """Wait until the platform's clock has run ``n`` more times (to see that something does not happen)."""
        start = self.call("GET", "/_sim/serverless").json()["ticks"]
        wait_for(lambda: self.call("GET", "/_sim/serverless").json()["ticks"] >= start + n, what=f"{n} ticks")

    def jobs_log(self, eid: str | None = None) -> list[dict]:
        return self.call("GET", "/_sim/serverless/jobs", params={"endpoint": eid} if eid else None).json()["jobs"]


@pytest.fixture
def sls(tmp_path):
    standin = RunPodStandin(api_key=KEY, root=tmp_path / "sim").start()
    client = Sls(standin)
    client.control(settings={"sls_cold_start_s": 0.05})
    yield client
    standin.stop()


def png_of(image: dict) -> bytes:
    assert image["type"] == "base64"
    data = base64.b64decode(image["data"])
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data

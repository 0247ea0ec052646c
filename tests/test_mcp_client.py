"""RunPod's own REST v2 client works against the stand-in unchanged: its MCP server
(npm @runpod/mcp-server 4.0.0, pinned in tests/mcp/package.json), driven over stdio JSON-RPC.

Only tools whose requests go to RUNPOD_API_BASE_URL are called: pods and network volumes. The
package's only other request in these calls would be analytics, which it sends only when
POSTHOG_API_KEY is set; the first test checks both facts in its source, so nothing leaves the machine.
Needs Node.js and `npm ci --prefix tests/mcp` (CI does both); without them the tests skip, but not under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

from autopod.sim.runpod_standin import RunPodStandin

SERVER = ROOT / "tests" / "mcp" / "node_modules" / "@runpod" / "mcp-server" / "dist" / "stdio.mjs"


def _need_server() -> None:
    missing = []
    if not shutil.which("node"):
        missing.append("Node.js")
    if not SERVER.exists():
        missing.append("the package (npm ci --prefix tests/mcp)")
    if missing:
        why = f"RunPod's MCP server needs {' and '.join(missing)}"
        if IN_CI:
            pytest.fail(why + " (CI installs them)")
        pytest.skip(why)


def test_the_client_sends_only_to_the_base_url_we_give_it():
    _need_server()
    src = SERVER.read_text(encoding="utf-8")
    assert "process.env.RUNPOD_API_BASE_URL" in src  # the REST origin (A7.1)
    assert "if (!posthogKey) return;" in src  # analytics only with POSTHOG_API_KEY, which the tests never set


class Client:
    def __init__(self, url: str, tmp: Path):
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "RUNPOD_API_KEY": "sim-key",
               "RUNPOD_API_BASE_URL": url, "POSTHOG_HOST": "http://127.0.0.1:9"}
        self.proc = subprocess.Popen(["node", str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        self.n = 0
        init = self.rpc("initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                                       "clientInfo": {"name": "autopod-tests", "version": "1"}})
        assert init["result"]["serverInfo"]["version"].startswith("4.0.0")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def rpc(self, method: str, params: dict) -> dict:
        self.n += 1
        self.send({"jsonrpc": "2.0", "id": self.n, "method": method, "params": params})
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("the MCP server exited: " + self.proc.stderr.read()[-2000:])
            doc = json.loads(line)
            if doc.get("id") == self.n:
                return doc

    def tool(self, name: str, **arguments) -> object:
        res = self.rpc("tools/call", {"name": name, "arguments": arguments})["result"]
        text = res["content"][0]["text"]
        assert not res.get("isError"), f"{name}: {text}"
        return json.loads(text) if text.strip() else None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def client(tmp_path):
    _need_server()
    with RunPodStandin(api_key="sim-key") as s:
        c = Client(s.url, tmp_path)
        try:
            yield c, s
        finally:
            c.close()


def test_pods_through_runpods_own_rest_client(client):
    c, s = client
    assert c.tool("list-pods") == {"pods": []}
    body = {"name": "from-mcp", "image": "runpod/comfyui:latest", "gpu": {"id": "NVIDIA RTX A40", "count": 1},
            "ports": ["8188/http", "22/tcp"], "disk": 20, "dataCenterIds": ["EU-RO-1"],
            "mounts": {"network": [{"volumeId": "otvpjuryez", "path": "/workspace"}]}}
    made = c.tool("create-pod", body=body)
    pid = made["id"]
    assert made["name"] == "from-mcp" and made["gpu"]["count"] == 1 and s.world.pods[pid]["name"] == "from-mcp"
    got = c.tool("get-pod", id=pid)
    assert got["id"] == pid and got["mounts"]["network"][0]["volumeId"] == "otvpjuryez"
    assert [p["id"] for p in c.tool("list-pods")["pods"]] == [pid]
    assert c.tool("pod-action", id=pid, body={"action": "stop"})["status"] == "EXITED"
    assert s.world.pods[pid]["desiredStatus"] == "EXITED"
    assert c.tool("pod-action", id=pid, body={"action": "start"})["status"] == "RUNNING"
    c.tool("delete-pod", id=pid)
    assert pid not in s.world.pods
    # autopod sees what RunPod's client did, and the other way round: one world
    assert s.world.requests["rest"]["POST /v2/pods"] == 1


def test_network_volumes_through_runpods_own_rest_client(client):
    c, s = client
    names = {v["name"] for v in c.tool("list-network-volumes")["networkVolumes"]}
    assert {"comfy-models", "datasets"} <= names
    made = c.tool("create-network-volume", body={"name": "mcp-vol", "size": 10, "dataCenter": "US-KS-2"})
    vid = made["id"]
    assert s.world.network_volumes[vid]["name"] == "mcp-vol"
    assert c.tool("get-network-volume", id=vid)["dataCenter"] == "US-KS-2"
    c.tool("delete-network-volume", id=vid)
    assert vid not in s.world.network_volumes

"""Simulated pods get an executing ComfyUI stand-in, and ``sim.start --comfy-ws-drop N`` reaches every one of them."""

from __future__ import annotations

import json

import pytest
import requests
from comfy_fixtures import queue, sleep_save, wait_history, wait_until
from sshd_server import require_sshd
from test_simulator import autopod, sim_env, sim_world, volume_id  # noqa: F401  (sim_env is a fixture)

from autopod.sim.backend import COMFY_ADDRESS_ENV, LocalPodBackend, comfy_faults_file


def faults(address: str) -> dict:
    return requests.get(f"http://{address}/_sim/faults", timeout=5).json()


def test_every_pod_gets_its_own_executing_stand_in_with_the_fault(tmp_path):
    backend = LocalPodBackend(tmp_path, comfy_ready_after=0, comfy_ws_drop_after=4)
    try:
        address = backend.start({"id": "pod1", "env": []})["env"][COMFY_ADDRESS_ENV]
        assert faults(address)["ws_drop_after"] == 4
        url = f"http://{address}"
        pid = queue(url, sleep_save(seconds=0.05, steps=2, prefix="onpod"))
        assert wait_history(url, pid)["status"]["status_str"] == "success"
        assert (tmp_path / "pod1" / "comfyui" / "output" / "onpod_00001_.png").is_file()  # in the pod's folder
        # A running simulator's change: a file for stand-ins that start (or start listening) later.
        comfy_faults_file(tmp_path).write_text(json.dumps({"ws_drop_after": 7}))
        assert faults(backend.start({"id": "pod2", "env": []})["env"][COMFY_ADDRESS_ENV])["ws_drop_after"] == 7
        late = LocalPodBackend(tmp_path, comfy_ready_after=0.5)
        try:
            address = late.start({"id": "pod3", "env": []})["env"][COMFY_ADDRESS_ENV]
            comfy_faults_file(tmp_path).write_text(json.dumps({"ws_drop_after": 9}))  # while it "boots"
            assert wait_until(lambda: _faults_or_none(address), what="pod3 listening")["ws_drop_after"] == 9
        finally:
            late.close()
    finally:
        backend.close()


def _faults_or_none(address: str) -> dict | None:
    try:
        return faults(address)
    except requests.ConnectionError:
        return None


def test_sim_start_rejects_a_negative_drop(cli):
    r = cli("sim.start", "--comfy-ws-drop", "-1")
    assert r.code == 2 and "--comfy-ws-drop" in r.err


@pytest.mark.sshd
def test_sim_start_flag_reaches_each_pods_stand_in_at_start_and_while_running(sim_env):  # noqa: F811
    require_sshd()
    start = autopod(sim_env, "sim.start", "--comfy-ready-after", "0", "--comfy-ws-drop", "3")
    assert start.returncode == 0, start.stderr
    created = autopod(sim_env, "pod.create", "--name", "drops", "--volume-id", volume_id(sim_env))
    assert created.returncode == 0, created.stderr
    [pod] = sim_world(sim_env)["pods"].values()
    address = dict(e.split("=", 1) for e in pod["env"])[COMFY_ADDRESS_ENV]
    assert faults(address)["ws_drop_after"] == 3
    assert "AutopodBigFile" in requests.get(f"http://{address}/object_info", timeout=5).json()
    status = autopod(sim_env, "sim.status", "--json")
    assert json.loads(status.stdout)["faults"]["comfy_ws_drop"] == 3
    off = autopod(sim_env, "sim.start", "--comfy-ws-drop", "0", "--json")
    assert off.returncode == 0 and json.loads(off.stdout)["changed"] is True, off.stderr
    assert faults(address)["ws_drop_after"] == 0
    assert "comfy_ws_drop" not in json.loads(autopod(sim_env, "sim.status", "--json").stdout)["faults"]

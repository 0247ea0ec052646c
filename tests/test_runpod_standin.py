"""The RunPod stand-in, driven through the real runpod SDK (1.12.0) over HTTP."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest
import requests

from autopod.sim.runpod_standin import NO_CAPACITY, NOT_ENOUGH_GPUS, SSH_BANNER, RunPodStandin, default_world

KEY = "sim-key"
A40 = "NVIDIA RTX A40"


@pytest.fixture(scope="module")
def rp():
    import runpod  # ~1.5 s: once per module

    return runpod


@pytest.fixture
def standin(rp, monkeypatch):
    monkeypatch.setattr(rp, "api_key", KEY)
    with RunPodStandin(api_key=KEY) as s:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", s.url)
        yield s


def gql(query: str) -> dict:
    from runpod.api.graphql import run_graphql_query

    return run_graphql_query(query)["data"]


def volume_id(standin, name: str) -> str:
    return next(k for k, v in standin.world.network_volumes.items() if v["name"] == name)


def create(rp, standin, **kw):
    args = dict(name="comfy", image_name="runpod/comfyui:latest", gpu_type_id=A40, cloud_type="SECURE",
                ports="22/tcp,8188/http", volume_mount_path="/workspace")
    args.update(kw)
    return rp.create_pod(**args)


def ssh_port(pod: dict) -> int:
    return next(p["publicPort"] for p in pod["runtime"]["ports"] if p["privatePort"] == 22 and p["isIpPublic"])


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        c.settimeout(2)
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
        return data


# --- reads -------------------------------------------------------------------


def test_get_gpus_lists_runpod_ids_and_names(rp, standin):
    gpus = {g["id"]: g for g in rp.get_gpus()}
    assert gpus[A40] == {"id": A40, "displayName": "RTX A40", "memoryInGb": 48}
    assert gpus["NVIDIA GeForce RTX 4090"]["displayName"] == "RTX 4090"
    assert gpus["NVIDIA H100 80GB HBM3"]["displayName"] == "H100 SXM"


def test_get_gpu_answers_every_field_the_sdk_asks(rp, standin):
    g = rp.get_gpu("NVIDIA GeForce RTX 4090", 2)
    assert g["id"] == "NVIDIA GeForce RTX 4090" and g["memoryInGb"] == 24
    assert g["secureCloud"] is True and g["communityCloud"] is True
    assert g["securePrice"] == 0.69 and g["lowestPrice"]["uninterruptablePrice"] == 0.34
    with pytest.raises(ValueError, match="No GPU found"):
        rp.get_gpu("NVIDIA Imaginary 9000")


def test_stock_status_follows_free_gpus(standin):
    with standin.world.lock:
        standin.world.data_centers["EU-RO-1"]["stock"][A40] = 2
        standin.world.data_centers["US-KS-2"]["stock"][A40] = 9
    data = gql('{ gpuTypes(input: {id: "NVIDIA RTX A40"}) {'
               ' ro: lowestPrice(input: {gpuCount: 1, secureCloud: true, dataCenterId: "EU-RO-1"}) { stockStatus availableGpuCounts }'
               ' any: lowestPrice(input: {gpuCount: 1}) { stockStatus }'
               ' three: lowestPrice(input: {gpuCount: 3, dataCenterId: "EU-RO-1"}) { stockStatus } } }')
    g = data["gpuTypes"][0]
    assert g["ro"] == {"stockStatus": "Low", "availableGpuCounts": [1, 2]}
    assert g["any"]["stockStatus"] == "High"
    assert g["three"]["stockStatus"] == "None"
    dcs = {d["id"]: d for d in gql("{ dataCenters { id location gpuAvailability { gpuTypeId stockStatus } } }")["dataCenters"]}
    assert set(dcs) == {"EU-RO-1", "US-KS-2", "EU-SE-1"}  # community regions are not data centers
    ro = {a["gpuTypeId"]: a["stockStatus"] for a in dcs["EU-RO-1"]["gpuAvailability"]}
    assert ro[A40] == "Low" and ro["NVIDIA GeForce RTX 3090"] == "None"


def test_get_user_lists_volumes_with_runpod_like_ids(rp, standin):
    user = rp.get_user()
    assert user["pubKey"].startswith("ssh-ed25519 ")
    vols = {v["name"]: v for v in user["networkVolumes"]}
    assert vols["comfy-models"]["size"] == 100 and vols["comfy-models"]["dataCenterId"] == "EU-RO-1"
    assert vols["datasets"]["dataCenterId"] == "US-KS-2"
    assert all(re.fullmatch(r"[a-z0-9]{10}", v["id"]) for v in vols.values())


def test_update_user_settings_changes_pub_key(rp, standin):
    out = rp.update_user_settings("ssh-ed25519 AAAA one\nssh-ed25519 BBBB two")
    assert out["pubKey"] == "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two"
    assert rp.get_user()["pubKey"] == out["pubKey"]


# --- create ------------------------------------------------------------------


def test_create_pod_with_volume_lands_in_the_volume_data_center(rp, standin):
    vid = volume_id(standin, "comfy-models")
    before = standin.world.data_centers["EU-RO-1"]["stock"][A40]
    pod = create(rp, standin, network_volume_id=vid, env={"JUPYTER_PASSWORD": "pw"}, gpu_count=2)
    assert re.fullmatch(r"[a-z0-9]{14}", pod["id"])
    assert re.fullmatch(re.escape(pod["id"]) + r"-[0-9a-f]{8}", pod["machine"]["podHostId"])
    assert pod["imageName"] == "runpod/comfyui:latest" and "JUPYTER_PASSWORD=pw" in pod["env"]
    assert standin.world.data_centers["EU-RO-1"]["stock"][A40] == before - 2
    # The SDK's pre-check, its volume look-up, then the mutation: three requests.
    assert standin.world.requests["by_field"] == {"gpuTypes": 1, "myself": 1, "podFindAndDeployOnDemand": 1}

    got = gql('{ pod(input: {podId: "%s"}) { networkVolumeId gpuCount costPerHr volumeMountPath ports createdAt'
              ' networkVolume { name } machine { dataCenterId gpuTypeId gpuDisplayName secureCloud } } }' % pod["id"])["pod"]
    assert got["networkVolumeId"] == vid and got["networkVolume"]["name"] == "comfy-models"
    assert got["machine"] == {"dataCenterId": "EU-RO-1", "gpuTypeId": A40, "gpuDisplayName": "RTX A40", "secureCloud": True}
    assert got["gpuCount"] == 2 and got["costPerHr"] == pytest.approx(0.80)
    assert got["volumeMountPath"] == "/workspace" and got["ports"] == "22/tcp,8188/http"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got["createdAt"])


def test_no_capacity_gives_runpods_exact_message(rp, standin):
    with standin.world.lock:
        for dc in standin.world.data_centers.values():
            dc["stock"][A40] = 0
    with pytest.raises(rp.error.QueryError) as e:
        create(rp, standin)
    assert str(e.value) == NO_CAPACITY
    assert standin.world.pods == {}


def test_explicit_data_center_without_stock_is_no_capacity(rp, standin):
    with pytest.raises(rp.error.QueryError, match="no longer any instances"):
        create(rp, standin, gpu_type_id="NVIDIA GeForce RTX 3090", data_center_id="EU-RO-1")


def test_volume_errors(rp, standin):
    with pytest.raises(rp.error.QueryError, match="not found"):
        create(rp, standin, network_volume_id="nosuchvol1")
    vid = volume_id(standin, "comfy-models")
    with pytest.raises(rp.error.QueryError) as e:
        create(rp, standin, network_volume_id=vid, cloud_type="ALL")
    assert str(e.value) == "Something went wrong. Please try again later or contact support."
    with pytest.raises(rp.error.QueryError, match="EU-RO-1"):
        create(rp, standin, network_volume_id=vid, data_center_id="US-KS-2")
    with pytest.raises(rp.error.QueryError, match="Invalid GPU type"):
        gql('mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA Nope", imageName: "x"}) { id } }')
    assert standin.world.pods == {}


def test_env_values_round_trip_when_properly_escaped(rp, standin):
    value = 'say "hi" \\ back\\slash\nline two\ttab ünïcødé ✓ {not: "graphql"}'
    env = [{"key": "TRICKY", "value": value}, {"key": "EMPTY", "value": ""}]
    env_lit = "[" + ", ".join(f"{{key: {json.dumps(e['key'])}, value: {json.dumps(e['value'], ensure_ascii=False)}}}"
                              for e in env) + "]"
    pod = gql('mutation { podFindAndDeployOnDemand(input: {name: "esc", imageName: "img", cloudType: SECURE,'
              ' gpuTypeId: "NVIDIA RTX A40", startSsh: false, env: %s}) { id env } }' % env_lit)["podFindAndDeployOnDemand"]
    assert pod["env"] == [f"TRICKY={value}", "EMPTY="]
    assert rp.get_pod(pod["id"])["env"] == [f"TRICKY={value}", "EMPTY="]


def test_unescaped_quote_from_the_sdk_is_a_syntax_error(rp, standin):
    # The SDK pastes env values into the query as-is; RunPod then rejects the query text.
    with pytest.raises(rp.error.QueryError, match="Syntax Error"):
        create(rp, standin, env={"X": 'a"b'})
    assert standin.world.pods == {}


def test_start_ssh_injects_the_account_key_unless_given(rp, standin):
    pod = create(rp, standin)
    assert f"PUBLIC_KEY={standin.world.user['pubKey']}" in pod["env"]
    pod = create(rp, standin, env={"PUBLIC_KEY": "ssh-ed25519 MINE"})
    assert [e for e in pod["env"] if e.startswith("PUBLIC_KEY=")] == ["PUBLIC_KEY=ssh-ed25519 MINE"]


def test_ids_are_deterministic_for_a_seed(rp, standin, monkeypatch):
    first = create(rp, standin)["id"]
    with RunPodStandin(default_world(), api_key=KEY) as other:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", other.url)
        assert create(rp, other)["id"] == first
    with RunPodStandin(default_world(seed=2), api_key=KEY) as other:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", other.url)
        assert create(rp, other)["id"] != first


# --- readiness and lifecycle -------------------------------------------------


def test_runtime_appears_after_boot_reads(rp, standin):
    standin.world.patch({"settings": {"boot_reads": 2}})
    pid = create(rp, standin)["id"]
    assert rp.get_pod(pid)["runtime"] is None
    assert rp.get_pod(pid)["runtime"] is None
    pod = rp.get_pod(pid)
    assert pod["desiredStatus"] == "RUNNING"
    ports = {p["privatePort"]: p for p in pod["runtime"]["ports"]}
    assert ports[22]["ip"] == "127.0.0.1" and ports[22]["isIpPublic"] is True and ports[22]["type"] == "tcp"
    assert ports[8188]["ip"].startswith("100.65.") and ports[8188]["isIpPublic"] is False
    assert ports[8188]["type"] == "http"
    assert pod["machine"]["gpuDisplayName"] == "RTX A40"
    assert pod["lastStatusChange"].startswith("Rented by User: ")
    assert [p["id"] for p in rp.get_pods()] == [pid]
    assert gql('{ pod(input: {podId: "%s"}) { runtime { uptimeInSeconds } } }' % pid)["pod"]["runtime"]["uptimeInSeconds"] >= 0


def test_never_ready_keeps_runtime_null(rp, standin):
    pid = create(rp, standin)["id"]
    standin.world.patch({"pods": {pid: {"never_ready": True}}})
    assert [rp.get_pod(pid)["runtime"] for _ in range(3)] == [None, None, None]
    standin.world.patch({"pods": {pid: {"never_ready": None}}, "settings": {"never_ready": True}})
    assert rp.get_pod(pid)["runtime"] is None
    standin.world.patch({"settings": {"never_ready": False}})
    assert rp.get_pod(pid)["runtime"] is not None


def test_stop_resume_terminate(rp, standin):
    pid = create(rp, standin, data_center_id="US-KS-2")["id"]
    stock = standin.world.data_centers["US-KS-2"]["stock"]
    before = stock[A40]
    assert rp.stop_pod(pid) == {"id": pid, "desiredStatus": "EXITED"}
    assert stock[A40] == before + 1
    pod = rp.get_pod(pid)
    assert pod["runtime"] is None and pod["costPerHr"] == 0 and pod["uptimeSeconds"] == 0
    assert pod["lastStatusChange"].startswith("Exited by User: ")

    resumed = rp.resume_pod(pid, 1)
    assert resumed["desiredStatus"] == "RUNNING" and resumed["machine"]["podHostId"].startswith(pid + "-")
    assert stock[A40] == before
    assert rp.get_pod(pid)["runtime"] is None  # booting again
    assert rp.get_pod(pid)["runtime"]["ports"]

    assert rp.terminate_pod(pid) is None
    assert rp.get_pod(pid) is None
    assert stock[A40] == before + 1
    assert rp.get_pods() == []


def test_terminate_unknown_pod_is_an_error_at_path_podTerminate(rp, standin):
    with pytest.raises(rp.error.QueryError):
        rp.terminate_pod("nosuchpod00000")
    r = requests.post(standin.url + "/graphql", json={"query": 'mutation { podTerminate(input: {podId: "nope"}) }'},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.status_code == 200
    assert r.json()["data"] is None
    err = r.json()["errors"][0]
    assert err["path"] == ["podTerminate"] and err["extensions"]["code"] == "INTERNAL_SERVER_ERROR"


def test_resume_without_free_gpus_gives_runpods_exact_message(rp, standin):
    pid = create(rp, standin, data_center_id="EU-SE-1")["id"]
    rp.stop_pod(pid)
    with standin.world.lock:
        standin.world.data_centers["EU-SE-1"]["stock"][A40] = 0  # someone else took the host's GPUs
    with pytest.raises(rp.error.QueryError) as e:
        rp.resume_pod(pid, 1)
    assert str(e.value) == NOT_ENOUGH_GPUS
    assert rp.get_pod(pid)["desiredStatus"] == "EXITED"


def test_ssh_listener_follows_the_pod(rp, standin):
    pid = create(rp, standin)["id"]
    rp.get_pod(pid)
    port = ssh_port(rp.get_pod(pid))
    assert banner(port) == SSH_BANNER
    rp.stop_pod(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    rp.resume_pod(pid, 1)
    rp.get_pod(pid)
    new_port = ssh_port(rp.get_pod(pid))
    assert new_port != port
    assert banner(new_port) == SSH_BANNER
    rp.terminate_pod(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", new_port), timeout=2).close()


def test_custom_backend_gets_start_stop_terminate(rp, monkeypatch):
    calls = []

    class Backend:
        def start(self, pod):
            calls.append(("start", pod["id"]))
            return {"ip": "127.0.0.1", "ports": {22: 40000 + len(calls)}}

        def stop(self, pod):
            calls.append(("stop", pod["id"]))

        def terminate(self, pod):
            calls.append(("terminate", pod["id"]))

    monkeypatch.setattr(rp, "api_key", KEY)
    with RunPodStandin(api_key=KEY, backend=Backend()) as s:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", s.url)
        s.world.patch({"settings": {"boot_reads": 0}})
        pid = create(rp, s)["id"]
        assert ssh_port(rp.get_pod(pid)) == 40001
        rp.stop_pod(pid)
        rp.resume_pod(pid, 1)
        assert ssh_port(rp.get_pod(pid)) == 40003
        rp.terminate_pod(pid)
    assert calls == [("start", pid), ("stop", pid), ("start", pid), ("terminate", pid)]


# --- volumes -----------------------------------------------------------------


def test_network_volume_create_and_delete(standin):
    vol = gql('mutation { createNetworkVolume(input: {name: "loras", size: 20, dataCenterId: "EU-SE-1"})'
              ' { id name size dataCenterId } }')["createNetworkVolume"]
    assert re.fullmatch(r"[a-z0-9]{10}", vol["id"])
    assert (vol["name"], vol["size"], vol["dataCenterId"]) == ("loras", 20, "EU-SE-1")
    assert vol["id"] in standin.world.network_volumes
    from runpod.error import QueryError

    for dc in ("CZ", "MARS-1"):  # a community region, an unknown id
        with pytest.raises(QueryError, match="^Failed to find data center, please try again.$"):
            gql('mutation { createNetworkVolume(input: {name: "x", size: 20, dataCenterId: "%s"}) { id } }' % dc)
    assert gql('mutation { deleteNetworkVolume(input: {id: "%s"}) }' % vol["id"]) == {"deleteNetworkVolume": None}
    assert vol["id"] not in standin.world.network_volumes
    with pytest.raises(QueryError, match="not found"):
        gql('mutation { deleteNetworkVolume(input: {id: "%s"}) }' % vol["id"])


# --- auth and faults ---------------------------------------------------------


def test_wrong_or_missing_key_is_401(rp, standin):
    with pytest.raises(rp.error.AuthenticationError, match="Unauthorized request, please check your API key."):
        rp.get_gpus(api_key="wrong-key")
    body = {"query": "{ myself { id } }"}
    assert requests.post(standin.url + "/graphql", json=body, timeout=5).status_code == 401
    r = requests.post(standin.url + "/graphql", params={"api_key": KEY}, json=body, timeout=5)
    assert r.status_code == 200 and r.json()["data"]["myself"]["id"].startswith("user_")
    assert requests.get(standin.url + "/_sim/world", timeout=5).status_code == 401
    standin.world.patch({"settings": {"reject_key": True}})
    with pytest.raises(rp.error.AuthenticationError):
        rp.get_gpus()


def test_fail_every_answers_non_json_deterministically(rp, standin):
    standin.world.patch({"settings": {"fail_every": 2, "fail_status": 503}})
    rp.get_gpus()
    with pytest.raises(requests.JSONDecodeError):
        rp.get_gpus()
    rp.get_gpus()
    r = requests.post(standin.url + "/graphql", json={"query": "{ gpuTypes { id } }"},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.status_code == 503 and not r.headers["Content-Type"].startswith("application/json")
    assert standin.world.requests["faults"]["fail"] == 2
    assert standin.world.requests["by_field"]["gpuTypes"] == 2  # failed requests did not run


def test_fail_after_execute_loses_the_response_but_not_the_pod(rp, standin):
    standin.world.patch({"settings": {"fail_every": 1, "fail_after_execute": True}})
    with pytest.raises(requests.JSONDecodeError):
        gql('mutation { podFindAndDeployOnDemand(input: {imageName: "i", gpuTypeId: "NVIDIA RTX A40"}) { id } }')
    assert len(standin.world.pods) == 1


def test_hang_and_latency(standin):
    standin.world.patch({"settings": {"hang_every": 1, "hang_s": 0.3}})
    with pytest.raises(requests.Timeout):
        requests.post(standin.url + "/graphql", json={"query": "{ myself { id } }"},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=0.1)
    standin.world.patch({"settings": {"hang_every": 0, "latency_s": 0.2}})
    r = requests.post(standin.url + "/graphql", json={"query": "{ myself { id } }"},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.2
    assert standin.world.requests["faults"]["hang"] == 1


# --- control API and command line ---------------------------------------------


def test_control_api_world_patch_and_request_counts(rp, standin):
    auth = {"Authorization": f"Bearer {KEY}"}
    world = requests.get(standin.url + "/_sim/world", headers=auth, timeout=5).json()
    assert world["settings"]["boot_reads"] == 1 and world["pods"] == {}
    r = requests.post(standin.url + "/_sim/world", headers=auth, timeout=5,
                      json={"data_centers": {"EU-RO-1": {"stock": {A40: 0}}}, "settings": {"boot_reads": 0}})
    assert r.status_code == 200 and r.json()["data_centers"]["EU-RO-1"]["stock"][A40] == 0
    assert r.json()["data_centers"]["EU-RO-1"]["stock"]["NVIDIA RTX A6000"] == 4  # merged, not replaced
    pid = create(rp, standin)["id"]
    assert rp.get_pod(pid)["runtime"] is not None  # boot_reads 0
    counts = requests.get(standin.url + "/_sim/requests", headers=auth, timeout=5).json()
    assert counts["by_field"]["podFindAndDeployOnDemand"] == 1
    assert counts["by_operation"]["pod"] == 1 and counts["total"] == 3  # get_gpu pre-check, create, get_pod
    requests.delete(standin.url + "/_sim/requests", headers=auth, timeout=5)
    assert requests.get(standin.url + "/_sim/requests", headers=auth, timeout=5).json()["total"] == 0
    assert requests.post(standin.url + "/_sim/world", headers=auth, data="[1]", timeout=5).status_code == 400


def test_command_line_serves_a_world_file_until_sigterm(tmp_path):
    world = default_world()
    world["network_volumes"] = {}
    (tmp_path / "world.json").write_text(json.dumps(world))
    p = subprocess.Popen([sys.executable, "-m", "autopod.sim.runpod_standin", "--port", "0",
                          "--world", str(tmp_path / "world.json"), "--api-key", "k2",
                          "--save-world", str(tmp_path / "saved.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = json.loads(p.stdout.readline())["url"]
        assert url.startswith("http://127.0.0.1:")
        r = requests.post(url + "/graphql", json={"query": "{ myself { networkVolumes { id } } }"},
                          headers={"Authorization": "Bearer k2"}, timeout=5)
        assert r.json() == {"data": {"myself": {"networkVolumes": []}}}
        requests.post(url + "/_sim/world", json={"settings": {"latency_s": 0.01}},
                      headers={"Authorization": "Bearer k2"}, timeout=5)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "k2" not in err
    assert json.loads((tmp_path / "saved.json").read_text())["settings"]["latency_s"] == 0.01


def test_cpu_pods_are_refused_with_a_graphql_error(rp, standin):
    with pytest.raises(rp.error.QueryError, match="CPU pods"):
        rp.create_pod("cpu", "runpod/base:0.0.0")


def test_stop_after_and_terminate_after_take_effect(standin):
    pid = gql('mutation { podFindAndDeployOnDemand(input: {imageName: "i", gpuTypeId: "NVIDIA RTX A40",'
              ' stopAfter: "2000-01-01T00:00:00Z"}) { id } }')["podFindAndDeployOnDemand"]["id"]
    assert gql('{ pod(input: {podId: "%s"}) { desiredStatus } }' % pid)["pod"]["desiredStatus"] == "EXITED"
    standin.world.patch({"pods": {pid: {"terminateAfter": "2000-01-01T00:00:00+00:00"}}})
    assert gql('{ pod(input: {podId: "%s"}) { id } }' % pid)["pod"] is None
    from runpod.error import QueryError

    with pytest.raises(QueryError, match="ISO 8601"):
        gql('mutation { podFindAndDeployOnDemand(input: {imageName: "i", gpuTypeId: "NVIDIA RTX A40",'
            ' terminateAfter: "tomorrow"}) { id } }')

"""Pure parts of the pod library: settings resolution, names, the pod record, waits, SSH argv."""

import datetime as dt

import pytest

from autopod.core import chain
from autopod.core.errors import AutopodError, RemoteError, Timeout, UsageError
from autopod.core.inventory import Inventory
from autopod.runpod import lifecycle, registry, waits
from autopod.runpod.access import ssh_command
from autopod.runpod.records import Pod
from autopod.runpod.spec import build_create_input, generate_name, resolve_spec


def _inv():
    return Inventory(
        defaults={"gpus": ["RTX A5000"], "disk_gb": 80, "env": {"A": "defaults", "B": "defaults"},
                  "datacenter": "US-KS-2"},
        pods={"big": {"gpus": ["RTX A6000", "RTX A40"], "gpu_count": 2, "env": {"B": "spec"},
                      "comfy_address": "127.0.0.1:8189"}},
    )


def test_builtin_defaults():
    s = resolve_spec({})
    assert s.image == "runpod/comfyui:latest"
    assert s.gpus == ["RTX A40", "RTX A6000", "RTX A5000"]
    assert s.cloud_type == "SECURE" and s.disk_gb == 50 and s.gpu_count == 1
    assert s.ports == ["8188/http", "22/tcp"]
    assert s.volume_mount == "/workspace"
    assert s.comfy_address == "127.0.0.1:8188"


def test_resolution_order_flag_spec_defaults_config_builtin():
    cfg = {"disk_gb": 60, "image": "cfg/image:1", "env": {"C": "config", "A": "config"}}
    s = resolve_spec({"name": "big"}, _inv(), cfg)
    assert s.gpus == ["RTX A6000", "RTX A40"]  # pod spec beats defaults
    assert s.gpu_count == 2
    assert s.disk_gb == 80  # inventory defaults beat config.yaml
    assert s.image == "cfg/image:1"  # config.yaml beats built-in
    assert s.datacenter == "US-KS-2"
    assert s.comfy_address == "127.0.0.1:8189"
    assert s.env == {"C": "config", "A": "defaults", "B": "spec"}  # merged key by key
    s = resolve_spec({"name": "big", "gpus": ["RTX 4090"], "gpu_count": "3", "disk_gb": "20",
                      "env": ["B=flag", "D=x=y"]}, _inv(), cfg)
    assert s.gpus == ["RTX 4090"] and s.gpu_count == 3 and s.disk_gb == 20
    assert s.env["B"] == "flag" and s.env["D"] == "x=y"
    other = resolve_spec({"name": "not-in-inventory"}, _inv(), cfg)
    assert other.gpus == ["RTX A5000"] and other.gpu_count == 1


def test_ssh_port_is_always_exposed():
    assert resolve_spec({"ports": ["8188/http"]}).ports == ["8188/http", "22/tcp"]


@pytest.mark.parametrize("flags", [
    {"gpu_count": "two"}, {"gpu_count": "0"}, {"disk_gb": "-5"}, {"cloud_type": "CHEAP"},
    {"ports": ["8188"]}, {"env": ["NOEQUALS"]}, {"datacenter": "eu ro"}, {"volume_id": 'v"1'},
    {"image": "a", "template_id": "t"}, {"comfy_address": "nohost"},
])
def test_bad_settings_are_usage_errors(flags):
    with pytest.raises(UsageError):
        resolve_spec(flags)


def test_template_replaces_the_builtin_image_but_not_an_explicit_one():
    assert resolve_spec({"template_id": "cw3nka7d08"}).image is None
    inv = Inventory(defaults={"image": "mine:1"})
    assert resolve_spec({"template_id": "cw3nka7d08"}, inv).image == "mine:1"


def test_generated_names_count_up_per_day():
    day = dt.date(2026, 11, 28)
    assert generate_name([], day) == "autopod-2026-11-28-001"
    assert generate_name(["autopod-2026-11-28-001", "autopod-2026-11-28-007", "autopod-2026-11-27-009", "x"],
                         day) == "autopod-2026-11-28-008"


def test_create_input_carries_the_public_key_and_volume():
    s = resolve_spec({"volume_id": "vol123", "env": ["X=1"]})
    inp = build_create_input(s, "p1", {"id": "NVIDIA RTX A40"}, "EU-RO-1", "ssh-ed25519 AAAA k\nssh-rsa BBBB j")
    assert inp["env"] == {"X": "1", "PUBLIC_KEY": "ssh-ed25519 AAAA k\nssh-rsa BBBB j"}
    assert inp["networkVolumeId"] == "vol123" and inp["dataCenterId"] == "EU-RO-1"
    assert inp["volumeMountPath"] == "/workspace" and inp["ports"] == "8188/http,22/tcp"
    assert inp["gpuTypeId"] == "NVIDIA RTX A40" and inp["cloudType"] == "SECURE"
    own = resolve_spec({"env": ["PUBLIC_KEY=ssh-ed25519 CCCC mine"]})
    assert build_create_input(own, "p", {"id": "g"}, None, "other")["env"]["PUBLIC_KEY"] == "ssh-ed25519 CCCC mine"


RAW = {
    "id": "5xpma5eg46tqjq", "name": "probe", "desiredStatus": "RUNNING", "costPerHr": 0.72, "gpuCount": 1,
    "imageName": "runpod/comfyui:latest", "ports": "8188/http,22/tcp", "networkVolumeId": "grvtso8ftn",
    "volumeMountPath": "/workspace", "containerDiskInGb": 50,
    "runtime": {"uptimeInSeconds": 3931, "ports": [
        {"ip": "100.65.0.101", "isIpPublic": False, "privatePort": 8188, "publicPort": 60141, "type": "http"},
        {"ip": "100.65.0.101", "isIpPublic": False, "privatePort": 22, "publicPort": 1, "type": "tcp"},
        {"ip": "213.173.104.74", "isIpPublic": True, "privatePort": 22, "publicPort": 35558, "type": "tcp"}]},
    "machine": {"podHostId": "5xpma5eg46tqjq-64410065", "gpuDisplayName": "RTX PRO 4500", "dataCenterId": "EU-RO-1"},
}


def test_pod_record_from_the_api():
    p = Pod.from_api(RAW, {"comfy_address": "127.0.0.1:8189"})
    assert p.ssh_direct == ("213.173.104.74", 35558)  # public tcp 22 only
    assert p.ssh_proxy == "5xpma5eg46tqjq-64410065@ssh.runpod.io"  # podHostId is the whole user name
    assert p.datacenter == "EU-RO-1" and p.volume_id == "grvtso8ftn" and p.uptime_s == 3931
    assert p.comfy_address == "127.0.0.1:8189"
    assert p.ports == ["8188/http", "22/tcp"]
    row = p.row()
    assert row["uptime"] == "1h05m" and row["cost"] == "0.720"
    assert p.to_dict()["ssh_direct"] == {"host": "213.173.104.74", "port": 35558}
    booting = Pod.from_api({**RAW, "runtime": None})
    assert booting.ssh_direct is None and booting.uptime_s is None


class ScriptedAPI:
    def __init__(self, states):
        self.states = list(states)

    def get_pod(self, pod_id):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_wait_needs_running_runtime_and_an_answering_ssh_port():
    api = ScriptedAPI([{**RAW, "runtime": None}, RAW, RAW])
    answers = iter([False, True])
    sleeps = []
    pod = waits.wait_ready(api, RAW["id"], timeout=60, poll_interval=1, sleep=sleeps.append,
                          connect=lambda h, p: next(answers), clock=lambda: 0.0)
    assert pod.ssh_direct == ("213.173.104.74", 35558)
    assert len(sleeps) == 2


def test_wait_times_out_and_fails_fast_on_a_stopped_pod(capsys):
    now = [0.0]

    def sleep(s):
        now[0] += s

    with pytest.raises(Timeout, match="not ready after 10s"):
        waits.wait_ready(ScriptedAPI([{**RAW, "runtime": None}]), RAW["id"], timeout=10, poll_interval=2,
                        sleep=sleep, clock=lambda: now[0])
    assert "waiting for pod probe" in capsys.readouterr().err  # progress on stderr
    with pytest.raises(AutopodError, match="is stopped"):
        waits.wait_ready(ScriptedAPI([{**RAW, "desiredStatus": "EXITED", "runtime": None}]), RAW["id"], timeout=10)


def test_ssh_argv_uses_the_direct_endpoint_and_pins_host_keys(tmp_path):
    p = Pod.from_api(RAW)
    argv = ssh_command(p, tmp_path / "id", "nvidia-smi; echo ok", user="root", known_hosts=tmp_path / "kh")
    assert argv[0] == "ssh" and argv[argv.index("-p") + 1] == "35558" and argv[argv.index("-i") + 1].endswith("id")
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv and "StrictHostKeyChecking=accept-new" in argv
    assert "-T" in argv
    assert argv[-3:] == ["--", "root@213.173.104.74", "nvidia-smi; echo ok"]
    interactive = ssh_command(p, "k", None, user="root")
    assert "-T" not in interactive and interactive[-1] == "root@213.173.104.74"
    with pytest.raises(AutopodError, match="no direct SSH endpoint"):
        ssh_command(Pod.from_api({**RAW, "runtime": None}), "k")


class ListAPI:
    def __init__(self, *pods_):
        self.pods = [{"id": f"id{n}", "name": n, "desiredStatus": s} for n, s in pods_]

    def list_pods(self):
        return self.pods


def test_pod_reference_rules(monkeypatch):
    monkeypatch.setattr(chain, "_pod_id", None)
    one = ListAPI(("a", "RUNNING"), ("old", "TERMINATED"))
    assert registry.resolve_pod(one, None).name == "a"  # the only live pod
    two = ListAPI(("a", "RUNNING"), ("b", "EXITED"))
    with pytest.raises(UsageError) as e:
        registry.resolve_pod(two, None)
    assert "a (ida" in str(e.value) and "b (idb" in str(e.value)
    assert registry.resolve_pod(two, "b").id == "idb"
    assert registry.resolve_pod(two, "ida").name == "a"
    with pytest.raises(AutopodError) as e:
        registry.resolve_pod(two, "zzz")
    assert e.value.exit_code == 2
    monkeypatch.setattr(chain, "_pod_id", "idb")  # created/started earlier on this command line
    assert registry.resolve_pod(two, None).name == "b"
    with pytest.raises(UsageError, match="no pods"):
        registry.resolve_pod(ListAPI(), None)


def test_the_example_inventory_loads_empty_and_documents_every_key(tmp_path):
    from pathlib import Path

    from autopod.core.inventory import DEFAULT_KEYS, HOST_KEYS, POD_KEYS, TOP_KEYS, load_inventory

    example = Path(__file__).resolve().parent.parent / "inventory" / "example.yml"
    assert load_inventory(example) == Inventory(sources=[example])  # every line is a comment
    # Uncommented from `defaults:` on, it is a valid inventory using every key the loader accepts.
    lines = example.read_text().splitlines()
    body = lines[next(i for i, ln in enumerate(lines) if ln.startswith("# defaults:")):]
    live = tmp_path / "inv.yml"
    live.write_text("\n".join(ln[2:] if ln.startswith("# ") else "" for ln in body) + "\n")
    inv = load_inventory(live)
    assert set(inv.defaults) == set(DEFAULT_KEYS)
    assert inv.pods["flux"]["gpus"] == ["RTX 4090", "RTX A6000"]
    assert vars(inv.hosts["homebox"]) == {"name": "homebox", "host": "192.168.1.20", "port": 22, "user": "me",
                                          "key": "~/.ssh/id_ed25519", "comfy_address": "127.0.0.1:8188"}
    text = example.read_text()
    for key in {*TOP_KEYS, *POD_KEYS, *HOST_KEYS}:
        assert f" {key}:" in text, key


class StopRecorder(ScriptedAPI):
    def __init__(self, states):
        super().__init__(states)
        self.stopped = []

    def stop_pod(self, pod_id):
        self.stopped.append(pod_id)


def _wait_billing(api, timeout, sleep):
    with lifecycle._until_handed_over(api) as billing:
        billing.append(lifecycle._Billing(RAW["id"], "probe", "waiting for the new pod probe"))
        lifecycle._wait(api, RAW["id"], "probe", timeout, sleep, None)


@pytest.mark.parametrize("signum,code", [(2, 130), (15, 143), (1, 129)])
def test_ctrl_c_sigterm_or_sighup_while_waiting_stops_the_pod(signum, code):
    from autopod.core.errors import Interrupted

    def interrupt(_):
        raise Interrupted(signum)

    api = StopRecorder([{**RAW, "runtime": None}])
    with pytest.raises(AutopodError) as e:
        _wait_billing(api, 60, interrupt)
    assert e.value.exit_code == code and "stopped it so it does not keep billing" in str(e.value)
    assert e.value.data["pod"] == {"id": RAW["id"], "name": "probe", "status": "EXITED"}
    assert api.stopped == [RAW["id"]]


def test_timeout_or_a_failure_while_waiting_stops_the_pod_but_a_gone_pod_is_left_alone():
    api = StopRecorder([{**RAW, "runtime": None}])
    with pytest.raises(Timeout, match="stopped it"):
        _wait_billing(api, 0, lambda s: None)
    assert api.stopped == [RAW["id"]]

    class Broken(StopRecorder):
        def get_pod(self, pod_id):
            raise RemoteError("RunPod get pod failed after 5 attempts")

    api = Broken([])
    with pytest.raises(RemoteError, match="stopped it") as e:
        _wait_billing(api, 60, lambda s: None)
    assert api.stopped == [RAW["id"]] and e.value.data["pod"]["id"] == RAW["id"]

    api = StopRecorder([{**RAW, "desiredStatus": "TERMINATED"}])
    with pytest.raises(waits.PodNotRunning, match="terminated"):
        _wait_billing(api, 60, lambda s: None)
    assert api.stopped == []


def test_a_second_signal_cannot_cut_short_the_stop(monkeypatch):
    """A second Ctrl-C (or SIGTERM) while the pod is being stopped is held until the stop is done."""
    import os
    import signal

    from autopod.core import signals
    from autopod.core.errors import Interrupted

    class SignalsDuringStop(StopRecorder):
        def stop_pod(self, pod_id):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the stop request
            os.kill(os.getpid(), signal.SIGINT)
            super().stop_pod(pod_id)

    def interrupt(_):
        raise Interrupted(2)

    api = SignalsDuringStop([{**RAW, "runtime": None}])
    with signals.handling():
        with pytest.raises(AutopodError) as e:
            _wait_billing(api, 60, interrupt)
    assert api.stopped == [RAW["id"]] and e.value.exit_code == 130
    assert "stopped it so it does not keep billing" in str(e.value)


def test_comfy_address_configured_then_announced_by_pod_then_default():
    from autopod.runpod.records import _comfy_address

    announced = ["PUBLIC_KEY=ssh-ed25519 AAAA x", "AUTOPOD_COMFY_ADDRESS=127.0.0.1:40001"]
    assert _comfy_address("127.0.0.1:3000", announced) == "127.0.0.1:3000"
    assert _comfy_address(None, announced) == "127.0.0.1:40001"
    assert _comfy_address("127.0.0.1:8188", announced) == "127.0.0.1:40001"
    assert _comfy_address(None, ["AUTOPOD_COMFY_ADDRESS=not an address"]) == "127.0.0.1:8188"
    assert _comfy_address(None, None) == "127.0.0.1:8188"

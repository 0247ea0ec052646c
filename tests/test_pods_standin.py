"""The pod tasks end to end against the RunPod stand-in (a local server on loopback), on both of
RunPod's APIs: every test runs once on GraphQL and once on REST v2, with the same assertions."""

import contextlib
import json
import os
import re
import subprocess
import sys

import pytest
import requests

from autopod.core import chain
from autopod.core.paths import autopod_home
from autopod.runpod import api as runpod_api
from autopod.runpod import waits
from autopod.sim.runpod_standin import RunPodStandin


@pytest.fixture
def ssh_key(tmp_path):
    ssh_dir = tmp_path / "user-home" / ".ssh"  # HOME is tmp_path/user-home (conftest)
    ssh_dir.mkdir(parents=True, exist_ok=True)
    key = ssh_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@autopod", "-f", str(key)], check=True)
    return key


@contextlib.contextmanager
def standin_for(monkeypatch, backend):
    """A fresh stand-in account the CLI points at, on ``backend`` (None: the configured choice, auto);
    waits and retries run fast."""
    monkeypatch.setattr(waits, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(chain, "_pod_id", None)
    monkeypatch.setattr(runpod_api, "DEFAULT_BASE_DELAY", 0.01)
    if backend is None:
        monkeypatch.delenv("AUTOPOD_RUNPOD_API", raising=False)
    else:
        monkeypatch.setenv("AUTOPOD_RUNPOD_API", backend)
    with RunPodStandin(api_key="sim-key") as s:
        monkeypatch.setenv("RUNPOD_API_KEY", "sim-key")
        monkeypatch.setenv("RUNPOD_API_BASE_URL", s.url)
        s.backend = backend
        yield s


@pytest.fixture(params=["graphql", "rest"])
def standin(request, monkeypatch, ssh_key):
    """A fresh stand-in account; the CLI points at it, on one backend each run."""
    with standin_for(monkeypatch, request.param) as s:
        yield s


def backend_class(s):
    from autopod.runpod.rest import RestAPI

    return RestAPI if s.backend == "rest" else runpod_api.RunPodAPI


def volume_id(s, name="comfy-models"):
    return next(k for k, v in s.world.network_volumes.items() if v["name"] == name)


REST_AS_GRAPHQL = {"POST /v2/pods": "podFindAndDeployOnDemand", "POST /v2/pods/{id}/action stop": "podStop",
                   "POST /v2/pods/{id}/action start": "podResume", "POST /v2/pods/{id}/action terminate": "podTerminate",
                   "DELETE /v2/pods/{id}": "podTerminate", "GET /v2/pods": "myself", "GET /v2/pods/{id}": "pod",
                   "GET /v2/catalog/gpus": "gpuTypes"}


def ops(s):
    """The operations the stand-in executed, by GraphQL field; REST v2 routes count as their GraphQL twin."""
    r = requests.get(f"{s.url}/_sim/requests", headers={"Authorization": "Bearer sim-key"}, timeout=5)
    doc = r.json()
    out = dict(doc["by_field"])
    for route, n in doc.get("rest", {}).items():
        name = REST_AS_GRAPHQL.get(route, route)
        out[name] = out.get(name, 0) + n
    return out


def set_stock(s, gpu_id, n):
    with s.world.lock:
        for dc in s.world.data_centers.values():
            dc["stock"][gpu_id] = n


def test_create_waits_until_ssh_answers_and_is_idempotent(cli, standin):
    vid = volume_id(standin)
    r = cli("pod.create", "--name", "comfy", "--volume-id", vid, "--json")
    assert r.code == 0, r.err
    doc = r.json  # exactly one JSON document on stdout
    assert doc["changed"] is True and doc["pod"]["name"] == "comfy"
    assert doc["pod"]["status"] == "RUNNING" and doc["pod"]["ssh_direct"]["host"] == "127.0.0.1"
    assert doc["pod"]["datacenter"] == "EU-RO-1" and doc["pod"]["volume_id"] == vid
    assert "waiting for pod comfy" in r.err and "is ready" in r.err  # progress on stderr
    pod = standin.world.pods[doc["pod"]["id"]]
    assert pod["volumeMountPath"] == "/workspace" and pod["cloudType"] == "SECURE"
    assert "22/tcp" in pod["ports"] and "8188/http" in pod["ports"]
    pub = (standin and open(os.path.expanduser("~/.ssh/id_ed25519.pub")).read().strip())
    assert f"PUBLIC_KEY={pub}" in pod["env"]

    again = cli("pod.create", "--name", "comfy", "--volume-id", vid)
    assert again.code == 0 and again.out.startswith("ok: pod comfy")
    assert len(standin.world.pods) == 1


def test_gpu_fallback_says_which_gpu_the_pod_got(cli, standin):
    set_stock(standin, "NVIDIA RTX A40", 0)
    r = cli("pod.create", "--name", "fb", "--no-wait")
    assert r.code == 0, r.err
    assert "no capacity for RTX A40" in r.err
    assert r.out.startswith("changed: created pod fb") and "on RTX A6000" in r.out
    (pod,) = standin.world.pods.values()
    assert pod["gpuTypeId"] == "NVIDIA RTX A6000"


def test_every_gpu_out_of_stock_exits_1_listing_each(cli, standin):
    for g in ("NVIDIA RTX A40", "NVIDIA RTX A6000"):
        set_stock(standin, g, 0)
    r = cli("pod.create", "--gpu", "RTX A40", "--gpu", "nvidia rtx a6000", "--no-wait")
    assert r.code == 1
    assert "NVIDIA RTX A40: There are no longer any instances available" in r.err
    assert "NVIDIA RTX A6000: There are no longer any instances available" in r.err
    assert not standin.world.pods


def test_unknown_gpu_exits_2_with_suggestions_and_creates_nothing(cli, standin):
    r = cli("pod.create", "--gpu", "RTX A4O", "--no-wait")
    assert r.code == 2
    assert "unknown GPU 'RTX A4O'" in r.err and "RTX A40" in r.err
    assert "podFindAndDeployOnDemand" not in ops(standin)


def test_unknown_volume_exits_2_and_creates_nothing(cli, standin):
    r = cli("pod.create", "--volume-id", "nosuchvol1", "--no-wait")
    assert r.code == 2
    assert "network volume 'nosuchvol1' does not exist" in r.err and "comfy-models" in r.err
    assert "podFindAndDeployOnDemand" not in ops(standin) and not standin.world.pods


def test_datacenter_mismatch_warns_and_uses_the_volume_dc(cli, standin):
    r = cli("pod.create", "--name", "dc", "--volume-id", volume_id(standin), "--datacenter", "US-KS-2",
            "--cloud-type", "COMMUNITY", "--no-wait")
    assert r.code == 0, r.err
    assert "is in data center EU-RO-1, not US-KS-2" in r.err
    assert "need SECURE cloud" in r.err
    (pod,) = standin.world.pods.values()
    assert pod["dataCenterId"] == "EU-RO-1"


def test_env_values_arrive_intact(cli, standin):
    nasty = 'q"uote \\back\\slash\nline two é ✓ 🙂 "}) { x }'
    r = cli("pod.create", "--name", 'we"ird\\name }', "--env", f"NASTY={nasty}", "--image", "ghcr.io/x/img:1.0@sha256",
            "--no-wait")
    assert r.code == 0, r.err
    (pod,) = standin.world.pods.values()
    assert f"NASTY={nasty}" in pod["env"]
    assert pod["name"] == 'we"ird\\name }' and pod["imageName"] == "ghcr.io/x/img:1.0@sha256"
    # an image reference cannot hold quotes or spaces: refused before anything is sent
    r = cli("pod.create", "--name", "x", "--image", 'img:"x"', "--no-wait")
    assert r.code == 2 and "--image" in r.err and len(standin.world.pods) == 1


def test_dry_run_changes_nothing_and_hides_the_key(cli, standin):
    r = cli("pod.create", "--name", "dry", "--dry-run", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["dry_run"] is True and doc["request"]["gpuTypeId"] == "NVIDIA RTX A40"
    assert "ssh-ed25519" not in r.out and "sim-key" not in r.out + r.err
    assert doc["gpu_order"] == ["NVIDIA RTX A40", "NVIDIA RTX A6000", "NVIDIA RTX A5000"]
    assert not standin.world.pods and "podFindAndDeployOnDemand" not in ops(standin)


def test_lifecycle_is_idempotent(cli, standin):
    assert cli("pod.create", "--name", "life", "--no-wait").code == 0
    (pid,) = standin.world.pods
    stop = cli("pod.stop", "--pod", "life")
    assert stop.code == 0 and stop.out.startswith("changed: stopped pod life")
    assert standin.world.pods[pid]["desiredStatus"] == "EXITED"
    assert cli("pod.stop", "--pod", "life").out.startswith("ok: pod life")
    port_before = None
    start = cli("pod.start", "--pod", pid, "--json")
    assert start.code == 0 and start.json["changed"] is True
    port_before = start.json["pod"]["ssh_direct"]["port"]
    assert cli("pod.start").out.startswith("ok: pod life")
    assert cli("pod.stop").code == 0 and cli("pod.start").code == 0
    assert cli("pod.info", "--json").json["ssh_direct"]["port"] != port_before  # a new port per resume
    kill = cli("pod.kill", "--pod", "life", "--yes")
    assert kill.code == 0 and kill.out.startswith("changed: terminated pod life")
    assert not standin.world.pods
    gone = cli("pod.kill", "--pod", "life", "--yes")
    assert gone.code == 0 and gone.out.startswith("ok:")
    assert cli("pod.kill", "--pod", pid, "--yes", "--json").json["status"] == "ok"


def test_kill_without_yes_refuses_when_stdin_is_not_a_terminal(cli, standin):
    assert cli("pod.create", "--name", "k", "--no-wait").code == 0
    r = cli("pod.kill")
    assert r.code == 2 and "--yes" in r.err
    assert len(standin.world.pods) == 1


def test_up_converges_from_missing_stopped_and_running(cli, standin):
    first = cli("pod.up", "--name", "u")
    assert first.code == 0 and first.out.startswith("changed: created pod u"), first.err
    (pid,) = standin.world.pods
    assert cli("pod.up", "--name", "u").out.startswith("ok: pod u")
    assert cli("pod.stop").code == 0
    again = cli("pod.up", "--name", "u", "--json")
    assert again.code == 0 and again.json["changed"] is True and again.json["pod"]["status"] == "RUNNING"
    assert list(standin.world.pods) == [pid]


def test_list_and_info(cli, standin):
    vid = volume_id(standin)
    assert cli("pod.create", "--name", "one", "--volume-id", vid).code == 0
    # A pod created elsewhere (web console) shows up too, and a forgotten one is dropped from state.
    assert cli("pod.create", "--name", "two", "--no-wait", "--gpu", "RTX 4090").code == 0
    listed = cli("pod.list")
    assert listed.code == 0
    header = listed.out.splitlines()[0].split()
    assert header == ["NAME", "ID", "STATUS", "GPU", "DATACENTER", "VOLUME", "UPTIME", "$/HR", "SPENT"]
    assert "one" in listed.out and "two" in listed.out and vid in listed.out
    docs = cli("pod.list", "--json").json
    assert {p["name"] for p in docs} == {"one", "two"}
    state = json.loads((autopod_home() / "pods.json").read_text())
    assert {v["name"] for v in state.values()} == {"one", "two"}

    several = cli("pod.info")
    assert several.code == 2 and "one (" in several.err and "two (" in several.err
    info = cli("pod.info", "--pod", "one", "--json").json
    assert info["volume"] == {"id": vid, "name": "comfy-models", "size_gb": 100, "mount": "/workspace",
                              "datacenter": "EU-RO-1"}
    assert info["ssh"]["direct"].startswith("ssh -i ") and f"-p {info['ssh_direct']['port']}" in info["ssh"]["direct"]
    assert info["ssh"]["proxy"].endswith("@ssh.runpod.io") and info["spend_usd"] is not None
    human = cli("pod.info", "--pod", "one").out
    assert "SSH (PROXY, SHELL ONLY)" in human and "comfy-models" in human and "runpod/comfyui:latest" in human


def test_chained_tasks_target_the_new_pod(cli, standin):
    assert cli("pod.create", "--name", "old", "--no-wait").code == 0
    r = cli("pod.create", "--name", "new", "--no-wait", "pod.info")
    assert r.code == 0, r.err
    line, _, rest = r.out.partition("\n")
    assert line.startswith("changed: created pod new")
    assert "new" in rest and "old" not in rest
    # --json on any task of a chain: one document, an array with each task's document in order
    r = cli("pod.create", "--name", "new", "--no-wait", "pod.info", "--json")
    assert r.code == 0, r.err
    created, info = json.loads(r.out)
    assert created["changed"] is False and created["pod"]["name"] == "new"
    assert info["name"] == "new"


def test_rejected_key_exits_2(cli, standin):
    standin.world.settings["reject_key"] = True
    r = cli("pod.list")
    assert r.code == 2 and "API key rejected" in r.err and "sim-key" not in r.err


def test_no_key_exits_2_and_says_how_to_set_one(cli, standin, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY")
    r = cli("pod.list")
    assert r.code == 2 and "RUNPOD_API_KEY" in r.err


def test_transient_errors_are_retried_without_duplicate_pods(cli, standin):
    standin.world.patch({"settings": {"fail_every": 3}})
    r = cli("pod.create", "--name", "flaky")
    assert r.code == 0, r.err
    assert "retrying" in r.err
    standin.world.patch({"settings": {"fail_every": 3, "fail_after_execute": True}})
    r = cli("pod.create", "--name", "lost-answer", "--no-wait")
    assert r.code == 0, r.err
    assert "appeared although its create answer was lost" in r.err  # adopted, not re-sent
    names = sorted(p["name"] for p in standin.world.pods.values())
    assert names == ["flaky", "lost-answer"]


def test_timeout_stops_the_pod_and_exits_1(cli, standin):
    standin.world.settings["never_ready"] = True
    r = cli("pod.create", "--name", "slow", "--timeout", "1")
    assert r.code == 1
    assert "not ready after 1s" in r.err and "stopped it so it does not keep billing" in r.err
    (pod,) = standin.world.pods.values()
    assert pod["desiredStatus"] == "EXITED"


def test_wait_and_gpus(cli, standin):
    assert cli("pod.create", "--name", "w", "--no-wait").code == 0
    r = cli("pod.wait", "--timeout", "30")
    assert r.code == 0 and r.out.startswith("ok: pod w")
    g = cli("pod.gpus", "--json").json
    a40 = next(x for x in g if x["id"] == "NVIDIA RTX A40")
    assert a40["memory_gb"] == 48 and a40["secure_price"] == 0.4 and a40["stock"] in ("High", "Medium", "Low")
    assert "RTX A40" in cli("pod.gpus").out


def test_ssh_runs_openssh_and_returns_the_remote_exit_code(cli, standin, tmp_path, monkeypatch):
    assert cli("pod.create", "--name", "s").code == 0
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "ssh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\nexit 7\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = cli("pod.ssh", "--command", "nvidia-smi")
    assert r.code == 7
    argv = (tmp_path / "argv").read_text().splitlines()
    port = str(next(iter(standin.world.pods.values()))["public"]["ports"]["22"])
    assert argv[argv.index("-p") + 1] == port and "-T" in argv
    assert argv[-1] == "nvidia-smi" and argv[-2] == "root@127.0.0.1"
    fake.write_text('#!/bin/sh\necho "GPU 0: RTX A40"\necho "warn" >&2\nexit 7\n')
    r = cli("pod.ssh", "--command", "nvidia-smi", "--json")
    assert r.code == 7
    assert r.json["exit_code"] == 7 and r.json["stdout"] == "GPU 0: RTX A40\n" and r.json["stderr"] == "warn\n"
    assert cli("pod.ssh", "--json").code == 2  # an interactive shell has no output to report


@pytest.mark.parametrize("argv", [["--list"], ["--help"], ["--help", "pod.create"]])
def test_help_and_list_do_not_import_runpod(argv):
    code = ("import sys\nfrom autopod.cli import make_program\n"
            f"try:\n    make_program().run(['autopod', *{argv!r}])\nexcept SystemExit:\n    pass\n"
            "print('RUNPOD_IMPORTED' if 'runpod' in sys.modules else 'RUNPOD_NOT_IMPORTED', file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "RUNPOD_NOT_IMPORTED" in p.stderr, p.stderr


def test_invoke_list_in_a_checkout_does_not_import_runpod():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys\nfrom invoke import Program\n"
            "try:\n    Program().run(['invoke', '--list'])\nexcept SystemExit:\n    pass\n"
            "print('RUNPOD_IMPORTED' if 'runpod' in sys.modules else 'RUNPOD_NOT_IMPORTED', file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert "pod.create" in p.stdout and "volume.list" in p.stdout, p.stderr
    assert "RUNPOD_NOT_IMPORTED" in p.stderr, p.stderr


def test_ctrl_c_during_the_create_request_stops_what_it_made(cli, standin, monkeypatch):
    """The request reached RunPod, then the user pressed Ctrl-C: the pod must not bill unseen."""
    backend = backend_class(standin)
    real = backend.create_pod

    def create_then_interrupt(self, inp):
        real(self, inp)
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "create_pod", create_then_interrupt)
    r = cli("pod.create", "--name", "oops", "--json")
    assert r.code == 130
    assert "interrupted while creating pod oops" in r.json["msg"] and "stopped it" in r.json["msg"]
    [pod] = standin.world.pods.values()
    assert pod["name"] == "oops" and pod["desiredStatus"] == "EXITED"


def test_reading_tasks_never_import_the_sdk(cli, standin):
    """`pod.list`, `pod.info` and `volume.list` pay neither the SDK's import nor its CPU probe, on either API."""
    assert cli("pod.create", "--name", "quick", "--no-wait").code == 0
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.stderr.write('\\nRUNPOD_IMPORTED=%s\\n' % ('runpod' in sys.modules)))\n"
             "from autopod.launch import main\nsys.argv = ['autopod'] + sys.argv[1:]\nmain()\n")
    env = {**os.environ}
    for argv in (["pod.list"], ["pod.info", "--pod", "quick"], ["volume.list"]):
        p = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "RUNPOD_IMPORTED=False" in p.stderr, (argv, p.stderr[-300:])


@pytest.mark.parametrize("argv", [["pod.list"], ["pod.list", "--json"], ["pod.ls"], ["volume.list"],
                                  ["volume.list", "--json"]])
def test_the_quick_listing_prints_what_the_task_prints(cli, standin, argv):
    """The console script answers plain listings without invoke; the full CLI must agree to the byte."""
    from autopod.launch import parse_listing

    assert cli("pod.create", "--name", "same", "--no-wait").code == 0
    quick = subprocess.run([sys.executable, "-m", "autopod", *argv], env={**os.environ}, capture_output=True,
                           text=True, timeout=60)
    full = cli(*argv)
    assert parse_listing(argv) is not None
    assert quick.returncode == full.code == 0, quick.stderr
    # uptime and spend can tick between the two runs; everything else is identical
    strip = (lambda t: re.sub(r'"?(uptime_s|spend_usd)"?:? ?[0-9.]+|\b\d+s\b|\$\d+\.\d+', "", t))
    assert strip(quick.stdout) == strip(full.out)


def test_anything_but_a_plain_listing_goes_to_the_full_cli():
    from autopod.launch import parse_listing

    for argv in (["pod.list", "--json", "--json"], ["pod.list", "pod.info"], ["pod.list", "--json=yes"],
                 ["pod.info"], ["volume.list", "-h"], []):
        assert parse_listing(argv) is None, argv

"""No pod destroyed or left billing by mistake: races, signals, empty values, dry-run chains, typos,
damaged state and the output contract, each reproduced against the RunPod stand-in.

Processes are real where the finding is about processes: parallel creates and signals spawn
``python -m autopod`` and count pods in the stand-in's world afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from test_pods_standin import ssh_key, standin, volume_id  # noqa: F401  (fixtures)

from autopod.core import chain
from autopod.core.errors import AutopodError, Interrupted
from autopod.runpod import api as runpod_api
from autopod.runpod import lifecycle, spec


@pytest.fixture
def env(standin, autopod_home, tmp_path):  # noqa: F811
    """Environment for `autopod` subprocesses pointed at the in-process stand-in."""
    e = {**os.environ, "AUTOPOD_HOME": str(autopod_home), "HOME": str(tmp_path / "user-home"),
         "RUNPOD_API_KEY": "sim-key", "RUNPOD_API_BASE_URL": standin.url}
    return e


def spawn(env, *argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "autopod", *argv], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def await_stderr(p, text):
    """Read ``p``'s stderr up to the line containing ``text``: the point a signal test aims at (a fixed
    sleep loses that race on a busy machine). Returns the lines read."""
    lines = []
    for line in p.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came; stderr: {''.join(lines)[-2000:]}")


def run(env, *argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "autopod", *argv], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def live(standin, name=None):  # noqa: F811
    with standin.world.lock:
        return [p for p in standin.world.pods.values()
                if p.get("desiredStatus") != "TERMINATED" and (name is None or p.get("name") == name)]


def wait_until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


# -- 1. parallel creates -----------------------------------------------------------------------------------------

def test_parallel_creates_of_one_name_make_one_pod(env, standin):  # noqa: F811
    procs = [spawn(env, "pod.create", "--name", "race1", "--no-wait", "--json") for _ in range(5)]
    results = [(p.wait(120), p.stdout.read()) for p in procs]
    assert all(code == 0 for code, _ in results), [p.stderr.read() for p in procs]
    docs = [json.loads(out) for _, out in results]
    assert len(live(standin, "race1")) == 1
    assert sum(d["changed"] for d in docs) == 1  # one created it, four found it
    assert len({d["pod"]["id"] for d in docs}) == 1


def test_parallel_unnamed_creates_get_distinct_names(env, standin):  # noqa: F811
    procs = [spawn(env, "pod.create", "--no-wait", "--json") for _ in range(5)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    names = sorted(p["name"] for p in live(standin))
    assert len(names) == 5 and len(set(names)) == 5, names


def test_parallel_pod_up_converges_on_one_pod(env, standin):  # noqa: F811
    procs = [spawn(env, "pod.up", "--name", "same3", "--json") for _ in range(6)]
    for p in procs:
        assert p.wait(180) == 0, p.stderr.read()
    assert len(live(standin, "same3")) == 1


def test_parallel_volume_creates_make_one_volume(env, standin):  # noqa: F811
    procs = [spawn(env, "volume.create", "--name", "loras", "--size-gb", "10", "--datacenter", "US-KS-2")
             for _ in range(4)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    assert [v["name"] for v in standin.world.network_volumes.values()].count("loras") == 1


# -- 2, 3. dry runs hand no pod on, and invoke's own --dry is gone -------------------------------------------------

def test_a_dry_run_step_never_hands_a_pod_to_the_next_task(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "only", "--no-wait").code == 0
    for argv in (["pod.create", "--name", "newone", "--dry-run", "pod.kill", "--yes"],
                 ["pod.up", "--name", "only", "--dry-run", "pod.stop"],
                 ["pod.create", "--name", "only", "--dry-run", "pod.kill", "--yes"]):
        r = cli(*argv)
        assert r.code == 2 and "only pretended" in r.err, (argv, r.err)
        (pod,) = live(standin)
        assert pod["name"] == "only" and pod["desiredStatus"] == "RUNNING"


def test_dry_run_checks_what_the_real_run_checks(cli, standin):  # noqa: F811
    for bad in (["--env", "A B=1"], ["--port", "99999/http"], ["--port", "0/tcp"], ["--port", "8188/udp"],
                ["--gpu-count", "1000000000"], ["--gpu-count", "9"], ["--disk-gb", "99999999999999999999"],
                ["--datacenter", "XX-YY-9"], ["--name", "a\nb"], ["--name", "tab\there"], ["--name", "esc\x1b[2J"],
                ["--volume-mount", "relative/path"], ["--comfy-address", "127.0.0.1:70000"]):
        for dry in (["--dry-run"], ["--no-wait"]):
            r = cli("pod.create", *bad, *dry, "--json")
            assert r.code == 2, (bad, dry, r.err)
            assert r.json["failed"] is True and "Traceback" not in r.err
    assert not standin.world.pods


def test_invoke_run_flags_are_not_offered(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "keep", "--no-wait").code == 0
    for flag in ("--dry", "-R", "-w", "--warn-only", "--echo", "--hide=both", "--pty"):
        r = cli(flag, "pod.kill", "--pod", "keep", "--yes")
        assert r.code == 2, (flag, r.err)
    assert live(standin, "keep")
    assert "--dry" not in cli("--help").out


def test_invoke_in_a_checkout_refuses_run_flags(standin, env):  # noqa: F811
    from conftest import ROOT

    assert run(env, "pod.create", "--name", "keep", "--no-wait").returncode == 0
    p = subprocess.run([sys.executable, "-m", "invoke", "--dry", "pod.kill", "--pod", "keep", "--yes"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "--dry" in p.stderr
    assert live(standin, "keep")


# -- 4. an empty value is not "not given" ----------------------------------------------------------------------------

def test_empty_values_never_reach_a_pod(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "only", "--no-wait").code == 0
    assert cli("pod.stop", "--pod", "only").code == 0
    for argv in (["pod.kill", "--pod", "", "--yes"], ["pod.up", "--name", ""], ["pod.stop", "--pod", " "],
                 ["pod.start", "--pod", ""], ["pod.create", "--name", ""], ["pod.create", "--volume-id", ""],
                 ["pod.create", "--image", ""], ["pod.create", "--gpu-count", ""], ["pod.create", "--gpu", ""]):
        r = cli(*argv, "--json")
        assert r.code == 2 and "empty value" in r.json["msg"], (argv, r.err)
    (pod,) = live(standin)
    assert pod["desiredStatus"] == "EXITED"


# -- 5, 6. signals and interrupted creates -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_while_waiting_stops_the_new_pod_and_names_it(env, standin, sig, code):  # noqa: F811
    standin.world.settings["never_ready"] = True
    p = spawn(env, "pod.create", "--name", "t1", "--json")
    before = await_stderr(p, "waiting for pod")  # the create answer has arrived and the wait is under way
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    err = "".join(before) + err
    assert p.returncode == code, err
    doc = json.loads(out)
    (pod,) = [v for v in standin.world.pods.values() if v["name"] == "t1"]
    assert doc["failed"] is True and doc["exit_code"] == code
    assert doc["pod"] == {"id": pod["id"], "name": "t1", "status": "EXITED"}
    assert pod["desiredStatus"] == "EXITED" and "stopped it so it does not keep billing" in err


def test_sigterm_while_starting_a_pod_stops_it_again(env, standin, cli):  # noqa: F811
    assert cli("pod.create", "--name", "s1", "--no-wait").code == 0
    assert cli("pod.stop", "--pod", "s1").code == 0
    standin.world.settings["never_ready"] = True
    p = spawn(env, "pod.start", "--pod", "s1")
    await_stderr(p, "waiting for pod")
    assert live(standin, "s1")[0]["desiredStatus"] == "RUNNING"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert live(standin, "s1")[0]["desiredStatus"] == "EXITED"


class _Api:
    """The stand-in's adapter with one call replaced by a signal."""

    def __init__(self, api, **raise_in):
        self._api, self._raise_in, self.stopped = api, raise_in, []

    def __getattr__(self, name):
        real = getattr(self._api, name)
        if name in self._raise_in:
            def call(*a, **kw):
                result = real(*a, **kw)  # the request took effect; its answer is lost to the signal
                self._raise_in.pop(name)()
                return result
            return call
        return real


def _spec(name):
    return spec.resolve_spec({"name": name, "gpus": [], "ports": [], "env": []})


def test_interrupt_right_after_the_create_answer_stops_the_pod_and_names_it(standin, monkeypatch):  # noqa: F811
    monkeypatch.setattr(chain, "_pod_id", None)

    def sigterm():
        raise Interrupted(15)

    api = _Api(runpod_api.connect(), get_pod=sigterm)
    with pytest.raises(AutopodError) as e:
        lifecycle.ensure_pod(_spec("nowait"), api, wait=False)
    (pod,) = standin.world.pods.values()
    assert e.value.exit_code == 143 and pod["id"] in str(e.value)
    assert e.value.data["pod"] == {"id": pod["id"], "name": "nowait", "status": "EXITED"}
    assert pod["desiredStatus"] == "EXITED"


def test_a_second_interrupt_while_settling_an_interrupted_create_is_held(standin, monkeypatch):  # noqa: F811
    """Ctrl-C during the create request, then Ctrl-C again while autopod looks for the pod it may have made."""
    from autopod.core import signals

    monkeypatch.setattr(chain, "_pod_id", None)

    created = []

    def ctrl_c():
        created.append(True)
        raise Interrupted(2)

    api = _Api(runpod_api.connect(), create_pod=ctrl_c)
    real_list = api._api.list_pods

    def list_then_signal():
        if created:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C lands in the middle of the look-up
        return real_list()

    monkeypatch.setattr(api._api, "list_pods", list_then_signal)
    with signals.handling():
        with pytest.raises(AutopodError) as e:
            lifecycle.ensure_pod(_spec("twice"), api, wait=False)
    (pod,) = standin.world.pods.values()
    assert e.value.exit_code == 130 and "()" not in str(e.value)
    assert f"pod twice ({pod['id']}) was created" in str(e.value) and pod["desiredStatus"] == "EXITED"
    assert e.value.data["pods"] == [{"id": pod["id"], "name": "twice", "status": "EXITED"}]


# -- 7, 8. damaged bookkeeping never blocks a stop, and a typo is not success ------------------------------------------

def damage_file(path, damage):
    """Put ``damage`` (text, or "DIR": a folder) where a state file belongs."""
    if damage == "DIR":
        path.mkdir()
    else:
        path.write_text(damage)


@pytest.mark.parametrize("damage", ['{"tunnels": [1, 2]}', '{"tunnels": {"x": {"pid": "abc"}}}', "{oops", "DIR"])
def test_a_damaged_tunnels_json_does_not_block_pod_kill(cli, standin, autopod_home, damage):  # noqa: F811
    assert cli("pod.create", "--name", "victim", "--no-wait").code == 0
    path = autopod_home / "tunnels.json"
    damage_file(path, damage)
    r = cli("pod.kill", "--pod", "victim", "--yes")
    assert r.code == 0, r.err
    assert r.out.startswith("changed: terminated pod victim") and "tunnels.json" in r.err
    assert not live(standin)
    assert path.is_dir() if damage == "DIR" else path.read_text() == damage  # never overwritten


@pytest.mark.parametrize("damage", ['{"r2": "x"}', '{"p": {"name": 5}}', "[1]", "DIR"])
def test_a_damaged_pods_json_is_reported_but_does_not_block_the_lifecycle(cli, standin, autopod_home,  # noqa: F811
                                                                         damage):
    autopod_home.mkdir(parents=True, exist_ok=True)
    path = autopod_home / "pods.json"
    damage_file(path, damage)
    r = cli("pod.create", "--name", "p1", "--no-wait")
    assert r.code == 0 and "pods.json" in r.err, r.err
    assert cli("pod.list").code == 0
    assert cli("pod.stop", "--pod", "p1").code == 0
    assert cli("pod.kill", "--pod", "p1", "--yes").code == 0
    assert not live(standin)
    assert path.is_dir() if damage == "DIR" else path.read_text() == damage


def test_a_typo_is_not_already_gone(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "real", "--no-wait").code == 0
    r = cli("pod.kill", "--pod", "nosuch", "--yes")
    assert r.code == 2 and "no pod 'nosuch'" in r.err and "real" in r.err
    assert live(standin, "real")
    assert cli("pod.kill", "--pod", "real", "--yes").code == 0
    again = cli("pod.kill", "--pod", "real", "--yes")  # autopod knew it: killing twice is fine
    assert again.code == 0 and again.out.startswith("ok: pod real is already gone")


# -- 9-12. files, pipes and bytes -----------------------------------------------------------------------------------

def test_autopod_home_that_is_a_file_is_one_line(tmp_path, standin, env):  # noqa: F811
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    for argv in (["pod.list"], ["tunnel.list"], ["comfy.status", "--no-tunnel"], ["sim.status"]):
        p = run({**env, "AUTOPOD_HOME": str(f)}, *argv, "--json")
        assert p.returncode == 2, (argv, p.stderr)
        assert "Traceback" not in p.stderr and "is not a folder" in json.loads(p.stdout)["msg"]


def test_an_unwritable_log_folder_costs_the_log_not_the_command(cli, standin, autopod_home):  # noqa: F811
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "logs").write_text("a file where the log folder should be")
    r = cli("pod.list", "--json")
    assert r.code == 0 and r.json == [] and "cannot write the autopod log" in r.err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_autopod_home_fails_in_one_line(cli, standin, autopod_home):  # noqa: F811
    autopod_home.mkdir(parents=True, exist_ok=True)
    autopod_home.chmod(0o500)
    try:
        r = cli("pod.create", "--name", "ro", "--no-wait")
        assert "Traceback" not in r.err and "internal error" not in r.err
    finally:
        autopod_home.chmod(0o700)


def test_home_logs_and_log_file_are_private(cli, standin, autopod_home):  # noqa: F811
    autopod_home.mkdir(parents=True, exist_ok=True)
    autopod_home.chmod(0o755)
    (autopod_home / "logs").mkdir()
    (autopod_home / "logs").chmod(0o755)
    assert cli("pod.list").code == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(autopod_home) == 0o700 and mode(autopod_home / "logs") == 0o700
    assert mode(autopod_home / "logs" / "autopod.log") == 0o600
    assert all(mode(p) == 0o600 for p in autopod_home.glob("*.json"))


@pytest.mark.parametrize("argv", [["--list"], ["--help", "pod.create"], ["pod.info", "--pod", "one"],
                                  ["pod.list"], ["comfy.status", "--no-tunnel"]])
def test_output_into_a_closed_pipe_ends_quietly(env, cli, standin, argv):  # noqa: F811
    assert cli("pod.create", "--name", "one", "--no-wait").code == 0
    cmd = " ".join(f"'{a}'" for a in [sys.executable, "-m", "autopod", *argv])
    p = subprocess.run(["bash", "-c", f"{cmd} 2>err.txt | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=env["AUTOPOD_HOME"])
    err = open(os.path.join(env["AUTOPOD_HOME"], "err.txt")).read()
    assert "Traceback" not in err and "BrokenPipe" not in err and "internal error" not in err, err
    assert p.stdout.strip() in ("0", "1", "141"), p.stdout  # 141 when the pipe closed first, like any Unix tool


def test_bytes_that_are_not_utf8_are_refused_in_one_line(env, standin):  # noqa: F811
    p = subprocess.run([sys.executable.encode(), b"-m", b"autopod", b"pod.create", b"--name", b"\xff\xfe",
                        b"--no-wait"], env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2 and "not valid UTF-8" in err and "Traceback" not in err
    assert not standin.world.pods


# -- 14-18. the output contract -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["pod.create", "--bogus"], ["pod.bogus"], ["pod.create", "--name"],
                                  ["comfy.status", "--json=yes"], ["--nope", "pod.list"],
                                  ["comfy.status", "--wait", "1", "--wait", "2"]])
def test_parse_errors_under_json_print_one_document(cli, argv):
    r = cli(*argv, "--json") if "--json=yes" not in argv else cli(*argv)
    assert r.code == 2 and "Traceback" not in r.err
    doc = json.loads(r.out)
    assert doc["failed"] is True and doc["exit_code"] == 2 and doc["msg"]


def test_a_repeated_flag_is_named_and_the_quick_path_agrees(run_autopod, cli):
    quick = run_autopod("comfy.status", "--wait", "1", "--wait", "2", "--no-tunnel")
    full = cli("comfy.status", "--wait", "1", "--wait", "2", "--no-tunnel")
    assert quick.code == full.code == 2
    assert "--wait is given twice" in quick.err and quick.err == full.err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e999", "1_0", "+2", " 2 "])
def test_comfy_wait_takes_only_a_finite_number(cli, value):
    r = cli("comfy.status", "--no-tunnel", "--wait", value)
    assert r.code == 2, (value, r.err)


@pytest.mark.parametrize("value", ["1_0", "+2", " 2 ", "0x10", "2.5", "nan"])
def test_whole_numbers_are_read_strictly(cli, standin, value):  # noqa: F811
    r = cli("pod.create", "--gpu-count", value, "--dry-run")
    assert r.code == 2 and "--gpu-count" in r.err, (value, r.err)


def test_a_chain_under_json_prints_one_array_even_when_it_fails(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "a", "--no-wait").code == 0
    r = cli("pod.list", "pod.kill", "--pod", "nosuch", "--yes", "--json")
    assert r.code == 2
    listing, failure = json.loads(r.out)
    assert [p["name"] for p in listing] == ["a"]
    assert failure["failed"] is True and "nosuch" in failure["msg"]


# -- 21. control characters ------------------------------------------------------------------------------------------

def test_control_characters_from_the_api_are_escaped_in_tables(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "plain", "--no-wait").code == 0
    with standin.world.lock:
        (pod,) = standin.world.pods.values()
        pod["name"] = "evil\x1b[2J\nname"  # renamed in the web console
    r = cli("pod.list")
    assert r.code == 0 and "\x1b" not in r.out and "evil\\x1b[2J\\nname" in r.out
    assert json.loads(cli("pod.list", "--json").out)[0]["name"] == "evil\x1b[2J\nname"


# -- 24. a corrupt sim.json does not strand the simulator ------------------------------------------------------------

def test_sim_json_with_wrong_types_is_one_line(cli, autopod_home):
    autopod_home.mkdir(parents=True, exist_ok=True)
    (autopod_home / "sim.json").write_text('{"base_url": 5, "api_key": "k"}')
    r = cli("pod.list", "--json")
    assert r.code == 2 and "sim.json is corrupt" in r.json["msg"] and "sim.stop" in r.json["msg"]

"""Warm start (autopod.core.warm): a quick-path command runs in a child forked from a resident server, with
the result, signals and deaths of a fresh process. Each test has its own socket folder, so its own server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autopod.core import warm

STATUS = ("comfy.status", "--no-tunnel", "--wait", "60", "--json")  # waits on a ComfyUI nobody runs


def autopod(env: dict, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autopod", *argv], env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, **kw)


def wait_until(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def env(tmp_path, autopod_home):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    autopod_home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (autopod_home / "config.yaml").write_text(f"comfy_url: http://127.0.0.1:{port}\n")
    e = {**os.environ, "XDG_RUNTIME_DIR": str(run), "AUTOPOD_WARM_IDLE_S": "60"}
    e.pop("AUTOPOD_WARM", None)
    e.pop("AUTOPOD_WARM_CHILD", None)
    yield e
    for pid in servers(e):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def folder(env: dict) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / "autopod"


def servers(env: dict) -> list[int]:
    """The pids the server lock files name, of servers still running."""
    out = []
    for lock in folder(env).glob("*.lock") if folder(env).is_dir() else []:
        text = lock.read_text().strip()
        if text.isdigit() and psutil.pid_exists(int(text)):
            out.append(int(text))
    return out


def serving(env: dict) -> int:
    """Wait until a server answers on its socket; its pid."""
    def up() -> bool:
        pids = servers(env)
        if len(pids) != 1:
            return False
        for sock in folder(env).glob("*.sock"):
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(sock))
                    return True
                except OSError:
                    return False
        return False

    assert wait_until(up, 60), f"no warm server came up in {folder(env)}"
    return servers(env)[0]


def start_waiting(env: dict) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "autopod", *STATUS], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    line = p.stderr.readline()
    assert "waiting up to 60s" in line, line
    return p


def test_a_quick_command_gives_the_same_result_warm_as_fresh(env):
    """Exit code, stdout and stderr of a failing quick-path command: fresh, while starting the server, warm."""
    args = ("comfy.status", "--pod", "nope", "--json")  # no RunPod key: exit 2 with the usual line
    fresh = autopod({**env, "AUTOPOD_WARM": "0"}, *args)
    assert fresh.returncode == 2 and json.loads(fresh.stdout)["exit_code"] == 2, fresh.stderr
    assert not folder(env).exists() or not list(folder(env).glob("*.sock"))  # AUTOPOD_WARM=0 starts nothing
    first = autopod(env, *args)
    pid = serving(env)
    warm_run = autopod(env, *args)
    for p in (first, warm_run):
        assert (p.returncode, p.stdout, p.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert servers(env) == [pid]
    assert oct(folder(env).stat().st_mode & 0o777) == "0o700"


def test_the_command_runs_in_a_child_of_the_server_and_ctrl_c_reaches_it(env):
    pid = (autopod(env, "comfy.status", "--pod", "nope"), serving(env))[1]
    p = start_waiting(env)
    try:
        assert psutil.Process(p.pid).children() == []  # nothing runs in the command's own process tree...
        kids = psutil.Process(pid).children()
        assert len(kids) == 1 and kids[0].pid == os.getpgid(kids[0].pid)  # ...but in the server's child
        child = kids[0]
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130 and json.loads(out)["msg"] == "interrupted" and err == "error: interrupted\n"
    assert wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10)


@pytest.mark.parametrize("sig,code,msg", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                          (signal.SIGHUP, 129, "hung up (SIGHUP)")])
def test_term_and_hup_reach_the_child_as_they_reach_a_fresh_process(env, sig, code, msg):
    fresh = start_waiting({**env, "AUTOPOD_WARM": "0"})
    fresh.send_signal(sig)
    fresh_out, fresh_err = fresh.communicate(timeout=30)
    autopod(env, "comfy.status", "--pod", "nope")
    serving(env)
    p = start_waiting(env)
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (fresh.returncode, fresh_out, fresh_err)
    assert p.returncode == code and json.loads(out) == {**json.loads(out), "exit_code": code, "msg": msg}, err


def test_kill_9_of_the_command_kills_its_warm_child_and_the_server_serves_on(env):
    pid = (autopod(env, "comfy.status", "--pod", "nope"), serving(env))[1]
    p = start_waiting(env)
    child = psutil.Process(pid).children()[0]
    p.kill()
    p.wait(10)
    assert wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10)
    again = autopod(env, "comfy.status", "--pod", "nope")
    assert again.returncode == 2 and servers(env) == [pid]


def test_a_child_that_dies_of_a_signal_takes_the_command_with_it(env):
    pid = (autopod(env, "comfy.status", "--pod", "nope"), serving(env))[1]
    p = start_waiting(env)
    psutil.Process(pid).children()[0].kill()  # as if the OOM killer took the command
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL


def test_an_upgraded_autopod_is_never_run_by_an_older_server(env):
    """A module file of the running server changes: that command runs fresh, the server leaves, a new one
    serves the next commands."""
    old = (autopod(env, "comfy.status", "--pod", "nope"), serving(env))[1]
    module = Path(warm.__file__).with_name("errors.py")
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        p = autopod(env, "comfy.status", "--pod", "nope", "--json")
        assert p.returncode == 2 and json.loads(p.stdout)["exit_code"] == 2
        assert wait_until(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == "zombie", 10)
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    autopod(env, "comfy.status", "--pod", "nope")
    new = serving(env)
    assert new != old


def test_no_server_where_the_socket_folder_is_not_private(env):
    folder(env).mkdir(mode=0o755)
    os.chmod(folder(env), 0o755)  # past the umask
    for _ in range(2):
        p = autopod(env, "comfy.status", "--pod", "nope")
        assert p.returncode == 2 and "no RunPod API key" in p.stderr
    time.sleep(0.5)  # a server would have bound its socket by now; its absence is the point
    assert list(folder(env).iterdir()) == []


def test_the_server_holds_none_of_the_commands_secrets(env):
    secret = "rpa_WARMSECRET0123456789"
    autopod({**env, "RUNPOD_API_KEY": secret}, "comfy.status", "--pod", "nope")
    pid = serving(env)
    proc = psutil.Process(pid)
    assert secret not in " ".join(proc.cmdline()) and secret not in json.dumps(proc.environ())
    assert "AUTOPOD_HOME" not in proc.environ()  # each command brings its own


def test_an_idle_server_leaves(env):
    env["AUTOPOD_WARM_IDLE_S"] = "1"
    autopod(env, "comfy.status", "--pod", "nope")
    pid = serving(env)
    assert wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 20)
    assert not list(folder(env).glob("*.sock"))


def test_the_key_names_what_a_fresh_interpreter_starts_with(monkeypatch):
    base = warm._key()
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert warm._key() != base
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.setenv("LC_ALL", "xx_TEST.UTF-8")
    assert warm._key() != base
    monkeypatch.delenv("LC_ALL")
    monkeypatch.setenv("AUTOPOD_HOME", "/another/home")  # a command's own settings travel with it
    assert warm._key() == base


@pytest.mark.parametrize("value,why", [("", "set but empty"), ("yes", "must be 0 (off) or 1 (on)"),
                                       (" 1", "blanks around")])
def test_a_bad_autopod_warm_is_bad_input(env, value, why):
    p = autopod({**env, "AUTOPOD_WARM": value}, "comfy.status", "--pod", "nope", "--json")
    assert p.returncode == 2 and why in p.stderr and json.loads(p.stdout)["exit_code"] == 2
    assert "Traceback" not in p.stderr
    assert not folder(env).exists() or not list(folder(env).glob("*.sock"))  # and nothing was started


def test_a_stopped_command_stops_its_warm_child_until_it_continues(env):
    """SIGSTOP cannot be passed on, so the child follows the command's own state; SIGCONT is passed on."""
    pid = (autopod(env, "comfy.status", "--pod", "nope"), serving(env))[1]
    p = start_waiting(env)
    child = psutil.Process(pid).children()[0]
    try:
        p.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: child.status() == psutil.STATUS_STOPPED, 10)
        p.send_signal(signal.SIGCONT)
        assert wait_until(lambda: child.status() != psutil.STATUS_STOPPED, 10)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130 and json.loads(out)["exit_code"] == 130


def test_where_the_platform_lacks_what_warm_start_needs_every_command_runs_fresh(monkeypatch):
    monkeypatch.setattr(warm, "SUPPORTED", False)
    assert not warm.enabled() and warm.run(["comfy.status"]) is None

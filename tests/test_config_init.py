"""config.init: the first run, from a script (flags) and on a terminal (questions), against the RunPod stand-in."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autopod.sim.runpod_standin import RunPodStandin

KEY = "rpa_TESTKEY0123456789"


@pytest.fixture
def account(monkeypatch, tmp_path):
    """A stand-in account whose key is KEY; the key is NOT in the environment (config.init must find it)."""
    with RunPodStandin(api_key=KEY) as s:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", s.url)
        yield s


@pytest.fixture
def home(tmp_path):
    return tmp_path / "user-home"  # HOME (conftest)


def make_key(home: Path) -> Path:
    key = home / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def autopod(*argv, stdin=None, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "autopod", *argv], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def volume(s, name="comfy-models"):
    return next(k for k, v in s.world.network_volumes.items() if v["name"] == name)


def test_a_script_sets_everything_with_flags_and_a_second_run_is_ok(account, home, autopod_home):
    key = make_key(home)
    vid = volume(account)
    p = autopod("config.init", "--api-key-stdin", "--volume-id", vid, "--gpu", "RTX 4090", "--json", stdin=KEY + "\n")
    assert p.returncode == 0, p.stderr
    import json

    doc = json.loads(p.stdout)
    assert doc["changed"] is True and doc["init"]["account"]["id"].startswith("user_")
    cfg = yaml.safe_load((autopod_home / "config.yaml").read_text())
    assert cfg == {"ssh_key": str(key), "volume_id": vid, "gpus": ["RTX 4090"]}
    assert stat.S_IMODE((autopod_home / "config.yaml").stat().st_mode) == 0o600
    toml = home / ".runpod" / "config.toml"
    assert f'api_key = "{KEY}"' in toml.read_text() and stat.S_IMODE(toml.stat().st_mode) == 0o600
    assert KEY not in p.stdout + p.stderr
    assert KEY not in (autopod_home / "logs" / "autopod.log").read_text()
    # The key file is now what every command uses; the same settings again change nothing.
    again = autopod("config.init", "--volume-id", vid, "--gpu", "RTX 4090", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again.stderr
    assert autopod("volume.list", "--json").returncode == 0


def test_a_rejected_key_writes_nothing(account, home, autopod_home):
    make_key(home)
    p = autopod("config.init", "--api-key-stdin", stdin="rpa_WRONGKEY000000\n")
    assert p.returncode == 2 and "API key rejected" in p.stderr and "WRONGKEY" not in p.stderr
    assert not (autopod_home / "config.yaml").exists() and not (home / ".runpod" / "config.toml").exists()


def test_no_key_in_a_script_says_how_to_give_one(account, home):
    make_key(home)
    p = autopod("config.init")
    assert p.returncode == 2 and "--api-key-stdin" in p.stderr


def test_existing_runpod_config_is_kept_and_updated(account, home, autopod_home):
    make_key(home)
    toml = home / ".runpod" / "config.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text('[default]\napi_key = "rpa_OLD_AND_WRONG_1"\nother = 1\n\n[profile2]\napi_key = "x"\n')
    p = autopod("config.init", "--api-key-stdin", stdin=KEY + "\n")
    assert p.returncode == 0, p.stderr
    import tomllib

    data = tomllib.loads(toml.read_text())
    assert data == {"default": {"api_key": KEY, "other": 1}, "profile2": {"api_key": "x"}}


def test_ssh_key_is_created_only_when_asked(account, home, autopod_home):
    p = autopod("config.init", "--api-key-stdin", stdin=KEY + "\n")
    assert p.returncode == 2 and "--create-key" in p.stderr
    p = autopod("config.init", "--api-key-stdin", "--create-key", stdin=KEY + "\n")
    assert p.returncode == 0, p.stderr
    key = home / ".ssh" / "id_ed25519"
    assert key.is_file() and key.with_suffix(".pub").is_file()
    assert yaml.safe_load((autopod_home / "config.yaml").read_text())["ssh_key"] == str(key)


def test_a_volume_not_on_the_account_is_refused(account, home, autopod_home):
    make_key(home)
    p = autopod("config.init", "--api-key-stdin", "--volume-id", "nosuchvol1", stdin=KEY + "\n")
    assert p.returncode == 2 and "nosuchvol1" in p.stderr
    assert not (autopod_home / "config.yaml").exists()


def _converse(argv, answers, env, timeout=60.0):
    """Run autopod on a pseudo-terminal; answer each prompt that contains a key of ``answers``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as in a real shell
        os.execve(sys.executable, [sys.executable, "-m", "autopod", *argv], env)
    out, pending, seen, end = b"", list(answers), 0, time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            text = out.decode(errors="replace")
            if pending and text.find(pending[0][0], seen) >= 0:
                seen = text.find(pending[0][0], seen) + len(pending[0][0])
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
    finally:
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_on_a_terminal_it_asks(account, home, autopod_home):
    key = make_key(home)
    vid = volume(account)
    env = {**os.environ, "HOME": str(home), "AUTOPOD_HOME": str(autopod_home)}
    env.pop("RUNPOD_API_KEY", None)
    code, screen = _converse(["config.init"], [("SSH key for pods", ""), ("RunPod API key", KEY),
                                               ("Network volume with your models", vid)], env)
    assert code == 0, screen
    assert KEY not in screen  # the key prompt does not echo
    assert yaml.safe_load((autopod_home / "config.yaml").read_text()) == {"ssh_key": str(key), "volume_id": vid}

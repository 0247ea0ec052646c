"""Shared fixtures: an isolated AUTOPOD_HOME, and running the CLI in-process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
WORKERS_PER_CPU = 2  # the tests mostly wait (subprocesses, simulated pods, idle clocks): two per CPU keep it busy
MAX_WORKERS = 8
# Modules that run whole on one worker: their tests share one expensive module fixture (a simulator with a pod,
# a fleet, a browser with the editor open), and test_fleet.py's tests run in file order on the fleet they share.
ONE_WORKER = ("tests/test_editor_browser.py", "tests/test_fleet.py", "tests/test_models_sim.py")
# The commands the tests run go through the warm server as a user's do (autopod.core.warm); the one the suite
# starts leaves half a minute after its last command instead of ten.
os.environ.setdefault("AUTOPOD_WARM_IDLE_S", "30")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default, pyproject.toml): PYTEST_XDIST_AUTO_NUM_WORKERS if set, else two workers per CPU."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, WORKERS_PER_CPU * cpus))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` (the default): each test goes to the next free worker, except ONE_WORKER's modules,
    each sent whole to one worker, biggest first. (pytest-xdist's own grouping by ``xdist_group`` marks rewrites
    node ids in a way pytest 9 no longer reads, so it would silently split the modules.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER else nodeid

    return ModulesWhole(config, log)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self):
        import json

        return json.loads(self.out)


@pytest.fixture(autouse=True)
def autopod_home(tmp_path, monkeypatch):
    """Every test gets its own AUTOPOD_HOME and an empty inventory, and never sees a real key."""
    home = tmp_path / "autopod-home"
    monkeypatch.setenv("AUTOPOD_HOME", str(home))
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(tmp_path / "no-inventory.yml"))
    (tmp_path / "no-inventory.yml").write_text("")
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.delenv("RUNPOD_API_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no ~/.runpod, ~/.ssh of the developer
    (tmp_path / "user-home").mkdir()
    return home


@pytest.fixture
def comfy(tmp_path, autopod_home):
    """The simulator's ComfyUI with its own model-free nodes, as ``comfy_url`` (reached with --no-tunnel).
    A module that needs another ComfyUI defines its own ``comfy``."""
    from autopod.sim.comfyui_standin import ComfyUIStandin

    with ComfyUIStandin(sim_nodes=True, root=tmp_path / "comfyui") as s:
        autopod_home.mkdir(parents=True, exist_ok=True)
        (autopod_home / "config.yaml").write_text(f"comfy_url: {s.url}\n")
        yield s


@pytest.fixture
def cli(capsys):
    """Run ``autopod ARGS...`` in this process; returns CliResult(code, out, err)."""
    from autopod.cli import make_program

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            make_program().run(["autopod", *argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def console(capsys, monkeypatch):
    """``autopod ARGS...`` through the console script's entry (``autopod.launch.main``), in this process."""
    import autopod.cli
    from autopod import launch

    monkeypatch.setattr(autopod.cli, "main", lambda: autopod.cli.make_program().run())

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["autopod", *argv])
        code = 0
        try:
            launch.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def run_autopod():
    """Run the installed ``autopod`` command as a real subprocess (fresh interpreter)."""

    def run(*argv: str, env: dict | None = None, timeout: float = 120, input: str | None = None) -> CliResult:
        cmd = [sys.executable, "-m", "autopod", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                           timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        return CliResult(p.returncode, p.stdout, p.stderr)

    return run
from sshd_server import *  # noqa: E402,F401,F403  (sshd, http_backend, ssh_box: real OpenSSH fixtures)

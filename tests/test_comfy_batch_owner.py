"""One autopod process at a time holds a batch: it alone submits and fetches the batch's prompts.

Two resumes at once, a resume beside the run still going, watch and fetch beside a resume, a detached
batch a watch took over, a holder killed with kill -9. Against the executing ComfyUI stand-in behind a
real sshd, reached through an autopod tunnel, with every contender a process of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_fixtures import wait_until
from conftest import CliResult
from test_comfy_run import _wait_running, sleepy, write
from test_comfyui_exec_clients import tunneled  # noqa: F401  (fixture: stand-in + tunnel to inventory host "gpu")

pytestmark = pytest.mark.sshd


def _planned(tmp_path: Path, prefixes: list[str], seconds: float) -> str:
    """A batch recorded in the ledger whose prompts were never submitted (as after Ctrl-C, or a crash
    before the first submit): ``--resume`` submits them all."""
    from autopod.comfy.ledger import Ledger
    from autopod.comfy.outputs import DEFAULT_TEMPLATE
    from autopod.comfy.workflow import prompt_hash
    from autopod.tunnels.resolve import resolve_target

    target = resolve_target("gpu")
    prompts = []
    for prefix in prefixes:
        prompt = sleepy(seconds, steps=2, prefix=prefix)
        prompts.append({"workflow": "slow.json", "workflow_hash": prompt_hash(prompt), "prompt": prompt,
                        "prompt_hash": prompt_hash(prompt), "overrides": {}, "seeds": {}, "job": "slow"})
    with Ledger.open() as led:
        batch = led.new_batch("slow", target_id=target.id, target_name=target.name,
                              output_dir=str(tmp_path / "out"), template=DEFAULT_TEMPLATE, options={},
                              prompts=prompts)
    return batch.id


def _spawn(autopod_home: Path, *argv: str, stderr: Path | None = None) -> subprocess.Popen:
    """``autopod ARGV --json`` in a process of its own; its stderr into the file ``stderr`` if given (to be
    read while it runs)."""
    env = {**os.environ, "AUTOPOD_HOME": str(autopod_home)}
    err = stderr.open("w") if stderr is not None else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, "-m", "autopod", *argv, "--json"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        if stderr is not None:
            err.close()


def _ran(standin) -> list[str]:
    """The prefix of every prompt the server ran to the end, once per run."""
    return sorted(e["prompt"][2]["3"]["inputs"]["filename_prefix"] for e in standin.history.values()
                  if e["status"]["status_str"] == "success")


def _downloads(standin) -> int:
    return sum(1 for m, path in standin.requests if m == "GET" and path in ("/view", "/api/view"))


def _holder_pid(batch: str) -> int | None:
    from autopod.comfy.ledger import batch_holder

    holder = batch_holder(batch)
    return holder.pid if holder else None


@contextlib.contextmanager
def _frozen(p: subprocess.Popen):
    """SIGSTOP ``p`` meanwhile: it keeps what it holds, and cannot finish before the check is done."""
    p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        p.send_signal(signal.SIGCONT)


def _finish(p: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    try:
        return p.communicate(timeout=timeout)
    finally:
        p.kill()


def test_two_resumes_at_once_run_each_prompt_once_and_the_loser_names_the_winner(tunneled, autopod_home,
                                                                                  tmp_path):
    standin, _ = tunneled
    prefixes = ["r0", "r1", "r2"]
    batch = _planned(tmp_path, prefixes, seconds=1.0)
    first, second = (_spawn(autopod_home, "comfy.run", "--resume", batch, "--pod", "gpu") for _ in range(2))
    (out1, err1), (out2, err2) = _finish(first), _finish(second)
    # The server ran every prompt of the batch exactly once.
    assert _ran(standin) == prefixes, (err1[-2000:], err2[-2000:])
    assert len(standin.history) == len(prefixes)
    assert sorted([first.returncode, second.returncode]) == [0, 1], (err1[-2000:], err2[-2000:])
    (winner, out, _), (loser, lost_out, lost_err) = sorted(
        [(first, out1, err1), (second, out2, err2)], key=lambda x: x[0].returncode)
    assert [q["status"] for q in json.loads(out)["prompts"]] == ["success"] * 3
    assert lost_err.startswith("error: ") and f"autopod process {winner.pid} (comfy.run --resume" in lost_err
    failed = json.loads(lost_out)
    assert failed["failed"] is True and failed["holder"]["pid"] == winner.pid
    assert _downloads(standin) == len(prefixes)  # each output fetched once


def test_a_resume_while_the_first_run_still_runs_exits_1(tunneled, cli, autopod_home, tmp_path):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(0.6, steps=2))
    run = _spawn(autopod_home, "comfy.run", str(wf), "--sweep", "3.filename_prefix=a0,a1,a2", "--max-queued", "1",
                 "--pod", "gpu", "--output-dir", str(tmp_path / "out"))
    _wait_running(standin)
    batch = cli("comfy.jobs", "--json").json[0]["id"]
    with _frozen(run):
        r = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert r.code == 1, r.err
    assert f"autopod process {run.pid} (comfy.run," in r.err and f"batch {batch}" in r.err
    _out, err = _finish(run)
    assert run.returncode == 0, err[-2000:]
    assert _ran(standin) == ["a0", "a1", "a2"] and len(standin.history) == 3  # none ran twice
    # Once the run has ended the batch is free again: nothing is left to do.
    again = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert again.code == 0 and again.json["changed"] is False, again.err


def test_fetch_beside_a_resume_exits_1_and_watch_follows_it_read_only(tunneled, cli, autopod_home, tmp_path):
    standin, _ = tunneled
    prefixes = ["w0", "w1", "w2"]
    batch = _planned(tmp_path, prefixes, seconds=0.6)
    resume = _spawn(autopod_home, "comfy.run", "--resume", batch, "--pod", "gpu")
    _wait_running(standin)
    with _frozen(resume):
        f = cli("comfy.fetch", batch, "--json")
        assert f.code == 1, f.err
        assert f"autopod process {resume.pid} (comfy.run --resume" in f.err and "comfy.watch" in f.err
        # The watch follows the ledger until the resume ends, then looks at what is left.
        log = tmp_path / "watch.err"
        watch = _spawn(autopod_home, "comfy.watch", batch, stderr=log)
        wait_until(lambda: "read-only" in log.read_text(), timeout=30, what="the watch following the resume")
    out, _ = _finish(watch)
    _out, err = _finish(resume)
    assert resume.returncode == 0, err[-2000:]
    w = CliResult(watch.returncode, out, log.read_text())
    assert w.code == 0, w.err
    assert f"held by autopod process {resume.pid} (comfy.run --resume" in w.err and "read-only" in w.err
    assert "prompt 3/3" in w.err and "success, outputs saved" in w.err  # the prompts' progress, from the ledger
    assert f"process {resume.pid} has let go of batch {batch}" in w.err
    assert [q["status"] for q in w.json["prompts"]] == ["success"] * 3
    assert _ran(standin) == prefixes and len(standin.history) == 3
    assert _downloads(standin) == 3  # every output fetched once, by the resume
    outputs = sorted(p.name for p in (tmp_path / "out").rglob("*.png") if p.parent.name != batch)  # not the sheet
    assert len(outputs) == 3 and not any("(1)" in n for n in outputs), outputs
    done = cli("comfy.fetch", batch, "--json")
    assert done.code == 0 and done.json["fetched"] == 0, done.err


def test_a_detached_batch_is_held_by_the_watch_that_follows_it(tunneled, cli, autopod_home, tmp_path):
    standin, _ = tunneled
    wf = write(tmp_path, "slow.json", sleepy(0.8, steps=2))
    r = cli("comfy.run", str(wf), "--sweep", "3.filename_prefix=d0,d1", "--pod", "gpu", "--output-dir",
            str(tmp_path / "out"), "--detach", "--json")
    assert r.code == 0, r.err  # --detach held the batch while it submitted, and let go when it returned
    batch = r.json["batch"]
    watch = _spawn(autopod_home, "comfy.watch", batch)
    wait_until(lambda: _holder_pid(batch) == watch.pid, timeout=30, what="the watch holding the batch")
    with _frozen(watch):
        resumed = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert resumed.code == 1 and f"autopod process {watch.pid} (comfy.watch" in resumed.err, resumed.err
    out, err = _finish(watch)
    assert watch.returncode == 0, err[-2000:]
    assert [q["status"] for q in json.loads(out)["prompts"]] == ["success", "success"]
    assert _ran(standin) == ["d0", "d1"] and _downloads(standin) == 2


def test_a_holder_killed_with_sigkill_leaves_the_batch_free(tunneled, cli, autopod_home, tmp_path):
    standin, _ = tunneled
    prefixes = ["k0", "k1"]
    batch = _planned(tmp_path, prefixes, seconds=0.6)
    resume = _spawn(autopod_home, "comfy.run", "--resume", batch, "--pod", "gpu")
    _wait_running(standin)
    resume.send_signal(signal.SIGSTOP)  # it cannot finish meanwhile
    busy = cli("comfy.fetch", batch, "--json")
    assert busy.code == 1 and f"autopod process {resume.pid}" in busy.err, busy.err
    resume.kill()  # SIGKILL: no cleanup; the lock goes with the process
    resume.wait(30)
    r = cli("comfy.run", "--resume", batch, "--pod", "gpu", "--json")
    assert r.code == 0, r.err
    assert [q["status"] for q in r.json["prompts"]] == ["success", "success"]
    assert _ran(standin) == prefixes  # what the killed resume had submitted was followed, not sent again

"""comfy.run against careless input and a hostile ComfyUI: where outputs go is checked before anything is
sent, a /view answer that is not the file is never saved as one, --timeout bounds downloads too, sidecars
carry honest times and costs, and outputs follow the user's umask. The stand-in runs in this process and
is reached with --no-tunnel; its ``view`` fault makes /view misbehave as a broken proxy would."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from autopod.comfy import client as client_mod
from autopod.comfy import run as run_mod
from autopod.comfy.outputs import _NAME_ROOM, _fit, check_template, target_path
from autopod.core.errors import UsageError

IMAGE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFF0000},
               "_meta": {"title": "Canvas"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "red"}}}


def sleepy(seconds: float, prefix: str = "slow") -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 2}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(run_mod, "DOWNLOAD_BACKOFF_S", 0.05)


def wf(tmp_path: Path, doc: dict = IMAGE, name: str = "red.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def posts(standin) -> int:
    return sum(1 for m, path in standin.requests if m == "POST" and path in ("/prompt", "/api/prompt"))


def render(cli, tmp_path, *argv, out: Path | None = None):
    return cli("comfy.run", *argv, "--no-tunnel", "--output-dir", str(out or tmp_path / "out"), "--json")


def served(comfy, name: str) -> bytes:
    return (comfy.root / "output" / name).read_bytes()


def sidecar(out: Path) -> dict:
    (side,) = [p for p in out.rglob("*.json")]
    return json.loads(side.read_text())


# -- where outputs go: checked in planning, --dry-run too ---------------------------------------------------

@pytest.mark.parametrize("dry", [False, True])
def test_an_output_dir_that_cannot_hold_files_exits_2_before_anything_is_sent(comfy, cli, tmp_path, dry):
    afile = tmp_path / "afile"
    afile.write_text("x")
    extra = ["--dry-run"] if dry else []
    for out, words in ((afile, "not a folder"), (afile / "sub", "not a folder"),
                       (Path("/proc/autopod-outputs"), "cannot hold the outputs")):
        r = render(cli, tmp_path, str(wf(tmp_path)), *extra, out=out)
        assert r.code == 2, (out, r.err)
        assert words in r.json["msg"] and str(out) in r.json["msg"], r.json["msg"]
        assert "Traceback" not in r.err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "red").write_text("a file where the job's folder goes")
    r = render(cli, tmp_path, str(wf(tmp_path)), *extra)
    assert r.code == 2 and "which is a file, not a folder" in r.json["msg"], r.err
    assert posts(comfy) == 0
    assert not list(tmp_path.glob("**/.autopod-probe-*")) and not Path("/proc/autopod-outputs").exists()


@pytest.mark.parametrize("template, words", [
    ("{index:d}_{filename}", "invalid output template"),
    ("{index:0>9999}_{filename}", "9999"),
    ("{job:>300}/{filename}", "300"),
    ("{{filename}}", "must contain {filename}"),
    ("{job}/{{filename}}.png", "must contain {filename}"),
    ("{node!z}_{filename}", "invalid output template"),
    ("{index:{job}}_{filename}", "invalid output template"),
])
def test_output_templates_python_rejects_or_that_make_absurd_names_exit_2(comfy, cli, tmp_path, template, words):
    for extra in ([], ["--dry-run"]):
        r = render(cli, tmp_path, str(wf(tmp_path)), "--output", template, *extra)
        assert r.code == 2, (template, extra, r.err)
        assert words in r.json["msg"], r.json["msg"]
    assert posts(comfy) == 0 and not (tmp_path / "out").exists()


def test_padding_the_index_as_text_works(comfy, cli, tmp_path):
    r = render(cli, tmp_path, str(wf(tmp_path)), "--output", "{index:0>4}_{filename}")
    assert r.code == 0, r.err
    assert [Path(p).name for p in r.json["prompts"][0]["outputs"]] == ["0000_red_00001_.png"]


def test_a_name_too_long_for_this_file_system_is_shortened_the_same_way_every_time(comfy, cli, tmp_path):
    long = dict(IMAGE, **{"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p" * 200},
                                "_meta": {"title": "T" * 120}}})
    r = render(cli, tmp_path, str(wf(tmp_path, long)), "--output", "{title}_{filename}")
    assert r.code == 0, r.err
    (path,) = r.json["prompts"][0]["outputs"]
    name = Path(path).name
    assert len(name.encode()) <= _NAME_ROOM and name.startswith("T" * 100) and name.endswith(".png")
    server_name = "p" * 200 + "_00001_.png"
    assert Path(path).read_bytes() == served(comfy, server_name)
    meta = sidecar(tmp_path / "out")
    assert meta["outputs"][0]["filename"] == server_name and meta["outputs"][0]["path"] == path
    assert _fit("T" * 120 + "_" + server_name) == name  # deterministic: the same name gives the same file


def test_fit_keeps_the_extension_and_never_splits_a_character():
    for name in ("é" * 200 + ".png", "a" * 400, "x" * 300 + ".tar.verylongextension_that_is_not_one"):
        short = _fit(name)
        assert len(short.encode()) <= _NAME_ROOM and short == _fit(name)
        short.encode().decode("utf-8")
        if name.endswith(".png"):
            assert short.endswith(".png")
    assert _fit("a" * 300) != _fit("a" * 301)  # a hash of the whole name: no collisions by cutting
    assert _fit("ok.png") == "ok.png"


def test_templates_are_checked_once_at_the_start_and_paths_stay_inside(tmp_path):
    with pytest.raises(UsageError, match="must contain"):
        check_template("{{filename}}")
    p = target_path(tmp_path, "{title}/{filename}", title="x" * 600, filename="y" * 600)
    assert tmp_path.resolve() in p.parents and all(len(part.encode()) <= _NAME_ROOM for part in p.parts)


# -- downloads: only the file is an output; retried with a bound; --timeout ends them --------------------------

def test_a_redirect_or_a_short_answer_is_retried_and_never_saved(comfy, cli, tmp_path, fast_retries):
    comfy.set_faults({"view": {"mode": "redirect", "times": 1}})
    r = render(cli, tmp_path, str(wf(tmp_path)))
    assert r.code == 0, r.err
    assert "answered 302" in r.err and "trying again" in r.err
    (path,) = r.json["prompts"][0]["outputs"]
    assert Path(path).read_bytes() == served(comfy, "red_00001_.png")
    comfy.set_faults({"view": {"mode": "short", "times": 2}})
    r = render(cli, tmp_path, str(wf(tmp_path)), "--set", "Canvas.width=24", out=tmp_path / "out2")
    assert r.code == 0, r.err
    assert "brought" in r.err or "broke off" in r.err
    (path,) = r.json["prompts"][0]["outputs"]
    data = Path(path).read_bytes()
    assert data == served(comfy, "red_00002_.png")
    assert sidecar(tmp_path / "out2")["outputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mode", ["html", "error", "long", "redirect"])
def test_an_answer_that_is_never_the_file_fails_that_prompt_and_fetch_gets_it_later(comfy, cli, tmp_path,
                                                                                    fast_retries, mode):
    comfy.set_faults({"view": {"mode": mode, "times": 100}})
    r = render(cli, tmp_path, str(wf(tmp_path)))
    assert r.code == 1, r.err
    (p,) = r.json["prompts"]
    assert p["outputs"] == [] and "not saved" in p["error"] and "gave up after 4 tries" in p["error"]
    assert "comfy.fetch" in r.json["msg"]
    out = tmp_path / "out"
    assert not [f for f in out.rglob("*") if f.is_file()]  # no file, no sidecar, no .part left
    jobs = cli("comfy.jobs", r.json["batch"], "--json").json
    assert jobs["prompts"][0]["outputs"] == [] and jobs["exit_code"] == 1
    comfy.set_faults({"view": {"mode": mode, "times": 0}})
    f = cli("comfy.fetch", r.json["batch"], "--no-tunnel", "--json")
    assert f.code == 0 and f.json["fetched"] == 1, f.err
    (path,) = f.json["prompts"][0]["outputs"]
    assert Path(path).read_bytes() == served(comfy, "red_00001_.png")
    assert f.json["prompts"][0]["error"] is None
    assert sidecar(out)["outputs"][0]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_download_that_stalls_is_given_up_and_timeout_bounds_the_whole_run(comfy, cli, tmp_path, fast_retries,
                                                                          monkeypatch):
    monkeypatch.setattr(client_mod, "LOW_SPEED_S", 0.5)
    comfy.set_faults({"view": {"mode": "stall", "times": 100}})
    r = render(cli, tmp_path, str(wf(tmp_path)))
    assert r.code == 1 and "stalled" in r.json["prompts"][0]["error"], r.err
    # With the stall window at its default (30 s), only --timeout ends it, and it does, downloads included.
    monkeypatch.setattr(client_mod, "LOW_SPEED_S", 30.0)
    t0 = time.monotonic()
    r = render(cli, tmp_path, str(wf(tmp_path)), "--timeout", "2", out=tmp_path / "out2")
    took = time.monotonic() - t0
    assert r.code == 1 and r.json.get("timed_out") is True, r.err
    assert took < 15, took  # not the 30 s stall window, let alone four of them
    assert not [f for f in (tmp_path / "out2").rglob("*") if f.is_file()]


# -- a save that fails after the run is a failed prompt, and comfy.fetch finishes it ---------------------------

def test_outputs_that_cannot_be_saved_fail_the_prompt_and_the_ledger_says_so(comfy, cli, tmp_path):
    out = tmp_path / "out"
    r = cli("comfy.run", str(wf(tmp_path)), "--no-tunnel", "--output-dir", str(out), "--detach", "--json")
    assert r.code == 0, r.err
    batch = r.json["batch"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "red").write_text("in the way")  # the job's folder cannot be made now
    deadline = time.monotonic() + 10
    while not comfy.history and time.monotonic() < deadline:
        time.sleep(0.05)
    w = cli("comfy.watch", batch, "--no-tunnel", "--json")
    assert w.code == 1, w.err
    (p,) = w.json["prompts"]
    assert p["status"] == "success" and p["outputs"] == [] and "cannot save it here" in p["error"]
    assert "internal error" not in w.err
    (out / "red").unlink()
    f = cli("comfy.fetch", batch, "--no-tunnel", "--json")
    assert f.code == 0 and len(f.json["prompts"][0]["outputs"]) == 1, f.err


# -- honest timings and costs ------------------------------------------------------------------------------

@pytest.fixture
def priced(monkeypatch):
    """The ComfyUI reached with --no-tunnel billed as a pod at $3.60/hr (1/1000 of a dollar a second)."""
    monkeypatch.setattr(run_mod, "_pod_facts", lambda target: {"gpu": "RTX A40", "cost_per_hr": 3.6})


def test_run_time_and_cost_come_from_the_servers_clock_and_a_cached_prompt_costs_nothing(comfy, cli, tmp_path,
                                                                                       priced, monkeypatch):
    # This machine's clock runs 5 s behind the pod's: mixing the two clocks would give nonsense.
    real = time.time
    monkeypatch.setattr(run_mod.time, "time", lambda: real() - 5.0)
    r = render(cli, tmp_path, str(wf(tmp_path, sleepy(0.6))))
    assert r.code == 0, r.err
    meta = sidecar(tmp_path / "out")
    t = meta["timings"]
    assert 0.6 <= t["run_s"] < 1.5, t
    assert t["queued_s"] is not None and 0 <= t["queued_s"] < 2, t
    assert t["cached"] is False
    assert meta["cost_usd"] == pytest.approx(3.6 * t["run_s"] / 3600, abs=1e-6) and meta["cost_usd"] > 0
    assert meta["pod"]["cost_per_hr"] == 3.6
    # The same prompt again: ComfyUI takes every node from its cache and runs nothing.
    r = render(cli, tmp_path, str(wf(tmp_path, sleepy(0.6))), out=tmp_path / "again")
    assert r.code == 0, r.err
    meta = sidecar(tmp_path / "again")
    assert meta["timings"]["cached"] is True and meta["cost_usd"] == 0
    assert meta["timings"]["run_s"] is not None and meta["timings"]["run_s"] >= 0


def test_a_detached_batchs_sidecars_carry_a_cost(comfy, cli, tmp_path, priced):
    r = cli("comfy.run", str(wf(tmp_path, sleepy(0.3, "det"))), "--no-tunnel", "--output-dir", str(tmp_path / "o"),
            "--detach", "--json")
    assert r.code == 0, r.err
    w = cli("comfy.watch", r.json["batch"], "--no-tunnel", "--json")
    assert w.code == 0, w.err
    meta = sidecar(tmp_path / "o")
    assert meta["timings"]["run_s"] >= 0.3 and meta["cost_usd"] > 0


def test_run_timings_never_mix_clocks():
    from autopod.comfy.ledger import PromptRow

    row = PromptRow.__new__(PromptRow)
    row.prompt = {"1": {}, "2": {}}
    row.submitted_at = 1_000_010.0  # the laptop is 10 s ahead of the pod
    entry = {"status": {"messages": [["execution_start", {"timestamp": 1_000_002_000}],
                                     ["execution_cached", {"nodes": ["1"]}],
                                     ["execution_success", {"timestamp": 1_000_004_500}]]}}
    t = run_mod.run_timings(entry, row, None)
    assert t["run_s"] == 2.5 and t["queued_s"] is None and t["cached"] is False
    t = run_mod.run_timings(entry, row, 1_000_010.4)
    assert t["queued_s"] == 0.4
    entry["status"]["messages"][1][1]["nodes"] = ["1", "2"]
    assert run_mod.run_timings(entry, row, None)["cached"] is True


# -- file modes: outputs follow the umask, state and logs stay private -----------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_and_sidecars_follow_the_umask(comfy, cli, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        r = render(cli, tmp_path, str(wf(tmp_path)))
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert len(files) == 2  # the image and its sidecar
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == mode, (f, oct(f.stat().st_mode))
    ledger = Path(os.environ["AUTOPOD_HOME"]) / "ledger.db"
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600


def test_a_log_left_readable_by_others_is_made_private(tmp_path):
    from autopod.core.paths import open_private

    log = tmp_path / "sim-server.log"
    log.write_text("old\n")
    log.chmod(0o644)
    os.close(open_private(log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    fresh = tmp_path / "new.log"
    old = os.umask(0)
    try:
        os.close(open_private(fresh))
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


# -- a ledger another process is writing to is busy, not damaged ----------------------------------------------

def test_an_open_write_on_the_ledger_neither_blocks_reading_it_nor_reads_as_damage(autopod_home, monkeypatch):
    import sqlite3

    from autopod.comfy import ledger as ledger_mod
    from autopod.comfy.ledger import Ledger
    from autopod.core.errors import AutopodError, ConfigError

    with Ledger.open():
        pass  # made and migrated
    other = sqlite3.connect(str(autopod_home / "ledger.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a process frozen mid-write (Ctrl-Z, SIGSTOP) holds this
    try:
        monkeypatch.setattr(ledger_mod, "BUSY_TIMEOUT_MS", 200)
        t0 = time.monotonic()
        with Ledger.open() as led:  # opening an up-to-date ledger takes no write lock
            assert led.batches(5) == []
        assert time.monotonic() - t0 < 1.0
    finally:
        other.execute("ROLLBACK")
    # A ledger that needs a migration must be written: it waits, then says it is busy, not damaged.
    other.execute("DELETE FROM _autopod_migrations WHERE name = (SELECT max(name) FROM _autopod_migrations)")
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AutopodError) as e:
            Ledger.open()
        assert not isinstance(e.value, ConfigError) and e.value.exit_code == 1
        assert "busy" in str(e.value) and "move it aside" not in str(e.value)
    finally:
        other.execute("ROLLBACK")
        other.close()

"""Fleets in the simulator: pod.up --count, --fleet on every task, and one batch spread over the members.

One simulator and one fleet serve the module (each pod is an SSH server and a ComfyUI); the tests
run in file order and each leaves the fleet as the next expects it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sshd_server import kill_tunnel_daemons, require_sshd, wait_until

pytestmark = pytest.mark.sshd

SLEEP = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": 0.3, "steps": 2}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fleet"}}}


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory):
    require_sshd()
    root = tmp_path_factory.mktemp("fleet")
    home = root / "user-home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
                   check=True, stdin=subprocess.DEVNULL)
    inventory = root / "inventory.yml"
    inventory.write_text("pods:\n  flux:\n    count: 3\n")
    env = {**os.environ, "AUTOPOD_HOME": str(root / "autopod-home"), "HOME": str(home),
           "AUTOPOD_INVENTORY": str(inventory),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for k in ("RUNPOD_API_KEY", "RUNPOD_API_BASE_URL", "AUTOPOD_RUNPOD_API"):
        env.pop(k, None)
    workflow = root / "sleep.json"
    workflow.write_text(json.dumps(SLEEP))
    env["WORKFLOW"] = str(workflow)
    started = run(env, "sim.start", "--comfy-ready-after", "0")
    assert started.returncode == 0, started.stderr
    yield env
    run(env, "sim.stop")
    kill_tunnel_daemons(Path(env["AUTOPOD_HOME"]))


def run(env: dict, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autopod", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def docs(p: subprocess.CompletedProcess) -> list[dict]:
    out = json.loads(p.stdout)
    assert isinstance(out, list), out
    return out


def by_member(p: subprocess.CompletedProcess) -> dict[str, dict]:
    return {d["member"]: d for d in docs(p)}


def statuses(env: dict) -> dict[str, str]:
    p = run(env, "pod.list", "--json")
    assert p.returncode == 0, p.stderr
    return {d["name"]: d["status"] for d in json.loads(p.stdout)}


def urls(env: dict) -> dict[str, str]:
    p = run(env, "tunnel.start", "--fleet", "flux", "--json")
    assert p.returncode == 0, p.stderr
    return {d["member"]: d["url"] for d in docs(p)}


def test_pod_up_count_converges_and_the_surplus_is_stopped_or_killed(fleet_env):
    sim_log = Path(fleet_env["AUTOPOD_HOME"]) / "logs" / "sim-server.log"
    assert sim_log.stat().st_mode & 0o777 == 0o600  # logs are private, the simulator's too
    env = fleet_env
    first = run(env, "pod.up", "--name", "flux", "--json")  # the inventory's count: 3
    assert first.returncode == 0, first.stderr
    made = by_member(first)
    assert sorted(made) == ["flux-1", "flux-2", "flux-3"]
    assert all(d["changed"] and d["msg"].startswith(f"created pod {m}") for m, d in made.items())
    again = run(env, "pod.up", "--name", "flux")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["ok", "ok", "ok", "ok"], again.stdout  # 3 members + summary
    assert lines[-1].startswith("ok: fleet flux: 3 members: 3 ok; GPUs: 3x")

    one = run(env, "pod.up", "--name", "flux", "--count", "1")
    assert one.returncode == 0, one.stderr
    assert "2 past 1 stopped" in one.stdout
    assert statuses(env) == {"flux-1": "RUNNING", "flux-2": "EXITED", "flux-3": "EXITED"}
    killed = run(env, "pod.up", "--name", "flux", "--count", "2", "--surplus", "kill", "--json")
    assert killed.returncode == 0, killed.stderr
    assert by_member(killed)["flux-3"]["msg"].startswith("terminated pod flux-3")
    assert by_member(killed)["flux-2"]["msg"].startswith("started pod flux-2")
    assert statuses(env) == {"flux-1": "RUNNING", "flux-2": "RUNNING"}

    # A fleet in the inventory is never made as one pod; bad counts are exit 2 and change nothing.
    assert run(env, "pod.create", "--name", "flux").returncode == 2
    for argv in (["--count", "0"], ["--count", "65"], ["--count", "x"], ["--surplus", "pause"]):
        bad = run(env, "pod.up", "--name", "flux", *argv)
        assert bad.returncode == 2 and bad.stderr.startswith("error: "), (argv, bad.stderr)
    assert run(env, "pod.up", "--count", "2").returncode == 2  # a fleet needs a name
    assert statuses(env) == {"flux-1": "RUNNING", "flux-2": "RUNNING"}

    back = run(env, "pod.up", "--name", "flux", "--count", "3", "--json")
    assert back.returncode == 0, back.stderr
    assert [d["changed"] for d in docs(back)] == [False, False, True]


def test_fleet_on_every_task_with_one_member_failing(fleet_env):
    env = fleet_env
    assert run(env, "pod.stop", "--pod", "flux-2").returncode == 0
    listed = run(env, "pod.list", "--fleet", "flux", "--json")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["flux-1", "flux-2", "flux-3"]
    info = run(env, "pod.info", "--fleet", "flux", "--json")
    assert info.returncode == 0 and by_member(info)["flux-2"]["status"] == "EXITED"

    # Each task: one line per member and a summary; the stopped member fails, the others do their part.
    for argv in (["tunnel.start"], ["tunnel.status"], ["comfy.status"], ["comfy.info"],
                 ["pod.guard", "--idle-minutes", "30"], ["pod.guard", "--status"], ["pod.wait", "--timeout", "3"]):
        p = run(env, *argv, "--fleet", "flux")
        assert p.returncode == 1, (argv, p.stdout, p.stderr)
        lines = p.stdout.splitlines()
        assert len(lines) == 4 and lines[-1].startswith("failed: fleet flux"), (argv, p.stdout)
        assert sum(ln.startswith("failed: ") for ln in lines[:3]) == 1, (argv, p.stdout)
        assert "flux-2" in next(ln for ln in lines[:3] if ln.startswith("failed: ")), (argv, p.stdout)
        j = run(env, *argv, "--fleet", "flux", "--json")
        assert j.returncode == 1
        got = by_member(j)
        assert got["flux-2"]["failed"] is True and not got["flux-1"].get("failed") and not got["flux-3"].get("failed")

    tunnels = by_member(run(env, "tunnel.status", "--fleet", "flux", "--json"))
    assert tunnels["flux-1"]["local_port"] != tunnels["flux-3"]["local_port"]
    for m in ("flux-1", "flux-3"):
        assert requests.get(tunnels[m]["url"] + "/system_stats", timeout=10).ok
    off = run(env, "pod.guard", "--fleet", "flux", "--off", "--json")
    assert off.returncode == 1 and by_member(off)["flux-1"]["changed"] is True

    started = run(env, "pod.start", "--fleet", "flux", "--json")
    assert started.returncode == 0, started.stderr
    assert [d["changed"] for d in docs(started)] == [False, True, False]
    ready = run(env, "comfy.status", "--fleet", "flux", "--wait", "30")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert ready.stdout.splitlines()[-1] == "ok: fleet flux: 3 of 3 ComfyUI ready"
    assert run(env, "tunnel.stop", "--fleet", "flux").returncode == 0

    # A chained task means the fleet of the step before; one that needs one pod refuses to guess.
    chained = run(env, "pod.up", "--name", "flux", "--count", "3", "pod.wait", "--json")
    assert chained.returncode == 0, chained.stderr
    up, waited = json.loads(chained.stdout)
    assert len(up) == 3 and len(waited) == 3
    guessed = run(env, "pod.up", "--name", "flux", "--count", "3", "pod.ssh", "--command", "true")
    assert guessed.returncode == 2 and "fleet flux" in guessed.stderr

    for argv in (["pod.stop", "--fleet", "nope"], ["pod.stop", "--fleet", "flux", "--pod", "flux-1"],
                 ["pod.kill", "--fleet", "flux"],  # no terminal to confirm on, no --yes
                 ["tunnel.start", "--fleet", "flux", "--local-port", "9000"],
                 ["comfy.status", "--fleet", "flux", "--no-tunnel"],
                 ["comfy.run", "--fleet", "flux", env["WORKFLOW"], "--detach"],
                 ["comfy.run", "--fleet", "flux", env["WORKFLOW"], "--then", "pause"]):
        bad = run(env, *argv)
        assert bad.returncode == 2 and bad.stderr.startswith("error: "), (argv, bad.stderr)
    dry = run(env, "pod.up", "--name", "flux", "--count", "3", "--dry-run", "pod.stop")
    assert dry.returncode == 2 and "only pretended" in dry.stderr  # a dry run hands no fleet on
    assert statuses(env) == {"flux-1": "RUNNING", "flux-2": "RUNNING", "flux-3": "RUNNING"}


def _histories(env: dict) -> dict[str, set[str]]:
    """The prompt ids each member's ComfyUI ran."""
    return {m: set(requests.get(u + "/history", timeout=10).json()) for m, u in urls(env).items()}


def test_a_batch_is_spread_and_every_prompt_runs_exactly_once(fleet_env, tmp_path):
    env = fleet_env
    before = _histories(env)
    p = run(env, "comfy.run", "--fleet", "flux", env["WORKFLOW"], "--sweep", "2.steps=1..12",
            "--output-dir", str(tmp_path), "--output", "{pod}/{index}_{filename}", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["counts"] == {"success": 12} and report["fleet"] == "flux"
    ids = [q["prompt_id"] for q in report["prompts"]]
    assert len(set(ids)) == 12
    ran = {m: h - before[m] for m, h in _histories(env).items()}
    assert sum(len(h) for h in ran.values()) == 12 and set().union(*ran.values()) == set(ids)  # once each
    assert sum(1 for h in ran.values() if h) >= 2  # really spread
    for q in report["prompts"]:
        assert q["prompt_id"] in ran[q["pod"]]
        [out] = q["outputs"]
        assert Path(out).parent.name == q["pod"]  # the {pod} template field
        side = json.loads(next(Path(out).parent.parent.rglob(f"*-{q['index']:04d}-*.json")).read_text())
        assert side["pod"]["name"] == q["pod"]
        # Each member's own rate, and the server's run time of AutopodSleep's 0.3 s: never negative.
        assert side["pod"]["cost_per_hr"] > 0 and side["timings"]["run_s"] >= 0.3, side
        assert side["cost_usd"] == pytest.approx(side["pod"]["cost_per_hr"] * side["timings"]["run_s"] / 3600,
                                                 abs=1e-6)
        assert side["timings"]["queued_s"] is None or side["timings"]["queued_s"] >= 0
    assert "[12/12, " in p.stderr and "flux-" in p.stderr  # the batch's count and each member's prompts
    page = Path(report["sheet"]["page"]).read_text()  # the gallery names the member that made each cell
    assert page.count("<dt>pod</dt><dd>flux-") == 12 and all(f"<dd>{m} (" in page for m in ran if ran[m])
    whole = run(env, "comfy.watch", report["batch"])
    assert whole.returncode == 2 and f"--resume {report['batch']} --fleet flux" in whole.stderr
    one = run(env, "comfy.fetch", ids[0], "--json")  # one prompt: fetched from the member that ran it
    assert one.returncode == 0 and json.loads(one.stdout)["fetched"] == 0, one.stderr  # already on disk

    # --resume --fleet with a prompt that finished on a member but whose outputs never reached the disk
    # (the command was killed while fetching): fetched from that member, not run again, and the batch ends.
    lost = report["prompts"][0]
    db = sqlite3.connect(Path(env["AUTOPOD_HOME"]) / "ledger.db")
    with db:
        db.execute("UPDATE prompts SET status = 'running', fetched_at = NULL WHERE batch_id = ? AND idx = 0",
                   (report["batch"],))
        db.execute("DELETE FROM outputs WHERE prompt_id = ?", (lost["prompt_id"],))
    db.close()
    resumed = run(env, "comfy.run", "--resume", report["batch"], "--fleet", "flux", "--json", timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads(resumed.stdout)
    assert again["counts"] == {"success": 12} and Path(again["sheet"]["sheet"]).is_file()
    assert again["prompts"][0]["prompt_id"] == lost["prompt_id"] and len(again["prompts"][0]["outputs"]) == 1
    assert {m: h - before[m] for m, h in _histories(env).items()} == ran  # nothing ran again

    # The batch was planned on the first member's kept node definitions: a dry run reads them, checks its
    # classes against that member and fetches nothing more; a kept copy that member disagrees with (a
    # value it would refuse) is caught and fetched again before it counts.
    kept = sorted((Path(env["AUTOPOD_HOME"]) / "cache" / "object_info").glob("*.json"))
    fetched = [json.loads(k.read_text())["fetched_at"] for k in kept]
    dry = run(env, "comfy.run", "--fleet", "flux", env["WORKFLOW"], "--dry-run")
    assert dry.returncode == 0 and kept and [json.loads(k.read_text())["fetched_at"] for k in kept] == fetched, \
        dry.stderr

    def seconds_max(k: Path) -> float:
        return json.loads(k.read_text())["object_info"]["AutopodSleep"]["input"]["required"]["seconds"][1]["max"]

    for k in kept:
        doc = json.loads(k.read_text())
        doc["object_info"]["AutopodSleep"]["input"]["required"]["seconds"][1]["max"] = 0.1  # SLEEP sleeps 0.3
        k.write_text(json.dumps(doc))
    dry = run(env, "comfy.run", "--fleet", "flux", env["WORKFLOW"], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["2"]["inputs"]["seconds"] == 0.3 and 3600 in [seconds_max(k) for k in kept]


def _ledger_rows(env: dict, batch: str | None = None, *, not_before: str = "") -> list[sqlite3.Row]:
    """The prompts of ``batch``, or of the newest batch if it is newer than ``not_before`` (else none)."""
    db = sqlite3.connect(Path(env["AUTOPOD_HOME"]) / "ledger.db")
    db.row_factory = sqlite3.Row
    try:
        if batch is None:
            newest = db.execute("SELECT id FROM batches ORDER BY created_at DESC LIMIT 1").fetchone()
            if newest is None or newest[0] == not_before:
                return []
            batch = newest[0]
        return db.execute("SELECT * FROM prompts WHERE batch_id = ?", (batch,)).fetchall()
    finally:
        db.close()


def _newest_batch(env: dict) -> str:
    rows = _ledger_rows(env)
    return rows[0]["batch_id"] if rows else ""


def test_killing_a_member_mid_batch_still_finishes_the_batch_on_the_others(fleet_env, tmp_path):
    env = fleet_env
    before, old, flux2 = _histories(env), _newest_batch(env), urls(env)["flux-2"]
    proc = subprocess.Popen([sys.executable, "-m", "autopod", "comfy.run", "--fleet", "flux", env["WORKFLOW"],
                             "--sweep", "2.steps=20..37", "--output-dir", str(tmp_path), "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: sum(r["status"] == "success" and r["target_name"] == "flux-2"
                                      for r in _ledger_rows(env, not_before=old)) >= 1, timeout=60)
        # Someone else's long prompt on flux-2's ComfyUI: the batch's next prompts there wait behind it, so
        # flux-2 still holds unfinished work when the kill lands, however long a loaded machine takes to
        # start `autopod pod.kill` (seconds, in which the three members could finish the whole batch).
        hold = json.loads(json.dumps(SLEEP))
        hold["2"]["inputs"]["seconds"] = 600
        sent = requests.post(flux2 + "/prompt", json={"prompt": hold, "client_id": "someone-else"}, timeout=10)
        assert sent.ok, sent.text

        def held_behind() -> bool:
            q = requests.get(flux2 + "/queue", timeout=10).json()
            return [i[1] for i in q["queue_running"]] == [sent.json()["prompt_id"]] and bool(q["queue_pending"])

        assert wait_until(held_behind, timeout=60)
        killed = run(env, "pod.kill", "--pod", "flux-2", "--yes")
        assert killed.returncode == 0, killed.stderr
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["counts"] == {"success": 18}
    assert {m["member"]: m["state"] for m in report["members"]}["flux-2"] == "out"
    assert "flux-2 is taken out" in err
    rows = _ledger_rows(env, report["batch"])
    assert max(r["attempts"] for r in rows) >= 2  # the killed member's prompts were given to the others
    survivors = {m: h - before[m] for m, h in _histories(env).items()}
    finished_elsewhere = [q for q in report["prompts"] if q["pod"] != "flux-2"]
    for q in finished_elsewhere:
        assert q["prompt_id"] in survivors[q["pod"]]
    assert sum(len(h) for h in survivors.values()) == len(finished_elsewhere)  # none ran twice there
    assert len({q["prompt_id"] for q in report["prompts"]}) == 18
    assert sum(len(q["outputs"]) for q in report["prompts"]) == 18


def test_ctrl_c_clears_every_member_and_resume_then_stop_finishes_it(fleet_env, tmp_path):
    env = fleet_env
    up = run(env, "pod.up", "--name", "flux", "--count", "3")  # flux-2 again, after the kill above
    assert up.returncode == 0, up.stderr
    old = _newest_batch(env)
    proc = subprocess.Popen([sys.executable, "-m", "autopod", "comfy.run", "--fleet", "flux", env["WORKFLOW"],
                             "--sweep", "2.steps=40..57", "--output-dir", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: sum(r["status"] == "success" for r in _ledger_rows(env, not_before=old)) >= 2,
                          timeout=60)
        # The run holds its batch: a resume meanwhile (the run stopped, so it cannot end first) exits 1.
        proc.send_signal(signal.SIGSTOP)
        try:
            busy = run(env, "comfy.run", "--resume", _newest_batch(env), "--fleet", "flux", "--json")
        finally:
            proc.send_signal(signal.SIGCONT)
        assert busy.returncode == 1, busy.stderr
        assert f"autopod process {proc.pid} (comfy.run --fleet flux" in busy.stderr
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    batch = _ledger_rows(env)[0]["batch_id"]
    assert f"--resume {batch} --fleet flux" in err
    for u in urls(env).values():
        q = requests.get(u + "/queue", timeout=10).json()
        assert q["queue_running"] == [] and q["queue_pending"] == []
    done = run(env, "comfy.run", "--resume", batch, "--fleet", "flux", "--then", "stop", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == {"success": 18}
    assert [d["changed"] for d in report["then"]["members"]] == [True, True, True]
    assert statuses(env) == {"flux-1": "EXITED", "flux-2": "EXITED", "flux-3": "EXITED"}
    gone = run(env, "pod.kill", "--fleet", "flux", "--yes", "--json")
    assert gone.returncode == 0 and all(d["changed"] for d in docs(gone))
    assert run(env, "pod.list", "--fleet", "flux").returncode == 2  # no members left

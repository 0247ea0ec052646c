"""After ``comfy.run``: list batches, re-attach, fetch what finished, see the server's queue and
history, cancel. Everything works from another terminal or after a disconnect, from the ledger."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from ..core import signals
from ..core.errors import ComfyError, Interrupted, UsageError
from ..core.state import Claim
from .ledger import FINAL, BatchRow, Ledger, PromptRow, hold, try_hold
from .progress import Progress
from .run import Connection, Runner, Track, _report, finished


def list_jobs(ref: str | None = None, *, limit: int = 20) -> dict[str, Any]:
    """Batches (newest first), or one batch's prompts with their status, pod and outputs."""
    with Ledger.open() as led:
        if ref is None:
            return {"batches": led.batches(limit)}
        batch, rows = led.find(ref)
        report = _report(led, batch)
        report["batch_info"] = {"id": batch.id, "name": batch.name, "target": batch.target_name,
                                "created_at": batch.created_at, "output_dir": batch.output_dir}
        from .sheet import existing

        if existing(batch):
            report["sheet"] = existing(batch)
        if len(rows) < len(report["prompts"]):  # a prompt id: just that prompt
            ids = {r.prompt_id for r in rows}
            report["prompts"] = [p for p in report["prompts"] if p["prompt_id"] in ids]
        return report


def _connect(batch: BatchRow, rows: list[PromptRow], pod: str | None, no_tunnel: bool,
             progress: Progress) -> Connection:
    """ComfyUI where the batch ran (its pod or host), unless the user names another. A fleet's batch
    ran on several pods: one of its prompts goes to the pod that ran it; the whole batch needs --fleet."""
    if no_tunnel or (pod is None and batch.target_id is None):
        return Connection(None, True, progress.note)
    if pod is None and (batch.target_id or "").startswith("fleet:"):
        pods = {r.target_id for r in rows}
        if len(pods) == 1 and None not in pods:
            return Connection(pods.pop(), False, progress.note)
        raise UsageError(f"batch {batch.id} ran on fleet {batch.target_name}: `autopod comfy.run --resume {batch.id} "
                         f"--fleet {batch.target_name}` fetches what finished and runs what did not; or name one "
                         f"member with --pod (its prompts only)")
    return Connection(pod or batch.target_id, False, progress.note)


@contextlib.contextmanager
def _attached(led: Ledger, ref: str | None, pod: str | None, no_tunnel: bool,
              progress: Progress) -> Iterator[tuple[BatchRow, list[PromptRow], Runner]]:
    """The batch (or one prompt) ``ref`` names, and a runner connected to where it ran. The caller
    holds the batch (``ledger.hold``): the rows are read now, as the last holder left them."""
    batch, rows = _batch(led, ref)
    conn = _connect(batch, rows, pod, no_tunnel, progress)
    try:
        runner = Runner(led, batch, conn, progress=progress, previews=bool(batch.options.get("previews")))
        yield batch, rows, runner
    finally:
        conn.close()


FOLLOW_S = 0.5  # how often a watch of a batch another process holds reads the ledger


def _follow_held(led: Ledger, batch: BatchRow, progress: Progress, deadline: float | None) -> Claim:
    """Hold the batch for ``comfy.watch``. While another process holds it (it submits and fetches), show
    its prompts' progress from the ledger, read-only, until that process ends; then hold it here."""
    got = try_hold(batch.id, "comfy.watch")
    if isinstance(got, Claim):
        return got
    progress.note(f"batch {batch.id} is held by {got.describe()}: following it read-only (that process "
                  f"submits and fetches) until it ends")
    first, seen = got, {}
    while True:
        rows = led.prompts(batch.id)
        for r in rows:
            state = r.status + (", outputs saved" if r.fetched_at else "")
            if seen.get(r.idx, "planned") != state:
                progress.note(f"prompt {r.idx + 1}/{len(rows)}"
                              + (f" ({r.prompt_id[:8]})" if r.prompt_id else "") + f": {state}")
            seen[r.idx] = state
        if isinstance(got, Claim):
            who = f"process {first.pid}" if first.pid else "the other process"
            progress.note(f"{who} has let go of batch {batch.id}; watching it here")
            return got
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(FOLLOW_S)
        got = try_hold(batch.id, "comfy.watch")


def watch(ref: str | None, *, pod: str | None = None, no_tunnel: bool = False, timeout: float | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    """Re-attach to a batch (the newest without ``ref``): follow its prompts on the server and fetch
    their outputs as they finish. Prompts that were never submitted are left for ``--resume``. A batch
    another process holds is followed read-only until that process ends, then here."""
    progress = progress or Progress()
    deadline = time.monotonic() + timeout if timeout else None
    with Ledger.open() as led:
        batch, _ = _batch(led, ref)
        try:
            with signals.handling():
                claim = _follow_held(led, batch, progress, deadline)
        except KeyboardInterrupt as e:
            return _stopped(led, batch, e)
        except TimeoutError:
            return _report(led, batch)
        with claim:
            if _on_endpoint(batch, pod, no_tunnel):
                from . import endpoint

                left = None if deadline is None else max(0.1, deadline - time.monotonic())
                report = endpoint.watch(ref or batch.id, timeout=left, progress=progress)
            else:
                report = _watch(led, ref or batch.id, pod, no_tunnel, deadline, progress)
    _sheet(report, progress)
    return report


def _sheet(report: dict[str, Any], progress: Progress) -> None:
    """A batch that has ended (every prompt final) gets its contact sheet and page again."""
    from .sheet import add_to_report

    add_to_report(report, note=progress.note, only_when_done=True)


def _stopped(led: Ledger, batch: BatchRow, e: KeyboardInterrupt) -> dict[str, Any]:
    # Watching is not running: Ctrl-C stops watching, the prompts go on.
    sig = e if isinstance(e, Interrupted) else Interrupted()
    report = _report(led, batch)
    report.update(exit_code=sig.exit_code, msg=f"stopped watching; the prompts go on: {report['msg']}")
    return report


def _watch(led: Ledger, ref: str, pod: str | None, no_tunnel: bool, deadline: float | None,
           progress: Progress) -> dict[str, Any]:
    with _attached(led, ref, pod, no_tunnel, progress) as (batch, rows, runner):
        for r in rows:
            if r.prompt_id and (r.status in ("submitting", "queued", "running")
                                or (r.status in FINAL and not r.fetched_at)):
                runner.active[r.prompt_id] = Track(r, runner._label(r))
        if not runner.active:
            report = _report(led, batch)
            report["changed"] = False
            report["msg"] = f"nothing of batch {batch.id} is running or left to fetch; " + report["msg"]
            return report
        progress.note(f"batch {batch.id}: following {len(runner.active)} prompt(s)")
        runner.poll()  # what finished while nobody watched is fetched at once
        try:
            with signals.handling():
                runner.follow([], deadline=deadline)
        except KeyboardInterrupt as e:
            return _stopped(led, batch, e)
        except TimeoutError:
            pass
        return _report(led, batch)


def fetch(ref: str | None, *, pod: str | None = None, no_tunnel: bool = False,
          progress: Progress | None = None) -> dict[str, Any]:
    """Download whatever of a batch (or one prompt) finished and is not on disk yet. Exit 1 while
    another process holds the batch: it fetches the outputs itself."""
    progress = progress or Progress()
    with Ledger.open() as led:
        batch, _ = _batch(led, ref)
        with hold(batch.id, "comfy.fetch", advice=f"it fetches the outputs itself; `autopod comfy.watch "
                                                     f"{batch.id}` follows it"):
            if _on_endpoint(batch, pod, no_tunnel):
                from . import endpoint

                report = endpoint.fetch(ref or batch.id, progress=progress)
            else:
                report = _fetch(led, ref or batch.id, pod, no_tunnel, progress)
    if report.get("fetched"):
        _sheet(report, progress)
    return report


def _on_endpoint(batch: BatchRow, pod: str | None, no_tunnel: bool) -> bool:
    """A batch that ran on a Serverless endpoint is followed there (its jobs are RunPod's, not a pod's)."""
    from .endpoint import is_endpoint_batch

    if not is_endpoint_batch(batch):
        return False
    if pod or no_tunnel:
        raise UsageError(f"batch {batch.id} ran on endpoint {batch.target_name}: its jobs are followed there, "
                         f"without --pod or --no-tunnel")
    return True


def _fetch(led: Ledger, ref: str, pod: str | None, no_tunnel: bool, progress: Progress) -> dict[str, Any]:
    with _attached(led, ref, pod, no_tunnel, progress) as (batch, rows, runner):
        conn = runner.conn
        before = sum(len(led.saved_outputs(r.prompt_id)) for r in rows if r.prompt_id)
        waiting = 0
        for r in rows:
            if not r.prompt_id or (r.fetched_at and r.status in FINAL):
                continue
            entry = conn.call(lambda c, r=r: c.get_history(r.prompt_id)).get(r.prompt_id)
            if entry is None or not finished(entry):
                waiting += 1
                continue
            runner.active[r.prompt_id] = Track(r, runner._label(r))
            runner.finish(runner.active[r.prompt_id], entry)
        report = _report(led, batch)
        after = sum(len(led.saved_outputs(r.prompt_id)) for r in rows if r.prompt_id)
        report["changed"] = after > before
        report["fetched"] = after - before
        report["msg"] = (f"fetched {after - before} file(s) of batch {batch.id}"
                         + (f"; {waiting} prompt(s) not finished yet" if waiting else ""))
        return report


def _batch(led: Ledger, ref: str | None) -> tuple[BatchRow, list[PromptRow]]:
    if ref is not None:
        return led.find(ref)
    batch = led.latest_batch()
    if batch is None:
        raise UsageError("the ledger has no batch yet; render with `autopod comfy.run WORKFLOW`")
    return batch, led.prompts(batch.id)


def server_queue(pod: str | None = None, *, no_tunnel: bool = False) -> list[dict[str, Any]]:
    """ComfyUI's queue, running first, each item marked with the batch it belongs to (if autopod's)."""
    conn = Connection(pod, no_tunnel, Progress(enabled=False).note)
    try:
        q = conn.call(lambda c: c.get_queue_info())
    finally:
        conn.close()
    ours = _ours([i.prompt_id for i in q.running + q.pending])
    return ([{"state": "running", "position": 0, **i.to_dict(), **ours.get(i.prompt_id, {})} for i in q.running]
            + [{"state": "pending", "position": n + 1, **i.to_dict(), **ours.get(i.prompt_id, {})}
               for n, i in enumerate(q.pending)])


def server_history(pod: str | None = None, *, no_tunnel: bool = False, limit: int = 20) -> list[dict[str, Any]]:
    """ComfyUI's newest history entries: id, how each ended, its output files."""
    from .outputs import output_items
    from .run import outcome_of

    conn = Connection(pod, no_tunnel, Progress(enabled=False).note)
    try:
        hist = conn.call(lambda c: c.get_history(max_items=limit))
    finally:
        conn.close()
    ours = _ours(list(hist))
    rows = []
    for pid, entry in reversed(list(hist.items())):  # newest first
        status, err = outcome_of(entry)
        rows.append({"prompt_id": pid, "status": status, "error": (err or {}).get("summary"),
                     "outputs": [i["filename"] for _, _, i in output_items(entry.get("outputs") or {},
                                                                             previews=True)],
                     **ours.get(pid, {})})
    return rows


def _ours(prompt_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not prompt_ids:
        return {}
    with Ledger.open() as led:
        q = ",".join("?" * len(prompt_ids))
        rows = led.db.execute(f"SELECT prompt_id, batch_id, idx FROM prompts WHERE prompt_id IN ({q})",
                              prompt_ids).fetchall()
    return {r["prompt_id"]: {"batch": r["batch_id"], "index": r["idx"]} for r in rows}


def cancel(ref: str | None = None, *, batch: str | None = None, everything: bool = False, pod: str | None = None,
           no_tunnel: bool = False) -> dict[str, Any]:
    """Stop prompts: one (``ref``), a batch's (``batch``), or the whole server queue (``everything``).
    A running prompt is interrupted (targeted), pending ones are removed from the queue."""
    if sum(bool(x) for x in (ref, batch, everything)) != 1:
        raise UsageError("comfy.cancel takes one of: a prompt id, --batch BATCH, or --all")
    wanted: set[str] | None = None
    rows: list[PromptRow] = []
    with Ledger.open() as led:
        if ref or batch:
            b, rows = led.find(ref or batch)  # type: ignore[arg-type]
            if _on_endpoint(b, pod, no_tunnel):
                from . import endpoint

                return endpoint.cancel(led, b, rows)
            wanted = {r.prompt_id for r in rows if r.prompt_id}
            if pod is None and not no_tunnel:
                pod = b.target_id
                no_tunnel = b.target_id is None
        conn = Connection(pod, no_tunnel, Progress(enabled=False).note)
        try:
            q = conn.call(lambda c: c.get_queue_info())
            running = [i.prompt_id for i in q.running if wanted is None or i.prompt_id in wanted]
            pending = [i.prompt_id for i in q.pending if wanted is None or i.prompt_id in wanted]
            # Queued ones first: interrupting first lets the server start the next queued prompt before the
            # delete arrives, and that one would then run on, recorded as cancelled.
            conn.call(lambda c: c.delete_queued(pending))
            for pid in running:
                conn.call(lambda c, pid=pid: c.interrupt(pid))
        except ComfyError:
            raise
        finally:
            conn.close()
        now = time.time()
        for r in rows:
            if r.prompt_id in running:
                led.update(r.batch_id, r.idx, status="interrupted", finished_at=now)
            elif r.prompt_id in pending:
                led.update(r.batch_id, r.idx, status="cancelled", finished_at=now)
        if everything:
            for pid in running + pending:
                r = led.db.execute("SELECT batch_id, idx FROM prompts WHERE prompt_id = ?", (pid,)).fetchone()
                if r is not None:
                    led.update(r["batch_id"], r["idx"], status="interrupted" if pid in running else "cancelled",
                               finished_at=now)
    n = len(running) + len(pending)
    return {"changed": bool(n), "interrupted": running, "removed": pending,
            "msg": (f"interrupted {len(running)} running and removed {len(pending)} queued prompt(s)" if n
                    else "nothing of that is running or queued")}

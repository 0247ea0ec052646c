"""``comfy.run``'s entry (:func:`render`): one pod (``run``) or one batch spread over a fleet's running
members, and ``--then`` when the batch is done.

The batch is planned once (against the first member's node schema; bad input exits 2 before
anything is sent) and recorded in the ledger as usual. Then every member gets a thread with its own
tunnel, WebSocket, ledger connection and ``run.Runner``, and pulls prompts from one shared
:class:`WorkQueue` while it has fewer than ``per_member`` on its server: one running, one waiting,
so its GPU never idles between prompts, and work goes to whichever member is free next.

A member whose pod stops or whose ComfyUI cannot be reached again (or forgets a prompt: it
restarted) is taken out: its unfinished prompts go back to the queue for the others. A prompt is
settled once: it reached a final state on one member and its outputs are on disk; only then is it
out of the queue's count, so none is lost and none is run again once finished.

Ctrl-C: the main thread sets a ``Cancel``; each member takes its prompts off its server
(``Runner.withdraw``) and the run exits 130, resumable with ``--resume BATCH --fleet NAME``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import chain, signals
from ..core.errors import AutopodError, ComfyError, ExitCode, Interrupted, UsageError
from ..core.fanout import Cancel
from ..core.output import safe_text
from ..core.ui import progress as line
from .ledger import Ledger, PromptRow, hold
from .progress import Progress
from .run import (Connection, RunOptions, Runner, _pod_facts, _report, _server_queue, _upload_all, batch_name,
                  dry_run_report, plan_on, replan)
from .run import render as render_one

log = logging.getLogger(__name__)

PER_MEMBER = 2  # prompts on a member's server at once: the running one and the next
MEMBER_RECOVER_S = 20.0  # how long a member may be out of reach before its prompts go to the others


class WorkQueue:
    """The batch's prompts no member holds yet, and how many members hold unsettled (thread-safe)."""

    def __init__(self, rows: list[PromptRow]):
        self._rows = collections.deque(rows)
        self._held = 0
        self._cond = threading.Condition()

    def take(self) -> PromptRow | None:
        with self._cond:
            if not self._rows:
                return None
            self._held += 1
            return self._rows.popleft()

    def hold(self, n: int) -> None:
        """``n`` prompts members hold without taking them (``--resume``: each is recorded on a member)."""
        with self._cond:
            self._held += n

    def settled(self, _row: PromptRow) -> None:
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def give_back(self, rows: list[PromptRow]) -> None:
        """Prompts a member cannot finish go to the front of the queue, for the next free member."""
        with self._cond:
            self._held -= len(rows)
            self._rows.extendleft(reversed(rows))
            self._cond.notify_all()

    def more(self) -> bool:
        with self._cond:
            return bool(self._rows) or self._held > 0

    def idle(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)

    def left(self) -> int:
        with self._cond:
            return len(self._rows)


# -- progress: the whole batch, and each member's current prompt and node ------------------------------


class FleetProgress:
    """On a terminal: a bar for the batch (done/total, rate, ETA) and a line per member (its prompt, node
    and sampler step). Elsewhere: a line per prompt started and finished, with the batch's count, rate
    and ETA. Members report from their threads, so every change goes through one lock."""

    def __init__(self, total: int, members: list[str], *, enabled: bool | None = None):
        self.bars = enabled if enabled is not None else _stderr_is_terminal()
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.lock = threading.RLock()
        self._overall: Any = None
        self._lines: dict[str, Any] = {}
        if self.bars:
            from tqdm import tqdm

            self._overall = tqdm(total=total, desc="batch", unit="prompt", file=sys.stderr, position=0,
                                 dynamic_ncols=True, leave=True)
            for i, name in enumerate(members):
                self._lines[name] = tqdm(total=0, bar_format="{desc}", file=sys.stderr, position=i + 1,
                                         leave=False, desc=f"  {name}: starting")

    def for_member(self, name: str) -> "MemberProgress":
        return MemberProgress(self, name)

    def counter(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = self.done / elapsed
        eta = f", ETA {(self.total - self.done) / rate:.0f}s" if rate > 0 and self.done < self.total else ""
        return f"[{self.done}/{self.total}, {rate * 60:.1f}/min{eta}]"

    def state(self, name: str, text: str) -> None:
        with self.lock:
            bar = self._lines.get(name)
            if bar is not None:
                bar.set_description_str(safe_text(f"  {name}: {text}"))

    def finished(self, name: str, label: str, status: str, detail: str) -> None:
        with self.lock:
            self.done += 1
            msg = f"{name}: {label}: {status}{': ' + detail if detail else ''}"
            if self._overall is not None:
                self._overall.update(1)
                if status != "success":
                    self._write(msg)
                self.state(name, f"{label}: {status}")
            else:
                line(f"{self.counter()} {msg}")

    def note(self, msg: str) -> None:
        with self.lock:
            if self._overall is not None:
                self._write(msg)
            else:
                line(msg)

    def _write(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(safe_text(msg), file=sys.stderr)

    def close(self) -> None:
        with self.lock:
            for bar in self._lines.values():
                bar.close()
            if self._overall is not None:
                self._overall.close()
            self._lines, self._overall = {}, None


class MemberProgress(Progress):
    """What a member's ``Runner`` reports, on the fleet's display."""

    def __init__(self, fleet: FleetProgress, name: str):
        super().__init__(enabled=False)
        self.fleet, self.name = fleet, name

    def start(self, label: str, total_nodes: int) -> None:
        self._label, self._node, self._steps = label, "", ""
        self.fleet.state(self.name, f"{label}: running")
        if not self.fleet.bars:
            line(f"{self.name}: {label}: running ({total_nodes} nodes)")

    def cached(self, n: int) -> None:
        pass

    def node(self, node_id: str, class_type: str, title: str | None, *, where: str | None = None) -> None:
        self._node = (f"node {node_id} {class_type}" + (f" '{title}'" if title and title != class_type else "")
                      + (f" in {where}" if where else ""))
        self._steps = ""
        self.fleet.state(self.name, f"{self._label}: {self._node}")

    def step(self, value: int, maximum: int) -> None:
        self.fleet.state(self.name, f"{self._label}: {self._node} step {value}/{maximum}")

    def finish(self, label: str, status: str, detail: str = "") -> None:
        self.fleet.finished(self.name, label, status, detail)

    def note(self, msg: str) -> None:
        self.fleet.note(f"{self.name}: {msg}")

    def close_bar(self) -> None:
        pass


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# -- the members ----------------------------------------------------------------------------------------


@dataclass
class Member:
    pod: Any  # runpod.records.Pod
    progress: MemberProgress
    conn: Connection | None = None
    state: str = "waiting"  # working, done, out, interrupted, timed out
    why: str = ""
    note: str = ""
    uploaded: bool = False
    assigned: list[PromptRow] = field(default_factory=list)  # --resume: prompts recorded on this pod

    @property
    def name(self) -> str:
        return self.pod.name


class Spread:
    """One batch over several members; see the module docstring."""

    def __init__(self, opts: RunOptions, fleet: str, members: list[Any], progress: FleetProgress):
        self.opts = opts
        self.fleet = fleet
        self.progress = progress
        self.members = [Member(p, progress.for_member(p.name)) for p in members]
        self.cancel = Cancel()
        self.queue = WorkQueue([])
        self.deadline: float | None = None
        self.batch: Any = None
        self.uploads: list[tuple[Path, str, str]] = []  # (file, name, subfolder) as the first member named it

    # -- a member's thread

    def work(self, m: Member) -> None:
        runner: Runner | None = None
        try:
            with Ledger.open() as ledger:
                try:
                    if m.conn is None:
                        m.conn = Connection(m.pod.id, False, m.progress.note, recover_s=MEMBER_RECOVER_S,
                                            strict=True)
                    if not m.uploaded:
                        self._upload(m.conn)
                    runner = Runner(ledger, self.batch, m.conn, progress=m.progress,
                                    previews=bool(self.batch.options.get("previews")), max_queued=self.per_member,
                                    pod_facts=_pod_facts(m.pod.id), debug=self.opts.debug, lost_is_fatal=True)
                    runner.deadline = m.conn.deadline = self.deadline  # --timeout bounds uploads and fetches too
                    m.state = "working"
                    self.progress.state(m.name, "ready")
                    if m.assigned:
                        self._adopt(m, runner)
                    runner.follow([], deadline=self.deadline, source=self.queue, cancel=self.cancel)
                    m.state = "done"
                    self.progress.state(m.name, "done")
                except KeyboardInterrupt:
                    m.state = "interrupted"
                    m.note = runner.withdraw() if runner is not None else "nothing was on its server"
                except TimeoutError:
                    m.state = "timed out"
                except AutopodError as e:
                    self._take_out(m, runner, ledger, str(e))
                except Exception as e:  # a bug: this member's prompts still go to the others
                    log.debug("member %s failed", m.name, exc_info=True)
                    self._take_out(m, runner, ledger, f"internal error: {type(e).__name__}: {e}")
        except AutopodError as e:  # the ledger itself
            m.state, m.why = "out", str(e)
        finally:
            if m.conn is not None:
                m.conn.close()

    @property
    def per_member(self) -> int:
        return self.opts.per_member or PER_MEMBER

    def _upload(self, conn: Connection) -> None:
        """The batch's input files, under the names the first member gave them."""
        for path, name, subfolder in self.uploads:
            if not path.is_file():
                raise ComfyError(f"input file {path} of this batch is gone; put it back to run its prompts here")
            conn.call(lambda c, p=path, n=name, s=subfolder: c.upload_image(p, name=n, subfolder=s, overwrite=True))

    def _adopt(self, m: Member, runner: Runner) -> None:
        """``--resume``: the prompts recorded on this member, held by it from the start. Finished ones are
        fetched (and settle), ones still on its server followed; the rest go to the queue. One at a time, so
        a member taken out half way gives back exactly what it still holds."""
        runner.source = self.queue
        queued = _server_queue(m.conn)  # type: ignore[arg-type]
        while m.assigned:
            again = runner.reclaim(m.assigned[:1], queued)
            m.assigned.pop(0)
            if again:
                self.queue.give_back(again)

    def _take_out(self, m: Member, runner: Runner | None, ledger: Ledger, why: str) -> None:
        m.state, m.why = "out", why
        rows = [t.row for t in runner.active.values()] if runner is not None else []
        rows += [r for r in m.assigned if r.idx not in {x.idx for x in rows}]
        m.assigned = []
        if runner is not None and m.conn is not None:
            _forget_on_server(m.conn, list(runner.active))
        back = [replan(ledger, r) for r in rows]
        if back:
            self.queue.give_back(back)
        self.progress.note(f"{m.name} is taken out ({why})"
                           + (f"; its {len(back)} unfinished prompt(s) go to the other members" if back else ""))
        self.progress.state(m.name, "out")

    # -- the whole run

    def execute(self, rows: list[PromptRow]) -> None:
        """Run every planned prompt (``rows`` in state planned), on every member, until all are settled."""
        self.queue = WorkQueue(rows)
        self.queue.hold(sum(len(m.assigned) for m in self.members))
        self.deadline = time.monotonic() + self.opts.timeout if self.opts.timeout else None
        ended = [threading.Event() for _ in self.members]

        def work(m: Member, end: threading.Event) -> None:
            try:
                self.work(m)
            finally:
                end.set()

        for m, end in zip(self.members, ended):
            threading.Thread(target=work, args=(m, end), name=f"member-{m.name}", daemon=True).start()
        try:
            with signals.handling():
                # Events, not Thread.join: a join cut short by the signal can later return while the
                # thread still runs, and its member's cleanup would be read before it is done.
                while not all(end.wait(0.2) for end in ended):
                    pass
        except KeyboardInterrupt as e:
            sig = e if isinstance(e, Interrupted) else Interrupted()
            self.cancel.set(sig)
            with signals.shielded():
                for end in ended:
                    end.wait()
            self.progress.close()
            notes = "; ".join(f"{m.name}: {m.note or m.why or m.state}" for m in self.members)
            raise AutopodError(f"{sig.what}: {notes or 'nothing was running'}; finish the batch with "
                               f"`autopod comfy.run --resume {self.batch.id} --fleet {self.fleet}`",
                               exit_code=sig.exit_code, data={"batch": self.batch.id}) from None
        self.progress.close()


def _forget_on_server(conn: Connection, prompt_ids: list[str]) -> None:
    """A member taken out may still answer (its ComfyUI restarted, or one call failed): take the prompts
    given to the others off it, so none runs twice. Best effort, briefly: it may well be gone."""
    if not prompt_ids:
        return
    client = conn.client
    client.timeout = 3.0
    try:
        client.delete_queued(prompt_ids)
        for pid in prompt_ids:
            client.interrupt(pid)
    except (ComfyError, OSError) as e:
        log.info("could not take prompts off a member that was taken out: %s", e)


# -- the task's entry point ----------------------------------------------------------------------------

THEN = ("stop", "kill")
THEN_ENDPOINT = ("purge",)  # scaling to zero is RunPod's job; purge empties the endpoint's queue


def run_options(*, workflow: list[str] | None = None, pod: str | None = None, fleet: str | None = None,
                no_tunnel: bool = False, set: list[str] | None = None, input: list[str] | None = None,
                sweep: list[str] | None = None, repeat: str | None = None, seed: str | None = None,
                job: str | None = None, output_dir: str | None = None, output: str | None = None,
                previews: bool = False, detach: bool = False, dry_run: bool = False, timeout: str | None = None,
                max_queued: str | None = None, resume: str | None = None, then: str | None = None,
                debug: bool = False, pull_missing: bool = False, no_sheet: bool = False,
                endpoint: str | None = None, object_info: str | None = None,
                resubmit_unknown: bool = False) -> RunOptions:
    """``comfy.run``'s flags, as typed, checked and made into RunOptions (exit 2 on a bad one). The task and
    the console script's quick path (``autopod.launch``) both come here, so they cannot disagree."""
    from ..core.flags import MAX_WAIT_S, number
    from .ops import fleet_for

    if seed is not None and seed not in ("fixed", "random", "increment"):
        raise UsageError(f"--seed must be fixed, random or increment, got {seed!r}")
    if resume is not None and (workflow or job or set or input or sweep):
        raise UsageError("--resume finishes a recorded batch as it was planned; it takes no workflow or overrides")
    if endpoint is not None:
        if pod or fleet or no_tunnel:
            raise UsageError("--endpoint runs the batch on a Serverless endpoint; it takes no --pod, --fleet or "
                             "--no-tunnel")
        if detach or pull_missing or previews:
            raise UsageError(f"--{'detach' if detach else 'pull-missing' if pull_missing else 'previews'} is for "
                             f"pods; with --endpoint, RunPod keeps the queue and the worker returns saved images only")
    elif object_info is not None:
        raise UsageError("--object-info gives the node definitions for an --endpoint run (a pod has its own)")
    if resubmit_unknown and resume is None:
        raise UsageError("--resubmit-unknown goes with --resume BATCH: it sends again that batch's submits whose "
                         "answer was lost")
    fleet = fleet_for(fleet, pod, no_tunnel) if endpoint is None else None
    if fleet is not None and detach:
        raise UsageError("--detach submits to one pod; a fleet's batch is spread as members become free, "
                         "so it needs this command to run")
    queued = number(max_queued, "--max-queued", int, minimum=1, maximum=10_000)
    return RunOptions(workflows=list(workflow or []), job=job, sets=list(set or []), inputs=list(input or []),
                      sweeps=list(sweep or []), repeat=number(repeat, "--repeat", int, minimum=1, maximum=100_000),
                      seed=seed, output_dir=output_dir or "outputs", template=output, previews=previews,
                      detach=detach, dry_run=dry_run, timeout=number(timeout, "--timeout", minimum=1, maximum=MAX_WAIT_S),
                      max_queued=queued or 16, per_member=queued, fleet=fleet, then=then,
                      pod=pod, no_tunnel=no_tunnel, resume=resume, debug=debug, pull_missing=pull_missing,
                      sheet=not no_sheet, endpoint=endpoint, object_info=object_info,
                      resubmit_unknown=resubmit_unknown)


def print_report(report: dict[str, Any], *, as_json: bool, dry_run: bool = False, detach: bool = False) -> int:
    """Print a batch's report as ``comfy.run`` (and ``comfy.watch``, ``comfy.fetch``) do; its exit code.
    ``dry_run``: the prompt(s) exactly as they would be sent, with or without ``--json``. Otherwise one
    document for scripts, the prompt ids with ``detach``, or a table and an ok/changed line for people."""
    from ..core.output import dump_json, safe_text, table

    if dry_run:
        dump_json(report["prompt"] if report["prompt"] is not None else report["prompts"])
        return 0
    code = int(report.get("exit_code") or 0)
    report = {**report, "status": "changed" if report.get("changed") else "ok"}
    if code:
        report["failed"] = True
    if as_json:
        dump_json(report)
    elif detach:
        for pid in report.get("prompt_ids") or []:
            print(pid)
        print(report["msg"], file=sys.stderr)
    else:
        rows = [{"index": p["index"], "prompt_id": (p["prompt_id"] or "")[:8] or None, "status": p["status"],
                 "pod": p.get("pod"), "outputs": len(p["outputs"]), "error": p["error"]}
                for p in report.get("prompts") or []]
        pod_column = [("pod", "POD")] if report.get("fleet") else []
        if rows:
            print(table(rows, [("index", "#"), ("prompt_id", "PROMPT"), ("status", "STATUS"), *pod_column,
                               ("outputs", "FILES"), ("error", "ERROR")]))
        status = "changed" if report.get("changed") else "ok"
        print(f"{'failed' if code else status}: {safe_text(report['msg'])}")
    return code


def render(opts: RunOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """``comfy.run``: on one pod (``run.render``) or spread over a fleet (:func:`render_fleet`).
    ``--then stop|kill`` acts on the pod or fleet once the batch is done, also when prompts failed,
    but not after bad input, Ctrl-C or ``--timeout`` (prompts still run then)."""
    if opts.endpoint is not None or _endpoint_batch(opts):
        report = render_endpoint(opts, progress=progress)
        _sheet(opts, report)
        return report
    if opts.resubmit_unknown:
        raise UsageError(f"--resubmit-unknown is for a batch that ran on a Serverless endpoint; on a pod every "
                         f"prompt has its own id, so batch {opts.resume} has no unknown submits")
    then_target = _then_target(opts)
    try:
        if opts.fleet:
            report = render_fleet(opts)
        else:
            report = render_one(opts, progress=progress)
    except AutopodError as e:
        if then_target is None or e.exit_code != ExitCode.FAILED:
            raise
        note, _docs, _ok = _then(opts, then_target)
        raise type(e)(f"{e}; then {note}", exit_code=e.exit_code, data=e.data) from None
    _sheet(opts, report)
    if then_target is not None:
        if report.get("timed_out"):
            report["msg"] += f"; --then {opts.then} was not done: prompts still run"
        else:
            note, docs, ok = _then(opts, then_target)
            report["then"] = {"action": opts.then, "msg": note, "members": docs}
            report["msg"] += f"; then {note}"
            if not ok:
                report["exit_code"] = int(ExitCode.FAILED)
    return report


def _sheet(opts: RunOptions, report: dict[str, Any]) -> None:
    """A batch of two or more prompts that ran here (not --detach, --dry-run or --no-sheet) ends with its
    contact sheet and gallery page; the report names both. A sheet that cannot be made fails nothing."""
    if not opts.sheet or opts.detach or opts.dry_run:
        return
    from .sheet import add_to_report

    add_to_report(report, note=line)


def _endpoint_batch(opts: RunOptions) -> bool:
    """``--resume BATCH`` of a batch that ran on an endpoint (no --pod or --fleet given)."""
    if not opts.resume or opts.fleet or opts.pod or opts.no_tunnel:
        return False
    from .endpoint import is_endpoint_batch

    with Ledger.open() as ledger:
        batch, _ = ledger.find(opts.resume)
    return is_endpoint_batch(batch)


def render_endpoint(opts: RunOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """``comfy.run --endpoint NAME`` (``endpoint``), and ``--then purge`` once the batch is done."""
    from . import endpoint as sls

    if opts.then is not None:
        if opts.then not in THEN_ENDPOINT:
            raise UsageError(f"--then with an endpoint must be purge (RunPod scales its workers to zero itself), "
                             f"got {opts.then!r}")
        if opts.dry_run:
            raise UsageError("--then acts when the batch is done; it cannot go with --dry-run")
    report = sls.render(opts, progress=progress)
    if opts.then is not None and not report.get("timed_out"):
        from .ledger import Ledger as _Ledger

        with _Ledger.open() as ledger:
            target = sls.endpoint_of(ledger.batch(report["batch"]))
        try:
            note, ok = sls.purge(target), True
        except AutopodError as e:
            note, ok = f"purge failed: {e}", False
        report["then"] = {"action": opts.then, "msg": note}
        report["msg"] += f"; then {note}"
        if not ok:
            report["exit_code"] = int(ExitCode.FAILED)
    return report


def _then_target(opts: RunOptions) -> str | None:
    """What ``--then`` acts on, checked before anything runs: the fleet, or the pod id."""
    if opts.then is None:
        return None
    if opts.then not in THEN:
        raise UsageError(f"--then must be stop or kill, got {opts.then!r}")
    if opts.detach or opts.dry_run:
        raise UsageError("--then acts when the batch is done; it cannot go with --detach or --dry-run")
    if opts.no_tunnel:
        raise UsageError("--then stops a pod; with --no-tunnel there is none")
    if opts.fleet:
        return opts.fleet
    from ..tunnels.resolve import resolve_target

    pod = opts.pod
    if pod is None and opts.job:
        from .jobfile import load_job

        pod = load_job(opts.job).pod
    target = resolve_target(pod)
    if target.kind != "pod":
        raise UsageError(f"--then stops a pod; {target.name} is an inventory host")
    return target.id


def _then(opts: RunOptions, target: str) -> tuple[str, list[dict[str, Any]], bool]:
    """Stop or terminate the fleet or pod: (what happened, a document per pod, whether all went well)."""
    try:
        if opts.fleet:
            from ..runpod import fleet as fleets

            results, summary = (fleets.stop if opts.then == "stop" else fleets.kill)(target)
            return summary, [r.doc for r in results], all(r.ok for r in results)
        from ..runpod import lifecycle
        from ..runpod.api import connect as connect_api

        act = lifecycle.stop_pod if opts.then == "stop" else lifecycle.kill_pod
        outcome = act(connect_api(), target)
        return outcome.msg, [outcome.to_dict()], True
    except AutopodError as e:
        return f"{opts.then} failed: {e}", [], False



def render_fleet(opts: RunOptions) -> dict[str, Any]:
    """``comfy.run --fleet NAME``: plan once, spread over the running members, report like ``comfy.run``
    plus which member ran each prompt. This process holds the batch until it returns (``ledger.hold``)."""
    with contextlib.ExitStack() as held:
        return _render_fleet(opts, held)


def _render_fleet(opts: RunOptions, held: contextlib.ExitStack) -> dict[str, Any]:
    from ..runpod.api import connect as connect_api
    from ..runpod.fleet import members as fleet_members

    fleet = str(opts.fleet)
    pods = fleet_members(connect_api(), fleet)
    chain.set_fleet(fleet)
    ready = [p for p in pods if p.status == "RUNNING"]
    if not ready:
        raise ComfyError(f"no member of fleet {fleet} is running ({', '.join(f'{p.name} {p.status}' for p in pods)}); "
                         f"`autopod pod.up --name {fleet} --count {len(pods)}` brings them up")
    notes = Progress(enabled=False)
    first, planned_on = _first_member(ready, notes, opts, [p.id for p in ready])
    assigned: dict[str, list[PromptRow]] = {}
    with Ledger.open() as ledger:
        if opts.resume:
            batch, _ = ledger.find(opts.resume)
            held.enter_context(hold(batch.id, f"comfy.run --resume --fleet {fleet}"))
            batch, rows = ledger.find(opts.resume)  # as the last holder left it
            todo, assigned = _resume_plan(ledger, rows, {p.id for p in ready})
        else:
            (planned, template), object_info = planned_on
            if opts.dry_run:
                first.close()
                return dry_run_report(planned)
            batch = ledger.new_batch(
                batch_name(planned), target_id=f"fleet:{fleet}",
                target_name=fleet, output_dir=str(Path(opts.output_dir).resolve()), template=template,
                options={"previews": opts.previews, "max_queued": opts.max_queued, "fleet": fleet,
                         "uploads": []}, prompts=[p.as_ledger() for p in planned],
                claim=lambda bid: held.enter_context(hold(bid, f"comfy.run --fleet {fleet}")))
            _upload_all(planned, first, ledger, object_info, notes)
            for i, p in enumerate(planned):
                ledger.update(batch.id, i, prompt=p.prompt)
            # Kept with the batch, so --resume can give other members the files too.
            batch.options["uploads"] = [[str(f), n, sub] for f, n, sub in _uploaded(planned)]
            ledger.set_options(batch.id, batch.options)
            todo = ledger.prompts(batch.id)
    progress = FleetProgress(len(todo) + sum(len(v) for v in assigned.values()), [p.name for p in ready])
    spread = Spread(opts, fleet, ready, progress)
    spread.batch = batch
    spread.uploads = [(Path(f), n, sub) for f, n, sub in batch.options.get("uploads") or []]
    spread.members[0].conn = first
    spread.members[0].uploaded = not opts.resume
    for m in spread.members:
        m.assigned = assigned.get(m.pod.id, [])
    progress.note(f"batch {batch.id}: {len(todo)} prompt(s) over fleet {fleet}: "
                  f"{', '.join(p.name for p in ready)}" + (f" ({len(pods) - len(ready)} not running)"
                                                           if len(pods) > len(ready) else ""))
    spread.execute(todo)
    with Ledger.open() as ledger:
        report = _report(ledger, batch)
    return _fleet_report(report, spread)


def _first_member(ready: list[Any], notes: Progress, opts: RunOptions,
                  pods: list[str | None]) -> tuple[Connection, Any]:
    """The first member that answers, and the batch planned against its node definitions (``run.plan_on``:
    the kept ones, checked against that member); with ``--resume``, which plans nothing, None."""
    problems = []
    for pod in ready:
        try:
            conn = Connection(pod.id, False, notes.note, recover_s=MEMBER_RECOVER_S, strict=True)
        except AutopodError as e:
            problems.append(f"{pod.name}: {e}")
            continue
        try:
            if opts.resume:
                conn.call(lambda c: c.get_system_stats())
                return conn, None
            return conn, plan_on(conn, opts, note=Progress().note, pods=pods)
        except UsageError:  # bad input: the same on every member
            conn.close()
            raise
        except AutopodError as e:
            conn.close()
            problems.append(f"{pod.name}: {e}")
    raise ComfyError("no member's ComfyUI answers: " + "; ".join(problems))


def _uploaded(planned: list[Any]) -> list[tuple[Path, str, str]]:
    """Each input file once, with the name it has on the first member (read back from the prompts)."""
    seen: dict[Path, tuple[Path, str, str]] = {}
    for p in planned:
        for target in p.uploads:
            if target.path in seen:
                continue
            value = str(p.prompt[target.node]["inputs"][target.input])
            sub, _, name = value.rpartition("/")
            seen[target.path] = (target.path, name, sub)
    return list(seen.values())


def _resume_plan(ledger: Ledger, rows: list[PromptRow],
                 live: set[str]) -> tuple[list[PromptRow], dict[str, list[PromptRow]]]:
    """``--resume --fleet``: prompts that never finished go to the queue; ones recorded on a running
    member are looked up there first (finished: fetched; still queued: followed). Failed and rejected
    prompts are not run again: they would fail again."""
    todo: list[PromptRow] = []
    assigned: dict[str, list[PromptRow]] = {}
    for r in rows:
        if r.status == "success" and r.fetched_at or r.status in ("error", "rejected"):
            continue
        if r.prompt_id and r.target_id in live:
            assigned.setdefault(r.target_id, []).append(r)  # type: ignore[arg-type]
        elif r.status != "planned" or r.prompt_id:
            todo.append(replan(ledger, r))
        else:
            todo.append(r)
    return todo, assigned


def _fleet_report(report: dict[str, Any], spread: Spread) -> dict[str, Any]:
    ran: dict[str, int] = collections.Counter(p.get("pod") for p in report["prompts"]
                                              if p["status"] == "success" and p.get("pod"))
    report["fleet"] = spread.fleet
    report["members"] = [{"member": m.name, "pod": m.pod.id, "state": m.state, "why": m.why or None,
                          "succeeded": ran.get(m.name, 0)} for m in spread.members]
    report["msg"] += f"; over fleet {spread.fleet}: " + ", ".join(f"{m.name} {ran.get(m.name, 0)}"
                                                                   for m in spread.members)
    out = [m for m in spread.members if m.state == "out"]
    if out:
        report["msg"] += "; taken out: " + "; ".join(f"{m.name} ({m.why})" for m in out)
    left = spread.queue.left()
    if left:
        report["exit_code"] = int(ExitCode.FAILED)
        report["msg"] += (f"; {left} prompt(s) never ran: no member was left; `autopod comfy.run --resume "
                          f"{report['batch']} --fleet {spread.fleet}` runs them")
    if any(m.state == "timed out" for m in spread.members):
        report.update(exit_code=int(ExitCode.FAILED), timed_out=True)
        report["msg"] += (f"; stopped waiting after {spread.opts.timeout:g}s: the prompts go on, "
                          f"`autopod comfy.run --resume {report['batch']} --fleet {spread.fleet}` follows them")
    return report

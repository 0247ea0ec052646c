"""``comfy.run``: workflow files on this machine in, outputs on disk out, through a pod's ComfyUI.

The flow, each step in its own module:

1. **Plan** (pure, before anything is sent): load each workflow (API or editor format,
   ``workflow``), apply ``--set`` overrides and check every value against the server's node
   schema (``overrides``), expand repeats and sweeps (``batch``). Bad input exits 2 here.
2. **Record** the batch in the ledger (``ledger``), upload input files once (by content).
3. **Submit** under a bound (``--max-queued``), so the GPU never idles between prompts.
4. **Watch** the batch's events on one WebSocket (``events``); the record is ComfyUI's
   history, polled as well, so a dropped socket or a recovered tunnel loses nothing.
5. **Fetch** each finished prompt's outputs (``outputs``), with a sidecar JSON.

Ctrl-C (or SIGTERM) interrupts this run's running prompt, removes its queued ones from the
server's queue, and exits 130; ``comfy.run --resume BATCH`` finishes the batch later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core import signals
from ..core.errors import AutopodError, ComfyError, ExitCode, Interrupted, UsageError
from .client import BadDownload, ComfyHTTPError, ComfyTimeout, ComfyUIClient, ComfyUnreachable, DownloadDeadline
from .events import EventStream
from .ledger import FINAL, BatchRow, Ledger, PromptRow, hold
from .outputs import (DEFAULT_TEMPLATE, check_destination, check_template, output_items, save_stream, target_path,
                      write_sidecar)
from .progress import Progress

log = logging.getLogger(__name__)

POLL_S = 2.0  # history/queue poll while the WebSocket is up (events come first; this is the safety net)
POLL_DOWN_S = 0.5  # ... and while it is down
LOST_AFTER_POLLS = 3  # a prompt in neither queue nor history this many polls in a row was lost (a restart)
RECOVER_S = 120.0  # how long to keep trying to get ComfyUI back after the tunnel or the server dropped
DOWNLOAD_TRIES = 4  # a /view answer that is not the file is asked for again this often, with backoff
DOWNLOAD_BACKOFF_S = 0.5  # ... first pause, doubled each time


@dataclass
class RunOptions:
    workflows: list[str] = field(default_factory=list)
    job: str | None = None
    sets: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    repeat: int | None = None
    seed: str | None = None
    output_dir: str = "outputs"
    template: str | None = None
    previews: bool = False
    detach: bool = False
    dry_run: bool = False
    timeout: float | None = None
    max_queued: int = 16
    pod: str | None = None
    no_tunnel: bool = False
    resume: str | None = None
    debug: bool = False  # print ComfyUI's traceback of a failed node
    fleet: str | None = None  # spread the batch over this fleet's running members (``spread``)
    per_member: int | None = None  # with a fleet: prompts on each member's server (--max-queued)
    then: str | None = None  # stop or kill the pod (or fleet) once the batch is done
    pull_missing: bool = False  # pull the models the run names and the pod lacks, first (``needs``)
    sheet: bool = True  # a contact sheet and gallery page after a batch of two or more (``sheet``)
    endpoint: str | None = None  # run on this Serverless endpoint (``endpoint``), one job per prompt
    object_info: str | None = None  # with an endpoint: the node definitions to plan on (a JSON file)
    resubmit_unknown: bool = False  # with --resume of an endpoint batch: send again the submits whose answer was lost


@dataclass
class Planned:
    """One prompt to run: the API prompt as it will be sent, and how it came to be."""

    workflow: str
    job: str
    workflow_hash: str
    prompt: dict[str, Any]
    overrides: dict[str, Any]
    seeds: dict[str, Any]
    uploads: list[Any] = field(default_factory=list)  # overrides.InputTarget: a file to upload into an input
    node_paths: dict[str, str] = field(default_factory=dict)  # node id inside a subgraph -> "subgraph 'Upscale'"

    def as_ledger(self) -> dict[str, Any]:
        from .workflow import prompt_hash

        return {"workflow": self.workflow, "workflow_hash": self.workflow_hash, "prompt": self.prompt,
                "prompt_hash": prompt_hash(self.prompt), "overrides": self.overrides, "seeds": self.seeds,
                "job": self.job, "node_paths": self.node_paths}


# -- the connection: ComfyUI through a tunnel that may have to be rebuilt -----------------------------------


class Connection:
    """The client for the pod's ComfyUI, re-pointed when the tunnel is rebuilt (its local port can change)."""

    def __init__(self, pod: str | None, no_tunnel: bool, note: Callable[[str], None], *,
                 recover_s: float = RECOVER_S, strict: bool = False):
        from .ops import comfy_endpoint

        self.no_tunnel = no_tunnel
        self.note = note
        self.recover_s = recover_s
        # A fleet member: a pod that cannot be reached again (stopped, gone) ends its part at once,
        # so its prompts go to the other members rather than wait out the recovery time.
        self.strict = strict
        self.endpoint = comfy_endpoint(pod, no_tunnel=no_tunnel)
        self.client = ComfyUIClient(self.endpoint.url, timeout=30.0)
        self.deadline: float | None = None  # --timeout (monotonic): no call or retry outlasts it

    @property
    def target_id(self) -> str:
        return self.endpoint.target_id or self.endpoint.url

    def call(self, fn: Callable[[ComfyUIClient], Any]) -> Any:
        """``fn(client)``; when ComfyUI cannot be reached, rebuild the tunnel and try again for a while."""
        deadline = time.monotonic() + self.recover_s
        delay = 0.5
        while True:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.client.timeout = max(0.2, min(30.0, left))
            try:
                return fn(self.client)
            except ComfyTimeout:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise TimeoutError from None
                raise
            except ComfyUnreachable as e:
                if time.monotonic() >= deadline:
                    raise ComfyUnreachable(f"{e} (gave up after {self.recover_s:.0f}s)") from None
                if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                    raise TimeoutError from None
                self.note(f"ComfyUI is out of reach ({e}); reconnecting")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.recover()

    def recover(self) -> None:
        if self.no_tunnel or not self.endpoint.target_id:
            return
        from .ops import comfy_endpoint

        try:
            self.endpoint = comfy_endpoint(self.endpoint.target_id)  # reuses a healthy tunnel, rebuilds a dead one
        except AutopodError as e:
            if self.strict:
                raise ComfyUnreachable(f"{self.endpoint.target_name or self.endpoint.target_id}: {e}") from None
            log.info("tunnel recovery failed for now: %s", e)
            return
        self.client.base_url = self.endpoint.url.rstrip("/")

    def close(self) -> None:
        self.client.close()


# -- planning (nothing is sent) -----------------------------------------------------------------------------


def plan(opts: RunOptions, object_info: dict[str, Any], *,
         note: Callable[[str], None] | None = None) -> tuple[list[Planned], str]:
    """Every prompt of the run, checked against ``object_info``; and the output template. Raises
    UsageError (exit 2) on any bad input, before anything is uploaded or submitted. ``note`` gets one
    line per node whose saved values the editor conversion filled in or ignored."""
    from .batch import expand, parse_sweep
    from .overrides import apply_overrides, parse_input, parse_set, resolve_input
    from .workflow import convert, load_workflow, prompt_hash

    sets, inputs, sweeps = list(opts.sets), list(opts.inputs), list(opts.sweeps)
    repeat, seed, template = opts.repeat, opts.seed, opts.template
    workflows = [Path(w) for w in opts.workflows]
    job_name = None
    if opts.job:
        from .jobfile import load_job

        job = load_job(opts.job)
        workflows = [job.workflow] + workflows
        # The job file is the base; flags given on the command line come after it, so they win.
        sets, inputs, sweeps = job.sets + sets, job.inputs + inputs, job.sweeps + sweeps
        repeat = repeat if repeat is not None else job.repeat
        seed = seed or job.seed
        template = template or job.output_template
        job_name = Path(opts.job).stem
    if not workflows:
        raise UsageError("comfy.run needs a workflow file (or --job FILE, or --resume BATCH)")
    template = check_template(template or DEFAULT_TEMPLATE)
    planned: list[Planned] = []
    for wf_path in workflows:
        wf = load_workflow(wf_path)
        converted = convert(wf, object_info)
        for text in converted.notes:
            if note is not None:
                note(f"{wf_path}: {text}")
        base = converted.prompt
        prompt, applied = apply_overrides(base, [parse_set(s) for s in sets], object_info)
        uploads = [resolve_input(prompt, parse_input(spec), object_info) for spec in inputs]
        variants = expand(prompt, object_info, sweeps=[parse_sweep(s) for s in sweeps], repeat=repeat or 1,
                          seed=seed or "fixed")
        fixed = {f"{a['node']}.{a['input']}": a["value"] for a in applied}
        for v in variants:
            planned.append(Planned(workflow=str(wf_path), job=job_name or wf_path.stem,
                                   workflow_hash=prompt_hash(base), prompt=v.prompt,
                                   overrides={**fixed, **v.overrides}, seeds=dict(v.seeds), uploads=list(uploads),
                                   node_paths=dict(converted.paths)))
    check_destination(Path(opts.output_dir), template, destination_samples(planned, object_info))
    return planned, template


def destination_samples(planned: list[Planned], object_info: dict[str, Any], *, limit: int = 2000) -> list[dict]:
    """The output-template fields of each planned prompt's output nodes as far as they are known before
    the run (the server's file name and the batch id stand in), to find a path that cannot be made."""
    samples = []
    for i, p in enumerate(planned):
        for node, spec in p.prompt.items():
            if not isinstance(spec, dict) or not (object_info.get(spec.get("class_type")) or {}).get("output_node"):
                continue
            samples.append({"job": p.job, "batch": "b" * 12, "index": i, "prompt_id": "0" * 36, "node": node,
                            "title": (spec.get("_meta") or {}).get("title") or spec.get("class_type") or node,
                            "kind": "images", "filename": "ComfyUI_00001_.png", "subfolder": "",
                            "type": "output", "pod": "pod"})
            if len(samples) >= limit:
                return samples
    return samples
    return samples


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wire_uploads(planned: list[Planned], *, upload: Callable[[Path, str], tuple[str, str]] | None) -> None:
    """Set each ``--input`` to the name ComfyUI gave the file; ``upload(path, sha256)`` returns
    (name, subfolder). Without ``upload`` (a dry run) the file's own name stands in."""
    from .overrides import set_uploaded

    names: dict[Path, tuple[str, str]] = {}
    for p in planned:
        for target in p.uploads:
            if target.path not in names:
                names[target.path] = upload(target.path, _sha256(target.path)) if upload else (target.path.name, "")
            p.prompt = set_uploaded(p.prompt, target, *names[target.path])


# -- running ------------------------------------------------------------------------------------------------


@dataclass
class Track:
    """A submitted prompt while this process follows it."""

    row: PromptRow
    label: str
    missing_polls: int = 0
    started_local: float | None = None  # this machine's clock when the prompt was seen to start


class Runner:
    """Submits a batch's prompts (bounded), follows them, and fetches their outputs."""

    def __init__(self, ledger: Ledger, batch: BatchRow, conn: Connection, *, progress: Progress,
                 previews: bool = False, max_queued: int = 16, pod_facts: dict[str, Any] | None = None,
                 debug: bool = False, lost_is_fatal: bool = False):
        self.ledger = ledger
        self.batch = batch
        self.conn = conn
        self.progress = progress
        self.previews = previews
        self.max_queued = max(1, int(max_queued))
        self.pod_facts = pod_facts or {}
        self.debug = debug
        self.active: dict[str, Track] = {}  # prompt_id -> Track
        self.total = len(ledger.prompts(batch.id))  # for "prompt 3/20"
        self.poll_at = float("inf")  # poll history early (an end event came, its record is due)
        self.stream = EventStream(lambda: self.conn.client.ws_url(self.batch.client_id),
                                  on_state=self._socket_state)
        self.root = Path(batch.output_dir)
        self.source: Any = _ListSource([])
        # A fleet member whose ComfyUI forgot a prompt (it restarted) is taken out, and the prompt goes
        # to another member; alone, the prompt is reported lost for ``--resume``.
        self.lost_is_fatal = lost_is_fatal
        self.target = (conn.endpoint.target_id or batch.target_id, conn.endpoint.target_name or batch.target_name)
        self.deadline: float | None = None  # --timeout (monotonic): bounds following and downloading alike
        self._facts: dict[str | None, dict[str, Any]] = {}  # a prompt's pod -> its GPU and $/hr, for the sidecar

    # -- submitting

    def submit(self, row: PromptRow) -> bool:
        """POST one prompt. Its id is chosen here and recorded first (ComfyUI keeps an id it is given),
        so a prompt whose answer is lost to Ctrl-C or a dropped link is still known: Ctrl-C removes it
        from the queue, ``--resume`` finds it, nothing runs twice. A rejected one is recorded with
        ComfyUI's node_errors and reported."""
        import uuid

        pid = str(uuid.uuid4())
        self.ledger.update(row.batch_id, row.idx, prompt_id=pid, status="submitting", submitted_at=time.time(),
                           target_id=self.target[0], target_name=self.target[1], attempts=row.attempts + 1)
        row = self.ledger.prompt(row.batch_id, row.idx)
        self.active[pid] = Track(row, self._label(row))
        try:
            sub = self.conn.call(lambda c: c.submit(row.prompt, self.batch.client_id, prompt_id=pid))
        except ComfyHTTPError as e:
            if e.status == 400 and isinstance(e.body, dict):
                del self.active[pid]
                self._rejected(row, e.body)
                self.source.settled(row)
                return False
            raise
        self.ledger.update(row.batch_id, row.idx, status="queued")
        self.active[pid].row.status = "queued"
        if sub.node_errors:  # 200, but some outputs were dropped: never a plain success
            self.ledger.update(row.batch_id, row.idx, error={"node_errors": sub.node_errors})
            for msg in node_error_lines(sub.node_errors, row.prompt, row.node_paths):
                self.progress.note(f"{self._label(row)}: {msg} (that output is skipped)")
        return True

    def _rejected(self, row: PromptRow, body: dict[str, Any]) -> None:
        err = body.get("error") or {}
        lines = node_error_lines(body.get("node_errors") or {}, row.prompt, row.node_paths)
        if not lines:
            lines = [f"{err.get('type', 'error')}: {err.get('message', '')} {err.get('details') or ''}".strip()]
        self.ledger.update(row.batch_id, row.idx, status="rejected", finished_at=time.time(),
                           error={"error": err, "node_errors": body.get("node_errors") or {}, "lines": lines})
        for msg in lines:
            self.progress.note(f"{self._label(row)}: rejected: {msg}")

    def _label(self, row: PromptRow) -> str:
        return f"prompt {row.idx + 1}/{self.total}" + (f" ({row.prompt_id[:8]})" if row.prompt_id else "")

    def reclaim(self, rows: list[PromptRow], queued: set[str]) -> list[PromptRow]:
        """Prompts of this batch sent to this server earlier (``--resume``): a finished one is fetched, one
        still in ``queued`` (the server's queue) is followed; the others are returned, planned again."""
        again = []
        for r in rows:
            entry = self.conn.call(lambda c, r=r: c.get_history(r.prompt_id)).get(r.prompt_id) if r.prompt_id else None
            if entry is not None and outcome_of(entry)[0] != "interrupted":
                self.active[r.prompt_id] = Track(r, self._label(r))  # type: ignore[index]
                self.finish(self.active[r.prompt_id], entry)  # type: ignore[index]
            elif r.prompt_id and r.prompt_id in queued:
                self.active[r.prompt_id] = Track(r, self._label(r))
            else:
                again.append(replan(self.ledger, r))
        return again

    # -- following

    def follow(self, pending: list[PromptRow], *, deadline: float | None = None, source: Any = None,
               cancel: Any = None) -> None:
        """Submit ``pending`` (bounded by max_queued) and follow everything active until all is final.

        ``source`` (a fleet's shared queue) replaces ``pending``: ``take()`` the next prompt or None,
        ``more()`` while other members may still give prompts back, ``settled(row)`` when one is final,
        ``idle(s)`` to wait. ``cancel`` (``core.fanout.Cancel``) ends the loop with ``Interrupted``."""
        self.source = source or _ListSource(list(pending))
        self.deadline = deadline
        if deadline is not None:
            self.conn.deadline = deadline
        last_poll = time.monotonic()  # events come first; the history poll is the safety net
        # Listen before submitting: ComfyUI sends a prompt's events only to sockets already open.
        self.stream.connect()
        try:
            while True:
                if cancel is not None:
                    cancel.check()
                while len(self.active) < self.max_queued and (row := self.source.take()) is not None:
                    self.submit(row)
                if not self.active:
                    if not self.source.more():
                        break
                    self.source.idle(0.2)
                    continue
                ev = self.stream.next(0.5 if self.stream.up else 0.0)
                if ev is not None:
                    self.on_event(ev)
                now = time.monotonic()
                if now - last_poll >= (POLL_S if self.stream.up else POLL_DOWN_S) or now >= self.poll_at:
                    self.poll()
                    last_poll, self.poll_at = now, float("inf")
                if not self.stream.up and ev is None:
                    time.sleep(0.1)
                if deadline is not None and now > deadline and self.active:
                    raise TimeoutError
        finally:
            self.stream.close()
            self.progress.close_bar()

    def _socket_state(self, state: str) -> None:
        if state == "dropped":
            self.progress.note("the WebSocket dropped; following the batch through ComfyUI's history meanwhile")
        elif state == "reconnected":
            self.progress.note("the WebSocket is back")

    def on_event(self, ev: dict[str, Any]) -> None:
        kind, data = ev.get("type"), ev.get("data") or {}
        t = self.active.get(str(data.get("prompt_id") or ""))
        if t is None:
            return
        if kind == "execution_start":
            t.started_local = time.time()
            self.ledger.update(t.row.batch_id, t.row.idx, status="running", started_at=t.started_local)
            self.progress.start(t.label, len(t.row.prompt))
        elif kind == "execution_cached":
            self.progress.cached(len(data.get("nodes") or []))
        elif kind == "executing" and data.get("node") is None:
            # ComfyUI sends this after it has written the history entry (execution_success comes before):
            # the moment to read the result.
            self.finish(t)
        elif kind == "executing":
            node = str(data["node"])
            spec = t.row.prompt.get(node) or {}
            self.progress.node(node, spec.get("class_type", "?"), (spec.get("_meta") or {}).get("title"),
                               where=t.row.node_paths.get(node))
        elif kind == "progress":
            self.progress.step(int(data.get("value") or 0), int(data.get("max") or 0))
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            # The history entry follows in a moment; should "executing: null" be lost, poll for it soon.
            self.poll_at = min(self.poll_at, time.monotonic() + 0.5)

    def poll(self) -> None:
        """The record: history for each active prompt; the queue tells pending from lost."""
        queued: set[str] | None = None
        for pid, t in list(self.active.items()):
            entry = self.conn.call(lambda c, pid=pid: c.get_history(pid)).get(pid)
            if entry is not None and finished(entry):
                self.finish(t, entry)
                continue
            if queued is None:
                q = self.conn.call(lambda c: c.get_queue_info())
                queued = {i.prompt_id for i in q.running + q.pending}
                running = {i.prompt_id for i in q.running}
                for rpid in running & set(self.active):
                    if self.active[rpid].started_local is None:
                        self.active[rpid].started_local = time.time()  # at the latest: a poll's resolution
                    if self.active[rpid].row.status == "queued":
                        self.ledger.update(self.active[rpid].row.batch_id, self.active[rpid].row.idx,
                                           status="running", started_at=time.time())
                        self.active[rpid].row.status = "running"
            if pid in queued:
                t.missing_polls = 0
            else:
                t.missing_polls += 1
                if t.missing_polls >= LOST_AFTER_POLLS:  # neither queued nor in history: ComfyUI restarted
                    if self.lost_is_fatal:
                        raise ComfyError(f"ComfyUI no longer knows {t.label} (it restarted)")
                    self.source.settled(t.row)
                    self.ledger.update(t.row.batch_id, t.row.idx, status="error", finished_at=time.time(),
                                       error={"lost": "ComfyUI no longer knows this prompt (was it restarted?)"})
                    self.progress.finish(t.label, "lost", "ComfyUI no longer knows it; `--resume` submits it again")
                    del self.active[pid]

    def finish(self, t: Track, entry: dict[str, Any] | None = None) -> None:
        """A prompt ended: read its history entry, fetch its outputs, record everything."""
        pid = t.row.prompt_id or ""
        if entry is None:
            entry = self.conn.call(lambda c: c.get_history(pid)).get(pid)
            if entry is None:  # the event came before history was written: the next poll finds it
                return
        status, error = outcome_of(entry, t.row.node_paths)
        row = self.ledger.prompt(t.row.batch_id, t.row.idx)
        timings = run_timings(entry, row, t.started_local)
        # One clock per pair: the server's when its history has both ends, else this machine's.
        srv_start, srv_end = timings["server_start"], timings["server_end"]
        if srv_start is not None and srv_end is not None:
            started, finished = srv_start, srv_end
        else:
            started, finished = (t.started_local or row.started_at or row.submitted_at), time.time()
        self.ledger.update(row.batch_id, row.idx, status=status, finished_at=finished, started_at=started,
                           **({"error": {**(row.error or {}), **error}} if error else {}))
        saved = self.fetch(self.ledger.prompt(row.batch_id, row.idx), entry, timings=timings)
        self.active.pop(pid, None)
        self.source.settled(row)
        unsaved = (self.ledger.prompt(row.batch_id, row.idx).error or {}).get("fetch")
        detail = f"{len(saved)} file(s)" if status == "success" else (error or {}).get("summary", "")
        if unsaved:
            detail = (f"{detail}; {len(unsaved)} file(s) not saved: {unsaved[0]}"
                      f"{' (and more)' if len(unsaved) > 1 else ''}")
        self.progress.finish(t.label, "failed" if unsaved and status == "success" else status, detail)
        trace = ((error or {}).get("execution_error") or {}).get("traceback")
        if self.debug and trace:
            self.progress.note("ComfyUI's traceback:\n" + "".join(str(line) for line in trace).rstrip())

    # -- fetching

    def fetch(self, row: PromptRow, entry: dict[str, Any], *,
              timings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Download every output not saved yet (one process at a time per prompt), then the sidecar. A file
        that cannot be had after a few tries, or saved, fails the prompt (``comfy.fetch`` tries again);
        the sidecar is written once every file is on disk."""
        from ..core.state import exclusive

        pid = row.prompt_id or ""
        with exclusive("comfy-fetch", pid, timeout=600, what=f"download the outputs of prompt {pid}"):
            done = self.ledger.saved_outputs(pid)
            saved = list(done.values())
            unsaved: list[str] = []
            for node, kind, item in output_items(entry.get("outputs") or {}, previews=self.previews):
                key = (node, kind, item["filename"], item.get("subfolder") or "", item.get("type") or "output")
                if key in done:
                    continue
                spec = row.prompt.get(node) or {}
                try:
                    dest = target_path(self.root, self.batch.template, job=row.job or Path(row.workflow).stem,
                                       batch=self.batch.id, index=row.idx, prompt_id=pid, node=node,
                                       title=(spec.get("_meta") or {}).get("title") or spec.get("class_type") or node,
                                       kind=kind, filename=item["filename"], subfolder=item.get("subfolder") or "",
                                       type=item.get("type") or "output", pod=row.target_name or self.target[1] or "")
                    path, size, digest = self._download(dest, item)
                except TimeoutError:  # --timeout: an OSError too, but it ends the run, not this file
                    raise
                except (BadDownload, ComfyHTTPError, UsageError, OSError) as e:
                    unsaved.append(f"{item['filename']}: {_why(e)}")
                    continue
                self.ledger.add_output(pid, node, kind, item, str(path), size, digest)
                saved.append({"node_id": node, "kind": kind, "filename": item["filename"],
                              "subfolder": item.get("subfolder") or "", "type": item.get("type") or "output",
                              "path": str(path), "bytes": size, "sha256": digest})
            self.ledger.finish_fetch(row, unsaved, lambda final: self._sidecar(
                final, saved, timings or run_timings(entry, final, None)))
        return saved

    def _download(self, dest: Path, item: dict[str, Any]) -> tuple[Path, int, str]:
        """One output to ``dest``: asked for again, with backoff, while the answer is not the file;
        ``--timeout`` ends it (TimeoutError), whatever the try."""
        delay = DOWNLOAD_BACKOFF_S
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                return save_stream(dest, lambda f: self.conn.call(
                    lambda c: _download_to(c, item, f, self.deadline)))
            except DownloadDeadline:
                raise TimeoutError from None
            except BadDownload as e:
                if attempt == DOWNLOAD_TRIES:
                    raise BadDownload(f"{e} (gave up after {DOWNLOAD_TRIES} tries)") from None
                if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                    raise TimeoutError from None
                self.progress.note(f"{item['filename']}: {e}; trying again in {delay:g}s")
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _pod_facts_of(self, row: PromptRow) -> dict[str, Any]:
        """The GPU and $/hr of the pod that ran ``row`` (a fleet's members differ), else the run's."""
        target = row.target_id or self.target[0]
        if target not in self._facts:
            self._facts[target] = _pod_facts(target)
        return self._facts[target] or self.pod_facts

    def _sidecar(self, row: PromptRow, saved: list[dict[str, Any]], timings: dict[str, Any]) -> None:
        facts = self._pod_facts_of(row)
        rate = facts.get("cost_per_hr")
        run_s = timings["run_s"]
        folder = Path(saved[0]["path"]).parent if saved else self.root / _safe_job(row)
        cost = (0.0 if timings["cached"] else round(rate * run_s / 3600, 6)) \
            if rate is not None and run_s is not None else (0.0 if timings["cached"] else None)
        doc = {
            "prompt_id": row.prompt_id, "batch": row.batch_id, "index": row.idx, "status": row.status,
            "workflow": row.workflow, "workflow_hash": row.workflow_hash, "prompt": row.prompt,
            "overrides": row.overrides, "seeds": row.seeds,
            "pod": {"id": row.target_id or self.target[0], "name": row.target_name or self.target[1], **facts},
            "timings": {"submitted_at": row.submitted_at, "started_at": row.started_at,
                        "finished_at": row.finished_at, "run_s": run_s, "queued_s": timings["queued_s"],
                        "cached": timings["cached"]},
            "outputs": [{k: o[k] for k in ("node_id", "kind", "filename", "subfolder", "type", "path", "bytes",
                                           "sha256") if k in o}
                        for o in saved],
            "cost_usd": cost,
            "error": row.error,
        }
        write_sidecar(folder / f"{_prefix(row)}.json", doc)

    # -- Ctrl-C

    def abandon(self, sig: Interrupted) -> AutopodError:
        """Interrupt this run's running prompt, drop its queued ones; never another user's prompts."""
        note = self.withdraw()
        return AutopodError(f"{sig.what}: {note}; finish the batch with "
                            f"`autopod comfy.run --resume {self.batch.id}`", exit_code=sig.exit_code,
                            data={"batch": self.batch.id})

    def withdraw(self) -> str:
        """Take this run's prompts off the server (interrupt the running one, delete the queued ones) and
        record them interrupted or cancelled; says what was done."""
        with signals.shielded():
            running: set[str] = set()
            pending: set[str] = set()
            try:
                # Pending ones first, so none of them starts when the running one stops; then look
                # again: one may have started in between, or a submit cut short may land just now.
                for n in range(4):
                    q = self.conn.client.get_queue_info()
                    now_pending = [i.prompt_id for i in q.pending if i.prompt_id in self.active]
                    now_running = [i.prompt_id for i in q.running if i.prompt_id in self.active]
                    self.conn.client.delete_queued(now_pending)
                    for pid in now_running:
                        self.conn.client.interrupt(pid)
                    pending.update(now_pending)
                    running.update(now_running)
                    if n and not now_pending and not now_running:
                        break
                    time.sleep(0.2)
                note = f"interrupted {len(running)} running prompt(s) and removed {len(pending)} queued one(s)"
            except ComfyError as e:
                note = (f"could not reach ComfyUI to stop this run's prompts ({e}); "
                        f"`autopod comfy.cancel --batch {self.batch.id}` does it later")
            now = time.time()
            for pid, t in self.active.items():
                status = "interrupted" if pid in running else "cancelled"
                self.ledger.update(t.row.batch_id, t.row.idx, status=status, finished_at=now)
            self.progress.close_bar()
        return note


def replan(ledger: Ledger, r: PromptRow) -> PromptRow:
    """The prompt as if never sent: to be submitted again, to any pod."""
    ledger.update(r.batch_id, r.idx, status="planned", prompt_id=None, error=None, submitted_at=None,
                  started_at=None, finished_at=None, fetched_at=None, target_id=None, target_name=None)
    return ledger.prompt(r.batch_id, r.idx)


class _ListSource:
    """The prompts of a run on one pod, in order."""

    def __init__(self, rows: list[PromptRow]):
        self.rows = rows

    def take(self) -> PromptRow | None:
        return self.rows.pop(0) if self.rows else None

    def more(self) -> bool:
        return bool(self.rows)

    def settled(self, row: PromptRow) -> None:
        pass

    def idle(self, seconds: float) -> None:
        pass


def _download_to(c: ComfyUIClient, item: dict[str, Any], f: Any, deadline: float | None) -> tuple[int, str]:
    f.seek(0)
    f.truncate()  # a retried download starts the file again
    return c.download(item, f, deadline=deadline)


def _why(e: Exception) -> str:
    if isinstance(e, OSError) and not isinstance(e, TimeoutError):
        return f"cannot save it here: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    return str(e)


def _safe_job(row: PromptRow) -> str:
    from .outputs import _safe

    return _safe(row.job or Path(row.workflow).stem)


def run_timings(entry: dict[str, Any], row: PromptRow, started_local: float | None) -> dict[str, Any]:
    """How long a prompt ran and waited, each from one clock. Run time is the server's own
    ``execution_start`` to its end event (this machine's clock can be off from the pod's, and mixing the
    two gave negative times); queue time is this machine's submit to this machine's sight of the start,
    or, when nobody watched it start, to the server's start if that reads as a time after the submit.
    A prompt whose every node came from ComfyUI's cache ran nothing: ``cached``."""
    srv_start = _ms(entry, "execution_start")
    srv_end = _ms(entry, "execution_success", "execution_error", "execution_interrupted")
    run_s = round(srv_end - srv_start, 3) if srv_start is not None and srv_end is not None \
        and srv_end >= srv_start else None
    queued_s = None
    if row.submitted_at is not None:
        start = started_local if started_local is not None else srv_start
        if start is not None and start >= row.submitted_at:
            queued_s = round(start - row.submitted_at, 3)
    cached_nodes: set[str] = set()
    for name, data in (entry.get("status") or {}).get("messages") or []:
        if name == "execution_cached" and isinstance(data, dict):
            cached_nodes.update(str(n) for n in data.get("nodes") or [])
    cached = bool(row.prompt) and set(map(str, row.prompt)) <= cached_nodes
    return {"server_start": srv_start, "server_end": srv_end, "run_s": run_s, "queued_s": queued_s,
            "cached": cached}


def _prefix(row: PromptRow) -> str:
    return f"{row.job or Path(row.workflow).stem}-{row.idx:04d}-{(row.prompt_id or 'unsent')[:8]}"


def _ms(entry: dict[str, Any], *events: str) -> float | None:
    """A history message's timestamp (ComfyUI: milliseconds since the epoch) as seconds."""
    for name, data in (entry.get("status") or {}).get("messages") or []:
        if name in events and isinstance(data, dict) and isinstance(data.get("timestamp"), (int, float)):
            return data["timestamp"] / 1000
    return None


def finished(entry: dict[str, Any]) -> bool:
    """ComfyUI writes a history entry when a prompt ends; its status says how."""
    st = entry.get("status")
    return st is None or st.get("status_str") in ("success", "error") or bool(st.get("completed"))


def outcome_of(entry: dict[str, Any], paths: dict[str, str] | None = None) -> tuple[str, dict[str, Any] | None]:
    """success | error | interrupted from a history entry: ComfyUI writes ``status_str: "error"`` for
    both failures and interrupts, so the last message tells them apart. ``paths`` says where a node
    inside a subgraph is (see :func:`node_name`)."""
    st = entry.get("status")
    if st is None or st.get("status_str") == "success":  # entries of older servers carry no status
        return "success", None
    for name, data in reversed(st.get("messages") or []):
        if name == "execution_interrupted":
            where = (paths or {}).get(str(data.get("node_id")))
            return "interrupted", {"summary": f"interrupted at node {data.get('node_id')}"
                                              + (f" (in {where})" if where else ""),
                                   "interrupted": data}
        if name == "execution_error":
            summary = (f"{node_name(data.get('node_id'), data.get('node_type'), None, paths)}: "
                       f"{data.get('exception_type')}: {str(data.get('exception_message') or '').strip()}")
            return "error", {"summary": summary, "execution_error": {
                k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message",
                                         "traceback", "executed")}}
    return "error", {"summary": "ComfyUI reported an error without details"}


def node_name(node_id: Any, class_type: Any, title: str | None, paths: dict[str, str] | None = None) -> str:
    """``node 10:5 (KSampler, 'Sampler' in subgraph 'Upscale')``: the id, class and title, and for a node
    inside a subgraph where it is in the editor (``paths``, from the conversion)."""
    where = (paths or {}).get(str(node_id))
    return (f"node {node_id} ({class_type}{', ' + repr(title) if title and title != class_type else ''}"
            f"{' in ' + where if where else ''})")


def node_error_lines(node_errors: dict[str, Any], prompt: dict[str, Any],
                     paths: dict[str, str] | None = None) -> list[str]:
    """One line per problem: node id, class, title (and subgraph), input and ComfyUI's message."""
    lines = []
    for node_id, ne in (node_errors or {}).items():
        spec = prompt.get(str(node_id)) or {}
        title = (spec.get("_meta") or {}).get("title")
        cls = ne.get("class_type") or spec.get("class_type") or "?"
        where = node_name(node_id, cls, title, paths)
        for e in ne.get("errors") or []:
            inp = (e.get("extra_info") or {}).get("input_name")
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"{where}{' input ' + inp if inp else ''}: {e.get('message', e.get('type', 'error'))}"
                         f"{detail}")
    return lines


# -- the task's entry points ---------------------------------------------------------------------------------


def render(opts: RunOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """``comfy.run`` on one pod: plan, record, upload, submit, follow, fetch. Returns the run's report
    (``exit_code`` 0 when every output is saved, 1 when any prompt failed)."""
    progress = progress or Progress()
    if opts.max_queued < 1:
        raise UsageError(f"--max-queued must be at least 1, got {opts.max_queued}")
    pod = opts.pod
    if pod is None and opts.job and not opts.no_tunnel:
        from .jobfile import load_job

        pod = load_job(opts.job).pod  # the job's pod (an inventory pod name), unless --pod says otherwise
    conn = Connection(pod, opts.no_tunnel, progress.note)
    # --timeout bounds the whole run: planning, uploads, following and downloads.
    conn.deadline = time.monotonic() + opts.timeout if opts.timeout else None
    try:
        if opts.resume:
            return _resume(opts, conn, progress)
        try:
            (planned, template), object_info = plan_on(conn, opts, note=progress.note)
        except TimeoutError:
            raise ComfyError(f"stopped after --timeout {opts.timeout:g}s: ComfyUI did not give its node "
                             f"definitions in time; nothing was sent") from None
        if opts.dry_run:
            return dry_run_report(planned)
        with Ledger.open() as ledger, contextlib.ExitStack() as held:
            batch = ledger.new_batch(
                batch_name(planned), target_id=conn.endpoint.target_id,
                target_name=conn.endpoint.target_name, output_dir=str(Path(opts.output_dir).resolve()),
                template=template, options={"previews": opts.previews, "max_queued": opts.max_queued},
                prompts=[p.as_ledger() for p in planned],
                claim=lambda bid: held.enter_context(hold(bid, "comfy.run" + " --detach" * opts.detach)))
            where = conn.endpoint.target_name or conn.endpoint.url
            progress.note(f"batch {batch.id}: {len(planned)} prompt(s) on {where}")
            try:
                _upload_all(planned, conn, ledger, object_info, progress)
            except TimeoutError:
                raise ComfyError(f"stopped after --timeout {opts.timeout:g}s while uploading inputs; nothing "
                                 f"was submitted: `autopod comfy.run --resume {batch.id}` goes on") from None
            for i, p in enumerate(planned):  # the prompts as they will be sent, uploads wired in
                ledger.update(batch.id, i, prompt=p.prompt)
            return _execute(opts, ledger, batch, conn, progress, ledger.prompts(batch.id))
    finally:
        conn.close()


def plan_on(conn: Connection, opts: RunOptions, *, note: Callable[[str], None] | None = None,
            pods: list[str | None] | None = None) -> tuple[tuple[list[Planned], str], dict[str, Any]]:
    """:func:`plan` against the pod's node definitions, kept between runs and checked against the
    server before the plan is used (``nodedefs``); also the definitions it used. ``note`` gets the
    conversion notes of the plan that counts (a plan on a stale kept copy is made again). First the
    models the run names are checked, and with ``--pull-missing`` pulled into ``pods`` (``check_models``):
    a pull changes the loaders' lists, which the check of the kept copy then sees."""
    from .nodedefs import plan_checked

    fresh, kept = (None, None) if opts.resume else \
        check_models(opts, conn, [conn.endpoint.target_id] if pods is None else pods)

    notes: list[str] = []

    def attempt(object_info: dict[str, Any]) -> tuple[list[Planned], str]:
        notes.clear()
        return plan(opts, object_info, note=notes.append)

    def read_later(result: tuple[list[Planned], str]) -> list[str]:
        # _upload_all reads LoadImage's list (the pod's input files) to skip files already there.
        return ["LoadImage"] if any(p.uploads for p in result[0]) else []

    try:
        return plan_checked(conn, attempt, also=read_later, fresh=fresh, kept=kept)
    finally:
        for line in notes if note else ():
            note(line)


def check_models(opts: RunOptions, conn: Connection,
                 pods: list[str | None]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The models the run names, checked against the pod's lists before anything is sent; with
    ``--pull-missing`` the missing ones are pulled into ``pods`` (once per volume). Returns (fresh, kept):
    the node definitions when it had to fetch them (none were kept) and pulled nothing, for the plan to use
    as they are; else None, and the plan checks the kept ones (a pull changes the loaders' lists), which
    are ``kept`` when they were read here (one read of the file per run). See ``needs``."""
    from . import needs
    from .nodedefs import cache_key, load, store

    from .batch import parse_sweep
    from .overrides import parse_input, parse_set

    workflows, job_models, job = [Path(w) for w in opts.workflows], [], None
    sets, sweeps, inputs = list(opts.sets), list(opts.sweeps), list(opts.inputs)
    if opts.job:
        from .jobfile import load_job

        j = load_job(opts.job)
        workflows, job_models, job = [j.workflow] + workflows, j.models, Path(opts.job).stem
        sets, sweeps, inputs = j.sets + sets, j.sweeps + sweeps, j.inputs + inputs
    # Bad input is exit 2 before a missing model is exit 1: the flags' own values (and @files) first.
    for spec in sets:
        parse_set(spec)
    for spec in sweeps:
        parse_sweep(spec)
    for spec in inputs:
        parse_input(spec)
    # Which inputs name models is in the loaders' definitions: the kept ones do (the lists themselves are
    # read from the pod's /models below), else the server's, kept for the plan that follows.
    key = cache_key(conn)
    object_info, fetched = load(key, note=conn.note), None
    if object_info is None:
        object_info = fetched = conn.call(lambda c: c.get_object_info())
        store(key, object_info, note=conn.note)
    kept = object_info if fetched is None else None
    found = needs.collect(workflows, job_models, object_info, job)
    if not found:
        return fetched, kept
    targets = [p for p in pods if p]

    def pull(refs: list[Any]) -> None:
        from ..models.ops import pull_many

        pull_many(targets, refs)

    pulled = needs.settle(found, lambda folder: conn.call(lambda c: c.list_models(folder)),
                          pull_missing=opts.pull_missing, pod_name=conn.endpoint.target_name,
                          pull=pull if targets else None, dry_run=opts.dry_run)
    return (None, kept) if pulled else (fetched, kept)


def dry_run_report(planned: list[Planned]) -> dict[str, Any]:
    """``--dry-run``: the prompts exactly as they would be sent (an input file's own name stands in)."""
    wire_uploads(planned, upload=None)
    prompts = [p.prompt for p in planned]
    return {"dry_run": True, "changed": False, "prompt": prompts[0] if len(prompts) == 1 else None,
            "prompts": prompts, "exit_code": 0}


def batch_name(planned: list[Planned]) -> str:
    """The batch's name in the ledger: its job, or "batch" when it mixes several."""
    return planned[0].job if len({p.job for p in planned}) == 1 else "batch"


def _upload_all(planned: list[Planned], conn: Connection, ledger: Ledger, object_info: dict[str, Any],
                progress: Progress) -> None:
    """Upload each ``--input`` file once per pod; a file whose bytes ComfyUI already has is not sent again."""
    known = set()
    for decl in ((object_info.get("LoadImage") or {}).get("input") or {}).get("required", {}).values():
        if isinstance(decl, list) and decl and isinstance(decl[0], list):
            known.update(str(x) for x in decl[0])

    def upload(path: Path, digest: str) -> tuple[str, str]:
        prior = ledger.upload_for(digest, conn.target_id)
        if prior is not None:
            shown = f"{prior['subfolder']}/{prior['name']}" if prior["subfolder"] else prior["name"]
            if shown in known:  # the pod's input folder still has it (a recreated pod would not)
                progress.note(f"{path.name}: unchanged, already on the pod as {shown}")
                return prior["name"], prior["subfolder"]
        progress.note(f"uploading {path}")
        answer = conn.call(lambda c: c.upload_image(path))
        ledger.add_upload(digest, conn.target_id, answer)
        return answer["name"], answer.get("subfolder") or ""

    wire_uploads(planned, upload=upload)


def _pod_facts(target_id: str | None) -> dict[str, Any]:
    """The pod's GPU and $/hr from autopod's records (no API call): for the sidecar's cost."""
    if not target_id:
        return {}
    from ..runpod.registry import entries_or_warn

    e = entries_or_warn().get(target_id) or {}
    return {k: e[k] for k in ("gpu", "cost_per_hr") if e.get(k) is not None}


def _execute(opts: RunOptions, ledger: Ledger, batch: BatchRow, conn: Connection, progress: Progress,
             rows: list[PromptRow]) -> dict[str, Any]:
    runner = Runner(ledger, batch, conn, progress=progress, previews=bool(batch.options.get("previews")),
                    max_queued=opts.max_queued, pod_facts=_pod_facts(batch.target_id), debug=opts.debug)
    todo = [r for r in rows if r.status == "planned"]
    if opts.detach:
        for r in todo:
            runner.submit(r)
        return _report(ledger, batch, detached=True)
    try:
        with signals.handling():
            runner.follow(todo, deadline=conn.deadline)
    except KeyboardInterrupt as e:
        raise runner.abandon(e if isinstance(e, Interrupted) else Interrupted()) from None
    except TimeoutError:
        return _timed_out(ledger, batch, opts.timeout)
    return _report(ledger, batch)


def _timed_out(ledger: Ledger, batch: BatchRow, timeout: float | None) -> dict[str, Any]:
    report = _report(ledger, batch)
    report.update(exit_code=int(ExitCode.FAILED), timed_out=True,
                  msg=f"{report['msg']}; stopped waiting after {timeout or 0:g}s: the prompts go on, "
                      f"`autopod comfy.watch {batch.id}` follows them")
    return report


def _resume(opts: RunOptions, conn: Connection, progress: Progress) -> dict[str, Any]:
    """Finish an interrupted batch: what finished is fetched (not rendered again), what is still on
    the server is followed, what never finished (never ran, or was interrupted, cancelled or lost) is
    submitted. A prompt that failed or was rejected is not: it would fail again. The batch is held
    first, and read after: what another process did with it until then counts."""
    with Ledger.open() as ledger, contextlib.ExitStack() as held:
        batch, _ = ledger.find(opts.resume)  # type: ignore[arg-type]
        held.enter_context(hold(batch.id, "comfy.run --resume"))
        batch, rows = ledger.find(opts.resume)  # type: ignore[arg-type]
        if batch.target_id and conn.endpoint.target_id and batch.target_id != conn.endpoint.target_id:
            progress.note(f"batch {batch.id} ran on {batch.target_name}; resuming on {conn.endpoint.target_name}")
        check_destination(Path(batch.output_dir), batch.template, [])  # the folder may have gone since
        runner = Runner(ledger, batch, conn, progress=progress, previews=bool(batch.options.get("previews")),
                        max_queued=opts.max_queued, pod_facts=_pod_facts(batch.target_id), debug=opts.debug)
        runner.deadline = conn.deadline
        saved_before = sum(len(ledger.saved_outputs(r.prompt_id)) for r in rows if r.prompt_id)
        try:
            resubmit = runner.reclaim([r for r in rows if not (r.status == "success" and r.fetched_at)
                                       and r.status != "rejected"], _server_queue(conn))
        except TimeoutError:
            return _timed_out(ledger, batch, opts.timeout)
        follow = list(runner.active)
        if not follow and not resubmit:
            report = _report(ledger, batch)
            saved_after = sum(len(ledger.saved_outputs(r.prompt_id)) for r in ledger.prompts(batch.id) if r.prompt_id)
            if saved_after == saved_before:
                report.update(changed=False, msg=f"nothing left to do: {report['msg']}")
            return report
        progress.note(f"batch {batch.id}: following {len(follow)} prompt(s) still on the server, "
                      f"submitting {len(resubmit)} that never finished")
        try:
            with signals.handling():
                runner.follow(resubmit, deadline=conn.deadline)
        except KeyboardInterrupt as e:
            raise runner.abandon(e if isinstance(e, Interrupted) else Interrupted()) from None
        except TimeoutError:
            return _timed_out(ledger, batch, opts.timeout)
        return _report(ledger, batch)


def _server_queue(conn: Connection) -> set[str]:
    q = conn.call(lambda c: c.get_queue_info())
    return {i.prompt_id for i in q.running + q.pending}


def _report(ledger: Ledger, batch: BatchRow, *, detached: bool = False) -> dict[str, Any]:
    rows = ledger.prompts(batch.id)
    prompts = []
    for r in rows:
        outs = ledger.saved_outputs(r.prompt_id).values() if r.prompt_id else []
        prompts.append({"index": r.idx, "prompt_id": r.prompt_id, "status": r.status, "pod": r.target_name,
                        "workflow": r.workflow,
                        "overrides": r.overrides, "seeds": r.seeds,
                        "outputs": sorted(o["path"] for o in outs),
                        "error": (r.error or {}).get("summary") or "; ".join((r.error or {}).get("lines") or [])
                        or ((r.error or {}).get("node_errors") and "some outputs were rejected")
                        or ((r.error or {}).get("fetch") and "not saved: " + "; ".join(r.error["fetch"]))
                        or None})
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    partial = any((r.error or {}).get("node_errors") for r in rows if r.status == "success")
    unsaved = sum(1 for r in rows if r.status == "success" and (r.error or {}).get("fetch"))
    failed = sum(v for k, v in counts.items() if k in FINAL and k != "success") + (1 if partial else 0) + unsaved
    if detached:
        msg = (f"submitted {counts.get('queued', 0)} prompt(s) of batch {batch.id}; "
               f"follow with `autopod comfy.watch {batch.id}`")
        code = ExitCode.FAILED if counts.get("rejected") else ExitCode.OK
    else:
        files = sum(len(p["outputs"]) for p in prompts)
        msg = (f"batch {batch.id}: {counts.get('success', 0)} of {len(rows)} prompt(s) succeeded, {files} file(s) in "
               f"{batch.output_dir}" + (f"; {failed} failed" if failed else "")
               + (f"; the outputs of {unsaved} could not be saved (`autopod comfy.fetch {batch.id}` tries again)"
                  if unsaved else ""))
        code = ExitCode.FAILED if failed or any(p["status"] not in FINAL for p in prompts) else ExitCode.OK
    return {"changed": True, "batch": batch.id, "client_id": batch.client_id, "output_dir": batch.output_dir,
            "counts": counts, "prompts": prompts, "msg": msg, "exit_code": int(code),
            "prompt_ids": [p["prompt_id"] for p in prompts if p["prompt_id"]]}

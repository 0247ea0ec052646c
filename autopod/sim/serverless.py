"""RunPod Serverless in the stand-in: endpoints, their workers and jobs, run like worker-comfyui 5.8.5.

The RunPod stand-in serves it from the same world and server as pods and volumes:

- management on REST v2 (``/v2/serverless``, ``/v2/serverless/{id}``, ``/v2/serverless/{id}/workers``), with
  closed bodies (an unknown key is 422, a broken rule 400, as the pod routes answer) and RunPod's defaults;
- the job API under ``/v2/{endpoint_id}/``: ``run``, ``runsync``, ``status/{id}``, ``stream/{id}``,
  ``cancel/{id}``, ``retry/{id}``, ``purge-queue``, ``health``. Clients reach it with
  ``RUNPOD_ENDPOINT_BASE_URL=<stand-in>/v2``, the variable RunPod's SDK reads.

A worker is a thread with its own ComfyUI (the simulator's engine, not listening on a port) and runs one job at
a time the way worker-comfyui's handler does: input checks, images uploaded with ``overwrite``, the workflow
queued, its events followed, every ``images`` entry of the history returned as base64 except ``temp`` ones,
failures in the handler's error strings; RunPod's SDK then turns a returned ``error`` into a ``FAILED`` job
whose other keys (``details``) stay in ``output``. The endpoint's network volume is the same folder pods
mount; a worker's ComfyUI reads only worker-comfyui's ``extra_model_paths`` folders under ``models/`` on it.

Scaling: an endpoint starts a worker for each job waiting or running (REQUEST_COUNT: one per ``requestCount``
of them; QUEUE_DELAY's delay is not modelled, workers start at once), up to ``workers.max``, and at least
``workers.min`` always run; ``policy.lowPriority`` jobs start no worker; a new worker initializes for ``sls_cold_start_s`` (``sls_flashboot_start_s`` with FlashBoot once the
endpoint has had a worker), takes queued jobs in order, and stops after ``idleTimeout`` idle. A job's
``policy.executionTimeout`` (else the endpoint's ``timeout``) ends it ``TIMED_OUT``; its ``policy.ttl`` ends a
queued job ``TIMED_OUT`` and deletes a running one. Results are kept ``sls_retention_s`` (``/run``) or
``sls_runsync_retention_s`` (``/runsync``) after the job ends, then ``/status`` answers 404.
``sls_time_scale`` multiplies RunPod's own durations (idleTimeout, timeout, executionTimeout, ttl), so tests
can use valid values and still be quick.

Choices where the reference leaves a gap (RunPod does not document them): a ``/run`` body over the limit is
413 with a JSON ``error``; job-API errors are ``{"error": text}``; a ``FAILED`` job keeps worker-comfyui's
``details`` in ``output``; ``/cancel`` of a running job answers ``CANCELLED`` at once but the worker keeps
running the ComfyUI prompt until it ends (worker-comfyui's handler is synchronous and never interrupts
ComfyUI), so the worker stays busy; purged jobs are gone (404); a worker that dies mid-job puts its job back
in the queue (``retried`` in ``/health``); ``/health`` also counts initializing, throttled and unhealthy
workers.

Test hooks (``/_sim/serverless``, the stand-in's key): ``GET`` shows settings, faults and how often the clock ran,
``POST`` changes them (``{"settings": {...}, "faults": {...}}``), ``GET /_sim/serverless/jobs`` is the log of
every job ever accepted (id, endpoint, sha256 of its input, times, each attempt with its worker, when it ended
and when the worker was free again, final status, why it was removed).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

from ..models.folders import canonical
from .comfyui.models import ModelFolders
from .runpod_facts import pool_of
from .runpod_rest import Problem

log = logging.getLogger(__name__)

WORKER_COMFYUI_VERSION = "5.8.5"
DEFAULT_IMAGE = f"runpod/worker-comfyui:{WORKER_COMFYUI_VERSION}-base"
# worker-comfyui's extra_model_paths.yaml: the only folders it reads under /runpod-volume/models/
VOLUME_FOLDERS = ("checkpoints", "clip", "clip_vision", "configs", "controlnet", "embeddings", "loras",
                  "upscale_models", "vae", "unet")
JOB_OPS = frozenset({"run", "runsync", "status", "stream", "cancel", "retry", "purge-queue", "health"})
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
TICK_S = 0.02  # how often the platform's clock runs: cold starts, idle timeouts, deadlines, retention

SETTINGS: dict[str, Any] = {
    "sls_cold_start_s": 2.0,          # a new worker initializes this long (0: cold starts off)
    "sls_flashboot_start_s": 0.5,     # ... with FlashBoot, once the endpoint has had a worker
    "sls_retention_s": 1800.0,        # a /run result is kept this long after the job ends
    "sls_runsync_retention_s": 60.0,  # ... a /runsync one
    "sls_time_scale": 1.0,            # RunPod's durations (idleTimeout, timeout, executionTimeout, ttl) times this
    "sls_run_limit_bytes": 10 * 1024 * 1024,
    "sls_runsync_limit_bytes": 20 * 1024 * 1024,
    "sls_stream_hold_s": 10.0,        # an empty /stream holds this long unless ?wait= says otherwise
}

ENDPOINT_KEYS = {"name", "type", "scaling", "image", "templateId", "gpu", "cpu", "workers", "timeout", "flashboot",
                 "networkVolumes", "dataCenterIds", "args", "disk", "env", "ports", "registry"}
PATCH_KEYS = ENDPOINT_KEYS - {"type"}
GPU_KEYS = {"pools", "excludedTypes", "count", "allowedCudaVersions", "minCudaVersion"}
WORKER_KEYS = {"min", "max", "idleTimeout"}
SCALING_KEYS = {"type", "queueDelay", "requestCount"}
FLASHBOOT = ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT")
RELEASE_KEYS = ("image", "args", "env", "disk", "ports", "registry")  # a change rolls out a new version
MS_DAY = 86_400_000
WORKER_STATES = ("RUNNING", "IDLE", "INITIALIZING", "THROTTLED", "UNHEALTHY")
FAULT_KEYS = {"http", "lost_answer", "worker_dies", "no_output", "workers"}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- the runtime ---------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    endpoint_id: str
    input: Any
    sync: bool
    submitted: float
    execution_timeout_ms: int | None
    ttl_ms: int | None
    low_priority: bool
    entry: dict  # its line in the job log
    status: str = "IN_QUEUE"
    started: float | None = None
    ended: float | None = None
    worker_id: str | None = None
    result: dict | None = None  # {"output": ...} and/or {"error": ...}
    attempt: int = 0
    die_at: float | None = None
    die_then: str = "requeue"

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            d["delayTime"] = int((self.started - self.submitted) * 1000)
        if self.started is not None and self.ended is not None:
            d["executionTime"] = int((self.ended - self.started) * 1000)
        if self.result:
            d.update(copy.deepcopy(self.result))
        if self.worker_id:
            d["workerId"] = self.worker_id
        return d


@dataclass
class Worker:
    id: str
    endpoint_id: str
    version: int
    gpu_type: str | None
    dc: str | None
    created: float
    ready_at: float
    status: str = "INITIALIZING"
    idle_since: float | None = None
    job: Job | None = None
    attempt: int = 0
    stopping: bool = False
    abort: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    comfy: Any = None


class WorkerModels(ModelFolders):
    """A worker's model folders: the image's own (``/comfyui/models``) and, as worker-comfyui's
    ``extra_model_paths.yaml`` adds them, ``models/<folder>`` on the network volume for its ten folders only
    (``clip`` serves text encoders, ``unet`` diffusion models; ``text_encoders`` on the volume is not read)."""

    def __init__(self, models_dir: Path, base_dir: Path, volume: Path | None):
        super().__init__(models_dir, base_dir)
        self.volume = volume

    def paths(self) -> dict[str, list[str]]:
        out = super().paths()
        if self.volume is not None:
            for folder in VOLUME_FOLDERS:
                out.setdefault(canonical(folder), []).append(str(self.volume / "models" / folder))
        return out


class Serverless:
    """The account's endpoints (their settings live in the world, ``world.data["endpoints"]``), their workers
    and jobs. Every method runs with the world's lock held or takes it; workers run jobs without it."""

    def __init__(self, world: Any, *, root: "str | os.PathLike[str] | None" = None,
                 volume_dir: Callable[[str], Path | None] | None = None, base_url: Callable[[], str] = lambda: ""):
        self.world = world
        self.cv = threading.Condition(world.lock)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="sls-")) if root is None else Path(root) / "serverless"
        if volume_dir is None and root is not None:  # the layout the simulator's pods use (sim.backend)
            volume_dir = lambda vid: _made(Path(root) / "volumes" / vid)  # noqa: E731
        self._volume_dir = volume_dir
        self._base_url = base_url
        self.jobs: dict[str, Job] = {}  # retained jobs, every endpoint
        self.queues: dict[str, list[Job]] = {}
        self.workers: dict[str, dict[str, Worker]] = {}
        self.retried: dict[str, int] = {}
        self.had_worker: set[str] = set()
        self.log: list[dict] = []
        self.faults: dict[str, Any] = {}
        self.ticks = 0  # how often the clock ran: tests wait for ticks, not for time, to see nothing happen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        world.data.setdefault("endpoints", {})

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, dict[str, Any]]:
        return self.world.data.setdefault("endpoints", {})

    def setting(self, key: str) -> Any:
        return self.world.settings.get(key, SETTINGS[key])

    def start(self) -> "Serverless":
        self._stop.clear()
        self._thread = threading.Thread(target=self._clock, name="serverless-clock", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self.cv:
            workers = [w for ws in self.workers.values() for w in ws.values()]
            for w in workers:
                self._retire(w)
            self.cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for w in workers:
            if w.thread is not None:
                w.thread.join(timeout=10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _clock(self) -> None:
        while not self._stop.is_set():
            with self.cv:
                try:
                    self.tick()
                except Exception:  # one bad endpoint must not stop the platform for the others
                    log.exception("the serverless clock failed")
                self.cv.wait(TICK_S if self.endpoints else 1.0)  # a create or a submit wakes it at once

    # -- the platform's clock -------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        now = time.time()
        scale = float(self.setting("sls_time_scale"))
        for job in list(self.jobs.values()):
            if job.status in TERMINAL:
                keep = self.setting("sls_runsync_retention_s" if job.sync else "sls_retention_s")
                if job.ended is not None and now >= job.ended + float(keep):
                    self._remove(job, "retention")
                continue
            if job.ttl_ms is not None and now >= job.submitted + job.ttl_ms / 1000 * scale:
                if job.status == "IN_QUEUE":
                    self._end(job, "TIMED_OUT", now)
                else:
                    self._abort_worker_of(job)
                    self._end(job, "TIMED_OUT", now)
                    self._remove(job, "ttl")
                continue
            if job.status == "IN_PROGRESS":
                if job.die_at is not None and now >= job.die_at:
                    self._worker_died(job, now)
                    continue
                limit = job.execution_timeout_ms
                if limit is None:
                    limit = int((self.endpoints.get(job.endpoint_id) or {}).get("timeout") or 600_000)
                if job.started is not None and now >= job.started + limit / 1000 * scale:
                    self._abort_worker_of(job)
                    self._end(job, "TIMED_OUT", now)
        for eid in list(self.endpoints):
            self._scale(eid, now)
            self._dispatch(eid, now)
        self.cv.notify_all()

    def _scale(self, eid: str, now: float) -> None:
        ep = self.endpoints[eid]
        workers = self.workers.setdefault(eid, {})
        lo, hi = int(ep["workers"]["min"]), int(ep["workers"]["max"])
        idle_s = float(ep["workers"].get("idleTimeout") or 5) * float(self.setting("sls_time_scale"))
        version = int(ep.get("_version") or 1)
        for w in list(workers.values()):
            if w.status == "INITIALIZING" and now >= w.ready_at and w.comfy is not None:
                w.status, w.idle_since = "IDLE", now
        live = [w for w in workers.values() if not w.stopping]
        fault = (self.faults.get("workers") or {}).get(eid)
        for w in live:  # a new release rolls out as workers cycle: a stale worker retires once idle
            if w.status == "IDLE" and w.version != version:
                self._retire(w)
            elif w.thread is None and w.status != fault and self._placement(ep)[0] is not None:
                self._retire(w)  # capacity is back, or the crash loop is over: a fresh worker replaces it
        live = [w for w in live if not w.stopping]
        idle = sorted((w for w in live if w.status == "IDLE"), key=lambda w: w.idle_since or 0)
        while len(live) > hi and idle:
            w = idle.pop(0)
            self._retire(w)
            live.remove(w)
        for w in idle:
            if len(live) > lo and now >= (w.idle_since or now) + idle_s:
                self._retire(w)
                live.remove(w)
        queue = self.queues.get(eid) or []
        demand = sum(1 for j in queue if not j.low_priority) + sum(1 for w in live if w.job is not None)
        if ep["scaling"].get("type") == "REQUEST_COUNT":  # workers = ceil((queued + in progress) / value)
            per = int(ep["scaling"].get("requestCount") or 1)
            demand = -(-demand // per)
        want = min(hi, max(lo, demand))
        while len(live) < want:
            live.append(self._start_worker(eid, ep, now))

    def _dispatch(self, eid: str, now: float) -> None:
        queue = self.queues.get(eid) or []
        idle = sorted((w for w in self.workers.get(eid, {}).values() if w.status == "IDLE" and not w.stopping),
                      key=lambda w: w.idle_since or 0)
        while queue and idle:
            job, w = queue.pop(0), idle.pop(0)
            job.status, job.started, job.worker_id = "IN_PROGRESS", now, w.id
            job.attempt += 1
            w.job, w.attempt, w.status, w.idle_since = job, job.attempt, "RUNNING", None
            dies = self._take_fault("worker_dies", eid)
            if dies is not None:
                job.die_at = now + float(dies.get("after_s") or 0)
                job.die_then = dies.get("then") or "requeue"
            job.entry["attempts"].append({"worker_id": w.id, "started_at": _iso(now), "ended_at": None,
                                          "outcome": None})
            job.entry.update(status="IN_PROGRESS", started_at=_iso(now), worker_id=w.id)

    # -- workers --------------------------------------------------------------------------------------

    def _start_worker(self, eid: str, ep: dict[str, Any], now: float) -> Worker:
        fault = (self.faults.get("workers") or {}).get(eid)
        gpu, dc = self._placement(ep)
        flash = ep.get("flashboot", "OFF") != "OFF" and eid in self.had_worker
        cold = float(self.setting("sls_flashboot_start_s" if flash else "sls_cold_start_s"))
        w = Worker(id=self.world.new_id("worker", 14), endpoint_id=eid, version=int(ep.get("_version") or 1),
                   gpu_type=gpu, dc=dc, created=now, ready_at=now + cold)
        self.workers.setdefault(eid, {})[w.id] = w
        self.had_worker.add(eid)
        if gpu is None or fault in ("THROTTLED", "UNHEALTHY"):
            w.status = fault or "THROTTLED"  # no capacity in the pools, or a crash loop: it never takes a job
            return w
        w.thread = threading.Thread(target=self._worker_main, args=(w, self._volume(ep)),
                                    name=f"serverless-worker-{w.id}", daemon=True)
        w.thread.start()
        return w

    def _placement(self, ep: dict[str, Any]) -> tuple[str | None, str | None]:
        gpu = ep.get("gpu") or {}
        excluded = set(gpu.get("excludedTypes") or [])
        types = [gid for pool in gpu.get("pools") or [] for gid, g in self.world.gpu_types.items()
                 if pool_of(gid, g) == pool and gid not in excluded]
        vol = next(iter(ep.get("networkVolumes") or []), None)
        dc = (self.world.network_volumes.get(vol) or {}).get("dataCenterId") if vol else None
        dc = dc or next(iter(ep.get("dataCenterIds") or []), None) or next(
            (d for d, v in self.world.data_centers.items() if v.get("secureCloud")), None)
        return (types[0] if types else None), dc

    def _volume(self, ep: dict[str, Any]) -> Path | None:
        vol = next(iter(ep.get("networkVolumes") or []), None)
        if not vol or self._volume_dir is None:
            return None
        return self._volume_dir(vol)

    def _retire(self, w: Worker) -> None:
        """Stop a worker: gone from the list at once; its thread ends its ComfyUI."""
        w.stopping = True
        w.abort.set()
        self.workers.get(w.endpoint_id, {}).pop(w.id, None)
        self.cv.notify_all()

    def _worker_main(self, w: Worker, volume: Path | None) -> None:
        home = self.root / w.endpoint_id / w.id
        comfy = None
        try:
            comfy = _boot_comfy(home, volume)
            with self.cv:
                w.comfy = comfy
                self.cv.notify_all()
                while True:
                    self.cv.wait_for(lambda: w.stopping or w.job is not None)
                    if w.stopping:
                        return
                    job, attempt, job_input = w.job, w.attempt, copy.deepcopy(w.job.input)  # type: ignore[union-attr]
                    self.cv.release()
                    try:
                        result = run_handler(comfy, job.id, job_input, w.abort)  # type: ignore[union-attr]
                    finally:
                        self.cv.acquire()
                    self._finished(w, job, attempt, result)  # type: ignore[arg-type]
        except Exception:
            log.exception("serverless worker %s failed", w.id)
            with self.cv:
                w.status = "UNHEALTHY"
        finally:
            if comfy is not None:
                comfy.stop()
            shutil.rmtree(home, ignore_errors=True)

    def _finished(self, w: Worker, job: Job, attempt: int, result: dict) -> None:
        now = time.time()
        records = job.entry["attempts"]
        record = records[attempt - 1] if 0 < attempt <= len(records) else None
        if record is not None and record["worker_id"] == w.id:
            # when the handler really returned: after a cancel or a timeout the worker was busy until then
            record["worker_free_at"] = _iso(now)
        if job.status == "IN_PROGRESS" and job.worker_id == w.id and job.attempt == attempt and not w.stopping:
            if self._take_fault("no_output", job.endpoint_id) is not None:
                result = {}  # the worker failed to post its result: COMPLETED, nothing in it
            self._settle(job, result, now)
        elif record is not None and record["ended_at"] is None:
            record.update(ended_at=_iso(now), outcome=f"result dropped ({job.status})")
        w.job = None
        if not w.stopping:
            w.status, w.idle_since = "IDLE", now
        self.cv.notify_all()

    def _settle(self, job: Job, result: dict, now: float) -> None:
        """What RunPod's SDK makes of a handler's answer: ``error`` fails the job, the rest is the output."""
        result = dict(result)
        if "error" in result and isinstance(result["error"], str):
            error = result.pop("error")
            job.result = {"error": error, **({"output": result} if result else {})}
            self._end(job, "FAILED", now)
        else:
            result.pop("error", None)
            job.result = {"output": result} if result else {}
            self._end(job, "COMPLETED", now)

    def _end(self, job: Job, status: str, now: float) -> None:
        job.status, job.ended = status, now
        queue = self.queues.get(job.endpoint_id) or []
        if job in queue:
            queue.remove(job)
        entry = job.entry
        entry.update(status=status, ended_at=_iso(now))
        if entry["attempts"] and entry["attempts"][-1]["ended_at"] is None:
            entry["attempts"][-1].update(ended_at=_iso(now), outcome=status)
        self.cv.notify_all()

    def _remove(self, job: Job, why: str) -> None:
        self.jobs.pop(job.id, None)
        queue = self.queues.get(job.endpoint_id) or []
        if job in queue:
            queue.remove(job)
        job.entry["removed"] = why
        self.cv.notify_all()

    def _abort_worker_of(self, job: Job) -> None:
        w = self.workers.get(job.endpoint_id, {}).get(job.worker_id or "")
        if w is not None and w.comfy is not None and w.job is job:
            w.comfy.engine.interrupt()

    def _worker_died(self, job: Job, now: float) -> None:
        w = self.workers.get(job.endpoint_id, {}).get(job.worker_id or "")
        if w is not None:
            if w.comfy is not None:
                w.comfy.engine.interrupt()
            self._retire(w)
        attempt = job.entry["attempts"][-1]
        attempt.update(ended_at=_iso(now), outcome="worker died")
        job.die_at = None
        if job.die_then == "requeue":
            job.status, job.started, job.worker_id = "IN_QUEUE", None, None
            job.entry.update(status="IN_QUEUE", worker_id=None)
            self.queues.setdefault(job.endpoint_id, []).insert(0, job)
            self.retried[job.endpoint_id] = self.retried.get(job.endpoint_id, 0) + 1
        else:
            self._end(job, "TIMED_OUT", now)

    # -- faults ---------------------------------------------------------------------------------------

    def _take_fault(self, kind: str, eid: str) -> dict | None:
        f = self.faults.get(kind)
        if not f or f.get("endpoint") not in (None, eid) or int(f.get("times") or 0) <= 0:
            return None
        f["times"] = int(f["times"]) - 1
        return dict(f)

    def _http_fault(self, op: str, eid: str) -> dict | None:
        for f in self.faults.get("http") or []:
            if f.get("op") in (None, op) and f.get("endpoint") in (None, eid) and int(f.get("times") or 0) > 0:
                f["times"] = int(f["times"]) - 1
                return dict(f)
        return None

    def set_faults(self, doc: dict[str, Any]) -> None:
        unknown = set(doc) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown serverless faults: {', '.join(sorted(unknown))}")
        for key, value in doc.items():
            if value is None:
                self.faults.pop(key, None)
            elif key == "http":
                if not isinstance(value, list) or not all(isinstance(f, dict) and isinstance(f.get("status"), int)
                                                          for f in value):
                    raise ValueError('http: a list of {"op", "status", "times", "endpoint"?, "retry_after"?}')
                self.faults["http"] = copy.deepcopy(value)
            elif key == "workers":
                if not isinstance(value, dict) or any(v not in ("THROTTLED", "UNHEALTHY", None)
                                                      for v in value.values()):
                    raise ValueError('workers: {"<endpoint id>": "THROTTLED" | "UNHEALTHY" | null}')
                merged = {**(self.faults.get("workers") or {}), **value}
                self.faults["workers"] = {k: v for k, v in merged.items() if v}
            else:
                if not isinstance(value, dict) or not isinstance(value.get("times", 1), int):
                    raise ValueError(f'{key}: {{"times": N, ...}}')
                self.faults[key] = {"times": 1, **value}

    def control(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        """``/_sim/serverless[/jobs]``: settings, faults and the job log."""
        with self.cv:
            if rest == ["jobs"] and method == "GET":
                eid = query.get("endpoint")
                return 200, {"jobs": [copy.deepcopy(e) for e in self.log if eid in (None, e["endpoint_id"])]}
            if rest == [] and method == "GET":
                return 200, self._control_doc()
            if rest == [] and method == "POST":
                if not isinstance(body, dict) or set(body) - {"settings", "faults"}:
                    return 400, {"error": 'send {"settings": {...}, "faults": {...}}'}
                settings = body.get("settings") or {}
                bad = sorted(k for k in settings if k not in SETTINGS)
                if bad or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0
                              for v in settings.values()):
                    return 400, {"error": f"settings are numbers >= 0 named {', '.join(SETTINGS)}"
                                          + (f" (unknown: {', '.join(bad)})" if bad else "")}
                try:
                    self.set_faults(body.get("faults") or {})
                except ValueError as e:
                    return 400, {"error": str(e)}
                self.world.settings.update(settings)
                self.cv.notify_all()
                return 200, self._control_doc()
        return 404, {"error": "not found"}

    def _control_doc(self) -> dict[str, Any]:
        return {"settings": {k: self.setting(k) for k in SETTINGS}, "faults": copy.deepcopy(self.faults),
                "ticks": self.ticks,
                "endpoints": {eid: {"queue": len(self.queues.get(eid) or []),
                                    "workers": [{"id": w.id, "status": w.status} for w in
                                                self.workers.get(eid, {}).values()]}
                              for eid in self.endpoints}}

    # -- REST v2 management ---------------------------------------------------------------------------

    def rest(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        """``/v2/serverless...`` (``parts`` after ``serverless``), with the world's lock held."""
        if not parts:
            if method == "GET":
                return 200, {"endpoints": [self.view(ep) for ep in self.endpoints.values()]}
            if method == "POST":
                return 201, self.view(self.create(body))
            raise Problem(404, "No such route.")
        ep = self.endpoints.get(parts[0])
        if ep is None:
            raise Problem(404, f"Endpoint {parts[0]} not found.")
        if len(parts) == 1 and method == "GET":
            return 200, self.view(ep)
        if len(parts) == 1 and method == "PATCH":
            return 200, self.view(self.update(ep, body))
        if len(parts) == 1 and method == "DELETE":
            self.delete(ep["id"])
            return 204, None
        if len(parts) == 2 and parts[1] == "workers" and method == "GET":
            return 200, self.workers_view(ep)
        raise Problem(404, "No such route.")

    def view(self, ep: dict[str, Any]) -> dict[str, Any]:
        doc = {k: copy.deepcopy(v) for k, v in ep.items() if not k.startswith("_")}
        base = f"{self._base_url()}/v2/{ep['id']}"
        doc["requestUrls"] = {"run": f"{base}/run", "runSync": f"{base}/runsync", "status": f"{base}/status",
                              "stream": f"{base}/stream", "cancel": f"{base}/cancel", "retry": f"{base}/retry",
                              "purgeQueue": f"{base}/purge-queue", "health": f"{base}/health"}
        return doc

    def workers_view(self, ep: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        items = []
        summary = {"running": 0, "idle": 0, "initializing": 0, "throttled": 0, "unhealthy": 0, "total": 0}
        version = int(ep.get("_version") or 1)
        for w in self.workers.get(ep["id"], {}).values():
            summary[w.status.lower()] += 1
            summary["total"] += 1
            items.append({"id": w.id, "status": w.status, "isStale": w.version != version, "version": w.version,
                          "gpuCount": int((ep.get("gpu") or {}).get("count") or 1), "image": ep.get("image"),
                          "uptimeSeconds": int(now - w.created), "gpuTypeId": w.gpu_type,
                          "dataCenterId": w.dc, "startedAt": _iso(w.created)})
        return {"workers": items, "summary": summary, "endpointVersion": version}

    def create(self, body: Any) -> dict[str, Any]:
        b = _closed(body, ENDPOINT_KEYS)
        errors = [f"$.{k}: is required" for k in ("name", "type", "scaling") if k not in b]
        if "image" not in b and "templateId" not in b:
            errors.append("$.image: is required unless templateId is given")
        if "type" in b and b["type"] not in ("QUEUE", "LOAD_BALANCER"):
            errors.append("$.type: value must be one of 'QUEUE', 'LOAD_BALANCER'")
        if errors:
            raise Problem(422, "Request validation failed.", errors)
        if b["type"] == "LOAD_BALANCER":
            raise Problem(400, "The simulator serves queue-based endpoints only (type QUEUE).")
        if "templateId" in b:
            raise Problem(404, f"Template {b['templateId']} not found.")
        if "cpu" in b or "gpu" not in b:
            raise Problem(400, "Exactly one of gpu and cpu is required; the simulator serves GPU endpoints only.")
        ep: dict[str, Any] = {
            "id": "", "name": None, "type": "QUEUE", "createdAt": _iso(time.time()),
            "image": None, "args": "", "disk": 20, "env": {}, "ports": [], "registry": None,
            "gpu": {"pools": [], "excludedTypes": [], "count": 1, "allowedCudaVersions": [], "minCudaVersion": None},
            "workers": {"min": 0, "max": 3, "idleTimeout": 10}, "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "dataCenterIds": [], "networkVolumes": [], "timeout": 300000, "flashboot": "OFF", "_version": 1,
        }
        self._apply(ep, b, creating=True)
        ep["id"] = self.world.new_id("endpoint", 14)
        while ep["id"] in self.endpoints:
            ep["id"] = self.world.new_id("endpoint", 14)
        self.endpoints[ep["id"]] = ep
        self.cv.notify_all()
        return ep

    def update(self, ep: dict[str, Any], body: Any) -> dict[str, Any]:
        b = _closed(body, PATCH_KEYS | {"type"})
        if "type" in b:
            raise Problem(422, "Request validation failed.", ["$.type: additional properties are not allowed"])
        if "cpu" in b:
            raise Problem(400, "The compute family of an endpoint cannot change (gpu to cpu).")
        if "templateId" in b:
            raise Problem(404, f"Template {b['templateId']} not found.")
        new = copy.deepcopy(ep)
        self._apply(new, b, creating=False)
        if any(new.get(k) != ep.get(k) for k in RELEASE_KEYS):
            new["_version"] = int(ep.get("_version") or 1) + 1
        ep.clear()
        ep.update(new)
        self.cv.notify_all()
        return ep

    def _apply(self, ep: dict[str, Any], b: dict[str, Any], *, creating: bool) -> None:
        errors: list[str] = []
        if "name" in b and (not isinstance(b["name"], str) or not b["name"].strip()):
            errors.append("$.name: must be a non-empty string")
        if "image" in b and (not isinstance(b["image"], str) or not b["image"].strip()):
            errors.append("$.image: must be a non-empty string")
        if "args" in b and not isinstance(b["args"], str):
            errors.append("$.args: want string")
        if "disk" in b and (not isinstance(b["disk"], int) or isinstance(b["disk"], bool) or b["disk"] < 1):
            errors.append("$.disk: must be an integer >= 1")
        if "env" in b and (not isinstance(b["env"], dict) or not all(isinstance(v, str) for v in b["env"].values())):
            errors.append("$.env: want object of strings")
        if "ports" in b and (not isinstance(b["ports"], list) or not all(isinstance(p, str) for p in b["ports"])):
            errors.append("$.ports: want array of strings")
        if "timeout" in b and not _int_in(b["timeout"], 5000, 7 * MS_DAY):
            errors.append(f"$.timeout: must be an integer from 5000 to {7 * MS_DAY} (ms)")
        if "flashboot" in b and b["flashboot"] not in FLASHBOOT:
            errors.append("$.flashboot: value must be one of 'OFF', 'FLASHBOOT', 'PRIORITY_FLASHBOOT'")
        for key in ("networkVolumes", "dataCenterIds"):
            if key in b and (not isinstance(b[key], list) or not all(isinstance(x, str) for x in b[key])):
                errors.append(f"$.{key}: want array of strings")
        sub = {"gpu": GPU_KEYS, "workers": WORKER_KEYS, "scaling": SCALING_KEYS}
        for key, keys in sub.items():
            if key in b:
                if not isinstance(b[key], dict):
                    errors.append(f"$.{key}: want object")
                else:
                    errors += [f"$.{key}.{k}: additional properties are not allowed"
                               for k in sorted(set(b[key]) - keys)]
        if errors:
            raise Problem(422, "Request validation failed.", errors)
        for key in ("name", "image", "args", "disk", "env", "ports", "registry", "timeout", "flashboot",
                    "networkVolumes", "dataCenterIds"):
            if key in b:
                ep[key] = copy.deepcopy(b[key])
        if "gpu" in b:
            gpu = b["gpu"]
            pools_sent = "pools" in gpu
            ep["gpu"].update(copy.deepcopy(gpu))
            if pools_sent and "excludedTypes" not in gpu:
                ep["gpu"]["excludedTypes"] = []  # RunPod: pools without excludedTypes clear the exclusions
        if "workers" in b:
            ep["workers"].update(b["workers"])
        if "scaling" in b:
            ep["scaling"] = copy.deepcopy(b["scaling"])
        if ep["scaling"].get("type") == "REQUEST_COUNT" and "idleTimeout" in (b.get("workers") or {}):
            raise Problem(400, "workers.idleTimeout cannot be set with REQUEST_COUNT scaling.")
        self._check(ep)

    def _check(self, ep: dict[str, Any]) -> None:
        errors: list[str] = []
        gpu, workers, scaling = ep["gpu"], ep["workers"], ep["scaling"]
        known = {pool_of(gid, g) for gid, g in self.world.gpu_types.items()}
        pools = gpu.get("pools")
        if not isinstance(pools, list) or not pools or not all(isinstance(p, str) for p in pools):
            errors.append("$.gpu.pools: at least one pool id is required")
        elif set(pools) - known:
            raise Problem(400, f"Unknown GPU pool {sorted(set(pools) - known)[0]}; pools: {', '.join(sorted(known))}.")
        if not _int_in(gpu.get("count"), 1, 8):
            errors.append("$.gpu.count: must be an integer from 1 to 8")
        if not isinstance(gpu.get("excludedTypes"), list):
            errors.append("$.gpu.excludedTypes: want array")
        if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
            raise Problem(400, "allowedCudaVersions and minCudaVersion cannot both be set.")
        for key in ("min", "max"):
            if not _int_in(workers.get(key), 0, 1000):
                errors.append(f"$.workers.{key}: must be an integer >= 0")
        if "idleTimeout" in workers and not _int_in(workers["idleTimeout"], 1, 3600):
            errors.append("$.workers.idleTimeout: must be an integer from 1 to 3600 (s)")
        kind = scaling.get("type")
        if kind == "QUEUE_DELAY":
            if not isinstance(scaling.get("queueDelay", 4), (int, float)) or scaling.get("queueDelay", 4) < 0.5:
                errors.append("$.scaling.queueDelay: must be >= 0.5")
        elif kind == "REQUEST_COUNT":
            if not _int_in(scaling.get("requestCount", 1), 1, 1_000_000):
                errors.append("$.scaling.requestCount: must be an integer >= 1")
        else:
            errors.append("$.scaling.type: value must be one of 'QUEUE_DELAY', 'REQUEST_COUNT'")
        if errors:
            raise Problem(422, "Request validation failed.", errors)
        if workers["min"] > workers["max"]:
            raise Problem(400, f"workers.min ({workers['min']}) cannot be more than workers.max ({workers['max']}).")
        for vid in ep["networkVolumes"]:
            if vid not in self.world.network_volumes:
                raise Problem(404, f"Network volume {vid} not found.")
        for dc in ep["dataCenterIds"]:
            if dc not in self.world.data_centers:
                raise Problem(400, f"Unknown data center {dc}.")
        vdcs = {self.world.network_volumes[v].get("dataCenterId") for v in ep["networkVolumes"]}
        if ep["dataCenterIds"] and vdcs - set(ep["dataCenterIds"]):
            raise Problem(400, "A network volume ties the endpoint to its data center: "
                               f"{', '.join(sorted(str(d) for d in vdcs))} is not in dataCenterIds.")

    def delete(self, eid: str) -> None:
        """DELETE: workers terminate, queued and running jobs are cancelled, then everything goes."""
        now = time.time()
        for w in list(self.workers.get(eid, {}).values()):
            if w.comfy is not None:
                w.comfy.engine.interrupt()
            self._retire(w)
        for job in [j for j in self.jobs.values() if j.endpoint_id == eid]:
            if job.status not in TERMINAL:
                self._end(job, "CANCELLED", now)
            self._remove(job, "endpoint deleted")
        self.queues.pop(eid, None)
        self.workers.pop(eid, None)
        self.endpoints.pop(eid, None)

    # -- the job API ----------------------------------------------------------------------------------

    def handle(self, method: str, eid: str, op: str, rest: list[str], query: str, raw: bytes
               ) -> tuple[int, Any, dict[str, str], bool]:
        """One job-API request: (status, JSON document, extra headers, drop the answer)."""
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        with self.cv:
            if eid not in self.endpoints:
                return 404, {"error": f"endpoint {eid} not found"}, {}, False
            fault = self._http_fault(op, eid)
            if fault is not None:
                headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") is not None else {}
                texts = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
                         503: "Service Unavailable"}
                return int(fault["status"]), {"error": texts.get(int(fault["status"]), "error")}, headers, False
            want = {"run": ("POST", 0), "runsync": ("POST", 0), "status": ("GET", 1), "stream": ("GET", 1),
                    "cancel": ("POST", 1), "retry": ("POST", 1), "purge-queue": ("POST", 0), "health": ("GET", 0)}
            verb, nargs = want[op]
            if method != verb or len(rest) != nargs:
                return 404 if len(rest) != nargs else 405, {"error": f"{method} /{op} is not an operation"}, {}, False
            if op in ("run", "runsync"):
                return self._submit(eid, op, q, raw)
            if op == "health":
                return 200, self.health(eid), {}, False
            if op == "purge-queue":
                return 200, self.purge(eid), {}, False
            job = self.jobs.get(rest[0])
            if job is None or job.endpoint_id != eid:
                return 404, {"error": "request does not exist"}, {}, False
            if op == "status":
                return 200, job.doc(), {}, False
            if op == "cancel":
                if job.status not in TERMINAL:
                    self._end(job, "CANCELLED", time.time())
                return 200, {"id": job.id, "status": job.status}, {}, False
            if op == "retry":
                if job.status not in ("FAILED", "TIMED_OUT"):
                    return 400, {"error": f"job {job.id} is {job.status}; only FAILED or TIMED_OUT jobs can be "
                                          "retried"}, {}, False
                job.status, job.started, job.ended, job.worker_id, job.result = "IN_QUEUE", None, None, None, None
                job.submitted = time.time()
                job.entry.update(status="IN_QUEUE", ended_at=None, worker_id=None)
                job.entry["retries"] = job.entry.get("retries", 0) + 1
                self.queues.setdefault(eid, []).append(job)
                self.retried[eid] = self.retried.get(eid, 0) + 1
                self.cv.notify_all()
                return 200, {"id": job.id, "status": "IN_QUEUE"}, {}, False
            # stream: worker-comfyui is no generator handler, so there is never a chunk; hold, then answer
            hold = _wait_s(q.get("wait"), float(self.setting("sls_stream_hold_s")))
            self.cv.wait_for(lambda: job.status in TERMINAL or self._stop.is_set(), timeout=hold)
            return 200, {"status": job.status, "stream": []}, {}, False

    def _submit(self, eid: str, op: str, q: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str], bool]:
        limit = int(self.setting("sls_run_limit_bytes" if op == "run" else "sls_runsync_limit_bytes"))
        if len(raw) > limit:
            return 413, {"error": f"payload too large: {len(raw)} bytes; the limit for /{op} is {limit} bytes"}, \
                {}, False
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"error": "the request body is not JSON"}, {}, False
        if not isinstance(body, dict) or "input" not in body:
            return 400, {"error": "the request body needs an 'input'"}, {}, False
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            return 400, {"error": "policy must be an object"}, {}, False
        for key, lo in (("executionTimeout", 5000), ("ttl", 10000)):
            if key in policy and not _int_in(policy[key], lo, 7 * MS_DAY):
                return 400, {"error": f"policy.{key} must be an integer from {lo} to {7 * MS_DAY} (ms)"}, {}, False
        now = time.time()
        sync = op == "runsync"
        jid = ("sync-" if sync else "") + f"{uuid.uuid4()}-u1"
        entry = {"id": jid, "endpoint_id": eid, "op": op, "input_sha256": digest(body["input"]),
                 "submitted_at": _iso(now), "started_at": None, "ended_at": None, "worker_id": None,
                 "status": "IN_QUEUE", "attempts": [], "answer_lost": False, "removed": None}
        job = Job(id=jid, endpoint_id=eid, input=body["input"], sync=sync, submitted=now,
                  execution_timeout_ms=policy.get("executionTimeout"), ttl_ms=policy.get("ttl"),
                  low_priority=bool(policy.get("lowPriority")), entry=entry)
        self.log.append(entry)
        self.jobs[jid] = job
        self.queues.setdefault(eid, []).append(job)
        self.tick()  # scale and dispatch now, not at the next tick
        lost = self._take_fault("lost_answer", eid) if op == "run" else None
        if lost is not None:
            entry["answer_lost"] = True
            return 200, None, {}, True
        if not sync:  # the answer is written as the job is accepted, before a worker may take it
            return 200, {"id": jid, "status": "IN_QUEUE"}, {}, False
        hold = _wait_s(q.get("wait"), 90.0, lo=1.0, hi=300.0)
        self.cv.wait_for(lambda: job.status in TERMINAL or self._stop.is_set(), timeout=hold)
        return 200, (job.doc() if job.status in TERMINAL else {"id": jid, "status": job.status}), {}, False

    def health(self, eid: str) -> dict[str, Any]:
        jobs = [j for j in self.jobs.values() if j.endpoint_id == eid]
        workers = {k.lower(): 0 for k in WORKER_STATES}
        for w in self.workers.get(eid, {}).values():
            workers[w.status.lower()] += 1
        return {"jobs": {"completed": sum(j.status == "COMPLETED" for j in jobs),
                         "failed": sum(j.status in ("FAILED", "TIMED_OUT") for j in jobs),
                         "inProgress": sum(j.status == "IN_PROGRESS" for j in jobs),
                         "inQueue": len(self.queues.get(eid) or []),
                         "retried": self.retried.get(eid, 0)},
                "workers": workers}

    def purge(self, eid: str) -> dict[str, Any]:
        queue = self.queues.get(eid) or []
        removed = list(queue)
        for job in removed:
            job.entry.update(status="PURGED", ended_at=_iso(time.time()))
            self._remove(job, "purged")
        return {"removed": len(removed), "status": "completed"}


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _closed(body: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Problem(422, "Request validation failed.", [f"$: got {type(body).__name__}, want object"])
    unknown = sorted(set(body) - keys)
    if unknown:
        raise Problem(422, "Request validation failed.", [f"$.{k}: additional properties are not allowed"
                                                          for k in unknown])
    return body


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _wait_s(raw: str | None, default: float, lo: float = 0.0, hi: float = 300.0) -> float:
    try:
        return min(hi, max(lo, int(raw) / 1000)) if raw is not None else default
    except ValueError:
        return default


# --- a worker: its ComfyUI and worker-comfyui's handler --------------------------------------------


def _boot_comfy(home: Path, volume: Path | None) -> Any:
    """The worker's ComfyUI (``/comfyui``): the simulator's, with its own nodes, ``--disable-metadata``, and
    the volume's folders as worker-comfyui's ``extra_model_paths.yaml`` adds them."""
    from .comfyui_standin import ComfyUIStandin

    comfy = ComfyUIStandin(root=home / "comfyui", sim_nodes=True, editor_ui=False)
    comfy.models = WorkerModels(home / "comfyui" / "models", home / "comfyui", volume)
    comfy.engine.disable_metadata = True
    comfy.engine.start(f"serverless-comfyui-{home.name}")
    return comfy


def run_handler(comfy: Any, job_id: str, job_input: Any, abort: threading.Event) -> dict[str, Any]:
    """worker-comfyui 5.8.5's ``handler(job)``: what it returns for this input, with ComfyUI ``comfy``."""
    if job_input is None:
        return {"error": "Please provide input"}
    if isinstance(job_input, str):
        try:
            job_input = json.loads(job_input)
        except ValueError:
            return {"error": "Invalid JSON format in input"}
    if not isinstance(job_input, dict):
        return {"error": f"An unexpected error occurred: '{type(job_input).__name__}' object has no attribute 'get'"}
    workflow = job_input.get("workflow")
    if workflow is None:
        return {"error": "Missing 'workflow' parameter"}
    images = job_input.get("images")
    if images is not None and (not isinstance(images, list) or not all(
            isinstance(i, dict) and "name" in i and "image" in i for i in images)):
        return {"error": "'images' must be a list of objects with 'name' and 'image' keys"}
    upload_errors = []
    for image in images or []:
        name = image["name"]
        try:
            data = str(image["image"])
            blob = base64.b64decode(data.split(",", 1)[1] if "," in data else data)
            status, _doc = comfy.folders.upload(str(name), blob, kind="input", subfolder="", overwrite="true")
            if status != 200:
                upload_errors.append(f"Error uploading {name}: {status} Client Error: Bad Request for url: "
                                     "http://127.0.0.1:8188/upload/image")
        except binascii.Error as e:
            upload_errors.append(f"Error decoding base64 for {name}: {e}")
        except Exception as e:
            upload_errors.append(f"Unexpected error uploading {name}: {e}")
    if upload_errors:
        return {"error": "Failed to upload one or more input images", "details": upload_errors}

    engine = comfy.engine
    client_id = str(uuid.uuid4())
    done = threading.Event()
    state: dict[str, Any] = {"prompt_id": None, "errors": []}

    def tap(event: str, data: Any, sid: str | None) -> None:
        if sid != client_id or not isinstance(data, dict) or data.get("prompt_id") != state["prompt_id"]:
            return
        if event == "execution_error":
            state["errors"].append("Workflow execution error: Node Type: {}, Node ID: {}, Message: {}".format(
                data.get("node_type"), data.get("node_id"), data.get("exception_message")))
        elif event == "executing" and data.get("node") is None:
            done.set()

    state["prompt_id"] = str(uuid.uuid4())  # known before the engine can start it, so no event is missed
    engine.taps.append(tap)
    try:
        try:
            status, answer = engine.submit({"prompt": workflow, "client_id": client_id,
                                            "prompt_id": state["prompt_id"]})
        except Exception:
            return {"error": "HTTP communication error with ComfyUI: 500 Server Error: Internal Server Error for "
                             "url: http://127.0.0.1:8188/prompt"}
        if status == 400:
            return {"error": _validation_error(comfy, answer)}
        while not done.wait(0.05):
            if abort.is_set():
                engine.interrupt()
                return {"error": "worker stopped"}
            if state["prompt_id"] in engine.history:
                break
    finally:
        engine.taps.remove(tap)
    prompt_id = state["prompt_id"]
    errors: list[str] = list(state["errors"])
    history = engine.get_history(prompt_id)
    if prompt_id not in history:
        return {"error": f"Prompt ID {prompt_id} not found in history after execution."}
    entry = history[prompt_id]
    for message in (entry.get("status") or {}).get("messages") or []:
        if message[0] == "execution_error" and not errors:
            d = message[1]
            errors.append(f"Workflow execution error: Node Type: {d.get('node_type')}, Node ID: {d.get('node_id')}, "
                          f"Message: {d.get('exception_message')}")
    outputs = entry.get("outputs") or {}
    if not outputs and not errors:
        errors.append(f"No outputs found in history for prompt {prompt_id}.")
    images_out = []
    for node_id, node_output in outputs.items():
        for info in node_output.get("images") or []:
            filename, kind = info.get("filename"), info.get("type")
            if kind == "temp":
                continue
            if not filename:
                errors.append(f"Skipping image in node {node_id} due to missing filename: {info}")
                continue
            status, path = comfy.folders.view_path(filename, kind, info.get("subfolder", ""))
            if status != 200 or path is None:
                errors.append(f"Failed to fetch image data for {filename} from /view endpoint.")
                continue
            images_out.append({"filename": filename, "type": "base64",
                               "data": base64.b64encode(path.read_bytes()).decode()})
        # other keys (gifs, audio, text) are dropped with a log line only, as worker-comfyui does
    result: dict[str, Any] = {}
    if images_out:
        result["images"] = images_out
    if errors:
        result["errors"] = errors
    if not images_out and errors:
        return {"error": "Job processing failed", "details": errors}
    if not images_out:
        result.update(status="success_no_images", images=[])
    return result


def _validation_error(comfy: Any, answer: dict[str, Any]) -> str:
    """worker-comfyui's text for ComfyUI's 400 answer to /prompt."""
    message = "Workflow validation failed"
    error = answer.get("error")
    if isinstance(error, dict):
        message = error.get("message", message)
        if error.get("type") == "prompt_outputs_failed_validation":
            message = "Workflow validation failed"
    elif error is not None:
        message = str(error)
    details = []
    for node_id, node_error in (answer.get("node_errors") or {}).items():
        if isinstance(node_error, dict):
            details += [f"Node {node_id} ({key}): {value}" for key, value in node_error.items()]
        else:
            details.append(f"Node {node_id}: {node_error}")
    if not details:
        return f"{message}. Raw response: {json.dumps(answer)}"
    text = f"{message}:\n" + "\n".join(f"• {d}" for d in details)
    if any("not in list" in d and "ckpt_name" in d for d in details):
        info = comfy.node_info("CheckpointLoaderSimple") or {}
        spec = ((info.get("input") or {}).get("required") or {}).get("ckpt_name") or [[]]
        names = spec[0] if isinstance(spec[0], list) else []
        text += (f"\n\nAvailable checkpoint models: {', '.join(names)}" if names else
                 "\n\nNo checkpoint models appear to be available. Please check your model installation.")
    return text

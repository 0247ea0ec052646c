"""``comfy.run --endpoint NAME``: the same batch as on a pod, one job per prompt on a RunPod Serverless
endpoint running worker-comfyui, with the same ledger, output names and sidecars.

1. **Plan** locally, exactly as for a pod (``run.plan``): an endpoint has no ``/object_info``, so the node
   definitions are the ones kept from a pod of the endpoint's image (``nodedefs.image_key``) or a file
   given with ``--object-info``; without either, exit 2 saying how to get one. Input files go inside each
   job (``input.images``, base64); a job over RunPod's ``/run`` limit is exit 2 before anything is sent.
2. **Record** the batch (target ``endpoint:<id>``), then **submit** each prompt to ``/run`` up to a bound:
   RunPod's queue and autoscaler do the rest. The job id is recorded the moment RunPod answers; a submit
   whose answer was lost is recorded ``unknown`` (``/run`` takes no client-chosen id, so only its answer
   names the job) and is never sent again by this run.
3. **Follow** ``/status`` of every job, polled with backoff (worker-comfyui reports no progress inside a
   prompt, so only the batch moves): jobs queued, running and done, rate, ETA, and the endpoint's workers.
4. **Fetch** a job's outputs the moment it completes (RunPod keeps a ``/run`` result 30 minutes): base64
   images decoded and streamed to disk, ``s3_url`` ones downloaded, under the run's output template, with a
   sidecar per prompt (job id, endpoint, ``delayTime``, ``executionTime``, cost).

Ctrl-C cancels this run's queued and running jobs (``/cancel``) and exits 130. RunPod removes a queued job
at once; a running worker-comfyui prompt is not interrupted inside the worker (its handler is synchronous
and never calls ComfyUI's ``/interrupt``), so the worker may stay busy, and bill, until that prompt ends.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core import signals
from ..core.errors import AutopodError, ComfyError, ExitCode, Interrupted, UsageError
from .ledger import FINAL, BatchRow, Ledger, PromptRow, hold
from .outputs import save_stream, target_path, write_sidecar
from .progress import Progress

log = logging.getLogger(__name__)

POLL_MIN_S = 0.25  # /status poll after something changed ...
POLL_MAX_S = 2.0  # ... backing off to this while nothing does
QUEUED_AHEAD = 8  # queued jobs (oldest first) asked every round besides the running ones; the rest ...
QUEUED_EVERY = 8  # ... every this many rounds: RunPod allows 2000 /status calls per 10 s
WORKERS_EVERY_S = 2.0  # the endpoint's workers list, for the progress line
MAX_IN_FLIGHT = 256  # jobs of a run submitted and not final at once (--max-queued lowers it)
B64_CHUNK = 4 * 256 * 1024  # base64 characters decoded and written at a time
TARGET_PREFIX = "endpoint:"

# RunPod's job statuses as the ledger's states (reference serverless.md §1.5; RUNNING is documented, never seen).
STATES = {"IN_QUEUE": "queued", "IN_PROGRESS": "running", "RUNNING": "running", "COMPLETED": "success",
          "FAILED": "error", "CANCELLED": "cancelled", "TIMED_OUT": "error"}
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")

# Output nodes whose files ComfyUI lists under a key other than ``images``: worker-comfyui 5.8.5 returns
# only ``images`` (reference §3.7), so these outputs would be lost; each is named before anything is sent.
NOT_RETURNED = {"VHS_VideoCombine": "gifs", "SaveAudio": "audio", "SaveAudioMP3": "audio", "SaveAudioOpus": "audio",
                "PreviewAudio": "audio", "SaveGLB": "3d", "Preview3D": "3d", "PreviewAny": "text",
                "SaveText": "text",
                # the simulator's stand-ins for VideoHelperSuite and audio nodes, with the same output keys
                "AutopodSaveGIF": "gifs", "AutopodSaveVideo": "gifs", "AutopodSaveAudio": "audio"}


@dataclass
class Endpoint:
    """The endpoint a batch runs on, as autopod needs it."""

    id: str
    name: str
    image: str | None = None
    price_per_s: float | None = None  # one worker's serverless price, $/s (the highest of its GPU pools)
    gpu: str | None = None  # what the price is for
    workers_max: int | None = None
    volumes: list[str] = field(default_factory=list)

    @property
    def target_id(self) -> str:
        return TARGET_PREFIX + self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "gpu": self.gpu,
                "price_per_s": self.price_per_s}


def is_endpoint_batch(batch: BatchRow) -> bool:
    return (batch.target_id or "").startswith(TARGET_PREFIX)


# -- the endpoint and its client --------------------------------------------------------------------------------


def resolve(name: str) -> Endpoint:
    """The endpoint named ``name`` (or with that id), from REST v2, with one worker's price from the catalog;
    exit 2 when there is none."""
    from ..runpod import serverless

    api = serverless.connect()
    ep = serverless.find(api, name)
    if ep is None:
        names = ", ".join(sorted(str(e.get("name")) for e in api.list_endpoints())) or "none"
        raise UsageError(f"no endpoint {name!r} on this account (endpoints: {names}); make one with "
                         f"`autopod endpoint.up --name {name}`")
    catalog = api.gpu_catalog()
    rec = serverless.record(ep, catalog)
    rate = serverless.worker_rate(ep, catalog)
    return Endpoint(id=str(ep["id"]), name=str(ep.get("name") or name), image=ep.get("image"),
                    price_per_s=round(rate / 3600, 8) if rate is not None else None,
                    gpu=", ".join(rec.get("gpus") or []) or None, workers_max=rec.get("workers_max"),
                    volumes=list(ep.get("networkVolumes") or []))


def endpoint_of(batch: BatchRow) -> Endpoint:
    """The endpoint a batch was recorded on (its facts kept with the batch: no API call)."""
    kept = batch.options.get("endpoint") or {}
    return Endpoint(id=(batch.target_id or "")[len(TARGET_PREFIX):], name=batch.target_name or kept.get("name") or "",
                    image=kept.get("image"), price_per_s=kept.get("price_per_s"), gpu=kept.get("gpu"))


def job_client(endpoint: Endpoint) -> Any:
    from ..runpod.jobapi import JobClient

    return JobClient.for_account(endpoint.id)


def workers_summary(endpoint: Endpoint) -> dict[str, int] | None:
    """The endpoint's workers by state (``GET /v2/serverless/{id}/workers``), or None when unavailable."""
    from ..runpod import serverless

    try:
        doc = serverless.connect().endpoint_workers(endpoint.id)
    except AutopodError as e:
        log.debug("no workers list for %s: %s", endpoint.id, e)
        return None
    summary = doc.get("summary") or {}
    return {k: int(summary.get(k) or 0) for k in ("running", "idle", "initializing", "throttled", "unhealthy")}


# -- planning (nothing is sent) ------------------------------------------------------------------------------


def node_definitions(endpoint: Endpoint, object_info_file: str | None,
                     note: Callable[[str], None]) -> dict[str, Any]:
    """The node definitions to plan on: ``--object-info FILE``, else the ones kept from a pod of the
    endpoint's image, else exit 2 saying how to get them."""
    from .nodedefs import image_key, load

    if object_info_file:
        return read_object_info(object_info_file)
    if endpoint.image:
        kept = load(image_key(endpoint.image), note=note)
        if kept is not None:
            return kept
    image = endpoint.image or "its image"
    raise UsageError(f"no node definitions for endpoint {endpoint.name} ({image}): an endpoint has no /object_info. "
                     f"Give --object-info FILE (ComfyUI's `GET /object_info` of the same version, saved as JSON), "
                     f"or run any workflow once on a pod of that image (`autopod pod.up --image {image}` then "
                     f"`autopod comfy.run ...`): autopod keeps its definitions for the endpoint")


def read_object_info(path: str) -> dict[str, Any]:
    from ..core.files import parse_json, read_text

    _p, text = read_text(path, what="node definitions (--object-info)", limit=256 * 1024 * 1024)
    doc = parse_json(text, path)
    if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) for v in doc.values()):
        raise UsageError(f"{path}: not ComfyUI's node definitions (`GET /object_info`: an object of node classes)")
    return doc


def input_name(path: Path, digest: str) -> str:
    """The name an input file gets in the worker's ComfyUI: its content's hash first, so two files of the same
    name never overwrite each other there (worker-comfyui uploads with ``overwrite=true``)."""
    from .outputs import _safe

    return f"{digest[:12]}-{_safe(path.name)}"


def warn_unreturned(planned: list[Any], note: Callable[[str], None], *, previews: bool) -> list[str]:
    """A line for each output the worker never returns (it sends back ``images`` only)."""
    lines, seen = [], set()
    for p in planned:
        for node_id, spec in p.prompt.items():
            cls = str((spec or {}).get("class_type"))
            kind = NOT_RETURNED.get(cls) or ("temp" if previews and cls == "PreviewImage" else None)
            if kind and (p.workflow, node_id) not in seen:
                seen.add((p.workflow, node_id))
                why = ("previews (type temp) are dropped by worker-comfyui" if kind == "temp" else
                       f"its files come under '{kind}', and worker-comfyui returns only 'images'")
                lines.append(f"{p.workflow}: node {node_id} ({cls}) saves nothing you will get back: {why}")
    for line in lines:
        note(f"warning: {line}")
    return lines


class Payloads:
    """The ``/run`` body of each prompt: the prompt as ``input.workflow``, the input files it names as
    ``input.images`` (base64, each file read and encoded once), and ``policy`` from ``--timeout``."""

    def __init__(self, uploads: list[tuple[Path, str]], policy: dict[str, int] | None):
        self.uploads = uploads
        self.policy = policy
        self._b64: dict[Path, str] = {}

    def images(self, prompt: dict[str, Any]) -> list[dict[str, str]]:
        named = {str(v) for spec in prompt.values() if isinstance(spec, dict)
                 for v in (spec.get("inputs") or {}).values() if isinstance(v, str)}
        out = []
        for path, name in self.uploads:
            if name in named:
                if path not in self._b64:
                    from ..core.files import read_bytes

                    _p, raw = read_bytes(path, what="input file", limit=64 * 1024 * 1024, error=ComfyError)
                    self._b64[path] = base64.b64encode(raw).decode("ascii")
                out.append({"name": name, "image": self._b64[path]})
        return out

    def build(self, prompt: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"input": {"workflow": prompt}}
        images = self.images(prompt)
        if images:
            body["input"]["images"] = images
        if self.policy:
            body["policy"] = dict(self.policy)
        return body


def policy_for(timeout: float | None) -> dict[str, int] | None:
    """Per-job bounds from ``--timeout``: run time (``executionTimeout``, at least RunPod's 5 s) and total
    life from submission (``ttl``, at least 10 s), so a stuck prompt cannot bill for RunPod's 24 hours."""
    if not timeout:
        return None
    ms = int(timeout * 1000)
    return {"executionTimeout": max(5_000, ms), "ttl": max(10_000, ms)}


def check_sizes(planned: list[Any], payloads: Payloads) -> None:
    """Exit 2 before anything is sent when a job's ``/run`` body is over RunPod's limit."""
    from ..runpod.jobapi import RUN_PAYLOAD_LIMIT, payload_size

    for i, p in enumerate(planned):
        size = payload_size(payloads.build(p.prompt))
        if size > RUN_PAYLOAD_LIMIT:
            raise UsageError(f"prompt {i + 1} ({p.workflow}) makes a /run request of {size / 2**20:.1f} MB, over "
                             f"RunPod's limit of {RUN_PAYLOAD_LIMIT / 2**20:.0f} MB (inputs travel as base64, "
                             f"4/3 of their size): send smaller input files")


# -- errors as one line per problem ----------------------------------------------------------------------------

_NODE_LINE = re.compile(r"^\s*[•*-]\s*Node\s+(?P<id>[^\s(]+)\s*\((?P<key>[^)]*)\):\s*(?P<value>.*)$")
_EXEC_LINE = re.compile(r"Node Type:\s*(?P<type>[^,]+),\s*Node ID:\s*(?P<id>[^,]+),\s*Message:\s*(?P<msg>.*)$",
                        re.S)


def error_lines(job: dict[str, Any], prompt: dict[str, Any], paths: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """worker-comfyui's ``error`` (and ``output.details``) as (kind, lines): ``rejected`` for a workflow
    ComfyUI refused (validation, a missing model), else ``error``; a line per problem, naming the node as a
    pod's error lines do."""
    from .run import node_name

    raw = job.get("error")
    if isinstance(raw, str):
        try:  # a handler that raised: the SDK's JSON of error_type, error_message, ...
            doc = json.loads(raw)
            if isinstance(doc, dict) and doc.get("error_message"):
                raw = f"{doc.get('error_type') or 'error'}: {doc['error_message']}"
        except ValueError:
            pass
    text = str(raw or "").strip()
    output = job.get("output") if isinstance(job.get("output"), dict) else {}
    details = [str(d) for d in (output.get("details") or []) if d] if isinstance(output.get("details"), list) else []

    def name(node_id: str, cls: str | None = None) -> str:
        spec = prompt.get(node_id) or {}
        return node_name(node_id, cls or spec.get("class_type") or "?", (spec.get("_meta") or {}).get("title"), paths)

    lines: list[str] = []
    if text.startswith("Workflow validation failed"):
        for line in text.splitlines()[1:]:
            m = _NODE_LINE.match(line)
            if not m:
                if line.strip():
                    lines.append(line.strip())
                continue
            if m["key"] in ("dependent_outputs", "class_type"):
                continue
            lines.extend(_validation_lines(name(m["id"]), m["value"]))
        return "rejected", lines or [text]
    if ". Raw response: " in text:  # ComfyUI refused the prompt without node errors (no outputs, say)
        head, _, body = text.partition(". Raw response: ")
        try:
            err = (json.loads(body).get("error") or {})
            return "rejected", [f"{err.get('type', 'error')}: {err.get('message') or head} {err.get('details') or ''}".strip()]
        except (ValueError, AttributeError):
            return "rejected", [head]
    for d in details or ([text] if text else []):
        m = _EXEC_LINE.search(d)
        lines.append(f"{name(m['id'].strip(), m['type'].strip())}: {m['msg'].strip()}" if m else d)
    if text and details:
        lines.insert(0, text.splitlines()[0])
    return "error", lines or ["the worker reported a failure without details"]


def _validation_lines(where: str, value: str) -> list[str]:
    """ComfyUI's ``errors`` list of one node, as worker-comfyui prints it (a Python literal), a line each."""
    import ast

    try:
        errors = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return [f"{where}: {value}"]
    if not isinstance(errors, list):
        return [f"{where}: {value}"]
    out = []
    for e in errors:
        if not isinstance(e, dict):
            out.append(f"{where}: {e}")
            continue
        inp = (e.get("extra_info") or {}).get("input_name")
        detail = f": {e['details']}" if e.get("details") else ""
        out.append(f"{where}{' input ' + inp if inp else ''}: {e.get('message', e.get('type', 'error'))}{detail}")
    return out


# -- outputs ---------------------------------------------------------------------------------------------------


def output_node(filename: str, prompt: dict[str, Any], object_info: dict[str, Any] | None = None) -> str:
    """Which output node made ``filename``: the worker returns file names only. ComfyUI names a saved file
    ``<filename_prefix>_<counter>_.<ext>``, so the node whose prefix starts the name; else the only node
    that saves anything; else ``output``."""
    best, savers = None, []
    for node_id, spec in prompt.items():
        if not isinstance(spec, dict):
            continue
        prefix = (spec.get("inputs") or {}).get("filename_prefix")
        if isinstance(prefix, str):
            savers.append(node_id)
            base = prefix.rsplit("/", 1)[-1]
            if base and filename.startswith(base + "_") and (best is None or len(base) > best[1]):
                best = (node_id, len(base))
    if best:
        return best[0]
    return savers[0] if len(savers) == 1 else "output"


def decode_to(data: str, f: Any) -> tuple[int, str]:
    """Base64 text to ``f``, a piece at a time (a data-URI prefix is dropped, as worker-comfyui does)."""
    if data.startswith("data:") and "," in data[:256]:
        data = data.split(",", 1)[1]
    data = "".join(data.split()) if any(c.isspace() for c in data[:1024]) else data
    h, size = hashlib.sha256(), 0
    for i in range(0, len(data), B64_CHUNK):
        try:
            piece = base64.b64decode(data[i:i + B64_CHUNK], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ComfyError(f"the worker sent an image that is not base64 ({e})") from None
        f.write(piece)
        h.update(piece)
        size += len(piece)
    return size, h.hexdigest()


def download_to(url: str, f: Any, timeout: float = 60.0) -> tuple[int, str]:
    """An ``s3_url`` output (a presigned GET) to ``f``, streamed."""
    import requests

    if not url.startswith(("https://", "http://")):
        raise ComfyError("the worker sent an s3_url that is not an http(s) URL")
    h, size = hashlib.sha256(), 0
    try:
        with requests.get(url, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise ComfyError(f"the s3_url answered HTTP {r.status_code}")
            for piece in r.iter_content(1 << 16):
                f.write(piece)
                h.update(piece)
                size += len(piece)
    except requests.RequestException as e:
        raise ComfyError(f"the s3_url could not be read ({type(e).__name__})") from None
    return size, h.hexdigest()


# -- the run ---------------------------------------------------------------------------------------------------


class BatchProgress:
    """The batch on stderr: a line whenever the counts or the workers change (queued, running, done, rate,
    ETA, workers running and starting). worker-comfyui reports nothing inside a prompt."""

    def __init__(self, progress: Progress, total: int, done: int = 0):
        self.progress, self.total, self.done0 = progress, total, done
        self.t0 = time.monotonic()
        self.last = ""

    def show(self, counts: dict[str, int], workers: dict[str, int] | None) -> None:
        done = sum(counts.get(s, 0) for s in FINAL)
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = (done - self.done0) / elapsed
        eta = (f", ETA {(self.total - done) / rate:.0f}s" if rate > 0 and done < self.total else "")
        text = (f"[{done}/{self.total}] queued {counts.get('queued', 0)}, running {counts.get('running', 0)}, "
                f"done {done}" + (f" ({rate * 60:.1f}/min{eta})" if done > self.done0 else ""))
        if counts.get("unknown"):
            text += f", unknown {counts['unknown']}"
        text += "; workers: " + describe_workers(workers, counts.get("queued", 0))
        key = re.sub(r" \(.*?/min.*?\)", "", text)
        if key != self.last:
            self.last = key
            self.progress.note(text)


def describe_workers(summary: dict[str, int] | None, queued: int) -> str:
    """Running and starting workers, and why jobs may wait: a cold start, no capacity, or a crash loop."""
    if summary is None:
        return "unknown"
    parts = [f"{summary.get('running', 0)} running"]
    if summary.get("initializing"):
        parts.append(f"{summary['initializing']} starting (cold start)")
    if summary.get("idle"):
        parts.append(f"{summary['idle']} idle")
    if summary.get("throttled"):
        parts.append(f"{summary['throttled']} throttled (no GPU free for them)")
    if summary.get("unhealthy"):
        parts.append(f"{summary['unhealthy']} unhealthy (crash loop? see `autopod endpoint.info`)")
    if queued and not any(summary.get(k) for k in ("running", "initializing", "idle", "throttled", "unhealthy")):
        parts.append("none yet: scaling from zero, or no capacity")
    return ", ".join(parts)


class EndpointRunner:
    """Submits a batch's prompts to ``/run`` (bounded), follows their jobs, and fetches their outputs."""

    def __init__(self, ledger: Ledger, batch: BatchRow, client: Any, endpoint: Endpoint, *, progress: Progress,
                 payloads: Payloads, max_in_flight: int = MAX_IN_FLIGHT,
                 workers: Callable[[], dict[str, int] | None] | None = None, sleep: Callable[[float], None] = time.sleep):
        self.ledger, self.batch, self.client, self.endpoint = ledger, batch, client, endpoint
        self.progress, self.payloads = progress, payloads
        self.max_in_flight = max(1, max_in_flight)
        self.workers = workers or (lambda: None)
        self.sleep = sleep
        self.active: dict[str, PromptRow] = {}  # job id -> row
        self.total = len(ledger.prompts(batch.id))
        self.root = Path(batch.output_dir)
        self._workers: dict[str, int] | None = None
        self._workers_at = 0.0

    def _label(self, row: PromptRow) -> str:
        return f"prompt {row.idx + 1}/{self.total}" + (f" ({row.prompt_id[:8]})" if row.prompt_id else "")

    # -- submitting

    def submit(self, row: PromptRow) -> None:
        """``/run``; the job id recorded as soon as RunPod answers. A lost answer: ``unknown``, not sent again."""
        from ..runpod.jobapi import JobAPIError, SubmitLost

        body = self.payloads.build(row.prompt)
        self.ledger.update(row.batch_id, row.idx, status="submitting", prompt_id=None, submitted_at=time.time(),
                           target_id=self.endpoint.target_id, target_name=self.endpoint.name,
                           attempts=row.attempts + 1, remote={})
        try:
            answer = self.client.run(body)
        except SubmitLost as e:
            self.ledger.update(row.batch_id, row.idx, status="unknown",
                               error={"summary": f"the answer to /run was lost ({e}); the job may exist and run: "
                                                 f"it is not sent again", "submit_lost": str(e)})
            self.progress.note(f"{self._label(row)}: submit answer lost; recorded as unknown, not sent again")
            return
        except JobAPIError:
            # RunPod surely did not take it (the client sends /run again only then): still to do.
            self.ledger.update(row.batch_id, row.idx, status="planned", submitted_at=None, target_id=None,
                               target_name=None)
            raise
        except BaseException:
            # Ctrl-C during the POST: the job may or may not exist.
            self.ledger.update(row.batch_id, row.idx, status="unknown",
                               error={"summary": "interrupted while /run was under way; the job may exist",
                                      "submit_lost": "interrupted"})
            raise
        job_id = str(answer["id"])
        status = str(answer.get("status") or "IN_QUEUE")
        self.ledger.update(row.batch_id, row.idx, prompt_id=job_id, status=STATES.get(status, "queued"),
                           remote={"status": status})
        self.active[job_id] = self.ledger.prompt(row.batch_id, row.idx)

    # -- following

    def follow(self, todo: list[PromptRow], *, deadline: float | None = None) -> None:
        """Submit ``todo`` (bounded) and follow every active job until all are final."""
        import collections

        queue = collections.deque(todo)
        bar = BatchProgress(self.progress, self.total, sum(1 for r in self.ledger.prompts(self.batch.id)
                                                           if r.status in FINAL))
        delay = POLL_MIN_S
        while True:
            while queue and len(self.active) < self.max_in_flight:
                self.submit(queue.popleft())
            changed = self.poll()
            counts = self.counts()
            bar.show(counts, self._workers_now(counts.get("running", 0)))
            if not queue and not self.active:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            delay = POLL_MIN_S if changed else min(POLL_MAX_S, delay * 1.5)
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            self.sleep(delay)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.ledger.prompts(self.batch.id):
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def _workers_now(self, running: int = 0) -> dict[str, int] | None:
        """The workers list, read every WORKERS_EVERY_S, or sooner when it cannot be right: more jobs running
        than workers it counts as up (a cold start just ended)."""
        now = time.monotonic()
        w = self._workers or {}
        stale = self._workers is not None and running > (w.get("running") or 0) + (w.get("idle") or 0)
        if now - self._workers_at >= WORKERS_EVERY_S or (stale and now - self._workers_at >= 0.5):
            self._workers_at = now
            self._workers = self.workers()
        return self._workers

    def poll(self) -> bool:
        """``/status`` of each active job; a final one is finished (outputs fetched). Whether anything changed."""
        from ..runpod.jobapi import JobGone

        changed = False
        self._round = getattr(self, "_round", -1) + 1
        queued = [j for j, r in self.active.items() if r.status != "running"]
        ahead = self._ahead()
        skip = set() if self._round % QUEUED_EVERY == 0 else set(queued[ahead:])
        for job_id, row in list(self.active.items()):
            if job_id in skip:
                continue
            try:
                job = self.client.status(job_id)
            except JobGone as e:
                self.gone(row, str(e))
                changed = True
                continue
            status = str(job.get("status") or "")
            if status in TERMINAL:
                self.finish(row, job)
                changed = True
            elif STATES.get(status) and STATES[status] != row.status:
                fields: dict[str, Any] = {"status": STATES[status], "remote": {**row.remote, "status": status}}
                if STATES[status] == "running":
                    fields["started_at"] = time.time()
                self.ledger.update(row.batch_id, row.idx, **fields)
                self.active[job_id] = self.ledger.prompt(row.batch_id, row.idx)
                changed = True
        return changed

    def _ahead(self) -> int:
        """How many queued jobs may start next: RunPod's queue is first in, first out, so the oldest ones, as
        many as there are workers (or QUEUED_AHEAD)."""
        w = self._workers or {}
        return max(QUEUED_AHEAD, sum(int(w.get(k) or 0) for k in ("running", "idle", "initializing")))

    def gone(self, row: PromptRow, why: str) -> None:
        """RunPod no longer has the job (its result expired, or its ttl ended): ``--resume`` runs it again."""
        self.ledger.update(row.batch_id, row.idx, status="error", finished_at=time.time(),
                           error={"summary": "RunPod no longer has this job: its result expired (RunPod keeps it 30 "
                                             "minutes) or its ttl ended; `--resume` runs it again",
                                  "expired": True, "detail": why})
        self.active.pop(row.prompt_id or "", None)
        self.progress.note(f"{self._label(row)}: expired on RunPod; `comfy.run --resume {self.batch.id}` runs it again")

    def finish(self, row: PromptRow, job: dict[str, Any]) -> None:
        """A final job: record how it ended, fetch its outputs, write the sidecar."""
        status = str(job.get("status"))
        remote = {**row.remote, "status": status, "delay_ms": job.get("delayTime"),
                  "execution_ms": job.get("executionTime"), "worker_id": job.get("workerId")}
        now = time.time()
        execution = job.get("executionTime")
        started = now - execution / 1000 if isinstance(execution, (int, float)) else (row.started_at or now)
        fields: dict[str, Any] = {"remote": remote, "finished_at": now, "started_at": started}
        output = job.get("output")
        error: dict[str, Any] | None = None
        state = STATES[status]
        if status == "COMPLETED":
            images = output.get("images") if isinstance(output, dict) else None
            if not isinstance(output, dict) or (not isinstance(images, list) and output.get("status") != "success_no_images"):
                state, error = "error", {"summary": "RunPod says the job completed, but it returned no output (the "
                                                    "worker may have failed to post its result); `--resume` runs "
                                                    "it again", "no_output": True}
            elif output.get("errors"):
                error = {"worker_errors": [str(e) for e in output["errors"]]}
                for e in output["errors"]:
                    self.progress.note(f"{self._label(row)}: warning from the worker: {e}")
        elif status == "FAILED":
            kind, lines = error_lines(job, row.prompt, row.node_paths)
            state = kind
            error = {"summary": "; ".join(lines), "lines": lines, "worker_error": job.get("error")}
        elif status == "TIMED_OUT":
            error = {"summary": "timed out on RunPod (policy.executionTimeout or ttl from --timeout, or the "
                                "endpoint's own timeout)", "timed_out": True}
        elif status == "CANCELLED":
            error = {"summary": "cancelled on RunPod"}
        fields.update(status=state, error=error)
        self.ledger.update(row.batch_id, row.idx, **fields)
        row = self.ledger.prompt(row.batch_id, row.idx)
        saved = self.fetch(row, output if status == "COMPLETED" and isinstance(output, dict) else {})
        self.active.pop(row.prompt_id or "", None)
        row = self.ledger.prompt(row.batch_id, row.idx)
        unsaved = (row.error or {}).get("fetch")
        detail = f"{len(saved)} file(s)" if state == "success" else (row.error or {}).get("summary", "")
        if unsaved:
            detail = f"{detail}; {len(unsaved)} file(s) not saved: {unsaved[0]}"
        shown = "failed" if unsaved and state == "success" else state
        if state == "rejected":
            for line in (row.error or {}).get("lines") or []:
                self.progress.note(f"{self._label(row)}: rejected: {line}")
            detail = "ComfyUI refused the workflow"
        self.progress.finish(self._label(row), shown, detail)

    def fetch(self, row: PromptRow, output: dict[str, Any]) -> list[dict[str, Any]]:
        """Each returned image to disk (not already saved), then the sidecar, once everything is there."""
        from ..core.state import exclusive

        pid = row.prompt_id or ""
        with exclusive("comfy-fetch", pid, timeout=600, what=f"save the outputs of job {pid}"):
            done = self.ledger.saved_outputs(pid)
            saved = list(done.values())
            unsaved: list[str] = []
            for item in output.get("images") or []:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                node = output_node(item["filename"], row.prompt)
                key = (node, "images", item["filename"], "", "output")
                if key in done:
                    continue
                spec = row.prompt.get(node) or {}
                try:
                    dest = target_path(self.root, self.batch.template, job=row.job or Path(row.workflow).stem,
                                       batch=self.batch.id, index=row.idx, prompt_id=pid, node=node,
                                       title=(spec.get("_meta") or {}).get("title") or spec.get("class_type") or node,
                                       kind="images", filename=item["filename"], subfolder="", type="output",
                                       pod=self.endpoint.name)
                    data = item.get("data")
                    if not isinstance(data, str):
                        raise ComfyError("the worker sent no data for it")
                    if item.get("type") == "s3_url":
                        path, size, digest = save_stream(dest, lambda f, u=data: download_to(u, f))
                    else:
                        path, size, digest = save_stream(dest, lambda f, d=data: decode_to(d, f))
                except (ComfyError, UsageError, OSError) as e:
                    unsaved.append(f"{item['filename']}: {e}")
                    continue
                entry = {"filename": item["filename"], "subfolder": "", "type": "output"}
                self.ledger.add_output(pid, node, "images", entry, str(path), size, digest)
                saved.append({"node_id": node, "kind": "images", **entry, "path": str(path), "bytes": size,
                              "sha256": digest})
            self.ledger.finish_fetch(row, unsaved, lambda final: self._sidecar(final, saved))
        return saved

    def _sidecar(self, row: PromptRow, saved: list[dict[str, Any]]) -> None:
        from .run import _prefix, _safe_job

        remote = row.remote or {}
        execution_ms = remote.get("execution_ms")
        price = self.endpoint.price_per_s
        cost = (round(price * execution_ms / 1000, 6) if isinstance(price, (int, float))
                and isinstance(execution_ms, (int, float)) else None)
        folder = Path(saved[0]["path"]).parent if saved else self.root / _safe_job(row)
        doc = {
            "prompt_id": row.prompt_id, "job_id": row.prompt_id, "batch": row.batch_id, "index": row.idx,
            "status": row.status, "workflow": row.workflow, "workflow_hash": row.workflow_hash, "prompt": row.prompt,
            "overrides": row.overrides, "seeds": row.seeds,
            "endpoint": {**self.endpoint.to_dict(), "worker_id": remote.get("worker_id")},
            "timings": {"submitted_at": row.submitted_at, "started_at": row.started_at,
                        "finished_at": row.finished_at, "delay_ms": remote.get("delay_ms"),
                        "execution_ms": execution_ms},
            "outputs": [{k: o[k] for k in ("node_id", "kind", "filename", "subfolder", "type", "path", "bytes",
                                           "sha256") if k in o} for o in saved],
            "cost_usd": cost,
            "cost_basis": ("the endpoint's serverless price per second x executionTime" if cost is not None
                           else "unknown: no price or no executionTime"),
            "error": row.error,
        }
        write_sidecar(folder / f"{_prefix(row)}.json", doc)

    # -- Ctrl-C

    def cancel_all(self) -> str:
        """``/cancel`` each of this run's jobs not final; record them cancelled (queued) or interrupted."""
        from ..runpod.jobapi import JobAPIError

        with signals.shielded():
            queued = running = failed = 0
            # Queued ones first, so none of them starts while the running ones are cancelled.
            for job_id, row in sorted(self.active.items(), key=lambda kv: kv[1].status == "running"):
                try:
                    self.client.cancel(job_id)
                except JobAPIError as e:
                    failed += 1
                    log.info("cancel of %s failed: %s", job_id, e)
                    continue
                was_running = row.status == "running"
                running += was_running
                queued += not was_running
                self.ledger.update(row.batch_id, row.idx, status="interrupted" if was_running else "cancelled",
                                   finished_at=time.time(), remote={**row.remote, "status": "CANCELLED"})
                self.active.pop(job_id, None)
        note = f"cancelled {queued} queued and {running} running job(s) on endpoint {self.endpoint.name}"
        if running:
            note += (" (a running worker-comfyui prompt is not interrupted inside its worker: it may stay busy "
                     "until that prompt ends)")
        if failed:
            note += f"; {failed} could not be cancelled"
        unknown = sum(1 for r in self.ledger.prompts(self.batch.id) if r.status == "unknown")
        if unknown:
            note += f"; {unknown} submit(s) whose answer was lost cannot be cancelled (no job id)"
        return note


# -- the entry points ------------------------------------------------------------------------------------------


def render(opts: Any, *, progress: Progress | None = None) -> dict[str, Any]:
    """``comfy.run --endpoint NAME``: plan, record, submit, follow, fetch; or ``--resume`` of an endpoint batch."""
    progress = progress or Progress()
    deadline = time.monotonic() + opts.timeout if opts.timeout else None
    if opts.resume:
        return resume(opts, progress=progress, deadline=deadline)
    endpoint = resolve(opts.endpoint)
    planned, template, payloads = plan_endpoint(opts, endpoint, progress.note)
    if opts.dry_run:
        from .run import dry_run_report

        return dry_run_report(planned)
    from .run import batch_name

    with Ledger.open() as ledger, contextlib.ExitStack() as held:
        batch = ledger.new_batch(
            batch_name(planned), target_id=endpoint.target_id, target_name=endpoint.name,
            output_dir=str(Path(opts.output_dir).resolve()), template=template,
            options={"endpoint": endpoint.to_dict(), "max_queued": opts.max_queued,
                     "uploads": [[str(p), n] for p, n in payloads.uploads], "policy": payloads.policy},
            prompts=[p.as_ledger() for p in planned],
            claim=lambda bid: held.enter_context(hold(bid, "comfy.run --endpoint")))
        for i, p in enumerate(planned):
            ledger.update(batch.id, i, prompt=p.prompt)
        progress.note(f"batch {batch.id}: {len(planned)} prompt(s) on endpoint {endpoint.name} ({endpoint.id})")
        return _execute(opts, ledger, batch, endpoint, payloads, progress, ledger.prompts(batch.id), deadline)


def plan_endpoint(opts: Any, endpoint: Endpoint, note: Callable[[str], None]) -> tuple[list[Any], str, Payloads]:
    """The batch planned on the endpoint's node definitions, its inputs named, and every job's size checked."""
    from .run import plan, wire_uploads

    object_info = node_definitions(endpoint, getattr(opts, "object_info", None), note)
    planned, template = plan(opts, object_info, note=note)
    warn_unreturned(planned, note, previews=opts.previews)
    uploads: dict[Path, str] = {}

    def name(path: Path, digest: str) -> tuple[str, str]:
        uploads[path] = input_name(path, digest)
        return uploads[path], ""

    wire_uploads(planned, upload=None if opts.dry_run else name)
    check_volume_models(endpoint, planned, note)
    payloads = Payloads(list(uploads.items()), policy_for(opts.timeout))
    check_sizes(planned, payloads)
    return planned, template, payloads


def check_volume_models(endpoint: Endpoint, planned: list[Any], note: Callable[[str], None]) -> None:
    """The models the run's loaders name, checked against what the endpoint's workers see on its network volume
    (worker-comfyui reads only some folders, under ``models/``) when autopod can list the volume: through a running
    pod that has it attached. Otherwise a line says they were not checked. Missing ones: a line each, exit 1."""
    from ..core.errors import AutopodError
    from .needs import loader_needs

    wanted = {(n.folder, n.name): n for p in planned for n in loader_needs(p.prompt, p.workflow)}
    if not wanted:
        return
    skipped = f"the {len(wanted)} model(s) this run names were not checked: "
    if not endpoint.volumes:
        note(skipped + f"endpoint {endpoint.name} has no network volume (they must be in its image)")
        return
    volume = endpoint.volumes[0]
    from ..models import remote
    from ..models.ops import _base
    from ..runpod.api import connect
    from ..runpod.registry import list_pods

    pods = [p for p in list_pods(connect()) if p.volume_id == volume and p.status == "RUNNING" and p.ssh_direct]
    if not pods:
        note(skipped + f"no running pod has volume {volume} attached (autopod reads a volume through a pod); the "
                       f"worker's ComfyUI checks them")
        return
    try:
        doc = remote.call(pods[0], {"op": "list", **_base(pods[0]), "folder": None, "comfy_wait_s": 0})
    except AutopodError as e:
        note(skipped + f"listing volume {volume} through pod {pods[0].name} failed ({e})")
        return
    listed = {(m.get("folder"), m.get("name")): m for m in doc.get("models") or []}
    lacking = []
    for key, need in wanted.items():
        m = listed.get(key)
        if m is not None and (m.get("worker") or {}).get("sees"):
            continue
        why = ("not on the volume" if m is None else
               f"on the volume, but the workers will not see it: {(m.get('worker') or {}).get('why') or 'unknown'}")
        note(f"missing {need.label} ({need.where}): {why}")
        lacking.append({**need.to_dict(), "why": why})
    if lacking:
        raise ComfyError(f"endpoint {endpoint.name}'s workers lack {len(lacking)} model(s) this run needs, listed "
                         f"above (worker-comfyui would refuse the prompt): `autopod model.pull URL --folder F --pod "
                         f"{pods[0].name}` puts a model where pods and workers both find it",
                         data={"missing": lacking})


def _execute(opts: Any, ledger: Ledger, batch: BatchRow, endpoint: Endpoint, payloads: Payloads,
             progress: Progress, todo: list[PromptRow], deadline: float | None,
             follow: list[PromptRow] | None = None) -> dict[str, Any]:
    client = job_client(endpoint)
    runner = EndpointRunner(ledger, batch, client, endpoint, progress=progress, payloads=payloads,
                            max_in_flight=getattr(opts, "per_member", None) or MAX_IN_FLIGHT,
                            workers=lambda: workers_summary(endpoint))
    for r in follow or []:
        runner.active[r.prompt_id] = r  # type: ignore[index]
    try:
        with signals.handling():
            runner.follow([r for r in todo if r.status == "planned"], deadline=deadline)
    except KeyboardInterrupt as e:
        sig = e if isinstance(e, Interrupted) else Interrupted()
        note = runner.cancel_all()
        raise AutopodError(f"{sig.what}: {note}; finish the batch with `autopod comfy.run --resume {batch.id}`",
                           exit_code=sig.exit_code, data={"batch": batch.id}) from None
    except TimeoutError:
        return finish_report(ledger, batch, timed_out=opts.timeout)
    except AutopodError as e:
        if e.exit_code != ExitCode.FAILED:
            raise
        raise type(e)(f"{e}; the jobs sent go on: `autopod comfy.watch {batch.id}` follows them, `autopod comfy.run "
                      f"--resume {batch.id}` also sends what was not", exit_code=e.exit_code,
                      data={**(e.data or {}), "batch": batch.id}) from None
    return finish_report(ledger, batch)


def finish_report(ledger: Ledger, batch: BatchRow, *, timed_out: float | None = None) -> dict[str, Any]:
    from .run import _report

    report = _report(ledger, batch)
    report["endpoint"] = batch.target_name
    unknown = sum(1 for p in report["prompts"] if p["status"] == "unknown")
    if unknown:
        report["msg"] += (f"; {unknown} submit(s) whose answer was lost (status unknown: each may have run; "
                          f"not sent again)")
    expired = sum(1 for r in ledger.prompts(batch.id) if (r.error or {}).get("expired") or (r.error or {}).get("no_output"))
    if expired:
        report["msg"] += f"; {expired} result(s) RunPod no longer has: `autopod comfy.run --resume {batch.id}` runs them again"
    if timed_out:
        report.update(exit_code=int(ExitCode.FAILED), timed_out=True)
        report["msg"] += (f"; stopped waiting after {timed_out:g}s: the jobs go on until their ttl, "
                          f"`autopod comfy.watch {batch.id}` follows them")
    return report


def _rerun(r: PromptRow) -> bool:
    """Whether ``--resume`` sends a prompt again: never sent, cancelled or interrupted, or a result RunPod no
    longer has (expired, or completed without output). Failed and rejected ones would fail again."""
    err = r.error or {}
    return (r.status in ("planned", "cancelled", "interrupted") or
            (r.status == "error" and (err.get("expired") or err.get("no_output"))))


def resume(opts: Any, *, progress: Progress, deadline: float | None) -> dict[str, Any]:
    """Finish an endpoint batch: jobs RunPod still has are followed (finished ones fetched), results it no
    longer has and prompts never sent or cancelled are submitted. Unknown submits are not sent again, unless
    ``--resubmit-unknown`` says the user has checked (RunPod cannot be asked for a job without its id)."""
    from .run import replan

    with Ledger.open() as ledger, contextlib.ExitStack() as held:
        batch, _ = ledger.find(opts.resume)
        held.enter_context(hold(batch.id, "comfy.run --resume --endpoint"))
        batch, rows = ledger.find(opts.resume)
        endpoint = endpoint_of(batch)
        if getattr(opts, "endpoint", None) and opts.endpoint not in (endpoint.name, endpoint.id):
            raise UsageError(f"batch {batch.id} ran on endpoint {endpoint.name}; resume it there (or without --endpoint)")
        uploads = [(Path(p), n) for p, n in batch.options.get("uploads") or []]
        payloads = Payloads(uploads, batch.options.get("policy") or policy_for(opts.timeout))
        client = job_client(endpoint)
        follow, todo = [], []
        for r in rows:
            if r.status == "submitting" and not r.prompt_id:  # killed between /run and its answer
                ledger.update(r.batch_id, r.idx, status="unknown",
                              error={"summary": "this process ended while /run was under way; the job may exist",
                                     "submit_lost": "ended"})
                r = ledger.prompt(r.batch_id, r.idx)
            if r.status == "unknown":
                if getattr(opts, "resubmit_unknown", False):
                    todo.append(replan(ledger, r))
                continue
            if r.prompt_id and (r.status in ("submitting", "queued", "running")
                                or (r.status in FINAL and not r.fetched_at and not _rerun(r))):
                follow.append(r)
            elif _rerun(r):
                todo.append(replan(ledger, r))
        runner = EndpointRunner(ledger, batch, client, endpoint, progress=progress, payloads=payloads,
                                workers=lambda: workers_summary(endpoint))
        # What finished while nobody watched is fetched at once; a job RunPod dropped is sent again.
        still = []
        for r in follow:
            runner.active[r.prompt_id] = r  # type: ignore[index]
        runner.poll()
        for r in follow:
            now = ledger.prompt(r.batch_id, r.idx)
            if _rerun(now) and (now.error or {}).get("expired"):
                todo.append(replan(ledger, now))
            elif r.prompt_id in runner.active:
                still.append(now)
        runner.active.clear()
        unknown = sum(1 for r in ledger.prompts(batch.id) if r.status == "unknown")
        if not still and not todo:
            report = finish_report(ledger, batch)
            report["changed"] = bool(follow)
            if not follow:
                report["msg"] = f"nothing left to do: {report['msg']}"
            return report
        progress.note(f"batch {batch.id}: following {len(still)} job(s) on endpoint {endpoint.name}, submitting "
                      f"{len(todo)}" + (f"; {unknown} unknown submit(s) are not sent again" if unknown else ""))
        return _execute(opts, ledger, batch, endpoint, payloads, progress, todo, deadline, follow=still)


def watch(batch_ref: str, *, timeout: float | None, progress: Progress) -> dict[str, Any]:
    """``comfy.watch`` of an endpoint batch: follow its jobs and fetch outputs as they finish; prompts never
    sent are left for ``--resume``."""
    deadline = time.monotonic() + timeout if timeout else None
    with Ledger.open() as ledger:
        batch, rows = ledger.find(batch_ref)
        endpoint = endpoint_of(batch)
        runner = EndpointRunner(ledger, batch, job_client(endpoint), endpoint, progress=progress,
                                payloads=Payloads([], None), workers=lambda: workers_summary(endpoint))
        for r in rows:
            if r.prompt_id and r.status not in ("unknown",) and not (r.status in FINAL and r.fetched_at):
                if not (r.status in FINAL and _rerun(r)):
                    runner.active[r.prompt_id] = r
        if not runner.active:
            report = finish_report(ledger, batch)
            report.update(changed=False, msg=f"nothing of batch {batch.id} is running or left to fetch; {report['msg']}")
            return report
        progress.note(f"batch {batch.id}: following {len(runner.active)} job(s) on endpoint {endpoint.name}")
        try:
            with signals.handling():
                runner.follow([], deadline=deadline)
        except KeyboardInterrupt as e:
            sig = e if isinstance(e, Interrupted) else Interrupted()
            report = finish_report(ledger, batch)
            report.update(exit_code=sig.exit_code, msg=f"stopped watching; the jobs go on: {report['msg']}")
            return report
        except TimeoutError:
            pass
        return finish_report(ledger, batch)


def fetch(batch_ref: str, *, progress: Progress) -> dict[str, Any]:
    """``comfy.fetch`` of an endpoint batch: each finished job's outputs not on disk yet, asked of RunPod
    once; a result RunPod no longer has is reported as such."""
    from ..runpod.jobapi import JobGone

    with Ledger.open() as ledger:
        batch, rows = ledger.find(batch_ref)
        endpoint = endpoint_of(batch)
        runner = EndpointRunner(ledger, batch, job_client(endpoint), endpoint, progress=progress,
                                payloads=Payloads([], None))
        before = sum(len(ledger.saved_outputs(r.prompt_id)) for r in rows if r.prompt_id)
        waiting = gone = 0
        for r in rows:
            if not r.prompt_id or r.status == "unknown" or (r.fetched_at and r.status in FINAL) or _rerun(r):
                continue
            try:
                job = runner.client.status(r.prompt_id)
            except JobGone as e:
                runner.gone(r, str(e))
                gone += 1
                continue
            if str(job.get("status")) in TERMINAL:
                runner.finish(r, job)
            else:
                waiting += 1
        report = finish_report(ledger, batch)
        after = sum(len(ledger.saved_outputs(r.prompt_id)) for r in ledger.prompts(batch.id) if r.prompt_id)
        report["changed"] = after > before
        report["fetched"] = after - before
        report["msg"] = (f"fetched {after - before} file(s) of batch {batch.id}"
                         + (f"; {waiting} job(s) not finished yet" if waiting else "")
                         + (f"; {gone} result(s) RunPod no longer has (`autopod comfy.run --resume {batch.id}` runs "
                            f"them again)" if gone else ""))
        return report


def cancel(ledger: Ledger, batch: BatchRow, rows: list[PromptRow]) -> dict[str, Any]:
    """``comfy.cancel`` of an endpoint batch's prompts (or one of them): ``/cancel`` each job not final."""
    endpoint = endpoint_of(batch)
    runner = EndpointRunner(ledger, batch, job_client(endpoint), endpoint, progress=Progress(enabled=False),
                            payloads=Payloads([], None))
    for r in rows:
        if r.prompt_id and r.status in ("submitting", "queued", "running"):
            runner.active[r.prompt_id] = r
    running = [j for j, r in runner.active.items() if r.status == "running"]
    queued = [j for j, r in runner.active.items() if r.status != "running"]
    note = runner.cancel_all() if runner.active else "nothing of that is queued or running"
    return {"changed": bool(running or queued), "interrupted": running, "removed": queued, "msg": note}


def purge(endpoint: Endpoint) -> str:
    """``--then purge``: empty the endpoint's queue (every queued job on it, not only this batch's)."""
    answer = job_client(endpoint).purge_queue()
    return f"purged endpoint {endpoint.name}'s queue ({answer.get('removed', 0)} job(s) removed)"

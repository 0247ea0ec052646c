"""Models on a pod's volume: pull, list, remove, follow; once per volume for a fleet; declared ones
converged by ``pod.up``; what a workflow lacks, fetched before it runs.

Every operation is one SSH session into the pod running ``puller.py`` (see ``remote``): the
download happens in the pod, at the data centre's speed, and goes on when this machine sleeps.
This side checks the input, reads the tokens, draws the progress bar and renders the outcome.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..core.errors import AutopodError, Interrupted, UsageError
from ..core.fanout import Cancel, Result, count_line
from ..core.output import Outcome, safe_text
from ..core.ui import progress, warn
from ..runpod.records import Pod
from ..runpod.access import running_pod as _running
from ..runpod.registry import get_pod, resolve_pod
from . import remote
from .folders import PT_EXTENSIONS, listed_by_comfyui
from .sources import ModelRef, check_folder, model_ref
from .tokens import tokens as read_tokens

PARALLEL = 4  # pulls at once into one pod (pod.up, comfy.run --pull-missing)
STALL_S = 30.0
TRIES = 5


def human(n: Any) -> str:
    if n is None:
        return "size unknown"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return str(n)


def tuning() -> dict[str, Any]:
    """How long a silent server is waited for, and how many tries in a row may bring nothing
    (``AUTOPOD_PULL_STALL_S``, ``AUTOPOD_PULL_TRIES``)."""
    from ..core.flags import number

    stall = number(os.environ.get("AUTOPOD_PULL_STALL_S") or None, "AUTOPOD_PULL_STALL_S", float, minimum=0.2,
                   maximum=3600)
    tries = number(os.environ.get("AUTOPOD_PULL_TRIES") or None, "AUTOPOD_PULL_TRIES", int, minimum=1, maximum=100)
    return {"stall_s": stall or STALL_S, "attempts": tries or TRIES}


def _base(pod: Pod) -> dict[str, Any]:
    return {"mount": pod.volume_mount or "/workspace", "comfy_address": pod.comfy_address, "pod_id": pod.id}


def running_pod(api: Any, ref: str | Pod | None) -> Pod:
    return _running(api, ref, why="models are pulled by the pod itself, so it must run")


# -- progress on stderr ----------------------------------------------------------------------------------


class PullBar:
    """A byte bar on a terminal; elsewhere a line now and then (every 10 %, or 10 s)."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.bars = enabled if enabled is not None else _tty()
        self.bar: Any = None
        self.last_line = (0.0, -1)

    def event(self, doc: dict[str, Any]) -> None:
        if doc.get("event") == "note":
            self.note(str(doc.get("msg") or ""))
            return
        if doc.get("event") != "progress":
            return
        done, total = int(doc.get("bytes") or 0), doc.get("total")
        if self.bars:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1000,
                                desc=safe_text(self.label), file=sys.stderr, dynamic_ncols=True, leave=True)
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
            if doc.get("status") == "verifying":
                self.bar.set_postfix_str("checking what was downloaded before")
            return
        pct = int(done * 100 / total) if total else -1
        now = time.monotonic()
        if pct // 10 != self.last_line[1] // 10 or now - self.last_line[0] >= 10:
            speed = f", {human(doc.get('speed'))}/s" if doc.get("speed") else ""
            of = f" of {human(total)} ({pct}%)" if total else ""
            progress(f"{self.label}: {human(done)}{of}{speed}")
            self.last_line = (now, pct)

    def note(self, msg: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(safe_text(f"{self.label}: {msg}"), file=sys.stderr)
        else:
            progress(f"{self.label}: {msg}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# -- pulling -----------------------------------------------------------------------------------------------


def pull_into(pod: Pod, ref: ModelRef, toks: dict[str, str], *, detach: bool = False,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """One model into one running pod's volume (the pod's program decides the path)."""
    req = {"op": "pull", **_base(pod), **tuning(), "url": ref.url, "folder": ref.folder, "name": ref.name,
           "sha256": ref.sha256, "tokens": toks, "detach": detach}
    try:
        doc = remote.call(pod, req, on_event=on_event)
    except KeyboardInterrupt as e:
        sig = e if isinstance(e, Interrupted) else Interrupted()
        raise AutopodError(f"{sig.what}; a download that had started goes on in pod {pod.name} ({pod.id}): "
                           f"`autopod model.status --pod {pod.name}` shows it, the same `autopod model.pull` follows "
                           "it again", exit_code=sig.exit_code) from None
    return _outcome(pod, ref, doc)


def _outcome(pod: Pod, ref: ModelRef, doc: dict[str, Any]) -> Outcome:
    result = doc.get("result")
    job = doc.get("job") or {}
    data = {k: doc.get(k, job.get(k)) for k in ("folder", "name", "path", "size", "sha256", "verified",
                                               "sha256_source", "url", "listed", "downloaded", "resumed_from",
                                               "seconds")}
    data.update(pod=pod.id, pod_name=pod.name, volume=pod.volume_id, url=data.get("url") or ref.url)
    where = f"{data.get('folder')}/{data.get('name')}"
    on = f"pod {pod.name} ({pod.id})" + (f", volume {pod.volume_id}" if pod.volume_id else "")
    if result == "started" or result == "joined" and job.get("status") not in ("done", "failed"):
        data.update(status=job.get("status"), bytes=job.get("bytes"), total=job.get("total"))
        verb = "pulling" if result == "started" else "already pulling"
        return Outcome(result == "started", f"{verb} {where} in {on}; `autopod model.status --pod {pod.name}` shows "
                                            "how far it is", key="model", data=data)
    if data.get("listed") is False:
        warn(f"ComfyUI on pod {pod.name} does not list {where}: it lists only "
             f"{', '.join(sorted(PT_EXTENSIONS))} files" if not listed_by_comfyui(str(data.get("name")))
             else f"ComfyUI on pod {pod.name} does not list {where} yet")
    sha = data.get("sha256")
    check = (f"sha256 {sha[:12]}… verified ({data.get('sha256_source')})" if data.get("verified")
             else f"sha256 {sha[:12]}… (the source announced none to check)") if sha else ""
    if result == "changed":
        secs = float(data.get("seconds") or 0)
        rate = f", {human((data.get('downloaded') or 0) / secs)}/s" if secs > 0 else ""
        resumed = f", resumed at {human(data['resumed_from'])}" if data.get("resumed_from") else ""
        return Outcome(True, f"pulled {where} into {on}: {human(data.get('size'))}{resumed}, {check}, "
                             f"{secs:.1f} s{rate}", key="model", data=data)
    if result == "joined":
        return Outcome(False, f"{where} is on {on}: a pull that was already running fetched it "
                              f"({human(data.get('size'))}, {check})", key="model", data=data)
    return Outcome(False, f"{where} is already on {on} ({human(data.get('size'))}{', ' + check if check else ''})",
                   key="model", data=data)


def pull(api: Any, url: Any, *, folder: Any = None, name: Any = None, sha256: Any = None, pod: str | None = None,
         detach: bool = False) -> Outcome:
    """``model.pull URL --pod P``: one model onto the pod's volume, with a progress bar."""
    ref = model_ref(url, folder=folder, name=name, sha256=sha256)
    toks = read_tokens()
    target = running_pod(api, pod)
    bar = PullBar(ref.name or ref.label)
    try:
        return pull_into(target, ref, toks, detach=detach, on_event=bar.event)
    finally:
        bar.close()


def pull_fleet(fleet: str, url: Any, *, folder: Any = None, name: Any = None, sha256: Any = None,
               detach: bool = False) -> tuple[list[Result], str]:
    """``model.pull --fleet F``: once per network volume among the members; a member that shares the
    volume reports the pull of the member that made it. Members without a volume each pull."""
    from ..runpod.api import connect as connect_api
    from ..runpod.fleet import members, on_members

    ref = model_ref(url, folder=folder, name=name, sha256=sha256)
    toks = read_tokens()
    api = connect_api()
    pods = members(api, fleet)
    leaders: dict[str, Pod] = {}
    for p in pods:
        if p.status == "RUNNING" and p.ssh_direct:
            leaders.setdefault(p.volume_id or p.id, p)
    done = {k: threading.Event() for k in leaders}
    outcomes: dict[str, Result] = {}

    def one(pod: Pod, cancel: Cancel) -> Result:
        key = pod.volume_id or pod.id
        leader = leaders.get(key)
        if leader is None:
            return Result.failed(pod.name, f"pod {pod.name} ({pod.id}) is {pod.status} and no running member "
                                           f"attaches {'volume ' + pod.volume_id if pod.volume_id else 'its disk'}; "
                                           f"`autopod pod.start --fleet {fleet}` starts it", data={"pod": pod.id})
        if leader.id == pod.id:
            try:
                res = Result.of(pod.name, pull_into(pod, ref, toks, detach=detach))
            except AutopodError as e:
                res = Result.failed(pod.name, str(e), e.exit_code, e.data)
            outcomes[key] = res
            done[key].set()
            return res
        while not done[key].wait(0.2):
            cancel.check()
        first = outcomes[key]
        if not first.ok:
            return Result.failed(pod.name, f"pod {pod.name} shares volume {pod.volume_id} with {leader.name}, whose "
                                           "pull failed", data={"pod": pod.id})
        return Result(pod.name, True, f"pod {pod.name} ({pod.id}) shares volume {pod.volume_id} with {leader.name}: "
                                      f"{first.msg}", False,
                      {"member": pod.name, "changed": False, "status": "ok", "shared_with": leader.name,
                       "model": first.doc.get("model")})

    results = on_members(fleet, one, api=api)
    pulls = sum(1 for r in results if r.changed)
    return results, f"fleet {fleet}: {count_line(results)}; {len(leaders)} volume(s) or disk(s), {pulls} download(s)"


# -- what is there ---------------------------------------------------------------------------------------


def list_models(api: Any, ref: str | None, folder: Any = None) -> list[dict[str, Any]]:
    pod = running_pod(api, ref)
    doc = remote.call(pod, {"op": "list", **_base(pod), "folder": check_folder(folder) if folder else None})
    return [{**m, "pod": pod.id} for m in doc.get("models") or []]


def worker_gaps(api: Any, volume_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """The model files on ``volume_id`` that a Serverless worker (worker-comfyui) would not see, each with
    why; read through a running pod that has the volume attached. (files, None), or ([], why it could not
    look)."""
    from ..runpod.registry import list_pods

    pods = [p for p in list_pods(api) if p.volume_id == volume_id and p.status == "RUNNING" and p.ssh_direct]
    if not pods:
        return [], (f"the models on volume {volume_id} were not checked: no running pod has it attached (autopod "
                    f"reads a volume through a pod; `autopod pod.up --volume-id {volume_id}`, then "
                    "`autopod endpoint.up` again)")
    pod = pods[0]
    try:
        doc = remote.call(pod, {"op": "list", **_base(pod), "folder": None, "comfy_wait_s": 0})
    except AutopodError as e:
        return [], f"the models on volume {volume_id} were not checked through pod {pod.name}: {e}"
    unseen = [{"folder": m.get("folder"), "name": m.get("name"), "path": m.get("path"),
               "why": (m.get("worker") or {}).get("why") or "unknown"}
              for m in doc.get("models") or [] if not (m.get("worker") or {}).get("sees")]
    return unseen, None


def endpoint_notes(api: Any, endpoint: dict[str, Any], volume_id: str | None) -> list[str]:
    """``endpoint.up`` on a volume: a line per model file its workers would not see, and why."""
    if not volume_id:
        return []
    unseen, skipped = worker_gaps(api, volume_id)
    if skipped:
        return [skipped]
    lines = [f"{m['folder']}/{m['name']}: Serverless workers will not see it: {m['why']}" for m in unseen]
    if lines:
        lines.append("`autopod model.pull URL --folder F` puts a model where pods and workers both find it (a "
                     "file pulled before moves there)")
    return lines


def remove(api: Any, ref: str | None, name: Any, *, folder: Any = None,
           confirm: Callable[[Pod, str], bool] | None = None) -> Outcome:
    n = str(name)
    if n.startswith("/") or ".." in n or any(c in n for c in "\\\n\r\t\0"):
        raise UsageError(f"invalid model name {n[:80]!r}: give the name ComfyUI lists, like x.safetensors")
    f = check_folder(folder) if folder else None
    pod = running_pod(api, ref)
    if confirm is not None and not confirm(pod, f"{f + '/' if f else ''}{n}"):
        raise UsageError(f"not removing {n} from pod {pod.name}")
    doc = remote.call(pod, {"op": "rm", **_base(pod), "name": n, "folder": f})
    if doc.get("result") == "absent":
        if doc.get("known"):
            return Outcome(False, f"{n} is not on pod {pod.name} ({pod.id}) any more", key="model",
                           data={"name": n, "folder": f, "pod": pod.id})
        near = doc.get("nearest") or []
        raise UsageError(f"pod {pod.name} ({pod.id}) has no model {n}" + (f" in {f}" if f else "")
                         + (f"; nearest: {', '.join(near)}" if near else "") + " (`autopod model.list` shows them)")
    return Outcome(True, f"removed {doc['folder']}/{doc['name']} ({human(doc.get('size'))}) from pod {pod.name} "
                         f"({pod.id})" + (f", volume {pod.volume_id}" if pod.volume_id else ""), key="model",
                   data={k: doc.get(k) for k in ("folder", "name", "path", "size")} | {"pod": pod.id})


def jobs(api: Any, ref: str | None) -> list[dict[str, Any]]:
    pod = running_pod(api, ref)
    return remote.call(pod, {"op": "status", **_base(pod)}).get("jobs") or []


# -- many models into one pod: pod.up, comfy.run --pull-missing -------------------------------------------


def ensure(pod: Pod, refs: Sequence[ModelRef], *, toks: dict[str, str] | None = None,
           parallel: int = PARALLEL) -> list[tuple[ModelRef, Outcome | AutopodError]]:
    """Pull each of ``refs`` into ``pod`` (at most ``parallel`` at once); a line per model on stderr.
    Returns each model's outcome or error, in order."""
    toks = read_tokens() if toks is None else toks

    def one(ref: ModelRef) -> Outcome | AutopodError:
        progress(f"pulling {ref.label} into pod {pod.name} ({ref.url})")
        try:
            out = pull_into(pod, ref, toks)
        except AutopodError as e:
            progress(f"{ref.label}: failed: {e}")
            return e
        progress(f"{out.status}: {out.msg}")
        return out

    if not refs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(refs))), thread_name_prefix="pull") as pool:
        return list(zip(refs, pool.map(one, refs)))


def summarize(results: Sequence[tuple[ModelRef, Outcome | AutopodError]]) -> tuple[bool, str, list[dict], list[str]]:
    """(changed, "2 model(s) pulled, 1 already there", documents, failure lines)."""
    pulled = sum(1 for _, r in results if isinstance(r, Outcome) and r.changed)
    there = sum(1 for _, r in results if isinstance(r, Outcome) and not r.changed)
    failed = [f"{ref.label}: {r}" for ref, r in results if isinstance(r, AutopodError)]
    docs = [({**r.data, "status": r.status} if isinstance(r, Outcome)
             else {"url": ref.url, "folder": ref.folder, "name": ref.name, "status": "failed", "msg": str(r)})
            for ref, r in results]
    parts = [f"{pulled} model(s) pulled"] if pulled else []
    if there:
        parts.append(f"{there} already there")
    if failed:
        parts.append(f"{len(failed)} failed")
    return bool(pulled), ", ".join(parts), docs, failed


def pull_many(pod_ids: Sequence[str], refs: Sequence[ModelRef]) -> None:
    """``comfy.run --pull-missing``: ``refs`` into the pods (one per network volume among them); any failure
    is one error naming each model that could not be pulled."""
    from ..core.errors import NotFound
    from ..runpod.api import connect as connect_api

    api = connect_api()
    leaders: dict[str, Pod] = {}
    for pid in pod_ids:
        try:
            pod = resolve_pod(api, pid)
        except NotFound:
            raise UsageError(f"--pull-missing pulls into a RunPod pod; {pid} is not one (an inventory host's models "
                             "are that machine's business)") from None
        leaders.setdefault(pod.volume_id or pod.id, pod)
    toks = read_tokens()
    failed: list[str] = []
    for pod in leaders.values():
        _changed, _line, _docs, bad = summarize(ensure(running_pod(api, pod), refs, toks=toks))
        failed += [f"pod {pod.name}: {b}" for b in bad]
    if failed:
        raise AutopodError(f"{len(failed)} model(s) could not be pulled, so nothing was run: " + "; ".join(failed))


def declared_refs(models: Sequence[dict[str, Any]]) -> list[ModelRef]:
    return [model_ref(m["url"], folder=m["folder"], name=m.get("name"), sha256=m.get("sha256"),
                      sha256_from="inventory", source="inventory") for m in models]


def hub_endpoints() -> dict[str, str]:
    """Where this machine reaches Hugging Face and Civitai: HF_ENDPOINT / CIVITAI_ENDPOINT, else the
    simulator's hub while it runs."""
    from ..core.config import active_simulator

    out = {k: os.environ[e] for k, e in (("hf", "HF_ENDPOINT"), ("civitai", "CIVITAI_ENDPOINT")) if os.environ.get(e)}
    try:
        sim = active_simulator() or {}
    except AutopodError:
        sim = {}
    for k, v in (sim.get("hub") or {}).items():
        if k in ("hf", "civitai"):
            out.setdefault(k, v)
    return out


def plan(pod: Pod | None, refs: Sequence[ModelRef], toks: dict[str, str]) -> list[dict[str, Any]]:
    """A dry run: for each model, whether the volume has it and what a pull would fetch (its size).
    A running pod answers itself; for a pod that does not run yet, this machine asks the source."""
    if pod is not None and pod.status == "RUNNING" and pod.ssh_direct:
        doc = remote.call(pod, {"op": "check", **_base(pod), "tokens": toks, "comfy_wait_s": 60,
                                "items": [r.request() for r in refs]})
        return list(doc.get("items") or [])
    from . import puller

    rows = []
    endpoints = hub_endpoints()
    for r in refs:
        row: dict[str, Any] = {"url": r.url, "folder": r.folder, "name": r.name}
        try:
            facts = puller.probe(r.url, toks, timeout=15.0, endpoints=endpoints)
            row.update(state="missing", name=r.name or facts.get("name_served") or puller.url_name(r.url),
                       size=facts.get("size") or facts.get("size_approx") or facts.get("length"))
        except puller.Fail as e:
            row.update(state="error", problem=e.msg)
        except OSError as e:
            row.update(state="unknown", problem=str(e))
        rows.append(row)
    return rows


def after_pod_up(api: Any, spec: Any, outcome: Outcome, dry_run: bool) -> Outcome:
    """``pod.up``'s last step: the volume gets the spec's ``models`` (changed per model pulled, ok when
    all are there). A dry run lists what would be pulled and its size."""
    models = list(getattr(spec, "models", None) or [])
    if not models or not isinstance(outcome.data, dict):
        return outcome
    refs = declared_refs(models)
    toks = read_tokens()
    pod_id = outcome.data.get("id")
    if dry_run:
        pod = get_pod(api, pod_id) if pod_id else None
        rows = plan(pod, refs, toks)
        todo = [r for r in rows if r.get("state") != "present"]
        size = sum(int(r.get("size") or 0) for r in todo)
        if todo:
            what = ", ".join(f"{r.get('folder')}/{r.get('name') or '?'} ({human(r.get('size'))})" for r in todo)
            note = f"; would pull {len(todo)} model(s), {human(size)}: {what}"
        else:
            note = f"; the {len(rows)} model(s) are on the volume"
        problems = [f"{r.get('folder')}/{r.get('name') or r.get('url')}: {r['problem']}" for r in rows
                    if r.get("problem")]
        for line in problems:
            warn(line)
        return Outcome(outcome.changed or bool(todo), outcome.msg + note, key=outcome.key, data=outcome.data,
                       extra={**outcome.extra, "models": rows, "dry_run": True})
    pod = get_pod(api, pod_id) if pod_id else None
    if pod is None:
        return outcome
    pod = running_pod(api, pod)
    results = ensure(pod, refs, toks=toks)
    changed, line, docs, failed = summarize(results)
    if failed:
        raise AutopodError(f"pod {pod.name} ({pod.id}) runs, but {len(failed)} of its {len(refs)} model(s) could not "
                           f"be pulled: " + "; ".join(failed), data={"pod": outcome.data, "models": docs})
    return Outcome(outcome.changed or changed, f"{outcome.msg}; models: {line}", key=outcome.key, data=outcome.data,
                   extra={**outcome.extra, "models": docs})


"""ComfyUI on a pod: is it up, and what does it run. Tunnels are created as needed."""

from __future__ import annotations

from typing import Any

from ..core.output import dump_json, emit_outcome, emit_rows, table
from ._base import command, debug_enabled, exit_quietly, render_members

_POD = ("pod id or name, or an inventory host, also as the word after the task "
        "(default: the pod with the only live tunnel, or the only pod)")
_NO_TUNNEL = "talk to the configured comfy_url as it is (default http://127.0.0.1:8188): no pod, no tunnel"
_FLEET = ("every member of fleet NAME, in parallel: a line each and a summary; exit 1 if any failed; "
          "--json: a list, one document per member")


def _fleet(fleet: Any, pod: Any, no_tunnel: bool = False) -> Any:
    from ..comfy.ops import fleet_for

    return fleet_for(fleet, pod, no_tunnel)


@command(help={"pod": _POD, "fleet": _FLEET, "no-tunnel": _NO_TUNNEL,
               "wait": "poll for up to S seconds until ComfyUI answers (default: one check)",
               "json": "print one JSON document"}, plain_arg="pod")
def status(c, pod=None, fleet=None, no_tunnel=False, wait=None, json=False):
    """Print "Ready" (exit 0) or "Starting…" (exit 1) for ComfyUI on a pod."""
    from ..comfy.ops import comfy_status, fleet_status, parse_seconds, render_status
    from ..core.ui import progress

    if (fleet := _fleet(fleet, pod, no_tunnel)) is not None:
        render_members(fleet_status(fleet, wait=parse_seconds(wait, "--wait")), json)
        return

    st = comfy_status(pod, no_tunnel=no_tunnel, wait=parse_seconds(wait, "--wait"), on_wait=progress)
    code = render_status(st, as_json=json)
    if code:
        exit_quietly(code)


@command(help={"pod": _POD, "fleet": _FLEET, "no-tunnel": _NO_TUNNEL, "json": "print one JSON document"},
         plain_arg="pod")
def info(c, pod=None, fleet=None, no_tunnel=False, json=False):
    """Show ComfyUI's versions, GPUs and VRAM, RAM, queue, history and node count, and the URL to open."""
    from ..comfy.ops import comfy_info, fleet_info
    from ..core.output import emit_object

    if (fleet := _fleet(fleet, pod, no_tunnel)) is not None:
        render_members(fleet_info(fleet), json)
        return

    doc = comfy_info(pod, no_tunnel=no_tunnel)
    if json:
        dump_json(doc)
        return
    view = dict(doc)
    view["target"] = f"{doc['name']} ({doc['pod']})" if doc.get("pod") else "none (--no-tunnel)"
    view["python_version"] = (doc.get("python_version") or "").split(" ")[0] or None
    view["ram"] = _mem(doc.get("ram_free"), doc.get("ram_total"))
    view["queue"] = f"{doc['queue']['running']} running, {doc['queue']['pending']} pending"
    emit_object(view, as_json=False, fields=[
        ("target", "Pod"), ("comfyui_version", "ComfyUI"), ("frontend_version", "Frontend"),
        ("python_version", "Python"), ("pytorch_version", "PyTorch"), ("ram", "RAM"), ("queue", "Queue"),
        ("history_size", "History"), ("node_types", "Node types"), ("url", "URL"),
    ])
    if doc["devices"]:
        rows = [{"device": d["name"], "type": d["type"],
                 "vram_total": _gib(d["vram_total"]), "vram_free": _gib(d["vram_free"])} for d in doc["devices"]]
        print()
        print(table(rows, [("device", "DEVICE"), ("type", "TYPE"), ("vram_total", "VRAM TOTAL"),
                           ("vram_free", "VRAM FREE")]))
    print(f"\nOpen {doc['url']} in a browser.")


def _gib(n: Any) -> str | None:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) else None


def _mem(free: Any, total: Any) -> str | None:
    if not isinstance(total, (int, float)):
        return None
    return f"{_gib(free)} free of {_gib(total)}" if isinstance(free, (int, float)) else _gib(total)


# -- rendering from the terminal ---------------------------------------------------------------------------

_RUN_HELP = {
    "workflow": "workflow file (API or editor format), also as the words after the task; repeatable",
    "pod": _POD,
    "no_tunnel": _NO_TUNNEL,
    "set": "override NODE.INPUT=VALUE (node id, unique class, or title; VALUE or @file); repeatable",
    "input": "upload a file into a node: NODE.INPUT=./cat.png or NODE=./cat.png; repeatable",
    "sweep": "NODE.INPUT=1..8, =512,768,1024 or =@values.txt (one per line); several form a cross product",
    "repeat": "run each prompt N times (with --seed random or increment)",
    "seed": "fixed (as in the workflow, default), random or increment: for every seed input",
    "job": "job file (YAML or JSON): workflow, set, input, sweep, repeat, seed, output, pod",
    "output_dir": "where outputs go (default ./outputs)",
    "output": "file name template under --output-dir (default {job}/{node}_{filename}); fields: job, batch, "
              "index, prompt_id, node, title, kind, filename, subfolder, type, pod",
    "previews": "also save temp previews (PreviewImage)",
    "detach": "submit, print the prompt ids and exit; `comfy.watch` or `comfy.fetch` later",
    "dry_run": "print the API prompt(s) exactly as they would be sent; send nothing",
    "timeout": "end the whole run after S seconds, downloads included (the prompts go on; exit 1)",
    "max_queued": "prompts of this run on the server at once (default 16; with --fleet: on each member, default 2; "
                  "with --endpoint: jobs sent and not finished, default 256)",
    "fleet": "spread the prompts over fleet NAME's running members: whichever is free next takes the next "
             "prompt; a member that fails is taken out and its prompts go to the others",
    "then": "stop or kill the pod (or the fleet) once the batch is done, so nothing bills overnight; with "
            "--endpoint: purge (empty the endpoint's queue)",
    "pull_missing": "first pull the models the workflow (its editor file's properties.models) or the job file's "
                    "models: name and the pod lacks, onto its volume (model.pull, in the pod)",
    "sheet": "after a batch of two or more prompts, write its contact sheet and gallery page (--no-sheet: not)",
    "endpoint": "run on RunPod Serverless endpoint NAME (worker-comfyui): one job per prompt, RunPod queues and "
                "scales; outputs, ledger and sidecars as on a pod",
    "object_info": "with --endpoint: ComfyUI's node definitions (GET /object_info saved as JSON) to plan on "
                   "(default: the ones kept from a pod of the endpoint's image)",
    "resubmit_unknown": ("with --resume of an endpoint batch: send again the prompts whose submit answer was lost "
                         "(status unknown); each may already have run and billed, so check RunPod's console first"),
    "resume": ("finish batch BATCH: fetch what finished, follow what runs, "
               "submit again what never ran or was interrupted"),
    "json": "print one JSON document",
}


@command(iterable=["workflow", "set", "input", "sweep"], help=_RUN_HELP, plain_arg="workflow")
def run(c, workflow=None, pod=None, fleet=None, no_tunnel=False, set=None, input=None, sweep=None, repeat=None,
        seed=None, job=None, output_dir=None, output=None, previews=False, detach=False, dry_run=False, timeout=None,
        max_queued=None, resume=None, then=None, pull_missing=False, sheet=True, endpoint=None, object_info=None,
        resubmit_unknown=False, json=False):
    """Run workflows on the pod: overrides, uploads, live progress, outputs on disk, batches, a ledger."""
    from ..comfy.spread import print_report, render, run_options

    # The console script answers a plain comfy.run line without invoke, with these same two calls
    # (autopod.launch); what the flags mean and what is printed live in comfy.spread for both.
    opts = run_options(workflow=workflow, pod=pod, fleet=fleet, no_tunnel=no_tunnel, set=set, input=input,
                       sweep=sweep, repeat=repeat, seed=seed, job=job, output_dir=output_dir, output=output,
                       previews=previews, detach=detach, dry_run=dry_run, timeout=timeout, max_queued=max_queued,
                       resume=resume, then=then, debug=debug_enabled(), pull_missing=pull_missing,
                       no_sheet=not sheet, endpoint=endpoint, object_info=object_info,
                       resubmit_unknown=resubmit_unknown)
    code = print_report(render(opts), as_json=json, dry_run=dry_run, detach=detach)
    if code:
        exit_quietly(code)


def _render_batch(report: dict, *, as_json: bool, ids_only: bool = False) -> None:
    """A batch's summary as comfy.run prints it; exit with the batch's code."""
    from ..comfy.spread import print_report

    code = print_report(report, as_json=as_json, detach=ids_only)
    if code:
        exit_quietly(code)


@command(help={"batch": "a batch id (or a unique start of one) or a prompt id; without: the newest batches",
               "limit": "how many batches (default 20)", "json": "print one JSON document"}, plain_arg="batch")
def jobs(c, batch=None, limit=None, json=False):
    """Batches from the ledger, or one batch's prompts: status, pod and outputs."""
    from ..comfy.jobs import list_jobs
    from ..core.flags import number

    doc = list_jobs(batch, limit=number(limit, "--limit", int, minimum=1, maximum=10_000) or 20)
    if json:
        dump_json(doc.get("batches", doc))
        return
    if "batches" in doc:
        rows = [{**b, "created": _when(b["created_at"]), "progress": f"{b['done'] or 0}/{b['total']}",
                 "failed": b["failed"] or 0, "active": b["active"] or 0} for b in doc["batches"]]
        # UNKNOWN: a Serverless submit whose answer was lost (it may have run), shown when there is one.
        lost = [("unknown", "UNKNOWN")] if any(b.get("unknown") for b in rows) else []
        print(table(rows, [("id", "BATCH"), ("name", "NAME"), ("created", "CREATED"), ("target_name", "POD"),
                           ("progress", "DONE"), ("active", "RUNNING"), ("failed", "FAILED"), *lost])
              if rows else "no batches yet")
        return
    rows = [{**p, "outputs": ", ".join(p["outputs"]) or None} for p in doc["prompts"]]
    print(f"batch {doc['batch']} ({doc['batch_info']['name']}) on {doc['batch_info']['target'] or '-'}")
    print(table(rows, [("index", "#"), ("prompt_id", "PROMPT"), ("status", "STATUS"), ("outputs", "OUTPUTS"),
                       ("error", "ERROR")]))
    for what, title in (("sheet", "contact sheet"), ("page", "gallery page")):
        if (doc.get("sheet") or {}).get(what):
            print(f"{title}: {doc['sheet'][what]}")


@command(help={"batch": "batch id (or a unique start of one) or one of its prompt ids (default: the newest batch)",
               "axes": "X[,Y[,Z]]: the varying inputs to lay out, by label (KSampler.cfg), key (3.cfg), input "
                       "name (cfg), workflow or repeat (default: the fastest-changing input is X, the next Y)",
               "thumb": "longest side of each cell's picture in pixels (default 256)",
               "open": "open the gallery page in the browser",
               "json": "print one JSON document"}, plain_arg="batch")
def sheet(c, batch=None, axes=None, thumb=None, open=False, json=False):
    """A batch's contact sheet (contact.png) and gallery page (index.html), from the ledger and the files."""
    from ..comfy.sheet import THUMB, THUMB_MAX, THUMB_MIN, parse_axes
    from ..comfy.sheet import sheet as make
    from ..core.flags import number
    from ..core.output import Outcome

    size = number(thumb, "--thumb", int, minimum=THUMB_MIN, maximum=THUMB_MAX)
    doc = make(batch, axes=parse_axes(axes), thumb=size or THUMB)
    if open and doc.get("page"):
        import webbrowser
        from pathlib import Path

        webbrowser.open(Path(doc["page"]).resolve().as_uri())
    emit_outcome(Outcome(doc["changed"], doc["msg"], extra={k: v for k, v in doc.items()
                                                           if k not in ("changed", "msg")}), as_json=json)


@command(help={"batch": "batch id or prompt id (default: the newest batch)", "pod": _POD, "no_tunnel": _NO_TUNNEL,
               "timeout": "stop watching after S seconds", "json": "print one JSON document"}, plain_arg="batch")
def watch(c, batch=None, pod=None, no_tunnel=False, timeout=None, json=False):
    """Re-attach to a batch: live progress, and its outputs fetched as prompts finish."""
    from ..comfy.jobs import watch as _watch
    from ..core.flags import MAX_WAIT_S, number

    secs = number(timeout, "--timeout", minimum=1, maximum=MAX_WAIT_S)
    _render_batch(_watch(batch, pod=pod, no_tunnel=no_tunnel, timeout=secs), as_json=json)


@command(help={"batch": "batch id or prompt id (default: the newest batch)", "pod": _POD, "no_tunnel": _NO_TUNNEL,
               "json": "print one JSON document"}, plain_arg="batch")
def fetch(c, batch=None, pod=None, no_tunnel=False, json=False):
    """Download whatever of a batch finished and is not on disk yet."""
    from ..comfy.jobs import fetch as _fetch

    _render_batch(_fetch(batch, pod=pod, no_tunnel=no_tunnel), as_json=json)


@command(help={"pod": _POD, "no_tunnel": _NO_TUNNEL, "json": "print one JSON document"}, plain_arg="pod")
def queue(c, pod=None, no_tunnel=False, json=False):
    """ComfyUI's queue: the running prompt and the pending ones, with the batch each belongs to."""
    from ..comfy.jobs import server_queue

    rows = server_queue(pod, no_tunnel=no_tunnel)
    emit_rows(rows, [("state", "STATE"), ("position", "#"), ("prompt_id", "PROMPT"), ("nodes", "NODES"),
                     ("batch", "BATCH"), ("index", "INDEX")], as_json=json, empty="the queue is empty")


@command(help={"pod": _POD, "no_tunnel": _NO_TUNNEL, "limit": "newest N entries (default 20)",
               "json": "print one JSON document"}, plain_arg="pod")
def history(c, pod=None, no_tunnel=False, limit=None, json=False):
    """ComfyUI's history, newest first: how each prompt ended and its output files."""
    from ..comfy.jobs import server_history
    from ..core.flags import number

    rows = server_history(pod, no_tunnel=no_tunnel, limit=number(limit, "--limit", int, minimum=1, maximum=10_000)
                          or 20)
    emit_rows(rows, [("prompt_id", "PROMPT"), ("status", "STATUS"), ("outputs", "OUTPUTS"), ("batch", "BATCH"),
                     ("error", "ERROR")], as_json=json, empty="no history")


@command(help={"prompt": "a prompt id", "batch": "every prompt of this batch", "all": "the whole server queue",
               "pod": _POD, "no_tunnel": _NO_TUNNEL, "json": "print one JSON document"}, plain_arg="prompt")
def cancel(c, prompt=None, batch=None, all=False, pod=None, no_tunnel=False, json=False):
    """Interrupt the running prompt and remove queued ones: one prompt, a batch, or everything."""
    from ..comfy.jobs import cancel as _cancel
    from ..core.output import Outcome

    doc = _cancel(prompt, batch=batch, everything=all, pod=pod, no_tunnel=no_tunnel)
    emit_outcome(Outcome(doc["changed"], doc["msg"], extra={k: doc[k] for k in ("interrupted", "removed")}),
                 as_json=json)


def _when(ts: float | None) -> str | None:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M", _time.localtime(ts)) if ts else None

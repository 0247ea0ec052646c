"""Models on the pod's volume: pull by URL (in the pod, resumable, verified), list, remove, follow."""

from __future__ import annotations

import sys

from ..core import chain
from ..core.errors import UsageError
from ..core.output import dump_json, emit_outcome, emit_rows
from ..models import ops
from ..runpod.api import connect
from ._base import command, render_members

POD = "pod name or id, also as the word after the task (default: the only pod)"


@command(help={"url": "the model's download URL (Hugging Face /resolve/ or /blob/, Civitai /api/download/models/N, "
                      "any https URL)",
               "folder": "ComfyUI model folder: checkpoints, loras, vae, text_encoders, diffusion_models, ... "
                         "(default: from the URL's path, or Civitai's model type)",
               "name": "file name to save as (default: the server's name, else the URL's)",
               "sha256": "the file's sha256; the download must match it (default: what Hugging Face or Civitai "
                         "announce)",
               "pod": "pod name or id (default: the only pod)",
               "fleet": "every running member of fleet NAME: one download per network volume",
               "detach": "start the download in the pod and return; `autopod model.status` follows it",
               "json": "print one JSON document"}, plain_arg="url")
def pull(c, url=None, folder=None, name=None, sha256=None, pod=None, fleet=None, detach=False, json=False):
    """Download a model onto the pod's volume, in the pod: resumable, sha256-checked, tokens kept out of sight."""
    if url is None:
        raise UsageError("model.pull needs the model's URL: autopod model.pull URL [--folder F]")
    if (fleet := chain.fleet_target(fleet, pod)) is not None:
        render_members(ops.pull_fleet(fleet, url, folder=folder, name=name, sha256=sha256, detach=detach), json)
        return
    emit_outcome(ops.pull(connect(), url, folder=folder, name=name, sha256=sha256, pod=pod, detach=detach),
                 as_json=json)


@command(name="list", aliases=["ls"], help={"pod": POD, "folder": "only this model folder",
                                            "json": "print one JSON document (a list)"}, plain_arg="pod")
def list_(c, pod=None, folder=None, json=False):
    """What the pod's ComfyUI lists in each model folder, with sizes; where autopod pulled a file from, its sha256,
    and whether Serverless workers (worker-comfyui) on the same volume see it."""
    rows = ops.list_models(connect(), pod, folder)
    if json:
        dump_json(rows)
        return
    view = [{**r, "size": ops.human(r.get("size")) if r.get("size") is not None else None,
             "sha256": (r.get("sha256") or "")[:12] or None, "source": r.get("url"),
             "serverless": (r.get("worker") or {}).get("sees")} for r in rows]
    emit_rows(view, [("folder", "FOLDER"), ("name", "NAME"), ("size", "SIZE"), ("sha256", "SHA256"),
                     ("serverless", "SERVERLESS"), ("source", "PULLED FROM")], as_json=False,
              empty="no model files on the pod")


@command(aliases=["remove"], help={"name": "the model's file name, as model.list shows it",
                                   "folder": "its folder (needed when several folders have that name)",
                                   "pod": "pod name or id (default: the only pod)",
                                   "yes": "do not ask (needed when stdin is not a terminal)",
                                   "json": "print one JSON document"}, plain_arg="name")
def rm(c, name=None, folder=None, pod=None, yes=False, json=False):
    """Delete a model file from the pod's volume (every pod that attaches the volume loses it)."""
    if name is None:
        raise UsageError("model.rm needs the model's name: autopod model.rm NAME [--folder F] --yes")
    if not yes and not sys.stdin.isatty():
        raise UsageError("model.rm deletes the file for every pod on the volume; pass --yes to confirm "
                         "(stdin is not a terminal)")
    emit_outcome(ops.remove(connect(), pod, name, folder=folder, confirm=None if yes else _confirm), as_json=json)


def _confirm(pod, what: str) -> bool:
    print(f"delete {what} from pod {pod.name}'s volume ({pod.volume_id or 'its disk'})? [y/N] ", end="",
          file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@command(help={"pod": POD, "json": "print one JSON document (a list of pulls)"}, plain_arg="pod")
def status(c, pod=None, json=False):
    """Pulls on the pod's volume: running ones with their progress, and the recent ones with how they ended."""
    rows = ops.jobs(connect(), pod)
    if json:
        dump_json(rows)
        return
    view = []
    for j in rows:
        done, total = j.get("bytes"), j.get("total")
        pct = f" ({int(done * 100 / total)}%)" if done is not None and total else ""
        view.append({"name": j.get("name"), "folder": j.get("folder"), "status": j.get("status"),
                     "progress": f"{ops.human(done)} of {ops.human(total)}{pct}" if done is not None else None,
                     "speed": f"{ops.human(j['speed'])}/s" if j.get("running") and j.get("speed") else None,
                     "pod": j.get("pod"), "error": j.get("error")})
    emit_rows(view, [("name", "NAME"), ("folder", "FOLDER"), ("status", "STATUS"), ("progress", "PROGRESS"),
                     ("speed", "SPEED"), ("pod", "POD"), ("error", "ERROR")], as_json=False,
              empty="no pulls on this pod's volume")

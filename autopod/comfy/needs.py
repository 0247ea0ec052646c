"""The models a run needs and the pod lacks: found before anything is sent, fetched with ``--pull-missing``.

Where a run names its models:

- an editor file's nodes carry ``properties.models`` (name, url, directory, and sometimes hash and
  hash_type), as the official templates do. An entry counts when its name is one of the node's text
  widget values, the rule the editor's own "missing models" dialog follows; the workflow-level
  ``models`` list counts as it is;
- a job file's ``models:`` (url, folder, name, sha256);
- any workflow's core loader nodes (``CheckpointLoaderSimple.ckpt_name``, ``LoraLoader.lora_name``, ...):
  an API-format file carries no URL, so there only the model and its folder can be named.

A model is there when the pod's ComfyUI lists it in that folder (``GET /models/{folder}``): the same
list its validation checks a prompt against. Without ``--pull-missing``, a run that lacks models stops
before anything is sent, with a line per model: its URL and the ``model.pull`` command that fetches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import ComfyError, UsageError
from ..core.ui import progress
from ..models.folders import LOADER_INPUTS
from ..models.sources import ModelRef, check_folder, check_url, name_problem
from .workflow import Workflow, WorkflowError, load_workflow, to_api


@dataclass
class Need:
    name: str
    folder: str
    url: str | None = None
    sha256: str | None = None
    where: str = ""

    @property
    def label(self) -> str:
        return f"{self.folder}/{self.name}"

    def command(self, pod: str | None) -> str:
        url = f"'{self.url}'" if self.url else "URL"
        return (f"autopod model.pull {url} --folder {self.folder} --name '{self.name}'"
                + (f" --sha256 {self.sha256}" if self.sha256 else "") + (f" --pod {pod}" if pod else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder, "url": self.url, "sha256": self.sha256, "where": self.where}


def _strings(values: Any) -> set[str]:
    if isinstance(values, dict):
        values = list(values.values())
    return {v for v in values or [] if isinstance(v, str)}


def _sha(entry: dict[str, Any]) -> str | None:
    h = str(entry.get("hash") or "")
    kind = str(entry.get("hash_type") or "sha256").lower()
    return h.lower() if kind == "sha256" and re.fullmatch(r"[0-9a-fA-F]{64}", h) else None


def _entry(entry: Any, where: str) -> Need | None:
    """One ``properties.models`` entry as a need, or None when it is not one autopod can use."""
    if not isinstance(entry, dict):
        return None
    name, folder, url = entry.get("name"), entry.get("directory"), entry.get("url")
    if not isinstance(name, str) or not isinstance(folder, str) or name_problem(name):
        return None
    try:
        folder = check_folder(folder)  # a folder name, legacy names mapped; "../x" is none
    except UsageError:
        return None
    try:
        url = check_url(url, "URL") if isinstance(url, str) and url else None
    except UsageError:
        url = None
    return Need(name=name, folder=folder, url=url, sha256=_sha(entry), where=where)


def editor_needs(wf: Workflow) -> list[Need]:
    """``properties.models`` of the nodes (subgraphs' too) that use them, and the workflow's ``models``."""
    out: list[Need] = []
    nodes = list(wf.data.get("nodes") or [])
    defs = wf.data.get("definitions")
    for sub in (defs.get("subgraphs") or []) if isinstance(defs, dict) else []:
        if isinstance(sub, dict):
            nodes += list(sub.get("nodes") or [])
    for node in nodes:
        if not isinstance(node, dict):
            continue
        props = node.get("properties")
        entries = props.get("models") if isinstance(props, dict) else None
        if not isinstance(entries, list):
            continue
        used = _strings(node.get("widgets_values"))
        where = f"{wf.name}: node {node.get('id')} ({node.get('type')})"
        for e in entries:
            need = _entry(e, where)
            if need is not None and need.name in used:
                out.append(need)
    for e in wf.data.get("models") or []:
        need = _entry(e, f"{wf.name}: the workflow's models")
        if need is not None:
            out.append(need)
    return out


def loader_needs(prompt: dict[str, Any], where: str) -> list[Need]:
    """What the prompt's core loaders name: model and folder, no URL."""
    out = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            continue
        for name, value in (node.get("inputs") or {}).items():
            folder = LOADER_INPUTS.get((str(node.get("class_type")), name))
            if folder and isinstance(value, str) and value and not name_problem(value.split("/")[-1]):
                out.append(Need(name=value, folder=folder, where=f"{where}: node {node_id} ({node.get('class_type')})"))
    return out


def collect(workflows: list[Path], job_models: list[dict[str, Any]], object_info: dict[str, Any],
            job: str | None = None) -> list[Need]:
    """Every model the run names, once per folder and name; an entry with a URL wins over one without."""
    found: list[Need] = []
    for m in job_models:
        found.append(Need(name=m.get("name") or m["url"].rsplit("/", 1)[-1], folder=m["folder"], url=m["url"],
                          sha256=m.get("sha256"), where=f"{job}: models" if job else "the job file"))
    for path in workflows:
        wf = load_workflow(path)
        if wf.kind == "ui":
            found += editor_needs(wf)
        try:
            prompt = to_api(wf, object_info)
        except WorkflowError:
            continue  # planning reports it, with its reason
        found += loader_needs(prompt, wf.name)
    out: dict[tuple[str, str], Need] = {}
    for n in found:
        key = (n.folder, n.name)
        if key not in out or (n.url and not out[key].url):
            out[key] = n
    return list(out.values())


def missing(needs: list[Need], listing: Callable[[str], list[str] | None]) -> list[Need]:
    """The needs the pod's ComfyUI does not list. ``listing(folder)`` is its ``/models/{folder}`` (None: no
    such folder)."""
    cache: dict[str, list[str] | None] = {}
    out = []
    for n in needs:
        if n.folder not in cache:
            cache[n.folder] = listing(n.folder)
        names = cache[n.folder]
        if names is None or n.name not in names:
            out.append(n)
    return out


def settle(needs: list[Need], listing: Callable[[str], list[str] | None], *, pull_missing: bool,
           pod_name: str | None, pull: Callable[[list[ModelRef]], None] | None, dry_run: bool = False) -> bool:
    """Check ``needs`` against the pod; pull what is missing (``pull_missing``) or stop with a line per model.
    Returns True when models were pulled (the caller reads the node definitions again)."""
    lacking = missing(needs, listing)
    if not lacking:
        return False
    if pull_missing and dry_run:
        for n in lacking:
            progress(f"would pull {n.label} ({n.where}) from {n.url or 'nowhere: the workflow gives no URL'}")
        return False
    if not pull_missing or pull is None:
        for n in lacking:
            progress(f"missing {n.label} ({n.where}): " + (f"{n.url}; fetch it: {n.command(pod_name)}" if n.url else
                     f"no download URL in the workflow; put it there with: {n.command(pod_name)}"))
        hint = "run again with --pull-missing, or fetch them with the commands above" if any(n.url for n in lacking) \
            else "fetch them with the commands above"
        if pull_missing and pull is None:
            hint = "--pull-missing pulls into a RunPod pod; this ComfyUI is not one"
        raise ComfyError(f"the pod lacks {len(lacking)} model(s) this run needs, listed above (ComfyUI would refuse "
                         f"the prompt): {hint}", data={"missing": [n.to_dict() for n in lacking]})
    no_url = [n for n in lacking if not n.url]
    if no_url:
        for n in no_url:
            progress(f"missing {n.label} ({n.where}): no download URL; put it there with: {n.command(pod_name)}")
        raise ComfyError(f"the pod lacks {len(no_url)} model(s) the workflow gives no URL for, listed above; nothing "
                         "was pulled", data={"missing": [n.to_dict() for n in no_url]})
    refs = [ModelRef(url=str(n.url), folder=n.folder, name=n.name, sha256=n.sha256,
                     sha256_from="workflow" if n.sha256 else None, source=n.where) for n in lacking]
    pull(refs)
    return True

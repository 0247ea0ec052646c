"""ComfyUI workflows: load both formats, turn the editor's into an API prompt, hash prompts.

A workflow file comes in one of two formats:

- the **API format** ("Save (API)"): ``{node_id: {"class_type", "inputs", "_meta"}}``,
  what POST /prompt takes. It passes through, checked for shape;
- the **editor (UI) format** ("Save"): a LiteGraph dump with ``nodes`` and ``links``
  (and ``definitions.subgraphs``). It is converted exactly as the ComfyUI editor builds
  the prompt when you press Queue, using the server's node schema (GET /object_info):
  see ``editor`` for the rules and ``widgets`` for how a node class becomes widgets.

A PNG that ComfyUI saved loads as the prompt embedded in it (else its workflow).

What the editor cannot queue either, or what only the editor itself can fill in, is a
:class:`WorkflowError` naming the node: classes the server does not have,
widgets the editor fills at queue time (webcam, 3D viewer), broken links, loops. Legacy group
nodes (``extra.groupNodes``) convert as the editor converts them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.files import MiB, decode, parse_json, read_bytes
from . import schema as sch
from .widgets import resolve_dynamic_prompt  # noqa: F401  (part of this module's interface)

MAX_FILE_BYTES = 64 * MiB
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class WorkflowError(UsageError):
    """A workflow, override, sweep or job file that cannot be used as given (exit 2)."""


@dataclass
class Workflow:
    """A loaded workflow: ``kind`` is "api" or "ui"; ``data`` the parsed JSON (the prompt for "api")."""

    path: Path | None
    kind: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "workflow"


# -- loading -------------------------------------------------------------------------------------------
def load_workflow(path: str | Path) -> Workflow:
    """Read a workflow file: JSON in either format, or a PNG that ComfyUI saved (its embedded prompt)."""
    p, raw = read_bytes(path, what="workflow file", limit=MAX_FILE_BYTES, error=WorkflowError)
    if raw.startswith(_PNG_MAGIC):
        return _from_png(p, raw)
    return parse_workflow(_loads(decode(raw, p, what="workflow file", error=WorkflowError), str(p)), p)


def _loads(text: str, where: str) -> Any:
    return parse_json(text, where, error=WorkflowError)


def parse_workflow(data: Any, path: Path | None = None) -> Workflow:
    """Detect the format of already-parsed JSON."""
    where = str(path) if path else "workflow"
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        links = data.get("links", [])
        if not isinstance(links, list):
            raise WorkflowError(f"{where}: 'links' must be a list in an editor-format workflow")
        return Workflow(path, "ui", data)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and _looks_api(data["prompt"]):
        data = data["prompt"]  # a POST /prompt body or a history entry's prompt
    if isinstance(data, dict) and _looks_api(data):
        check_api_shape(data, where)
        return Workflow(path, "api", data)
    what = ("an empty object" if data == {} else "a JSON list" if isinstance(data, list)
            else f"a JSON {type(data).__name__}" if not isinstance(data, dict) else "an object without nodes")
    raise WorkflowError(f"{where}: not a ComfyUI workflow ({what}); expected the editor format "
                        "(with 'nodes' and 'links') or the API format ({id: {class_type, inputs}})")


def _looks_api(data: dict[str, Any]) -> bool:
    return bool(data) and any(isinstance(v, dict) and "class_type" in v for v in data.values())


def _from_png(p: Path, raw: bytes) -> Workflow:
    """ComfyUI's SaveImage embeds ``prompt`` (API) and ``workflow`` (editor) text chunks; the prompt
    is what actually ran (seeds and all), so it is preferred."""
    chunks: dict[str, str] = {}
    pos = len(_PNG_MAGIC)
    while pos + 8 <= len(raw):
        length, ctype = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            chunks[key.decode("latin-1")] = value.decode("latin-1")
        elif ctype == b"iTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]  # then the compression method
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, value = rest.partition(b"\0")
            try:
                chunks[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
            except (zlib.error, UnicodeDecodeError):
                continue
        elif ctype == b"IEND":
            break
    for key in ("prompt", "workflow"):
        if key in chunks:
            return parse_workflow(_loads(chunks[key], f"{p} ({key} chunk)"), p)
    raise WorkflowError(f"{p}: a PNG image without an embedded ComfyUI workflow")


# -- API format ----------------------------------------------------------------------------------------
def is_link(value: Any) -> bool:
    """``[node_id, output_slot]``: how a prompt writes a link (any other list is wrapped as ``__value__``)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def check_api_shape(prompt: dict[str, Any], where: str = "prompt") -> None:
    """Every node has a class_type and an inputs mapping; every link points to a node of the prompt."""
    if not prompt:
        raise WorkflowError(f"{where}: the prompt has no nodes")
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise WorkflowError(f"{where}: node {node_id} is not an object")
        cls = node.get("class_type")
        label = node_label(node_id, cls if isinstance(cls, str) else "?", _title_of(node))
        if not isinstance(cls, str) or not cls:
            raise WorkflowError(f"{where}: {label} has no class_type")
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            raise WorkflowError(f"{where}: {label} has no 'inputs' object")
        if "_meta" in node and not isinstance(node["_meta"], dict):
            raise WorkflowError(f"{where}: {label} has a '_meta' that is not an object")
        for name, value in inputs.items():
            if isinstance(value, list):
                if not is_link(value):
                    raise WorkflowError(f"{where}: {label} input {name!r} is a list but not a link "
                                        f"[node_id, slot]: {_show(value)} (wrap list values as "
                                        '{"__value__": [...]})')
                if value[0] not in prompt:
                    raise WorkflowError(f"{where}: {label} input {name!r} links to node {value[0]}, "
                                        "which is not in the prompt")


def _title_of(node: dict[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else None


def node_label(node_id: Any, class_type: str, title: str | None = None) -> str:
    """How messages name a node: ``node 6 (CLIPTextEncode "Positive Prompt")``."""
    return f"node {node_id} ({class_type}" + (f' "{title}")' if title and title != class_type else ")")


def node_sort_key(node_id: str) -> tuple[int, Any]:
    """Numeric ids in number order ("2" before "10"), then any others."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def prompt_node_label(prompt: dict[str, Any], node_id: str) -> str:
    node = prompt[node_id]
    return node_label(node_id, node.get("class_type", "?"), _title_of(node))


@dataclass
class Converted:
    """A workflow as the API prompt, with what the conversion has to say.

    ``notes``: one line per node whose saved values the editor fills in or ignores (the
    graph is still the editor's). ``paths``: for a node inside a subgraph (id ``10:5``),
    where it is in the editor, e.g. ``subgraph 'Upscale'``.
    """

    prompt: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)


def convert(wf: Workflow, object_info: dict[str, Any], *, rng: random.Random | None = None) -> Converted:
    """The API prompt for ``wf``: converted from the editor format, or the API format checked and copied.

    Every class must exist in ``object_info``. API nodes without ``_meta.title`` get the
    class's display name, so nodes can be named by title either way. ``rng`` draws the
    editor format's dynamic-prompt choices (only text with ``{a|b}`` uses it).
    """
    if wf.kind == "api":
        prompt = copy.deepcopy(wf.data)
        check_api_shape(prompt, wf.name)
        for node_id, node in prompt.items():
            schema = sch.class_schema(object_info, node["class_type"])
            if schema is None:
                raise WorkflowError(f"{wf.name}: {prompt_node_label(prompt, node_id)}: "
                                    f"{_unknown_class(node['class_type'])}")
            if _title_of(node) is None:
                node["_meta"] = {**node.get("_meta", {}), "title": sch.display_name(schema, node["class_type"])}
        return Converted(prompt)
    if wf.kind != "ui":
        raise WorkflowError(f"{wf.name}: unknown workflow kind {wf.kind!r}")
    from .editor import ConversionError
    from .editor import convert as convert_editor

    try:
        result = convert_editor(wf.data, object_info, rng=rng)
    except ConversionError as e:
        raise WorkflowError(f"{wf.name}: {e}") from None
    except RecursionError:
        raise WorkflowError(f"{wf.name}: the graph is nested too deeply to convert") from None
    return Converted(result.prompt, result.notes, result.paths)


def to_api(wf: Workflow, object_info: dict[str, Any], *,
           rng: random.Random | None = None) -> dict[str, dict[str, Any]]:
    """The API prompt for ``wf`` (see :func:`convert`)."""
    return convert(wf, object_info, rng=rng).prompt


def _unknown_class(cls: str) -> str:
    return (f"the server has no node class {cls!r} (a custom node that is not installed there, "
            "or a node that only exists in the editor)")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- hashing -------------------------------------------------------------------------------------------
def prompt_hash(prompt: dict[str, Any]) -> str:
    """sha256 of the prompt's canonical JSON: keys sorted, no whitespace, ``_meta`` left out (titles do
    not change what runs), and a whole float written as the int it equals (8.0 and 8 run the same)."""
    def canon(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): canon(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    nodes = {str(i): {k: v for k, v in n.items() if k != "_meta"} if isinstance(n, dict) else n
             for i, n in prompt.items()}
    text = json.dumps(canon(nodes), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

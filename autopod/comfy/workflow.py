"""ComfyUI workflows: load both formats, turn the editor's into an API prompt, hash prompts.

A workflow file comes in one of two formats:

- the **API format** ("Save (API)"): ``{node_id: {"class_type", "inputs", "_meta"}}``,
  what POST /prompt takes. It passes through, checked for shape;
- the **editor (UI) format** ("Save"): a LiteGraph dump with ``nodes`` and ``links``.
  It is converted here the way the ComfyUI frontend builds a prompt when you press
  Queue, using the server's node schema (GET /object_info).

A PNG that ComfyUI saved loads as the prompt embedded in it (else its workflow).

The rules of the conversion (mirroring the frontend's ``graphToPrompt`` and its
``ExecutableNodeDTO`` link resolution):

1. ``widgets_values`` is positional. The slots are the class's value inputs (INT,
   FLOAT, STRING, BOOLEAN, combos) in ``input_order``, required then optional, with
   two extra slots the editor adds and never sends: "control after generate" after
   an INT that carries ``control_after_generate`` (or is named ``seed``/``noise_seed``
   without the flag), and ``upload`` after the required widgets of a class with an
   upload combo (LoadImage saves ``["example.png", "image"]``); a save may stop
   before trailing extra slots. ``forceInput`` inputs have no slot (older editors
   gave them one: accepted when only that count fits). A count that fits neither is
   an error, never a guess. A dict ``widgets_values`` is read by name.
2. Every value slot becomes an input; then every linked input overrides it with
   ``[origin_id, origin_slot]``, so a widget converted to an input takes the link.
3. Links are resolved through the graph: a ``PrimitiveNode`` gives its value to
   every input it feeds (it is not in the prompt); ``Reroute`` chains are followed;
   a bypassed node (mode 4) passes the consumer through to one of its own inputs,
   chosen like the frontend: the input at the same slot index if its type fits both
   the output and the consumer, else the first input of exactly the consumer's type,
   else the first compatible one; none means the input is left out (a widget then
   keeps its own value). Links are given as arrays ``[id, from, from_slot, to,
   to_slot, type]`` or as objects.
4. Muted nodes (mode 2), bypassed nodes, ``Note``/``MarkdownNote`` and groups are not
   in the prompt; an input linked to a muted node is left out, as the frontend does.
5. ``_meta.title`` is the node's title, else the class's display name.
6. Text inputs marked ``dynamicPrompts`` (CLIPTextEncode's) are resolved as the frontend
   does at queue time: comments (``//``, ``/* */``) dropped and one option of each
   ``{a|b|c}`` drawn (``rng``); a backslash makes ``{``, ``|`` or ``}`` literal.

What cannot be converted faithfully is a :class:`WorkflowError` naming the node:
subgraphs, group nodes, classes the server does not have, widgets the editor draws
itself (3D viewers, webcam, dynamic inputs), widget counts that do not fit, broken
links and loops.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..core.files import MiB, decode, parse_json, read_bytes
from . import schema as sch

MUTED, BYPASSED = 2, 4  # LiteGraph modes: NEVER and BYPASS
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
PRIMITIVE, REROUTE = "PrimitiveNode", "Reroute"
# Input types the editor draws with its own widgets, whose saved values this module does not model.
EDITOR_WIDGET_TYPES = frozenset({"LOAD_3D", "LOAD_3D_ANIMATION", "PREVIEW_3D", "PREVIEW_3D_ANIMATION", "WEBCAM",
                                 "IMAGECOMPARE", "MARKDOWN", "AUDIO_RECORD", "IMAGEUPLOAD", "AUDIOUPLOAD"})
MAX_FILE_BYTES = 64 * MiB
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
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


def to_api(wf: Workflow, object_info: dict[str, Any], *,
           rng: random.Random | None = None) -> dict[str, dict[str, Any]]:
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
        return prompt
    if wf.kind != "ui":
        raise WorkflowError(f"{wf.name}: unknown workflow kind {wf.kind!r}")
    return _Converter(wf.data, object_info, wf.name, rng or random.Random()).convert()


def _unknown_class(cls: str) -> str:
    return (f"the server has no node class {cls!r} (a custom node that is not installed there, "
            "or a node that only exists in the editor)")


# -- editor format -------------------------------------------------------------------------------------
@dataclass
class _Link:
    id: Any
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any


class _Converter:
    def __init__(self, data: dict[str, Any], object_info: dict[str, Any], where: str, rng: random.Random):
        self.data = data
        self.rng = rng
        self.object_info = object_info
        self.where = where
        self.nodes: dict[str, dict[str, Any]] = {}
        for i, node in enumerate(data["nodes"]):
            if not isinstance(node, dict) or "id" not in node or not isinstance(node.get("type"), str):
                raise WorkflowError(f"{where}: nodes[{i}] is not a node (needs an id and a type)")
            key = str(node["id"])
            if key in self.nodes:
                raise WorkflowError(f"{where}: two nodes have the id {key}")
            self.nodes[key] = node
        self.links = self._read_links(data.get("links") or [])
        defs = data.get("definitions")
        subgraphs = defs.get("subgraphs") if isinstance(defs, dict) else None
        self.subgraph_ids = {str(s.get("id")) for s in subgraphs or [] if isinstance(s, dict)}
        extra = data.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, dict) else None
        self.group_node_names = set(groups) if isinstance(groups, dict) else set()

    def fail(self, node: dict[str, Any], msg: str) -> WorkflowError:
        return WorkflowError(f"{self.where}: {self.label(node)}: {msg}")

    def label(self, node: dict[str, Any]) -> str:
        return node_label(node["id"], node["type"], self.title(node))

    def title(self, node: dict[str, Any]) -> str:
        title = node.get("title")
        if isinstance(title, str) and title:
            return title
        return sch.display_name(sch.class_schema(self.object_info, node["type"]), node["type"])

    def _read_links(self, raw: list[Any]) -> dict[Any, _Link]:
        links: dict[Any, _Link] = {}
        for i, item in enumerate(raw):
            if isinstance(item, list) and len(item) >= 6:
                lid, origin, oslot, target, tslot, ltype = item[:6]
            elif isinstance(item, dict) and {"id", "origin_id", "origin_slot", "target_id", "target_slot"} <= set(item):
                lid, origin, oslot, target, tslot = (item[k] for k in ("id", "origin_id", "origin_slot",
                                                                      "target_id", "target_slot"))
                ltype = item.get("type")
            elif item is None:  # LiteGraph leaves null holes where links were deleted
                continue
            else:
                raise WorkflowError(f"{self.where}: links[{i}] is not a link "
                                    "([id, from, from_slot, to, to_slot, type] or an object)")
            if not _slot_ok(oslot) or not _slot_ok(tslot) or not isinstance(lid, (int, str)) or isinstance(lid, bool):
                raise WorkflowError(f"{self.where}: links[{i}] has a bad id or slot: {_show(item)}")
            if lid in links:
                raise WorkflowError(f"{self.where}: two links have the id {lid}")
            links[lid] = _Link(lid, str(origin), oslot, str(target), tslot, ltype)
        return links

    # -- the whole graph
    def convert(self) -> dict[str, dict[str, Any]]:
        for node in self.nodes.values():
            self.check_kind(node)
        live = [n for n in self.nodes.values() if self.is_live(n)]
        if not live:
            raise WorkflowError(f"{self.where}: no node would run (every node is muted, bypassed or a note)")
        live.sort(key=lambda n: n.get("order") if isinstance(n.get("order"), int) else math.inf)
        prompt = {str(n["id"]): self.convert_node(n) for n in live}
        # An input linked to a node that is not in the prompt (muted) is dropped, as the frontend does.
        for node in prompt.values():
            for name in [k for k, v in node["inputs"].items() if is_link(v) and v[0] not in prompt]:
                del node["inputs"][name]
        return prompt

    def check_kind(self, node: dict[str, Any]) -> None:
        t = node["type"]
        if t in self.subgraph_ids or (_UUID.match(t) and t not in self.object_info):
            raise self.fail(node, "is a subgraph; converting subgraphs is not supported: unpack it in the "
                                  "editor (right-click, Unpack Subgraph) or export the workflow with Save (API)")
        if t.startswith(("workflow>", "workflow/")) or t in self.group_node_names:
            raise self.fail(node, "is a group node; converting group nodes is not supported: convert it back to "
                                  "nodes in the editor or export the workflow with Save (API)")
        if node.get("mode") not in (None, 0, 1, 2, 3, 4):
            raise self.fail(node, f"has an unknown mode {node.get('mode')!r}")

    def is_live(self, node: dict[str, Any]) -> bool:
        return (node["type"] not in NOTE_TYPES | {PRIMITIVE, REROUTE}
                and node.get("mode") not in (MUTED, BYPASSED))

    # -- one node
    def convert_node(self, node: dict[str, Any]) -> dict[str, Any]:
        cls = node["type"]
        schema = sch.class_schema(self.object_info, cls)
        if schema is None:
            raise self.fail(node, _unknown_class(cls))
        inputs: dict[str, Any] = {name: _wrap(value) for name, value in self.widget_values(node, schema)}
        node_inputs = node.get("inputs") or []
        if not isinstance(node_inputs, list):
            raise self.fail(node, "'inputs' is not a list")
        for slot in node_inputs:
            if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
                raise self.fail(node, f"has a malformed input slot: {_show(slot)}")
            if slot.get("link") is None:
                continue
            resolved = self.resolve_link(slot["link"], slot.get("type"), node, slot["name"], set())
            if resolved is None:
                continue  # nothing upstream: a widget keeps its own value
            kind, value = resolved
            inputs[slot["name"]] = _wrap(value) if kind == "value" else value
        for name, spec, _ in sch.ordered_inputs(schema):
            if sch.options(spec).get("dynamicPrompts") and isinstance(inputs.get(name), str):
                inputs[name] = resolve_dynamic_prompt(inputs[name], self.rng)
        return {"inputs": inputs, "class_type": cls, "_meta": {"title": self.title(node)}}

    def widget_values(self, node: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, Any]]:
        """(input, value) for each value slot of ``widgets_values``."""
        for name, spec, _section in sch.ordered_inputs(schema):
            kind = spec[0] if isinstance(spec, (list, tuple)) and spec else None
            if isinstance(kind, str) and (kind in EDITOR_WIDGET_TYPES or kind.startswith("COMFY_")):
                raise self.fail(node, f"input {name!r} uses the editor's own {kind} widget, which cannot be "
                                      "converted; export the workflow with Save (API)")
        values = node.get("widgets_values")
        if values is None:
            values = []
        slots = _widget_slots(schema, legacy_force_input=False)
        if isinstance(values, dict):
            missing = [n for n, kind in slots if kind == "value" and n not in values]
            if missing:
                raise self.fail(node, f"widgets_values has no value for {', '.join(map(repr, missing))}")
            return [(n, values[n]) for n, kind in slots if kind == "value"]
        if not isinstance(values, list):
            raise self.fail(node, "widgets_values is neither a list nor an object")
        fitted = _fit(slots, values)
        if fitted is None:  # editors before 1.16 kept a slot for forceInput inputs
            fitted = _fit(_widget_slots(schema, legacy_force_input=True), values)
        if fitted is None:
            expected = [n if kind == "value" else f"({kind})" for n, kind in slots]
            raise self.fail(node, f"widgets_values has {len(values)} value(s) but the server's {node['type']} "
                                  f"has {len(slots)} widget slot(s): {', '.join(expected) or 'none'}; the node "
                                  "changed since the workflow was saved (update it in the editor and save again)")
        return fitted

    def resolve_link(self, link_id: Any, want: Any, consumer: dict[str, Any], input_name: str,
                     seen: set[Any]) -> tuple[str, Any] | None:
        """What feeds a link: ("link", [id, slot]), ("value", v) from a primitive, or None."""
        if not isinstance(link_id, (int, str)) or isinstance(link_id, bool) or link_id not in self.links:
            raise self.fail(consumer, f"input {input_name!r} uses link {link_id!r}, which is not in 'links'")
        if link_id in seen:
            raise self.fail(consumer, f"input {input_name!r}: the links form a loop (through link {link_id})")
        seen.add(link_id)
        link = self.links[link_id]
        origin = self.nodes.get(link.origin)
        if origin is None:
            raise self.fail(consumer, f"input {input_name!r} is linked to node {link.origin}, which does not exist")
        t = origin["type"]
        if t == PRIMITIVE:  # applies its value to every widget it feeds, whatever its mode
            values = origin.get("widgets_values")
            if not isinstance(values, list) or not values:
                raise self.fail(origin, f"has no value to give to {self.label(consumer)} input {input_name!r}")
            return "value", values[0]
        if t in NOTE_TYPES:
            return None
        if origin.get("mode") == BYPASSED:
            index = self.bypass_input(origin, link.origin_slot, want, consumer, input_name)
            if index < 0:
                return None
            slot = origin["inputs"][index]
            if not isinstance(slot, dict) or slot.get("link") is None:
                return None
            return self.resolve_link(slot["link"], slot.get("type"), consumer, input_name, seen)
        if t == REROUTE:
            ins = origin.get("inputs") or []
            slot = ins[0] if ins and isinstance(ins[0], dict) else None
            if slot is None or slot.get("link") is None:
                return None
            return self.resolve_link(slot["link"], want, consumer, input_name, seen)
        return "link", [link.origin, link.origin_slot]

    def bypass_input(self, node: dict[str, Any], slot: int, want: Any, consumer: dict[str, Any],
                     input_name: str) -> int:
        """The frontend's ``_getBypassSlotIndex``: which input of a bypassed node stands for output ``slot``."""
        inputs = [i if isinstance(i, dict) else {} for i in node.get("inputs") or []]
        outputs = node.get("outputs") or []
        if slot >= len(outputs) or not isinstance(outputs[slot], dict):
            raise self.fail(consumer, f"input {input_name!r} is linked to output {slot} of bypassed "
                                      f"{self.label(node)}, which has no such output")
        out_type = outputs[slot].get("type")
        if not inputs:
            return -1
        if want in ("*", "", None):
            return slot if len(inputs) > slot else 0
        same = inputs[slot].get("type") if slot < len(inputs) else None
        if slot < len(inputs) and _connects(same, out_type) and _connects(same, want):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == want:
                return i
        for i, inp in enumerate(inputs):
            if _connects(inp.get("type"), out_type) and _connects(inp.get("type"), want):
                return i
        return -1


def _slot_ok(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _widget_slots(schema: dict[str, Any], *, legacy_force_input: bool) -> list[tuple[str, str]]:
    """The editor's widgets of a class in order: (input, "value" | "control" | "upload")."""
    slots: list[tuple[str, str]] = []
    upload = None
    for name, spec, section in sch.ordered_inputs(schema, ("required",)):
        if sch.is_upload_combo(spec):
            upload = name
            break
    for section in sch.SECTIONS:
        for name, spec, _ in sch.ordered_inputs(schema, (section,)):
            opts = sch.options(spec)
            if sch.value_kind(spec) is None:
                continue
            if (opts.get("forceInput") or opts.get("defaultInput")) and not legacy_force_input:
                continue
            slots.append((name, "value"))
            if sch.has_control_after_generate(name, spec):
                slots.append((name, "control"))
        if section == "required" and upload is not None:
            slots.append((upload, "upload"))
    return slots


def _fit(slots: list[tuple[str, str]], values: list[Any]) -> list[tuple[str, Any]] | None:
    """Pair slots with values when the counts agree; a save may end before trailing extra slots
    (editors that skip unserialized widgets)."""
    if len(values) > len(slots):
        return None
    if any(kind == "value" for _, kind in slots[len(values):]):
        return None
    return [(name, value) for (name, kind), value in zip(slots, values) if kind == "value"]


def _connects(a: Any, b: Any) -> bool:
    """LiteGraph's ``isValidConnection``: wildcards match, "A,B" lists match any member, case-insensitive."""
    a = "" if a in (None, 0, "*") else str(a)
    b = "" if b in (None, 0, "*") else str(b)
    if not a or not b or a == b:
        return True
    a, b = a.lower(), b.lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_connects(x.strip(), y.strip()) for x in a.split(",") for y in b.split(","))


_COMMENT = re.compile(r"/\*[\s\S]*?\*/|//.*")
_ESCAPED = re.compile(r"\\([{}|])")


def resolve_dynamic_prompt(text: str, rng: random.Random) -> str:
    """The frontend's dynamic prompt: comments dropped, one option of each ``{a|b}`` (nested too)."""
    text = _COMMENT.sub("", text)
    out, i = [], 0
    while i < len(text):
        c = text[i]
        i += 1
        if c == "\\":
            out.append(text[i - 1:i + 1])  # kept escaped until the end
            i += 1
        elif c == "{":
            options, current, depth = [], "", 0
            while i < len(text):
                c = text[i]
                i += 1
                if c == "\\":
                    current += text[i - 1:i + 1]
                    i += 1
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    if not depth:
                        break
                    depth -= 1
                elif c == "|" and not depth:
                    options.append(current)
                    current = ""
                    continue
                current += c
            options.append(current)
            out.append(resolve_dynamic_prompt(options[rng.randrange(len(options))], rng))
        else:
            out.append(c)
    return _ESCAPED.sub(r"\1", "".join(out))


def _wrap(value: Any) -> Any:
    """A list value would read as a link; the server unwraps ``{"__value__": [...]}``."""
    return {"__value__": value} if isinstance(value, list) else value


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

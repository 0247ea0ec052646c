"""The editor format to the API prompt, as the ComfyUI editor builds it when you press Queue.

Modelled on the editor that ComfyUI 0.3.64 serves (frontend 1.27.10): ``app.loadGraphData``
then ``app.graphToPrompt``. Each saved node is rebuilt from its class (``widgets``), the
graph is flattened through its subgraphs, and every input is resolved the way the editor
resolves it. In order:

1. **Loading.** Renamed classes are mapped (T2IAdapterLoader is ControlNetLoader, ...).
   Subgraph definitions are configured in the order the file lists them, then the root
   nodes. A node's sockets and widgets come from its class; the saved inputs keep their
   links by name, saved inputs the class no longer has are kept after them. The saved
   ``widgets_values`` go, one each, to the widgets the editor saves, in order: a save with
   fewer values leaves the rest at their defaults, extra values are ignored (both are
   reported as notes). A saved value list that is one per widget input, counting two for
   a seed, loses the values of ``forceInput`` inputs first, as the editor's migration does.
   A saved input that stands for a widget the node does not have is dropped. KSampler's
   ``sample_`` sampler names lose the prefix.
2. **Primitive nodes** take the widget of the first input they feed (its value is the
   saved one, else that input's); a number is rounded to the step of the inputs it feeds
   and kept within their range. At queue time the value is written into each input it
   feeds directly (a widget of the target), whatever the primitive's mode. The input
   itself carries no link, so the target's widget is what is sent.
3. **Flattening.** A node inside a subgraph gets the id ``outer:inner`` (one part per
   subgraph level). Its input linked to the subgraph's input is resolved outside the
   subgraph node: its link, else the value the subgraph node shows for it (a widget
   promoted from the first inner widget the input feeds), else the inner widget's own.
   An input fed by a subgraph output is resolved inside, from the node that feeds that
   output. The editor saves the graph as it queues, which writes each subgraph node's
   shown values into the inner widgets they stand for: the nodes of one subgraph share
   those widgets, so a link from outside that leads nowhere (a primitive) sends the value
   of the last subgraph node of that subgraph.
   The mode of a subgraph node bypasses it like any node; its inner nodes run unless they
   are muted or bypassed themselves (the editor's mute and bypass commands set both).
4. **Links.** Reroutes are followed; a bypassed node (or subgraph node) passes the
   consumer to one of its inputs: the one at the output's slot if its type fits both,
   else the first of exactly the consumer's type, else the first that fits both; none
   leaves the input out. A primitive or a note at the end of a link leaves it out.
5. **The prompt.** Every node that is not muted, bypassed or virtual (primitive,
   reroute, note, subgraph node) sends each of its sent widgets and, for each linked
   input, the resolved link or value. A link to a node that is not in the prompt (muted)
   is dropped. ``_meta.title`` is the node's title.

Refused, naming the node: a class the server lacks (unless the node is muted or
bypassed), a live node whose widgets the editor fills itself at queue time (webcam, 3D
viewer, microphone), links to nodes or slots that do not exist, and loops.

Legacy group nodes (``extra.groupNodes``, type ``workflow>NAME``) are virtual like subgraph nodes: their
inner nodes are sent as ``group:index`` with the group node's widget values; an inner input fed from outside
takes the node at the other end of the group node's link as it is. Muting a group node does not stop its
inner nodes; bypassing it passes its consumers an input of exactly their type. The group's widgets come from
each inner class as the editor's extensions leave it (a LoadImage's upload button too); a primitive inside
gives the group a widget whose value goes to the widgets it feeds; a note inside is skipped. Refused, naming
the group node: a Reroute, a primitive that also feeds nodes outside, a value socket (``forceInput``) inside,
or a group node inside a subgraph.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import schema as sch
from . import widgets as W
from .widgets import UNDEFINED, NodeClass, WidgetDef

MUTED, BYPASSED = 2, 4  # LiteGraph modes: NEVER and BYPASS
MODES = (0, 1, 2, 3, 4)
PRIMITIVE, REROUTE = "PrimitiveNode", "Reroute"
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
RENAMED = {"T2IAdapterLoader": "ControlNetLoader", "ConditioningAverage ": "ConditioningAverage",
           "SDV_img2vid_Conditioning": "SVD_img2vid_Conditioning"}
# Input types a PrimitiveNode can take a widget from when the input itself has none.
PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "FILEUPLOAD",
                             "COLOR", "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA",
                             "SELECTBUTTON", "TEXTAREA"})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


class ConversionError(Exception):
    """What makes a graph unconvertible; ``workflow`` turns it into a WorkflowError with the file's name."""


class _GroupRefused(ConversionError):
    """A group node type autopod cannot build as the editor does; named with the node that uses it."""


class _BadValue(ConversionError):
    """A widget value the editor fails on as it reads it; named with its node where that is known."""


@dataclass
class Result:
    """The prompt; one note per node whose saved values the editor filled in or ignored; and, for each
    node inside a subgraph, where it is: ``subgraph 'Upscale'`` (``'Outer' > 'Inner'`` when nested)."""

    prompt: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)


# -- the live objects -------------------------------------------------------------------------------------
class Widget:
    """A widget on a node: its definition and its value, set and read as the editor does."""

    def __init__(self, d: WidgetDef):
        self.d = d
        self.name = d.name
        self._value: Any = d.default
        self._changed = False
        self._initial = W.js_string(d.default) if d.upload else ""

    @property
    def value(self) -> Any:
        if self.d.upload:
            return self._upload_value(self._value if self._changed else self._initial)
        return self._value

    def set(self, value: Any) -> None:
        kind = self.d.kind
        if kind == "fixed":
            return
        if kind == "textarea":
            value = W.textarea_value(value)
        self._value = value
        self._changed = True

    def callback(self) -> None:
        """What the widget's change handler does to its value (a primitive just set it)."""
        spec = self.d.spec or {}
        if self.d.kind == "number" and spec.get("type") in ("INT", "FLOAT"):
            self._value = W.number_callback(self._value, spec, spec["type"])

    def copy(self, name: str) -> "Widget":
        twin = Widget(self.d.with_(name=name, upload=None))
        twin._value = self.value
        return twin

    def _upload_value(self, v: Any) -> Any:
        """The file name an upload combo reads back through its upload button."""
        folder, batch = self.d.upload or ("input", False)
        if not W.js_truthy(v):
            return self._initial

        def path(item: Any) -> str:
            if isinstance(item, str):
                annotated = re.search(r"\[(input|output|temp)\]", item, re.IGNORECASE)
                return item + ("" if annotated or folder == "input" else f" [{folder}]")
            if item is None or item is UNDEFINED:
                raise _BadValue(f"{self.name} holds an empty list; the editor cannot read a file name from it")
            if not isinstance(item, dict):  # the editor reads it as a result record without a file name
                return ""
            name = item.get("filename") if item.get("filename") is not None else ""
            sub = item.get("subfolder")
            full = f"{sub}/{name}" if W.js_truthy(sub) else W.js_string(name)
            return full + (f" [{folder}]" if W.js_truthy(item.get("type")) and folder != "input" else "")

        if isinstance(v, list):
            return [path(x) for x in v] if batch else path(v[0] if v else None)
        return path(v)


@dataclass
class Slot:
    name: Any
    type: Any
    link: Any = None
    widget: str | None = None


@dataclass
class Output:
    name: Any
    type: Any
    links: list[Any] | None = None


@dataclass
class Link:
    id: Any
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


class Node:
    def __init__(self, graph: "Graph", data: dict[str, Any], kind: str):
        self.graph = graph
        self.data = data
        self.id = data["id"]
        self.key = str(data["id"])
        self.type: str = data["type"]
        self.kind = kind  # comfy, missing, primitive, reroute, note, subgraph
        mode = data.get("mode")
        self.mode = 0 if mode is None else mode
        self.cls: NodeClass | None = None
        self.definition: "Definition | None" = None
        self.group: "GroupDef | None" = None
        self.inner: list[Node] = []  # a group node's copies of the nodes it combines
        self.inputs: list[Slot] = []
        self.outputs: list[Output] = []
        self.widgets: list[Widget] | None = None
        props = data.get("properties")
        self.properties: dict[str, Any] = dict(props) if isinstance(props, dict) else {}
        self.title = ""

    @property
    def virtual(self) -> bool:
        return self.kind in ("primitive", "reroute", "note", "subgraph", "group")

    def widget(self, name: Any) -> Widget | None:
        return next((w for w in self.widgets or [] if w.name == name), None)

    def widget_for(self, slot: Slot) -> Widget | None:
        return self.widget(slot.widget) if slot.widget is not None else None


class Graph:
    """The root graph or the inside of a subgraph definition."""

    def __init__(self, definition: "Definition | None"):
        self.definition = definition
        self.nodes: dict[str, Node] = {}
        self.links: dict[Any, Link] = {}

    def node(self, node_id: Any) -> Node | None:
        return self.nodes.get(str(node_id))

    def link(self, link_id: Any) -> Link | None:
        if link_id is None:
            return None
        found = self.links.get(link_id)
        if found is None and isinstance(link_id, str) and link_id.lstrip("-").isdigit():
            found = self.links.get(int(link_id))
        return found


@dataclass
class SubgraphSlot:
    name: Any
    type: Any
    link_ids: list[Any]


class Definition:
    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.id = str(data.get("id"))
        name = data.get("name")
        self.name = name if isinstance(name, str) else "Unnamed Subgraph"
        self.inputs = [self._slot(s) for s in data.get("inputs") or [] if isinstance(s, dict)]
        self.outputs = [self._slot(s) for s in data.get("outputs") or [] if isinstance(s, dict)]
        self.graph = Graph(self)
        self.configured = False
        self.instances: list[Node] = []

    @staticmethod
    def _slot(s: dict[str, Any]) -> SubgraphSlot:
        ids = s.get("linkIds")
        return SubgraphSlot(s.get("name"), s.get("type"), list(ids) if isinstance(ids, list) else [])


@dataclass
class GroupDef:
    """A legacy group node's type, as the editor registers it from ``extra.groupNodes``: the inner nodes
    (by index), where each unlinked inner input and each output went on the group node, and which inner
    widget each of its widgets stands for."""

    name: str
    nodes: list[dict[str, Any]]
    cls: NodeClass
    links_to: dict[int, dict[int, list[Any]]]  # inner index -> input slot -> [from, from_slot, to, to_slot, ...]
    input_map: dict[int, dict[int, int]]  # inner index -> the editor's input key -> group node input
    output_map: list[tuple[int, int]]  # group node output -> (inner index, output slot)
    widget_map: dict[str, tuple[int, str]]  # group widget -> (inner index, widget name)
    primitive_targets: dict[int, list[tuple[int, str]]]  # inner primitive -> the (inner index, widget) it feeds


@dataclass
class DTO:
    """A node of the flattened graph: the node, its path of subgraph node ids, the subgraph node it is in."""

    node: Node
    path: tuple[str, ...]
    instance: Node | None
    inputs: list[Slot]

    @property
    def id(self) -> str:
        return ":".join((*self.path, self.node.key))


# -- the conversion --------------------------------------------------------------------------------------
class Converter:
    def __init__(self, data: dict[str, Any], object_info: dict[str, Any], rng: random.Random,
                 now: Callable[[], _dt.datetime] = _dt.datetime.now):
        self.data = data
        self.object_info = object_info
        self.rng = rng
        self.now = now
        self.classes: dict[str, NodeClass | None] = {}
        self.notes: dict[int, tuple[Node, list[str]]] = {}
        extra = data.get("extra")
        groups = extra.get("groupNodes") if isinstance(extra, dict) else None
        self.group_data: dict[str, Any] = groups if isinstance(groups, dict) else {}
        self.groups: dict[str, GroupDef | None] = {}
        defs = data.get("definitions")
        raw_defs = defs.get("subgraphs") if isinstance(defs, dict) else None
        self.definitions: dict[str, Definition] = {}
        for i, d in enumerate(raw_defs or []):
            if not isinstance(d, dict) or not isinstance(d.get("id"), str):
                raise ConversionError(f"definitions.subgraphs[{i}] is not a subgraph (needs an id)")
            self.definitions[d["id"]] = Definition(d)
        self.root = Graph(None)
        self.dtos: dict[str, DTO] = {}

    # -- naming
    def label(self, node: Node, dto: "DTO | None" = None) -> str:
        """``node 10:5 (KSampler "Sampler") in subgraph 'Upscale'``: the flattened id and where it is when known
        (``dto``), else the id within its graph and the subgraph it is defined in."""
        inner = node.type + (f" \"{node.title}\"" if node.title and node.title != node.type else "")
        if dto is not None:
            where = self.path_text(dto) if dto.path else ""
            return f"node {dto.id} ({inner})" + (f" in {where}" if where else "")
        where = self.where(node.graph)
        return f"node {node.key} ({inner})" + (f" in subgraph {where}" if where else "")

    def where(self, graph: Graph) -> str:
        return f"'{graph.definition.name}'" if graph.definition else ""

    def fail(self, node: Node, msg: str, dto: "DTO | None" = None) -> ConversionError:
        return ConversionError(f"{self.label(node, dto)}: {msg}")

    def node_class(self, class_type: str) -> NodeClass | None:
        if class_type not in self.classes:
            self.classes[class_type] = W.node_class(self.object_info, class_type)
        return self.classes[class_type]

    # -- 1. loading
    def load(self) -> None:
        for d in self.definitions.values():
            self._read_graph(d.graph, d.data, f"subgraph '{d.name}'")
        self._read_graph(self.root, self.data, "")
        for d in self.definitions.values():  # configured in the order the file lists them
            self._configure_graph(d.graph)
            d.configured = True
            for inst in d.instances:  # instances made before their definition was configured
                self._late_promotion(inst)
        self._configure_graph(self.root)
        self._fix_link_slots(self.root, set())
        self._each_node(self.root, self._drop_stale_widget_inputs, set())
        self._each_node(self.root, self._primitive_widget, set())
        for node in self.root.nodes.values():
            if node.type in ("KSampler", "KSamplerAdvanced"):
                w = node.widget("sampler_name")
                if w is not None and isinstance(w.value, str) and w.value.startswith("sample_"):
                    w.set(w.value[7:])
                    self._note(node, f"sampler_name {w.value!r} (was saved as 'sample_{w.value}')")

    def _read_graph(self, graph: Graph, data: dict[str, Any], where: str) -> None:
        prefix = f"{where}: " if where else ""
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise ConversionError(f"{prefix}'nodes' is not a list")
        for i, raw in enumerate(nodes):
            if not isinstance(raw, dict) or "id" not in raw or not isinstance(raw.get("type"), str):
                raise ConversionError(f"{prefix}nodes[{i}] is not a node (needs an id and a type)")
            if isinstance(raw["id"], bool) or not isinstance(raw["id"], (int, str)):
                raise ConversionError(f"{prefix}nodes[{i}] has a bad id {raw['id']!r}")
            raw = dict(raw)
            if raw["type"] in RENAMED:
                raw["type"] = RENAMED[raw["type"]]
            if self.group_data and raw["type"].startswith("workflow/"):  # the editor's older separator
                raw["type"] = "workflow>" + raw["type"][9:]
            t = raw["type"]
            if t in self.definitions:
                kind = "subgraph"
            elif t.startswith("workflow>") and self._group_def_for(graph, raw) is not None:
                kind = "group"
            elif t == PRIMITIVE:
                kind = "primitive"
            elif t == REROUTE:
                kind = "reroute"
            elif t in NOTE_TYPES:
                kind = "note"
            elif self.node_class(t) is not None:
                kind = "comfy"
            else:
                kind = "missing"
            node = Node(graph, raw, kind)
            if node.key in graph.nodes:
                raise ConversionError(f"{prefix}two nodes have the id {node.key}")
            if node.mode not in MODES:
                raise self.fail(node, f"has an unknown mode {node.mode!r}")
            graph.nodes[node.key] = node
        links = data.get("links") or []
        if not isinstance(links, list):
            raise ConversionError(f"{prefix}'links' is not a list")
        for i, item in enumerate(links):
            if isinstance(item, list) and len(item) >= 6:
                lid, origin, oslot, target, tslot, ltype = item[:6]
            elif isinstance(item, dict) and {"id", "origin_id", "origin_slot", "target_id", "target_slot"} <= set(item):
                lid, origin, oslot, target, tslot = (item[k] for k in ("id", "origin_id", "origin_slot", "target_id",
                                                                      "target_slot"))
                ltype = item.get("type")
            elif item is None:  # LiteGraph leaves holes where links were deleted
                continue
            else:
                raise ConversionError(f"{prefix}links[{i}] is not a link ([id, from, from_slot, to, to_slot, type] "
                                      "or an object)")
            oslot, tslot = _slot_number(oslot), _slot_number(tslot)
            if oslot is None or tslot is None or isinstance(lid, bool) or not isinstance(lid, (int, str)):
                raise ConversionError(f"{prefix}links[{i}] has a bad id or slot: {_show(item)}")
            if lid in graph.links:
                raise ConversionError(f"{prefix}two links have the id {lid}")
            graph.links[lid] = Link(lid, origin, oslot, target, tslot, ltype)

    def _configure_graph(self, graph: Graph) -> None:
        for node in graph.nodes.values():
            self._configure(node)

    def _configure(self, node: Node) -> None:
        data = node.data
        t = node.type
        saved_in = [s for s in data.get("inputs") or []] if isinstance(data.get("inputs"), list) else None
        if data.get("inputs") is not None and saved_in is None:
            raise self.fail(node, "'inputs' is not a list")
        saved_in = saved_in or []
        for s in saved_in:
            if not isinstance(s, dict):
                raise self.fail(node, f"has a malformed input slot: {_show(s)}")
        saved_out = [s for s in data.get("outputs") or [] if isinstance(s, dict)] \
            if isinstance(data.get("outputs"), list) else []
        title = data.get("title")
        if node.kind in ("comfy", "group"):
            node.group = self.group_def(t[9:]) if node.kind == "group" else None
            node.cls = node.group.cls if node.group is not None else self.node_class(t)
            self._configure_comfy(node, saved_in, saved_out)
            node.title = title if W.js_truthy(title) and isinstance(title, str) else node.cls.title  # type: ignore
            if node.group is not None:
                self._group_inner_nodes(node)
        elif node.kind == "subgraph":
            d = self.definitions[t]
            node.definition = d
            node.title = title if isinstance(title, str) and title else d.name
            self._configure_subgraph_node(node, d, saved_in, saved_out)
        else:
            node.title = title if isinstance(title, str) and title else {
                "primitive": "Primitive", "reroute": "Reroute", "note": t, "missing": t}.get(node.kind, t)
            default_in = [Slot("", "*")] if node.kind == "reroute" else []
            default_out = {"primitive": [Output("connect to widget input", "*")],
                           "reroute": [Output("", "*")]}.get(node.kind, [])
            node.inputs = _overlay_slots(default_in, saved_in)
            node.outputs = _overlay_outputs(default_out, saved_out)
            if node.kind == "primitive" and node.graph is self.root and node.outputs:
                self._relink_primitive(node)

    def _relink_primitive(self, node: Node) -> None:
        """The editor's link check (top-level graph only) adds to an output's list a link that the target
        input holds but the output forgot; a primitive writes its value along that list."""
        out = node.outputs[0]
        for link in reversed(list(self.root.links.values())):
            if str(link.origin_id) != node.key or link.origin_slot != 0 or link.id in (out.links or []):
                continue
            target = self.root.node(link.target_id)
            saved = target.data.get("inputs") if target is not None else None
            if isinstance(saved, list) and link.target_slot < len(saved) and isinstance(saved[link.target_slot], dict) \
                    and saved[link.target_slot].get("link") == link.id:
                out.links = [*(out.links or []), link.id]

    def _configure_comfy(self, node: Node, saved_in: list[dict[str, Any]], saved_out: list[dict[str, Any]]) -> None:
        cls = node.cls
        assert cls is not None
        by_name = {s.get("name"): s for s in saved_in}
        defined = {d.name for d in cls.inputs}
        inputs = []
        for d in cls.inputs:
            s = by_name.get(d.name)
            if s is None:
                inputs.append(Slot(d.name, d.type, None, d.widget))
            else:  # the class decides name, type and widget; the saved slot keeps its link (and a stale widget)
                widget = d.widget if d.widget is not None else _widget_name(s.get("widget"))
                inputs.append(Slot(d.name, d.type, s.get("link"), widget))
        for s in saved_in:
            if s.get("name") not in defined:
                inputs.append(Slot(s.get("name"), s.get("type"), s.get("link"), _widget_name(s.get("widget"))))
        node.inputs = inputs
        outputs = []
        for i in range(max(len(cls.outputs), len(saved_out))):
            s = saved_out[i] if i < len(saved_out) else {}
            links = s.get("links") if isinstance(s.get("links"), list) else None
            if i < len(cls.outputs):
                outputs.append(Output(cls.outputs[i][0], cls.outputs[i][1], links))
            else:
                outputs.append(Output(s.get("name"), s.get("type"), links))
        node.outputs = outputs
        node.widgets = [Widget(d) for d in cls.widgets]
        values = node.data.get("widgets_values")
        if isinstance(values, dict):
            self._values_by_name(node, values)
        elif values is not None:
            if not isinstance(values, list):
                raise self.fail(node, "widgets_values is neither a list nor an object")
            self._values_in_order(node, self._migrate(node, values))
        else:
            self._values_in_order(node, [])
        if node.cls.widgets and "Node name for S&R" not in node.properties and node.type not in W.SAVE_NODE_TYPES:
            node.properties["Node name for S&R"] = node.type

    def _migrate(self, node: Node, values: list[Any]) -> list[Any]:
        """The editor's migration of saves that kept a slot for forceInput inputs."""
        cls = node.cls
        assert cls is not None
        names = {w.name for w in node.widgets or []}
        originals = [s for s in cls.specs if s["name"] in names or s.get("forceInput")]
        count = sum(2 if s.get("control_after_generate") or s["name"] in ("seed", "noise_seed") else 1
                    for s in originals)
        if count != len(values):
            return values
        kept, dropped = [], []
        for i, value in enumerate(values):
            spec = originals[i] if i < len(originals) else None
            if spec is not None and spec.get("forceInput"):
                dropped.append(f"{spec['name']}={_show(value)}")
            else:
                kept.append(value)
        if dropped:
            self._note(node, "ignored the saved value of forceInput input(s) " + ", ".join(dropped))
        return kept

    def _values_in_order(self, node: Node, values: list[Any]) -> None:
        saved = [w for w in node.widgets or [] if w.d.saved]
        for w, value in zip(saved, values):
            w.set(value)
        defaults = [w for w in saved[len(values):] if w.d.sent and w.d.spec is not None]
        if defaults:
            self._note(node, "took the default of " + ", ".join(f"{w.name}={_show(W.js_value(w.value))}"
                                                                 for w in defaults)
                       + f" (the file saved {len(values)} value(s) for {len(saved)} widget(s))")
        if len(values) > len(saved):
            extra = values[len(saved):]
            self._note(node, f"ignored {len(extra)} saved value(s) the node no longer has a widget for: "
                             + ", ".join(_show(v) for v in extra))

    def _values_by_name(self, node: Node, values: dict[str, Any]) -> None:
        """Custom nodes that save a name -> value object set their widgets from it by name."""
        missing = []
        for w in node.widgets or []:
            if w.d.saved and w.name in values:
                w.set(values[w.name])
            elif w.d.saved and w.d.sent and w.d.spec is not None:
                missing.append(f"{w.name}={_show(W.js_value(w.value))}")
        if missing:
            self._note(node, "took the default of " + ", ".join(missing))

    def _note(self, node: Node, text: str) -> None:
        self.notes.setdefault(id(node), (node, []))[1].append(text)

    # -- subgraph nodes
    def _configure_subgraph_node(self, node: Node, d: Definition, saved_in: list[dict[str, Any]],
                                 saved_out: list[dict[str, Any]]) -> None:
        # As for any node: the definition's inputs, each with the saved slot of that name (its link); then the
        # saved slots the definition does not have. (A saved file leaves out unlinked widget inputs.)
        by_name = {s.get("name"): s for s in saved_in}
        names = {s.name for s in d.inputs}
        node.inputs = [Slot(s.name, s.type, by_name[s.name].get("link"), _widget_name(by_name[s.name].get("widget")))
                       if s.name in by_name else Slot(s.name, s.type) for s in d.inputs]
        node.inputs += [Slot(s.get("name"), s.get("type"), s.get("link"), _widget_name(s.get("widget")))
                        for s in saved_in if s.get("name") not in names]
        outputs = []
        for i in range(max(len(d.outputs), len(saved_out))):
            s = saved_out[i] if i < len(saved_out) else {}
            links = s.get("links") if isinstance(s.get("links"), list) else None
            outputs.append(Output(d.outputs[i].name, d.outputs[i].type, links) if i < len(d.outputs)
                           else Output(s.get("name"), s.get("type"), links))
        node.outputs = outputs
        node.widgets = []
        d.instances.append(node)
        for slot in node.inputs:
            sub_input = next((s for s in d.inputs if s.name == slot.name), None)
            if sub_input is None:
                continue
            for link_id in sub_input.link_ids:
                link = d.graph.link(link_id)
                if link is None:
                    continue
                target = d.graph.node(link.target_id)
                if target is None or not 0 <= link.target_slot < len(target.inputs):
                    continue
                inner = target.widget_for(target.inputs[link.target_slot])
                if inner is None:
                    continue
                self._promote(node, slot, sub_input, inner)
                break
        values = node.data.get("widgets_values")
        if isinstance(values, list):
            saved = [w for w in node.widgets if w.d.saved]
            for w, value in zip(saved, values):
                w.set(value)

    def _promote(self, node: Node, slot: Slot, sub_input: SubgraphSlot, inner: Widget) -> None:
        assert node.widgets is not None
        node.widgets.append(inner.copy(sub_input.name))
        slot.widget = sub_input.name

    def _late_promotion(self, node: Node) -> None:
        """A subgraph node made before its definition was configured gets its widgets when it is:
        from the first inner link of each input, the inner node's widget named like the input."""
        d = node.definition
        assert d is not None
        for sub_input in d.inputs:
            slot = next((s for s in node.inputs if s.name == sub_input.name), None)
            if slot is None:
                continue
            link = d.graph.link(sub_input.link_ids[0]) if sub_input.link_ids else None
            if link is None:
                raise self.fail(node, f"the editor cannot load this workflow: subgraph '{d.name}' input "
                                      f"{sub_input.name!r} has no link inside")
            target = d.graph.node(link.target_id)
            inner = target.widget(sub_input.name) if target is not None else None
            if inner is not None:
                self._promote(node, slot, sub_input, inner)

    # -- after the whole graph is configured
    def _fix_link_slots(self, graph: Graph, seen: set[int]) -> None:
        """The editor re-points each link at the input slot that holds it (slots follow the class now)."""
        for node in graph.nodes.values():
            for i, slot in enumerate(node.inputs):
                link = graph.link(slot.link) if slot.link else None
                if link is not None:
                    link.target_slot = i
            if node.definition is not None and id(node.definition) not in seen:
                seen.add(id(node.definition))
                self._fix_link_slots(node.definition.graph, seen)

    def _each_node(self, graph: Graph, fn: Callable[[Node], None], seen: set[int]) -> None:
        for node in list(graph.nodes.values()):
            if node.definition is not None and id(node.definition) not in seen:
                seen.add(id(node.definition))
                self._each_node(node.definition.graph, fn, seen)
            fn(node)

    def _drop_stale_widget_inputs(self, node: Node) -> None:
        if node.kind != "comfy":
            return
        for slot in list(node.inputs):
            if slot.widget is not None and node.widget(slot.widget) is None:
                index = node.inputs.index(slot)
                link = node.graph.link(slot.link) if slot.link is not None else None
                if link is not None:
                    del node.graph.links[link.id]
                    origin = node.graph.node(link.origin_id)
                    if origin is not None and 0 <= link.origin_slot < len(origin.outputs):
                        out = origin.outputs[link.origin_slot]
                        if out.links and link.id in out.links:
                            out.links = [x for x in out.links if x != link.id]
                node.inputs.remove(slot)
                for later in node.inputs[index:]:
                    other = node.graph.link(later.link) if later.link is not None else None
                    if other is not None:
                        other.target_slot -= 1
                self._note(node, f"dropped input {slot.name!r}: it stands for a widget the node does not have")

    # -- 2. primitive nodes
    def _primitive_widget(self, node: Node) -> None:
        if node.kind != "primitive" or node.widgets:
            return
        links = node.outputs[0].links if node.outputs else None
        if not links:
            return
        link = node.graph.link(links[0])
        if link is None:
            return
        target = node.graph.node(link.target_id)
        if target is None or not 0 <= link.target_slot < len(target.inputs):
            return
        slot = target.inputs[link.target_slot]
        config = self._config(target, slot)
        if config is None:
            return
        node.widgets = [Widget(d) for d in W.primitive_widget(config)]
        if slot.widget is not None:
            theirs = target.widget(slot.widget)
            if theirs is not None:
                node.widgets[0].set(theirs.value)
        values = node.data.get("widgets_values")
        if isinstance(values, list):
            for w, value in zip(node.widgets, values):
                w.set(value)
        if config.get("type") in ("INT", "FLOAT"):
            self._merge_numeric(node, config)

    def _config(self, node: Node, slot: Slot) -> dict[str, Any] | None:
        """The spec of the input a primitive feeds: the widget's input spec, else a bare one for the type."""
        if slot.widget is None:
            return {"type": slot.type, "name": slot.name} if slot.type in PRIMITIVE_TYPES else None
        if node.kind == "comfy" and node.cls is not None:
            w = node.cls.widget(slot.widget)
            if w is not None and w.spec is not None:
                return dict(w.spec)
            spec = next((s for s in node.cls.specs if s["name"] == slot.widget), None)
            return dict(spec) if spec is not None else None
        if node.kind == "subgraph":
            w = node.widget(slot.widget)
            return dict(w.d.spec) if w is not None and w.d.spec is not None else None
        return None

    def _merge_numeric(self, node: Node, config: dict[str, Any]) -> None:
        """The editor narrows a number primitive to every input it feeds (when their specs agree but
        for range and step), then keeps its value within that range and rounds it to that step."""
        merged = dict(config)
        for link_id in node.outputs[0].links or []:
            link = self.root.link(link_id)
            target = self.root.node(link.target_id) if link is not None else None
            if target is None or not 0 <= link.target_slot < len(target.inputs):  # type: ignore[union-attr]
                continue
            theirs = self._config(target, target.inputs[link.target_slot])  # type: ignore[union-attr]
            if theirs is None:
                continue
            combined = _merge_specs(merged, theirs)
            if combined is None:
                continue
            merged = combined
            w = node.widgets[0]  # type: ignore[index]
            widget_spec = {**merged, "name": "value"}
            fresh = Widget(W.primitive_widget(widget_spec)[0])
            fresh._value = w._value
            node.widgets[0] = fresh  # type: ignore[index]
            lo = merged.get("min") if merged.get("min") is not None else 0
            hi = merged.get("max") if merged.get("max") is not None else 2048
            v = fresh._value
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if v < lo:
                    fresh._value = lo
                elif v > hi:
                    fresh._value = hi
            fresh.callback()

    def _apply_primitive(self, node: Node) -> None:
        """A primitive writes its value into the widget of each input it feeds (at queue time)."""
        links = node.outputs[0].links if node.outputs else None
        if not links:
            return
        value = node.widgets[0].value if node.widgets else UNDEFINED
        if W.js_truthy(value) and node.properties.get("Run widget replace on values"):
            value = self._replace_text(value)
        for link_id in links:
            link = self.root.link(link_id)  # the editor looks the link up in the root graph
            if link is None:
                raise self.fail(node, "the editor cannot queue this workflow: the primitive node's link "
                                      f"{link_id} is not in the top-level graph (a primitive node inside a subgraph)")
            target = node.graph.node(link.target_id)
            if target is None or not 0 <= link.target_slot < len(target.inputs):
                continue
            slot = target.inputs[link.target_slot]
            w = target.widget_for(slot)
            if w is None:
                continue
            w.set(value)
            w.callback()

    def _sync_promoted(self) -> None:
        """Saving the graph (which the editor does as it queues) writes each subgraph node's shown values into
        the widgets they stand for inside: top-level nodes first, then each used subgraph's nodes in file order.
        An inner widget then holds the value of the last subgraph node of that subgraph (they share it)."""
        for node in self.root.nodes.values():
            self._sync_node(node)
        used: set[str] = set()
        stack = [n.definition for n in self.root.nodes.values() if n.definition is not None]
        while stack:
            d = stack.pop()
            if d.id not in used:
                used.add(d.id)
                stack.extend(n.definition for n in d.graph.nodes.values() if n.definition is not None)
        for d in self.definitions.values():
            if d.id in used:
                for node in d.graph.nodes.values():
                    self._sync_node(node)

    def _sync_node(self, node: Node) -> None:
        d = node.definition
        if d is None:
            return
        for w in node.widgets or []:
            if not any(s.name == w.name for s in node.inputs):
                continue
            sub_input = next((s for s in d.inputs if s.name == w.name), None)
            for link_id in sub_input.link_ids if sub_input is not None else []:
                link = d.graph.link(link_id)
                target = d.graph.node(link.target_id) if link is not None else None
                if target is None or not target.widgets or not 0 <= link.target_slot < len(target.inputs):  # type: ignore[union-attr]
                    continue
                inner = target.widget_for(target.inputs[link.target_slot])  # type: ignore[union-attr]
                if inner is not None:
                    inner.set(w.value)

    # -- 3. flattening
    def flatten(self) -> list[DTO]:
        order: list[DTO] = []

        def add(node: Node, path: tuple[str, ...], instance: Node | None, visiting: tuple[int, ...]) -> None:
            dto = DTO(node, path, instance, [Slot(s.name, s.type, s.link, s.widget) for s in node.inputs])
            if node.definition is not None:
                if id(node) in visiting:
                    raise self.fail(node, "contains itself (a subgraph inside its own definition)", dto)
                for inner in _in_order(node.definition.graph):
                    add(inner, (*path, node.key), node, (*visiting, id(node)))
            for inner in node.inner:
                if path:
                    raise self.fail(node, "the editor cannot queue a group node inside a subgraph (convert the group "
                                          "node to a subgraph instead)", dto)
                add(inner, (*path, node.key), node, visiting)
            self.dtos[dto.id] = dto
            order.append(dto)

        for node in _in_order(self.root):
            add(node, (), None, ())
        return order

    # -- 4. links
    def resolve_input(self, dto: DTO, slot: int, visited: set[Any], want: Any = None) -> tuple[str, Any] | None:
        """What feeds input ``slot``: ("link", [id, slot]), ("value", v), or None."""
        node = dto.node
        key = (dto.instance.definition.id if dto.instance and dto.instance.definition else None, node.key, "I", slot)
        if key in visited:
            raise self.fail(node, f"input {slot}: the links form a loop", dto)
        visited.add(key)
        if not 0 <= slot < len(dto.inputs):
            raise self.fail(node, f"has no input slot {slot}", dto)
        inp = dto.inputs[slot]
        if dto.instance is not None and dto.instance.group is not None:
            return self._group_input(dto, slot)
        if inp.link is None:
            return None
        link = node.graph.link(inp.link)
        if link is None:
            raise self.fail(node, f"input {inp.name!r} uses link {inp.link!r}, which is not in 'links'", dto)
        instance = dto.instance
        if instance is not None and link.origin_id == SUBGRAPH_INPUT:
            if not 0 <= link.origin_slot < len(instance.inputs):
                raise self.fail(node, f"input {inp.name!r} comes from subgraph input {link.origin_slot}, which the "
                                      f"subgraph node does not have", dto)
            outer_slot = instance.inputs[link.origin_slot]
            if outer_slot.link is None:
                w = instance.widget_for(outer_slot)
                return ("value", w.value) if w is not None else None
            outer = instance.graph.link(outer_slot.link)
            if outer is None:
                outer_dto = self.dtos[":".join((*dto.path[:-1], instance.key))]
                raise self.fail(instance, f"input {outer_slot.name!r} uses link {outer_slot.link!r}, "
                                          "which is not in 'links'", outer_dto)
            return self.resolve_input(self.dtos[":".join((*dto.path[:-1], instance.key))], outer.target_slot,
                                      visited)
        origin = node.graph.node(link.origin_id)
        if origin is None:
            raise self.fail(node, f"input {inp.name!r} is linked to node {link.origin_id}, which does not exist", dto)
        return self.resolve_output(self.dtos[":".join((*dto.path, origin.key))], link.origin_slot,
                                   want if want is not None else inp.type, visited)

    def resolve_output(self, dto: DTO, slot: int, want: Any, visited: set[Any]) -> tuple[str, Any] | None:
        node = dto.node
        key = (dto.instance.definition.id if dto.instance and dto.instance.definition else None, node.key, "O", slot)
        if key in visited:
            raise self.fail(node, f"output {slot}: the links form a loop", dto)
        visited.add(key)
        if node.group is not None:
            return self._group_output(dto, slot, want, visited)
        if node.mode == BYPASSED:
            index = self._bypass_index(dto, slot, want)
            if index < 0:
                return None
            return self.resolve_input(dto, index, visited)
        if node.definition is not None:
            return self._subgraph_output(dto, slot, want, visited)
        if node.virtual:
            if 0 <= slot < len(dto.inputs):
                return self.resolve_input(dto, slot, visited, want)
            return None
        return "link", [dto.id, slot]

    def _bypass_index(self, dto: DTO, slot: int, want: Any) -> int:
        """Which input of a bypassed node stands for its output ``slot`` (the editor's rule)."""
        inputs = dto.inputs
        node = dto.node
        if not 0 <= slot < len(node.outputs):
            raise self.fail(node, f"is bypassed and linked from its output {slot}, which it does not have", dto)
        out_type = node.outputs[slot].type
        if want == "*" or want == "":
            index = slot if len(inputs) > slot else 0
            if index >= len(inputs):
                raise self.fail(node, "is bypassed but has no input to pass through", dto)
            return index
        same = inputs[slot] if slot < len(inputs) else None
        if same is not None and _connects(same.type, out_type) and _connects(same.type, want):
            return slot
        for i, inp in enumerate(inputs):
            if type(inp.type) is type(want) and inp.type == want:
                return i
        for i, inp in enumerate(inputs):
            if _connects(inp.type, out_type) and _connects(inp.type, want):
                return i
        return -1

    def _subgraph_output(self, dto: DTO, slot: int, want: Any, visited: set[Any]) -> tuple[str, Any] | None:
        node = dto.node
        d = node.definition
        assert d is not None
        if not 0 <= slot < len(node.outputs) or slot >= len(d.outputs):
            raise self.fail(node, f"is linked from its output {slot}, which subgraph '{d.name}' does not have", dto)
        link = next((lk for lk in (d.graph.link(i) for i in d.outputs[slot].link_ids) if lk is not None), None)
        if link is None:
            return None
        inner = d.graph.node(link.origin_id)
        if inner is None:
            raise self.fail(node, f"subgraph '{d.name}' output {d.outputs[slot].name!r} is fed by nothing the "
                                  "editor can run (straight from a subgraph input)", dto)
        return self.resolve_output(self.dtos[":".join((*dto.path, node.key, inner.key))], link.origin_slot, want,
                                   visited)


    # -- legacy group nodes
    def group_def(self, name: str) -> GroupDef | None:
        """The group node type ``name`` (None when the file does not define it, or a node inside is one the
        server lacks: the editor then leaves the type unregistered, a missing node)."""
        if name not in self.groups:
            self.groups[name] = self._build_group(name, self.group_data.get(name))
        return self.groups[name]

    def _group_def_for(self, graph: Graph, raw: dict[str, Any]) -> GroupDef | None:
        try:
            return self.group_def(raw["type"][9:])
        except _GroupRefused as e:
            raise self.fail(Node(graph, raw, "missing"), str(e)) from None

    def _build_group(self, name: str, data: Any) -> GroupDef | None:
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            return None
        nodes = [n for n in data["nodes"] if isinstance(n, dict)]
        if len(nodes) != len(data["nodes"]):
            raise ConversionError(f"group node 'workflow>{name}': extra.groupNodes has a node that is not an object")
        for n in nodes:
            t = n.get("type")
            if t not in (PRIMITIVE, REROUTE, *NOTE_TYPES) and self.node_class(t) is None:
                return None
        for n in nodes:
            t = n.get("type")
            if t == REROUTE:  # seen live: the editor's prompt drops the links through it, which ComfyUI refuses
                raise _GroupRefused(f"holds a Reroute (group node '{name}'), and the editor loses the links through "
                                    "it, leaving the inputs after it unset: convert it to a subgraph in the editor "
                                    "and save again")
            if isinstance(t, str) and (t.startswith("workflow>") or t in self.definitions):
                raise _GroupRefused(f"holds a group node or subgraph node {t!r} (group node '{name}'), which the "
                                    "editor cannot queue")
        links_to: dict[int, dict[int, list[Any]]] = {}
        links_from: dict[int, dict[int, list[list[Any]]]] = {}
        for lk in data.get("links") or []:
            if not isinstance(lk, list) or len(lk) < 4 or lk[0] is None:
                continue
            links_to.setdefault(lk[2], {})[lk[3]] = lk
            links_from.setdefault(lk[0], {}).setdefault(lk[1], []).append(lk)
        linked_from = {(i, slot) for i, by_slot in links_from.items() for slot in by_slot}
        external = {(e[0], e[1]) for e in data.get("external") or [] if isinstance(e, list) and len(e) >= 2}
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        required: dict[str, Any] = {}
        seen: dict[str, int] = {}
        input_map: dict[int, dict[int, int]] = {}
        widget_map: dict[str, tuple[int, str]] = {}
        outputs: list[Any] = []
        output_names: list[str] = []
        output_map: list[tuple[int, int]] = []
        later = []
        count = 0
        primitive_specs: dict[int, list[Any]] = {}  # a primitive's value spec, which its targets rewrite
        primitive_targets: dict[int, list[tuple[int, str]]] = {}

        widget_names: dict[int, dict[str, str | None]] = {}  # inner index -> inner widget -> group widget

        def named(i: int, n: dict[str, Any], input_name: str, spec: Any, extra: dict[str, Any] | None = None):
            custom = ((config.get(str(i)) or {}).get("input") or {}).get(input_name) or {}
            saved = next((s for s in n.get("inputs") or [] if isinstance(s, dict) and s.get("name") == input_name), {})
            key = out = _nullish(custom.get("name"), saved.get("label"), input_name)
            prefix = ""
            if out in seen:
                prefix = f"{_nullish(n.get('title'), n['type'])} "
                key = out = prefix + input_name
                if out in seen:
                    out = f"{prefix}{seen[out]} {input_name}"
            seen[key] = seen.get(key, 1) + 1
            if input_name in ("seed", "noise_seed"):
                extra = {**(extra or {}), "control_after_generate": f"{prefix}control_after_generate"}
            if isinstance(spec, list) and spec and spec[0] == "IMAGEUPLOAD":  # the file widget it reads through
                target = sch.options(spec).get("widget", "image")
                extra = {**(extra or {}), "widget": widget_names.get(i, {}).get(target) or "image"}
            if extra and isinstance(spec, list) and spec:
                spec = [spec[0], {**sch.options(spec), **extra}]
            return out, spec, custom

        def fed_by_primitive(link: list[Any], target: int, input_name: str, specs: dict[str, Any]) -> None:
            """A primitive inside feeding this widget: the primitive's widget on the group takes the target's
            options and a control combo; the target gets its value at queue time."""
            src = link[0]
            if not (isinstance(src, int) and 0 <= src < len(nodes)) or nodes[src].get("type") != PRIMITIVE:
                return
            spec, group_name = primitive_specs.get(src), widget_names.get(src, {}).get("value")
            if spec is None or group_name is None:  # the editor fails to register such a group node
                raise _GroupRefused(f"holds a PrimitiveNode (group node '{name}') that the editor cannot build")
            spec[1] = dict(sch.options(specs[input_name]))
            spec[1]["control_after_generate"] = True
            spec[1]["control_prefix"] = group_name[:max(len(group_name) - 6, 0)]  # the name less "value"
            primitive_targets.setdefault(src, []).append((target, input_name))

        for i, n in enumerate(nodes):
            if n["type"] in NOTE_TYPES:  # the editor skips what it has no definition for
                continue
            if n["type"] == PRIMITIVE:
                spec = self._group_primitive(name, n, links_from.get(i, {}).get(0), nodes)
                if spec is None:  # not linked: no widget on the group
                    continue
                primitive_specs[i] = spec
                specs = {"value": spec}
                schema = {"output": [spec[0]]}
                sockets = set()
            else:
                schema = sch.class_schema(self.object_info, n["type"]) or {}
                # The class as the editor's extensions leave it: a LoadImage's upload button is one of its widgets.
                required_in, optional_in = W.editor_inputs(schema, n["type"])
                specs = {**required_in, **optional_in}
                cls = self.node_class(n["type"])
                assert cls is not None
                sockets = {s.name for s in cls.inputs if s.widget is None}
            saved = [s for s in n.get("inputs") or [] if isinstance(s, dict)]
            converted: dict[int, str] = {}
            slots = []
            names_here = widget_names.setdefault(i, {})
            for input_name, spec in specs.items():
                if W.input_is_widget(spec):
                    if input_name in sockets:  # the editor makes it a widget of the group, its inner slots shift
                        raise _GroupRefused(
                            f"holds a {n['type']} whose input {input_name!r} is a socket for a value (forceInput), "
                            f"which the editor's group node '{name}' misplaces; convert the group node to a subgraph "
                            "in the editor and save again")
                    index = next((k for k, s in enumerate(saved) if s.get("name") == input_name
                                  and _widget_name(s.get("widget")) == input_name), -1)
                    if index > -1:
                        converted[index] = input_name
                        names_here[input_name] = None
                    else:
                        out, spec2, _ = named(i, n, input_name, spec)
                        required[out] = spec2
                        widget_map[out] = (i, input_name)
                        names_here[input_name] = out
                else:
                    slots.append(input_name)
            mine = links_to.get(i, {})
            in_map = input_map.setdefault(i, {})
            for k, input_name in enumerate(slots):
                if k in mine:
                    fed_by_primitive(mine[k], i, input_name, specs)
                    continue
                out, spec2, custom = named(i, n, input_name, specs[input_name])
                if custom.get("visible") is False:
                    continue
                required[out] = spec2
                in_map[k] = count
                count += 1

            def convert(i=i, n=n, slots=slots, converted=converted, mine=mine, in_map=in_map, specs=specs):
                nonlocal count
                for k, input_name in enumerate(converted[x] for x in sorted(converted, key=str)):
                    if len(slots) + k in mine:
                        fed_by_primitive(mine[len(slots) + k], i, input_name, specs)
                        continue
                    out, spec2, _ = named(i, n, input_name, specs[input_name], {"defaultInput": True})
                    required[out] = spec2
                    widget_map[out] = (i, input_name)
                    widget_names[i][input_name] = out
                    in_map[len(slots) + k] = count
                    count += 1
            later.append(convert)
            names = schema.get("output_name") if isinstance(schema.get("output_name"), list) else []
            for slot, out_type in enumerate(schema.get("output") or []):
                custom = ((config.get(str(i)) or {}).get("output") or {}).get(str(slot)) or {}
                hidden = (i, slot) in linked_from and (i, slot) not in external
                if not custom.get("visible", not hidden):
                    continue
                if n["type"] == PRIMITIVE:
                    raise _GroupRefused(f"holds a PrimitiveNode that also feeds nodes outside group node '{name}'; "
                                        "autopod does not convert that: convert it to a subgraph in the editor")
                output_map.append((i, slot))
                outputs.append(out_type)
                output_names.append(str(custom.get("name") or (names[slot] if slot < len(names) else out_type)))
        for convert in later:
            convert()
        entry = {"input": {"required": required}, "output": outputs, "output_name": output_names,
                 "name": f"workflow>{name}", "display_name": name}
        cls = W.node_class({entry["name"]: entry}, entry["name"])
        assert cls is not None
        return GroupDef(name, nodes, cls, links_to, input_map, output_map, widget_map, primitive_targets)

    def _group_primitive(self, name: str, n: dict[str, Any], links: list[list[Any]] | None,
                         nodes: list[dict[str, Any]]) -> list[Any] | None:
        """A linked primitive's value spec in a group node: the type its first link carries; for a combo, the
        choices of the input that link feeds."""
        if not links:
            return None
        kind = links[0][5] if len(links[0]) > 5 else None
        if kind == "COMBO":
            outs = n.get("outputs")
            source = _widget_name(outs[0].get("widget")) if isinstance(outs, list) and outs and \
                isinstance(outs[0], dict) else None
            target = links[0][2]
            t = nodes[target].get("type") if isinstance(target, int) and 0 <= target < len(nodes) else None
            required, optional = W.editor_inputs(sch.class_schema(self.object_info, t) or {}, t or "")
            spec = _nullish(required.get(source), optional.get(source))
            kind = spec[0] if isinstance(spec, list) and spec else None
        if not (isinstance(kind, list) or (isinstance(kind, str) and kind != "COMBO")):
            raise _GroupRefused(f"holds a PrimitiveNode whose type the file does not give (group node '{name}')")
        return [kind, {}]

    def _group_inner_nodes(self, node: Node) -> None:
        """The nodes a group node combines, each configured from its saved copy; ids ``group:index``."""
        g = node.group
        assert g is not None
        graph = Graph(None)
        for i, raw in enumerate(g.nodes):
            kind = "primitive" if raw["type"] == PRIMITIVE else "note" if raw["type"] in NOTE_TYPES else "comfy"
            inner = Node(graph, {**raw, "id": i}, kind)  # a primitive or note inside is virtual: not sent
            graph.nodes[inner.key] = inner
            if kind == "comfy":
                self._configure(inner)
            node.inner.append(inner)

    def _sync_groups(self) -> None:
        """Before it builds the prompt the editor copies each group node's widget values into the inner widgets
        they stand for."""
        for node in self.root.nodes.values():
            if node.group is None:
                continue
            for name, (i, inner_name) in node.group.widget_map.items():
                w = node.widget(name)
                if w is None:
                    continue
                if node.inner[i].kind == "primitive":  # its value goes to the widgets it feeds
                    targets = [node.inner[t].widget(n) for t, n in node.group.primitive_targets.get(i, [])]
                else:
                    targets = [node.inner[i].widget(inner_name)]
                for inner in targets:
                    if inner is not None:
                        inner._value, inner._changed = w.value, True

    def _group_input(self, dto: DTO, slot: int) -> tuple[str, Any] | None:
        """An inner node's input, as the editor's group node resolves it: a group node input gives the node
        at the other end of its link as it is (no reroute or bypass followed), an inner link the inner node."""
        g, group, i = dto.instance.group, dto.instance, int(dto.node.key)  # type: ignore[union-attr]
        assert g is not None and group is not None
        ext = g.input_map.get(i, {}).get(slot)
        if ext is not None:
            link = self.root.link(group.inputs[ext].link) if ext < len(group.inputs) else None
            return None if link is None else ("link", [str(link.origin_id), link.origin_slot])
        lk = g.links_to.get(i, {}).get(slot)
        if lk is None or not 0 <= lk[0] < len(g.nodes) or g.nodes[lk[0]].get("type") == PRIMITIVE:
            return None
        return "link", [f"{group.key}:{lk[0]}", lk[1]]

    def _group_output(self, dto: DTO, slot: int, want: Any, visited: set[Any]) -> tuple[str, Any] | None:
        node = dto.node
        g = node.group
        assert g is not None
        if node.mode == BYPASSED:  # the first input, from the output's own slot on, of exactly the wanted type
            for index in [slot, *range(len(dto.inputs))]:
                if 0 <= index < len(dto.inputs) and dto.inputs[index].type == want:
                    return self.resolve_input(dto, index, visited)
            return None
        if not 0 <= slot < len(g.output_map):
            raise self.fail(node, f"is linked from its output {slot}, which group node '{g.name}' does not have", dto)
        i, inner_slot = g.output_map[slot]
        return "link", [f"{dto.id}:{i}", inner_slot]

    # -- 5. the prompt
    def prompt(self) -> Result:
        self.load()
        self._each_node(self.root, lambda n: self._apply_primitive(n) if n.kind == "primitive" else None, set())
        self._sync_promoted()
        self._sync_groups()
        order = self.flatten()
        prompt: dict[str, dict[str, Any]] = {}
        paths: dict[str, str] = {}
        for dto in order:
            node = dto.node
            if node.virtual or node.mode in (MUTED, BYPASSED):
                continue
            if node.kind == "missing":
                if _UUID.match(node.type):
                    raise self.fail(node, "is a subgraph whose definition is not in the file "
                                          "(definitions.subgraphs)", dto)
                raise self.fail(node, _unknown_class(node.type), dto)
            if node.cls is not None and node.cls.unsupported:
                raise self.fail(node, f"{node.cls.unsupported}; export the workflow with Save (API) from the editor",
                                dto)
            inputs: dict[str, Any] = {}
            for w in node.widgets or []:
                if not w.name or not w.d.sent:
                    continue
                value = self._serialize(node, w, dto)
                if value is UNDEFINED:
                    continue
                inputs[w.name] = _wrap(W.js_value(value))
            for i, inp in enumerate(dto.inputs):
                resolved = self.resolve_input(dto, i, set())
                if resolved is None:
                    continue
                kind, value = resolved
                if kind == "value":
                    if value is UNDEFINED:
                        inputs.pop(inp.name, None)
                        continue
                    inputs[inp.name] = _wrap(W.js_value(value))
                else:
                    inputs[inp.name] = value
            prompt[dto.id] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": node.title}}
            if dto.path:
                paths[dto.id] = self.path_text(dto)
        for entry in prompt.values():  # a link to a node that is not in the prompt (muted) is dropped
            for name in [k for k, v in entry["inputs"].items()
                         if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in prompt]:
                del entry["inputs"][name]
        if not prompt:
            raise ConversionError("no node would run (every node is muted, bypassed or a note)")
        emitted = {id(self.dtos[k].node) for k in prompt}
        return Result(prompt, self._note_lines(emitted), paths)

    def path_text(self, dto: DTO) -> str:
        names = []
        graph = self.root
        for key in dto.path:
            inst = graph.node(key)
            if inst is None or inst.definition is None:
                break
            names.append(f"'{inst.title}'")
            graph = inst.definition.graph
        return "subgraph " + " > ".join(names)

    def _note_lines(self, emitted: set[int]) -> list[str]:
        """One line per node the notes are about: nodes in the prompt, and subgraph nodes."""
        lines = []
        for node, texts in self.notes.values():
            if node.kind == "comfy" and id(node) not in emitted:
                continue
            lines.append(f"{self.label(node)}: {'; '.join(texts)}")
        return lines

    def _serialize(self, node: Node, w: Widget, dto: DTO) -> Any:
        try:
            value = w.value
        except _BadValue as e:
            raise self.fail(node, str(e), dto) from None
        if w.d.serialize == "dynamic" and isinstance(value, str):
            return W.resolve_dynamic_prompt(value, self.rng)
        if w.d.serialize == "filename":
            if not isinstance(value, str):
                raise self.fail(node, f"{w.name} is {_show(value)}, not text; the editor cannot queue it", dto)
            return self._replace_text(value)
        return value

    def _replace_text(self, value: Any) -> Any:
        """The editor's text replacements: ``%date:yyyy-MM-dd%`` and ``%Node.widget%`` (a node found by its
        "Node name for S&R", else its title; characters a file name cannot hold become "_")."""
        if not isinstance(value, str):
            raise ConversionError(f"cannot replace %...% patterns in {_show(value)}: not text")
        nodes = self._all_nodes(self.root)

        def sub(m: re.Match[str]) -> str:
            text = m.group(1)
            parts = text.split(".")
            if len(parts) != 2:
                if parts[0].startswith("date:"):
                    return _format_date(parts[0][5:], self.now())
                return m.group(0)
            found = [n for n in nodes if n.properties.get("Node name for S&R") == parts[0]] or \
                [n for n in nodes if n.title == parts[0]]
            if not found:
                return m.group(0)
            widget = found[0].widget(parts[1])
            if widget is None:
                return m.group(0)
            v = widget.value
            shown = "" if v is None or v is UNDEFINED else W.js_string(v)
            return re.sub(r'[/?<>\\:*|"\x00-\x1F\x7F]', "_", shown)

        return re.sub(r"%([^%]+)%", sub, value)

    def _all_nodes(self, graph: Graph) -> list[Node]:
        """Every node, those inside a subgraph node before it (the editor's order for finding one by name)."""
        out: list[Node] = []
        for node in graph.nodes.values():
            if node.definition is not None:
                out.extend(self._all_nodes(node.definition.graph))
            out.append(node)
        return out


def convert(data: dict[str, Any], object_info: dict[str, Any], *, rng: random.Random | None = None,
            now: Callable[[], _dt.datetime] = _dt.datetime.now) -> Result:
    """The prompt the editor sends for the editor-format graph ``data`` (raises ConversionError)."""
    return Converter(data, object_info, rng or random.Random(), now).prompt()


# -- helpers ---------------------------------------------------------------------------------------------------
def _in_order(graph: Graph) -> list[Node]:
    """Nodes in the saved execution order (``order``), then the rest in file order."""
    nodes = list(graph.nodes.values())
    return sorted(nodes, key=lambda n: (0, n.data["order"]) if isinstance(n.data.get("order"), int)
                  and not isinstance(n.data.get("order"), bool) else (1, 0))


def _overlay_slots(base: list[Slot], saved: list[dict[str, Any]]) -> list[Slot]:
    """LiteGraph copies saved slots over a node's own ones, index by index."""
    out = list(base)
    for i, s in enumerate(saved):
        slot = Slot(s.get("name"), s.get("type"), s.get("link"), _widget_name(s.get("widget")))
        if i < len(out):
            out[i] = slot
        else:
            out.append(slot)
    return out


def _overlay_outputs(base: list[Output], saved: list[dict[str, Any]]) -> list[Output]:
    out = list(base)
    for i, s in enumerate(saved):
        links = s.get("links") if isinstance(s.get("links"), list) else None
        o = Output(s.get("name"), s.get("type"), links)
        if i < len(out):
            out[i] = o
        else:
            out.append(o)
    return out


def _nullish(*values: Any) -> Any:
    """JavaScript's ``a ?? b ?? c``: the first value that is not null or undefined."""
    return next((v for v in values if v is not None), values[-1])


def _widget_name(locator: Any) -> str | None:
    if isinstance(locator, dict) and isinstance(locator.get("name"), str):
        return locator["name"]
    return None


def _slot_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _connects(a: Any, b: Any) -> bool:
    """LiteGraph's ``isValidConnection``: wildcards match, "A,B" lists match any member, case-insensitive."""
    if a == "" or a == "*" or a is None or a == 0:
        a = 0
    if b == "" or b == "*" or b is None or b == 0:
        b = 0
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_connects(x, y) for x in a.split(",") for y in b.split(","))


_IGNORED_KEYS = frozenset({"default", "forceInput", "defaultInput", "control_after_generate", "multiline", "tooltip",
                           "dynamicPrompts"})


def _merge_specs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """The editor's ``mergeInputSpec`` for two number inputs: the ranges' overlap and the steps' common
    multiple, when every other option agrees; None when they cannot share one value."""
    if a.get("type") != b.get("type"):
        return None
    lo1 = a.get("min") if a.get("min") is not None else float("-inf")
    hi1 = a.get("max") if a.get("max") is not None else float("inf")
    lo2 = b.get("min") if b.get("min") is not None else float("-inf")
    hi2 = b.get("max") if b.get("max") is not None else float("inf")
    if lo1 > hi2 or hi1 < lo2:
        return None
    s1 = a.get("step") if a.get("step") is not None else 1
    s2 = b.get("step") if b.get("step") is not None else 1
    both = {"min": max(lo1, lo2), "max": min(hi1, hi2), "step": _lcm(s1, s2)}
    left, right = {**a, **both}, {**b, **both}
    for k in set(left) | set(right):
        if k in _IGNORED_KEYS:
            continue
        if left.get(k) != right.get(k) and not (left.get(k) is None and right.get(k) is None):
            return None
    return {**left, **right}


def _lcm(a: float, b: float) -> float:
    """JavaScript's ``Math.abs(a * b) / gcd(a, b)`` with ``%`` as the remainder (steps may be fractions)."""
    x, y = a, b
    while y:
        x, y = y, math.fmod(x, y)
    return abs(a * b) / x if x else float("nan")


def _format_date(text: str, now: _dt.datetime) -> str:
    parts = {"d": now.day, "M": now.month, "h": now.hour, "m": now.minute, "s": now.second}

    def sub(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "yy":
            return str(now.year)[2:]
        if t == "yyyy":
            return str(now.year)
        if t[0] in parts:
            return str(parts[t[0]]).rjust(len(t), "0")
        return t

    return re.sub(r"dd?|MM?|hh?|mm?|ss?|yyy?y?", sub, text)


def _unknown_class(cls: str) -> str:
    return (f"the server has no node class {cls!r} (a custom node that is not installed there, "
            "or a node that only exists in the editor)")


def _wrap(value: Any) -> Any:
    """A list value would read as a link; the server unwraps ``{"__value__": [...]}``."""
    return {"__value__": value} if isinstance(value, list) else value


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."

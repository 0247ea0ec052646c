"""Node classes as the ComfyUI editor builds them from the server's /object_info.

Modelled on the editor that ComfyUI 0.3.64 serves (frontend 1.27.10). A saved node is
rebuilt from its class, not from the file: the class decides which widgets exist, in
which order, what they hold before the saved values are applied, which of them the
file stores (``widgets_values``) and which of them go into the prompt. This module
answers those questions for one class; ``editor`` applies them to a saved graph.

How the editor builds a node of a class:

1. Its extensions first change the definition: a combo with ``image_upload`` (or
   video/animated upload) gets an ``upload`` input (a button) appended to the required
   inputs; audio nodes get an ``audioUI`` player (and ``upload`` for ``audio_upload``);
   SaveGLB and Preview3D get a 3D viewer ``image``.
2. Inputs are laid out in ``input_order`` (required, then optional, then any name it
   does not list, such as ``upload``). Sockets come first: every input the editor has
   no widget for (MODEL, IMAGE, ...) and every ``forceInput`` one; then, in the same
   order, each widget input adds its widget(s) and a socket that carries its name.
3. Widgets and their values before any saved value: INT and FLOAT ``default`` else 0,
   BOOLEAN ``default`` else false, STRING ``default`` else "" (a multiline one is a
   text area: whatever it is given reads back as text), a combo its ``default`` when
   that is truthy, else its first choice, else "Loading..." for a remote combo, else
   nothing. An INT with ``control_after_generate`` (or named ``seed``/``noise_seed``
   without the flag) gets a "control after generate" combo after it ("randomize");
   a combo with the flag gets that combo and a filter text. A remote combo gets an
   "Auto-refresh after generation" toggle and, with ``refresh_button``, a button
   named ``refresh`` whose value "refresh" the editor does send.
4. Each widget is *saved* (one slot of ``widgets_values``) unless the editor marks the
   widget itself unsaved (PreviewAny's ``preview``, the audio player), and *sent* in the
   prompt unless it is marked so (control combos, filters, upload buttons, the toggle).
5. At queue time a text with ``dynamicPrompts`` is resolved (``{a|b}``), the
   ``filename_prefix`` of the editor's save nodes has ``%date:...%`` and
   ``%Node.widget%`` replaced, and an upload combo reads its file name through the
   upload widget (``name [output]`` when its folder is not ``input``).

Widgets the editor draws and fills itself at queue time (a webcam capture, the Load3D
viewer's rendered images, an audio recording) cannot be reproduced here: a live node
with one is refused (``NodeClass.unsupported``).
"""

from __future__ import annotations

import math
import random
import re
from decimal import Decimal
from dataclasses import dataclass, field
from typing import Any

from . import schema as sch


class _Undefined:
    """JavaScript's ``undefined``: a widget value the editor leaves out of the prompt."""

    _instance: "_Undefined | None" = None

    def __new__(cls) -> "_Undefined":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()

# The editor's (frontend 1.27.10) English titles for classes whose server definition gives no
# display name: it ships them in its own locale and shows those.
EDITOR_TITLES = {
    "ImageBlend": "Image Blend",
    "ImageBlur": "Image Blur",
    "ImageQuantize": "Image Quantize",
    "ImageSharpen": "Image Sharpen",
    "ImageScaleToTotalPixels": "Scale Image to Total Pixels",
}
# Nodes whose filename_prefix the editor rewrites at queue time (%date:...%, %Node.widget%).
SAVE_NODE_TYPES = frozenset({"SaveImage", "SaveAnimatedWEBP", "SaveWEBM", "SaveAudio", "SaveGLB", "SaveAnimatedPNG",
                             "CLIPSave", "VAESave", "ModelSave", "LoraSave", "SaveLatent"})
AUDIO_PLAYER_TYPES = ("LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus")
# Input types the editor has a widget for. The last group it fills itself at queue time (camera, 3D
# render, microphone) or draws with widgets no ComfyUI 0.3.64 node uses; a live node with one is refused.
MODELLED_WIDGETS = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "IMAGEUPLOAD", "AUDIO_UI", "AUDIOUPLOAD",
                              "PREVIEW_3D", "PREVIEW_3D_ANIMATION"})
EDITOR_ONLY_WIDGETS = frozenset({"WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "AUDIO_RECORD", "MARKDOWN", "FILEUPLOAD",
                                 "COLOR", "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA",
                                 "SELECTBUTTON", "TEXTAREA"})
WIDGET_TYPES = MODELLED_WIDGETS | EDITOR_ONLY_WIDGETS
_UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class WidgetDef:
    """One widget of a class.

    ``kind``: number, combo, text, textarea (reads back as text), toggle, button, fixed (a
    viewer or player whose value is always ""), multiselect. ``spec`` is the input's options
    (with ``name`` and ``type``) for the widgets an input makes; ``serialize`` is how the
    editor turns the value into the sent one at queue time: "dynamic" or "filename".
    ``upload`` is set on a file combo an upload button reads through: its folder and
    whether it takes several files.
    """

    name: str
    kind: str
    default: Any
    saved: bool = True
    sent: bool = True
    spec: dict[str, Any] | None = None
    serialize: str | None = None
    upload: tuple[str, bool] | None = None

    def with_(self, **changes: Any) -> "WidgetDef":
        return WidgetDef(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class SlotDef:
    """An input socket; ``widget`` names the widget it stands for (a widget input)."""

    name: str
    type: Any
    widget: str | None = None


@dataclass(frozen=True)
class NodeClass:
    name: str
    title: str
    inputs: tuple[SlotDef, ...]
    outputs: tuple[tuple[str, Any], ...]
    widgets: tuple[WidgetDef, ...]
    specs: tuple[dict[str, Any], ...]  # every input spec, required then optional (the editor's migration uses it)
    unsupported: str | None = None

    def widget(self, name: str) -> WidgetDef | None:
        return next((w for w in self.widgets if w.name == name), None)


@dataclass
class _Build:
    widgets: list[WidgetDef] = field(default_factory=list)
    unsupported: str | None = None


def node_class(object_info: dict[str, Any], class_type: str) -> NodeClass | None:
    """The class as the editor builds it, or None when the server has no such class."""
    schema = sch.class_schema(object_info, class_type)
    if schema is None:
        return None
    specs = _editor_specs(schema, class_type)
    ordered = _ordered(schema, specs)
    sockets: list[SlotDef] = []
    widget_slots: list[SlotDef] = []
    build = _Build()
    for spec in ordered:
        key = spec.get("widgetType") or spec["type"]
        if key not in WIDGET_TYPES or spec.get("forceInput"):
            sockets.append(SlotDef(spec["name"], spec["type"]))
    for spec in ordered:
        key = spec.get("widgetType") or spec["type"]
        if key not in WIDGET_TYPES or spec.get("forceInput"):
            continue
        _add_widgets(build, spec, key)
        widget_slots.append(SlotDef(spec["name"], spec["type"], spec["name"]))
    widgets = _node_created(class_type, build.widgets)
    outputs = []
    names = schema.get("output_name") or []
    for i, out in enumerate(schema.get("output") or []):
        name = names[i] if i < len(names) and names[i] else f"output_{i}"
        outputs.append((name, "COMBO" if isinstance(out, list) else out))
    return NodeClass(class_type, editor_title(schema, class_type), tuple(sockets + widget_slots), tuple(outputs),
                     tuple(widgets), tuple(specs.values()), build.unsupported)


def editor_title(schema: dict[str, Any] | None, class_type: str) -> str:
    """A new node's title in the editor: its English name for the class, else the display name, else the class."""
    if class_type in EDITOR_TITLES and not (schema or {}).get("display_name"):
        return EDITOR_TITLES[class_type]
    return sch.display_name(schema, class_type)


def editor_inputs(schema: dict[str, Any], class_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The class's required and optional inputs (server-style specs, in order) as the editor's extensions
    leave its definition: with the upload button, audio player or 3D viewer they add."""
    inputs = schema.get("input") if isinstance(schema.get("input"), dict) else {}
    required = dict(inputs.get("required") or {}) if isinstance(inputs.get("required"), dict) else {}
    optional = dict(inputs.get("optional") or {}) if isinstance(inputs.get("optional"), dict) else {}
    # beforeRegisterNodeDef hooks, in the order the editor registers them.
    for name, spec in required.items():
        if _is_upload_combo(spec):
            required["upload"] = ["IMAGEUPLOAD", {**sch.options(spec), "imageInputName": name}]
            break
    if class_type in AUDIO_PLAYER_TYPES:
        required["audioUI"] = ["AUDIO_UI", {}]
    if sch.options(required.get("audio")).get("audio_upload") is True:
        required["upload"] = ["AUDIOUPLOAD", {}]
    if class_type in ("SaveGLB", "Preview3D"):
        required["image"] = ["PREVIEW_3D"]
    if class_type == "Preview3DAnimation":
        required["image"] = ["PREVIEW_3D_ANIMATION"]
    return required, optional


def input_is_widget(spec: Any) -> bool:
    """Whether the editor has a widget for an input of this spec (``forceInput`` aside)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    return isinstance(spec[0], list) or (isinstance(spec[0], str) and spec[0] in WIDGET_TYPES)


def _editor_specs(schema: dict[str, Any], class_type: str) -> dict[str, dict[str, Any]]:
    """Every input (required, then optional) as the editor's extensions leave the definition:
    name -> options with ``name``, ``type`` (COMBO for both combo styles), ``isOptional`` and,
    for a combo, ``options`` (its choices)."""
    required, optional = editor_inputs(schema, class_type)
    specs: dict[str, dict[str, Any]] = {}
    for section, entries in (("required", required), ("optional", optional)):
        for name, spec in entries.items():
            specs[name] = _v2(name, spec, section == "optional")
    return specs


def _is_upload_combo(spec: Any) -> bool:
    if not isinstance(spec, (list, tuple)) or len(spec) < 2 or not isinstance(spec[1], dict):
        return False
    return (any(spec[1].get(f) is True for f in _UPLOAD_FLAGS)
            and (isinstance(spec[0], list) or spec[0] == "COMBO"))


def _v2(name: str, spec: Any, optional: bool) -> dict[str, Any]:
    opts = sch.options(spec)
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else None
    out: dict[str, Any] = {"name": name, "isOptional": optional, **opts}
    if optional and opts.get("defaultInput"):
        out["forceInput"] = True  # the editor reads an optional defaultInput as forceInput
    if isinstance(kind, list) or kind == "COMBO":
        out = {"type": "COMBO", **out,
               "options": kind if isinstance(kind, list) else (opts.get("options") if opts.get("options") is not None
                                                                else [])}
    else:
        out = {"type": kind if isinstance(kind, str) else "UNKNOWN", **out}
    return out


def _ordered(schema: dict[str, Any], specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The editor's ``getOrderedInputSpecs``: input_order's required, its optional, then the rest."""
    order = schema.get("input_order")
    if not isinstance(order, dict) or not order:
        return list(specs.values())
    out: list[dict[str, Any]] = []
    for section, optional in (("required", False), ("optional", True)):
        for name in order.get(section) or []:
            spec = specs.get(name) if isinstance(name, str) else None
            if spec is not None and bool(spec.get("isOptional")) == optional and spec not in out:
                out.append(spec)
    seen = {s["name"] for s in out}
    out.extend(s for n, s in specs.items() if n not in seen)
    return out


def _add_widgets(build: _Build, spec: dict[str, Any], key: str) -> None:
    name = spec["name"]
    w = build.widgets
    if key == "INT":
        w.append(WidgetDef(name, "number", _default(spec, 0), spec=spec))
        cag = spec.get("control_after_generate")
        if cag if cag is not None else name in ("seed", "noise_seed"):
            w.append(WidgetDef(_control_name(spec), "combo", "randomize", sent=False))
    elif key == "FLOAT":
        w.append(WidgetDef(name, "number", _default(spec, 0), spec=spec))
    elif key == "BOOLEAN":
        w.append(WidgetDef(name, "toggle", _default(spec, False), spec=spec))
    elif key == "STRING":
        default = _default(spec, "")
        serialize = "dynamic" if spec.get("dynamicPrompts") is True else None
        if spec.get("multiline"):
            w.append(WidgetDef(name, "textarea", textarea_value(default), spec=spec, serialize=serialize))
        else:
            w.append(WidgetDef(name, "text", default, spec=spec, serialize=serialize))
    elif key == "COMBO":
        if spec.get("multi_select"):
            w.append(WidgetDef(name, "multiselect", [], spec=spec))
            return
        w.append(WidgetDef(name, "combo", _combo_default(spec), spec=spec))
        if spec.get("remote"):
            w.append(WidgetDef("Auto-refresh after generation", "toggle", False, sent=False))
            if isinstance(spec["remote"], dict) and spec["remote"].get("refresh_button"):
                w.append(WidgetDef("refresh", "button", "refresh"))
        if spec.get("control_after_generate"):
            w.append(WidgetDef(_control_name(spec), "combo", "randomize", sent=False))
            w.append(WidgetDef(_control_name(spec, "control_filter_list"), "text", "", sent=False))
    elif key == "IMAGEUPLOAD":
        target = spec.get("imageInputName")
        for i, existing in enumerate(w):
            if existing.name == target:
                w[i] = existing.with_(upload=(str(spec.get("image_folder") or "input"), bool(spec.get("allow_batch"))))
                break
        w.append(WidgetDef(name, "button", "image", sent=False))
    elif key == "AUDIO_UI":
        w.append(WidgetDef(name, "fixed", "", saved=False))
    elif key == "AUDIOUPLOAD":
        w.append(WidgetDef(name, "button", "", sent=False))
    elif key in ("PREVIEW_3D", "PREVIEW_3D_ANIMATION"):
        w.append(WidgetDef("image", "fixed", ""))
    else:
        build.unsupported = build.unsupported or (
            f"input {name!r} uses the editor's own {key} widget, whose value the editor makes at queue time")
        w.append(WidgetDef(name, "unsupported", UNDEFINED))


def _default(spec: dict[str, Any], fallback: Any) -> Any:
    value = spec.get("default")
    return fallback if value is None else value


def _combo_default(spec: dict[str, Any]) -> Any:
    if js_truthy(spec.get("default")):
        return spec["default"]
    choices = spec.get("options")
    if isinstance(choices, list) and choices:
        return choices[0]
    if spec.get("remote"):
        return "Loading..."
    return UNDEFINED


def _control_name(spec: dict[str, Any], default: str = "control_after_generate") -> str:
    if default == "control_after_generate" and isinstance(spec.get("control_after_generate"), str):
        return spec["control_after_generate"]
    if isinstance(spec.get(default), str):
        return spec[default]
    if spec.get("control_prefix"):
        return f"{spec['control_prefix']} {default}"
    return default


def _node_created(class_type: str, widgets: list[WidgetDef]) -> list[WidgetDef]:
    """What the editor's nodeCreated hooks add or change once a node exists."""
    widgets = list(widgets)
    if class_type == "PreviewAny":
        widgets.append(WidgetDef("preview", "textarea", "", saved=False))
    if class_type in SAVE_NODE_TYPES:
        widgets = [w.with_(serialize="filename") if w.name == "filename_prefix" else w for w in widgets]
    return widgets


def primitive_widget(config: dict[str, Any]) -> list[WidgetDef]:
    """The widgets a PrimitiveNode makes for the input it feeds (``config``: that input's spec):
    ``value`` like the input's own widget, then a control combo for numbers and combos."""
    build = _Build()
    key = config.get("widgetType") or config.get("type")
    spec = {**config, "name": "value"}
    if key in MODELLED_WIDGETS and key not in ("IMAGEUPLOAD", "AUDIOUPLOAD", "AUDIO_UI"):
        _add_widgets(build, spec, key)
    else:
        build.widgets.append(WidgetDef("value", "text", None, spec=spec))
    first = build.widgets[0]
    if not config.get("control_after_generate") and first.kind in ("number", "combo"):
        build.widgets.append(WidgetDef("control_after_generate", "combo", "fixed", sent=False))
    return build.widgets


# -- JavaScript's reading of values ---------------------------------------------------------------------------
def js_truthy(value: Any) -> bool:
    if value is UNDEFINED or value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def js_string(value: Any) -> str:
    """JavaScript's ``String(value)``."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return js_number_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join("" if v is None or v is UNDEFINED else js_string(v) for v in value)
    return "[object Object]"


def js_number_text(x: float) -> str:
    """How JavaScript writes a number (``String(1.0)`` is "1", 1e21 is "1e+21")."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int) and abs(x) < 2 ** 53:
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign, digits, exp = Decimal(repr(abs(x))).normalize().as_tuple()
    text = "".join(map(str, digits))
    n = len(text) + int(exp)  # the decimal point sits after n digits
    sign_text = "-" if x < 0 else ""
    if len(text) <= n <= 21:
        return sign_text + text + "0" * (n - len(text))
    if 0 < n <= 21:
        return sign_text + text[:n] + "." + text[n:]
    if -6 < n <= 0:
        return sign_text + "0." + "0" * (-n) + text
    e = n - 1
    head = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{sign_text}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


def js_value(value: Any) -> Any:
    """A value as JSON.stringify in the editor writes it and the server reads it back: whole numbers
    as integers (``512.0`` is ``512``), integers past 2**53 rounded to what JavaScript holds,
    NaN and infinities as null."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2 ** 53 else _number_back(float(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _number_back(value)
    if isinstance(value, list):
        return [None if v is UNDEFINED else js_value(v) for v in value]
    if isinstance(value, dict):
        return {k: js_value(v) for k, v in value.items() if v is not UNDEFINED}
    return value


def _number_back(x: float) -> int | float:
    text = js_number_text(x)
    if "e" in text or "." in text:
        return x
    return int(text)


def js_number(value: Any) -> float:
    """JavaScript's ``Number(value)`` for the values a workflow holds."""
    if value is UNDEFINED:
        return math.nan
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        try:
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return math.nan
    return math.nan


def js_round(x: float) -> float:
    """``Math.round``: halves round up (towards +infinity)."""
    if not math.isfinite(x):
        return x
    return math.floor(x + 0.5)


def textarea_value(value: Any) -> str:
    """What a text area holds after being given ``value``: text, null as "", line ends as "\\n"."""
    text = "" if value is None else js_string(value)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def number_callback(value: Any, spec: dict[str, Any], kind: str) -> Any:
    """The value after a number widget's change handler ran (a primitive setting it): an INT rounded
    to its step; a FLOAT rounded to its precision and kept within min and max."""
    v = js_number(value)
    if kind == "INT":
        step = spec.get("step") if spec.get("step") is not None else 1
        step = step or 1
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return v
        if step == 1:
            return _int_if_whole(js_round(v))
        lo = spec.get("min") if spec.get("min") is not None else 0
        offset = math.fmod(lo, step)
        return _int_if_whole(js_round((v - offset) / step) * step + offset)
    step = spec.get("step") if spec.get("step") is not None else 0.5
    precision = max(0, -math.floor(math.log10(step))) if step and step > 0 else 0
    rnd = 10 ** -precision if precision and not spec.get("round") else spec.get("round")
    if not rnd:
        return value
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return v
    rounded = js_round(v / rnd) * rnd
    out = float(f"{rounded:.{precision}f}")
    lo = spec.get("min") if spec.get("min") is not None else 0
    hi = spec.get("max") if spec.get("max") is not None else 2048
    return _int_if_whole(min(max(out, lo), hi))


def _int_if_whole(x: float) -> float:
    return int(x) if isinstance(x, float) and x.is_integer() and abs(x) < 2 ** 53 else x


# -- queue-time text ------------------------------------------------------------------------------------------
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

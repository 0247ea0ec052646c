"""Reading ComfyUI's node schema (the body of GET /object_info) the way the editor does.

Facts from ComfyUI 0.3.64 that the helpers rely on:

- a class has ``input`` with ``required``/``optional``/``hidden`` sections, and
  ``input_order`` with the same sections: the order the editor lays out widgets;
- a combo comes in two styles: legacy ``[[choice, ...], {opts}]`` and v3
  ``["COMBO", {"options": [...]}]``; a v3 combo may carry no ``options`` but a
  ``remote`` route, whose choices only the editor fetches;
- value inputs are INT, FLOAT, STRING, BOOLEAN and combos; every other type
  (MODEL, IMAGE, ...) is a socket that only a link can feed;
- ``hidden`` inputs (PROMPT, EXTRA_PNGINFO, UNIQUE_ID) are filled by the server.
"""

from __future__ import annotations

from typing import Any

VALUE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})
# Combo flags that make the editor add an upload button (LoadImage, LoadVideo, LoadAudio).
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
SECTIONS = ("required", "optional")


def class_schema(object_info: dict[str, Any], class_type: Any) -> dict[str, Any] | None:
    """The schema of ``class_type``, or None when the server has no such class."""
    if not isinstance(class_type, str):
        return None
    schema = object_info.get(class_type)
    return schema if isinstance(schema, dict) else None


def display_name(schema: dict[str, Any] | None, class_type: str) -> str:
    """The editor's default title: the display name, else the class name."""
    name = (schema or {}).get("display_name")
    return name if isinstance(name, str) and name else class_type


def ordered_inputs(schema: dict[str, Any], sections: tuple[str, ...] = SECTIONS) -> list[tuple[str, Any, str]]:
    """``(name, spec, section)`` in widget order: each section in ``input_order``, then any names it lacks."""
    inputs = schema.get("input") if isinstance(schema.get("input"), dict) else {}
    order = schema.get("input_order") if isinstance(schema.get("input_order"), dict) else {}
    out = []
    for section in sections:
        specs = inputs.get(section)
        if not isinstance(specs, dict):
            continue
        listed = [n for n in order.get(section) or [] if n in specs]
        names = listed + [n for n in specs if n not in listed]
        out.extend((n, specs[n], section) for n in names)
    return out


def find_input(schema: dict[str, Any], name: str) -> tuple[Any, str] | None:
    """``(spec, section)`` of input ``name`` (hidden ones included), or None."""
    inputs = schema.get("input") if isinstance(schema.get("input"), dict) else {}
    for section in (*SECTIONS, "hidden"):
        specs = inputs.get(section)
        if isinstance(specs, dict) and name in specs:
            return specs[name], section
    return None


def options(spec: Any) -> dict[str, Any]:
    """The options dict of an input spec (``{}`` when it has none)."""
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def value_kind(spec: Any) -> str | None:
    """INT, FLOAT, STRING, BOOLEAN or COMBO for an input that takes a value; None for a socket."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list) or kind == "COMBO":
        return "COMBO"
    return kind if kind in VALUE_TYPES else None


def socket_type(spec: Any) -> str:
    """The type name shown for an input (``COMBO`` for both combo styles)."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, list) else str(kind)


def combo_choices(spec: Any) -> list[Any] | None:
    """A combo's allowed values, or None when the server does not list them (a ``remote`` combo)."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    choices = options(spec).get("options")
    return choices if isinstance(choices, list) else None


def has_control_after_generate(name: str, spec: Any) -> bool:
    """Whether the editor adds a "control after generate" widget after this input.

    The editor adds it to an INT whose options set ``control_after_generate``; when
    the option is absent it falls back to the name (``seed``, ``noise_seed``). An
    explicit false wins over the name.
    """
    if value_kind(spec) != "INT":
        return False
    flag = options(spec).get("control_after_generate")
    if flag is not None:
        return bool(flag)
    return name in ("seed", "noise_seed")


def is_upload_combo(spec: Any) -> bool:
    return value_kind(spec) == "COMBO" and any(options(spec).get(f) is True for f in UPLOAD_FLAGS)


def upload_input(schema: dict[str, Any]) -> str | None:
    """The input an uploaded file goes to (LoadImage's ``image``): the first upload combo."""
    for name, spec, _section in ordered_inputs(schema):
        if is_upload_combo(spec):
            return name
    return None


def int_range(spec: Any) -> tuple[int | float | None, int | float | None]:
    opts = options(spec)
    lo, hi = opts.get("min"), opts.get("max")
    num = (int, float)
    return (lo if isinstance(lo, num) and not isinstance(lo, bool) else None,
            hi if isinstance(hi, num) and not isinstance(hi, bool) else None)

"""Changing a prompt without editing JSON: ``--set NODE.INPUT=VALUE`` and ``--input NODE[.INPUT]=FILE``.

**Naming a node.** ``NODE`` is a node id (``6``), else a class that occurs once
(``KSampler``), else a title that occurs once (``Positive Prompt``); exact matches
first, then ignoring case. A name that fits several nodes is an error listing them.

**Splitting a spec.** The value starts after the first ``=``, so a value may contain
``=``; a node reference or input name may not. ``NODE.INPUT`` is split at a dot, and a
title may itself contain dots (``SD1.5 Loader.ckpt_name``): the longest node reference
that names a node wins, i.e. the split at the last dot is tried first, then the one
before it, and so on. For ``--input`` the whole of ``NODE`` without an input is tried
first (``Load v1.2=cat.png``).

**Values** arrive as text and are read by the input's type in the server's schema:
INT strictly (digits with an optional ``-``: no ``1_0``, ``+2`` or spaces) within its
min/max; FLOAT finite within min/max (``step`` is not enforced); BOOLEAN as
true/false/1/0/yes/no; STRING as is; a combo must be one of its choices (which, for
model loaders, are the files on the pod). A bad value is one line naming the node,
the input, the value and what is allowed; nothing is clamped. ``@path`` reads the
value from a UTF-8 file (one trailing newline dropped); ``@@`` starts a value that
begins with a literal ``@``. :func:`prompt_problems` checks a whole prompt the same way
before anything is sent.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import schema as sch
from ..core.files import MiB, read_text, regular_file
from .workflow import WorkflowError, is_link, node_sort_key, prompt_node_label

_INT = re.compile(r"^-?[0-9]+$")
_FLOAT = re.compile(r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
MAX_VALUE_FILE = 16 * MiB


def read_text_file(path: str) -> str:
    """The text of a value file (``@path``): UTF-8, one trailing newline dropped; missing is exit 2."""
    _p, text = read_text(path, what="value file", limit=MAX_VALUE_FILE, error=WorkflowError)
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


@dataclass
class Override:
    """``--set NODE.INPUT=VALUE``: ``node`` is the reference as typed, ``value`` still uncoerced."""

    node: str
    input: str
    value: Any
    spec: str

    @property
    def target(self) -> str:
        return f"{self.node}.{self.input}"


@dataclass
class InputFile:
    """``--input NODE[.INPUT]=PATH``: a local file to upload; ``input`` None means the node's upload input."""

    node: str
    input: str | None
    path: Path
    spec: str

    @property
    def target(self) -> str:
        return self.node if self.input is None else f"{self.node}.{self.input}"


def split_spec(spec: str, flag: str = "--set", *, need_input: bool = True) -> tuple[str, str | None, str]:
    """``NODE.INPUT=VALUE`` as (node, input, value), split at the first ``=`` and the last dot."""
    if not isinstance(spec, str) or "=" not in spec:
        raise WorkflowError(f"{flag} {_show(spec)}: expected NODE.INPUT=VALUE (e.g. KSampler.seed=42)")
    target, _, value = spec.partition("=")
    node, dot, name = target.rpartition(".")
    if not dot:
        if need_input:
            raise WorkflowError(f"{flag} {_show(spec)}: expected NODE.INPUT=VALUE, with a dot between "
                                "the node and the input (e.g. 6.text=a cat)")
        node, name = target, None
    if not node.strip() or (name is not None and not name.strip()):
        raise WorkflowError(f"{flag} {_show(spec)}: the node and the input must not be empty")
    return node, name, value


def _value(text: str, flag: str, spec: str, read_file: Callable[[str], str]) -> str:
    if text.startswith("@@"):
        return text[1:]
    if text.startswith("@"):
        if not text[1:]:
            raise WorkflowError(f"{flag} {_show(spec)}: '@' must be followed by a file name")
        return read_file(text[1:])
    return text


def parse_set(spec: str, *, read_file: Callable[[str], str] = read_text_file) -> Override:
    """``6.text=a cat``, ``KSampler.seed=42``, ``Positive Prompt.text=@prompt.txt``."""
    node, name, value = split_spec(spec, "--set")
    return Override(node, name or "", _value(value, "--set", spec, read_file), spec)


def parse_input(spec: str) -> InputFile:
    """``LoadImage.image=./cat.png`` or ``12=./cat.png``; the file must exist and be a file."""
    node, name, value = split_spec(spec, "--input", need_input=False)
    if not value:
        raise WorkflowError(f"--input {_show(spec)}: expected NODE=PATH or NODE.INPUT=PATH (e.g. LoadImage=cat.png)")
    try:  # uploaded as it is read: a named pipe or a device would never end
        path, _st = regular_file(value, what="input file", error=WorkflowError)
    except WorkflowError as e:
        raise WorkflowError(f"--input {_show(spec)}: {e}") from None
    return InputFile(node, name, path, spec)


# -- naming nodes --------------------------------------------------------------------------------------
def _title(node: dict[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else None


def find_nodes(prompt: dict[str, Any], ref: str) -> list[str]:
    """The ids ``ref`` names: [id], the one node of that class, the one with that title, else all it
    could mean (several: ambiguous; none: unknown)."""
    if ref in prompt:
        return [ref]
    for fold in (False, True):
        same = (lambda a, b: isinstance(a, str) and a.casefold() == b.casefold()) if fold else (lambda a, b: a == b)
        by_class = [i for i, n in prompt.items() if same(n.get("class_type"), ref)]
        if len(by_class) == 1:
            return by_class
        by_title = [i for i, n in prompt.items() if same(_title(n), ref)]
        if len(by_title) == 1:
            return by_title
        if by_class or by_title:
            return list(dict.fromkeys(by_class + by_title))
    return []


def resolve_node(prompt: dict[str, Any], ref: str) -> str:
    """The id of the one node ``ref`` names (id, unique class, unique title); else an error listing candidates."""
    found = find_nodes(prompt, ref)
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(_short_label(prompt, i) for i in found)
        raise WorkflowError(f"{ref!r} names {len(found)} nodes: {listed}; use the id or a unique title")
    raise WorkflowError(f"no node {ref!r} in the workflow; {_suggest_nodes(prompt, ref)}")


def _short_label(prompt: dict[str, Any], node_id: str) -> str:
    return prompt_node_label(prompt, node_id).removeprefix("node ")


def _suggest_nodes(prompt: dict[str, Any], ref: str) -> str:
    names: dict[str, str] = {}
    for i, n in prompt.items():
        for name in (n.get("class_type"), _title(n)):
            if isinstance(name, str):
                names.setdefault(name, i)
    close = difflib.get_close_matches(ref, list(names), n=3, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(f"{c!r} ({_short_label(prompt, names[c])})" for c in close) + "?"
    ids = sorted(prompt, key=node_sort_key)
    shown = ", ".join(_short_label(prompt, i) for i in ids[:12]) + (", ..." if len(ids) > 12 else "")
    return f"nodes: {shown}"


def resolve_target(prompt: dict[str, Any], target: str, flag: str = "--set",
                   *, whole_first: bool = False) -> tuple[str, str | None]:
    """``(node_id, input)`` for ``NODE.INPUT``: the longest node reference that names a node wins.

    With ``whole_first`` (``--input``), the whole target is tried as a node with no input first.
    """
    splits: list[tuple[str, str | None]] = [(target, None)] if whole_first else []
    parts = target.split(".")
    splits += [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    for node_ref, name in splits:
        if find_nodes(prompt, node_ref):
            try:
                return resolve_node(prompt, node_ref), name
            except WorkflowError as e:  # several matches: the error lists them
                raise WorkflowError(f"{flag} {target}: {e}") from None
    longest = splits[0][0] if splits else target
    raise WorkflowError(f"{flag} {target}: no node {longest!r} in the workflow; {_suggest_nodes(prompt, longest)}")


# -- checking values -----------------------------------------------------------------------------------
def check_value(class_type: str, input_name: str, value: Any, object_info: dict[str, Any], *,
                node_label: str) -> Any:
    """``value`` read as the input's type says (text or a native value), or a one-line WorkflowError."""
    schema = sch.class_schema(object_info, class_type)
    if schema is None:
        raise WorkflowError(f"{node_label}: the server has no node class {class_type!r}")
    spec = _value_spec(schema, input_name, node_label)
    kind = sch.value_kind(spec)
    where = f"{node_label} input {input_name!r}"
    if kind == "INT":
        return _int(value, spec, where)
    if kind == "FLOAT":
        return _float(value, spec, where)
    if kind == "BOOLEAN":
        return _bool(value, where)
    if kind == "STRING":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise WorkflowError(f"{where} takes text, got {_show(value)}")
        return value if isinstance(value, str) else str(value)
    return _combo(value, spec, where)


def _value_spec(schema: dict[str, Any], input_name: str, node_label: str) -> Any:
    found = sch.find_input(schema, input_name)
    names = [n for n, _spec, _section in sch.ordered_inputs(schema)]
    if found is not None and found[1] == "hidden":
        raise WorkflowError(f"{node_label} input {input_name!r} is hidden: the server fills it; its inputs: "
                            f"{', '.join(names) or 'none'}")
    if found is None:
        close = difflib.get_close_matches(input_name, names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise WorkflowError(f"{node_label} has no input {input_name!r}{hint}; its inputs: "
                            f"{', '.join(names) or 'none'}")
    spec = found[0]
    if sch.value_kind(spec) is None:
        raise WorkflowError(f"{node_label} input {input_name!r} takes a link ({sch.socket_type(spec)}), not a value")
    return spec


def _int(value: Any, spec: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not _INT.match(value)):
        raise WorkflowError(f"{where} takes a whole number, got {_show(value)}")
    n = int(value)
    _check_range(n, spec, where)
    return n


def _float(value: Any, spec: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, str) and not _FLOAT.match(value)):
        raise WorkflowError(f"{where} takes a number, got {_show(value)}")
    try:
        x = float(value)
    except OverflowError:  # an int too large for a float
        x = math.inf
    if not math.isfinite(x):
        raise WorkflowError(f"{where} takes a finite number, got {_show(value)}")
    _check_range(x, spec, where)
    return x


def _check_range(n: float, spec: Any, where: str) -> None:
    lo, hi = sch.int_range(spec)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        side = f"below the minimum {_num(lo)}" if lo is not None and n < lo else f"above the maximum {_num(hi)}"
        allowed = f"{_num(lo) if lo is not None else '...'}..{_num(hi) if hi is not None else '...'}"
        raise WorkflowError(f"{where}: {_num(n)} is {side} (allowed {allowed})")


def _num(n: float | None) -> str:
    return repr(n) if isinstance(n, float) and not n.is_integer() else str(int(n)) if n is not None else "?"


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        if value.casefold() in _TRUE:
            return True
        if value.casefold() in _FALSE:
            return False
    raise WorkflowError(f"{where} takes true or false (also 1/0, yes/no), got {_show(value)}")


def _combo(value: Any, spec: Any, where: str) -> Any:
    choices = sch.combo_choices(spec)
    if choices is None:  # a remote combo: only the editor knows its choices
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise WorkflowError(f"{where} takes one of its choices, got {_show(value)}")
        return value
    if not isinstance(value, bool) and value in choices:
        return value
    if isinstance(value, str):
        for choice in choices:  # non-text choices (durations [5, 10]) arrive as text
            if not isinstance(choice, (str, bool)) and str(choice) == value:
                return choice
    if not choices:
        raise WorkflowError(f"{where}: {_show(value)} is not available: the server lists no choices for it "
                            "(for a model loader: no files in that model folder on the pod)")
    texts = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), texts, n=3, cutoff=0.5)
    if close:
        hint = "nearest: " + ", ".join(map(repr, close))
    else:
        hint = "allowed: " + ", ".join(map(repr, texts[:5])) + (", ..." if len(texts) > 5 else "")
    raise WorkflowError(f"{where}: {_show(value)} is not one of its {len(choices)} choice(s); {hint}")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- applying ------------------------------------------------------------------------------------------
def apply_overrides(prompt: dict[str, Any], overrides: list[Override] | tuple[Override, ...],
                    object_info: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new prompt with every override checked and set, and what was applied, in order:
    ``{node, class_type, title, input, value, replaced_link}`` (``replaced_link`` is the
    ``[node_id, slot]`` the value replaced, or None). A later override of the same input wins."""
    new = copy.deepcopy(prompt)
    applied = []
    for o in overrides:
        node_id, name = resolve_target(new, o.target, "--set")
        node = new[node_id]
        label = prompt_node_label(new, node_id)
        value = check_value(node["class_type"], name or "", o.value, object_info, node_label=label)
        previous = node["inputs"].get(name)
        node["inputs"][name] = value
        applied.append({"node": node_id, "class_type": node["class_type"], "title": _title(node), "input": name,
                        "value": value, "replaced_link": previous if is_link(previous) else None})
    return new, applied


@dataclass
class InputTarget:
    """Where an ``--input`` file goes: the run side uploads ``path`` and sets ``node``.``input`` to its name."""

    node: str
    input: str
    class_type: str
    title: str | None
    path: Path
    spec: str


def resolve_input(prompt: dict[str, Any], f: InputFile, object_info: dict[str, Any]) -> InputTarget:
    """The node and input an ``--input`` file is for; without an input name, the node's upload input."""
    node_id, name = resolve_target(prompt, f.target, "--input", whole_first=True)
    node = prompt[node_id]
    label = prompt_node_label(prompt, node_id)
    schema = sch.class_schema(object_info, node["class_type"])
    if schema is None:
        raise WorkflowError(f"--input {f.spec}: {label}: the server has no node class {node['class_type']!r}")
    if name is None:
        name = sch.upload_input(schema)
        if name is None:
            raise WorkflowError(f"--input {f.spec}: {label} has no upload input; name the input "
                                f"({node_id}.INPUT=PATH) or pick a loader such as LoadImage")
    else:
        spec = _value_spec(schema, name, label)
        if sch.value_kind(spec) not in ("COMBO", "STRING"):
            raise WorkflowError(f"--input {f.spec}: {label} input {name!r} takes {sch.socket_type(spec)} values, "
                                "not a file name")
    return InputTarget(node_id, name, node["class_type"], _title(node), f.path, f.spec)


def set_uploaded(prompt: dict[str, Any], target: InputTarget, name: str, subfolder: str = "") -> dict[str, Any]:
    """A new prompt with the uploaded file's name (as POST /upload/image returned it) in the target input.

    Not checked against the combo's choices: those were listed before the upload.
    """
    new = copy.deepcopy(prompt)
    new[target.node]["inputs"][target.input] = f"{subfolder}/{name}" if subfolder else name
    return new



# -- checking a whole prompt ---------------------------------------------------------------------------
def prompt_problems(prompt: dict[str, Any], object_info: dict[str, Any], *,
                    skip: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """What the server's validation would refuse, one line each, in node order: unknown classes,
    missing required inputs, values outside the schema, links to outputs that do not exist or
    carry another type. ``skip`` holds (node, input) pairs not to check, e.g. inputs about to
    receive an uploaded file (not yet among the combo's choices)."""
    problems = []
    for node_id in sorted(prompt, key=node_sort_key):
        node = prompt[node_id]
        label = prompt_node_label(prompt, node_id)
        schema = sch.class_schema(object_info, node.get("class_type"))
        if schema is None:
            problems.append(f"{label}: the server has no node class {node.get('class_type')!r}")
            continue
        inputs = node.get("inputs") or {}
        for name, spec, section in sch.ordered_inputs(schema):
            if (node_id, name) in skip:
                continue
            value = inputs.get(name)
            if value is None:
                if section == "required":
                    problems.append(f"{label} needs input {name!r} ({sch.socket_type(spec)}); it is missing "
                                    "(an input fed by a muted or bypassed node is left out)")
                continue
            try:
                if is_link(value):
                    _check_link(prompt, object_info, value, spec, f"{label} input {name!r}")
                elif isinstance(value, dict) and "__value__" in value:
                    continue  # a list value, as the server receives it
                elif sch.value_kind(spec) is None:
                    raise WorkflowError(f"{label} input {name!r} takes a link ({sch.socket_type(spec)}), "
                                        f"not the value {_show(value)}")
                else:
                    check_value(node["class_type"], name, _as_sent(value, spec), object_info, node_label=label)
            except WorkflowError as e:
                problems.append(str(e))
    return problems


def check_prompt(prompt: dict[str, Any], object_info: dict[str, Any], *,
                 skip: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> None:
    """:func:`prompt_problems` as one WorkflowError: the first problem, and how many more there are."""
    problems = prompt_problems(prompt, object_info, skip=skip)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise WorkflowError(problems[0] + more)


def _as_sent(value: Any, spec: Any) -> Any:
    """A saved workflow may hold 512.0 for an INT; the server reads it as 512."""
    if sch.value_kind(spec) == "INT" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_link(prompt: dict[str, Any], object_info: dict[str, Any], link: list[Any], spec: Any, where: str) -> None:
    origin = prompt.get(link[0])
    if origin is None:
        raise WorkflowError(f"{where} links to node {link[0]}, which is not in the prompt")
    schema = sch.class_schema(object_info, origin.get("class_type"))
    if schema is None:
        return  # reported for that node
    outputs = schema.get("output") or []
    if not 0 <= link[1] < len(outputs):
        raise WorkflowError(f"{where} links to output {link[1]} of {prompt_node_label(prompt, link[0])}, "
                            f"which has {len(outputs)} output(s)")
    sent = outputs[link[1]]
    wanted = sch.socket_type(spec)
    if sch.value_kind(spec) == "COMBO" or isinstance(sent, list):
        return  # a combo fed by a link: the server checks the value when it runs
    if not _types_match(str(sent), wanted):
        raise WorkflowError(f"{where} takes {wanted} but is linked to {prompt_node_label(prompt, link[0])} "
                            f"output {link[1]} ({sent})")


def _types_match(sent: str, wanted: str) -> bool:
    """The server's rule: "*" matches anything; "A,B" matches when the sets overlap (either way)."""
    if sent == wanted or "*" in (sent, wanted):
        return True
    return bool({t.strip() for t in sent.split(",")} & {t.strip() for t in wanted.split(",")})

"""Job files: a ``comfy.run`` command line kept in a YAML or JSON file (``--job FILE``).

.. code-block:: yaml

    workflow: flows/txt2img.json        # required; relative paths are relative to this file
    set:                                # like --set: NODE.INPUT=VALUE (@file relative to this file)
      - KSampler.steps=30
      - "Positive Prompt.text=@prompts/cat.txt"
    input:                              # like --input: NODE[.INPUT]=PATH
      - LoadImage=photos/cat.png
    sweep:                              # like --sweep: a..b, a,b,c or @file
      - KSampler.cfg=5,6.5,8
    repeat: 4                           # at least 1 (default 1)
    seed: random                        # fixed (default), random or increment
    output: "renders/{index}.png"       # an output name template, used as given
    pod: flux                           # an inventory pod name
    models:                             # what the pod's volume must hold (comfy.run --pull-missing fetches it)
      - {url: "https://huggingface.co/...", folder: checkpoints, name: x.safetensors, sha256: "..."}

``set``, ``input`` and ``sweep`` take a list of specs (or one spec). The schema is strict:
an unknown key or a value of the wrong type is an error naming the file and, for YAML,
the line. YAML is read by the inventory's strict loader (no aliases, anchors, merge keys
or duplicate keys); values are taken as written, so ``pod: 007`` is the name "007".
In YAML, quote a spec holding ``: `` (else it reads as a mapping), and write a comma
list as a block item or quoted: inside ``[...]`` a comma ends the item.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.files import parse_json, read_text
from ..core.inventory import MAX_YAML_BYTES, load_yaml_document
from .batch import SEED_MODES
from .overrides import split_spec
from .workflow import WorkflowError

KEYS = ("workflow", "set", "input", "sweep", "repeat", "seed", "output", "pod", "models")
MAX_REPEAT = 10_000
_DIGITS = re.compile(r"^[0-9]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_T = "tag:yaml.org,2002:"


@dataclass
class Job:
    """A job file's settings; paths and ``@file`` references are already made relative to ``source``'s folder."""

    workflow: Path
    sets: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    repeat: int = 1
    seed: str = "fixed"
    output_template: str | None = None
    pod: str | None = None
    source: Path = field(default_factory=Path)
    models: list[dict[str, Any]] = field(default_factory=list)  # {url, folder, name?, sha256?}


@dataclass
class _Val:
    """A value as written, with its line (YAML) : kind is text, int, null, list, map or other."""

    kind: str
    raw: Any
    line: int | None
    quoted: bool = False
    items: list[Any] = field(default_factory=list)


def load_job(path: str | Path) -> Job:
    """Read and check a job file (``.json``, else YAML); errors name the file and, for YAML, the line."""
    p, text = read_text(path, what="job file", limit=MAX_YAML_BYTES, error=WorkflowError)
    is_json = p.suffix.lower() == ".json" or (p.suffix.lower() not in (".yaml", ".yml")
                                              and text.lstrip()[:1] == "{")
    root = _from_json(p, text) if is_json else _from_yaml(p, text)
    return _Checker(p).job(root)


def _from_yaml(p: Path, text: str) -> _Val:
    try:
        data = load_yaml_document(p, "job file", text)  # refuses aliases, anchors, merge and duplicate keys
    except ConfigError as e:
        raise WorkflowError(str(e)) from None
    if data is None:
        raise WorkflowError(f"{p}: the job file is empty; it needs at least 'workflow'")
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    # Composed again for the lines: safe now that the strict pass refused aliases.
    return _yaml_val(yaml.compose(text, Loader=loader))


def _yaml_val(node: Any) -> _Val:
    import yaml

    line = node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode):
        return _Val("list", None, line, items=[_yaml_val(n) for n in node.value])
    if isinstance(node, yaml.MappingNode):
        return _Val("map", None, line, items=[(k.value, k.start_mark.line + 1, _yaml_val(v)) for k, v in node.value])
    if node.tag == _T + "null":
        return _Val("null", None, line)
    plain = not node.style
    if node.tag == _T + "int" and plain and _DIGITS.match(node.value):
        return _Val("int", node.value, line)
    return _Val("text", node.value, line, quoted=not plain)


def _from_json(p: Path, text: str) -> _Val:
    return _json_val(parse_json(text, p, error=WorkflowError))


def _json_val(v: Any) -> _Val:
    if v is None:
        return _Val("null", None, None)
    if isinstance(v, bool) or isinstance(v, float):
        return _Val("other", v, None)
    if isinstance(v, int):
        return _Val("int", str(v), None)
    if isinstance(v, str):
        return _Val("text", v, None, quoted=True)
    if isinstance(v, list):
        return _Val("list", None, None, items=[_json_val(x) for x in v])
    return _Val("map", None, None, items=[(k, None, _json_val(x)) for k, x in v.items()])


class _Checker:
    def __init__(self, path: Path):
        self.path = path
        self.base = path.parent

    def fail(self, line: int | None, msg: str) -> WorkflowError:
        return WorkflowError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")

    def job(self, root: _Val) -> Job:
        if root.kind != "map":
            raise self.fail(root.line, "a job file must be a mapping of keys: " + ", ".join(KEYS))
        job = Job(workflow=Path(), source=self.path)
        seen = False
        for key, line, v in root.items:
            if key not in KEYS:
                close = difflib.get_close_matches(str(key), KEYS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(line, f"unknown key {key!r}{hint}; known keys: {', '.join(KEYS)}")
            if v.kind == "null":
                raise self.fail(line, f"{key!r} has no value; leave the key out to use the default")
            if key == "workflow":
                job.workflow = self.existing(self.text(v, repr(key)), v, key)
                seen = True
            elif key in ("set", "input", "sweep"):
                specs = [self.spec(item, key) for item in (v.items if v.kind == "list" else [v])]
                setattr(job, {"set": "sets", "input": "inputs", "sweep": "sweeps"}[key], specs)
            elif key == "repeat":
                job.repeat = self.repeat(v)
            elif key == "seed":
                job.seed = self.text(v, repr(key))
                if job.seed not in SEED_MODES:
                    raise self.fail(v.line, f"'seed' must be one of {', '.join(SEED_MODES)}, got {job.seed!r}")
            elif key == "output":
                job.output_template = self.text(v, repr(key))
            elif key == "models":
                job.models = self.models(v)
            else:
                job.pod = self.text(v, repr(key))
                if _CONTROL.search(job.pod):
                    raise self.fail(v.line, "'pod' must not contain control characters")
        if not seen:
            raise self.fail(root.line, "'workflow' is required (the workflow file to run)")
        return job

    def text(self, v: _Val, what: str) -> str:
        """``what`` is how the message names the value: ``'pod'``, ``an item of 'set'``."""
        if v.kind == "null":
            raise self.fail(v.line, f"{what} is empty")
        if v.kind not in ("text", "int"):
            raise self.fail(v.line, f"{what} must be text, got {self.kind(v)}")
        if not v.raw.strip():
            raise self.fail(v.line, f"{what} must not be empty")
        return v.raw

    def models(self, v: _Val) -> list[dict[str, Any]]:
        """``models``: a list of {url, folder, name?, sha256?}, checked as ``model.pull`` checks its flags."""
        from ..core.errors import UsageError
        from ..models.sources import model_ref

        if v.kind != "list":
            raise self.fail(v.line, f"'models' must be a list of {{url, folder, name, sha256}}, got {self.kind(v)}")
        out = []
        for item in v.items:
            if item.kind != "map":
                raise self.fail(item.line, f"an item of 'models' must be a mapping like {{url: ..., folder: ...}}, "
                                           f"got {self.kind(item)}")
            fields: dict[str, str] = {}
            for key, line, val in item.items:
                if key not in ("url", "folder", "name", "sha256"):
                    raise self.fail(line, f"unknown key {key!r} in an item of 'models' (url, folder, name, sha256)")
                fields[key] = self.text(val, f"{key!r} in an item of 'models'")
            if "url" not in fields or "folder" not in fields:
                raise self.fail(item.line, "an item of 'models' needs 'url' and 'folder'")
            try:
                ref = model_ref(fields["url"], folder=fields["folder"], name=fields.get("name"),
                                sha256=fields.get("sha256"))
            except UsageError as e:
                raise self.fail(item.line, str(e)) from None
            out.append({"url": ref.url, "folder": ref.folder, "name": ref.name, "sha256": ref.sha256})
        return out

    def repeat(self, v: _Val) -> int:
        if v.kind != "int" or (len(v.raw) > 1 and v.raw.startswith("0")):
            hint = " (without quotes)" if v.quoted and _DIGITS.match(str(v.raw)) else ""
            raise self.fail(v.line, f"'repeat' must be a whole number like 4{hint}, got {self.kind(v)}")
        n = int(v.raw)
        if not 1 <= n <= MAX_REPEAT:
            raise self.fail(v.line, f"'repeat' must be between 1 and {MAX_REPEAT}, got {n}")
        return n

    def kind(self, v: _Val) -> str:
        if v.kind == "list":
            return "a list"
        if v.kind == "map":
            return "a mapping"
        return repr(v.raw)

    def resolve(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    def existing(self, value: str, v: _Val, what: str) -> Path:
        p = self.resolve(value)
        if not p.is_file():
            raise self.fail(v.line, f"{what!r}: {value} is not a file" + ("" if p.exists() else " (no such file)"))
        return p

    def spec(self, v: _Val, key: str) -> str:
        """Check one spec's form and make the file it names relative to the job file."""
        if v.kind == "map":
            raise self.fail(v.line, f"an item of {key!r} is a mapping; quote it (a ': ' inside makes YAML read "
                                    "NODE.INPUT=VALUE as a mapping)")
        text = self.text(v, f"an item of {key!r}")
        try:
            node, name, value = split_spec(text, f"--{key}", need_input=key != "input")
        except WorkflowError as e:
            raise self.fail(v.line, str(e)) from None
        target = text.partition("=")[0]
        if key == "input":
            if not value:
                raise self.fail(v.line, f"--input {text!r}: expected NODE=PATH or NODE.INPUT=PATH")
            return f"{target}={self.existing(value, v, 'input')}"
        if value.startswith("@") and not value.startswith("@@") and value[1:]:
            return f"{target}=@{self.existing(value[1:], v, key)}"
        return text

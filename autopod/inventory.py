"""Ansible-style YAML inventory: defaults, named pod specs and plain SSH hosts.

The inventory is data, not code: it is validated here, and every error names
the file and the line. Location: ``$AUTOPOD_INVENTORY`` (a file or a folder),
else ``./inventory``. A folder contributes every ``*.yml``/``*.yaml`` in it.

YAML is read strictly (``load_yaml_document``): aliases, anchors and merge keys
are refused (an alias bomb would otherwise expand without bound), so are
duplicate keys (YAML would keep the last one silently). Values are checked on
the parsed nodes, before anything is built from them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# key -> python type. Shared by inventory defaults, pod specs and config.yaml.
POD_KEYS: dict[str, type | tuple[type, ...]] = {
    "gpus": list,
    "gpu_count": int,
    "cloud_type": str,
    "datacenter": str,
    "image": str,
    "template_id": str,
    "disk_gb": int,
    "volume_id": str,
    "volume_mount": str,
    "ports": list,
    "env": dict,
    "comfy_address": str,
    "timeout": int,
}
GLOBAL_KEYS: dict[str, type | tuple[type, ...]] = {
    "ssh_key": str,
    "tunnel_backend": str,
    "comfy_url": str,
}
DEFAULT_KEYS = {**POD_KEYS, **GLOBAL_KEYS}
HOST_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "user": str,
    "key": str,
    "comfy_address": str,
}
TOP_KEYS = {"defaults": dict, "pods": dict, "hosts": dict}

NAME_MAX = 128

# Sections of the inventory: the schema of each entry, and whether entries are named (pods, hosts).
_SECTIONS = {"defaults": (DEFAULT_KEYS, False), "pods": (POD_KEYS, True), "hosts": (HOST_KEYS, True)}
_LABELS = {"pods": "pod spec", "hosts": "host"}

_T = "tag:yaml.org,2002:"
_STR, _INT, _NULL, _MERGE = (_T + t for t in ("str", "int", "null", "merge"))

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # they corrupt tables, logs and shell commands


@dataclass
class Host:
    """A plain SSH machine that runs ComfyUI (a home GPU box, a server)."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key: str | None = None
    comfy_address: str | None = None


@dataclass
class Inventory:
    defaults: dict[str, Any] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


def inventory_location() -> tuple[Path, bool]:
    """(path, explicit): explicit locations must exist, ./inventory may not."""
    env = os.environ.get("AUTOPOD_INVENTORY")
    if env:
        return Path(env).expanduser(), True
    return Path("inventory"), False


def load_inventory(path: Path | None = None) -> Inventory:
    explicit = path is not None
    if path is None:
        path, explicit = inventory_location()
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if explicit:
            raise ConfigError(f"inventory {path} does not exist (AUTOPOD_INVENTORY)") from None
        return Inventory()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the inventory: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        try:
            files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the inventory folder: {e.strerror or e}") from None
    elif stat.S_ISREG(mode):
        files = [path]
    else:  # a fifo or a device would block or never end
        raise ConfigError(f"{path}: the inventory must be a YAML file or a folder of them")
    inv = Inventory()
    first: dict[tuple[str, str], str] = {}  # (section, name) -> "file:line" where it was defined
    for f in files:
        data, lines = _load_mapping(f, TOP_KEYS, "inventory")
        _merge(inv, f, data, lines, first)
    return inv


def load_yaml_document(path: Path, what: str) -> Any:
    """Parse one YAML file strictly: no aliases, anchors, merge keys or duplicate keys.

    Every error is a ConfigError naming ``path`` and, where known, the line;
    ``what`` says what the file is ("inventory", "simulator world"). An empty file
    gives None.
    """
    return _parse(path, what, None)


def load_yaml_mapping(path: Path, schema: dict[str, Any], what: str = "inventory") -> dict[str, Any]:
    """Parse one YAML file whose top level is a mapping, validated with line numbers."""
    return _load_mapping(path, schema, what)[0]


def _load_mapping(path: Path, schema: dict[str, Any], what: str) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
    """The validated mapping, and the line of each named entry: (section, name) -> line."""
    v = _Validator(path, schema)
    data = _parse(path, what, v)
    if data is None:
        return {}, {}
    # Pod spec and host names are strings, as written (YAML would read `1:` as 1 and `007:` as 7).
    for section, names in v.names.items():
        if isinstance(data.get(section), dict):
            data[section] = dict(zip(names, data[section].values()))
    return data, v.lines


def _parse(path: Path, what: str, validator: _Validator | None) -> Any:
    """Read, decode and compose once; check the node tree (and ``validator``'s schema); then build it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: the {what} is not UTF-8 text (byte {raw[e.start]:#04x}); "
                          "save it as UTF-8") from None
    if not text.strip():
        return None
    import yaml  # only when there is YAML to read: keeps commands without an inventory quick

    cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: same result, faster
    try:
        if "&" in text or "*" in text:  # no anchor or alias can be written without these
            _refuse_anchors(path, cls(text))
        loader = cls(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_tree(path, loader, node)
            if validator is not None:
                validator.document(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}:{_error_line(e, raw, text, cls)}invalid YAML: {_problem(e)}") from None
    except RecursionError:  # the pure-Python parser recurses per level; libyaml stops at 1000
        raise ConfigError(f"{path}: the {what} is nested too deeply") from None
    except (ValueError, OverflowError) as e:  # a value YAML cannot build, e.g. the date 2024-13-45
        raise ConfigError(f"{path}: invalid value in the {what}: {e}") from None


def _error_line(e: Any, raw: bytes, text: str, cls: type) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return f"{mark.line + 1}: "
    position = getattr(e, "position", None)  # ReaderError: libyaml counts bytes, PyYAML characters
    if isinstance(position, int):
        before = raw.count(b"\n", 0, position) if cls.__name__.startswith("C") else text.count("\n", 0, position)
        return f"{before + 1}: "
    return ""


def _problem(e: Any) -> str:
    return getattr(e, "problem", None) or str(e).splitlines()[0]


def _refuse_anchors(path: Path, loader: Any) -> None:
    """Walk the events (never the expanded graph): the first alias, else the first anchor, is an error."""
    import yaml

    anchor = None
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{path}:{event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed")
            if anchor is None and getattr(event, "anchor", None):
                anchor = event
    finally:
        loader.dispose()
    if anchor is not None:
        raise ConfigError(f"{path}:{anchor.start_mark.line + 1}: YAML anchors (&{anchor.anchor}) are not allowed")


def _check_tree(path: Path, loader: Any, root: Any) -> None:
    """Refuse what would be silently lost or repeated: aliases (a node reached twice), merge keys,
    duplicate keys and keys that are lists or mappings. Iterative, one visit per node."""
    import yaml

    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "top level")]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            raise ConfigError(f"{path}:{_line(node)}: YAML aliases are not allowed")
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for knode, vnode in node.value:
                if knode.tag == _MERGE:
                    raise ConfigError(f"{path}:{_line(knode)}: YAML merge keys (<<) are not allowed")
                if not isinstance(knode, yaml.ScalarNode):
                    raise ConfigError(f"{path}:{_line(knode)}: keys in {where} must be names or numbers, "
                                      f"not a {'list' if isinstance(knode, yaml.SequenceNode) else 'mapping'}")
                # Compare keys as YAML builds them: 1, 01 and true are one key to a dict.
                key = knode.value if knode.tag == _STR else loader.construct_object(knode)
                if key in keys:
                    raise ConfigError(f"{path}:{_line(knode)}: duplicate key {knode.value!r} in {where} "
                                      f"(first at line {keys[key]})")
                keys[key] = _line(knode)
                stack.append((vnode, knode.value if where == "top level" else f"{where}.{knode.value}"))


def _line(node: Any) -> int:
    return node.start_mark.line + 1


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


class _Validator:
    """Checks the node tree against a schema before anything is built from it.

    Collects the names of each named section in order (``names``) and the line
    of each (``lines``), for the caller's duplicate check across files.
    """

    def __init__(self, path: Path, schema: dict[str, Any]):
        self.path = path
        self.schema = schema
        self.names: dict[str, list[str]] = {}
        self.lines: dict[tuple[str, str], int] = {}

    def fail(self, node: Any, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}:{_line(node)}: {msg}")

    def document(self, root: Any) -> None:
        for key, knode, vnode in self.entries(root, self.schema, "top level"):
            if key in _SECTIONS:
                self.section(key, knode, vnode)
            else:
                self.value(key, self.schema[key], knode, vnode, "top level")

    def entries(self, node: Any, schema: dict[str, Any], where: str):
        """(key, key node, value node) of a mapping whose keys must all be in ``schema``."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where} must be a mapping")
        for knode, vnode in node.value:
            if knode.tag != _STR or knode.value not in schema:
                known = ", ".join(sorted(schema))
                raise self.fail(knode, f"unknown key {knode.value!r} in {where} (known: {known})")
            yield knode.value, knode, vnode

    def section(self, section: str, knode: Any, vnode: Any) -> None:
        import yaml

        schema, named = _SECTIONS[section]
        if vnode.tag == _NULL:
            return  # `pods:` with every entry commented out: an empty section
        if not named:
            self.entries_checked(vnode, schema, section)
            return
        if not isinstance(vnode, yaml.MappingNode):
            raise self.fail(vnode, f"{section} must be a mapping of names to {_LABELS[section]}s")
        names = self.names[section] = []
        for name_node, spec in vnode.value:
            name = self.name(section, name_node)
            if (section, name) in self.lines:  # `1:` and `"1":` name the same pod
                raise self.fail(name_node, f"{_LABELS[section]} {name!r} is defined twice "
                                           f"(first at line {self.lines[section, name]})")
            self.lines[section, name] = _line(name_node)
            names.append(name)
            where = f"{section}.{name}"
            if spec.tag == _NULL:
                if section == "hosts":
                    raise self.fail(name_node, f"{where} needs 'host'")
                continue  # a pod spec with no keys: the defaults, under this name
            self.entries_checked(spec, schema, where)
            if section == "hosts" and not any(k.value == "host" and v.tag != _NULL for k, v in spec.value):
                raise self.fail(name_node, f"{where} needs 'host'")

    def entries_checked(self, node: Any, schema: dict[str, Any], where: str) -> None:
        for key, knode, vnode in self.entries(node, schema, where):
            self.value(key, schema[key], knode, vnode, where)

    def name(self, section: str, node: Any) -> str:
        label = f"{_LABELS[section]} name"
        if node.tag == _NULL:
            raise self.fail(node, f"a {label} in {section} is empty or null")
        name = node.value
        if not name.strip():
            raise self.fail(node, f"a {label} in {section} must not be empty")
        if _CONTROL.search(name):
            raise self.fail(node, f"{label} {name!r} must not contain control characters (newline, tab, escape)")
        if len(name) > NAME_MAX:
            raise self.fail(node, f"{label} {_show(name)} must be at most {NAME_MAX} characters, got {len(name)}")
        return name

    def value(self, key: str, want: Any, knode: Any, vnode: Any, where: str) -> None:
        import yaml

        if vnode.tag == _NULL:
            return
        ok = {
            int: lambda n: isinstance(n, yaml.ScalarNode) and n.tag == _INT,
            str: lambda n: isinstance(n, yaml.ScalarNode) and n.tag == _STR,
            list: lambda n: isinstance(n, yaml.SequenceNode),
            dict: lambda n: isinstance(n, yaml.MappingNode),
        }[want](vnode)
        if not ok:
            raise self.fail(knode, f"'{key}' in {where} must be a {want.__name__}")


def _merge(inv: Inventory, path: Path, data: dict[str, Any], lines: dict[tuple[str, str], int],
           first: dict[tuple[str, str], str]) -> None:
    inv.sources.append(path)
    inv.defaults.update({k: v for k, v in (data.get("defaults") or {}).items() if v is not None})
    for section in ("pods", "hosts"):
        for name, spec in (data.get(section) or {}).items():
            here = f"{path}:{lines[section, name]}"
            if (section, name) in first:
                raise ConfigError(f"{here}: {_LABELS[section]} {name!r} is defined twice in the inventory "
                                  f"(first at {first[section, name]})")
            first[section, name] = here
            if section == "pods":
                inv.pods[name] = {k: v for k, v in (spec or {}).items() if v is not None}
            else:
                inv.hosts[name] = Host(name=name, **{k: v for k, v in spec.items() if v is not None})

"""Ansible-style YAML inventory: defaults, named pod specs, Serverless endpoint specs and plain SSH hosts.

The inventory is data, not code: it is validated here, and every error names
the file and the line. Location: ``$AUTOPOD_INVENTORY`` (a file or a folder),
else ``./inventory``. A folder contributes every ``*.yml``/``*.yaml`` in it.

YAML is read strictly (``load_yaml_document``): aliases, anchors and merge keys
are refused (an alias bomb would otherwise expand without bound), so are
duplicate keys (YAML would keep the last one silently). Values are checked on
the parsed nodes, before YAML 1.1 turns ``010`` into 8 or ``1_0`` into 10.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .files import MiB, decode, not_regular, read_bytes
from .flags import env_setting

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
    # The cost guard: RunPod's own timers, and the idle watchdog inside the pod.
    "stop_after": str,
    "terminate_after": str,
    "idle_minutes": float,
    "idle_action": str,
    "dead_minutes": float,
    # Models the pod's volume must hold: a list of {url, folder, name?, sha256?}; pod.up pulls what is missing.
    "models": list,
}
GLOBAL_KEYS: dict[str, type | tuple[type, ...]] = {
    "ssh_key": str,
    "tunnel_backend": str,
    "comfy_url": str,
    "budget_usd_per_day": float,
    "runpod_api": str,
}
DEFAULT_KEYS = {**POD_KEYS, **GLOBAL_KEYS}
# Secrets live in config.yaml (0600, in AUTOPOD_HOME) or the environment, never in an inventory that is shared.
SECRET_KEYS: dict[str, type | tuple[type, ...]] = {"hf_token": str, "civitai_api_token": str}
CONFIG_KEYS = {**DEFAULT_KEYS, **SECRET_KEYS}
MODEL_KEYS = ("url", "folder", "name", "sha256")
# Only a named pod spec can be a fleet: pods NAME-1 … NAME-<count>, the ones past count stopped or killed.
SPEC_KEYS: dict[str, type | tuple[type, ...]] = {**POD_KEYS, "count": int, "surplus": str}
# A RunPod Serverless endpoint (worker-comfyui): ``endpoint.up --name X`` makes it match. Endpoint specs do
# not take the pod ``defaults:`` (a pod's image or wait timeout means something else on an endpoint).
ENDPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "image": str,
    "gpus": list,
    "gpu_count": int,
    "workers_min": int,
    "workers_max": int,
    "idle_timeout": int,
    "timeout": int,
    "flashboot": bool,
    "volume_id": str,
    "disk_gb": int,
    "env": dict,
}
HOST_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "port": int,
    "user": str,
    "key": str,
    "comfy_address": str,
}
TOP_KEYS = {"defaults": dict, "pods": dict, "hosts": dict, "endpoints": dict}

# Allowed ranges of the whole-number keys (RunPod's and TCP's limits; a week for timeout).
INT_RANGES = {"count": (1, 64), "gpu_count": (1, 16), "disk_gb": (1, 4000), "timeout": (1, 604_800), "port": (1, 65_535),
              "workers_min": (0, 1000), "workers_max": (0, 1000), "idle_timeout": (1, 3600)}
# Allowed ranges of the keys that take any number (fractional minutes let scripts use seconds).
FLOAT_RANGES = {"idle_minutes": (0.01, 10_080), "dead_minutes": (0.01, 10_080), "budget_usd_per_day": (0.01, 1_000_000)}
IDLE_ACTIONS = ("stop", "terminate")
CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")
TUNNEL_BACKENDS = ("sshtunnel", "openssh")
NAME_MAX = 128
MAX_YAML_BYTES = 16 * MiB  # an inventory, config.yaml, a simulator world, a job file

# Sections of the inventory: the schema of each entry, and whether entries are named (pods, hosts).
_SECTIONS = {"defaults": (DEFAULT_KEYS, False), "pods": (SPEC_KEYS, True), "hosts": (HOST_KEYS, True),
             "endpoints": (ENDPOINT_KEYS, True)}
_LABELS = {"pods": "pod spec", "hosts": "host", "endpoints": "endpoint spec"}

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _MERGE = (_T + t for t in ("str", "int", "float", "bool", "null", "merge"))
_KINDS = {_INT: "a number", _FLOAT: "a number", _BOOL: "true/false", _NULL: "null", _T + "timestamp": "a date"}

_DIGITS = re.compile(r"^[0-9]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # they corrupt tables, logs and shell commands
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_SPEC = re.compile(r"^([0-9]{1,5})/(http|tcp)$")  # RunPod exposes http and tcp ports, not udp
# Not starting with "-": ssh would read the value as an option (-oProxyCommand=...).
_HOST = re.compile(r"^(?!-)[A-Za-z0-9.:-]{1,253}$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$", re.IGNORECASE)


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
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)


def inventory_location() -> tuple[Path, bool]:
    """(path, explicit): explicit locations must exist, ./inventory may not."""
    env = env_setting("AUTOPOD_INVENTORY")
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
        raise ConfigError(f"{path}: the inventory must be a YAML file or a folder of them ({not_regular(mode)})")
    inv = Inventory()
    first: dict[tuple[str, str], str] = {}  # (section, name) -> "file:line" where it was defined
    for f in files:
        data, lines = _load_mapping(f, TOP_KEYS, "inventory")
        _merge(inv, f, data, lines, first)
    return inv


def load_yaml_document(path: Path, what: str, text: str | None = None) -> Any:
    """Parse one YAML file strictly: no aliases, anchors, merge keys or duplicate keys.

    Every error is a ConfigError naming ``path`` and, where known, the line;
    ``what`` says what the file is ("inventory", "simulator world"). An empty file
    gives None. ``text``: the file's text, when the caller has read it already.
    """
    return _parse(path, what, None, text)


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


def _parse(path: Path, what: str, validator: _Validator | None, text: str | None = None) -> Any:
    """Read, decode and compose once; check the node tree (and ``validator``'s schema); then build it."""
    if text is None:
        path, raw = read_bytes(path, what=what, limit=MAX_YAML_BYTES, error=ConfigError)
        text = decode(raw, path, what=what, error=ConfigError)
    else:
        raw = text.encode("utf-8")
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


# -- formats of string values: each returns None when fine, else what is allowed ------------------------
def _cloud_type(s: str) -> str | None:
    return None if s.upper() in CLOUD_TYPES else f"must be one of {', '.join(CLOUD_TYPES)}"


def _tunnel_backend(s: str) -> str | None:
    return None if s in TUNNEL_BACKENDS else f"must be one of {', '.join(TUNNEL_BACKENDS)}"


def _port_ok(text: str) -> bool:
    return bool(_DIGITS.match(text)) and len(text) <= 5 and 1 <= int(text) <= 65_535


def _address(s: str) -> str | None:
    host, _, port = s.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host_ok = bool(re.match(r"^\[[0-9A-Fa-f:.]+\]$", host))
    else:
        host_ok = bool(_HOST.match(host)) and ":" not in host
    return None if host_ok and _port_ok(port) else "must be HOST:PORT with PORT 1-65535 (IPv6 as [::1]:8188)"


def _url(s: str) -> str | None:
    from urllib.parse import urlsplit

    problem = "must be an http:// or https:// URL with a host (port 1-65535), e.g. http://127.0.0.1:8188"
    if any(c.isspace() for c in s):
        return problem
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError:  # a port that is not a number or above 65535
        return problem
    ok = u.scheme in ("http", "https") and bool(u.hostname) and _HOST.match(u.hostname) and port != 0
    return None if ok else problem


def _host(s: str) -> str | None:
    return None if _HOST.match(s) else "must be a host name or IP address (letters, digits, '.', '-', ':'; " \
                                       "not starting with '-')"


def _user(s: str) -> str | None:
    return None if _USER.match(s) else "must be a user name (letters, digits, '_', '.', '-'; at most 32; " \
                                       "starting with a letter or '_')"


def _port_spec(s: str) -> str | None:
    m = _PORT_SPEC.match(s)
    ok = m is not None and 1 <= int(m.group(1)) <= 65_535
    return None if ok else "must be PORT/http or PORT/tcp with PORT 1-65535 (RunPod has no udp)"


def _timer(s: str) -> str | None:
    from .flags import duration_seconds, point_in_time

    if duration_seconds(s) is None and point_in_time(s) is None:
        return "must be a duration like 90m, 2h, 1d or 1h30m, or an ISO-8601 time in quotes"
    return None


def _runpod_api(s: str) -> str | None:
    return None if s in ("auto", "graphql", "rest") else "must be one of auto, graphql, rest"


def _idle_action(s: str) -> str | None:
    return None if s in IDLE_ACTIONS else f"must be one of {', '.join(IDLE_ACTIONS)}"


def _surplus(s: str) -> str | None:
    return None if s in ("stop", "kill") else "must be stop or kill"


_FORMATS: dict[str, Callable[[str], str | None]] = {
    "cloud_type": _cloud_type, "tunnel_backend": _tunnel_backend, "comfy_address": _address, "comfy_url": _url,
    "host": _host, "user": _user, "runpod_api": _runpod_api, "stop_after": _timer, "terminate_after": _timer, "idle_action": _idle_action,
    "surplus": _surplus,
}
_ITEM_FORMATS: dict[str, Callable[[str], str | None]] = {"ports": _port_spec}


def _model_url(s: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(s)
        ok = u.scheme in ("http", "https") and bool(u.hostname) and not u.username and not any(
            c.isspace() for c in s) and len(s) <= 4096
    except ValueError:
        ok = False
    return None if ok else "must be an http:// or https:// URL with a host and no credentials"


def _model_folder(s: str) -> str | None:
    return None if re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", s) else \
        "must be a ComfyUI model folder name like checkpoints, loras or vae"


def _model_name(s: str) -> str | None:
    if "/" in s or "\\" in s or ".." in s or s.startswith("."):
        return "must be a file name: no '/', no '..', not starting with '.'"
    return None


def _sha256(s: str) -> str | None:
    return None if re.match(r"^(sha256[:=])?[0-9a-fA-F]{64}$", s, re.IGNORECASE) else "must be 64 hexadecimal digits"


_MODEL_FORMATS: dict[str, Callable[[str], str | None]] = {"url": _model_url, "folder": _model_folder,
                                                          "name": _model_name, "sha256": _sha256}


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
            if knode.tag == _STR and knode.value in SECRET_KEYS and knode.value not in schema:
                raise self.fail(knode, f"{knode.value!r} is a secret: put it in config.yaml in AUTOPOD_HOME or in "
                                       f"the environment ({knode.value.upper()}), not in the inventory")
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

        what = f"{key!r} in {where}"
        if vnode.tag == _NULL:
            raise self.fail(knode, f"{what} has no value; leave the key out to use the default")
        if want is int:
            self.whole_number(key, vnode, what)
        elif want is float:
            self.any_number(key, vnode, what)
        elif want is bool:
            if not (isinstance(vnode, yaml.ScalarNode) and vnode.tag == _BOOL and not vnode.style
                    and vnode.value.lower() in ("true", "false")):
                raise self.fail(vnode, f"{what} must be true or false, got {self.kind(vnode)}")
        elif want is str:
            self.string(vnode, what, _FORMATS.get(key))
        elif key == "models":
            self.models(vnode, what)
        elif want is list:
            if not isinstance(vnode, yaml.SequenceNode):
                raise self.fail(vnode, f"{what} must be a list, e.g. [a, b], got {self.kind(vnode)}")
            if not vnode.value:
                raise self.fail(vnode, f"{what} must not be empty; leave the key out to use the default")
            for i, item in enumerate(vnode.value, 1):
                self.string(item, f"item {i} of {what}", _ITEM_FORMATS.get(key))
        elif key == "env":
            self.env(vnode, what)
        else:  # a schema type this validator does not know: a bug here, not in the file
            raise TypeError(f"no check for {key!r} ({want!r})")

    def models(self, node: Any, what: str) -> None:
        """``models:`` entries: {url, folder, name?, sha256?}, each checked as model.pull checks its flags."""
        import yaml

        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list of {{url, folder, name, sha256}}, got {self.kind(node)}")
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(node.value, 1):
            where = f"item {i} of {what}"
            if not isinstance(item, yaml.MappingNode):
                raise self.fail(item, f"{where} must be a mapping like {{url: https://..., folder: checkpoints}}, "
                                      f"got {self.kind(item)}")
            values: dict[str, str] = {}
            for key, knode, vnode in self.entries(item, dict.fromkeys(MODEL_KEYS), where):
                if vnode.tag == _NULL:
                    raise self.fail(knode, f"{key!r} in {where} has no value")
                values[key] = self.string(vnode, f"{key!r} in {where}", _MODEL_FORMATS[key])
            for required in ("url", "folder"):
                if required not in values:
                    raise self.fail(item, f"{where} needs {required!r}")
            ident = (values["folder"], values.get("name") or values["url"])
            if ident in seen:
                raise self.fail(item, f"{where} repeats the model of item {seen[ident]}")
            seen[ident] = i

    def kind(self, node: Any) -> str:
        import yaml

        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        return _show(node.value)

    def whole_number(self, key: str, node: Any, what: str) -> None:
        import yaml

        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        # Plain digits only: YAML 1.1 reads 1_0 as 10, +2 as 2, 0x10 as 16 and 010 as 8.
        plain = isinstance(node, yaml.ScalarNode) and not node.style and node.tag == _INT
        if not (plain and _DIGITS.match(text)) or (len(text) > 1 and text.startswith("0")):
            hint = " (without quotes)" if isinstance(node, yaml.ScalarNode) and node.style else ""
            raise self.fail(node, f"{what} must be a whole number like 2{hint}, got {self.kind(node)}")
        lo, hi = INT_RANGES[key]
        if len(text) > len(str(hi)) or not lo <= int(text) <= hi:
            shown = text if len(text) <= 20 else text[:17] + "..."
            raise self.fail(node, f"{what} must be between {lo} and {hi}, got {shown}")

    def any_number(self, key: str, node: Any, what: str) -> None:
        import yaml

        text = node.value if isinstance(node, yaml.ScalarNode) else ""
        plain = isinstance(node, yaml.ScalarNode) and not node.style and node.tag in (_INT, _FLOAT)
        if not (plain and re.match(r"^[0-9]+(\.[0-9]+)?$", text)):
            hint = " (without quotes)" if isinstance(node, yaml.ScalarNode) and node.style else ""
            raise self.fail(node, f"{what} must be a number like 30 or 0.5{hint}, got {self.kind(node)}")
        lo, hi = FLOAT_RANGES[key]
        if not lo <= float(text) <= hi:
            raise self.fail(node, f"{what} must be between {lo:g} and {hi:g}, got {_show(text)}")

    def string(self, node: Any, what: str, fmt: Callable[[str], str | None] | None = None) -> str:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a string, got {self.kind(node)}")
        if node.tag != _STR:
            kind = _KINDS.get(node.tag, f"the tag {node.tag}")
            raise self.fail(node, f"{what} must be a string, got {_show(node.value)} "
                                  f"(YAML reads it as {kind}; put it in quotes)")
        s = node.value
        if not s.strip():
            raise self.fail(node, f"{what} must not be empty; leave the key out to use the default")
        if _CONTROL.search(s):
            raise self.fail(node, f"{what} must not contain control characters (newline, tab, escape), got {_show(s)}")
        problem = fmt(s) if fmt else None
        if problem:
            raise self.fail(node, f"{what} {problem}, got {_show(s)}")
        return s

    def env(self, node: Any, what: str) -> None:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of NAME: value, got {self.kind(node)}")
        for knode, vnode in node.value:
            if knode.tag != _STR or not _ENV_NAME.match(knode.value):
                raise self.fail(knode, f"variable name {_show(knode.value)} in {what} must be letters, digits "
                                       "and '_', not starting with a digit")
            var = f"{knode.value!r} in {what}"
            if vnode.tag == _NULL:
                raise self.fail(knode, f"{var} has no value (empty values are not allowed); leave the variable out")
            if isinstance(vnode, yaml.ScalarNode) and vnode.tag == _STR:
                self.string(vnode, var)
            elif isinstance(vnode, yaml.ScalarNode) and vnode.tag in (_INT, _FLOAT, _BOOL):
                self.env_scalar(vnode, var)
            else:
                raise self.fail(vnode, f"{var} must be a string, number or true/false, got {self.kind(vnode)}")

    def env_scalar(self, node: Any, what: str) -> None:
        """A number or true/false reaches the pod as text: refuse those YAML 1.1 would rewrite (010 -> 8)."""
        text = node.value
        if node.tag == _BOOL:
            as_written = text.lower() in ("true", "false")
        elif node.tag == _INT:
            as_written = bool(re.match(r"^-?(0|[1-9][0-9]{0,17})$", text))
        else:
            try:
                as_written = repr(float(text)) == text
            except ValueError:  # .inf, 1_0.5: forms only YAML reads
                as_written = False
        if not as_written:
            raise self.fail(node, f"{what} must be written as the pod should see it: YAML would rewrite "
                                  f"{_show(text)}; put it in quotes")


def _merge(inv: Inventory, path: Path, data: dict[str, Any], lines: dict[tuple[str, str], int],
           first: dict[tuple[str, str], str]) -> None:
    inv.sources.append(path)
    inv.defaults.update(data.get("defaults") or {})
    for section in ("pods", "hosts", "endpoints"):
        for name, spec in (data.get(section) or {}).items():
            here = f"{path}:{lines[section, name]}"
            if (section, name) in first:
                raise ConfigError(f"{here}: {_LABELS[section]} {name!r} is defined twice in the inventory "
                                  f"(first at {first[section, name]})")
            first[section, name] = here
            if section == "pods":
                inv.pods[name] = dict(spec or {})
            elif section == "endpoints":
                inv.endpoints[name] = dict(spec or {})
            else:
                inv.hosts[name] = Host(name=name, **spec)

"""Ansible-style YAML inventory: defaults, named pod specs and plain SSH hosts.

The inventory is data, not code: it is validated here, and every error names
the file and the line. Location: ``$AUTOPOD_INVENTORY`` (a file or a folder),
else ``./inventory``. A folder contributes every ``*.yml``/``*.yaml`` in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# key -> (python type, description). Shared by inventory defaults, pod specs and config.yaml.
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
    if not path.exists():
        if explicit:
            raise ConfigError(f"inventory {path} does not exist (AUTOPOD_INVENTORY)")
        return Inventory()
    files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml")) if path.is_dir() else [path]
    inv = Inventory()
    for f in files:
        _merge(inv, f, load_yaml_mapping(f, TOP_KEYS))
    return inv


def load_yaml_mapping(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    """Parse one YAML file whose top level is a mapping, validated with line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not text.strip():
        return {}
    import yaml  # only when there is YAML to read: keeps commands without an inventory quick

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: same result, faster
    try:
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    v = _Validator(path)
    v.mapping(node, data, schema, "top level")
    if "defaults" in data:
        v.mapping(v.child(node, "defaults"), data["defaults"] or {}, DEFAULT_KEYS, "defaults")
    for section, keys in (("pods", POD_KEYS), ("hosts", HOST_KEYS)):
        sec_node = v.child(node, section)
        for name, spec in (data.get(section) or {}).items():
            v.mapping(v.child(sec_node, name), spec or {}, keys, f"{section}.{name}")
            if section == "hosts" and not (spec or {}).get("host"):
                raise ConfigError(f"{path}:{v.line(v.child(sec_node, name))}: hosts.{name} needs 'host'")
    return data


class _Validator:
    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def line(node: Any) -> int:
        return node.start_mark.line + 1 if node is not None else 0

    @staticmethod
    def child(node: Any, key: str) -> Any:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for k, val in node.value:
                if k.value == str(key):
                    return val
        return None

    def mapping(self, node: Any, data: Any, schema: dict[str, Any], where: str) -> None:
        import yaml

        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}:{self.line(node)}: {where} must be a mapping")
        for k, val in data.items():
            knode = None
            if isinstance(node, yaml.MappingNode):
                knode = next((kn for kn, _ in node.value if kn.value == str(k)), None)
            if k not in schema:
                known = ", ".join(sorted(schema))
                raise ConfigError(f"{self.path}:{self.line(knode)}: unknown key '{k}' in {where} (known: {known})")
            want = schema[k]
            if val is None:
                continue
            ok = isinstance(val, want) and not (want is int and isinstance(val, bool))
            if not ok:
                name = want.__name__ if isinstance(want, type) else "/".join(t.__name__ for t in want)
                raise ConfigError(f"{self.path}:{self.line(knode)}: '{k}' in {where} must be a {name}")


def _merge(inv: Inventory, path: Path, data: dict[str, Any]) -> None:
    inv.sources.append(path)
    inv.defaults.update({k: v for k, v in (data.get("defaults") or {}).items() if v is not None})
    for name, spec in (data.get("pods") or {}).items():
        if name in inv.pods:
            raise ConfigError(f"{path}: pod spec '{name}' is defined twice in the inventory")
        inv.pods[str(name)] = {k: v for k, v in (spec or {}).items() if v is not None}
    for name, spec in (data.get("hosts") or {}).items():
        if name in inv.hosts:
            raise ConfigError(f"{path}: host '{name}' is defined twice in the inventory")
        inv.hosts[str(name)] = Host(name=str(name), **{k: v for k, v in spec.items() if v is not None})

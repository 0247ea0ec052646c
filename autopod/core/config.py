"""Settings: built-in defaults, AUTOPOD_HOME/config.yaml, credentials, SSH keys.

Resolution order for a setting (highest first): command-line flag, inventory pod
spec, inventory ``defaults``, ``AUTOPOD_HOME/config.yaml``, built-in defaults.
Secrets never come from the inventory: the API key is read from
``RUNPOD_API_KEY`` or ``~/.runpod/config.toml`` (the file the SDK and
runpodctl use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AuthError, ConfigError
from .files import MAX_SMALL_FILE, read_bytes, read_text
from .flags import env_setting
from .inventory import CONFIG_KEYS, Inventory, load_yaml_mapping
from .log import register_secret
from .paths import autopod_home
from .state import CorruptState, StateFile, check_fields

BUILTIN: dict[str, Any] = {
    "image": "runpod/comfyui:latest",
    "gpus": ["RTX A40", "RTX A6000", "RTX A5000"],
    "gpu_count": 1,
    "cloud_type": "SECURE",
    "disk_gb": 50,
    "ports": ["8188/http", "22/tcp"],
    "volume_mount": "/workspace",  # the SDK's /runpod-volume is wrong for the ComfyUI image
    "env": {},
    "timeout": 900,
    "comfy_address": "127.0.0.1:8188",  # ComfyUI as seen from inside the pod
    "tunnel_backend": "sshtunnel",
    "comfy_url": "http://127.0.0.1:8188",  # used as is with --no-tunnel
}
SIM_STATE = "sim.json"


def user_config() -> dict[str, Any]:
    """``AUTOPOD_HOME/config.yaml``, read and checked like the inventory defaults ({} when absent)."""
    path = autopod_home() / "config.yaml"
    try:
        if not path.exists():
            return {}
    except OSError as e:  # AUTOPOD_HOME itself cannot be searched
        raise ConfigError(f"{path}: cannot read the settings: {e.strerror or e}") from None
    return load_yaml_mapping(path, CONFIG_KEYS, "settings")


def resolve(key: str, flag: Any = None, *, inventory: Inventory | None = None, pod_spec: dict | None = None,
            config: dict | None = None) -> Any:
    """One setting through the layers. ``None``/empty flags fall through."""
    if flag not in (None, "", [], ()):
        return flag
    # The loader refuses empty values in files; layers built in code may still hold them.
    for layer in (pod_spec or {}, (inventory.defaults if inventory else {}), config or {}):
        if layer.get(key) not in (None, "", []):
            return layer[key]
    return BUILTIN.get(key)


@dataclass
class ApiCredentials:
    api_key: str = field(repr=False)
    base_url: str | None = None  # None means RunPod itself
    source: str = ""


def api_credentials() -> ApiCredentials:
    """The key and endpoint every RunPod call uses. Raises AuthError (exit 2) when no key is set."""
    sim = active_simulator()
    env_key = env_setting("RUNPOD_API_KEY", secret=True)
    if env_key is not None and any(c.isspace() or not c.isprintable() for c in env_key):
        raise ConfigError("RUNPOD_API_KEY must be the key alone: no spaces or control characters")
    base = env_setting("RUNPOD_API_BASE_URL")
    if sim and (not base or base == sim["base_url"]):
        # The simulator stays in force until `sim.stop`, unless the user points elsewhere.
        # (The adapter exports the simulator's URL for the SDK, so a later task in the chain sees it set.)
        creds = ApiCredentials(sim["api_key"], sim["base_url"], "simulator")
    elif env_key:
        creds = ApiCredentials(env_key, base, "RUNPOD_API_KEY")
    else:
        key = _runpod_config_key()
        if not key:
            raise AuthError(
                "no RunPod API key: export RUNPOD_API_KEY=... (or run `runpod config`, which writes "
                "~/.runpod/config.toml); to try autopod without an account run `autopod sim.start`"
            )
        creds = ApiCredentials(key, base, "~/.runpod/config.toml")
    register_secret(creds.api_key)
    return creds


def _runpod_config_key() -> str | None:
    """``[default] api_key`` (else the older top-level ``apiKey``) from ~/.runpod/config.toml, or None.
    Errors never show the key."""
    path = Path("~/.runpod/config.toml").expanduser()
    try:
        if not path.exists():
            return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the RunPod config: {e.strerror or e}") from None
    _p, raw = read_bytes(path, what="RunPod config", limit=MAX_SMALL_FILE, error=ConfigError)
    import tomllib  # only when the file is there: most runs never read it

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: cannot read the RunPod config: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the RunPod config is not UTF-8 text") from None
    default = data.get("default", {})
    if not isinstance(default, dict):
        raise ConfigError(f"{path}: 'default' in the RunPod config must be a table ([default])")
    for where, table, name in (("[default] api_key", default, "api_key"), ("apiKey", data, "apiKey")):
        key = table.get(name)
        if key is None:
            continue
        if not isinstance(key, str):
            kind = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a table"}.get(
                type(key), "a date")
            raise ConfigError(f"{path}: {where} in the RunPod config must be a string in quotes, got {kind}")
        if not key.strip() or any(c.isspace() or not c.isprintable() for c in key):
            raise ConfigError(f"{path}: {where} in the RunPod config must be the key alone: not empty, "
                              "no spaces or control characters")
        return key
    return None


def validate_sim_state(data: dict[str, Any]) -> None:
    check_fields(data, "the simulator record", {"base_url": str, "api_key": str, "pid": int, "ssh_user": str,
                                                "started_at": (int, float), "root": str, "hub": dict})


def sim_state() -> StateFile:
    return StateFile(autopod_home() / SIM_STATE, validate=validate_sim_state)


def active_simulator() -> dict[str, Any] | None:
    """The simulator's endpoint while `sim.start` is in force, else None."""
    try:
        data = sim_state().read()
    except CorruptState as e:
        raise ConfigError(f"{e} (`autopod sim.stop` stops the simulator and sets the file aside)") from None
    return data if data.get("base_url") and data.get("api_key") else None


def ssh_key_path(explicit: str | None = None) -> Path:
    """The private key for pods: ``ssh_key`` setting, else ~/.ssh/id_ed25519, else ~/.ssh/id_rsa."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"SSH key {p} does not exist (ssh_key setting)")
        return p
    for cand in ("~/.ssh/id_ed25519", "~/.ssh/id_rsa"):
        p = Path(cand).expanduser()
        if p.is_file():
            return p
    raise ConfigError(
        "no SSH key: create one with `ssh-keygen -t ed25519` or set ssh_key in "
        f"{autopod_home() / 'config.yaml'} or the inventory defaults"
    )


def configured_ssh_key(inventory: Inventory, explicit: str | None = None) -> Path:
    """The private key for pods and hosts: ``explicit`` (a host's ``key``), else the ``ssh_key``
    setting from the inventory defaults or config.yaml, else the ~/.ssh defaults."""
    return ssh_key_path(explicit or resolve("ssh_key", None, inventory=inventory, config=user_config()))


def public_key_text(private_key: Path) -> str:
    """The OpenSSH public key line for ``private_key`` (from its .pub file)."""
    pub = private_key.with_name(private_key.name + ".pub")
    if not pub.exists():
        raise ConfigError(f"public key {pub} is missing: recreate it with `ssh-keygen -y -f {private_key} > {pub}`")
    return read_text(pub, what="public key", limit=MAX_SMALL_FILE, error=ConfigError)[1].strip()


def pod_ssh_user() -> str:
    """RunPod images log in as root; the offline simulator's pods run as the local user."""
    sim = active_simulator()
    return (sim or {}).get("ssh_user") or "root"

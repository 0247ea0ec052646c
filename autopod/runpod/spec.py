"""Pod settings: flags, the inventory pod spec, its defaults, config.yaml and built-in defaults
merged into one ``PodSpec``, every value checked against what RunPod accepts; and the create
request built from it."""

from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..core import config as _config
from ..core.errors import UsageError
from ..core.flags import deadline, number
from ..core.flags import text as flags_text
from ..core.inventory import IDLE_ACTIONS, Inventory, load_inventory
from .api import ENV_KEY_RE, check_cloud_type, check_datacenter, check_id
from .records import ADDRESS_RE

PORT_RE = re.compile(r"^(\d{1,5})/(http|tcp)$")

@dataclass
class PodSpec:
    """Everything a create needs, after flags, inventory and defaults were merged."""

    name: str | None
    gpus: list[str]
    gpu_count: int
    cloud_type: str
    datacenter: str | None
    image: str | None
    template_id: str | None
    disk_gb: int
    volume_id: str | None
    volume_mount: str
    ports: list[str]
    env: dict[str, str]
    comfy_address: str
    timeout: int
    ssh_key: str | None = None
    # The cost guard. Timers are kept as written (90m, an ISO time) and become absolute times when the
    # create request is built; the watchdog settings go to ``pod.guard``.
    stop_after: str | None = None
    terminate_after: str | None = None
    idle_minutes: float | None = None
    idle_action: str = "stop"
    dead_minutes: float | None = None
    # Models the volume must hold ({url, folder, name?, sha256?}); pod.up pulls the missing ones.
    models: list[dict[str, Any]] = field(default_factory=list)

    def guard_settings(self) -> dict[str, Any] | None:
        """The watchdog this pod should have, or None."""
        if self.idle_minutes is None:
            return None
        return {"idle_minutes": self.idle_minutes, "action": self.idle_action, "dead_minutes": self.dead_minutes}

    def timers(self, now: float) -> dict[str, float]:
        """RunPod's timers as Unix times from ``now``: ``stop_at`` and ``terminate_at`` where set."""
        out = {}
        if self.stop_after:
            out["stop_at"] = deadline(self.stop_after, "--stop-after", now)
        if self.terminate_after:
            out["terminate_at"] = deadline(self.terminate_after, "--terminate-after", now)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["env"] = {k: ("<set>" if k == "PUBLIC_KEY" else v) for k, v in self.env.items()}
        return d


# RunPod's limits, checked before anything is sent, so a typo is exit 2 rather than a failed request.
MAX_GPU_COUNT = 16  # the API's own per-GPU maxGpuCount (8 for most types) is checked against the plan
MAX_DISK_GB = 4000
MAX_TIMEOUT_S = 7 * 86400
MAX_NAME = 128
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
MOUNT_RE = re.compile(r"^/[A-Za-z0-9._/-]{0,254}$")
MAX_IDLE_MINUTES = 7 * 24 * 60


def parse_env(items: Sequence[str] | dict[str, Any] | None) -> dict[str, str]:
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep or not key:
                raise UsageError(f"--env expects KEY=VALUE, got {item!r}")
            pairs.append((key, value))
    for key, _ in pairs:
        if not ENV_KEY_RE.match(key):
            raise UsageError(f"invalid environment variable name {key!r} in --env: "
                             "letters, digits and '_', not starting with a digit")
    return dict(pairs)


def parse_ports(ports: Sequence[Any]) -> list[str]:
    """``8188/http`` and ``22/tcp`` (RunPod exposes HTTP and TCP ports), each port 1-65535, no repeats."""
    out: list[str] = []
    for raw in ports:
        p = str(raw).strip()
        m = PORT_RE.match(p)
        if not m or not 1 <= int(m.group(1)) <= 65535:
            raise UsageError(f"invalid --port {p!r}: expected PORT/http or PORT/tcp with PORT 1-65535, e.g. 8188/http")
        if p not in out:
            out.append(p)
    return out


def check_name(name: Any, flag: str = "--name") -> str:
    return flags_text(name, flag, max_len=MAX_NAME)


def check_address(address: Any) -> str:
    """``HOST:PORT`` where ComfyUI listens inside the pod."""
    a = str(address)
    if not ADDRESS_RE.match(a) or not 1 <= int(a.rpartition(":")[2]) <= 65535:
        raise UsageError(f"invalid --comfy-address {a!r}: expected HOST:PORT with PORT 1-65535, e.g. 127.0.0.1:8188")
    return a


def resolve_spec(flags: dict[str, Any], inventory: Inventory | None = None, config: dict[str, Any] | None = None) -> PodSpec:
    """Merge one pod's settings: flag, then the inventory pod spec named by ``--name``, then
    inventory defaults, then AUTOPOD_HOME/config.yaml, then built-in defaults. ``env`` maps
    are merged key by key in the same order.

    Every value is checked here, against the limits RunPod enforces, so a dry run
    refuses exactly what the real run would refuse (UsageError, exit 2).
    """
    inventory = inventory or Inventory()
    config = config or {}
    name = check_name(flags["name"]) if flags.get("name") is not None else None
    pod_spec = inventory.pods.get(name, {}) if name else {}

    def r(key: str) -> Any:
        return _config.resolve(key, flags.get(key), inventory=inventory, pod_spec=pod_spec, config=config)

    if flags.get("image") and flags.get("template_id"):
        raise UsageError("give --image or --template-id, not both")
    template_id = r("template_id")
    image = r("image")
    if template_id and not any(layer.get("image") for layer in (flags, pod_spec, inventory.defaults, config)):
        image = None  # the template brings its own image; the built-in default must not override it
    if image is not None:
        flags_text(image, "--image", max_len=255, pattern=IMAGE_RE, expected="an image reference like runpod/comfyui:latest")

    gpus = r("gpus")
    if isinstance(gpus, str):
        gpus = [gpus]
    ports = parse_ports(r("ports") or [])
    if "22/tcp" not in ports:
        ports.append("22/tcp")  # direct SSH: scp, port forwarding and the tunnel all need it

    env: dict[str, str] = {}
    for layer in (_config.BUILTIN.get("env") or {}, config.get("env") or {}, inventory.defaults.get("env") or {},
                  pod_spec.get("env") or {}):
        env.update(parse_env(layer))
    env.update(parse_env(flags.get("env")))

    datacenter = r("datacenter")
    volume_id = r("volume_id")
    volume_mount = flags_text(r("volume_mount"), "--volume-mount", max_len=255, pattern=MOUNT_RE,
                              expected="an absolute path like /workspace")
    stop_after, terminate_after = r("stop_after"), r("terminate_after")
    now = time.time()
    for value, flag in ((stop_after, "--stop-after"), (terminate_after, "--terminate-after")):
        if value is not None:
            deadline(value, flag, now)  # checked now, so a bad value creates nothing; sent as a time later
    idle_action = str(r("idle_action") or "stop")
    if idle_action not in IDLE_ACTIONS:
        raise UsageError(f"invalid --idle-action {idle_action!r}: use one of {', '.join(IDLE_ACTIONS)}")
    return PodSpec(
        name=name,
        gpus=[flags_text(g, "--gpu") for g in gpus or []],
        gpu_count=number(r("gpu_count"), "--gpu-count", int, minimum=1, maximum=MAX_GPU_COUNT),
        cloud_type=check_cloud_type(r("cloud_type")),
        datacenter=check_datacenter(datacenter) if datacenter is not None else None,
        image=image,
        template_id=check_id(template_id, "template id") if template_id is not None else None,
        disk_gb=number(r("disk_gb"), "--disk-gb", int, minimum=1, maximum=MAX_DISK_GB),
        volume_id=check_id(volume_id, "volume id") if volume_id is not None else None,
        volume_mount=volume_mount,
        ports=ports,
        env=env,
        comfy_address=check_address(r("comfy_address")),
        timeout=number(r("timeout"), "--timeout", int, minimum=1, maximum=MAX_TIMEOUT_S),
        ssh_key=r("ssh_key"),
        stop_after=str(stop_after) if stop_after is not None else None,
        terminate_after=str(terminate_after) if terminate_after is not None else None,
        idle_minutes=number(r("idle_minutes"), "--idle-minutes", float, minimum=0.01, maximum=MAX_IDLE_MINUTES),
        idle_action=idle_action,
        dead_minutes=number(r("dead_minutes"), "--dead-minutes", float, minimum=0.01, maximum=MAX_IDLE_MINUTES),
        models=declared_models(config, inventory.defaults, pod_spec),
    )


def declared_models(*layers: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``models:`` of config.yaml, the inventory defaults and the pod spec together; a later layer's
    entry for the same folder and name (or URL) replaces an earlier one."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for layer in layers:
        for m in layer.get("models") or []:
            out[(str(m["folder"]), str(m.get("name") or m["url"]))] = dict(m)
    return list(out.values())


def load_settings(flags: dict[str, Any]) -> PodSpec:
    return resolve_spec(flags, load_inventory(), _config.user_config())


def is_fleet(name: str | None) -> bool:
    """The inventory pod spec ``name`` has a ``count``: ``pod.up --name NAME`` brings up a fleet of it."""
    return bool(name) and (load_inventory().pods.get(str(name)) or {}).get("count") is not None


def generate_name(existing: Sequence[str], today: _dt.date | None = None) -> str:
    """``autopod-YYYY-MM-DD-NNN``, the next number free among ``existing``."""
    prefix = f"autopod-{(today or _dt.date.today()).isoformat()}-"
    used = [int(n[len(prefix):]) for n in existing if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return f"{prefix}{max(used, default=0) + 1:03d}"


def rfc3339(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_create_input(spec: PodSpec, name: str, gpu: dict[str, Any], datacenter: str | None,
                       public_key: str | None, timers: dict[str, float] | None = None) -> dict[str, Any]:
    """The ``podFindAndDeployOnDemand`` input for one GPU choice (GraphQL field names). ``timers``
    (``spec.timers(now)``) become RunPod's own ``stopAfter``/``terminateAfter``, which the SDK
    does not expose: RunPod stops or terminates the pod then, whatever happens on this machine."""
    env = dict(spec.env)
    if public_key and "PUBLIC_KEY" not in env:
        # Official images start sshd and authorise these keys only when PUBLIC_KEY is set.
        env["PUBLIC_KEY"] = public_key
    inp: dict[str, Any] = {
        "name": name,
        "imageName": spec.image or "",
        "gpuTypeId": gpu["id"],
        "gpuCount": spec.gpu_count,
        "cloudType": spec.cloud_type,
        "supportPublicIp": True,
        "startSsh": True,
        "volumeInGb": 0,
        "containerDiskInGb": spec.disk_gb,
        "minVcpuCount": 1,
        "minMemoryInGb": 1,
        "dockerArgs": "",
        "ports": ",".join(spec.ports),
        "volumeMountPath": spec.volume_mount,
        "env": env,
        "dataCenterId": datacenter,
    }
    if spec.template_id:
        inp["templateId"] = spec.template_id
    if spec.volume_id:
        inp["networkVolumeId"] = spec.volume_id
    if timers and timers.get("stop_at"):
        inp["stopAfter"] = rfc3339(timers["stop_at"])
    if timers and timers.get("terminate_at"):
        inp["terminateAfter"] = rfc3339(timers["terminate_at"])
    return inp

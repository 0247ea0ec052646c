"""Pods: settings resolution, GPU fallback, idempotent lifecycle operations, readiness waits.

Library functions take explicit arguments (an ``api`` from ``runpod_api.connect()``)
and return ``Pod``/``Outcome``/dicts; the ``pod`` task collection only renders them.
Local state (``pods.json``, keyed by pod id) caches names, the ComfyUI address and
the spec each pod was created from. The API is the source of truth: every
listing drops pods gone from the account and adopts pods created elsewhere.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from . import chain, signals
from . import config as _config
from .errors import AutopodError, ConfigError, Interrupted, NoCapacity, NotFound, RemoteError, Timeout, UsageError
from .flags import number
from .flags import text as flags_text
from .gpus import check_gpu_count, check_known_datacenter, plan_gpu_order
from .inventory import Inventory, load_inventory
from .output import Outcome
from .paths import autopod_home
from .runpod_api import ENV_KEY_RE, check_cloud_type, check_datacenter, check_id, pod_create_mutation
from .state import StateFile, check_fields, exclusive
from .ui import progress, warn

log = logging.getLogger(__name__)

STATE = "pods.json"
POLL_INTERVAL = 5.0  # seconds between status reads once a wait is under way (RunPod rate-limits)
GONE_GRACE_S = 60.0  # a new pod may read as missing for a moment right after create
KEEP_UNLISTED_S = 120.0  # a just-created pod may not be listed yet; keep its state entry
PORT_RE = re.compile(r"^(\d{1,5})/(http|tcp)$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

# --- the pod record -------------------------------------------------------------


COMFY_ADDRESS_ENV = "AUTOPOD_COMFY_ADDRESS"


def _comfy_address(configured: str | None, env: list[str] | None) -> str:
    """Where ComfyUI listens inside the pod: a configured non-default address, else the one the pod
    announces in its env (``AUTOPOD_COMFY_ADDRESS``: templates may set it, the simulator does), else 127.0.0.1:8188."""
    default = _config.BUILTIN["comfy_address"]
    if configured and configured != default:
        return configured
    for item in env or []:
        key, _, value = str(item).partition("=")
        if key == COMFY_ADDRESS_ENV and ADDRESS_RE.match(value):
            return value
    return configured or default


@dataclass
class Pod:
    id: str
    name: str
    status: str
    gpu: str | None = None
    gpu_count: int = 0
    datacenter: str | None = None
    volume_id: str | None = None
    volume_mount: str | None = None
    cost_per_hr: float | None = None
    uptime_s: int | None = None
    image: str | None = None
    ports: list[str] = field(default_factory=list)
    disk_gb: int | None = None
    ssh_direct: tuple[str, int] | None = None
    ssh_proxy: str | None = None
    comfy_address: str = "127.0.0.1:8188"

    @classmethod
    def from_api(cls, d: dict[str, Any], entry: dict[str, Any] | None = None) -> "Pod":
        entry = entry or {}
        machine = d.get("machine") or {}
        runtime = d.get("runtime") or {}
        direct = None
        for p in runtime.get("ports") or []:
            # HTTP ports report a private 100.65.x.x address; only the public tcp 22 is reachable.
            if p.get("privatePort") == 22 and p.get("isIpPublic") and p.get("ip") and p.get("publicPort"):
                direct = (str(p["ip"]), int(p["publicPort"]))
                break
        uptime = runtime.get("uptimeInSeconds") if d.get("runtime") else None
        if uptime is None and d.get("runtime"):
            uptime = d.get("uptimeSeconds")
        host_id = machine.get("podHostId")
        return cls(
            id=d["id"],
            name=d.get("name") or entry.get("name") or d["id"],
            status=d.get("desiredStatus") or "UNKNOWN",
            gpu=machine.get("gpuDisplayName"),
            gpu_count=int(d.get("gpuCount") or 0),
            datacenter=machine.get("dataCenterId"),
            volume_id=d.get("networkVolumeId"),
            volume_mount=d.get("volumeMountPath"),
            cost_per_hr=d.get("costPerHr"),
            uptime_s=int(uptime) if uptime is not None else None,
            image=d.get("imageName"),
            ports=[p for p in (d.get("ports") or "").split(",") if p],
            disk_gb=d.get("containerDiskInGb"),
            ssh_direct=direct,
            # podHostId is already the full ssh.runpod.io user name (<podId>-<hex>)
            ssh_proxy=f"{host_id}@ssh.runpod.io" if host_id else None,
            comfy_address=_comfy_address(entry.get("comfy_address"), d.get("env")),
        )

    @property
    def alive(self) -> bool:
        return self.status != "TERMINATED"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ssh_direct"] = {"host": self.ssh_direct[0], "port": self.ssh_direct[1]} if self.ssh_direct else None
        return d

    def row(self) -> dict[str, Any]:
        """A human row for ``pod.list``."""
        gpu = self.gpu and (f"{self.gpu_count}x {self.gpu}" if self.gpu_count > 1 else self.gpu)
        return {"name": self.name, "id": self.id, "status": self.status, "gpu": gpu, "datacenter": self.datacenter,
                "volume": self.volume_id, "uptime": fmt_duration(self.uptime_s),
                "cost": f"{self.cost_per_hr:.3f}" if self.cost_per_hr is not None else None}


LIST_COLUMNS = [("name", "NAME"), ("id", "ID"), ("status", "STATUS"), ("gpu", "GPU"), ("datacenter", "DATACENTER"),
                ("volume", "VOLUME"), ("uptime", "UPTIME"), ("cost", "$/HR")]


def fmt_duration(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# --- settings -----------------------------------------------------------------


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
    )


def load_settings(flags: dict[str, Any]) -> PodSpec:
    return resolve_spec(flags, load_inventory(), _config.user_config())


def generate_name(existing: Sequence[str], today: _dt.date | None = None) -> str:
    """``autopod-YYYY-MM-DD-NNN``, the next number free among ``existing``."""
    prefix = f"autopod-{(today or _dt.date.today()).isoformat()}-"
    used = [int(n[len(prefix):]) for n in existing if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return f"{prefix}{max(used, default=0) + 1:03d}"


def build_create_input(spec: PodSpec, name: str, gpu: dict[str, Any], datacenter: str | None,
                       public_key: str | None) -> dict[str, Any]:
    """The ``podFindAndDeployOnDemand`` input for one GPU choice (GraphQL field names)."""
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
    return inp


# --- state ----------------------------------------------------------------------
#
# pods.json is a cache of what autopod knows about pods (names, the spec each was
# created from, when it was seen last). The API stays the source of truth, so a
# damaged pods.json never stops a pod from being stopped or killed: lifecycle
# commands warn about it and carry on without it (it is never overwritten).
# Pods that left the account stay as tombstones for a while, so that killing a
# pod twice is "already gone" while a misspelt name is an error.

TOMBSTONE_S = 7 * 86400
_ENTRY_TYPES: dict[str, Any] = {"name": str, "created_at": (int, float), "adopted_at": (int, float),
                                "gone_at": (int, float), "comfy_address": str, "spec": dict}


def _validate(data: dict[str, Any]) -> None:
    for pod_id, entry in data.items():
        check_fields(entry, f"pod {pod_id!r}", _ENTRY_TYPES)


def _state() -> StateFile:
    return StateFile.named(STATE, validate=_validate)


def state_entries() -> dict[str, Any]:
    """Every entry, tombstones included (they carry ``gone_at``)."""
    return _state().read()


def _entries_or_warn() -> dict[str, Any]:
    try:
        return state_entries()
    except ConfigError as e:
        _warn_bookkeeping(e)
        return {}


_warned: set[str] = set()


def _warn_bookkeeping(e: Exception) -> None:
    if str(e) not in _warned:
        _warned.add(str(e))
        warn(f"{e}; carrying on without autopod's pod records")


def known_refs() -> set[str]:
    """Ids and names of every pod autopod has seen, gone ones included (``pods.json``).

    Lets a command tell "that pod is gone" from "there never was such a pod" (a typo)
    without asking the API. Empty when the file cannot be read: the caller then treats
    every name as unknown, which errs on the side of refusing.
    """
    try:
        entries = state_entries()
    except ConfigError:
        return set()
    refs = set(entries)
    refs.update(str(e["name"]) for e in entries.values() if e.get("name"))
    return refs


def _remember(pod_id: str, **fields: Any) -> None:
    """Record what autopod knows of a pod. Best effort: the pod exists whether or not this is written."""
    try:
        with _state().update() as data:
            entry = data.setdefault(pod_id, {})
            entry.pop("gone_at", None)
            entry.update({k: v for k, v in fields.items() if v is not None})
    except ConfigError as e:
        _warn_bookkeeping(e)


def _mark_gone(pod_id: str) -> None:
    try:
        with _state().update() as data:
            if pod_id in data:
                data[pod_id]["gone_at"] = time.time()
    except ConfigError as e:
        _warn_bookkeeping(e)


def _chain(pod_id: str) -> None:
    """Later tasks on this command line mean this pod (``autopod.chain``)."""
    chain.set_pod(pod_id)


def _sync_state(raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Bring pods.json in line with a listing: adopt pods made elsewhere, mark vanished ones gone,
    forget tombstones after a week. Returns the live entries."""
    now = time.time()
    try:
        with _state().update() as data:
            listed = {p["id"] for p in raw}
            for pid in list(data):
                e = data[pid]
                if pid in listed:
                    continue
                if e.get("gone_at"):
                    if now - float(e["gone_at"]) > TOMBSTONE_S:
                        del data[pid]
                elif now - float(e.get("created_at") or 0) > KEEP_UNLISTED_S:
                    e["gone_at"] = now
            for p in raw:
                entry = data.setdefault(p["id"], {})
                if not entry:
                    entry["adopted_at"] = now  # created elsewhere (web console, another machine)
                entry.pop("gone_at", None)
                entry["name"] = p.get("name") or entry.get("name")
            return {k: dict(v) for k, v in data.items() if k in listed}
    except ConfigError as e:
        _warn_bookkeeping(e)
        return {}


# --- reading --------------------------------------------------------------------


def list_pods(api: Any) -> list[Pod]:
    """Every pod on the account, with pods.json synced to it."""
    raw = api.list_pods()
    entries = _sync_state(raw)
    return [Pod.from_api(p, entries.get(p["id"])) for p in raw]


def get_pod(api: Any, pod_id: str) -> Pod | None:
    raw = api.get_pod(pod_id)
    return Pod.from_api(raw, _entries_or_warn().get(pod_id)) if raw else None


def _candidates(pods: Sequence[Pod]) -> str:
    return ", ".join(f"{p.name} ({p.id}, {p.status})" for p in pods) or "none"


def resolve_pod(api: Any, ref: str | None, pods: list[Pod] | None = None) -> Pod:
    """The pod ``--pod`` names: an id or a name. Without one: the pod created or started
    earlier on this command line, else the only pod on the account, else exit 2 with the
    candidates. After a dry-run step on the same command line there is no implicit pod."""
    if ref is None and chain.planned():
        raise UsageError(f"an earlier task on this command line only pretended to act ({chain.planned()}); "
                         "name the pod with --pod")
    if pods is None:
        pods = list_pods(api)
    live = [p for p in pods if p.alive]
    if ref is not None:
        for p in pods:
            if p.id == ref:
                return p
        named = [p for p in live if p.name == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise UsageError(f"several pods are named {ref!r}; pass an id with --pod: {_candidates(named)}")
        raise NotFound(f"no pod {ref!r} on the account; pods: {_candidates(live)}", exit_code=2)
    if chain.pod_id():
        for p in live:
            if p.id == chain.pod_id():
                return p
    if len(live) == 1:
        return live[0]
    if not live:
        raise UsageError("no pods on the account; create one with `autopod pod.create`")
    raise UsageError(f"several pods exist; choose one with --pod NAME_OR_ID: {_candidates(live)}")


def pod_info(api: Any, ref: str | None) -> dict[str, Any]:
    """Everything ``pod.list`` shows, plus image, ports, volume, SSH commands and spend so far."""
    pod = resolve_pod(api, ref)
    _chain(pod.id)
    info = pod.to_dict()
    volume = None
    if pod.volume_id:
        vols = {v["id"]: v for v in api.list_volumes()}
        v = vols.get(pod.volume_id, {})
        volume = {"id": pod.volume_id, "name": v.get("name"), "size_gb": v.get("size"),
                  "mount": pod.volume_mount, "datacenter": v.get("dataCenterId") or pod.datacenter}
    info["volume"] = volume
    try:
        key = str(_config.configured_ssh_key(load_inventory()))
    except ConfigError:
        key = "~/.ssh/id_ed25519"
    user = _config.pod_ssh_user()
    info["ssh"] = {
        "direct": (f"ssh -i {key} -p {pod.ssh_direct[1]} {user}@{pod.ssh_direct[0]}" if pod.ssh_direct else None),
        "proxy": f"ssh -i {key} {pod.ssh_proxy}" if pod.ssh_proxy else None,
    }
    spend = None
    if pod.cost_per_hr is not None and pod.uptime_s is not None:
        spend = round(pod.cost_per_hr * pod.uptime_s / 3600, 4)
    info["spend_usd"] = spend
    info["http_proxy"] = proxy_urls(pod)
    return info


PROXY_WARNING = "public: anyone with the URL can use it, no login"


def proxy_urls(pod: Pod) -> list[dict[str, Any]]:
    """RunPod's HTTPS proxy for each http port: ``https://<pod id>-<port>.proxy.runpod.net``. It is
    public and unauthenticated (and capped at 100 s per request), which the user must be told."""
    out = []
    for p in pod.ports:
        port, _, proto = p.partition("/")
        if proto == "http" and port.isdigit():
            out.append({"port": int(port), "url": f"https://{pod.id}-{port}.proxy.runpod.net", "public": True,
                        "authenticated": False})
    return out


INFO_FIELDS = [("name", "NAME"), ("id", "ID"), ("status", "STATUS"), ("gpu", "GPU"), ("gpu_count", "GPU COUNT"),
               ("datacenter", "DATACENTER"), ("uptime", "UPTIME"), ("cost_per_hr", "$/HR"), ("spend", "SPENT (EST.)"),
               ("image", "IMAGE"), ("ports", "PORTS"), ("volume", "VOLUME"), ("ssh", "SSH"),
               ("ssh_fallback", "SSH (PROXY, SHELL ONLY)"), ("comfy_address", "COMFYUI (IN POD)"),
               ("proxy", "HTTP PROXY (PUBLIC, NO LOGIN)")]


def info_view(info: dict[str, Any]) -> dict[str, Any]:
    """``pod_info`` flattened for the human KEY/VALUE table."""
    v = info.get("volume")
    return {
        **info,
        "uptime": fmt_duration(info.get("uptime_s")),
        "spend": f"${info['spend_usd']:.2f}" if info.get("spend_usd") is not None else None,
        "volume": (f"{v['id']} ({v.get('name') or '?'}, {v.get('size_gb') or '?'} GB, {v.get('datacenter')}) "
                   f"at {v.get('mount')}") if v else None,
        "ssh": info["ssh"]["direct"] or "(no direct endpoint yet: the pod is not running)",
        "ssh_fallback": info["ssh"]["proxy"],
        "proxy": [u["url"] for u in info.get("http_proxy") or []],
    }


# --- waiting --------------------------------------------------------------------


def ssh_banner_ok(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when ``host:port`` accepts TCP and speaks SSH. RunPod's port mapping can accept
    connections before sshd in the pod runs, so a bare connect is not enough."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_ready(api: Any, pod_id: str, *, timeout: float, poll_interval: float | None = None,
               sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] = ssh_banner_ok,
               clock: Callable[[], float] = time.monotonic, label: str | None = None) -> Pod:
    """Wait until the pod is RUNNING, has its runtime and its direct SSH endpoint answers.

    Progress goes to stderr; raises Timeout after ``timeout`` seconds.
    """
    start = clock()
    interval = POLL_INTERVAL if poll_interval is None else poll_interval
    label = label or pod_id
    last = None
    n = 0
    while True:
        pod = get_pod(api, pod_id)
        if pod is None:
            if clock() - start > GONE_GRACE_S:
                raise PodNotRunning(f"pod {label} no longer exists")
            state = "not visible yet"
        else:
            label = f"{pod.name} ({pod.id})"
            if pod.status == "TERMINATED":
                raise PodNotRunning(f"pod {label} was terminated")
            if pod.status == "EXITED":
                raise PodNotRunning(f"pod {label} is stopped; start it with `autopod pod.start --pod {pod.name}`")
            if pod.status == "RUNNING" and pod.ssh_direct and connect(*pod.ssh_direct):
                progress(f"pod {label} is ready: ssh {pod.ssh_direct[0]} port {pod.ssh_direct[1]}")
                return pod
            if pod.status != "RUNNING":
                state = pod.status
            elif not pod.ssh_direct:
                state = "RUNNING, container starting (no SSH endpoint yet)"
            else:
                state = f"RUNNING, SSH {pod.ssh_direct[0]}:{pod.ssh_direct[1]} not answering yet"
        elapsed = clock() - start
        if state != last:
            progress(f"waiting for pod {label}: {state} ({elapsed:.0f}s)")
            last = state
        if elapsed >= timeout:
            raise Timeout(f"pod {label} not ready after {timeout:.0f}s ({state})")
        # Quick first polls (a resumed pod is often back in seconds), then the steady interval.
        sleep(max(0.0, min(interval, 0.5 * 2 ** n, timeout - elapsed)))
        n += 1


class PodNotRunning(RemoteError):
    """The pod a wait was for stopped, was terminated or vanished: it does not bill, so nothing is stopped."""


def wait(api: Any, ref: str | None, timeout: float | None = None) -> Pod:
    pod = resolve_pod(api, ref)
    _chain(pod.id)
    return wait_ready(api, pod.id, timeout=float(timeout or _config.BUILTIN["timeout"]), label=f"{pod.name} ({pod.id})")


# --- pods that bill before their user has them ------------------------------------
#
# From the request that makes a pod bill (create, resume) until the task hands the
# pod to its user, any interruption (Ctrl-C, SIGTERM, SIGHUP) or failure stops the
# pod, shielded from further signals, and the error names the pod and its state.


@dataclass
class _Billing:
    """A pod this command made bill and has not handed over yet."""

    pod_id: str
    name: str
    doing: str  # "creating pod x", "starting pod x": for the message


def _stop_unhanded(api: Any, pod_id: str, name: str) -> tuple[str, str]:
    """Stop a pod that was not handed over. Returns (what happened, the pod's status now)."""
    with signals.shielded():
        try:
            api.stop_pod(pod_id)
        except Exception as e:  # never let a failed stop hide the pod from the user
            return (f"stopping it failed too ({e}): it may still be billing, stop it with "
                    f"`autopod pod.stop --pod {pod_id}`", "unknown")
        _stop_tunnel(pod_id)
    return (f"stopped it so it does not keep billing (start it again with `autopod pod.start --pod {pod_id}`, "
            f"or remove it with `autopod pod.kill --pod {pod_id} --yes`)", "EXITED")


def _stopped_after(api: Any, b: _Billing, exc: BaseException) -> BaseException:
    """The error to raise once ``exc`` cut short a pod's hand-over: the pod stopped, its id and state named."""
    if isinstance(exc, PodNotRunning):
        return exc
    note, status = _stop_unhanded(api, b.pod_id, b.name)
    data = {"pod": {"id": b.pod_id, "name": b.name, "status": status}}
    label = f"pod {b.name} ({b.pod_id})"
    if isinstance(exc, KeyboardInterrupt):
        sig = exc if isinstance(exc, Interrupted) else Interrupted()
        return AutopodError(f"{sig.what} while {b.doing}; {label} {note}", exit_code=sig.exit_code, data=data)
    if isinstance(exc, AutopodError):
        return type(exc)(f"{exc}; {label}: {note}", exit_code=exc.exit_code, data=data)
    return AutopodError(f"internal error while {b.doing}: {type(exc).__name__}: {exc}; {label}: {note}", data=data)


@contextlib.contextmanager
def _until_handed_over(api: Any) -> Iterator[list[_Billing]]:
    """Code inside appends a ``_Billing`` the moment a pod starts to bill; if the block then fails
    or is interrupted, that pod is stopped before the error propagates."""
    billing: list[_Billing] = []
    try:
        yield billing
    except BaseException as e:
        if not billing:
            raise
        raise _stopped_after(api, billing[0], e) from None


def _settle_interrupted_create(api: Any, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The create request was interrupted: RunPod may have made the pod anyway. Stop what it made, so
    nothing bills unseen. (A pod of that name existing before would have made the create a no-op.)"""
    with signals.shielded():
        try:
            made = [p for p in api.list_pods() if p.get("name") == name and p.get("desiredStatus") != "TERMINATED"]
        except Exception as e:
            return (f"could not check whether pod {name} was created ({e}): look with `autopod pod.list` and "
                    f"stop it with `autopod pod.stop --pod {name}`", [{"name": name, "status": "unknown"}])
        if not made:
            return "no pod was created", []
        notes, refs = [], []
        for p in made:
            note, status = _stop_unhanded(api, p["id"], name)
            notes.append(f"pod {name} ({p['id']}) was created: {note}")
            refs.append({"id": p["id"], "name": name, "status": status})
        return "; ".join(notes), refs


# --- mutations ------------------------------------------------------------------

CREATE_LOCK_TIMEOUT_S = 300.0
GENERATED_NAME_RE = re.compile(r"^autopod-\d{4}-\d{2}-\d{2}-\d{3,}$")


def _create_lock(name: str | None) -> Any:
    """One create per pod name at a time, across processes, from the listing through the create
    answer: whatever RunPod's listing shows meanwhile, a second process sees the first one's pod.
    Generated names share one lock, so parallel unnamed creates each get their own number."""
    key = "generated" if name is None or GENERATED_NAME_RE.match(name) else f"name:{name}"
    return exclusive("pod-create", key, timeout=CREATE_LOCK_TIMEOUT_S,
                     what=f"create pod {name}" if name else "create a pod")


def _volume_and_datacenter(api: Any, spec: PodSpec) -> tuple[dict[str, Any] | None, str | None]:
    if spec.datacenter:
        check_known_datacenter(spec.datacenter, api.gpu_stock())
    if not spec.volume_id:
        return None, spec.datacenter
    vols = api.list_volumes()
    vol = next((v for v in vols if v.get("id") == spec.volume_id), None)
    if vol is None:
        known = ", ".join(f"{v['id']} ({v.get('name')}, {v.get('dataCenterId')})" for v in vols) or "none"
        raise UsageError(f"network volume {spec.volume_id!r} does not exist on this account; volumes: {known}")
    dc = vol.get("dataCenterId")
    if spec.datacenter and dc and spec.datacenter != dc:
        warn(f"volume {spec.volume_id} is in data center {dc}, not {spec.datacenter}: "
             f"a pod must be in its volume's data center, so using {dc}")
    if spec.cloud_type != "SECURE":
        warn(f"network volumes need SECURE cloud; using SECURE instead of {spec.cloud_type}")
        spec.cloud_type = "SECURE"
    return vol, dc or spec.datacenter


def _checked_plan(spec: PodSpec, api: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Everything a create needs to know before it may send anything: GPUs (and how many each
    takes), the volume, the data center. A dry run runs exactly these checks."""
    plan = plan_gpu_order(spec.gpus, api.gpu_types())
    check_gpu_count(spec.gpu_count, plan)
    _volume, datacenter = _volume_and_datacenter(api, spec)
    return plan, datacenter


def _public_key(spec: PodSpec) -> tuple[str | None, str]:
    """(key text, where it came from). An explicit PUBLIC_KEY env wins and needs no key file."""
    if "PUBLIC_KEY" in spec.env:
        return None, "PUBLIC_KEY setting"
    key = _config.ssh_key_path(spec.ssh_key)
    return _config.public_key_text(key), f"{key}.pub"


def _redacted(inp: dict[str, Any], key_source: str) -> dict[str, Any]:
    out = dict(inp)
    out["env"] = {k: (f"<{key_source}>" if k == "PUBLIC_KEY" else v) for k, v in (inp.get("env") or {}).items()}
    return out


def _live_named(api: Any, pods: Sequence[Pod], name: str) -> Pod | None:
    """The live pod called ``name``: from the listing, or one this machine created moments ago that
    RunPod does not list yet."""
    same = [p for p in pods if p.name == name and p.alive]
    if same:
        return same[0]
    listed = {p.id for p in pods}
    now = time.time()
    for pod_id, e in _entries_or_warn().items():
        if (e.get("name") == name and pod_id not in listed and not e.get("gone_at")
                and now - float(e.get("created_at") or 0) < KEEP_UNLISTED_S):
            pod = get_pod(api, pod_id)
            if pod is not None and pod.alive:
                return pod
    return None


def _exists_outcome(pod: Pod, *, dry_run: bool) -> Outcome:
    if dry_run:
        chain.mark_planned(f"a dry run for pod {pod.name}")
    else:
        _chain(pod.id)
    return Outcome(False, f"pod {pod.name} ({pod.id}) already exists ({pod.status}, {pod.gpu or 'GPU ?'})",
                   key="pod", data=pod.to_dict())


def _find_or_create(spec: PodSpec, api: Any, plan: list[dict[str, Any]], datacenter: str | None, *,
                    dry_run: bool, billing: list[_Billing], pods: list[Pod] | None = None) -> Outcome | dict[str, Any]:
    """Under the create lock: the live pod of that name (``ok``), the dry run's plan, or a new pod
    (the create answer plus ``gpu`` and ``attempts``). A new pod goes into ``billing`` at once."""
    pods = list_pods(api) if pods is None else pods
    if spec.name:
        found = _live_named(api, pods, spec.name)
        if found is not None:
            return _exists_outcome(found, dry_run=dry_run)
    known = [p.name for p in pods] + [str(e.get("name")) for e in _entries_or_warn().values() if not e.get("gone_at")]
    name = spec.name or generate_name(known)
    public_key, key_source = _public_key(spec)
    requests_ = [build_create_input(spec, name, g, datacenter, public_key) for g in plan]
    for inp in requests_:
        pod_create_mutation(inp)  # the adapter's own checks (ids, env names, enums), also for a dry run
    if dry_run:
        chain.mark_planned(f"a dry run for pod {name}")
        first = _redacted(requests_[0], key_source)
        return Outcome(True, f"would create pod {name} on {plan[0]['displayName'] or plan[0]['id']}"
                       + (f" (fallback: {', '.join(g.get('displayName') or g['id'] for g in plan[1:])})" if plan[1:] else "")
                       + f" in {datacenter or 'any data center'}; nothing was changed",
                       key="request", data=first,
                       extra={"dry_run": True, "gpu_order": [g["id"] for g in plan]})

    attempts: list[dict[str, str]] = []
    for gpu, inp in zip(plan, requests_):
        label = gpu.get("displayName") or gpu["id"]
        progress(f"creating pod {name} on {label} ({spec.cloud_type}{', ' + datacenter if datacenter else ''})")
        try:
            created = api.create_pod(inp)
        except KeyboardInterrupt as e:
            sig = e if isinstance(e, Interrupted) else Interrupted()
            note, made = _settle_interrupted_create(api, name)
            raise AutopodError(f"{sig.what} while creating pod {name}; {note}", exit_code=sig.exit_code,
                               data={"pods": made}) from None
        except NoCapacity as e:
            attempts.append({"gpu": gpu["id"], "result": "no capacity", "reason": str(e)})
            progress(f"no capacity for {label}; trying the next GPU" if gpu is not plan[-1] else f"no capacity for {label}")
            continue
        billing.append(_Billing(created["id"], name, f"waiting for the new pod {name}"))
        attempts.append({"gpu": gpu["id"], "result": "created", "reason": ""})
        _remember(created["id"], name=name, comfy_address=spec.comfy_address, spec=spec.to_dict(),
                  created_at=time.time())
        return {**created, "name": name, "gpu": gpu, "attempts": attempts}
    lines = "; ".join(f"{a['gpu']}: {a['reason']}" for a in attempts)
    raise NoCapacity(f"no GPU available for pod {name}, tried {len(attempts)}: {lines}")


def _hand_over_created(api: Any, spec: PodSpec, created: dict[str, Any], *, wait: bool, timeout: float | None,
                       sleep: Callable[[float], None], connect: Callable[[str, int], bool] | None) -> Outcome:
    pod_id, name, attempts = created["id"], created["name"], created["attempts"]
    gpu_label = created["gpu"].get("displayName") or created["gpu"]["id"]
    msg = f"created pod {name} ({pod_id}) on {gpu_label}"
    if len(attempts) > 1:
        msg += f" after {len(attempts) - 1} GPU(s) had no capacity"
    if wait:
        pod = _wait(api, pod_id, name, float(timeout or spec.timeout), sleep, connect)
    else:
        try:
            pod = get_pod(api, pod_id)
        except AutopodError as e:  # the pod exists; a failed look at it is no reason to stop it
            warn(f"could not read pod {name} ({pod_id}) back: {e}")
            pod = None
        pod = pod or Pod(id=pod_id, name=name, status=created.get("desiredStatus") or "CREATED", gpu=gpu_label,
                         comfy_address=spec.comfy_address)
    if pod.datacenter:
        msg += f" in {pod.datacenter}"
    _chain(pod_id)
    return Outcome(True, msg, key="pod", data=pod.to_dict(), extra={"gpu_attempts": attempts})


def _wait(api: Any, pod_id: str, name: str, timeout: float, sleep: Callable[[float], None],
          connect: Callable[[str, int], bool] | None) -> Pod:
    kw = {"connect": connect} if connect else {}
    return wait_ready(api, pod_id, timeout=timeout, sleep=sleep, label=f"{name} ({pod_id})", **kw)


def ensure_pod(spec: PodSpec, api: Any, *, wait: bool = True, timeout: float | None = None, dry_run: bool = False,
               sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None) -> Outcome:
    """Create the pod ``spec`` describes unless a live pod of that name exists (then ``ok``).

    Tries each GPU in order on RunPod's no-capacity answer. Every input is checked
    (GPU names and counts, the volume, the data center) before anything is created,
    and a dry run checks the same. Until the new pod is handed over (ready, or
    created with ``wait=False``), a timeout, failure or interrupt stops it.
    """
    plan, datacenter = _checked_plan(spec, api)
    with _until_handed_over(api) as billing:
        with _create_lock(spec.name):
            found = _find_or_create(spec, api, plan, datacenter, dry_run=dry_run, billing=billing)
        if isinstance(found, Outcome):
            return found
        return _hand_over_created(api, spec, found, wait=wait, timeout=timeout, sleep=sleep, connect=connect)


def create(flags: dict[str, Any], *, wait: bool = True, dry_run: bool = False, api: Any = None) -> Outcome:
    """``pod.create``: resolve the settings, then ``ensure_pod``."""
    spec = load_settings(flags)
    api = api or _connect()
    return ensure_pod(spec, api, wait=wait, dry_run=dry_run)


def up(flags: dict[str, Any], *, dry_run: bool = False, api: Any = None,
       sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None) -> Outcome:
    """Converge: create the pod if missing, start it if stopped, wait until it is ready.

    With ``--name`` the pod of that name is the target; without, the one pod on the
    account (several: exit 2), or a new one when there is none. The decision and the
    create or start request happen under the name's create lock, so parallel ``pod.up``
    runs converge on one pod.
    """
    spec = load_settings(flags)
    api = api or _connect()
    if not spec.name:
        live = [p for p in list_pods(api) if p.alive]
        if len(live) > 1:
            raise UsageError(f"several pods exist; name the one to bring up with --name: {_candidates(live)}")
        if not live:
            return ensure_pod(spec, api, wait=True, dry_run=dry_run, sleep=sleep, connect=connect)
        return _up_existing(api, spec, live[0], dry_run=dry_run, sleep=sleep, connect=connect)
    plan, datacenter = _checked_plan(spec, api)
    with _until_handed_over(api) as billing:
        with _create_lock(spec.name):
            pods = list_pods(api)
            target = _live_named(api, pods, spec.name)
            if target is None:
                found = _find_or_create(spec, api, plan, datacenter, dry_run=dry_run, billing=billing, pods=pods)
            elif target.status != "RUNNING" and not dry_run:
                _resume(api, target, billing)
                found = None
            else:
                found = None
        if isinstance(found, Outcome):
            return found
        if found is not None:
            return _hand_over_created(api, spec, found, wait=True, timeout=None, sleep=sleep, connect=connect)
        if billing:
            return _hand_over_started(api, target, wait=True, timeout=float(spec.timeout), sleep=sleep,
                                      connect=connect)
    return _up_existing(api, spec, target, dry_run=dry_run, sleep=sleep, connect=connect)


def _up_existing(api: Any, spec: PodSpec, target: Pod, *, dry_run: bool, sleep: Callable[[float], None],
                 connect: Callable[[str, int], bool] | None) -> Outcome:
    """``pod.up`` on a pod that exists: running (wait until reachable) or stopped (start it)."""
    if dry_run:
        chain.mark_planned(f"a dry run for pod {target.name}")
        if target.status == "RUNNING":
            return Outcome(False, f"pod {target.name} ({target.id}) is running", key="pod", data=target.to_dict())
        return Outcome(True, f"would start pod {target.name} ({target.id}); nothing was changed",
                       key="pod", data=target.to_dict(), extra={"dry_run": True})
    if target.status != "RUNNING":
        return start_pod(api, target.id, wait=True, timeout=spec.timeout, sleep=sleep, connect=connect,
                         pods=[target])
    _chain(target.id)
    # It was running before this command: not ours to stop if the wait fails.
    pod = _wait(api, target.id, target.name, float(spec.timeout), sleep, connect)
    return Outcome(False, f"pod {pod.name} ({pod.id}) is running and reachable", key="pod", data=pod.to_dict())


def _stop_tunnel(pod_id: str) -> None:
    """Stopping or killing a pod also stops its SSH tunnel. Never in the way of the stop itself:
    a damaged tunnels.json or a stuck daemon is a warning. (Imported late: the tunnel module
    pulls in paramiko, which `--help` and `--list` should not pay for.)"""
    try:
        from .tunnel import stop_tunnel_for

        if stop_tunnel_for(pod_id):
            progress(f"stopped the SSH tunnel to pod {pod_id}")
    except Exception as e:
        warn(f"could not stop the SSH tunnel to pod {pod_id}: {e}")


def stop_pod(api: Any, ref: str | None) -> Outcome:
    pod = resolve_pod(api, ref)
    _stop_tunnel(pod.id)
    if pod.status == "EXITED":
        return Outcome(False, f"pod {pod.name} ({pod.id}) is already stopped", key="pod", data=pod.to_dict())
    if not pod.alive:
        raise RemoteError(f"pod {pod.name} ({pod.id}) is terminated")
    api.stop_pod(pod.id)
    after = get_pod(api, pod.id) or pod
    return Outcome(True, f"stopped pod {pod.name} ({pod.id}); its volume and disk are kept", key="pod",
                   data=after.to_dict())


def _resume(api: Any, pod: Pod, billing: list[_Billing]) -> None:
    """Send the resume request; from here the pod bills, so it goes into ``billing`` first."""
    spec = _entries_or_warn().get(pod.id, {}).get("spec") or {}
    gpu_count = pod.gpu_count or int(spec.get("gpu_count") or 1)
    progress(f"starting pod {pod.name} ({pod.id}) with {gpu_count} GPU(s)")
    billing.append(_Billing(pod.id, pod.name, f"starting pod {pod.name}"))
    api.resume_pod(pod.id, gpu_count)


def _hand_over_started(api: Any, pod: Pod, *, wait: bool, timeout: float, sleep: Callable[[float], None],
                       connect: Callable[[str, int], bool] | None) -> Outcome:
    _chain(pod.id)
    after = _wait(api, pod.id, pod.name, timeout, sleep, connect) if wait else (get_pod(api, pod.id) or pod)
    return Outcome(True, f"started pod {pod.name} ({pod.id})", key="pod", data=after.to_dict())


def start_pod(api: Any, ref: str | None, *, wait: bool = True, timeout: float | None = None,
              sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None,
              pods: list[Pod] | None = None) -> Outcome:
    """Resume a stopped pod with its GPU count. A resumed pod gets a new SSH port. Until it is
    ready (or, with ``wait=False``, until the request is answered) an interrupt or failure stops it again."""
    pod = resolve_pod(api, ref, pods)
    _chain(pod.id)
    if not pod.alive:
        raise RemoteError(f"pod {pod.name} ({pod.id}) is terminated; create a new one")
    if pod.status == "RUNNING":
        return Outcome(False, f"pod {pod.name} ({pod.id}) is already running", key="pod", data=pod.to_dict())
    with _until_handed_over(api) as billing:
        _resume(api, pod, billing)
        return _hand_over_started(api, pod, wait=wait, timeout=float(timeout or _config.BUILTIN["timeout"]),
                                  sleep=sleep, connect=connect)


def kill_pod(api: Any, ref: str | None, *, confirm: Callable[[Pod], bool] | None = None) -> Outcome:
    """Terminate the pod. A pod autopod knew that is gone already is ``ok``; a name it never saw
    is a usage error listing the pods (a typo must not read as success). ``confirm`` may refuse."""
    try:
        pod = resolve_pod(api, ref)
    except NotFound:
        if ref is not None and ref in known_refs():
            return Outcome(False, f"pod {ref} is already gone", key="pod", data=None)
        raise
    if not pod.alive:
        return Outcome(False, f"pod {pod.name} ({pod.id}) is already terminated", key="pod", data=pod.to_dict())
    if confirm is not None and not confirm(pod):
        raise UsageError(f"not terminating pod {pod.name} ({pod.id})")
    _stop_tunnel(pod.id)
    try:
        api.terminate_pod(pod.id)
    except RemoteError:
        if api.get_pod(pod.id) is not None:  # RunPod answers an error for a pod it already removed
            raise
    _mark_gone(pod.id)
    return Outcome(True, f"terminated pod {pod.name} ({pod.id})", key="pod", data={"id": pod.id, "name": pod.name})


# --- SSH ------------------------------------------------------------------------


def ssh_command(pod: Pod, key: Any, command: str | None = None, *, user: str | None = None,
                known_hosts: Any = None) -> list[str]:
    """The OpenSSH argv for the pod's direct endpoint. Host keys are pinned on first use in
    AUTOPOD_HOME/known_hosts (the file the tunnel checks too); a changed key is refused."""
    if not pod.ssh_direct:
        hint = f" (proxy fallback, shell only: ssh -i {key} {pod.ssh_proxy})" if pod.ssh_proxy else ""
        raise AutopodError(f"pod {pod.name} ({pod.id}) has no direct SSH endpoint ({pod.status}); "
                           f"wait with `autopod pod.wait --pod {pod.name}`{hint}")
    host, port = pod.ssh_direct
    known_hosts = known_hosts or (autopod_home() / "known_hosts")
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "ServerAliveInterval=30"]
    if command is not None:
        argv.append("-T")  # no terminal: exact output and the remote exit code, for scripts
    argv += ["--", f"{user or _config.pod_ssh_user()}@{host}"]
    if command is not None:
        argv.append(command)
    return argv


def ssh(api: Any, ref: str | None, command: str | None = None, *, capture: bool = False) -> Any:
    """Run the system ``ssh`` against the pod; returns its exit code (the remote command's).

    With ``capture`` (``pod.ssh --command C --json``) returns a dict with the exit code and
    the command's stdout and stderr instead of passing them through."""
    if capture and command is None:
        raise UsageError("--json needs --command: an interactive shell has no output to report")
    pod = resolve_pod(api, ref)
    _chain(pod.id)
    key = _config.configured_ssh_key(load_inventory())
    if not shutil.which("ssh"):
        raise ConfigError("the OpenSSH client `ssh` is not installed")
    argv = ssh_command(pod, key, command)
    log.info("running %s", " ".join(argv if command is None else argv[:-1] + ["<command>"]))
    if not capture:
        return subprocess.call(argv)
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    return {"pod": pod.id, "name": pod.name, "command": command, "exit_code": done.returncode,
            "stdout": done.stdout, "stderr": done.stderr}


def gpus(api: Any) -> list[dict[str, Any]]:
    from .gpus import gpu_rows

    return gpu_rows(api.gpu_types(), api.gpu_stock())


def _connect() -> Any:
    from .runpod_api import connect

    return connect()


def connect() -> Any:
    """The RunPod adapter for the configured account (see ``runpod_api.connect``)."""
    return _connect()

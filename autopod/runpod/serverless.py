"""RunPod Serverless endpoints running worker-comfyui: create, converge (``up``), list, info, kill, purge.

Managed on REST v2 (``/v2/serverless``) whatever ``runpod_api`` says: GraphQL's ``saveEndpoint`` resets
every field it is not given. Jobs go through ``jobapi``.

- **Every field is sent on create**: REST v2's defaults differ from the console's (FlashBoot OFF, idle
  timeout 10 s, execution timeout 300 s), so autopod's defaults are written out, never left to RunPod.
- **GPUs**: the names pods take, mapped to RunPod's pools; the pool's other GPU types go into
  ``excludedTypes``, so workers run on the GPUs asked for and the price shown is theirs. RunPod places
  workers on any listed pool with capacity, so there is no fallback loop here.
- **``up``** PATCHes only the groups that differ (``workers``, ``gpu``, ``image``, ...). With an inventory
  ``endpoints:`` spec the endpoint is made to match the spec (autopod's defaults for the keys it leaves
  out); without one, only what the flags name is changed.
- **Cost**: ``price.serverless`` of the catalog (per GPU and hour, list price) times ``gpu.count``, for
  the dearest GPU type the endpoint may run on: at ``workers.min`` (what it bills around the clock) and
  at ``workers.max``. An endpoint with ``workers.min > 0`` goes through the daily budget like a pod.
- ``endpoints.json`` keeps the ``workers.max`` autopod set, so ``info`` can tell when RunPod lowered it
  on an idle endpoint (no requests for days: 2, then 0).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core import signals
from ..core.errors import AutopodError, ConfigError, Interrupted, RemoteError, UsageError
from ..core.flags import number
from ..core.flags import text as flags_text
from ..core.inventory import Inventory, load_inventory
from ..core.output import Outcome
from ..core.state import StateFile, check_fields, exclusive
from ..core.ui import progress, warn
from .api import check_id
from .budget import HORIZON_S, Budget, configured_budget
from .gpus import match_gpu
from .jobapi import JobClient, default_base_url
from .spec import parse_env

log = logging.getLogger(__name__)

# worker-comfyui's image without models (reference serverless.md §3.1), at the version its facts describe.
WORKER_IMAGE = "runpod/worker-comfyui:5.8.5-base"
DEFAULTS: dict[str, Any] = {
    "image": WORKER_IMAGE,
    "gpus": ["RTX A40", "RTX A6000", "RTX A5000"],  # the pods' defaults: one name list for both
    "gpu_count": 1,
    "workers_min": 0,
    "workers_max": 3,
    "idle_timeout": 5,  # s: the console's default (REST v2 would make it 10)
    "timeout": 600,  # s of one job's run: the console's default (REST v2 would make it 300)
    "flashboot": True,  # the console's default (REST v2 would make it OFF)
    "volume_id": None,
    "disk_gb": 20,  # worker-comfyui's own listing asks for 20 GB
    "env": {},
}
QUEUE_DELAY_S = 4  # the queue-delay scaler's threshold: the console's default
MAX_TIMEOUT_S = 7 * 86400
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|KEY)", re.IGNORECASE)
STATE = "endpoints.json"
LOCK_TIMEOUT_S = 120.0
# A spec key -> the body groups it sets.
GROUPS = {"image": ("image",), "gpus": ("gpu",), "gpu_count": ("gpu",), "workers_min": ("workers",),
          "workers_max": ("workers",), "idle_timeout": ("workers",), "timeout": ("timeout",),
          "flashboot": ("flashboot",), "volume_id": ("networkVolumes", "dataCenterIds"), "disk_gb": ("disk",),
          "env": ("env",)}


# --- settings ---------------------------------------------------------------------------------


@dataclass
class EndpointSpec:
    """An endpoint's settings after flags, the inventory spec and the defaults were merged. ``given``: the
    keys that came from a flag or the spec (``up`` on an endpoint without a spec changes only those)."""

    name: str
    image: str
    gpus: list[str]
    gpu_count: int
    workers_min: int
    workers_max: int
    idle_timeout: int
    timeout: int
    flashboot: bool
    volume_id: str | None
    disk_gb: int
    env: dict[str, str]
    given: set[str] = field(default_factory=set)
    from_inventory: bool = False


def resolve_endpoint_spec(flags: dict[str, Any], inventory: Inventory | None = None) -> EndpointSpec:
    """Flags, then the inventory's ``endpoints.<name>``, then autopod's defaults; every value checked
    against RunPod's limits (exit 2), so a dry run refuses what the real run would."""
    inventory = inventory or Inventory()
    if not flags.get("name"):
        raise UsageError("--name is required: the endpoint's name (see `autopod endpoint.list`)")
    name = flags_text(flags["name"], "--name", max_len=128)
    spec = inventory.endpoints.get(name)
    layer = dict(spec or {})
    given = set(layer)
    values: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        flag = flags.get(key)
        if flag not in (None, "", [], {}):
            values[key] = flag
            given.add(key)
        elif key in layer:
            values[key] = layer[key]
        else:
            values[key] = default
    gpus = values["gpus"]
    if isinstance(gpus, str):
        gpus = [gpus]
    gpus = [g.strip() for item in gpus for g in str(item).split(",") if g.strip()]
    if not gpus:
        raise UsageError("--gpus names no GPU: e.g. --gpus 'RTX A40,RTX 4090'")
    env = dict(_env(layer.get("env") or {}))
    env.update(_env(flags.get("env")))
    image = flags_text(values["image"], "--image", max_len=255, pattern=IMAGE_RE,
                       expected="an image reference like runpod/worker-comfyui:5.8.5-base")
    workers_min = number(values["workers_min"], "--workers-min", int, minimum=0, maximum=1000)
    workers_max = number(values["workers_max"], "--workers-max", int, minimum=0, maximum=1000)
    if workers_min > workers_max:
        raise UsageError(f"--workers-min {workers_min} is more than --workers-max {workers_max}")
    volume = values["volume_id"]
    return EndpointSpec(
        name=name, image=image, gpus=[flags_text(g, "--gpus") for g in gpus],
        gpu_count=number(values["gpu_count"], "--gpu-count", int, minimum=1, maximum=16),
        workers_min=workers_min, workers_max=workers_max,
        idle_timeout=number(values["idle_timeout"], "--idle-timeout", int, minimum=1, maximum=3600),
        timeout=number(values["timeout"], "--timeout", int, minimum=5, maximum=MAX_TIMEOUT_S),
        flashboot=bool(values["flashboot"]),
        volume_id=check_id(volume, "volume id") if volume is not None else None,
        disk_gb=number(values["disk_gb"], "--disk-gb", int, minimum=1, maximum=4000),
        env=env, given=given, from_inventory=spec is not None,
    )


def _env(items: Any) -> dict[str, str]:
    """``--env`` and a spec's ``env``, as for pods; YAML booleans as the worker reads them (``true``)."""
    if isinstance(items, dict):
        items = {k: str(v).lower() if isinstance(v, bool) else v for k, v in items.items()}
    return parse_env(items)


def load_spec(flags: dict[str, Any]) -> EndpointSpec:
    return resolve_endpoint_spec(flags, load_inventory())


# --- GPUs, pools and prices -------------------------------------------------------------------


def serverless_price(gpu: dict[str, Any]) -> float | None:
    """$/hr of one GPU of this type on Serverless (the catalog's list price)."""
    price = (gpu.get("price") or {}).get("serverless") if isinstance(gpu.get("price"), dict) else None
    return float(price) if isinstance(price, (int, float)) and not isinstance(price, bool) else None


def plan_pools(names: list[str], catalog: list[dict[str, Any]]) -> dict[str, Any]:
    """The GPU names as pools: ``{"pools": [...], "excludedTypes": [...], "types": [ids]}``. Every name
    is checked (exit 2 with the closest names); a type without a pool is not offered on Serverless."""
    wanted: list[dict[str, Any]] = []
    for n in names:
        g = match_gpu(n, catalog)
        if not g.get("pool"):
            raise UsageError(f"GPU {g.get('displayName') or g['id']} has no Serverless pool in RunPod's catalog")
        if g not in wanted:
            wanted.append(g)
    pools = list(dict.fromkeys(str(g["pool"]) for g in wanted))
    ids = {g["id"] for g in wanted}
    excluded = sorted(str(g["id"]) for g in catalog if g.get("pool") in pools and g["id"] not in ids)
    return {"pools": pools, "excludedTypes": excluded, "types": [g["id"] for g in wanted]}


def worker_rate(ep: dict[str, Any], catalog: list[dict[str, Any]]) -> float | None:
    """$/hr of one worker: the dearest GPU type the endpoint may run on, times its GPU count."""
    gpu = ep.get("gpu") or {}
    pools = set(gpu.get("pools") or [])
    excluded = set(gpu.get("excludedTypes") or [])
    prices = [serverless_price(g) for g in catalog if g.get("pool") in pools and g.get("id") not in excluded]
    known = [p for p in prices if p is not None]
    if not known:
        return None
    return round(max(known) * int(gpu.get("count") or 1), 4)


def costs(ep: dict[str, Any], catalog: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """($/hr at workers.min, $/hr at workers.max)."""
    rate = worker_rate(ep, catalog)
    if rate is None:
        return None, None
    w = ep.get("workers") or {}
    return round(rate * int(w.get("min") or 0), 4), round(rate * int(w.get("max") or 0), 4)


# --- request bodies ---------------------------------------------------------------------------


def create_body(spec: EndpointSpec, plan: dict[str, Any], datacenter: str | None) -> dict[str, Any]:
    """Every field of a ``CreateEndpointRequest``, written out."""
    return {
        "name": spec.name,
        "type": "QUEUE",
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": QUEUE_DELAY_S},
        **_groups(spec, plan, datacenter),
    }


def _groups(spec: EndpointSpec, plan: dict[str, Any] | None, datacenter: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": spec.image,
        "workers": {"min": spec.workers_min, "max": spec.workers_max, "idleTimeout": spec.idle_timeout},
        "timeout": spec.timeout * 1000,
        "flashboot": "FLASHBOOT" if spec.flashboot else "OFF",
        "networkVolumes": [spec.volume_id] if spec.volume_id else [],
        "dataCenterIds": [datacenter] if spec.volume_id and datacenter else [],
        "disk": spec.disk_gb,
        "env": dict(spec.env),
    }
    if plan is not None:
        out["gpu"] = {"pools": plan["pools"], "excludedTypes": plan["excludedTypes"], "count": spec.gpu_count}
    return out


def _norm(group: str, value: Any) -> Any:
    """A body group as compared: lists as sets, missing as empty."""
    if group == "gpu":
        v = value or {}
        return (tuple(sorted(v.get("pools") or [])), tuple(sorted(v.get("excludedTypes") or [])),
                int(v.get("count") or 1))
    if group == "workers":
        v = value or {}
        return (int(v.get("min") or 0), int(v.get("max") or 0), v.get("idleTimeout"))
    if group in ("networkVolumes", "dataCenterIds"):
        return tuple(sorted(value or []))
    if group == "env":
        return tuple(sorted((str(k), str(v)) for k, v in (value or {}).items()))
    if group == "flashboot":
        return "OFF" if value in (None, False, "OFF") else ("FLASHBOOT" if value is True else str(value))
    return value


def patch_for(spec: EndpointSpec, current: dict[str, Any], plan: dict[str, Any] | None,
              datacenter: str | None) -> dict[str, Any]:
    """The PATCH that makes ``current`` match: only the groups that differ, each whole (a ``gpu`` PATCH
    with ``pools`` but no ``excludedTypes`` would clear the exclusions). From an inventory spec every
    group counts; from flags alone, only those the flags name, the rest of a group as it is."""
    want = _groups(spec, plan, datacenter)
    keys = set(GROUPS) if spec.from_inventory else spec.given
    groups = {g for k in keys for g in GROUPS[k]}
    cur_w = current.get("workers") or {}
    if "workers" in groups and not spec.from_inventory:
        want["workers"] = {"min": spec.workers_min if "workers_min" in keys else cur_w.get("min", 0),
                           "max": spec.workers_max if "workers_max" in keys else cur_w.get("max", 0),
                           "idleTimeout": spec.idle_timeout if "idle_timeout" in keys else
                           cur_w.get("idleTimeout", spec.idle_timeout)}
    if "gpu" in groups and "gpus" not in keys:
        cur_g = current.get("gpu") or {}
        want["gpu"] = {"pools": list(cur_g.get("pools") or []), "excludedTypes": list(cur_g.get("excludedTypes") or []),
                       "count": spec.gpu_count}
    patch = {}
    for g in sorted(groups):
        if g in want and _norm(g, want[g]) != _norm(g, current.get(g)):
            patch[g] = want[g]
    return patch


def shown_body(body: dict[str, Any]) -> dict[str, Any]:
    """A body for a dry run or a message: values of secret-looking variables hidden."""
    out = dict(body)
    if "env" in out:
        out["env"] = {k: ("<set>" if SECRET_ENV.search(k) else v) for k, v in (out["env"] or {}).items()}
    return out


# --- records ----------------------------------------------------------------------------------


LIST_COLUMNS = [("id", "ID"), ("name", "NAME"), ("gpus", "GPUS"), ("workers", "WORKERS"),
                ("idle_timeout_s", "IDLE S"), ("flashboot", "FLASHBOOT"), ("volume_id", "VOLUME"),
                ("cost_per_hr_min", "$/HR MIN"), ("cost_per_hr_max", "$/HR MAX"), ("image", "IMAGE")]


def record(ep: dict[str, Any], catalog: list[dict[str, Any]]) -> dict[str, Any]:
    """An endpoint as autopod shows it (``--json`` keys)."""
    gpu = ep.get("gpu") or {}
    w = ep.get("workers") or {}
    low, high = costs(ep, catalog)
    pools = set(gpu.get("pools") or [])
    excluded = set(gpu.get("excludedTypes") or [])
    types = [g.get("displayName") or g["id"] for g in catalog if g.get("pool") in pools and g["id"] not in excluded]
    vols = list(ep.get("networkVolumes") or [])
    timeout = ep.get("timeout")
    return {
        "id": ep.get("id"), "name": ep.get("name"), "image": ep.get("image"),
        "pools": sorted(pools), "gpus": types, "gpu_count": gpu.get("count") or 1,
        "workers_min": int(w.get("min") or 0), "workers_max": int(w.get("max") or 0),
        "workers": f"{int(w.get('min') or 0)}-{int(w.get('max') or 0)}",
        "idle_timeout_s": w.get("idleTimeout"),
        "timeout_s": _whole(timeout / 1000) if isinstance(timeout, (int, float)) else None,
        "flashboot": ep.get("flashboot") not in (None, "OFF", False),
        "volume_id": vols[0] if len(vols) == 1 else (vols or None),
        "datacenters": list(ep.get("dataCenterIds") or []),
        "cost_per_hr_min": low, "cost_per_hr_max": high,
    }


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 3)


# --- the account ------------------------------------------------------------------------------


def connect(creds: Any = None) -> Any:
    """The REST v2 adapter for the configured account (endpoints exist only there)."""
    from ..core.config import api_credentials  # noqa: PLC0415
    from .rest import RestAPI  # noqa: PLC0415

    return RestAPI(creds or api_credentials())


def find(api: Any, ref: str, endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The endpoint called ``ref`` (or with that id); several of one name is exit 2."""
    flags_text(ref, "--name", max_len=128)
    eps = api.list_endpoints() if endpoints is None else endpoints
    same = [e for e in eps if e.get("name") == ref]
    if len(same) > 1:
        ids = ", ".join(str(e.get("id")) for e in same)
        raise UsageError(f"{len(same)} endpoints are called {ref!r} ({ids}): name one by its id")
    if same:
        return same[0]
    return next((e for e in eps if e.get("id") == ref), None)


def _job_clients() -> Callable[[str], JobClient]:
    """Job-API clients for the configured account, its settings read now (before any request is sent)."""
    from ..core.config import api_credentials  # noqa: PLC0415

    creds = api_credentials()
    base = default_base_url(creds)
    return lambda eid: JobClient(eid, api_key=creds.api_key, base_url=base)


def _require(api: Any, ref: str | None) -> dict[str, Any]:
    if not ref:
        raise UsageError("--name is required: the endpoint's name or id (see `autopod endpoint.list`)")
    ep = find(api, ref)
    if ep is None:
        names = ", ".join(sorted(str(e.get("name")) for e in api.list_endpoints())) or "none"
        raise UsageError(f"no endpoint {ref!r} on this account (endpoints: {names})")
    return ep


def _volume_datacenter(api: Any, volume_id: str | None) -> str | None:
    """The volume's data center, where the endpoint's workers must run (exit 2 for an unknown volume)."""
    if not volume_id:
        return None
    vols = api.list_volumes()
    vol = next((v for v in vols if v.get("id") == volume_id), None)
    if vol is None:
        known = ", ".join(f"{v['id']} ({v.get('name')}, {v.get('dataCenterId')})" for v in vols) or "none"
        raise UsageError(f"network volume {volume_id!r} does not exist on this account; volumes: {known}")
    return vol.get("dataCenterId")


# --- what autopod set (endpoints.json) --------------------------------------------------------


def _validate(data: dict[str, Any]) -> None:
    for eid, entry in data.items():
        check_fields(entry, f"endpoint {eid!r}", {"name": str, "workers_max": int, "set_at": (int, float)})


def _state() -> StateFile:
    return StateFile.named(STATE, validate=_validate)


def _remember(ep: dict[str, Any]) -> None:
    if not ep.get("id"):
        return
    try:
        with _state().update() as data:
            data[ep["id"]] = {"name": str(ep.get("name") or ""),
                              "workers_max": int((ep.get("workers") or {}).get("max") or 0), "set_at": time.time()}
    except ConfigError as e:
        warn(f"{e}; carrying on without autopod's endpoint records")


def _forget(endpoint_id: str) -> None:
    try:
        with _state().update() as data:
            data.pop(endpoint_id, None)
    except ConfigError as e:
        warn(f"{e}; carrying on without autopod's endpoint records")


def _set_max(endpoint_id: str) -> int | None:
    try:
        entry = _state().read().get(endpoint_id)
    except ConfigError as e:
        warn(f"{e}; cannot tell whether RunPod lowered the endpoint's workers")
        return None
    return int(entry["workers_max"]) if entry else None


# --- the budget -------------------------------------------------------------------------------


def _check_budget(api: Any, name: str, workers_min: int, rate: float | None, catalog: list[dict[str, Any]],
                  endpoints: list[dict[str, Any]], exclude: str | None, force: bool) -> None:
    """``workers_min > 0`` bills around the clock: that, the running pods and the other endpoints' minimum
    must fit ``budget_usd_per_day`` (``--force`` overrides)."""
    if workers_min <= 0 or force:
        return
    per_day = configured_budget(load_inventory())
    if per_day is None:
        return
    if rate is None:
        warn(f"no Serverless price for endpoint {name}'s GPUs in RunPod's catalog: the daily budget cannot "
             "count its minimum workers")
        return
    from .api import connect as connect_pods  # noqa: PLC0415
    from .registry import entries_or_warn, list_pods  # noqa: PLC0415

    budget = Budget.of(per_day, list_pods(connect_pods()), entries_or_warn(), time.time())
    hours = HORIZON_S / 3600.0
    for e in endpoints:
        low, _ = costs(e, catalog)
        if e.get("id") != exclude and low:
            budget.committed = round(budget.committed + low * hours, 4)
            budget.running.append({"id": e.get("id"), "name": f"endpoint {e.get('name')}", "cost_per_hr": low,
                                   "hours": hours})
    new = round(rate * workers_min, 4)
    if not budget.room_for(new, hours):
        raise budget.refuse(f"endpoint {name} with {workers_min} worker(s) always on", new, hours)


# --- operations -------------------------------------------------------------------------------

# What ``endpoint.up`` checks beyond the endpoint (the models on its volume, which the models room reads
# through a pod): ``autopod.cli`` registers it. Each takes (endpoint record, spec, dry_run) and returns
# notes for the outcome.
_after_up: list[Callable[[dict[str, Any], EndpointSpec, bool], list[str]]] = []


def after_endpoint_up(fn: Callable[[dict[str, Any], EndpointSpec, bool], list[str]]) -> None:
    if fn not in _after_up:
        _after_up.append(fn)


def create(flags: dict[str, Any], *, dry_run: bool = False, force: bool = False, api: Any = None) -> Outcome:
    """``endpoint.create``: the endpoint of that name (``ok``, untouched), or a new one with every field."""
    return ensure(load_spec(flags), api or connect(), converge=False, dry_run=dry_run, force=force)


def up(flags: dict[str, Any], *, dry_run: bool = False, force: bool = False, api: Any = None) -> Outcome:
    """``endpoint.up``: create it, or PATCH what differs from the spec (``ok`` when nothing does)."""
    return ensure(load_spec(flags), api or connect(), converge=True, dry_run=dry_run, force=force)


def ensure(spec: EndpointSpec, api: Any, *, converge: bool, dry_run: bool, force: bool) -> Outcome:
    catalog = api.gpu_catalog()
    # The GPU names are checked whenever they can matter; flags that leave the GPUs alone need no plan.
    needs_plan = not converge or spec.from_inventory or "gpus" in spec.given
    plan = plan_pools(spec.gpus, catalog) if needs_plan else None
    datacenter = _volume_datacenter(api, spec.volume_id)
    with exclusive("endpoint-create", f"name:{spec.name}", timeout=LOCK_TIMEOUT_S,
                   what=f"create endpoint {spec.name}"):
        endpoints = api.list_endpoints()
        current = find(api, spec.name, endpoints)
        if current is None:
            outcome = _create(api, spec, plan, datacenter, catalog, endpoints, dry_run=dry_run, force=force)
        elif not converge:
            outcome = Outcome(False, f"endpoint {spec.name} ({current['id']}) already exists",
                              key="endpoint", data=record(current, catalog))
        else:
            outcome = _converge(api, spec, current, plan, datacenter, catalog, endpoints, dry_run=dry_run,
                                force=force)
    if converge or outcome.changed:
        notes: list[str] = []
        for fn in list(_after_up):
            notes.extend(fn(outcome.data if isinstance(outcome.data, dict) else {}, spec, dry_run))
        if notes:
            outcome.extra.setdefault("notes", []).extend(notes)
    return outcome


def _create(api: Any, spec: EndpointSpec, plan: dict[str, Any] | None, datacenter: str | None,
            catalog: list[dict[str, Any]], endpoints: list[dict[str, Any]], *, dry_run: bool,
            force: bool) -> Outcome:
    plan = plan or plan_pools(spec.gpus, catalog)
    body = create_body(spec, plan, datacenter)
    rate = worker_rate(body, catalog)
    _check_budget(api, spec.name, spec.workers_min, rate, catalog, endpoints, None, force)
    low, high = costs(body, catalog)
    where = f" in {datacenter}" if datacenter else ""
    if dry_run:
        return Outcome(True, f"would create endpoint {spec.name} on {', '.join(plan['pools'])}{where} "
                             f"({_cost_text(low, high)}); nothing was changed",
                       key="request", data=shown_body(body), extra={"dry_run": True})
    progress(f"creating endpoint {spec.name} on {', '.join(plan['pools'])}{where}")
    try:
        made = api.create_endpoint(body)
    except KeyboardInterrupt as e:
        raise _interrupted_create(api, spec, e) from None
    _remember(made)
    rec = record(made, catalog)
    return Outcome(True, f"created endpoint {spec.name} ({made['id']}) on {', '.join(rec['gpus']) or 'its pools'}"
                         f"{where}, workers {rec['workers']} ({_cost_text(rec['cost_per_hr_min'], rec['cost_per_hr_max'])})",
                   key="endpoint", data=rec)


def _interrupted_create(api: Any, spec: EndpointSpec, exc: KeyboardInterrupt) -> AutopodError:
    """Ctrl-C while the create was on its way: RunPod may have made the endpoint anyway. One with always-on
    workers would bill unseen, so its minimum goes to 0 (nothing else is touched); the error names it."""
    sig = exc if isinstance(exc, Interrupted) else Interrupted()
    with signals.shielded():
        try:
            made = find(api, spec.name)
        except Exception as e:  # never let the look hide what may bill
            note = (f"could not check whether endpoint {spec.name} was created ({e}): look with "
                    "`autopod endpoint.list`")
            return AutopodError(f"{sig.what} while creating endpoint {spec.name}; {note}", exit_code=sig.exit_code)
        if made is None:
            note = "no endpoint was created"
        elif spec.workers_min > 0:
            w = made.get("workers") or {}
            try:
                api.update_endpoint(made["id"], {"workers": {"min": 0, "max": int(w.get("max") or 0),
                                                             "idleTimeout": w.get("idleTimeout", spec.idle_timeout)}})
                note = (f"endpoint {spec.name} ({made['id']}) was created: its workers.min is set to 0 so it does not "
                        f"bill around the clock (`autopod endpoint.up --name {spec.name}` sets it again)")
            except Exception as e:
                note = (f"endpoint {spec.name} ({made['id']}) was created with {spec.workers_min} always-on worker(s) "
                        f"and setting them to 0 failed ({e}): `autopod endpoint.kill {made['id']} --yes`")
        else:
            note = f"endpoint {spec.name} ({made['id']}) was created; it bills only while it runs jobs"
    data = {"endpoint": {"id": made["id"], "name": spec.name}} if made else {}
    return AutopodError(f"{sig.what} while creating endpoint {spec.name}; {note}", exit_code=sig.exit_code, data=data)


def _converge(api: Any, spec: EndpointSpec, current: dict[str, Any], plan: dict[str, Any] | None,
              datacenter: str | None, catalog: list[dict[str, Any]], endpoints: list[dict[str, Any]], *,
              dry_run: bool, force: bool) -> Outcome:
    full = api.get_endpoint(current["id"]) or current
    patch = patch_for(spec, full, plan, datacenter)
    label = f"endpoint {spec.name} ({full['id']})"
    # endpoints.json keeps the maximum autopod asked for: only a spec or --workers-max says what that is (a
    # lowered maximum read back must not become the reference).
    sets_max = spec.from_inventory or "workers_max" in spec.given
    if not patch:
        if sets_max:
            _remember(full)
        return Outcome(False, f"{label} matches its {'spec' if spec.from_inventory else 'settings'}",
                       key="endpoint", data=record(full, catalog))
    after = {**full, **patch}
    # More always-on workers, or dearer GPUs under them, spend more of the day: the budget decides.
    if (costs(after, catalog)[0] or 0) > (costs(full, catalog)[0] or 0):
        _check_budget(api, spec.name, int((after.get("workers") or {}).get("min") or 0), worker_rate(after, catalog),
                      catalog, endpoints, full["id"], force)
    what = ", ".join(_change_text(g, full.get(g), patch[g]) for g in patch)
    if dry_run:
        return Outcome(True, f"would update {label}: {what}; nothing was changed", key="request",
                       data=shown_body(patch), extra={"dry_run": True})
    progress(f"updating {label}: {what}")
    done = api.update_endpoint(full["id"], patch) or after
    if not done.get("id"):
        done = after
    if sets_max:
        _remember(done)
    return Outcome(True, f"updated {label}: {what}", key="endpoint", data=record(done, catalog),
                   extra={"changed_fields": sorted(patch)})


def _change_text(group: str, old: Any, new: Any) -> str:
    if group == "workers":
        o = old or {}
        parts = [f"{k} {o.get(k)}->{new.get(k)}" for k in ("min", "max", "idleTimeout") if o.get(k) != new.get(k)]
        return "workers " + ", ".join(parts)
    if group == "env":
        o, n = old or {}, new or {}
        return "env " + ", ".join(sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k)))
    if group == "gpu":
        return f"gpu {', '.join(new.get('pools') or [])} x{new.get('count')}"
    if group == "timeout":
        return f"timeout {_seconds(old)}->{_seconds(new)}"
    return f"{group} {old!r}->{new!r}"


def _seconds(ms: Any) -> str:
    return f"{ms / 1000:g}s" if isinstance(ms, (int, float)) else "?"


def _cost_text(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "cost unknown"
    return f"${low:.3f}/hr at its minimum, ${high:.3f}/hr at its maximum"


def list_endpoints(api: Any) -> list[dict[str, Any]]:
    catalog = api.gpu_catalog()
    return [record(e, catalog) for e in api.list_endpoints()]


def info(api: Any, ref: str | None, *, jobs: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The endpoint, its workers by status, its jobs from ``/health``, and notes on what they mean."""
    client_for = jobs or _job_clients()
    ep = _require(api, ref)
    full = api.get_endpoint(ep["id"]) or ep
    rec = record(full, api.gpu_catalog())
    workers = api.endpoint_workers(ep["id"])
    summary = {k: int((workers.get("summary") or {}).get(k) or 0)
               for k in ("running", "idle", "initializing", "throttled", "unhealthy", "total")}
    client = client_for(ep["id"])
    try:
        health = client.health()
    except RemoteError as e:
        warn(f"could not read endpoint {rec['name']}'s jobs: {e}")
        health = {}
    h = health.get("jobs") or {}
    job_counts = {"in_queue": h.get("inQueue"), "in_progress": h.get("inProgress"),
                  "completed": h.get("completed"), "failed": h.get("failed"), "retried": h.get("retried")}
    set_max = _set_max(ep["id"])
    if set_max is None:  # made elsewhere: its inventory spec says what the maximum should be
        set_max = load_inventory().endpoints.get(str(rec["name"]), {}).get("workers_max")
    notes = _notes(rec, summary, job_counts, set_max)
    return {**rec, "workers_now": summary, "jobs": job_counts, "workers_max_set": set_max,
            "throttled_max": set_max is not None and rec["workers_max"] < set_max, "notes": notes}


def _notes(rec: dict[str, Any], w: dict[str, int], jobs: dict[str, Any], set_max: int | None) -> list[str]:
    notes = []
    if set_max is not None and rec["workers_max"] < set_max:
        notes.append(f"RunPod lowered workers.max from {set_max} to {rec['workers_max']} (an endpoint without "
                     f"requests for days is throttled to 2, then 0); `autopod endpoint.up --name {rec['name']}` "
                     "raises it again")
    queued = int(jobs.get("in_queue") or 0)
    if w["throttled"]:
        notes.append(f"{w['throttled']} worker(s) throttled: RunPod has no capacity for them on "
                     f"{', '.join(rec['pools']) or 'its pools'} now")
    if w["unhealthy"]:
        notes.append(f"{w['unhealthy']} worker(s) unhealthy: the container keeps failing (a crash loop?); RunPod "
                     "retries it")
    if w["initializing"]:
        notes.append(f"{w['initializing']} worker(s) starting (a cold start: image pull and ComfyUI start)")
    if queued and not w["total"]:
        notes.append(f"{queued} job(s) queued and no worker: scaling from zero, or no capacity"
                     + ("; workers.max is 0" if rec["workers_max"] == 0 else ""))
    if not w["total"] and not queued and not int(jobs.get("in_progress") or 0):
        notes.append("scaled to zero: no worker bills" + (f" (but workers.min is {rec['workers_min']})"
                                                           if rec["workers_min"] else ""))
    return notes


def kill(api: Any, ref: str | None, *, dry_run: bool = False, confirm: Callable[[dict[str, Any]], bool] | None = None
         ) -> Outcome:
    """Delete the endpoint (its workers stop, queued and running jobs are cancelled); ``ok`` if none."""
    if not ref:
        raise UsageError("--name is required: the endpoint's name or id (see `autopod endpoint.list`)")
    ep = find(api, ref)
    if ep is None:
        return Outcome(False, f"no endpoint {ref!r}: nothing to kill")
    label = f"endpoint {ep.get('name')} ({ep['id']})"
    if dry_run:
        return Outcome(True, f"would delete {label}, its workers and its queued and running jobs; nothing was "
                             "changed", key="endpoint", data={"id": ep["id"], "name": ep.get("name")},
                       extra={"dry_run": True})
    if confirm is not None and not confirm(ep):
        raise UsageError(f"not confirmed: {label} is kept")
    if not api.delete_endpoint(ep["id"]):
        _forget(ep["id"])
        return Outcome(False, f"{label} was already gone")
    _forget(ep["id"])
    return Outcome(True, f"deleted {label}", key="endpoint", data={"id": ep["id"], "name": ep.get("name")})


def purge(api: Any, ref: str | None, *, dry_run: bool = False, jobs: Callable[[str], Any] | None = None) -> Outcome:
    """Empty the endpoint's queue (``/purge-queue``); running jobs go on. ``ok`` when nothing was queued."""
    client_for = jobs or _job_clients()
    ep = _require(api, ref)
    client = client_for(ep["id"])
    label = f"endpoint {ep.get('name')} ({ep['id']})"
    if dry_run:
        queued = int(((client.health().get("jobs") or {}).get("inQueue")) or 0)
        return Outcome(queued > 0, f"would remove {queued} queued job(s) of {label}; nothing was changed",
                       key="endpoint", data={"id": ep["id"], "name": ep.get("name"), "in_queue": queued},
                       extra={"dry_run": True})
    doc = client.purge_queue()
    removed = int(doc.get("removed") or 0)
    data = {"id": ep["id"], "name": ep.get("name"), "removed": removed}
    if not removed:
        return Outcome(False, f"{label}: the queue was empty", key="endpoint", data=data)
    return Outcome(True, f"removed {removed} queued job(s) of {label}; running jobs go on", key="endpoint",
                   data=data)


__all__ = ["WORKER_IMAGE", "EndpointSpec", "resolve_endpoint_spec", "plan_pools", "create_body", "patch_for",
           "costs", "record", "create", "up", "ensure", "list_endpoints", "info", "kill", "purge",
           "after_endpoint_up"]

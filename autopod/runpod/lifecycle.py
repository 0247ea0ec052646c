"""Pods that bill: create (with GPU fallback, one per name across processes), converge
(``pod.up``), start, stop and terminate, each idempotent; and the guard that stops a pod
this command made bill if it cannot hand it over.

Library functions take explicit arguments (an ``api`` from ``autopod.runpod.api.connect()``)
and return ``Pod``/``Outcome``/dicts; the ``pod`` task collection only renders them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..core import chain, signals
from ..core import config as _config
from ..core.errors import AutopodError, Interrupted, NoCapacity, NotFound, RemoteError, UsageError
from ..core.inventory import load_inventory
from ..core.output import Outcome
from ..core.state import exclusive
from ..core.ui import progress, warn
from . import guard as _guard
from .api import connect as connect_api
from .api import pod_create_mutation
from .budget import Budget, billable_hours, configured_budget, gpu_rate
from .gpus import check_gpu_count, check_known_datacenter, plan_gpu_order
from .records import Pod, cost_note
from .registry import (
    KEEP_UNLISTED_S,
    candidates,
    entries_or_warn,
    get_pod,
    known_refs,
    list_pods,
    mark_gone,
    remember,
    resolve_pod,
)
from .spec import PodSpec, build_create_input, generate_name, is_fleet, load_settings
from .waits import PodNotRunning, wait_ready

log = logging.getLogger(__name__)

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
        _pod_stopped(pod_id)
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
        return AutopodError(f"{sig.what} while {b.doing}; {label}: {note}", exit_code=sig.exit_code, data=data)
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


def checked_plan(spec: PodSpec, api: Any) -> tuple[list[dict[str, Any]], str | None]:
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
    for pod_id, e in entries_or_warn().items():
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
        chain.set_pod(pod.id)
    return Outcome(False, f"pod {pod.name} ({pod.id}) already exists ({pod.status}, {pod.gpu or 'GPU ?'})",
                   key="pod", data=pod.to_dict())


def _affordable(spec: PodSpec, plan: list[dict[str, Any]], pods: Sequence[Pod], timers: dict[str, float],
                name: str, force: bool) -> list[dict[str, Any]]:
    """The GPUs of ``plan`` whose pod fits the daily budget beside the running pods (all of them
    without a budget, or with ``--force``). None fits: ``BudgetExceeded`` (exit 1)."""
    per_day = configured_budget(load_inventory())
    if per_day is None or force:
        return plan
    now = time.time()
    budget = Budget.of(per_day, pods, entries_or_warn(), now)
    hours = billable_hours(timers, now)
    fits, dearest = [], None
    for g in plan:
        rate = gpu_rate(g, spec.cloud_type, spec.gpu_count)
        if rate is None or budget.room_for(rate, hours):
            fits.append(g)
        else:
            progress(f"skipping {g.get('displayName') or g['id']}: ${rate:.3f}/hr does not fit the daily budget")
            dearest = min(rate, dearest) if dearest is not None else rate
    if not fits:
        label = ", ".join(g.get("displayName") or g["id"] for g in plan)
        raise budget.refuse(f"pod {name} on {label}", dearest or 0.0, hours)
    return fits


def _find_or_create(spec: PodSpec, api: Any, plan: list[dict[str, Any]], datacenter: str | None, *,
                    dry_run: bool, billing: list[_Billing], pods: list[Pod] | None = None,
                    force: bool = False) -> Outcome | dict[str, Any]:
    """Under the create lock: the live pod of that name (``ok``), the dry run's plan, or a new pod
    (the create answer plus ``gpu`` and ``attempts``). A new pod goes into ``billing`` at once."""
    pods = list_pods(api) if pods is None else pods
    if spec.name:
        found = _live_named(api, pods, spec.name)
        if found is not None:
            return _exists_outcome(found, dry_run=dry_run)
    known = [p.name for p in pods] + [str(e.get("name")) for e in entries_or_warn().values() if not e.get("gone_at")]
    name = spec.name or generate_name(known)
    timers = spec.timers(time.time())
    if timers and not getattr(api, "supports_timers", True):
        flags = " and ".join(f for f, k in (("--stop-after", "stop_at"), ("--terminate-after", "terminate_at"))
                             if k in timers)
        warn(f"RunPod's {flags} timer is not available on REST v2 (only GraphQL has it), so pod {name} gets none; "
             f"the in-pod watchdog covers it: `autopod pod.guard --idle-minutes N`")
        timers = {}
    plan = _affordable(spec, plan, pods, timers, name, force)
    public_key, key_source = _public_key(spec)
    requests_ = [build_create_input(spec, name, g, datacenter, public_key, timers) for g in plan]
    for inp in requests_:
        pod_create_mutation(inp)  # the adapter's own checks (ids, env names, enums), also for a dry run
    if dry_run:
        chain.mark_planned(f"a dry run for pod {name}")
        first = _redacted(requests_[0], key_source)
        return Outcome(True, f"would create pod {name} on {plan[0]['displayName'] or plan[0]['id']}"
                       + (f" (fallback: {', '.join(g.get('displayName') or g['id'] for g in plan[1:])})" if plan[1:] else "")
                       + f" in {datacenter or 'any data center'}; nothing was changed",
                       key="request", data=first,
                       extra={"dry_run": True, "gpu_order": [g["id"] for g in plan],
                              "guard": spec.guard_settings()})

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
        remember(created["id"], name=name, comfy_address=spec.comfy_address, spec=spec.to_dict(),
                 created_at=time.time(), timers=timers or None)
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
        msg += _install_guard(api, pod, spec.guard_settings())
    else:
        try:
            pod = get_pod(api, pod_id)
        except AutopodError as e:  # the pod exists; a failed look at it is no reason to stop it
            warn(f"could not read pod {name} ({pod_id}) back: {e}")
            pod = None
        pod = pod or Pod(id=pod_id, name=name, status=created.get("desiredStatus") or "CREATED", gpu=gpu_label,
                         comfy_address=spec.comfy_address)
    if pod.datacenter and " in " + pod.datacenter not in msg:
        msg = msg.replace(f" on {gpu_label}", f" on {gpu_label} in {pod.datacenter}", 1)
    chain.set_pod(pod_id)
    return Outcome(True, msg, key="pod", data=pod.to_dict(), extra={"gpu_attempts": attempts})


def _install_guard(api: Any, pod: Pod, settings: dict[str, Any] | None) -> str:
    """Install the idle watchdog in a pod just handed over; returns a note for the message. Inside
    the hand-over, a failure stops the pod: a pod asked to guard itself must not bill unguarded."""
    if not settings:
        return ""
    outcome = _guard.install(api, pod, settings)
    return f"; the idle watchdog {_guard.describe(settings)}" if outcome.changed else "; its watchdog runs"


def _wait(api: Any, pod_id: str, name: str, timeout: float, sleep: Callable[[float], None],
          connect: Callable[[str, int], bool] | None) -> Pod:
    kw = {"connect": connect} if connect else {}
    return wait_ready(api, pod_id, timeout=timeout, sleep=sleep, label=f"{name} ({pod_id})", **kw)


def ensure_pod(spec: PodSpec, api: Any, *, wait: bool = True, timeout: float | None = None, dry_run: bool = False,
               sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None,
               force: bool = False) -> Outcome:
    """Create the pod ``spec`` describes unless a live pod of that name exists (then ``ok``).

    Tries each GPU in order on RunPod's no-capacity answer. Every input is checked
    (GPU names and counts, the volume, the data center) before anything is created,
    and a dry run checks the same. Until the new pod is handed over (ready, with its
    watchdog if one is asked for; or created with ``wait=False``), a timeout, failure or
    interrupt stops it. With a daily budget, a pod that does not fit is refused (``force``
    overrides).
    """
    if spec.guard_settings() and not wait:
        raise UsageError("--idle-minutes installs the watchdog once the pod is reachable, so it cannot go with "
                         "--no-wait; leave out --no-wait, or run `autopod pod.guard` later")
    plan, datacenter = checked_plan(spec, api)
    with _until_handed_over(api) as billing:
        with _create_lock(spec.name):
            found = _find_or_create(spec, api, plan, datacenter, dry_run=dry_run, billing=billing, force=force)
        if isinstance(found, Outcome):
            return found if dry_run else _guard_existing(api, found, spec.guard_settings())
        return _hand_over_created(api, spec, found, wait=wait, timeout=timeout, sleep=sleep, connect=connect)


def _guard_existing(api: Any, exists: Outcome, settings: dict[str, Any] | None) -> Outcome:
    """``pod.create --idle-minutes`` for a pod that exists: it gets the watchdog asked for (``ok`` when it
    has it). A pod that does not run is left alone: ``pod.start`` or ``pod.up`` guards it."""
    if not settings or exists.data.get("status") != "RUNNING":
        return exists
    pod = get_pod(api, exists.data["id"])
    if pod is None or not pod.ssh_direct:
        return exists
    if _guard.install(api, pod, settings).changed:
        return Outcome(True, f"{exists.msg}; the idle watchdog {_guard.describe(settings)}", key="pod",
                       data=exists.data)
    return exists


def create(flags: dict[str, Any], *, wait: bool = True, dry_run: bool = False, force: bool = False,
           api: Any = None) -> Outcome:
    """``pod.create``: resolve the settings, then ``ensure_pod``."""
    spec = load_settings(flags)
    if is_fleet(spec.name):
        raise UsageError(f"the inventory makes {spec.name} a fleet (count); create it with "
                         f"`autopod pod.up --name {spec.name}`")
    api = api or connect_api()
    return ensure_pod(spec, api, wait=wait, dry_run=dry_run, force=force)


def up(flags: dict[str, Any], *, dry_run: bool = False, force: bool = False, api: Any = None,
       sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None) -> Outcome:
    """Converge: create the pod if missing, start it if stopped, wait until it is ready.

    With ``--name`` the pod of that name is the target; without, the one pod on the
    account (several: exit 2), or a new one when there is none. The decision and the
    create or start request happen under the name's create lock, so parallel ``pod.up``
    runs converge on one pod.
    """
    spec = load_settings(flags)
    if is_fleet(spec.name):
        raise UsageError(f"the inventory makes {spec.name} a fleet (count); bring it up with "
                         f"`autopod pod.up --name {spec.name}` (or give --count)")
    return converge(spec, api or connect_api(), given=flags, dry_run=dry_run, force=force, sleep=sleep,
                    connect=connect)


# What pod.up converges beyond the pod itself (the models on its volume): the models room builds on this
# one, so ``autopod.cli`` registers it. Each takes (api, spec, outcome, dry_run) and returns the outcome.
_after_up: list[Callable[[Any, PodSpec, Outcome, bool], Outcome]] = []


def after_pod_up(fn: Callable[[Any, PodSpec, Outcome, bool], Outcome]) -> None:
    """Run ``fn`` once ``pod.up`` has the pod (once per function)."""
    if fn not in _after_up:
        _after_up.append(fn)


def converge(spec: PodSpec, api: Any, *, given: dict[str, Any] | None = None, dry_run: bool = False,
             force: bool = False, sleep: Callable[[float], None] = time.sleep,
             connect: Callable[[str, int], bool] | None = None) -> Outcome:
    """``pod.up`` for settings already resolved (a fleet member's, too): the pod, then what is registered
    with ``after_pod_up``. ``given`` holds the flags as typed, for the note that RunPod's timers apply
    only to a new pod."""
    outcome = _converge_pod(spec, api, given=given, dry_run=dry_run, force=force, sleep=sleep, connect=connect)
    for fn in list(_after_up):
        outcome = fn(api, spec, outcome, dry_run)
    return outcome


def _converge_pod(spec: PodSpec, api: Any, *, given: dict[str, Any] | None, dry_run: bool, force: bool,
                  sleep: Callable[[float], None], connect: Callable[[str, int], bool] | None) -> Outcome:
    flags = given or {}
    if not spec.name:
        live = [p for p in list_pods(api) if p.alive]
        if len(live) > 1:
            raise UsageError(f"several pods exist; name the one to bring up with --name: {candidates(live)}")
        if not live:
            return ensure_pod(spec, api, wait=True, dry_run=dry_run, sleep=sleep, connect=connect, force=force)
        _timers_not_applied(flags, live[0])
        return _up_existing(api, spec, live[0], dry_run=dry_run, sleep=sleep, connect=connect, force=force)
    plan, datacenter = checked_plan(spec, api)
    with _until_handed_over(api) as billing:
        with _create_lock(spec.name):
            pods = list_pods(api)
            target = _live_named(api, pods, spec.name)
            if target is None:
                found = _find_or_create(spec, api, plan, datacenter, dry_run=dry_run, billing=billing, pods=pods,
                                        force=force)
            else:
                _timers_not_applied(flags, target)
                if target.status != "RUNNING":
                    _check_resume_budget(api, target, pods, force)
                found = None
                if target.status != "RUNNING" and not dry_run:
                    _resume(api, target, billing)
        if isinstance(found, Outcome):
            return found
        if found is not None:
            return _hand_over_created(api, spec, found, wait=True, timeout=None, sleep=sleep, connect=connect)
        if billing:
            return _hand_over_started(api, target, wait=True, timeout=float(spec.timeout), sleep=sleep,
                                      connect=connect, guard_settings=spec.guard_settings())
    return _up_existing(api, spec, target, dry_run=dry_run, sleep=sleep, connect=connect, force=force)


def _timers_not_applied(flags: dict[str, Any], pod: Pod) -> None:
    """RunPod takes its timers with the create request only: say so rather than drop them silently."""
    given = [f"--{k.replace('_', '-')}" for k in ("stop_after", "terminate_after") if flags.get(k)]
    if given:
        warn(f"pod {pod.name} ({pod.id}) exists, and RunPod sets {' and '.join(given)} only when it creates a pod: "
             f"not applied (`autopod pod.guard --idle-minutes N` guards a running pod)")


def _resume_rate(api: Any, pod: Pod) -> float | None:
    """What a stopped pod will cost per hour once started: its listed rate, the rate autopod saw it
    run at, or its GPU type's price (the dearer cloud)."""
    if pod.cost_per_hr:
        return float(pod.cost_per_hr)
    seen = entries_or_warn().get(pod.id, {}).get("cost_per_hr")
    if isinstance(seen, (int, float)) and seen > 0:
        return float(seen)
    for g in api.gpu_types():
        if pod.gpu and pod.gpu in (g.get("displayName"), g.get("id")):
            return gpu_rate(g, "ALL", pod.gpu_count or 1)
    return None


def _check_resume_budget(api: Any, pod: Pod, pods: Sequence[Pod] | None, force: bool) -> None:
    per_day = configured_budget(load_inventory())
    if per_day is None or force:
        return
    rate = _resume_rate(api, pod)
    if rate is None:
        warn(f"cannot tell what pod {pod.name} ({pod.id}) costs per hour; the daily budget is not checked for it")
        return
    now = time.time()
    entries = entries_or_warn()
    budget = Budget.of(per_day, pods if pods is not None else list_pods(api), entries, now, exclude=pod.id)
    hours = billable_hours(entries.get(pod.id, {}).get("timers") or {}, now)
    if not budget.room_for(rate, hours):
        raise budget.refuse(f"starting pod {pod.name} ({pod.id})", rate, hours)


def _up_existing(api: Any, spec: PodSpec, target: Pod, *, dry_run: bool, sleep: Callable[[float], None],
                 connect: Callable[[str, int], bool] | None, force: bool = False) -> Outcome:
    """``pod.up`` on a pod that exists: running (wait until reachable, and guard it if asked) or
    stopped (start it)."""
    if dry_run:
        chain.mark_planned(f"a dry run for pod {target.name}")
        if target.status == "RUNNING":
            return Outcome(False, f"pod {target.name} ({target.id}) is running", key="pod", data=target.to_dict())
        return Outcome(True, f"would start pod {target.name} ({target.id}); nothing was changed",
                       key="pod", data=target.to_dict(), extra={"dry_run": True})
    if target.status != "RUNNING":
        return start_pod(api, target.id, wait=True, timeout=spec.timeout, sleep=sleep, connect=connect,
                         pods=[target], force=force, guard_settings=spec.guard_settings())
    chain.set_pod(target.id)
    # It was running before this command: not ours to stop if the wait or the watchdog's install fails.
    pod = _wait(api, target.id, target.name, float(spec.timeout), sleep, connect)
    settings = spec.guard_settings()
    if settings:
        guarded = _guard.install(api, pod, settings)
        if guarded.changed:
            return Outcome(True, f"pod {pod.name} ({pod.id}) is running and reachable; the idle watchdog "
                                 f"{_guard.describe(settings)}", key="pod", data=pod.to_dict())
    return Outcome(False, f"pod {pod.name} ({pod.id}) is running and reachable", key="pod", data=pod.to_dict())


# Stopping or killing a pod also stops what autopod runs for it on this machine (its SSH tunnel). The
# tunnel room builds on this one, so it cannot be imported here: the entry points register it
# (``autopod.cli``), and nothing registered may stand in the way of the stop itself.
_on_stop: list[Callable[[str], Any]] = []


def on_pod_stopped(fn: Callable[[str], Any]) -> None:
    """Call ``fn(pod_id)`` whenever autopod stops or terminates a pod (once per function)."""
    if fn not in _on_stop:
        _on_stop.append(fn)


def _pod_stopped(pod_id: str) -> None:
    for fn in list(_on_stop):
        try:
            fn(pod_id)
        except Exception as e:  # a damaged tunnels.json or a stuck daemon: a warning, never a failed stop
            warn(f"after stopping pod {pod_id}: {e}")


def stop_pod(api: Any, ref: str | None) -> Outcome:
    pod = resolve_pod(api, ref)
    _pod_stopped(pod.id)
    if pod.status == "EXITED":
        return Outcome(False, f"pod {pod.name} ({pod.id}) is already stopped", key="pod", data=pod.to_dict())
    if not pod.alive:
        raise RemoteError(f"pod {pod.name} ({pod.id}) is terminated")
    api.stop_pod(pod.id)
    after = get_pod(api, pod.id) or pod
    return Outcome(True, f"stopped pod {pod.name} ({pod.id}); its volume and disk are kept{cost_note(pod)}",
                   key="pod", data=after.to_dict(), extra={"spend": _spend(pod)})


def _spend(pod: Pod) -> dict[str, Any]:
    """What the pod cost over its uptime, as the stop or kill found it."""
    return {"uptime_s": pod.uptime_s, "cost_per_hr": pod.cost_per_hr, "spend_usd": pod.spend_usd}


def _resume(api: Any, pod: Pod, billing: list[_Billing]) -> None:
    """Send the resume request; from here the pod bills, so it goes into ``billing`` first."""
    spec = entries_or_warn().get(pod.id, {}).get("spec") or {}
    gpu_count = pod.gpu_count or int(spec.get("gpu_count") or 1)
    progress(f"starting pod {pod.name} ({pod.id}) with {gpu_count} GPU(s)")
    billing.append(_Billing(pod.id, pod.name, f"starting pod {pod.name}"))
    api.resume_pod(pod.id, gpu_count)


def _hand_over_started(api: Any, pod: Pod, *, wait: bool, timeout: float, sleep: Callable[[float], None],
                       connect: Callable[[str, int], bool] | None,
                       guard_settings: dict[str, Any] | None = None) -> Outcome:
    chain.set_pod(pod.id)
    settings = guard_settings or _guard.recorded(pod.id)
    if not wait:
        if settings:
            warn(f"pod {pod.name} ({pod.id}) had an idle watchdog; with --no-wait it is not installed again: "
                 f"run `autopod pod.guard --pod {pod.name}` once the pod is reachable")
        return Outcome(True, f"started pod {pod.name} ({pod.id})", key="pod", data=(get_pod(api, pod.id) or pod).to_dict())
    after = _wait(api, pod.id, pod.name, timeout, sleep, connect)
    note = _install_guard(api, after, settings)
    return Outcome(True, f"started pod {pod.name} ({pod.id}){note}", key="pod", data=after.to_dict())


def start_pod(api: Any, ref: str | None, *, wait: bool = True, timeout: float | None = None,
              sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] | None = None,
              pods: list[Pod] | None = None, force: bool = False,
              guard_settings: dict[str, Any] | None = None) -> Outcome:
    """Resume a stopped pod with its GPU count. A resumed pod gets a new SSH port, and the watchdog
    autopod installed before (or ``guard_settings``) is installed again: a container starts afresh.
    Until it is ready (or, with ``wait=False``, until the request is answered) an interrupt or
    failure stops it again. With a daily budget, a pod that does not fit is refused (``force`` overrides)."""
    pod = resolve_pod(api, ref, pods)
    chain.set_pod(pod.id)
    if not pod.alive:
        raise RemoteError(f"pod {pod.name} ({pod.id}) is terminated; create a new one")
    if pod.status == "RUNNING":
        return Outcome(False, f"pod {pod.name} ({pod.id}) is already running", key="pod", data=pod.to_dict())
    _check_resume_budget(api, pod, pods, force)
    with _until_handed_over(api) as billing:
        _resume(api, pod, billing)
        return _hand_over_started(api, pod, wait=wait, timeout=float(timeout or _config.BUILTIN["timeout"]),
                                  sleep=sleep, connect=connect, guard_settings=guard_settings)


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
    _pod_stopped(pod.id)
    try:
        api.terminate_pod(pod.id)
    except RemoteError:
        if api.get_pod(pod.id) is not None:  # RunPod answers an error for a pod it already removed
            raise
    mark_gone(pod.id)
    return Outcome(True, f"terminated pod {pod.name} ({pod.id}){cost_note(pod)}", key="pod",
                   data={"id": pod.id, "name": pod.name}, extra={"spend": _spend(pod)})

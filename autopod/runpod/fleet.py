"""Fleets: pods named ``NAME-1`` … ``NAME-N``, brought up, inspected and stopped as one target.

A fleet is its members' names, nothing more: any machine that lists the account sees the same
fleet, and a member made by hand (``pod.create --name flux-5``) belongs to it. ``up`` converges
to N members (creating, starting, waiting, guarding each, with GPU fallback per member) and
stops or terminates the ones past N. Every fleet operation runs on all members in parallel
(``core.fanout``): one result each, and a member that fails stops no other.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from typing import Any, Callable, Sequence

from ..core import chain
from ..core.errors import NotFound, UsageError
from ..core.fanout import DEFAULT_CONCURRENCY, Cancel, Result, count_line, run_all
from ..core.flags import number
from ..core.inventory import INT_RANGES, load_inventory
from . import lifecycle
from .api import connect as connect_api
from .budget import Budget, billable_hours, configured_budget, gpu_rate
from .records import Pod
from .registry import entries_or_warn, list_pods
from .spec import check_name, load_settings

MAX_COUNT = INT_RANGES["count"][1]  # the inventory's limit too
SURPLUS = ("stop", "kill")


def member_name(fleet: str, index: int) -> str:
    return f"{fleet}-{index}"


def member_index(fleet: str, pod_name: str | None) -> int | None:
    m = re.fullmatch(re.escape(fleet) + r"-([1-9][0-9]{0,3})", pod_name or "")
    return int(m.group(1)) if m else None


def check_fleet_name(name: Any) -> str:
    return check_name(name, "--fleet")


def members(api: Any, fleet: str, *, pods: Sequence[Pod] | None = None) -> list[Pod]:
    """The fleet's live pods in member order. None: exit 2, saying how to make the fleet."""
    fleet = check_fleet_name(fleet)
    pods = list_pods(api) if pods is None else pods
    found = sorted((p for p in pods if p.alive and member_index(fleet, p.name) is not None),
                   key=lambda p: member_index(fleet, p.name) or 0)
    if not found:
        raise NotFound(f"fleet {fleet} has no pods (members are named {fleet}-1, {fleet}-2, …); "
                       f"bring it up with `autopod pod.up --name {fleet} --count N`", exit_code=2)
    return found


def on_members(fleet: str, fn: Callable[[Pod, Cancel], Result], *, api: Any = None,
               concurrency: int = DEFAULT_CONCURRENCY, running_only: bool = False) -> list[Result]:
    """``fn(pod, cancel)`` on every member in parallel; the chain's next task means this fleet.
    ``running_only``: a member that is not RUNNING is a failed result, and ``fn`` is not called for it."""
    api = api or connect_api()
    pods = members(api, fleet)
    chain.set_fleet(fleet)

    def guarded(pod: Pod, cancel: Cancel) -> Result:
        if running_only and pod.status != "RUNNING":
            return Result.failed(pod.name, f"pod {pod.name} ({pod.id}) is {pod.status}, not running; "
                                           f"`autopod pod.start --fleet {fleet}` starts it",
                                 data={"pod": pod.id})
        return fn(pod, cancel)

    results = run_all(pods, guarded, name=lambda p: p.name, concurrency=concurrency, what=f"fleet {fleet}")
    chain.set_fleet(fleet)
    return results


# -- lifecycle on every member ----------------------------------------------------------------


def stop(fleet: str) -> tuple[list[Result], str]:
    api = connect_api()
    results = on_members(fleet, lambda p, _c: Result.of(p.name, lifecycle.stop_pod(api, p.id)), api=api)
    return results, f"fleet {fleet}: {count_line(results)}{_spend_note(results)}"


def kill(fleet: str, *, confirm: Callable[[str, list[Pod]], bool] | None = None) -> tuple[list[Result], str]:
    """Terminate every member; ``confirm(fleet, pods)`` may refuse (once, for the whole fleet)."""
    api = connect_api()
    if confirm is not None:
        pods = members(api, fleet)
        if not confirm(fleet, pods):
            raise UsageError(f"not terminating fleet {fleet}")
    results = on_members(fleet, lambda p, _c: Result.of(p.name, lifecycle.kill_pod(api, p.id)), api=api)
    return results, f"fleet {fleet}: {count_line(results)}{_spend_note(results)}"


def start(fleet: str, *, wait: bool = True, timeout: float | None = None, force: bool = False) -> tuple[list[Result], str]:
    api = connect_api()

    def one(p: Pod, cancel: Cancel) -> Result:
        return Result.of(p.name, lifecycle.start_pod(api, p.id, wait=wait, timeout=timeout, force=force,
                                                     sleep=cancel.sleep))

    results = on_members(fleet, one, api=api)
    return results, f"fleet {fleet}: {count_line(results)}"


def wait(fleet: str, timeout: float | None = None) -> tuple[list[Result], str]:
    from .waits import wait as wait_one

    api = connect_api()

    def one(p: Pod, cancel: Cancel) -> Result:
        ready = wait_one(api, p.id, timeout, sleep=cancel.sleep)
        host, port = ready.ssh_direct or ("?", "?")
        return Result(p.name, True, f"pod {ready.name} ({ready.id}) is ready: ssh port {port} on {host}",
                      False, {"member": p.name, **ready.to_dict()})

    results = on_members(fleet, one, api=api)
    ready = sum(r.ok for r in results)
    return results, f"fleet {fleet}: {ready} of {len(results)} member(s) ready"


def info(fleet: str) -> tuple[list[Result], str]:
    from . import info as pod_info
    from .records import fmt_duration, fmt_usd

    api = connect_api()

    def one(p: Pod, _cancel: Cancel) -> Result:
        doc = pod_info.pod_info(api, p.id)
        bits = [str(doc.get("status")), f"{doc.get('gpu_count') or 1}x {doc.get('gpu') or 'GPU ?'}"]
        if doc.get("datacenter"):
            bits.append(f"in {doc['datacenter']}")
        if doc.get("cost_per_hr"):
            bits.append(f"${float(doc['cost_per_hr']):.3f}/hr")
        if doc.get("uptime_s"):
            bits.append(f"up {fmt_duration(doc['uptime_s'])}")
        if doc.get("spend_usd") is not None:
            bits.append(f"spent {fmt_usd(doc['spend_usd'])}")
        return Result(p.name, True, f"pod {p.name} ({p.id}): {', '.join(bits)}", False, {"member": p.name, **doc})

    results = on_members(fleet, one, api=api)
    rate = sum(float(r.doc.get("cost_per_hr") or 0) for r in results if r.ok and r.doc.get("status") == "RUNNING")
    return results, (f"fleet {fleet}: {count_line(results)}; {sum(r.doc.get('status') == 'RUNNING' for r in results)}"
                     f" running at ${rate:.3f}/hr{gpu_mix(results)}")


def guard(fleet: str, *, idle_minutes: Any = None, action: Any = None, dead_minutes: Any = None,
          status: bool = False, off: bool = False) -> tuple[list[Result], str]:
    from . import guard as guards

    api = connect_api()

    def one(p: Pod, _cancel: Cancel) -> Result:
        if status:
            doc = guards.status(api, p)
            line = f"pod {doc['name']} ({doc['pod']}): watchdog {guards.summary(doc)}"
            if not doc.get("running"):
                return Result(p.name, False, line, False, {"member": p.name, **doc}, 1)
            return Result(p.name, True, line, False, {"member": p.name, **doc})
        if off:
            return Result.of(p.name, guards.remove(api, p.id))
        return Result.of(p.name, guards.ensure(api, p.id, idle_minutes=idle_minutes, action=action,
                                               dead_minutes=dead_minutes))

    results = on_members(fleet, one, api=api, running_only=True)
    if status:
        return results, f"fleet {fleet}: {sum(r.ok for r in results)} of {len(results)} member(s) guarded"
    return results, f"fleet {fleet}: {count_line(results)}"


def _spend_note(results: Sequence[Result]) -> str:
    spent = [float((r.doc.get("spend") or {}).get("spend_usd") or 0) for r in results if r.changed]
    return f"; ${sum(spent):.2f} spent by the member(s) acted on" if any(spent) else ""


def gpu_mix(results: Sequence[Result]) -> str:
    """``; GPUs: 3x RTX A40, 1x RTX A6000 (mixed: stock was short)`` from the members' pod documents."""
    pods = [r.doc.get("pod") or r.doc for r in results if r.ok]  # pod.up's documents carry a pod; pod.info's are one
    gpus = Counter(str(p["gpu"]) for p in pods if isinstance(p, dict) and p.get("gpu"))
    if not gpus:
        return ""
    mix = ", ".join(f"{n}x {g}" for g, n in gpus.most_common())
    return f"; GPUs: {mix}" + (" (mixed: the first GPU choice was short of stock)" if len(gpus) > 1 else "")


# -- converging the fleet -----------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    """One member to bring up (``index`` ≤ count) or a surplus pod to stop or terminate."""

    name: str
    index: int
    pod: Pod | None = None
    surplus: bool = False


def up(flags: dict[str, Any], *, count: Any = None, surplus: Any = None, dry_run: bool = False,
       force: bool = False, concurrency: int = DEFAULT_CONCURRENCY) -> tuple[list[Result], str]:
    """``pod.up --name NAME --count N``: members NAME-1 … NAME-N up (each as ``pod.up`` brings one pod
    up), members past N stopped (``surplus=stop``, the default) or terminated (``kill``).

    The settings are the inventory pod spec NAME's (with its ``count`` and ``surplus``), checked once
    before anything is sent; each member gets them under its own name."""
    if not flags.get("name"):
        raise UsageError("--count brings up a fleet: give it a name with --name (members are NAME-1 … NAME-N)")
    fleet = check_fleet_name(flags["name"])
    pod_spec = load_inventory().pods.get(fleet) or {}
    n = number(count if count is not None else pod_spec.get("count"), "--count", int, minimum=1, maximum=MAX_COUNT)
    if n is None:
        raise UsageError(f"how many pods in fleet {fleet}? give --count N (or count: N in its inventory pod spec)")
    surplus = surplus or pod_spec.get("surplus") or "stop"
    if surplus not in SURPLUS:
        raise UsageError(f"--surplus must be stop or kill, got {surplus!r}")
    spec = load_settings(flags)
    api = connect_api()
    plan, _dc = lifecycle.checked_plan(spec, api)  # bad GPUs, volume or data center: exit 2 before any member
    pods = list_pods(api)
    current = {member_index(fleet, p.name): p for p in pods if p.alive and member_index(fleet, p.name) is not None}
    jobs = [_Job(member_name(fleet, i), i, current.get(i)) for i in range(1, n + 1)]
    jobs += [_Job(p.name, i, p, surplus=True) for i, p in sorted(current.items()) if i > n  # type: ignore[operator]
             and (surplus == "kill" or p.status != "EXITED")]
    if not dry_run:
        _check_fleet_budget(api, spec, plan, pods, jobs, force)

    def one(job: _Job, cancel: Cancel) -> Result:
        if job.surplus:
            if dry_run:
                verb = "terminate" if surplus == "kill" else "stop"
                return Result(job.name, True, f"would {verb} pod {job.name} ({job.pod.id}): fleet {fleet} has "  # type: ignore[union-attr]
                                              f"{n} member(s); nothing was changed", True,
                              {"member": job.name, "changed": True, "dry_run": True, "surplus": True})
            act = lifecycle.kill_pod if surplus == "kill" else lifecycle.stop_pod
            return Result.of(job.name, act(api, job.pod.id))  # type: ignore[union-attr]
        member = dataclasses.replace(spec, name=job.name)
        return Result.of(job.name, lifecycle.converge(member, api, given=flags, dry_run=dry_run, force=force,
                                                      sleep=cancel.sleep))

    results = run_all(jobs, one, name=lambda j: j.name, concurrency=concurrency, what=f"fleet {fleet}")
    if dry_run:  # later tasks on this command line must not act on the real fleet
        chain.mark_planned(f"a dry run for fleet {fleet}")
    else:
        chain.set_fleet(fleet)
    up_ = [r for r, j in zip(results, jobs) if not j.surplus]
    extra = [r for r, j in zip(results, jobs) if j.surplus]
    summary = f"fleet {fleet}: {count_line(up_)}"
    if extra:
        summary += f"; {len(extra)} past {n} {'terminated' if surplus == 'kill' else 'stopped'}"
    return results, summary + gpu_mix(up_)


def _check_fleet_budget(api: Any, spec: Any, plan: list[dict[str, Any]], pods: Sequence[Pod], jobs: Sequence[_Job],
                        force: bool) -> None:
    """Each member checks the daily budget as it is created or started, but beside pods that are listed;
    its siblings, created at the same moment, are not yet. So the whole fleet is checked first: every
    member that would start billing, at the cheapest GPU of the plan."""
    per_day = configured_budget(load_inventory())
    if per_day is None or force:
        return
    joining = [j for j in jobs if not j.surplus and (j.pod is None or j.pod.status != "RUNNING")]
    rates = [r for r in (gpu_rate(g, spec.cloud_type, spec.gpu_count) for g in plan) if r is not None]
    if not joining or not rates:
        return
    now = time.time()
    leaving = {j.pod.id for j in jobs if j.surplus and j.pod is not None}
    budget = Budget.of(per_day, [p for p in pods if p.id not in leaving], entries_or_warn(), now)
    hours = billable_hours(spec.timers(now), now)
    rate = min(rates) * len(joining)
    if not budget.room_for(rate, hours):
        raise budget.refuse(f"{len(joining)} member(s) of fleet {spec.name}", rate, hours)

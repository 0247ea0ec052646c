"""Which pods exist: the API's listing, kept in step with ``pods.json``, and resolving what
``--pod`` names (an id, a name, the pod of this command line, or the only pod)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..core import chain
from ..core.errors import ConfigError, NotFound, UsageError
from ..core.state import StateFile, check_fields
from ..core.ui import warn
from .records import Pod

STATE = "pods.json"
KEEP_UNLISTED_S = 120.0  # a just-created pod may not be listed yet; keep its state entry

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
                                "gone_at": (int, float), "comfy_address": str, "spec": dict, "gpu": str,
                                "cost_per_hr": (int, float), "guard": dict, "timers": dict}


def _validate(data: dict[str, Any]) -> None:
    for pod_id, entry in data.items():
        check_fields(entry, f"pod {pod_id!r}", _ENTRY_TYPES)


def _state() -> StateFile:
    return StateFile.named(STATE, validate=_validate)


def state_entries() -> dict[str, Any]:
    """Every entry, tombstones included (they carry ``gone_at``)."""
    return _state().read()


def entries_or_warn() -> dict[str, Any]:
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


def remember(pod_id: str, **fields: Any) -> None:
    """Record what autopod knows of a pod. Best effort: the pod exists whether or not this is written."""
    try:
        with _state().update() as data:
            entry = data.setdefault(pod_id, {})
            entry.pop("gone_at", None)
            entry.update({k: v for k, v in fields.items() if v is not None})
    except ConfigError as e:
        _warn_bookkeeping(e)


def set_entry_field(pod_id: str, key: str, value: Any) -> None:
    """Set one field of a pod's record; None removes it. Best effort, like ``remember``."""
    try:
        with _state().update() as data:
            entry = data.setdefault(pod_id, {})
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
    except ConfigError as e:
        _warn_bookkeeping(e)


def mark_gone(pod_id: str) -> None:
    try:
        with _state().update() as data:
            if pod_id in data:
                data[pod_id]["gone_at"] = time.time()
    except ConfigError as e:
        _warn_bookkeeping(e)


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
                # What a render's sidecar reports (GPU, cost) without asking the API again.
                gpu, rate = (p.get("machine") or {}).get("gpuDisplayName"), p.get("costPerHr")
                if isinstance(gpu, str):
                    entry["gpu"] = gpu
                if isinstance(rate, (int, float)) and not isinstance(rate, bool):
                    entry["cost_per_hr"] = rate
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
    return Pod.from_api(raw, entries_or_warn().get(pod_id)) if raw else None


def candidates(pods: Sequence[Pod]) -> str:
    return ", ".join(f"{p.name} ({p.id}, {p.status})" for p in pods) or "none"


def resolve_pod(api: Any, ref: str | None, pods: list[Pod] | None = None) -> Pod:
    """The pod ``--pod`` names: an id or a name. Without one: the pod created or started
    earlier on this command line, else the only pod on the account, else exit 2 with the
    candidates. After a dry-run step on the same command line there is no implicit pod."""
    if ref is None and chain.planned():
        raise UsageError(f"an earlier task on this command line only pretended to act ({chain.planned()}); "
                         "name the pod with --pod")
    if ref is None:
        chain.refuse_to_guess()
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
            raise UsageError(f"several pods are named {ref!r}; pass an id with --pod: {candidates(named)}")
        raise NotFound(f"no pod {ref!r} on the account; pods: {candidates(live)}", exit_code=2)
    if chain.pod_id():
        for p in live:
            if p.id == chain.pod_id():
                return p
    if len(live) == 1:
        return live[0]
    if not live:
        raise UsageError("no pods on the account; create one with `autopod pod.create`")
    raise UsageError(f"several pods exist; choose one with --pod NAME_OR_ID: {candidates(live)}")

"""GPU names and fallback planning, pure but for `gpu_table`.

RunPod's create call needs the GPU type *id* ("NVIDIA RTX A40"), while people
type display names ("RTX A40", "rtx a40"). Both are accepted, case-insensitive.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

from ..core.errors import UsageError

STOCK_RANK = {"high": 3, "medium": 2, "low": 1, "none": 0}


def _norm(s: str) -> str:
    return " ".join(str(s).lower().split())


def match_gpu(name: str, gpu_types: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The GPU type whose id or display name equals ``name`` (case and spacing ignored).

    Unknown names raise UsageError (exit 2) listing the closest known names.
    """
    want = _norm(name)
    for g in gpu_types:
        if want in (_norm(g.get("id", "")), _norm(g.get("displayName") or "")):
            return g
    raise UsageError(f"unknown GPU {name!r}; {closest_hint(name, gpu_types)}")


def closest_hint(name: str, gpu_types: Sequence[dict[str, Any]]) -> str:
    """"closest known: ..." naming each GPU once, by display name (id when it has none)."""
    label: dict[str, str] = {}
    for g in gpu_types:
        shown = g.get("displayName") or g.get("id")
        for n in (g.get("displayName"), g.get("id")):
            if n:
                label.setdefault(_norm(n), shown)
    close = difflib.get_close_matches(_norm(name), list(label), n=8, cutoff=0.5)
    picked = list(dict.fromkeys(label[c] for c in close))[:5]
    if picked:
        return "closest known: " + ", ".join(picked)
    shown = sorted({g.get("displayName") or g.get("id") for g in gpu_types})[:12]
    return "known GPUs include: " + ", ".join(shown) + " (see `autopod pod.gpus`)"


def plan_gpu_order(requested: Iterable[str], gpu_types: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resolve the requested names in order, dropping repeats. Every name is checked before
    anything is created, so a typo in the third choice fails fast rather than after two tries."""
    plan: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in requested:
        g = match_gpu(name, gpu_types)
        if g["id"] not in seen:
            seen.add(g["id"])
            plan.append(g)
    if not plan:
        raise UsageError("no GPU type given: pass --gpu or set gpus in the inventory")
    return plan


def check_gpu_count(count: int, plan: Sequence[dict[str, Any]]) -> None:
    """Each planned GPU type must take ``count`` GPUs in one pod (RunPod's ``maxGpuCount``)."""
    for g in plan:
        most = g.get("maxGpuCount")
        if isinstance(most, int) and count > most:
            raise UsageError(f"--gpu-count {count} is more than {g.get('displayName') or g['id']} offers in one pod "
                             f"(at most {most})")


def check_known_datacenter(dc: str, datacenters: Sequence[dict[str, Any]]) -> str:
    """``dc`` must be one of the account's data centers (``dataCenters``); a typo is exit 2, not "no GPU"."""
    known = sorted(str(d.get("id")) for d in datacenters if d.get("id"))
    if known and dc not in known:
        close = difflib.get_close_matches(dc, known, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(known)}"
        raise UsageError(f"unknown data center {dc!r}; {hint}")
    return dc


def stock_by_gpu(datacenters: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """gpu id -> {"best": "High"|..., "datacenters": {dc: stock}} from ``dataCenters.gpuAvailability``."""
    out: dict[str, dict[str, Any]] = {}
    for dc in datacenters:
        for a in dc.get("gpuAvailability") or []:
            gid = a.get("gpuTypeId")
            status = a.get("stockStatus") or "None"
            if not gid:
                continue
            entry = out.setdefault(gid, {"best": None, "datacenters": {}})
            entry["datacenters"][dc.get("id")] = status
            if entry["best"] is None or STOCK_RANK.get(_norm(status), 0) > STOCK_RANK.get(_norm(entry["best"]), 0):
                entry["best"] = status
    return out


def gpu_rows(gpu_types: Sequence[dict[str, Any]], datacenters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``pod.gpus``: memory, secure/community price and stock (best data center first)."""
    stock = stock_by_gpu(datacenters)
    rows = []
    for g in gpu_types:
        s = stock.get(g.get("id"), {})
        dcs = s.get("datacenters", {})
        in_stock = sorted((dc for dc, st in dcs.items() if STOCK_RANK.get(_norm(st), 0) > 0),
                          key=lambda dc: -STOCK_RANK.get(_norm(dcs[dc]), 0))
        rows.append({
            "id": g.get("id"),
            "name": g.get("displayName"),
            "memory_gb": g.get("memoryInGb"),
            "secure_price": g.get("securePrice"),
            "community_price": g.get("communityPrice"),
            "stock": s.get("best") or "None",
            "datacenters": in_stock,
        })
    rows.sort(key=lambda r: (-STOCK_RANK.get(_norm(r["stock"]), 0), str(r["name"])))
    return rows


def gpu_table(api: Any) -> list[dict[str, Any]]:
    """``pod.gpus``: the account's GPU types with price and stock (the one call here that asks the API)."""
    return gpu_rows(api.gpu_types(), api.gpu_stock())

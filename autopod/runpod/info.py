"""What ``pod.info`` shows: everything ``pod.list`` does, plus image, ports, volume, SSH commands,
the HTTP proxy, what the pod cost so far, and every cost guard set on it (RunPod's timers and the
idle watchdog, whose state is read from the pod)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..core import chain
from ..core import config as _config
from ..core.errors import AutopodError, ConfigError
from ..core.inventory import load_inventory
from . import guard
from .records import fmt_duration, fmt_usd, proxy_urls
from .registry import entries_or_warn, resolve_pod
from .spec import rfc3339

log = logging.getLogger(__name__)


def pod_info(api: Any, ref: str | None) -> dict[str, Any]:
    """Everything ``pod.list`` shows, plus image, ports, volume, SSH commands and spend so far."""
    pod = resolve_pod(api, ref)
    chain.set_pod(pod.id)
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
    info["http_proxy"] = proxy_urls(pod)
    info["guards"] = guards(api, pod)
    info["api"] = getattr(api, "backend", "graphql")  # which RunPod API answered
    return info


def guards(api: Any, pod: Any) -> dict[str, Any]:
    """RunPod's timers as autopod set them, and the watchdog: its live state when the pod runs,
    else what autopod recorded."""
    entry = entries_or_warn().get(pod.id, {})
    timers = entry.get("timers") or {}
    out: dict[str, Any] = {
        "stop_at": _when(timers.get("stop_at")),
        "terminate_at": _when(timers.get("terminate_at")),
        "watchdog": None,
    }
    if entry.get("guard"):
        try:
            out["watchdog"] = guard.status(api, pod)
        except AutopodError as e:  # pod.info must not fail because the pod did not answer over SSH
            out["watchdog"] = {"running": None, "recorded": entry["guard"], "note": f"could not ask the pod: {e}"}
    return out


def _when(ts: Any) -> dict[str, Any] | None:
    if not isinstance(ts, (int, float)):
        return None
    left = ts - time.time()
    return {"at": rfc3339(ts), "in_s": round(left) if left > 0 else 0, "passed": left <= 0}


INFO_FIELDS = [("name", "NAME"), ("id", "ID"), ("status", "STATUS"), ("gpu", "GPU"), ("gpu_count", "GPU COUNT"),
               ("datacenter", "DATACENTER"), ("uptime", "UPTIME"), ("cost_per_hr", "$/HR"), ("spend", "SPENT (EST.)"),
               ("stop_at", "STOP TIMER"), ("terminate_at", "TERMINATE TIMER"), ("watchdog", "IDLE WATCHDOG"),
               ("image", "IMAGE"), ("ports", "PORTS"), ("volume", "VOLUME"), ("ssh", "SSH"),
               ("ssh_fallback", "SSH (PROXY, SHELL ONLY)"), ("comfy_address", "COMFYUI (IN POD)"),
               ("proxy", "HTTP PROXY (PUBLIC, NO LOGIN)"), ("api", "RUNPOD API")]


def info_view(info: dict[str, Any]) -> dict[str, Any]:
    """``pod_info`` flattened for the human KEY/VALUE table."""
    v = info.get("volume")
    g = info.get("guards") or {}
    return {
        **info,
        "uptime": fmt_duration(info.get("uptime_s")),
        "spend": fmt_usd(info.get("spend_usd")),
        "stop_at": _timer_view(g.get("stop_at"), "RunPod stops it"),
        "terminate_at": _timer_view(g.get("terminate_at"), "RunPod terminates it"),
        "watchdog": guard.summary(g["watchdog"]) if g.get("watchdog") else "none (`autopod pod.guard --idle-minutes N`)",
        "volume": (f"{v['id']} ({v.get('name') or '?'}, {v.get('size_gb') or '?'} GB, {v.get('datacenter')}) "
                   f"at {v.get('mount')}") if v else None,
        "ssh": info["ssh"]["direct"] or "(no direct endpoint yet: the pod is not running)",
        "ssh_fallback": info["ssh"]["proxy"],
        "proxy": [u["url"] for u in info.get("http_proxy") or []],
    }




def _timer_view(t: dict[str, Any] | None, what: str) -> str | None:
    if not t:
        return None
    return f"{t['at']} (passed)" if t["passed"] else f"{t['at']}: {what} in {fmt_duration(t['in_s'])}"

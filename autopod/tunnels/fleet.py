"""Tunnels to every member of a fleet: one local port each (8188, 8189, … as they are free)."""

from __future__ import annotations

from typing import Any

from ..core.errors import UsageError
from ..core.fanout import Cancel, Result, count_line
from ..core.output import Outcome
from ..runpod.fleet import on_members
from ..runpod.records import Pod
from .manager import start_tunnel, stop_tunnel, tunnel_status


def _result(name: str, outcome: Outcome) -> Result:
    info = outcome.data
    r = Result.of(name, Outcome(outcome.changed, outcome.msg))
    if hasattr(info, "to_dict"):
        r.doc.update(tunnel=info.to_dict(), local_port=info.local_port, url=info.url)
    return r


def start(fleet: str, *, local_port: int | None = None, remote_port: int | None = None, backend: str | None = None,
          timeout: float = 30.0, ssh_key: str | None = None) -> tuple[list[Result], str]:
    if local_port is not None:
        raise UsageError("--local-port names one port; a fleet's tunnels take free ports from 8188 up, one each")

    def one(pod: Pod, _cancel: Cancel) -> Result:
        return _result(pod.name, start_tunnel(pod.id, remote_port=remote_port, backend=backend, timeout=timeout,
                                              ssh_key=ssh_key))

    results = on_members(fleet, one, running_only=True)
    urls = ", ".join(f"{r.name} {r.doc['url']}" for r in results if r.ok and r.doc.get("url"))
    return results, f"fleet {fleet}: {count_line(results)}" + (f"; {urls}" if urls else "")


def stop(fleet: str) -> tuple[list[Result], str]:
    results = on_members(fleet, lambda pod, _c: _result(pod.name, stop_tunnel(pod.id)))
    return results, f"fleet {fleet}: {count_line(results)}"


def status(fleet: str) -> tuple[list[Result], str]:
    """Each member's tunnel, health-checked: a member without a working tunnel is a failed result."""

    def one(pod: Pod, _cancel: Cancel) -> Result:
        info = tunnel_status(pod.id)
        if info is None:
            return Result.failed(pod.name, f"no tunnel to {pod.name} ({pod.id})", data={"running": False,
                                                                                        "healthy": False})
        doc: dict[str, Any] = {"member": pod.name, **info.to_dict(), "running": info.alive, "url": info.url}
        line = (f"tunnel to {info.name} on {info.local_address} -> {info.remote_host}:{info.remote_port} "
                f"({'healthy' if info.healthy else info.error or info.state or 'not answering'})")
        return Result(pod.name, info.healthy, line, False, doc, 0 if info.healthy else 1)

    results = on_members(fleet, one)
    return results, f"fleet {fleet}: {sum(r.ok for r in results)} of {len(results)} tunnel(s) healthy"

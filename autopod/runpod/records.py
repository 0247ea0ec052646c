"""The pod record: what RunPod says about a pod, in one shape for every task, plus the
local facts autopod keeps for it (the ComfyUI address inside the pod)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..core import config as _config

ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

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

    @property
    def spend_usd(self) -> float | None:
        return spend_usd(self.cost_per_hr, self.uptime_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ssh_direct"] = {"host": self.ssh_direct[0], "port": self.ssh_direct[1]} if self.ssh_direct else None
        d["spend_usd"] = self.spend_usd
        return d

    def row(self) -> dict[str, Any]:
        """A human row for ``pod.list``."""
        gpu = self.gpu and (f"{self.gpu_count}x {self.gpu}" if self.gpu_count > 1 else self.gpu)
        return {"name": self.name, "id": self.id, "status": self.status, "gpu": gpu, "datacenter": self.datacenter,
                "volume": self.volume_id, "uptime": fmt_duration(self.uptime_s),
                "cost": f"{self.cost_per_hr:.3f}" if self.cost_per_hr is not None else None,
                "spend": fmt_usd(self.spend_usd)}


LIST_COLUMNS = [("name", "NAME"), ("id", "ID"), ("status", "STATUS"), ("gpu", "GPU"), ("datacenter", "DATACENTER"),
                ("volume", "VOLUME"), ("uptime", "UPTIME"), ("cost", "$/HR"), ("spend", "SPENT")]


def totals(pods: Sequence["Pod"]) -> dict[str, Any]:
    """The total line of ``pod.list``: the running pods' rate, and every pod's spend so far."""
    running = [p for p in pods if p.status == "RUNNING"]
    spent = [p.spend_usd for p in pods if p.spend_usd is not None]
    return {"running": len(running), "pods": len(pods),
            "cost_per_hr": round(sum(p.cost_per_hr or 0.0 for p in running), 4),
            "spend_usd": round(sum(spent), 4)}


def render_list(pods: Sequence["Pod"], *, as_json: bool) -> None:
    """``pod.list``: one JSON list, or the table and its total line. Shared by the task and the quick
    path of the console script (``autopod.launch``), so the two print the same."""
    from ..core.output import dump_json, emit_rows  # noqa: PLC0415

    if as_json:
        dump_json([p.to_dict() for p in pods])
        return
    emit_rows([p.row() for p in pods], LIST_COLUMNS, as_json=False, empty="no pods")
    if pods:
        t = totals(pods)
        print(f"total: {t['running']} of {t['pods']} pod(s) running at ${t['cost_per_hr']:.3f}/hr; "
              f"spent {fmt_usd(t['spend_usd'])} since they last started")


def spend_usd(cost_per_hr: float | None, uptime_s: int | None) -> float | None:
    """What a pod cost since it last started: its rate times its uptime. An estimate: RunPod bills
    by the second, and storage (billed while stopped too) is not included."""
    if cost_per_hr is None or uptime_s is None:
        return None
    return round(float(cost_per_hr) * int(uptime_s) / 3600.0, 4)


def fmt_usd(amount: float | None) -> str | None:
    return None if amount is None else f"${amount:.2f}"


def cost_note(pod: "Pod") -> str:
    """``; it ran 2h13m at $0.440/hr, about $0.98`` for a pod about to stop, or ''."""
    spent = pod.spend_usd
    if spent is None or not pod.uptime_s:
        return ""
    return f"; it ran {fmt_duration(pod.uptime_s)} at ${pod.cost_per_hr:.3f}/hr, about {fmt_usd(spent)}"


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

"""Spend and the daily budget: what pods cost so far, and refusing a pod that would take the next
24 hours of spend past ``budget_usd_per_day`` (config.yaml or the inventory defaults).

Pure but for the callers' API reads: rates come from the pod listing (``costPerHr``) and the GPU
types (``securePrice``/``communityPrice``); RunPod's own timers bound how long a pod can bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..core import config as _config
from ..core.errors import BudgetExceeded
from ..core.inventory import Inventory
from .records import Pod

HORIZON_S = 86400.0


def gpu_rate(gpu: dict[str, Any], cloud_type: str, count: int) -> float | None:
    """$/hr of ``count`` of this GPU type in ``cloud_type`` (ALL: the dearer cloud, to be safe)."""
    secure, community = gpu.get("securePrice"), gpu.get("communityPrice")
    if cloud_type == "SECURE":
        price = secure
    elif cloud_type == "COMMUNITY":
        price = community
    else:
        known = [p for p in (secure, community) if isinstance(p, (int, float))]
        price = max(known) if known else None
    return round(float(price) * count, 4) if isinstance(price, (int, float)) else None


def configured_budget(inventory: Inventory) -> float | None:
    value = _config.resolve("budget_usd_per_day", None, inventory=inventory, config=_config.user_config())
    return float(value) if value is not None else None


@dataclass
class Budget:
    """The next 24 hours of spend against ``per_day``."""

    per_day: float
    committed: float  # what the running pods will spend in the next 24 h (less where a timer ends them)
    running: list[dict[str, Any]]

    @classmethod
    def of(cls, per_day: float, pods: Sequence[Pod], entries: dict[str, Any], now: float,
           exclude: str | None = None) -> "Budget":
        running, committed = [], 0.0
        for p in pods:
            if p.status != "RUNNING" or p.id == exclude:
                continue
            rate = p.cost_per_hr or 0.0
            hours = billable_hours(entries.get(p.id, {}).get("timers") or {}, now)
            committed += rate * hours
            running.append({"id": p.id, "name": p.name, "cost_per_hr": rate, "hours": round(hours, 3)})
        return cls(per_day, round(committed, 4), running)

    def room_for(self, rate: float, hours: float) -> bool:
        return self.committed + rate * hours <= self.per_day + 1e-9

    def refuse(self, what: str, rate: float, hours: float) -> BudgetExceeded:
        total = self.committed + rate * hours
        n = len(self.running)
        return BudgetExceeded(
            f"budget: {what} (${rate:.3f}/hr for {hours:g} h) would bring the next 24 hours to ${total:.2f} with "
            f"{n} running pod(s) (${sum(r['cost_per_hr'] for r in self.running):.3f}/hr), over budget_usd_per_day "
            f"${self.per_day:.2f}; stop a pod, set --stop-after, or pass --force",
            data={"budget": {"per_day_usd": self.per_day, "committed_usd": self.committed, "new_cost_per_hr": rate,
                             "new_hours": hours, "projected_usd": round(total, 4), "running": self.running}})


def billable_hours(timers: dict[str, Any], now: float) -> float:
    """Hours a pod can bill in the next 24 h: all of them, unless RunPod's timer ends it sooner."""
    ends = [float(t) for t in (timers.get("stop_at"), timers.get("terminate_at")) if isinstance(t, (int, float))]
    left = min([HORIZON_S] + [max(0.0, t - now) for t in ends])
    return round(left / 3600.0, 4)

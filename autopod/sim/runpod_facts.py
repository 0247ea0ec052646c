"""What the RunPod stand-in answers with on both of its faces (GraphQL and REST v2): RunPod's
error texts, the resolvers' error, how free GPUs read as a stock level, and serverless GPU pools and prices."""

from __future__ import annotations

from typing import Any

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")
NOT_ENOUGH_GPUS = "There are not enough free GPUs on the host machine to start this pod."
SOMETHING_WRONG = "Something went wrong. Please try again later or contact support."
NO_DATA_CENTER = "Failed to find data center, please try again."


class ApiError(Exception):
    """A RunPod-style GraphQL error raised by a resolver."""

    def __init__(self, message: str, code: str = "INTERNAL_SERVER_ERROR"):
        super().__init__(message)
        self.extensions = {"code": code}


def _stock_status(free: int, count: int) -> str:
    units = free // max(count, 1)
    if units >= 8:
        return "High"
    if units >= 3:
        return "Medium"
    if units >= 1:
        return "Low"
    return "None"


# Serverless GPU pools and per-second flex prices (RunPod's serverless pricing table); by GPU type id.
POOLS = {"NVIDIA RTX A40": "AMPERE_48", "NVIDIA RTX A6000": "AMPERE_48", "NVIDIA RTX A5000": "AMPERE_24",
         "NVIDIA GeForce RTX 4090": "ADA_24", "NVIDIA GeForce RTX 3090": "AMPERE_24",
         "NVIDIA A100 80GB PCIe": "AMPERE_80", "NVIDIA H100 80GB HBM3": "ADA_80_PRO"}
PRICE_PER_S = {"AMPERE_16": 0.00016, "AMPERE_24": 0.00019, "ADA_24": 0.00031, "AMPERE_48": 0.00034,
               "ADA_48_PRO": 0.00053, "AMPERE_80": 0.00076, "ADA_80_PRO": 0.00116, "HOPPER_141": 0.00155}


def pool_of(gid: str, g: dict[str, Any]) -> str:
    if g.get("pool"):
        return str(g["pool"])
    if gid in POOLS:
        return POOLS[gid]
    mem = int(g.get("memoryInGb") or 0)
    return "AMPERE_16" if mem <= 16 else "AMPERE_24" if mem <= 24 else "AMPERE_48" if mem <= 48 else \
        "AMPERE_80" if mem <= 80 else "HOPPER_141"


def serverless_price(gid: str, g: dict[str, Any]) -> float:
    """Per-GPU hourly serverless list price (the catalog's ``price.serverless``)."""
    if g.get("serverlessPrice") is not None:
        return float(g["serverlessPrice"])
    return round(PRICE_PER_S.get(pool_of(gid, g), 0.00034) * 3600, 4)

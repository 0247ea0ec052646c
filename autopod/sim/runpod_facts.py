"""What the RunPod stand-in answers with on both of its faces (GraphQL and REST v2): RunPod's
error texts, the resolvers' error, and how free GPUs read as a stock level."""

from __future__ import annotations

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

"""The pod a command line is working on, so chained tasks agree without --pod.

``autopod pod.create --volume-id V tunnel.start comfy.info`` runs three tasks in
one process with one invoke Config; the pod that ``pod.create`` made (or that a
task started or used) is the one the later tasks mean. A new Config means a new
command line (tests and scripts may run several in one process), so the pointer
starts empty again. Deliberately tiny: the ``comfy.status`` fast path reads it.
"""

from __future__ import annotations

_pod_id: str | None = None
_run: object | None = None


def begin(run: object) -> None:
    """Called by every task with its invoke Config before it runs."""
    global _pod_id, _run
    if run is not _run:
        _run = run  # a strong reference, so its identity cannot be reused by a later Config
        _pod_id = None


def set_pod(pod_id: str) -> None:
    global _pod_id
    _pod_id = pod_id


def pod_id() -> str | None:
    return _pod_id

"""The pod a command line is working on, so chained tasks agree without --pod.

``autopod pod.create --volume-id V tunnel.start comfy.info`` runs three tasks in
one process with one invoke Config; the pod that ``pod.create`` made (or that a
task started or used) is the one the later tasks mean. A new Config means a new
command line (tests and scripts may run several in one process), so the pointer
starts empty again. Deliberately tiny: the ``comfy.status`` fast path reads it.

A ``--dry-run`` step hands no pod on. It marks the command line instead, so a
later task without ``--pod`` refuses rather than falling back to "the only pod":
``pod.create --name new --dry-run pod.kill --yes`` must never kill another pod.
"""

from __future__ import annotations

_pod_id: str | None = None
_planned: str | None = None  # what a dry-run step only pretended to do
_run: object | None = None


def begin(run: object) -> None:
    """Called by every task with its invoke Config before it runs."""
    global _pod_id, _planned, _run
    if run is not _run:
        _run = run  # a strong reference, so its identity cannot be reused by a later Config
        _pod_id = None
        _planned = None


def set_pod(pod_id: str) -> None:
    global _pod_id
    _pod_id = pod_id


def pod_id() -> str | None:
    return _pod_id


def mark_planned(what: str) -> None:
    """A dry-run step ran: later steps must name their pod."""
    global _pod_id, _planned
    _pod_id = None
    _planned = what


def planned() -> str | None:
    return _planned

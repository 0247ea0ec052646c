"""The pod a command line is working on, so chained tasks agree without --pod.

``autopod pod.create --volume-id V tunnel.start comfy.info`` runs three tasks in
one process with one invoke Config; the pod that ``pod.create`` made (or that a
task started or used) is the one the later tasks mean. A new Config means a new
command line (tests and scripts may run several in one process), so the pointer
starts empty again. Deliberately tiny: the ``comfy.status`` fast path reads it.

A ``--dry-run`` step hands no pod on. It marks the command line instead, so a
later task without ``--pod`` refuses rather than falling back to "the only pod":
``pod.create --name new --dry-run pod.kill --yes`` must never kill another pod.

A fleet step (``pod.up --name flux --count 4``) hands its fleet on: later tasks that take
``--fleet`` mean it; tasks that need one pod refuse to guess among its members.
"""

from __future__ import annotations

_pod_id: str | None = None
_planned: str | None = None  # what a dry-run step only pretended to do
_run: object | None = None
_fleet: str | None = None


def begin(run: object) -> None:
    """Called by every task with its invoke Config before it runs."""
    global _pod_id, _planned, _run, _fleet
    if run is not _run:
        _run = run  # a strong reference, so its identity cannot be reused by a later Config
        _pod_id = None
        _planned = None
        _fleet = None


def set_pod(pod_id: str) -> None:
    global _pod_id, _fleet
    _pod_id = pod_id
    _fleet = None


def refuse_to_guess() -> None:
    """Called where a task needs one pod and none was named: after a fleet step, guessing among its
    members would be wrong."""
    if _fleet is not None:
        from .errors import UsageError

        raise UsageError(f"an earlier task on this command line worked on fleet {_fleet}; name one pod with "
                         f"--pod {_fleet}-1 (or give this task --fleet {_fleet}, where it takes one)")


def set_fleet(name: str) -> None:
    """A task worked on fleet ``name``; its members' threads may have set the pod: forget it."""
    global _pod_id, _fleet
    _pod_id = None
    _fleet = name


def fleet() -> str | None:
    return _fleet


def pod_id() -> str | None:
    return _pod_id


def mark_planned(what: str) -> None:
    """A dry-run step ran: later steps must name their pod."""
    global _pod_id, _planned, _fleet
    _pod_id = None
    _fleet = None
    _planned = what


def planned() -> str | None:
    return _planned


def fleet_target(fleet: str | None, pod: str | None) -> str | None:
    """The fleet a task works on: ``--fleet``, or this command line's fleet when no ``--pod`` is given.
    ``--pod`` and ``--fleet`` together are exit 2."""
    from .errors import UsageError
    from .flags import text

    if fleet is not None and pod is not None:
        raise UsageError("give --pod or --fleet, not both")
    if fleet is not None:
        return text(fleet, "--fleet")
    return _fleet if pod is None else None

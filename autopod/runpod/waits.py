"""Waiting for a pod: RUNNING, its container up, and its direct SSH endpoint answering."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

from ..core import chain
from ..core import config as _config
from ..core.errors import RemoteError, Timeout
from ..core.ui import progress
from .records import Pod
from .registry import get_pod, resolve_pod

POLL_INTERVAL = 5.0  # seconds between status reads once a wait is under way (RunPod rate-limits)
GONE_GRACE_S = 60.0  # a new pod may read as missing for a moment right after create

def ssh_banner_ok(host: str, port: int, timeout: float = 3.0) -> bool:
    """True when ``host:port`` accepts TCP and speaks SSH. RunPod's port mapping can accept
    connections before sshd in the pod runs, so a bare connect is not enough."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_ready(api: Any, pod_id: str, *, timeout: float, poll_interval: float | None = None,
               sleep: Callable[[float], None] = time.sleep, connect: Callable[[str, int], bool] = ssh_banner_ok,
               clock: Callable[[], float] = time.monotonic, label: str | None = None) -> Pod:
    """Wait until the pod is RUNNING, has its runtime and its direct SSH endpoint answers.

    Progress goes to stderr; raises Timeout after ``timeout`` seconds.
    """
    start = clock()
    interval = POLL_INTERVAL if poll_interval is None else poll_interval
    label = label or pod_id
    last = None
    n = 0
    while True:
        pod = get_pod(api, pod_id)
        if pod is None:
            if clock() - start > GONE_GRACE_S:
                raise PodNotRunning(f"pod {label} no longer exists")
            state = "not visible yet"
        else:
            label = f"{pod.name} ({pod.id})"
            if pod.status == "TERMINATED":
                raise PodNotRunning(f"pod {label} was terminated")
            if pod.status == "EXITED":
                raise PodNotRunning(f"pod {label} is stopped; start it with `autopod pod.start --pod {pod.name}`")
            if pod.status == "RUNNING" and pod.ssh_direct and connect(*pod.ssh_direct):
                progress(f"pod {label} is ready: ssh {pod.ssh_direct[0]} port {pod.ssh_direct[1]}")
                return pod
            if pod.status != "RUNNING":
                state = pod.status
            elif not pod.ssh_direct:
                state = "RUNNING, container starting (no SSH endpoint yet)"
            else:
                state = f"RUNNING, SSH {pod.ssh_direct[0]}:{pod.ssh_direct[1]} not answering yet"
        elapsed = clock() - start
        if state != last:
            progress(f"waiting for pod {label}: {state} ({elapsed:.0f}s)")
            last = state
        if elapsed >= timeout:
            raise Timeout(f"pod {label} not ready after {timeout:.0f}s ({state})")
        # Quick first polls (a resumed pod is often back in seconds), then the steady interval.
        sleep(max(0.0, min(interval, 0.5 * 2 ** n, timeout - elapsed)))
        n += 1


class PodNotRunning(RemoteError):
    """The pod a wait was for stopped, was terminated or vanished: it does not bill, so nothing is stopped."""


def wait(api: Any, ref: str | None, timeout: float | None = None, *,
         sleep: Callable[[float], None] = time.sleep) -> Pod:
    pod = resolve_pod(api, ref)
    chain.set_pod(pod.id)
    return wait_ready(api, pod.id, timeout=float(timeout or _config.BUILTIN["timeout"]),
                      label=f"{pod.name} ({pod.id})", sleep=sleep)

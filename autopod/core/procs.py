"""Processes autopod starts and stops: child processes, and detached daemons found again by pid.

A recorded pid may belong to another process by now, so callers check its
command line (``cmdline``) before ever signalling it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable


def stop_child(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; always reaps it, so no zombie is left."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def cmdline(pid: int | None) -> list[str]:
    """The command line of a live process; [] when it is gone, a zombie, or not ours to inspect (on Linux
    also when it rewrote its command line without NUL separators: autopod's own processes never do)."""
    if not pid:
        return []
    if sys.platform.startswith("linux"):
        # Two small reads of /proc: every comfy command checks its tunnel's daemon this way, and importing
        # psutil for it cost about 15 ms of CPU. Elsewhere psutil knows how to ask.
        return _proc_cmdline(pid)
    import psutil

    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return []
        return p.cmdline()
    except (psutil.Error, ValueError):
        return []


def _proc_cmdline(pid: int | str) -> list[str]:
    try:
        base = f"/proc/{int(pid)}"
        with open(f"{base}/stat", "rb") as f:
            stat = f.read()
        if stat[stat.rindex(b")") + 2:][:1] == b"Z":  # the state follows "(name) "; the name may hold ")"
            return []
        with open(f"{base}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, ValueError):
        return []
    return [os.fsdecode(arg) for arg in raw.split(b"\0")[:-1]] if raw.endswith(b"\0") else []


def environ(pid: int | None) -> dict[str, str] | None:
    """The environment a live process started with; None when it is gone or not ours to inspect."""
    if not pid:
        return None
    if sys.platform.startswith("linux"):  # as cmdline: /proc, without importing psutil
        try:
            with open(f"/proc/{int(pid)}/environ", "rb") as f:
                raw = f.read()
        except (OSError, ValueError):
            return None
        pairs = (os.fsdecode(item).partition("=") for item in raw.split(b"\0") if item)
        return {k: v for k, sep, v in pairs if sep}
    import psutil

    try:
        return psutil.Process(int(pid)).environ()
    except (psutil.Error, ValueError, OSError):
        return None


def terminate_pid(pid: int, timeout: float = 5.0, *, on_kill: Callable[[], None] | None = None) -> None:
    """SIGTERM a process that is not our child (a detached daemon), then SIGKILL after ``timeout``.

    A zombie counts as gone: its parent, not us, reaps it.
    """
    import psutil

    try:
        p = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return

    def gone() -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        p.terminate()
        if not wait_for(gone, timeout, interval=0.02):
            if on_kill:
                on_kill()
            p.kill()
            wait_for(gone, timeout, interval=0.02)
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone, or not ours to signal after all
        pass


def wait_for(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.1,
             sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= end:
            return False
        sleep(interval)

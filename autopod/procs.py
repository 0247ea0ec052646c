"""Stopping child processes we started (sshd, ssh, a real ComfyUI): politely, then for sure."""

from __future__ import annotations

import subprocess


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

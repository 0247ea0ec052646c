"""SIGTERM and SIGHUP mean what Ctrl-C means, and cleanup that protects money is not cut short.

``timeout``, CI cancellation and ``kill`` send SIGTERM; a closed terminal sends
SIGHUP. Inside :func:`handling` all three raise :class:`~autopod.errors.Interrupted`
(a KeyboardInterrupt), so every path written for Ctrl-C (stop the pod that was
being created or waited for, say which) runs for them too. Inside
:func:`shielded` a further signal is not raised; it only prints a note: a second
Ctrl-C must not leave a pod billing half way through stopping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

from .errors import Interrupted

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

_shield_depth = 0
_shield_lock = threading.Lock()  # fleet members clean up in threads of their own


def _handler(signum: int, _frame: Any) -> None:
    if _shield_depth:  # dropped: the cleanup runs to its end, and the interrupt that began it ends the command
        with contextlib.suppress(OSError):  # os.write: safe inside a signal handler, unlike print
            os.write(2, b"autopod: still cleaning up so nothing keeps billing; this takes a few seconds\n")
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted while inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Signals that arrive inside are not raised: the cleanup inside always runs to its end."""
    global _shield_depth
    with _shield_lock:
        _shield_depth += 1
    try:
        yield
    finally:
        with _shield_lock:
            _shield_depth -= 1

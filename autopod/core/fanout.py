"""One operation on many targets at once (a fleet's members): bounded concurrency, one result each,
a failure that stops no other, and Ctrl-C that every running one sees.

Signals reach only the main thread. So the main thread waits here; on Ctrl-C (or SIGTERM/SIGHUP)
it sets a :class:`Cancel` that the workers' waits poll (``cancel.sleep`` in place of
``time.sleep``): each raises ``Interrupted`` in its own thread, where the cleanup written for
Ctrl-C (stop the pod being created, say which) runs as it does in a single-pod command. The main
thread waits for those cleanups, shielded, before it reports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from . import signals
from .errors import AutopodError, ExitCode, Interrupted
from .output import Outcome, dump_json, safe_text

T = TypeVar("T")
DEFAULT_CONCURRENCY = 8


class Cancel:
    """Set once by the main thread on Ctrl-C; workers poll it through :meth:`sleep` and :meth:`check`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: Interrupted | None = None

    def set(self, sig: Interrupted) -> None:
        self.signal = sig
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted(self.signal.signum if self.signal else 2)

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` that ends early, with ``Interrupted``, once the run is cancelled."""
        if self._event.wait(max(0.0, seconds)):
            self.check()


@dataclass
class Result:
    """What one member's operation came to: its line for people and its document for scripts."""

    name: str
    ok: bool
    msg: str
    changed: bool = False
    doc: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def status(self) -> str:
        return "failed" if not self.ok else ("changed" if self.changed else "ok")

    @classmethod
    def of(cls, name: str, outcome: Outcome) -> "Result":
        return cls(name, True, outcome.msg, outcome.changed, {"member": name, **outcome.to_dict()})

    @classmethod
    def failed(cls, name: str, msg: str, code: int = ExitCode.FAILED, data: dict | None = None) -> "Result":
        return cls(name, False, msg, False, {"member": name, "changed": False, "failed": True, "status": "failed",
                                              "msg": msg, "exit_code": int(code), **(data or {})}, int(code))


def _one(fn: Callable[[T, Cancel], Result], item: T, name: str, cancel: Cancel) -> Result:
    from .log import redact

    if cancel.is_set:
        return Result.failed(name, f"{name}: not started ({cancel.signal.what if cancel.signal else 'interrupted'})",
                             cancel.signal.exit_code if cancel.signal else ExitCode.INTERRUPTED)
    try:
        return fn(item, cancel)
    except AutopodError as e:
        return Result.failed(name, redact(str(e)), e.exit_code, e.data)
    except KeyboardInterrupt as e:
        sig = e if isinstance(e, Interrupted) else Interrupted()
        return Result.failed(name, f"{name}: {sig.what}", sig.exit_code)
    except Exception as e:  # a bug in one member's run must not hide the others' results
        import logging

        logging.getLogger("autopod.fanout").debug("member %s failed", name, exc_info=True)
        return Result.failed(name, f"{name}: internal error: {type(e).__name__}: {redact(str(e))}")


def run_all(items: Sequence[T], fn: Callable[[T, Cancel], Result], *, name: Callable[[T], str],
            concurrency: int = DEFAULT_CONCURRENCY, what: str = "the fleet") -> list[Result]:
    """``fn(item, cancel)`` for every item, at most ``concurrency`` at once; results in ``items``' order.

    On Ctrl-C every worker is cancelled and waited for; then an ``AutopodError`` with the signal's
    exit code says what each member came to (``data["members"]``: their documents)."""
    from concurrent.futures import ThreadPoolExecutor, wait  # a fleet's: a single pod's run starts no pool

    cancel = Cancel()
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items))), thread_name_prefix="member") as pool:
        futures = [pool.submit(_one, fn, item, name(item), cancel) for item in items]
        try:
            with signals.handling():
                pending = set(futures)
                while pending:  # short waits: the signal handler runs between them
                    _done, pending = wait(pending, timeout=0.2)
        except KeyboardInterrupt as e:
            sig = e if isinstance(e, Interrupted) else Interrupted()
            cancel.set(sig)
            with signals.shielded():
                wait(futures)
            results = [f.result() for f in futures]
            lines = "; ".join(r.msg for r in results if r.changed or not r.ok)
            raise AutopodError(f"{sig.what} while working on {what}" + (f": {lines}" if lines else ""),
                               exit_code=sig.exit_code, data={"members": [r.doc for r in results]}) from None
    return [f.result() for f in futures]


def render(results: Sequence[Result], summary: str, *, as_json: bool) -> int:
    """One line per member and the summary (people), or one list of documents (scripts).
    Returns the exit code: 1 when any member failed."""
    failed = [r for r in results if not r.ok]
    if as_json:
        dump_json([r.doc if r.ok else {**r.doc, "failed": True} for r in results])
    else:
        for r in results:
            print(f"{r.status}: {safe_text(r.msg)}")
        changed = any(r.changed for r in results)
        print(f"{'failed' if failed else 'changed' if changed else 'ok'}: {safe_text(summary)}")
    return int(ExitCode.FAILED) if failed else 0


def count_line(results: Sequence[Result], noun: str = "member") -> str:
    """``3 members: 2 changed, 1 failed``."""
    n = len(results)
    counts = [(sum(r.status == s for r in results), s) for s in ("changed", "ok", "failed")]
    parts = [f"{c} {s}" for c, s in counts if c]
    return f"{n} {noun}{'' if n == 1 else 's'}" + (f": {', '.join(parts)}" if parts else "")

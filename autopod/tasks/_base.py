"""The decorator every autopod task uses: logging set-up and the exit-code contract.

It lives on the task rather than only on ``autopod.cli.AutopodProgram`` so that
``invoke pod.create`` in a checkout (invoke's own Program) keeps the same
contract as the installed ``autopod`` command.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

from invoke import Exit, task

from .. import chain
from ..errors import AutopodError, ExitCode
from ..log import setup_logging
from ..output import report_failure

log = logging.getLogger("autopod.cli")
_debug_flag = False


def set_debug(on: bool) -> None:
    global _debug_flag
    _debug_flag = on


def debug_enabled() -> bool:
    return _debug_flag or bool(os.environ.get("AUTOPOD_DEBUG")) or "--debug" in sys.argv


def command(*args: Any, **kwargs: Any) -> Callable:
    """``@command(help={...}, iterable=[...])``: an invoke task with autopod's error contract.

    AutopodError becomes a one-line ``error: ...`` on stderr and its exit code;
    with ``--json`` a failure also prints one JSON document, so scripts always
    get exactly one. Tracebacks only with ``--debug`` (always in the log).
    """

    def deco(fn: Callable) -> Any:
        @functools.wraps(fn)
        def wrapper(c: Any, *a: Any, **kw: Any) -> Any:
            debug = debug_enabled()
            setup_logging(debug=debug)
            chain.begin(c.config)
            log.debug("task %s %s", fn.__name__, {k: v for k, v in kw.items() if k != "env"})
            try:
                return fn(c, *a, **kw)
            except AutopodError as e:
                _fail(str(e), int(e.exit_code), kw.get("json"), debug)
            except KeyboardInterrupt:
                _fail("interrupted", ExitCode.INTERRUPTED, kw.get("json"), debug)
            except Exit:
                raise
            except Exception as e:  # a bug: say so in one line, keep the traceback in the log
                _fail(f"internal error: {type(e).__name__}: {e} (see the log, or rerun with --debug)",
                      ExitCode.FAILED, kw.get("json"), debug)

        kwargs.setdefault("auto_shortflags", False)
        return task(wrapper, **kwargs)

    if args and callable(args[0]) and not kwargs:
        return deco(args[0])
    return deco


def _fail(msg: str, code: int, as_json: Any, debug: bool) -> None:
    msg = report_failure(msg, code, as_json=bool(as_json), debug=debug)
    raise Exit(f"error: {msg}", code=code)


def exit_quietly(code: int) -> None:
    """End the task with ``code`` after it already rendered its result (status checks)."""
    raise Exit(code=code)

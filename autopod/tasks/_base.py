"""The decorator every autopod task uses: input checks, logging, signals and the exit-code contract.

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

from ..core import chain, signals
from ..core.errors import AutopodError, ExitCode, Interrupted, UsageError
from ..core.flags import decodable
from ..core.log import setup_logging
from ..core.output import release_stdout, report_failure

log = logging.getLogger("autopod.cli")
_debug_flag = False


def set_debug(on: bool) -> None:
    global _debug_flag
    _debug_flag = on


def debug_enabled() -> bool:
    return _debug_flag or bool(os.environ.get("AUTOPOD_DEBUG")) or "--debug" in sys.argv


def flag_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def check_values(kw: dict[str, Any]) -> None:
    """Refuse values that were given but say nothing: ``--pod "$UNSET"`` must never mean "the only pod".

    Every string flag (and every item of a repeatable one) must be non-empty UTF-8.
    """
    for param, value in kw.items():
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str):
                continue
            if not v.strip():
                raise UsageError(f"{flag_name(param)} was given an empty value; leave the flag out to use the default")
            decodable(v, flag_name(param))


def command(*args: Any, plain_arg: str | None = None, **kwargs: Any) -> Callable:
    """``@command(help={...}, iterable=[...])``: an invoke task with autopod's error contract.

    ``plain_arg="pod"`` lets the first bare word after the task name stand for that flag
    (``autopod pod.info flux`` is ``autopod pod.info --pod flux``); the command line is
    rewritten before invoke parses it (``autopod.cli.contract.plain_args``), because an
    invoke positional would be required and would swallow the next task's name.

    AutopodError becomes a one-line ``error: ...`` on stderr and its exit code;
    with ``--json`` a failure also prints one JSON document, so scripts always
    get exactly one. Tracebacks only with ``--debug`` (always in the log).
    SIGTERM and SIGHUP are handled like Ctrl-C (exit 128 + the signal).
    """

    def deco(fn: Callable) -> Any:
        @functools.wraps(fn)
        def wrapper(c: Any, *a: Any, **kw: Any) -> Any:
            debug = debug_enabled()
            as_json = bool(kw.get("json"))
            try:
                with signals.handling():
                    setup_logging(debug=debug)
                    chain.begin(c.config)
                    log.debug("task %s %s", fn.__name__, {k: v for k, v in kw.items() if k != "env"})
                    check_values(kw)
                    return fn(c, *a, **kw)
            except AutopodError as e:
                _fail(str(e), int(e.exit_code), as_json, debug, e.data)
            except KeyboardInterrupt as e:
                sig = e if isinstance(e, Interrupted) else Interrupted()
                _fail(sig.what, sig.exit_code, as_json, debug)
            except BrokenPipeError:
                stdout_gone()
            except Exit:
                raise
            except Exception as e:  # a bug: say so in one line, keep the traceback in the log
                _fail(f"internal error: {type(e).__name__}: {e} (see the log, or rerun with --debug)",
                      ExitCode.FAILED, as_json, debug)

        kwargs.setdefault("auto_shortflags", False)
        t = task(wrapper, **kwargs)
        t.plain_arg = plain_arg
        return t

    if args and callable(args[0]) and not kwargs and plain_arg is None:
        return deco(args[0])
    return deco


def _fail(msg: str, code: int, as_json: bool, debug: bool, data: dict | None = None) -> None:
    try:
        msg = report_failure(msg, code, as_json=as_json, debug=debug, data=data)
    except BrokenPipeError:
        stdout_gone()
    raise Exit(f"error: {msg}", code=code)


def stdout_gone() -> None:
    """The reader of stdout went away (``autopod ... | head -1``): exit quietly, as a Unix tool does."""
    release_stdout()
    raise Exit(code=ExitCode.BROKEN_PIPE)


def render_members(done: tuple[list, str], as_json: bool) -> None:
    """A fleet task's ``(results, summary)``: a line per member and the summary, or one JSON list; exit 1
    if any member failed."""
    from ..core.fanout import render

    code = render(done[0], done[1], as_json=as_json)
    if code:
        exit_quietly(code)


def exit_quietly(code: int) -> None:
    """End the task with ``code`` after it already rendered its result (status checks)."""
    raise Exit(code=code)

"""The ``autopod`` console script: a quick path for ``comfy.status``, invoke for everything else.

``autopod comfy.status`` is what scripts poll, so it should cost little more
than starting Python and making one HTTP request. Loading invoke and every task
collection costs more than that request, so a plain ``comfy.status`` command
line (only the flags ``--pod P``, ``--no-tunnel``, ``--wait S``, ``--json``) is
answered here with the same library call, the same output and the same exit
codes as the invoke task. Anything else, including chains, ``--help`` and core
flags such as ``--debug``, goes to the full CLI (``autopod.cli``) unchanged.
"""

from __future__ import annotations

import os
import sys

_VALUE_FLAGS = {"--pod": "pod", "--wait": "wait"}
_BOOL_FLAGS = {"--no-tunnel": "no_tunnel", "--json": "json"}


def parse_comfy_status(argv: list[str]) -> dict | None:
    """The flags of a plain ``comfy.status`` command line, or None when the full CLI must handle it."""
    if not argv or argv[0] != "comfy.status":
        return None
    opts: dict = {"pod": None, "no_tunnel": False, "wait": None, "json": False}
    rest = list(argv[1:])
    while rest:
        tok = rest.pop(0)
        name, eq, value = tok.partition("=")
        if name in _BOOL_FLAGS and not eq:
            opts[_BOOL_FLAGS[name]] = True
        elif name in _VALUE_FLAGS:
            if not eq:
                if not rest or rest[0].startswith("-"):
                    return None  # let invoke word the error
                value = rest.pop(0)
            opts[_VALUE_FLAGS[name]] = value
        else:
            return None  # another task (a chain), help, or a flag we don't know
    return opts


def comfy_status_quick(opts: dict) -> int:
    """Run ``comfy.status`` like the task does (see ``autopod.tasks._base`` for the error contract)."""
    from .errors import AutopodError, ExitCode
    from .log import setup_logging

    debug = bool(os.environ.get("AUTOPOD_DEBUG"))
    setup_logging(debug=debug)
    try:
        from .comfy import comfy_status, parse_seconds, render_status
        from .ui import progress

        st = comfy_status(opts["pod"], no_tunnel=opts["no_tunnel"], wait=parse_seconds(opts["wait"]),
                          on_wait=progress)
        return render_status(st, as_json=opts["json"])
    except AutopodError as e:
        return _fail(str(e), int(e.exit_code), opts["json"], debug)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitCode.INTERRUPTED, opts["json"], debug)
    except Exception as e:  # a bug: one line, the traceback in the log
        return _fail(f"internal error: {type(e).__name__}: {e} (see the log, or rerun with --debug)",
                     ExitCode.FAILED, opts["json"], debug)


def _fail(msg: str, code: int, as_json: bool, debug: bool) -> int:
    from .output import report_failure

    print(f"error: {report_failure(msg, code, as_json=as_json, debug=debug)}", file=sys.stderr)
    return code


def main() -> None:
    opts = parse_comfy_status(sys.argv[1:])
    if opts is None:
        from .cli import main as cli_main

        cli_main()
        return
    sys.exit(comfy_status_quick(opts))

"""The ``autopod`` console script: a quick path for ``comfy.status``, ``comfy.run`` and the plain
listings (``pod.list``, ``volume.list``), invoke for everything else.

``autopod comfy.status`` is what scripts poll, and ``pod.list`` what a watch loop runs, so each
should cost little more than starting Python and making one HTTP request. A listing with at most
``--json`` is answered here by the library call and renderer its task uses. Loading invoke and every task
collection costs more than that request, so a plain ``comfy.status`` command
line (only the flags ``--pod P`` or the pod as a plain word, ``--no-tunnel``, ``--wait S``,
``--json``) is
answered here with the same library call, the same output and the same exit
codes as the invoke task. Anything else, including chains, ``--help``, core
flags such as ``--debug``, ``--flag=value`` forms, repeated flags and values that
are empty or not UTF-8, goes to the full CLI (``autopod.cli``) unchanged, so the
two can never disagree on an unusual command line.

``comfy.run`` is what a script calls once per image, so loading invoke and every task collection
was most of what one small run cost over a minimal script. A ``comfy.run`` line made only of its own
flags (``--flag value`` and bare switches, each non-repeatable one at most once) and workflow files
as plain words is answered here with the task's two calls (``comfy.spread.run_options`` and
``print_report``); anything else goes to the full CLI as above.
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
    seen: set[str] = set()
    rest = list(argv[1:])
    while rest:
        tok = rest.pop(0)
        if tok in seen:
            return None  # a repeated flag: the full CLI says so
        seen.add(tok)
        if tok in _BOOL_FLAGS:
            opts[_BOOL_FLAGS[tok]] = True
        elif tok in _VALUE_FLAGS:
            if not rest or not _plain_value(rest[0]):
                return None  # let the full CLI word the error
            opts[_VALUE_FLAGS[tok]] = rest.pop(0)
        elif "--pod" not in seen and _plain_value(tok) and "." not in tok:
            # `comfy.status flux`: the pod as a plain word. A word with a dot may name a task (a chain).
            seen.add("--pod")
            opts["pod"] = tok
        else:
            return None  # another task (a chain), help, --flag=value, or a flag we don't know
    return opts


def _plain_value(value: str) -> bool:
    """A value the fast path may take as is: non-empty, not flag-like, valid UTF-8."""
    if not value.strip() or value.startswith("-"):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# comfy.run's flags (see autopod.tasks.comfy.run): value flags, the repeatable ones among them, switches.
_RUN_VALUES = {"--workflow": "workflow", "--pod": "pod", "--fleet": "fleet", "--set": "set", "--input": "input",
               "--sweep": "sweep", "--repeat": "repeat", "--seed": "seed", "--job": "job", "--output-dir": "output_dir",
               "--output": "output", "--timeout": "timeout", "--max-queued": "max_queued", "--resume": "resume",
               "--then": "then", "--endpoint": "endpoint", "--object-info": "object_info"}
_RUN_LISTS = {"workflow", "set", "input", "sweep"}
_RUN_SWITCHES = {"--no-tunnel": "no_tunnel", "--previews": "previews", "--detach": "detach", "--dry-run": "dry_run",
                 "--pull-missing": "pull_missing", "--no-sheet": "no_sheet",
                 "--resubmit-unknown": "resubmit_unknown", "--json": "json"}
# A bare word starting with a collection's name may name a task (a chain): the full CLI decides.
_COLLECTIONS = ("pod.", "volume.", "model.", "tunnel.", "comfy.", "endpoint.", "sim.", "config.")


def parse_comfy_run(argv: list[str]) -> dict | None:
    """The flags of a plain ``comfy.run`` command line, or None when the full CLI must handle it."""
    if not argv or argv[0] != "comfy.run":
        return None
    opts: dict = {name: [] if name in _RUN_LISTS else None for name in _RUN_VALUES.values()}
    opts.update({name: False for name in _RUN_SWITCHES.values()})
    seen: set[str] = set()
    rest = list(argv[1:])
    while rest:
        tok = rest.pop(0)
        if tok in _RUN_SWITCHES:
            if tok in seen:
                return None
            opts[_RUN_SWITCHES[tok]] = True
        elif tok in _RUN_VALUES:
            name = _RUN_VALUES[tok]
            if (tok in seen and name not in _RUN_LISTS) or not rest or not _plain_value(rest[0]):
                return None  # repeated, or a missing or odd value: the full CLI words the error
            value = rest.pop(0)
            if name in _RUN_LISTS:
                opts[name].append(value)
            else:
                opts[name] = value
        elif _plain_value(tok) and not tok.startswith(_COLLECTIONS):
            opts["workflow"].append(tok)  # `comfy.run a.json b.json`
        else:
            return None  # a chain, help, --flag=value, a flag of another task, a core flag
        seen.add(tok)
    return opts


_LISTINGS = {"pod.list": "pods", "pod.ls": "pods", "volume.list": "volumes", "volume.ls": "volumes"}


def parse_listing(argv: list[str]) -> tuple[str, bool] | None:
    """(what, --json) for a plain ``pod.list`` or ``volume.list``, or None for the full CLI."""
    if argv and argv[0] in _LISTINGS and argv[1:] in ([], ["--json"]):
        return _LISTINGS[argv[0]], bool(argv[1:])
    return None


def comfy_status_quick(opts: dict) -> int:
    """Run ``comfy.status`` like the task does (see ``autopod.tasks._base`` for the error contract)."""

    def run() -> int:
        from .comfy.ops import comfy_status, parse_seconds, render_status
        from .core.ui import progress

        st = comfy_status(opts["pod"], no_tunnel=opts["no_tunnel"], wait=parse_seconds(opts["wait"]),
                          on_wait=progress)
        return render_status(st, as_json=opts["json"])

    return _quick(run, opts["json"])


def comfy_run_quick(opts: dict) -> int:
    """Run ``comfy.run`` like the task does: the same two calls, the same output and exit codes."""

    def run() -> int:
        from .comfy.spread import print_report, render, run_options

        flags = {k: v for k, v in opts.items() if k != "json"}
        report = render(run_options(**flags, debug=bool(os.environ.get("AUTOPOD_DEBUG"))))
        return print_report(report, as_json=opts["json"], dry_run=opts["dry_run"], detach=opts["detach"])

    return _quick(run, opts["json"])


def listing_quick(what: str, as_json: bool) -> int:
    """``pod.list`` or ``volume.list``, as their tasks run them."""

    def run() -> int:
        from .runpod.api import connect

        if what == "pods":
            from .runpod.records import render_list
            from .runpod.registry import list_pods

            render_list(list_pods(connect()), as_json=as_json)
        else:
            from .runpod.volumes import list_volumes, render_list

            render_list(list_volumes(connect()), as_json=as_json)
        return 0

    return _quick(run, as_json)


def _quick(run, as_json: bool) -> int:  # noqa: ANN001
    """The task contract (``autopod.tasks._base``) around a quick path: errors, signals, broken pipes."""
    from .core import signals
    from .core.errors import AutopodError, ExitCode, Interrupted
    from .core.log import setup_logging

    debug = bool(os.environ.get("AUTOPOD_DEBUG"))
    try:
        with signals.handling():
            setup_logging(debug=debug)
            if "AUTOPOD_WARM" in os.environ:
                from .core.warm import check_setting

                check_setting()
            code = run()
            sys.stdout.flush()
            return code
    except AutopodError as e:
        return _fail(str(e), int(e.exit_code), as_json, debug, e.data)
    except KeyboardInterrupt as e:
        sig = e if isinstance(e, Interrupted) else Interrupted()
        return _fail(sig.what, sig.exit_code, as_json, debug)
    except BrokenPipeError:
        return _stdout_gone()
    except Exception as e:  # a bug: one line, the traceback in the log
        return _fail(f"internal error: {type(e).__name__}: {e} (see the log, or rerun with --debug)",
                     ExitCode.FAILED, as_json, debug)


def _fail(msg: str, code: int, as_json: bool, debug: bool, data: dict | None = None) -> int:
    from .core.output import report_failure

    try:
        print(f"error: {report_failure(msg, code, as_json=as_json, debug=debug, data=data)}", file=sys.stderr)
    except BrokenPipeError:
        return _stdout_gone()
    return code


def _stdout_gone() -> int:
    from .core.errors import ExitCode
    from .core.output import release_stdout

    release_stdout()
    return ExitCode.BROKEN_PIPE


def main() -> None:
    argv = sys.argv[1:]
    if _is_quick(argv):
        from .core import warm

        code = warm.run(argv)  # in a child of the warm server, when there is one
        if code is not None:
            sys.exit(code)
    sys.exit(dispatch(argv))


def _is_quick(argv: list[str]) -> bool:
    return parse_listing(argv) is not None or parse_comfy_run(argv) is not None or \
        parse_comfy_status(argv) is not None


def dispatch(argv: list[str]) -> int:
    """Run the command line here: a quick path, or the full CLI."""
    listing = parse_listing(argv)
    if listing is not None:
        return listing_quick(*listing)
    run = parse_comfy_run(argv)
    if run is not None:
        return comfy_run_quick(run)
    opts = parse_comfy_status(argv)
    if opts is None:
        from .cli import main as cli_main

        cli_main()
        return 0
    return comfy_status_quick(opts)

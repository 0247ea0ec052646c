"""Lets ``invoke pod.create ...`` work in a checkout; the installed command is ``autopod``."""

from invoke import Exit, ParseError, Program

from autopod.cli import ns  # noqa: F401  (invoke looks for `ns`)
from autopod.errors import ExitCode

# invoke's own Program exits 1 on a bad flag; the contract says 2 (bad input).
# This file is loaded before task arguments are parsed, so wrapping here covers them.
_parse_tasks = Program.parse_tasks


def _parse_tasks_usage_exit(self):  # type: ignore[no-untyped-def]
    try:
        _parse_tasks(self)
    except ParseError as e:
        raise Exit(f"error: {e}", code=ExitCode.USAGE) from None


Program.parse_tasks = _parse_tasks_usage_exit

"""Lets ``invoke pod.create ...`` work in a checkout; the installed command is ``autopod``.

invoke's own Program runs here, so the parts of autopod's contract that belong to the
command line (usage errors exit 2 with a JSON document under ``--json``, one JSON
document for a chain, Ctrl-C is 130) are patched in. This file is loaded before task
arguments are parsed, so the patches cover them. invoke's core flags that configure
shell commands (``--dry``, ``--warn-only``, ...) would do nothing for autopod's tasks,
so they are refused rather than silently ignored.
"""

from invoke import Program

from autopod.cli import RUN_FLAGS, contract, ns  # noqa: F401  (invoke looks for `ns`)

_parse_tasks = Program.parse_tasks
_parse_cleanup = Program.parse_cleanup
_execute = Program.execute
_run = Program.run


def _parse_tasks_contract(self):  # type: ignore[no-untyped-def]
    contract.parse_tasks(self, lambda: _parse_tasks(self), refuse=RUN_FLAGS)


def _parse_cleanup_contract(self):  # type: ignore[no-untyped-def]
    contract.parse_cleanup(self, lambda: _parse_cleanup(self))


def _execute_contract(self):  # type: ignore[no-untyped-def]
    contract.execute(self, lambda: _execute(self))


def _run_contract(self, argv=None, exit=True):  # type: ignore[no-untyped-def]
    import sys

    try:
        _run(self, argv, exit)
    except KeyboardInterrupt:
        if exit:
            sys.exit(130)


Program.parse_tasks = _parse_tasks_contract
Program.parse_cleanup = _parse_cleanup_contract
Program.execute = _execute_contract
Program.run = _run_contract

"""The ``autopod`` command: the task namespace shipped as a binary, the way fabric ships ``fab``.

``tasks.py`` at the repository root re-exports ``ns`` so that ``invoke pod.list``
works in a checkout too.
"""

from __future__ import annotations

from invoke import Collection, Exit, ParseError, Program

from . import __version__
from .errors import ExitCode
from .tasks import comfy, pod, sim, tunnel, volume
from .tasks._base import set_debug

ns = Collection()
for _module in (pod, volume, tunnel, comfy, sim):
    ns.add_collection(Collection.from_module(_module))


class AutopodProgram(Program):
    """Invoke's Program with autopod's exit codes: bad flags are usage errors (2), not failures (1)."""

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as e:
            raise Exit(f"error: {e}", code=ExitCode.USAGE) from None
        set_debug(bool(self.args.debug.value))

    def parse_cleanup(self) -> None:
        try:
            super().parse_cleanup()
        except ParseError as e:
            raise Exit(f"error: {e}", code=ExitCode.USAGE) from None


def make_program() -> AutopodProgram:
    """A fresh Program (tests create one per run)."""
    return AutopodProgram(namespace=ns, version=__version__, name="autopod", binary="autopod",
                          binary_names=["autopod"])


program = make_program()


def main() -> None:
    program.run()

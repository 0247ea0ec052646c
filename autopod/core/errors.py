"""Errors and exit codes.

Library code raises these; the task decorator (``autopod.tasks._base.command``)
maps them to exit codes in one place, so tasks never call ``sys.exit``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # success or no-op
    FAILED = 1  # an operation failed, or a status is not ready
    USAGE = 2  # bad input or configuration
    HANGUP = 129  # SIGHUP: 128 + the signal, as shells report it
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    BROKEN_PIPE = 141  # the reader of stdout went away (SIGPIPE), as for any Unix tool
    TERMINATED = 143  # SIGTERM (timeout, CI cancellation, kill)


class AutopodError(Exception):
    """Base class; ``exit_code`` says how the CLI exits.

    ``data`` goes into the ``--json`` failure document beside ``msg`` (e.g. the pod an
    interrupted create made, so a script learns its id and state).
    """

    exit_code: int = ExitCode.FAILED

    def __init__(self, msg: str = "", *, exit_code: int | None = None, data: dict | None = None):
        super().__init__(msg)
        if exit_code is not None:
            self.exit_code = exit_code
        self.data = data or {}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP. A KeyboardInterrupt, so every cleanup written for Ctrl-C
    (stop the pod being waited for) runs for all three; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int = 2):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def what(self) -> str:
        return {1: "hung up (SIGHUP)", 2: "interrupted", 15: "terminated (SIGTERM)"}.get(self.signum, "interrupted")


class UsageError(AutopodError):
    """Bad input or configuration (exit 2)."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """Missing or invalid configuration: API key, SSH key, inventory, state file."""


class BadSetting(ConfigError):
    """A setting in the environment that is set but says nothing (empty, or blanks around it)."""


class NotFound(AutopodError):
    """A named resource does not exist."""


class Conflict(AutopodError):
    """The world is in a state that forbids the operation (e.g. volume in use)."""


class AuthError(UsageError):
    """The API key is missing or rejected."""


class RemoteError(AutopodError):
    """The remote API answered with an error."""


class TransientError(RemoteError):
    """A remote failure worth retrying: 5xx, 429, connection errors, garbled bodies."""


class NoCapacity(RemoteError):
    """RunPod has no instances for the requested GPU/cloud/data center."""


class BudgetExceeded(AutopodError):
    """A new or resumed pod would spend more than the daily budget (exit 1; ``--force`` overrides)."""


class TunnelError(AutopodError):
    """An SSH tunnel could not be started, reached or verified."""


class HostKeyMismatch(TunnelError):
    """A pinned SSH host key changed: refuse, like OpenSSH does."""


class ComfyError(AutopodError):
    """ComfyUI answered with an error or could not be reached."""


class Timeout(AutopodError):
    """A wait ran out of time."""

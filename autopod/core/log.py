"""Logging: a rotating file under AUTOPOD_HOME/logs, warnings on stderr, secrets redacted.

Library modules use ``logging.getLogger(__name__)``; only ``setup_logging`` adds
handlers (the CLI and the tunnel daemon call it).
"""

from __future__ import annotations

import logging
import os
import sys

from .errors import BadSetting, ConfigError
from .paths import log_dir, open_private

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (API keys, passphrases)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            msg = record.getMessage()
            clean = redact(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


class PrivateRotatingFileHandler(logging.FileHandler):
    """A rotating log only its owner can read (0600), that never fails on odd characters.

    Rotates as ``logging.handlers.RotatingFileHandler`` does (``autopod.log`` becomes ``autopod.log.1``,
    that one ``.2``, and so on, the oldest dropped) before a record would take the file past
    ``max_bytes``; written here because importing ``logging.handlers`` (pickle, queue, struct) cost a
    small ``comfy.run`` about 5 ms for this class alone."""

    def __init__(self, path: os.PathLike | str, *, max_bytes: int, backups: int):
        self.max_bytes, self.backups = max_bytes, backups
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self):  # type: ignore[no-untyped-def]
        fd = open_private(self.baseFilename)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._full(record):
                self._rotate()
        except Exception:  # noqa: BLE001 (logging never fails the command)
            self.handleError(record)
            return
        super().emit(record)

    def _full(self, record: logging.LogRecord) -> bool:
        if self.max_bytes <= 0 or self.backups <= 0 or not os.path.isfile(self.baseFilename):
            return False  # no limit, nowhere to rotate to, or /dev/null and the like
        if self.stream is None:
            self.stream = self._open()
        line = self.format(record) + self.terminator
        end = self.stream.seek(0, os.SEEK_END)  # other processes append to the same log
        return end > 0 and end + len(line.encode("utf-8", "backslashreplace")) > self.max_bytes

    def _rotate(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        for i in range(self.backups - 1, 0, -1):
            older = f"{self.baseFilename}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{self.baseFilename}.{i + 1}")
        os.replace(self.baseFilename, self.baseFilename + ".1")
        self.stream = self._open()


def private_log_handler(path: os.PathLike | str, *, max_bytes: int = LOG_MAX_BYTES,
                        backups: int = LOG_BACKUPS) -> logging.Handler:
    return PrivateRotatingFileHandler(path, max_bytes=max_bytes, backups=backups)


_configured_for: tuple | None = None


def setup_logging(*, debug: bool = False, stderr: bool = True, name: str = "autopod") -> None:
    """Idempotent per (AUTOPOD_HOME, debug): a chained invocation runs several tasks in one process.

    An unusable AUTOPOD_HOME or log folder costs the log file, never the command: the
    command itself then says what is wrong with the folder.
    """
    global _configured_for
    key = (os.environ.get("AUTOPOD_HOME"), debug, stderr, name)
    if _configured_for == key:
        return
    _configured_for = key
    logging.raiseExceptions = False  # a closed stderr or a full disk must not print logging tracebacks
    root = logging.getLogger("autopod")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    redactor = RedactingFilter()
    try:
        fh = private_log_handler(log_dir() / "autopod.log")
        fh.setFormatter(logging.Formatter(f"%(asctime)s %(process)d {name} %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.DEBUG)
        fh.addFilter(redactor)
        root.addHandler(fh)
    except (OSError, ConfigError) as e:  # an unwritable home must not stop a read-only command
        if stderr and not isinstance(e, BadSetting):  # a bad AUTOPOD_HOME: the command's own error says so
            print(f"warning: cannot write the autopod log: {e}", file=sys.stderr)
    if stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if debug else "warning: %(message)s"))
        sh.setLevel(logging.DEBUG if debug else logging.WARNING)
        sh.addFilter(redactor)
        root.addHandler(sh)

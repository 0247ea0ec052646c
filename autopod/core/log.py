"""Logging: a rotating file under AUTOPOD_HOME/logs, warnings on stderr, secrets redacted.

Library modules use ``logging.getLogger(__name__)``; only ``setup_logging`` adds
handlers (the CLI and the tunnel daemon call it).
"""

from __future__ import annotations

import logging
import logging.handlers
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


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log only its owner can read (0600), that never fails on odd characters."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = open_private(self.baseFilename)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


def private_log_handler(path: os.PathLike | str, *, max_bytes: int = LOG_MAX_BYTES,
                        backups: int = LOG_BACKUPS) -> logging.Handler:
    return PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")


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

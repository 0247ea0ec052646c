"""Logging: a rotating file under AUTOPOD_HOME/logs, warnings on stderr, secrets redacted.

Library modules use ``logging.getLogger(__name__)``; only ``setup_logging`` adds
handlers (the CLI and the tunnel daemon call it).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from .paths import log_dir

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


_configured_for: tuple | None = None


def setup_logging(*, debug: bool = False, stderr: bool = True, name: str = "autopod") -> None:
    """Idempotent per (log folder, debug): a chained invocation runs several tasks in one process."""
    global _configured_for
    key = (str(log_dir()), debug, stderr, name)
    if _configured_for == key:
        return
    _configured_for = key
    root = logging.getLogger("autopod")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    redactor = RedactingFilter()
    try:
        fh = logging.handlers.RotatingFileHandler(
            log_dir() / "autopod.log", maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
        )
        fh.setFormatter(logging.Formatter(f"%(asctime)s %(process)d {name} %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.DEBUG)
        fh.addFilter(redactor)
        root.addHandler(fh)
    except OSError as e:  # an unwritable home must not stop a read-only command
        print(f"warning: cannot write the autopod log: {e}", file=sys.stderr)
    if stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if debug else "warning: %(message)s"))
        sh.setLevel(logging.DEBUG if debug else logging.WARNING)
        sh.addFilter(redactor)
        root.addHandler(sh)

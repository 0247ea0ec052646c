"""Progress on stderr (stdout is reserved for data), mirrored into the log."""

from __future__ import annotations

import logging
import sys

from .output import safe_text

log = logging.getLogger("autopod.progress")


def progress(msg: str) -> None:
    """One human line on stderr, e.g. "waiting for pod abc (RUNNING, ssh not yet reachable)"."""
    log.info(msg)
    try:
        print(safe_text(msg), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed (a hung-up terminal): progress is optional
        pass


def warn(msg: str) -> None:
    logging.getLogger("autopod").warning(msg)

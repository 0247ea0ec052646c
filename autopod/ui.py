"""Progress on stderr (stdout is reserved for data), mirrored into the log."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("autopod.progress")


def progress(msg: str) -> None:
    """One human line on stderr, e.g. "waiting for pod abc (RUNNING, ssh not yet reachable)"."""
    log.info(msg)
    print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    logging.getLogger("autopod").warning(msg)

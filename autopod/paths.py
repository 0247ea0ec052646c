"""Where autopod keeps its files. Everything lives under ``AUTOPOD_HOME``."""

from __future__ import annotations

import os
from pathlib import Path


def autopod_home() -> Path:
    """``$AUTOPOD_HOME`` or ``~/.autopod``, created private (0700) on first use."""
    home = Path(os.environ.get("AUTOPOD_HOME") or "~/.autopod").expanduser()
    if not home.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
    return home


def state_path(name: str) -> Path:
    return autopod_home() / name


def log_dir() -> Path:
    d = autopod_home() / "logs"
    d.mkdir(exist_ok=True)
    return d

"""Parsing of numeric flags, shared by every entry point (kept import-light for the comfy fast path).

invoke types a flag from its default value, so a flag whose default is None
arrives as the string the user typed; None or "" means it was not given.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError


def number(value: Any, flag: str, kind: type = float, *, minimum: float | None = None) -> Any:
    """``value`` as ``kind`` (int or float), or None when not given; bad input is a UsageError (exit 2)."""
    if value is None or value == "":
        return None
    try:
        n = kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise UsageError(f"{flag} must be {what}, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {n}")
    return n

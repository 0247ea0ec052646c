"""Checks for flag values, shared by every entry point (kept import-light for the comfy fast path).

invoke types a flag from its default value, so a flag whose default is None
arrives as the string the user typed. None means it was not given; an empty
string was given empty (``--pod "$UNSET"``), which the task decorator refuses
before any task runs. Numbers are read strictly: ``1_0``, ``+2``, `` 2 ``,
``nan`` and ``inf`` are mistakes, not numbers.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import UsageError

_INT = re.compile(r"^-?[0-9]+$")
_FLOAT = re.compile(r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$")
# Control characters (C0, DEL, C1): they corrupt tables and logs and no RunPod name needs them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def number(value: Any, flag: str, kind: type = float, *, minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """``value`` as ``kind`` (int or float), or None when not given; bad input is a UsageError (exit 2)."""
    if value is None:
        return None
    what = "a whole number" if kind is int else "a number"
    if isinstance(value, bool):
        raise UsageError(f"{flag} must be {what}, got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    else:
        text = str(value)
        if not (_INT if kind is int else _FLOAT).match(text):
            raise UsageError(f"{flag} must be {what}, got {text!r}")
        n = kind(text)
    if kind is int and isinstance(n, float):
        if not n.is_integer():
            raise UsageError(f"{flag} must be {what}, got {value!r}")
        n = int(n)
    if isinstance(n, float) and not math.isfinite(n):
        raise UsageError(f"{flag} must be a finite number, got {value!r}")
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        raise UsageError(f"{flag} must be {_range(minimum, maximum)}, got {n}")
    return kind(n)


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    return f"at least {lo:g}" if lo is not None else f"at most {hi:g}"


def text(value: Any, flag: str, *, max_len: int = 128, pattern: re.Pattern[str] | None = None,
         expected: str = "") -> str:
    """A name as RunPod and a terminal accept it: non-empty, printable, at most ``max_len`` characters."""
    s = str(value)
    if not s.strip():
        raise UsageError(f"{flag} must not be empty")
    if _CONTROL.search(s):
        raise UsageError(f"{flag} must not contain control characters (newline, tab, escape), got {s!r}")
    if len(s) > max_len:
        raise UsageError(f"{flag} must be at most {max_len} characters, got {len(s)}")
    if pattern is not None and not pattern.match(s):
        raise UsageError(f"invalid {flag} {s!r}" + (f": expected {expected}" if expected else ""))
    return s


def decodable(value: str, flag: str) -> str:
    """Bytes that are not UTF-8 reach Python as lone surrogates; refuse them before they reach a log or an API."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{flag} is not valid UTF-8 text: {value.encode('utf-8', 'backslashreplace').decode()!r}") from None
    return value

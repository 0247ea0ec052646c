"""Checks for flag values, shared by every entry point (kept import-light for the comfy fast path).

invoke types a flag from its default value, so a flag whose default is None
arrives as the string the user typed. None means it was not given; an empty
string was given empty (``--pod "$UNSET"``), which the task decorator refuses
before any task runs. Numbers are read strictly: ``1_0``, ``+2``, `` 2 ``,
``nan`` and ``inf`` are mistakes, not numbers.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from typing import Any

from .errors import BadSetting, UsageError

MAX_WAIT_S = 7 * 86400  # the longest --timeout or --wait: a week is longer than any render or boot
_INT = re.compile(r"^-?[0-9]+$")
_FLOAT = re.compile(r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$")
# Control characters (C0, DEL, C1): they corrupt tables and logs and no RunPod name needs them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def number(value: Any, flag: str, kind: type = float, *, minimum: float, maximum: float) -> Any:
    """``value`` as ``kind`` (int or float), or None when not given; bad input is a UsageError (exit 2).

    Both bounds are required: a number the user gives always has a finite range (``--timeout 1e99``
    is a mistake, and a sleep that long overflows)."""
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
        raise UsageError(f"{flag} must be {_range(minimum, maximum)}, got {value if isinstance(value, str) else n}")
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


def env_setting(name: str, *, secret: bool = False, blanks_ok: bool = False) -> str | None:
    """A setting from the environment (``AUTOPOD_RUNPOD_API``, ``RUNPOD_API_KEY``, ...), None when unset.

    As for a flag, a value that says nothing is bad input (exit 2), never "use the default": set but
    empty, or (unless ``blanks_ok``) with blanks around it, which a default would otherwise hide
    (``AUTOPOD_RUNPOD_API=" rest"``). A ``secret`` is never shown."""
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip():
        raise BadSetting(f"{name} is set but empty; unset it to use the default")
    shown = "" if secret else f": {value.encode('utf-8', 'backslashreplace').decode()!r}"
    if not blanks_ok and value != value.strip():
        raise BadSetting(f"{name} has blanks around its value{shown}; set it without them")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadSetting(f"{name} is not valid UTF-8 text{shown}") from None
    return value


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def duration_seconds(text: str) -> float | None:
    """``90m``, ``2h``, ``1d``, ``1h30m``, ``45s`` as seconds; None when ``text`` is not a duration."""
    m = _DURATION.match(text.strip().lower())
    if not m or not any(m.groups()):
        return None
    days, hours, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    return days * 86400 + hours * 3600 + mins * 60 + secs


def point_in_time(text: str) -> _dt.datetime | None:
    """An ISO-8601 date and time (``2026-11-30T08:00``, ``...Z``, ``...+01:00``), or None. Without a
    zone it is this machine's local time."""
    try:
        when = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if "T" not in text and " " not in text.strip():
        return None  # a bare date: midnight is rarely what anyone means by "stop after"
    return when if when.tzinfo else when.astimezone()


def deadline(value: Any, flag: str, now: float, *, max_s: float = 365 * 86400) -> float:
    """``value`` (a duration from ``now``, or an ISO-8601 time) as a Unix time in the future;
    anything else is a UsageError (exit 2)."""
    text = str(value)
    secs = duration_seconds(text)
    if secs is not None:
        when = now + secs
    else:
        point = point_in_time(text)
        if point is None:
            raise UsageError(f"{flag} must be a duration like 90m, 2h, 1d or 1h30m, or an ISO-8601 time like "
                             f"2026-11-30T08:00, got {text!r}")
        when = point.timestamp()
    if when <= now:
        raise UsageError(f"{flag} {text!r} is not in the future")
    if when - now > max_s:
        raise UsageError(f"{flag} {text!r} is more than {max_s / 86400:g} days away")
    return when

"""Reading a file the user named: a workflow, a job file, a ``--set X=@file`` value, an inventory, settings.

Every such read goes through :func:`read_bytes` (or :func:`read_text`), so each is bounded the same way:
only a regular file is read, so the read ends (a named pipe with no writer would block for ever, and
``/dev/zero`` never ends); and at most ``limit`` bytes, so memory stays bounded whatever the file claims.
The kind is checked with ``stat`` before opening, so no device is ever opened, and again with ``fstat``
on what was opened (with ``O_NONBLOCK``, which cannot hang) in case the path was swapped in between.
Whatever is wrong is one line naming the file, raised as ``error`` (a UsageError: exit 2).

:func:`parse_json` reads JSON as JSON is written: ``NaN`` and ``Infinity`` (which Python's json accepts
and no JSON parser elsewhere does) and duplicate keys are errors naming the file and the line.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import UsageError

MiB = 1024 * 1024
MAX_SMALL_FILE = 1 * MiB  # ~/.runpod/config.toml, an SSH public key, a line on stdin
_KINDS = ((stat.S_ISDIR, "it is a folder"), (stat.S_ISFIFO, "it is a named pipe (FIFO), not a regular file"),
          (stat.S_ISCHR, "it is a device, not a regular file"), (stat.S_ISBLK, "it is a device, not a regular file"),
          (stat.S_ISSOCK, "it is a socket, not a regular file"))
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n} bytes"


def not_regular(mode: int) -> str | None:
    """Why a file of this ``st_mode`` cannot be read as a user's file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((why for test, why in _KINDS if test(mode)), "it is not a regular file")


def regular_file(path: str | Path, *, what: str, error: type[UsageError] = UsageError) -> tuple[Path, os.stat_result]:
    """``path`` (``~`` expanded) and its ``stat``, when it names a regular file (a link to one counts)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{p}: cannot read the {what}: no such file") from None
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror or e}") from None
    why = not_regular(st.st_mode)
    if why:
        raise error(f"{p}: cannot read the {what}: {why}")
    return p, st


def read_bytes(path: str | Path, *, what: str, limit: int,
               error: type[UsageError] = UsageError) -> tuple[Path, bytes]:
    """The bytes of the regular file ``path``, at most ``limit`` of them; ``what`` names it in errors."""
    p, st = regular_file(path, what=what, error=error)
    if st.st_size > limit:
        raise error(f"{p}: the {what} is too large ({st.st_size} bytes; at most {_size(limit)})")
    try:
        fd = os.open(p, _OPEN_FLAGS)
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror or e}") from None
    try:
        why = not_regular(os.fstat(fd).st_mode)  # swapped for something else since the stat
        if why:
            raise error(f"{p}: cannot read the {what}: {why}")
        chunks, total = [], 0
        while True:
            block = os.read(fd, min(MiB, limit + 1 - total))
            if not block:
                return p, b"".join(chunks)
            chunks.append(block)
            total += len(block)
            if total > limit:  # it grew since the stat
                raise error(f"{p}: the {what} is too large (more than {_size(limit)})")
    except OSError as e:
        raise error(f"{p}: cannot read the {what}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def decode(raw: bytes, where: str | Path, *, what: str, error: type[UsageError] = UsageError) -> str:
    """UTF-8 text (a byte-order mark dropped); anything else is an error naming the line and byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(f"{where}:{line}: the {what} is not UTF-8 text (byte {raw[e.start]:#04x}); "
                    "save it as UTF-8") from None


def read_text(path: str | Path, *, what: str, limit: int,
              error: type[UsageError] = UsageError) -> tuple[Path, str]:
    """:func:`read_bytes`, decoded as UTF-8."""
    p, raw = read_bytes(path, what=what, limit=limit, error=error)
    return p, decode(raw, p, what=what, error=error)


def read_line(stream: Any, *, what: str, limit: int = 4096, error: type[UsageError] = UsageError) -> str:
    """One line of UTF-8 text from the binary ``stream`` (stdin's buffer), without its newline; a line
    longer than ``limit`` bytes is an error, so an endless stream (``< /dev/zero``) cannot fill memory."""
    raw = stream.readline(limit + 1)
    if len(raw) > limit and not raw.endswith(b"\n"):
        raise error(f"{what}: the line is longer than {limit} bytes")
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text") from None


class _NotJsonNumber(Exception):
    pass


_CONSTANT_OR_STRING = re.compile(r'"|-?Infinity|NaN')


def parse_json(text: str, where: str | Path, *, error: type[UsageError] = UsageError) -> Any:
    """``text`` as strict JSON: no ``NaN``/``Infinity``, no key twice in one object; errors say
    ``where:line``."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:  # json keeps the last silently; two nodes with one id are a broken file
                raise error(f"{where}: duplicate key {k!r} in the JSON")
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise _NotJsonNumber(name)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise error(f"{where}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    except _NotJsonNumber as e:
        pos = _constant_at(text)
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise error(f"{where}:{line}: not valid JSON: {e} is not a number JSON has (column {col}); "
                    "write a finite number") from None
    except RecursionError:
        raise error(f"{where}: the JSON is nested too deeply") from None


def _constant_at(text: str) -> int:
    """Where the first ``NaN``/``Infinity`` outside a string is (json's hook is not told)."""
    pos = 0
    while True:
        m = _CONSTANT_OR_STRING.search(text, pos)
        if m is None:
            return 0
        if m.group() != '"':
            return m.start()
        try:
            pos = json.decoder.scanstring(text, m.end())[1]
        except ValueError:
            return 0

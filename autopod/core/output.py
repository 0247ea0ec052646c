"""Rendering: tables or one JSON document on stdout; the ok/changed contract.

stdout carries data only, so ``autopod pod.list --json | jq`` always works;
progress and warnings go to stderr (``autopod.ui``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

# C0 and C1 control characters: a pod named "a\x1b[2J" must not clear the user's screen.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_collected: list[Any] | None = None


def safe_text(text: Any) -> str:
    """``text`` for a terminal: control characters shown as escapes (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


@dataclass
class Outcome:
    """Ansible-style result of a mutating operation.

    ``changed`` is True when autopod acted, False when the world already matched.
    ``data`` is merged into the JSON document under ``key``.
    """

    changed: bool
    msg: str
    key: str | None = None
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "changed" if self.changed else "ok"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"changed": self.changed, "status": self.status, "msg": self.msg}
        if self.key:
            doc[self.key] = self.data
        doc.update(self.extra)
        return doc


def dump_json(doc: Any) -> None:
    """Print one JSON document, or keep it for the chain's single document (:func:`collect_json`)."""
    if _collected is not None:
        _collected.append(doc)
        return
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def release_stdout() -> None:
    """The reader of stdout went away (``autopod ... | head -1``): point stdout at /dev/null so
    Python's final flush stays quiet; the caller exits 141, as a Unix tool killed by SIGPIPE does."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def collect_json() -> None:
    """A chain under ``--json`` prints one document: each task's document is kept until
    :func:`flush_json` prints them as one array, in task order."""
    global _collected
    _collected = []


def flush_json() -> None:
    global _collected
    docs, _collected = _collected, None
    if docs is not None:
        dump_json(docs)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns`` is (key, HEADER). Numbers are never reparsed: ids like "007" stay."""
    body = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    headers = [h for _, h in columns]
    plain = _plain_table(body, headers)
    if plain is not None:
        return plain
    from tabulate import tabulate  # deferred: it and wcwidth cost 20-50 ms, as much as a small run's request

    return tabulate(body, headers=headers, tablefmt="simple", missingval="-", disable_numparse=True)


def _plain_table(body: list[list[Any]], headers: list[str]) -> str | None:
    """tabulate's "simple" table, as ``table`` asks for it, when every cell and header is printable ASCII
    text or a number (one column per character, nothing to measure); else None. Left-aligned, cells
    stripped, a missing cell "-", each column as wide as its widest cell or its header plus two, no
    spaces at the ends of lines."""
    if not all(h.isascii() and h.isprintable() for h in headers):
        return None
    cells: list[list[str]] = [list(headers)]  # headers as they are: tabulate does not strip them
    for row in body:
        out = []
        for v in row:
            if v is None:
                text = "-"
            elif isinstance(v, str):
                text = v.strip()
            elif isinstance(v, int) and not isinstance(v, bool):
                text = str(v)
            else:
                return None  # floats, dates, anything tabulate formats its own way
            if not (text.isascii() and text.isprintable()):
                return None  # wide or combining characters, tabs: tabulate measures them
            out.append(text)
        cells.append(out)
    if not body or any(len(r) != len(headers) for r in cells):
        return None
    widths = [max([len(headers[i]) + 2] + [len(r[i]) for r in cells[1:]]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v: Any) -> Any:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return safe_text(", ".join(str(x) for x in v)) or None
    return safe_text(v) if isinstance(v, str) else v


def emit_rows(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, as_json: bool, empty: str = "") -> None:
    if as_json:
        dump_json(list(rows))
        return
    if not rows and empty:
        print(empty, file=sys.stderr)
        return
    print(table(rows, columns))


def emit_object(obj: dict[str, Any], *, as_json: bool, fields: Iterable[tuple[str, str]] | None = None) -> None:
    """One record: JSON as is, or a two-column KEY/VALUE table for people."""
    if as_json:
        dump_json(obj)
        return
    from tabulate import tabulate

    pairs = fields or [(k, k.upper()) for k in obj]
    print(tabulate([[h, _cell(obj.get(k))] for k, h in pairs], tablefmt="plain", missingval="-", disable_numparse=True))


def report_failure(msg: str, code: int, *, as_json: bool, debug: bool, data: dict[str, Any] | None = None) -> str:
    """The failure half of the task contract, shared by every entry point: the traceback goes to
    the log (and stderr with --debug), ``--json`` still gets one document. Returns the redacted
    message for the caller's ``error: ...`` line."""
    import logging
    import traceback

    from .log import redact

    msg = redact(msg)
    logging.getLogger("autopod.cli").debug("failed (exit %d): %s\n%s", code, msg, traceback.format_exc())
    if debug:
        traceback.print_exc()
    if as_json:
        dump_json({"changed": False, "failed": True, "msg": msg, "exit_code": code, **(data or {})})
    return safe_text(msg)


def emit_outcome(outcome: Outcome, *, as_json: bool) -> None:
    """``changed: msg`` / ``ok: msg`` for people, the outcome document for scripts."""
    if as_json:
        dump_json(outcome.to_dict())
    else:
        print(f"{outcome.status}: {safe_text(outcome.msg)}")

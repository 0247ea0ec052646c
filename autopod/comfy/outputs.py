"""Where a prompt's outputs land: every kind ComfyUI lists, named by a template, streamed to disk,
never overwriting a file, with a sidecar JSON per prompt that says how they were made."""

from __future__ import annotations

import json
import os
import re
import string
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UsageError

DEFAULT_TEMPLATE = "{job}/{node}_{filename}"
FIELDS = {"job", "batch", "index", "prompt_id", "node", "title", "kind", "filename", "subfolder", "type", "pod"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._ +=@,()\[\]-]")


def check_template(template: str) -> str:
    """A template names only known fields and stays a relative path: bad ones exit 2 before anything runs."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UsageError(f"invalid output template {template!r}: {e}") from None
    unknown = {n.split(".")[0].split("[")[0] for n in names} - FIELDS
    if unknown or any(n != n.split(".")[0].split("[")[0] for n in names if n):
        raise UsageError(f"output template {template!r} uses unknown fields {sorted(unknown) or sorted(names)}; "
                         f"known: {', '.join('{' + f + '}' for f in sorted(FIELDS))}")
    if "{filename}" not in template:
        raise UsageError(f"output template {template!r} must contain {{filename}} (a prompt can make several files)")
    if template.startswith("/") or ".." in Path(template).parts:
        raise UsageError(f"output template {template!r} must be a relative path inside --output-dir")
    return template


def output_items(outputs: dict[str, Any], *, previews: bool = False) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(node_id, kind, item) for every file a history entry lists, whatever the kind: images, gifs,
    videos, audio, custom save nodes' files. ``temp`` previews only with ``previews``."""
    for node_id, node_out in (outputs or {}).items():
        if not isinstance(node_out, dict):
            continue
        for kind, items in node_out.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                    continue
                if item.get("type") == "temp" and not previews:
                    continue
                yield str(node_id), str(kind), item


def _safe(part: Any) -> str:
    """One path component from server or user data: no separators, no dot-dot, no control characters."""
    text = _UNSAFE.sub("_", str(part)).strip(" .")
    return text or "_"


def target_path(root: Path, template: str, **fields: Any) -> Path:
    """``root/template`` with every field made a safe path component; always inside ``root``."""
    values = {k: _safe(v) for k, v in fields.items()}
    values["filename"] = _safe(os.path.basename(str(fields.get("filename", ""))))
    rel = Path(template.format_map(values))
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise UsageError(f"output path {rel} leaves the output folder {root}")
    return path


def save_stream(path: Path, write: Any, *, fsync: bool = False) -> tuple[Path, int, str]:
    """Write a file through ``write(fileobj) -> (bytes, sha256)`` into ``path``'s folder, then give it
    ``path``'s name, or ``name (1).ext`` and so on if that exists: an existing file is never replaced,
    and no half-written file ever carries the final name. Outputs are not fsynced (as neither curl nor
    a browser does: for a 1 GB video it would double the time); the sha256 in the sidecar tells a
    damaged file after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".autopod-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            size, digest = write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        final = _link_unique(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final, size, digest


def _link_unique(tmp: Path, path: Path) -> Path:
    for n in range(0, 10_000):
        cand = path if n == 0 else path.with_name(f"{path.stem} ({n}){path.suffix}")
        try:
            os.link(tmp, cand)  # fails if the name exists, even when another process just made it
            return cand
        except FileExistsError:
            continue
    raise UsageError(f"too many files named like {path}")


def write_sidecar(path: Path, doc: dict[str, Any]) -> Path:
    """The sidecar JSON beside a prompt's outputs (a new name if one exists: never overwritten)."""
    data = (json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n").encode()

    def write(f: Any) -> tuple[int, str]:
        import hashlib

        f.write(data)
        return len(data), hashlib.sha256(data).hexdigest()

    return save_stream(path, write, fsync=True)[0]

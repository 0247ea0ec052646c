"""Where a prompt's outputs land: every kind ComfyUI lists, named by a template, streamed to disk,
never overwriting a file, with a sidecar JSON per prompt that says how they were made."""

from __future__ import annotations

import hashlib
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
# Linux and macOS hold 255 bytes a name and 4096 a path; room is kept for " (9999)" on a clash.
_NAME_ROOM = 255 - 8
_PATH_MAX = 4096 - 16


def check_template(template: str) -> str:
    """A template names only known fields and stays a relative path: bad ones exit 2 before anything runs.
    Every field is text (the index too: ``{index:0>4}`` pads it), so a spec that text rejects is refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UsageError(f"invalid output template {template!r}: {e}") from None
    names = {f for _, f, _, _ in parsed if f is not None}
    unknown = {n.split(".")[0].split("[")[0] for n in names} - FIELDS
    if unknown or any(n != n.split(".")[0].split("[")[0] for n in names if n):
        raise UsageError(f"output template {template!r} uses unknown fields {sorted(unknown) or sorted(names)}; "
                         f"known: {', '.join('{' + f + '}' for f in sorted(FIELDS))}")
    # The field itself, not the text "{filename}" that "{{filename}}" makes: a prompt can make several files.
    if "filename" not in names:
        raise UsageError(f"output template {template!r} must contain {{filename}} (a prompt can make several files)")
    if template.startswith("/") or ".." in Path(template).parts:
        raise UsageError(f"output template {template!r} must be a relative path inside --output-dir")
    try:
        bare = template.format_map({f: "x" for f in FIELDS})  # what the template makes on its own
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise UsageError(f"invalid output template {template!r}: {e} (every field is text: "
                         f"{{index:0>4}} pads the index)") from None
    for part in Path(bare).parts:
        if len(os.fsencode(part)) > _NAME_ROOM:
            raise UsageError(f"output template {template!r} makes file or folder names of at least "
                             f"{len(os.fsencode(part))} bytes; the file system holds {_NAME_ROOM}")
    if len(os.fsencode(bare)) > _PATH_MAX // 2:
        raise UsageError(f"output template {template!r} makes paths of at least {len(os.fsencode(bare))} bytes")
    return template


def check_destination(root: Path, template: str, samples: list[dict[str, Any]]) -> None:
    """Exit 2, before anything is sent, when outputs could not be saved: ``root`` is not a folder this
    process can write (a file, /proc, no permission, a read-only file system), or a folder the template
    names for a planned prompt is a file. ``samples`` are each planned prompt's fields as known now."""
    _check_writable_folder(root)
    base, checked = root.resolve(), set()
    for fields in samples:
        path = target_path(root, template, **fields)
        if len(os.fsencode(str(path))) > _PATH_MAX:
            raise UsageError(f"output path {str(path)[:60]}... is {len(os.fsencode(str(path)))} bytes long; "
                             f"the file system holds {_PATH_MAX}")
        for parent in reversed(path.parents):
            if parent in checked or base not in parent.parents:
                continue
            checked.add(parent)
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"outputs would go into {parent}, which is a file, not a folder")


def _check_writable_folder(root: Path) -> None:
    """``root`` (made if missing, as the run will) can hold new files: tried, not guessed from mode bits,
    which say nothing about /proc, read-only mounts or root's rights."""
    import errno

    try:
        if root.exists() and not root.is_dir():
            raise UsageError(f"--output-dir {root} is not a folder")
        probe = root
        while not probe.exists():  # the nearest existing folder: the run would make the rest
            probe = probe.parent
        if not probe.is_dir():
            raise UsageError(f"--output-dir {root}: {probe} is not a folder")
        tmp = tempfile.mkdtemp(prefix=".autopod-probe-", dir=probe)
        try:
            fd, name = tempfile.mkstemp(prefix=".autopod-probe-", dir=tmp)
            os.close(fd)
            os.unlink(name)
        finally:
            os.rmdir(tmp)
    except UsageError:
        raise
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        if e.errno in (errno.EACCES, errno.EPERM):
            reason = "permission denied"
        raise UsageError(f"--output-dir {root} cannot hold the outputs: {reason}") from None


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


def _fit(part: str) -> str:
    """A path component the file system can hold: one longer than ``_NAME_ROOM`` bytes keeps its start
    and its extension, with a hash of the whole in between, so the same name always gives the same file."""
    raw = os.fsencode(part)
    if len(raw) <= _NAME_ROOM:
        return part
    stem, dot, ext = part.rpartition(".")
    if not dot or len(os.fsencode(ext)) > 16:
        stem, ext = part, ""
    tag = "~" + hashlib.sha256(raw).hexdigest()[:12]
    tail = (("." + ext) if ext else "")
    room = _NAME_ROOM - len(tag) - len(os.fsencode(tail))
    head = os.fsencode(stem)[:room].decode("utf-8", "ignore")  # never half a character
    return head + tag + tail


def render(template: str, fields: dict[str, Any]) -> Path:
    """The relative path ``template`` makes of ``fields``, every field a safe path component."""
    values = {k: _safe(v) for k, v in fields.items()}
    values["filename"] = _safe(os.path.basename(str(fields.get("filename", ""))))
    return Path(template.format_map(values))


def target_path(root: Path, template: str, **fields: Any) -> Path:
    """``root/template`` with every field made a safe path component; always inside ``root``. A component
    too long for the file system (a server's long file name) is shortened deterministically by ``_fit``."""
    rel = Path(*[_fit(p) for p in render(template, fields).parts])
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
            # mkstemp makes the file 0600; a file the user asked for gets the mode their umask gives,
            # as with curl -o or comfy-cli (state and logs stay 0600: they are not made here).
            os.fchmod(f.fileno(), 0o666 & ~process_umask())
            size, digest = write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        final = _link_unique(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final, size, digest


_UMASK: int | None = None


def process_umask() -> int:
    """This process's umask, read without changing it: ``os.umask`` must set it to read it, which would
    race with a fleet's threads creating files. Linux shows it in /proc; elsewhere it is read once."""
    global _UMASK
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


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

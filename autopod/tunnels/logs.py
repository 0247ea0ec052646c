"""Per-tunnel logs: each tunnel logs to a file of its own, rotated by size, so an error quotes only
that tunnel's lines."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..core.paths import log_dir
from .targets import HOST_PREFIX

LOG_MAX_BYTES = 1024 * 1024
LOG_BACKUPS = 2
_LOG_RECORD = re.compile(r"^\S+ \S+ \d+ \S+ (?P<level>[A-Z]+) \S+: (?P<msg>.*)$")  # see log_format()


def tunnel_log_path(target_id: str) -> Path:
    """``logs/tunnel-<id>.log``; an id with characters unfit for a file name gets a hash to stay unique."""
    host = target_id.startswith(HOST_PREFIX)
    name = target_id[len(HOST_PREFIX):] if host else target_id
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    if safe != name or safe.startswith("."):
        safe += "-" + hashlib.sha256(target_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return log_dir() / f"tunnel-{'host-' if host else ''}{safe}.log"


def log_format() -> str:
    return "%(asctime)s %(process)d tunneld %(levelname)s %(name)s: %(message)s"


def log_tail(target_id: str, start: tuple[int, int], n: int = 3) -> str:
    """The last warnings and raw output (a traceback) of the daemon spawned when the log was at
    ``start`` (inode, size): only its own lines, also when the log was rotated meanwhile."""
    path = tunnel_log_path(target_id)
    none = f"no details (see {path})"
    text = ""
    for part in (Path(f"{path}.1"), path):  # a rotation moved our start into path.1
        try:
            with open(part, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino == start[0]:
                    f.seek(start[1])
                elif part != path:
                    continue  # not the file we started in: older lines
                text += f.read().decode("utf-8", "replace")
        except OSError:
            continue
    lines = []
    for line in text.splitlines():
        m = _LOG_RECORD.match(line)
        if m and m["level"] in ("DEBUG", "INFO"):
            continue
        if m:
            lines.append(m["msg"])
        elif line.strip() and not line[0].isspace() and not line.startswith("Traceback "):
            lines.append(line.strip())  # raw output; of a traceback only its last line, the error
    return " / ".join(lines[-n:]) or none

"""JSON state files under AUTOPOD_HOME, shared safely between processes.

Every change is read-modify-write under an exclusive ``filelock`` lock and lands
through ``os.replace`` of a fsynced temporary file, so concurrent autopod
processes (scripts, parallel shells, tunnel daemons) never lose an entry and a
reader never sees half a file. A file that does not parse is never overwritten:
it is copied aside and reported, and the user decides what to do with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError
from .paths import state_path

LOCK_TIMEOUT_S = 30.0


class StateFile:
    """A JSON object on disk. ``read()`` for a snapshot, ``update()`` to change it."""

    def __init__(self, path: Path | str, *, lock_timeout: float = LOCK_TIMEOUT_S):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._lock: Any = None  # a filelock.FileLock, made on first update()

    @classmethod
    def named(cls, name: str) -> "StateFile":
        return cls(state_path(name))

    def read(self) -> dict[str, Any]:
        # Writers replace the file atomically, so an unlocked read sees a whole version.
        return self._load()

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Lock, load, let the caller mutate the dict, then write it back atomically.

        If the body raises, nothing is written.
        """
        # Imported here: read-only commands (comfy.status on a live tunnel) never lock.
        from filelock import FileLock, Timeout as LockTimeout

        if self._lock is None:
            self._lock = FileLock(str(self.path) + ".lock", timeout=self.lock_timeout)
        try:
            with self._lock:
                data = self._load()
                yield data
                self._write(data)
        except LockTimeout:
            raise ConfigError(
                f"state file {self.path} is locked by another autopod process "
                f"(waited {self.lock_timeout:.0f}s); remove {self.path}.lock if no autopod runs"
            ) from None

    def _load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("top level is not a JSON object")
        except ValueError as e:
            backup = self._backup(raw)
            raise ConfigError(
                f"state file {self.path} is corrupt ({e}); a copy is kept at {backup}. "
                f"Fix or remove {self.path} and run again"
            ) from None
        return data

    def _backup(self, raw: bytes) -> Path:
        import hashlib

        # Content-addressed, so repeated runs against the same bad file keep one copy.
        digest = hashlib.sha256(raw).hexdigest()[:12]
        backup = self.path.with_name(f"{self.path.name}.corrupt-{digest}")
        if not backup.exists():
            backup.write_bytes(raw)
            backup.chmod(0o600)
        return backup

    def _write(self, data: dict[str, Any]) -> None:
        import tempfile  # (and hashlib above) imported on use: read-only commands stay quick

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

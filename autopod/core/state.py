"""JSON state files under AUTOPOD_HOME, shared safely between processes.

Every change is read-modify-write under an exclusive ``filelock`` lock and lands
through ``os.replace`` of a fsynced temporary file, so concurrent autopod
processes (scripts, parallel shells, tunnel daemons) never lose an entry and a
reader never sees half a file. A file that does not parse, or whose content has
the wrong shape (each file names a ``validate`` function), is never
overwritten: it is copied aside and reported, and the user decides what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError, Conflict
from .paths import autopod_home, state_path

LOCK_TIMEOUT_S = 30.0
PRIVATE = 0o600


class StateFile:
    """A JSON object on disk. ``read()`` for a snapshot, ``update()`` to change it.

    ``validate(data)`` raises ValueError (or TypeError) when the parsed object has the
    wrong shape; the file then counts as corrupt, like one that does not parse.
    """

    def __init__(self, path: Path | str, *, lock_timeout: float = LOCK_TIMEOUT_S,
                 validate: Callable[[dict[str, Any]], None] | None = None):
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.validate = validate
        self._lock: Any = None  # a filelock.FileLock, made on first update()

    @classmethod
    def named(cls, name: str, validate: Callable[[dict[str, Any]], None] | None = None) -> "StateFile":
        return cls(state_path(name), validate=validate)

    def read(self) -> dict[str, Any]:
        # Writers replace the file atomically, so an unlocked read sees a whole version.
        return self._load()

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Lock, load, let the caller mutate the dict, then write it back atomically.

        If the body raises, nothing is written.
        """
        from filelock import Timeout as LockTimeout

        if self._lock is None:
            self._lock = private_lock(str(self.path) + ".lock", self.lock_timeout)
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
        except PermissionError as e:
            raise ConfigError(f"cannot write {e.filename or self.path}: permission denied "
                              f"(check the owner and mode of {self.path.parent})") from None

    def _load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            raise ConfigError(f"state file {self.path} is a folder, not a file; move it away and run again") from None
        except PermissionError:
            raise ConfigError(f"cannot read state file {self.path}: permission denied") from None
        except OSError as e:
            raise ConfigError(f"cannot read state file {self.path}: {e.strerror or e}") from None
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("top level is not a JSON object")
            if self.validate is not None:
                self.validate(data)
        except (ValueError, TypeError) as e:
            backup = self._backup(raw)
            raise CorruptState(self.path, str(e), backup) from None
        return data

    def _backup(self, raw: bytes) -> Path | None:
        # Content-addressed, so repeated runs against the same bad file keep one copy.
        digest = hashlib.sha256(raw).hexdigest()[:12]
        backup = self.path.with_name(f"{self.path.name}.corrupt-{digest}")
        try:
            if not backup.exists():
                backup.write_bytes(raw)
                backup.chmod(PRIVATE)
        except OSError:  # a read-only home: the original stays untouched, which is what matters
            return None
        return backup

    def _write(self, data: dict[str, Any]) -> None:
        write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def set_aside(self) -> Path | None:
        """Move a corrupt file out of the way (``sim.stop`` does, after saying so). Returns the backup."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        backup = self._backup(raw)
        if backup is not None:
            self.path.unlink()
        return backup


class CorruptState(ConfigError):
    """A state file that does not parse or has the wrong shape; ``backup`` holds a copy of it."""

    def __init__(self, path: Path, why: str, backup: Path | None):
        kept = f"; a copy is kept at {backup}" if backup else ""
        super().__init__(f"state file {path} is corrupt ({why}){kept}. Fix or remove {path} and run again")
        self.path = path
        self.backup = backup


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600: a reader never sees half a file, and
    nobody else can read it (state, settings, the RunPod key file)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PRIVATE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_lock(path: str, timeout: float) -> Any:
    """A filelock whose lock file only the user can read (AUTOPOD_HOME is private)."""
    from filelock import FileLock

    return FileLock(path, timeout=timeout, mode=PRIVATE)


def lock_path(kind: str, key: str) -> Path:
    """AUTOPOD_HOME/locks/<kind>-<hash of key>.lock (the folder is made, private)."""
    folder = autopod_home() / "locks"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {folder}: {e.strerror or e}") from None
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return folder / f"{kind}-{digest}.lock"


@contextlib.contextmanager
def exclusive(kind: str, key: str, *, timeout: float, what: str) -> Iterator[None]:
    """Hold AUTOPOD_HOME/locks/<kind>-<hash of key>.lock: one autopod process at a time does
    ``what`` for ``key`` (e.g. "create pod flux"), whatever the API answers meanwhile."""
    path = lock_path(kind, key)
    busy = Conflict(f"another autopod process is still busy to {what} (waited {timeout:.0f}s); "
                    "try again when it has finished")
    fd = _flock(path, timeout)
    if fd is None:
        raise busy
    if fd >= 0:
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    from filelock import Timeout as LockTimeout

    try:
        with private_lock(str(path), timeout):
            yield
    except LockTimeout:
        raise busy from None


def _flock(path: Path, timeout: float) -> int | None:
    """A descriptor holding an exclusive ``flock`` on ``path`` (made 0600), waiting up to ``timeout``;
    None when it is still held then; -1 where ``flock`` is missing (no ``fcntl``, a file system without
    it), for the caller to use filelock. The same lock as filelock's on Unix (it takes ``flock`` too),
    without importing filelock (10-30 ms), which a small ``comfy.run`` would otherwise pay for this lock
    alone."""
    try:
        import fcntl
    except ImportError:
        return -1
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE)
    deadline = time.monotonic() + timeout
    delay = 0.005
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    return -1
            left = deadline - time.monotonic()
            if left <= 0:
                os.close(fd)
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


@dataclass
class Holder:
    """The process that holds a :class:`Claim`: its pid, what it does, and since when."""

    pid: int | None
    what: str
    since: float | None = None

    def describe(self) -> str:
        who = f"autopod process {self.pid}" if self.pid else "another autopod process"
        when = time.strftime(", since %H:%M:%S", time.localtime(self.since)) if self.since else ""
        return f"{who} ({self.what}{when})"

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": self.what, "since": self.since}


class Claim:
    """One process at a time does something for a key, without waiting: a second one is told who does.

    An OS lock (``flock``) on AUTOPOD_HOME/locks/<kind>-<hash of key>.lock: it goes with its process,
    also one killed with kill -9, and is never inherited by the processes autopod starts (the file is
    opened close-on-exec). The holder writes its pid and what it does into the file once it holds it,
    and contenders only read it: that is what filelock does not offer (its 3.x releases truncate the
    file on every attempt). The file stays: unlinking a lock file another process has open splits
    the lock in two.
    """

    def __init__(self, kind: str, key: str):
        self.path = lock_path(kind, key)
        self._fd: int | None = None

    def take(self, what: str) -> Holder | None:
        """Hold it and return None; or, when another process holds it, return that process."""
        import fcntl

        if self._fd is not None:
            raise RuntimeError(f"{self.path} is held already")
        fd = _open_lock(self.path)
        holder = None
        for _ in range(CLAIM_READ_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # not contention
                    os.close(fd)
                    raise ConfigError(f"cannot lock {self.path}: {e.strerror or e}") from None
                # The holder writes its record right after it took the lock: until then the file is empty
                # or still names an earlier holder that has ended. Read again for a moment.
                holder = _read_holder(fd)
                if holder is not None and holder.pid is not None and _alive(holder.pid):
                    break
                time.sleep(CLAIM_READ_PAUSE_S)
                continue
            record = json.dumps({"pid": _own_pid(), "what": what, "since": time.time()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            self._fd = fd
            return None
        os.close(fd)
        return holder if holder is not None and holder.pid is not None and _alive(holder.pid) \
            else Holder(None, "its record cannot be read")

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a contender reading now finds no stale holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def holder(self) -> Holder | None:
        """Who the file names (no lock is touched: a hint, e.g. for tests; ``take`` is the truth)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


CLAIM_READ_TRIES = 20
CLAIM_READ_PAUSE_S = 0.05


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE)
    except PermissionError:
        raise ConfigError(f"cannot open {path}: permission denied (check the owner and mode of "
                          f"{path.parent})") from None
    except OSError as e:
        raise ConfigError(f"cannot open {path}: {e.strerror or e}") from None


def _read_holder(fd: int) -> Holder | None:
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    since = doc.get("since")
    return Holder(doc["pid"], str(doc.get("what") or "autopod"), since if isinstance(since, (int, float)) else None)


def _own_pid() -> int:
    """The pid the user knows for this command: its own process's, also when it runs warm (core.warm)."""
    if os.environ.get("AUTOPOD_WARM_CHILD"):
        from .warm import client_pid

        return client_pid()
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


# -- shape checks shared by the state files ------------------------------------------------------------


def require(cond: bool, why: str) -> None:
    if not cond:
        raise ValueError(why)


def check_fields(entry: Any, where: str, types: dict[str, type | tuple[type, ...]]) -> None:
    """``entry`` is an object whose listed fields, where present and not null, have these types."""
    require(isinstance(entry, dict), f"{where} is not an object")
    for key, want in types.items():
        v = entry.get(key)
        if v is None:
            continue
        ok = isinstance(v, want) and not (isinstance(v, bool) and want in (int, float, (int, float)))
        require(ok, f"{where}.{key} has the wrong type ({type(v).__name__})")

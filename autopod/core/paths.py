"""Where autopod keeps its files. Everything lives under ``AUTOPOD_HOME``, private to the user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError
from .flags import env_setting

PRIVATE_DIR = 0o700


def autopod_home() -> Path:
    """``$AUTOPOD_HOME`` or ``~/.autopod``: created private (0700), tightened to 0700 when it exists.

    A path that is not a folder, or one autopod cannot create, is a ConfigError (exit 2) naming it.
    """
    home = Path(env_setting("AUTOPOD_HOME") or "~/.autopod").expanduser()
    return private_dir(home, "AUTOPOD_HOME")


def private_dir(path: Path, what: str) -> Path:
    """``path`` as a folder only its owner can enter (made if missing, tightened if looser)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            path.chmod(PRIVATE_DIR)
        except FileExistsError:  # a dangling symlink or a race with a file
            raise ConfigError(f"{what} {path} exists but is not a folder") from None
        except OSError as e:
            raise ConfigError(f"cannot create {what} {path}: {e.strerror or e}") from None
        return path
    except OSError as e:
        raise ConfigError(f"cannot use {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a folder; point {what} elsewhere or move that file away")
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
        try:
            path.chmod(stat.S_IMODE(st.st_mode) & ~0o077)  # others must not read keys, logs or state
        except OSError:
            pass  # a read-only file system: reading still works, writes will say why they fail
    return path


def open_private(path: Path | str, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """A file descriptor on ``path``, a file only its owner can read: made 0600, and tightened to 0600
    when an older autopod left it looser (logs hold pod ids, addresses and commands)."""
    fd = os.open(path, flags, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        pass  # not ours to change (another owner, a read-only mount): writing still works or says why not
    return fd


def state_path(name: str) -> Path:
    return autopod_home() / name


def log_dir() -> Path:
    return private_dir(autopod_home() / "logs", "the log folder")

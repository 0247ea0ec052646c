"""The editor's user data: settings and files under ``user/default/``, with ComfyUI's answers.

ComfyUI (single-user, as a pod runs it) keeps each user's settings in
``user/default/comfy.settings.json`` and the editor's saved workflows, subgraph blueprints and
other files under ``user/default/``; ``/settings`` and ``/userdata`` read and write them. The
stand-in keeps them the same way under its root, so what the editor saves in a simulated pod
survives a reload of the page and a restart of the pod.

Every path comes from a request and must stay inside ``user/default/`` (403 otherwise), as in
ComfyUI. A fresh stand-in answers ``/settings`` as the recorded fresh server did: the installed
editor version and the first-run tutorial marked done (else the editor opens on its template
browser).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

SETTINGS_FILE = "comfy.settings.json"
FIRST_SETTINGS = {"Comfy.InstalledVersion": "1.27.10", "Comfy.TutorialCompleted": True}


class UserData:
    def __init__(self, root: Path):
        self.base = Path(root).resolve() / "user"
        self.user_root = self.base / "default"
        self._lock = threading.Lock()
        if not (self.user_root / SETTINGS_FILE).exists():
            self.save_settings(dict(FIRST_SETTINGS))

    # -- paths -----------------------------------------------------------------------------------

    def path(self, name: str | None, *, create_dir: bool = True) -> Path | None:
        """The file ``name`` (URL-encoded or not) under the user's folder, or None if it would leave it."""
        path = self.user_root
        if name is not None:
            if "%" in name:
                name = unquote(name)
            if "\x00" in name:
                return None
            path = Path(os.path.abspath(self.user_root / name))
            if os.path.commonpath((self.user_root, path)) != str(self.user_root):
                return None
            if path != self.user_root and not _inside(self.user_root, path):
                return None  # a symlink out of the folder
        if create_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- settings --------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.user_root / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or damaged: ComfyUI answers {} (and logs the damage)
        return doc if isinstance(doc, dict) else {}

    def save_settings(self, settings: dict[str, Any]) -> None:
        self.user_root.mkdir(parents=True, exist_ok=True)
        _write(self.user_root / SETTINGS_FILE, json.dumps(settings, indent=4).encode())

    def update_settings(self, changes: dict[str, Any]) -> None:
        with self._lock:
            self.save_settings({**self.settings(), **changes})

    def users(self) -> dict[str, Any]:
        return {"storage": "server", "migrated": self.user_root.exists()}

    # -- files -----------------------------------------------------------------------------------

    def listing(self, query: dict[str, str]) -> tuple[int, Any]:
        """GET /userdata?dir=...&recurse=&full_info=&split=: (status, JSON body or text)."""
        directory = query.get("dir", "")
        if not directory:
            return 400, "Directory not provided"
        path = self.path(directory)
        if path is None:
            return 403, "Invalid directory"
        if not path.exists():
            return 404, "Directory not found"
        recurse = query.get("recurse", "").lower() == "true"
        full_info = query.get("full_info", "").lower() == "true"
        split = query.get("split", "").lower() == "true"
        pattern = os.path.join(glob.escape(str(path)), "**", "*") if recurse else os.path.join(
            glob.escape(str(path)), "*")
        out: list[Any] = []
        for full in glob.glob(pattern, recursive=recurse):
            if not os.path.isfile(full):
                continue
            if full_info:
                out.append(file_info(Path(full), path))
                continue
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            out.append([rel, *rel.split("/")] if split else rel)
        return 200, out

    def write(self, name: str, body: bytes, *, overwrite: bool, full_info: bool) -> tuple[int, Any]:
        path = self.path(name)
        if path is None:
            return 403, None
        with self._lock:
            if not overwrite and path.exists():
                return 409, "File already exists"
            try:
                _write(path, body)
            except OSError:
                return 400, None
        rel = os.path.relpath(path, self.user_root)
        return 200, file_info(path, self.user_root) if full_info else rel

    def delete(self, name: str) -> int:
        path = self.path(name, create_dir=False)
        if path is None:
            return 403
        if not path.is_file():
            return 404
        path.unlink()
        return 204

    def move(self, source: str, dest: str, *, overwrite: bool, full_info: bool) -> tuple[int, Any]:
        src = self.path(source, create_dir=False)
        dst = self.path(dest)
        if src is None or dst is None:
            return 403, None
        with self._lock:
            if not src.exists():
                return 404, None
            if not overwrite and dst.exists():
                return 409, "File already exists"
            shutil.move(src, dst)
        return 200, file_info(dst, self.user_root) if full_info else os.path.relpath(dst, self.user_root)


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": os.path.relpath(path, relative_to).replace(os.sep, "/"), "size": st.st_size,
            "modified": st.st_mtime, "created": st.st_ctime}  # seconds, as ComfyUI sends them


def _inside(base: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a reload that reads the file mid-write sees the old one."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)

"""The stand-in's input, output and temp folders, and ComfyUI's rules for names inside them.

Every path built from a request or a workflow is resolved (symlinks included) and must stay
inside its folder; anything else is refused. File names follow ComfyUI: ``{prefix}_00001_.png``
with the counter taken from what is already on disk, ``name (1).png`` for a different upload
under a taken name, ``name.png [output]`` annotations for LoadImage and /view.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
import time
from pathlib import Path

from .images import save_png, solid

TYPES = ("input", "output", "temp")
class OutsideFolder(ValueError):
    pass


def inside(base: Path, path: Path) -> bool:
    base = base.resolve()
    try:
        path.resolve().relative_to(base)
        return True
    except ValueError:
        return False


class Folders:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.input = self.root / "input"
        self.output = self.root / "output"
        self.temp = self.root / "temp"
        for d in (self.input, self.output):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.temp, ignore_errors=True)  # ComfyUI wipes its temp folder at start-up
        self.temp.mkdir(parents=True, exist_ok=True)
        example = self.input / "example.png"
        if not example.exists():  # ComfyUI ships input/example.png; LoadImage's list starts with it
            with example.open("wb") as f:
                save_png(f, solid(64, 64, 0x808080))

    def dir_for(self, kind: str | None) -> Path | None:
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind or "")

    # -- names -----------------------------------------------------------------------------------

    def annotated(self, name: str) -> tuple[str, Path | None]:
        """``"a.png [output]"`` -> ("a.png", output folder); no annotation -> (name, None)."""
        for kind in TYPES:
            suffix = f" [{kind}]"
            if name.endswith(suffix):
                return name[:-len(suffix)], self.dir_for(kind)
        return name, None

    def annotated_path(self, name: str, default: str = "input") -> Path:
        base_name, folder = self.annotated(name)
        folder = folder or self.dir_for(default)
        assert folder is not None
        path = folder / base_name
        if not inside(folder, path):
            raise OutsideFolder(f"{name!r} is outside the {default} folder")
        return path

    def exists_annotated(self, name: str) -> bool:
        try:
            return self.annotated_path(name).is_file()
        except OutsideFolder:
            return False

    def input_images(self) -> list[str]:
        """What LoadImage offers: image files directly in the input folder, sorted."""
        names = []
        for entry in os.scandir(self.input):
            if entry.is_file() and (mimetypes.guess_type(entry.name)[0] or "").startswith("image/"):
                names.append(entry.name)
        return sorted(names)

    def save_path(self, filename_prefix: str, base: Path, width: int = 0, height: int = 0
                  ) -> tuple[Path, str, int, str]:
        """ComfyUI's get_save_image_path: (folder, file name stem, next counter, subfolder)."""
        if "%" in filename_prefix:
            now = time.localtime()
            for key, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year),
                               ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                               ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                               ("%second%", f"{now.tm_sec:02}")):
                filename_prefix = filename_prefix.replace(key, str(value))
        norm = os.path.normpath(filename_prefix)
        subfolder, filename = os.path.dirname(norm), os.path.basename(norm)
        folder = base / subfolder
        if not inside(base, folder) or not filename:
            raise OutsideFolder("**** ERROR: Saving image outside the output folder is not allowed.\n"
                                f" full_output_folder: {os.path.abspath(folder)}\n         output_dir: {base}")
        counter = 1
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            names = []
        n = len(filename)
        for name in names:
            # ComfyUI: "{filename}_{digits}_..." counts; the character after the stem must be "_"
            if os.path.normcase(name[:n]) == os.path.normcase(filename) and name[n:n + 1] == "_":
                try:
                    counter = max(counter, int(name[n + 1:].split("_")[0]) + 1)
                except ValueError:
                    pass
        return folder, filename, counter, subfolder

    def vhs_counter(self, folder: Path, filename: str) -> int:
        """VideoHelperSuite's counter: the highest ``{filename}_{digits}...`` plus one."""
        import re

        matcher = re.compile(f"{re.escape(filename)}_(\\d+)\\D*\\..+", re.IGNORECASE)
        best = 0
        for name in os.listdir(folder):
            m = matcher.fullmatch(name)
            if m:
                best = max(best, int(m.group(1)))
        return best + 1

    def newest_first(self, kind: str) -> list[str]:
        """The files directly in the input, output or temp folder, newest first (the editor's file lists)."""
        folder = self.dir_for(kind)
        assert folder is not None
        entries = [e for e in os.scandir(folder) if e.is_file()]
        return [e.name for e in sorted(entries, key=lambda e: -e.stat().st_mtime)]

    # -- /view and /upload -----------------------------------------------------------------------

    def view_path(self, filename: str, kind: str | None = "output", subfolder: str | None = None
                  ) -> tuple[int, Path | None]:
        """(status, path) for GET /view, with ComfyUI's answers: 400 bad name or type, 403 subfolder escape,
        404 nothing there."""
        name, folder = self.annotated(filename)
        if not name:
            return 400, None
        if name[0] == "/" or ".." in name:
            return 400, None
        if folder is None:
            folder = self.dir_for(kind)  # "" or an unknown type: 400, as in ComfyUI
        if folder is None:
            return 400, None
        if subfolder:
            sub = folder / subfolder
            if not inside(folder, sub):
                return 403, None
            folder = sub
        path = folder / os.path.basename(name)
        if not inside(self.root, path) or not path.is_file():
            return 404, None
        return 200, path

    def upload(self, filename: str, data: bytes, *, kind: str | None, subfolder: str, overwrite: str | None,
               content: bytes | None = None, write: bool = True) -> tuple[int, dict | None]:
        """POST /upload/image: (status, {name, subfolder, type}). ``data`` is what was uploaded (compared with a
        file under the same name); ``content``, when given, is what gets written instead (/upload/mask)."""
        kind = kind or "input"
        base = self.dir_for(kind)
        if base is None:
            raise KeyError(kind)  # ComfyUI fails with an unbound variable here: a 500
        if not filename:
            return 400, None
        folder = base / os.path.normpath(subfolder or "")
        path = folder / filename
        if not inside(base, path) or not inside(base, folder):
            return 400, None
        folder.mkdir(parents=True, exist_ok=True)
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            i = 1
            digest = hashlib.sha256(data).digest()
            while path.exists():
                if path.is_file() and hashlib.sha256(path.read_bytes()).digest() == digest:
                    return 200, {"name": filename, "subfolder": subfolder, "type": kind}  # same bytes: same name
                filename = f"{stem} ({i}){ext}"
                path = folder / filename
                i += 1
        if write:
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data if content is None else content)
            os.replace(tmp, path)
        return 200, {"name": filename, "subfolder": subfolder, "type": kind}

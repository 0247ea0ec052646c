"""The stand-in's model folders: listed the way ComfyUI 0.3.64 lists them.

Folders and their paths come from ``autopod.models.folders`` (ComfyUI's ``folder_paths``); a
simulated pod with a network volume keeps them on the volume, as the official image does
(``/workspace/runpod-slim/ComfyUI/models``), so every pod that attaches it sees the same files.

Listings follow ComfyUI: recursive, ``sub/name`` for a file in a subfolder, only the model
extensions (a ``.part`` file is not a model), hidden files left out of ``/experiment/models``.
They are cached per folder until the modification time of one of its directories changes,
exactly ComfyUI's rule: that is what lets a file written while ComfyUI runs show up in
``/models/{folder}`` and ``/object_info`` without a restart, and what a download must trigger
(creating or renaming a file changes its directory's mtime).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ...models.folders import FOLDERS, LOADER_INPUTS, PT_EXTENSIONS


# ComfyUI also lists models saved by its own save nodes, from these folders under output/ (after the rest).
OUTPUT_PATHS = {"checkpoints": "checkpoints", "loras": "loras", "vae": "vae", "text_encoders": "clip",
                "diffusion_models": "diffusion_models"}


class ModelFolders:
    def __init__(self, models_dir: Path, base_dir: Path):
        self.models_dir = Path(models_dir)
        self.base_dir = Path(base_dir)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[list[tuple[str, int]], dict[str, float]]] = {}
        self.scans = 0  # how often a folder was read from disk (the cache's misses), for tests
        for key, subs in FOLDERS.items():
            for sub in subs:
                (self.models_dir / sub).mkdir(parents=True, exist_ok=True)

    def paths(self) -> dict[str, list[str]]:
        """``/internal/folder_paths``: every folder key and its absolute paths, in order."""
        out = {}
        for key, subs in FOLDERS.items():
            out[key] = [str(self.base_dir / "custom_nodes")] if key == "custom_nodes" else \
                [str(self.models_dir / s) for s in subs]
            if key in OUTPUT_PATHS:
                out[key].append(str(self.base_dir / "output" / OUTPUT_PATHS[key]))
        return out

    def experiment(self) -> list[dict[str, Any]]:
        """``/experiment/models``: the folders the editor may download into (not configs, custom_nodes)."""
        return [{"name": k, "folders": v} for k, v in self.paths().items() if k not in ("configs", "custom_nodes")]

    def _scan(self, key: str) -> tuple[list[tuple[str, int]], dict[str, float]]:
        """(relative name, path index) of every model file, and the mtime of every directory seen."""
        files: list[tuple[str, int]] = []
        dirs: dict[str, float] = {}
        for index, base in enumerate(self.paths()[key]):
            if not os.path.isdir(base):
                continue
            for root, subdirs, names in os.walk(base, followlinks=True):
                subdirs[:] = [d for d in subdirs if d != ".git"]
                dirs[root] = os.path.getmtime(root)
                for n in names:
                    if os.path.splitext(n)[1].lower() in PT_EXTENSIONS:
                        files.append((os.path.relpath(os.path.join(root, n), base).replace(os.sep, "/"), index))
        self.scans += 1
        return sorted(files), dirs

    def _files(self, key: str) -> list[tuple[str, int]]:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                fresh = all(os.path.isdir(d) and os.path.getmtime(d) == t for d, t in cached[1].items())
                grown = any(os.path.isdir(b) and b not in cached[1] for b in self.paths()[key])
                if fresh and not grown:
                    return cached[0]
            self._cache[key] = self._scan(key)
            return self._cache[key][0]

    def filenames(self, key: str) -> list[str] | None:
        """``/models/{folder}``: the names ComfyUI would list; None for a folder it does not know."""
        if key not in FOLDERS or key == "custom_nodes":
            return None
        seen, out = set(), []
        for name, _ in self._files(key):
            if name not in seen:
                seen.add(name)
                out.append(name)
        return out

    def items(self, key: str) -> list[dict[str, Any]] | None:
        """``/experiment/models/{folder}``: name, pathIndex, modified, created and size of each (hidden ones left out)."""
        if key not in FOLDERS or key in ("configs", "custom_nodes"):
            return None
        out = []
        bases = self.paths()[key]
        for name, index in self._files(key):
            if any(part.startswith(".") for part in name.split("/")):
                continue
            try:
                st = os.stat(os.path.join(bases[index], name))
            except OSError:
                continue
            out.append({"name": name, "pathIndex": index, "modified": st.st_mtime, "created": st.st_ctime,
                        "size": st.st_size})
        return out

    def fill(self, class_type: str, info: dict[str, Any] | None) -> dict[str, Any] | None:
        """A loader's object_info entry with its model lists filled from the folders (a copy)."""
        if info is None:
            return None
        wanted = {inp: folder for (cls, inp), folder in LOADER_INPUTS.items() if cls == class_type}
        if not wanted:
            return info
        new = {**info, "input": {sec: dict(v) for sec, v in (info.get("input") or {}).items()}}
        for section in ("required", "optional"):
            for name, folder in wanted.items():
                spec = (new["input"].get(section) or {}).get(name)
                if not isinstance(spec, list) or not spec:
                    continue
                names = self.filenames(folder) or []
                if isinstance(spec[0], list):  # [[choices], {options}]: the recorded extras (pixel_space) come last
                    extras = [c for c in spec[0] if c not in names]
                    new["input"][section][name] = [names + extras, *spec[1:]]
                elif spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
                    new["input"][section][name] = ["COMBO", {**spec[1], "options": list(names)}]
        return new

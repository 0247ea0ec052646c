"""The ComfyUI editor's files, served at ``/`` as ComfyUI serves them.

The editor is the PyPI package ``comfyui-frontend-package`` (autopod's ``editor`` extra pins the
version the simulated ComfyUI 0.3.64 requires). ComfyUI serves its ``static/`` folder at ``/``
with aiohttp's static route: ``index.html`` at ``/`` with no-cache headers, every other file by
its path, a missing file as 404 with an empty body, a folder as 403, and nothing outside the
folder (a path that leaves it is 404). Without the package ``/`` is a short page that says how
to get it, and the rest of the stand-in works as before.
"""

from __future__ import annotations

import html
import importlib.util
import os
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote

PACKAGE = "comfyui-frontend-package"
VERSION = "1.27.10"  # what ComfyUI 0.3.64 requires (its system_stats' required_frontend_version)

# What aiohttp's FileResponse sends on the recorded server (Python 3.11's default table); anything
# else, fonts and source maps included, is application/octet-stream there too.
CONTENT_TYPES = {
    ".html": "text/html", ".js": "application/javascript", ".mjs": "application/javascript",
    ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon", ".txt": "text/plain", ".wasm": "application/wasm",
}
FALLBACK_TYPE = "application/octet-stream"
# ComfyUI's cache middleware: scripts, styles and index.json revalidate; images are kept a day
# (a missing one an hour); everything else gets no Cache-Control at all.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ROOT_HEADERS = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}

NO_EDITOR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ComfyUI (autopod simulator)</title></head>
<body style="font-family: sans-serif; max-width: 44em; margin: 3em auto">
<h1>ComfyUI 0.3.64 (simulated) is running</h1>
<p>The editor is not installed here. It is the Python package <code>{package}=={version}</code>;
install it into the environment that runs autopod and restart the simulator:</p>
<pre>pip install '{package}=={version}'      # or, in a checkout of autopod: pip install -e '.[editor]'
autopod sim.stop sim.start</pre>
<p>The API answers without it: <a href="/system_stats">/system_stats</a>, <a href="/queue">/queue</a>,
<a href="/history">/history</a>.</p>
</body></html>
"""


def static_root() -> Path | None:
    """The installed editor's ``static`` folder, or None (found without importing the package)."""
    try:
        spec = importlib.util.find_spec("comfyui_frontend_package")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "static"
        if (root / "index.html").is_file():
            return root.resolve()
    return None


def installed_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def no_editor_page() -> str:
    return NO_EDITOR_PAGE.format(package=html.escape(PACKAGE), version=html.escape(VERSION))


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), FALLBACK_TYPE)


def cache_control(url_path: str, status: int) -> str | None:
    """The Cache-Control header ComfyUI's middleware adds for ``url_path`` answered with ``status``."""
    if url_path.endswith((".js", ".css", "index.json")):
        return "no-cache"
    if not url_path.lower().endswith(IMAGE_SUFFIXES):
        return None
    if status == 404:
        return "public, max-age=3600"
    if status in (200, 201, 202, 203, 204, 205, 206, 301, 308):
        return "public, max-age=86400"
    if status in (302, 303, 307):
        return "no-cache"
    return None


def resolve(root: Path, url_path: str) -> tuple[str, Path | None]:
    """What GET ``url_path`` finds under ``root``: ("file", path), ("missing", None) (aiohttp answers
    404 with an empty body), ("folder", None) (403), or ("outside", None) for a symlink that leads out
    of the folder (404 "Not Found"). Dot segments are resolved first, as the URL parser does, so
    ``/../x`` is ``/x``: no request names anything above ``root``."""
    parts: list[str] = []
    for seg in unquote(url_path).split("/"):
        if seg == "..":
            if parts:
                parts.pop()
        elif seg not in ("", "."):
            parts.append(seg)
    if any("\x00" in seg for seg in parts):
        return "missing", None
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve()
        resolved.relative_to(root)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return "outside", None
    if resolved.is_dir():
        return "folder", None
    if not resolved.is_file() or not os.access(resolved, os.R_OK):
        return "missing", None
    return "file", resolved

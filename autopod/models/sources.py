"""What a model pull asks for, checked on this machine before anything reaches a pod.

A URL is http(s) with a host and no credentials in it; a Hugging Face ``/blob/`` page URL becomes
its ``/resolve/`` download URL (the page is HTML, not the file). A folder is a ComfyUI folder name
(legacy ``clip``/``unet`` mapped); left out, a Hugging Face URL whose path names a folder
(Comfy-Org's ``split_files/vae/...``) says which. A file name has no ``/``, ``..`` or control
characters. A sha256 is 64 hex digits (``sha256:`` or ``SHA256:`` in front is fine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..core.errors import UsageError
from .folders import FOLDERS, LEGACY

HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_HOSTS = ("civitai.com", "civitai.red")
_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SHA = re.compile(r"^(?:sha256[:=])?([0-9a-fA-F]{64})$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_URL = 4096


@dataclass
class ModelRef:
    """One model to have on the volume: where it comes from and where it goes."""

    url: str
    folder: str | None = None
    name: str | None = None
    sha256: str | None = None
    sha256_from: str | None = None  # "flag", "workflow", "inventory"
    source: str = ""  # what asked for it (a workflow's node, the inventory), for messages
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        where = self.folder or "?"
        return f"{where}/{self.name or url_name(self.url) or self.url}"

    def request(self) -> dict[str, Any]:
        return {"url": self.url, "folder": self.folder, "name": self.name, "sha256": self.sha256}


def site(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    if host in HF_HOSTS or host.endswith(".huggingface.co"):
        return "hf"
    if host in CIVITAI_HOSTS or any(host.endswith("." + h) for h in CIVITAI_HOSTS):
        return "civitai"
    return "other"


def check_url(url: Any, what: str = "URL") -> str:
    """The URL to fetch: http(s), a host, no user:password, no control characters; HF /blob/ -> /resolve/."""
    s = str(url).strip()
    if not s or len(s) > MAX_URL or _CONTROL.search(s) or any(c.isspace() for c in s):
        raise UsageError(f"invalid {what} {s[:80]!r}: give an http:// or https:// URL without spaces")
    try:
        u = urlsplit(s)
        u.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise UsageError(f"invalid {what} {s[:80]!r}: the port is not a number") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"invalid {what} {s[:80]!r}: give an http:// or https:// URL")
    if u.username or u.password:
        raise UsageError(f"{what} {u.scheme}://...@{u.hostname}: credentials do not go in URLs (they end up in "
                         "logs and process lists); set HF_TOKEN or CIVITAI_API_TOKEN instead")
    if "token" in {k.lower() for k in _query_keys(u.query)}:
        raise UsageError(f"{what} for {u.hostname} carries a token in its query; leave it out and set "
                         "CIVITAI_API_TOKEN (or civitai_api_token in config.yaml): autopod sends it as a header")
    if site(s) == "hf":
        parts = u.path.split("/")
        if len(parts) > 4 and parts[3] == "blob":  # /owner/repo/blob/rev/path: the page, not the file
            parts[3] = "resolve"
            s = urlunsplit((u.scheme, u.netloc, "/".join(parts), u.query, ""))
        elif len(parts) > 5 and parts[1] in ("datasets", "spaces") and parts[4] == "blob":
            parts[4] = "resolve"
            s = urlunsplit((u.scheme, u.netloc, "/".join(parts), u.query, ""))
    return s


def _query_keys(query: str) -> list[str]:
    return [p.partition("=")[0] for p in query.split("&") if p]


def check_folder(folder: Any) -> str:
    f = str(folder).strip()
    if not _FOLDER.match(f):
        raise UsageError(f"invalid --folder {f!r}: a ComfyUI model folder name like checkpoints, loras, vae")
    return LEGACY.get(f, f)


def name_problem(name: str) -> str | None:
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a '/' (a file name, not a path)"
    if ".." in name:
        return "it holds '..'"
    if _CONTROL.search(name):
        return "it holds control characters"
    if name.startswith("."):
        return "it starts with '.' (a hidden file, which ComfyUI does not list)"
    if len(name.encode("utf-8", "surrogatepass")) > 240:
        return "it is longer than 240 bytes"
    return None


def check_name(name: Any, what: str = "--name") -> str:
    n = str(name)
    problem = name_problem(n)
    if problem:
        raise UsageError(f"invalid {what} {n[:80]!r}: {problem}")
    return n


def check_sha256(value: Any, what: str = "--sha256") -> str:
    m = _SHA.match(str(value).strip())
    if not m:
        raise UsageError(f"invalid {what} {str(value)[:80]!r}: 64 hexadecimal digits")
    return m.group(1).lower()


def url_name(url: str) -> str | None:
    """The file name a URL's path ends in (None for Civitai's numeric download URLs)."""
    if site(url) == "civitai":
        return None
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return last if last and not name_problem(last) else None


def folder_from_url(url: str) -> str | None:
    """A ComfyUI folder named by a Hugging Face URL's path (``.../split_files/vae/x.safetensors``)."""
    if site(url) != "hf":
        return None
    for part in reversed(urlsplit(url).path.split("/")[:-1]):
        if part in FOLDERS and part not in ("custom_nodes", "configs"):
            return part
        if part in LEGACY:
            return LEGACY[part]
    return None


def model_ref(url: Any, *, folder: Any = None, name: Any = None, sha256: Any = None, sha256_from: str = "flag",
              source: str = "") -> ModelRef:
    u = check_url(url)
    n = check_name(name) if name is not None else None
    h = check_sha256(sha256) if sha256 is not None else None
    f = check_folder(folder) if folder is not None else folder_from_url(u)
    if f is None and site(u) != "civitai":  # Civitai's model type says; for anything else the user does
        raise UsageError(f"which model folder is {n or url_name(u) or u} for? give --folder (checkpoints, loras, "
                         "vae, text_encoders, diffusion_models, controlnet, upscale_models, ...)")
    return ModelRef(url=u, folder=f, name=n, sha256=h, sha256_from=sha256_from if h else None, source=source)

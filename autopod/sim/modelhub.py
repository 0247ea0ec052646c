"""A model hub stand-in on loopback: Hugging Face-like and Civitai-like downloads, with faults.

Three listeners, each its own origin (host and port), as on the real sites:

- **hf** answers like huggingface.co: ``/{owner}/{repo}/resolve/{rev}/{path}`` redirects (302) a large
  (LFS) file to the CDN with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and ``X-Repo-Commit``;
  a small git file comes straight back. A gated repo answers 401 ``X-Error-Code: GatedRepo`` without
  a token and 403 with one it does not accept; ``/blob/`` is the HTML page, not the file.
- **civitai** answers like civitai.com: ``/api/download/models/{version}`` needs a token (401 JSON
  without one, a redirect to an HTML login page for a browser-like client) and redirects (307) to a
  signed CDN URL; ``/api/v1/model-versions/{version}`` lists the files with their upper-case SHA256.
- **cdn** serves the bytes: ``Range``, ``Content-Disposition`` (Civitai's ``<Model>_<Version>.ext``
  names differ from the workflow's), signed URLs that expire.

Tokens, as the simulator accepts them: a Hugging Face token is valid when it starts with ``hf_``
and may read gated repos unless it ends with ``_denied``; any Civitai token is valid, but none may
download an early-access file.

Faults per file (``POST /_hub/faults`` on the hf listener), each for the next ``times`` CDN answers
(default all): ``slow`` (bytes per second), ``cut_at`` (close the connection at that file offset),
``stall_at`` (stop sending at that offset and hold the connection), ``html`` (a 200 HTML page),
``no_range`` (ignore Range), ``status`` (answer that status); and for good: ``corrupt`` (wrong bytes,
right length), ``announce_size`` (a wrong ``X-Linked-Size``). ``GET /_hub/state`` shows the files,
every request (listener, path, range, whether it carried a token) and the bytes served per file,
so tests check what the hub saw rather than what the client says.

Command line (the simulator runs one in its server process; the benchmark its own)::

    python -m autopod.sim.modelhub --root DIR [--file owner/repo/name.safetensors:SIZE]...
    {"hf": "http://127.0.0.1:41001", "civitai": "http://127.0.0.1:41002", "cdn": "...", "pid": 4242}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .ranges import byte_range

CHUNK = 1 << 20
SIGNED_URL_S = 600.0
BROWSERS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
FAULTS = ("slow", "cut_at", "stall_at", "html", "no_range", "status", "corrupt", "announce_size", "times")


@dataclass
class HubFile:
    id: str
    site: str  # "hf" or "civitai"
    name: str  # the name the CDN serves (Content-Disposition)
    size: int
    sha256: str | None
    disk: str | None  # the bytes; None for a virtual file, which only announces a size
    repo: str | None = None  # hf: owner/repo
    path: str | None = None  # hf: the file's path in the repo
    lfs: bool = True
    gated: bool = False
    version: int | None = None  # civitai: model-version id
    model: str | None = None
    version_name: str | None = None
    model_type: str = "Checkpoint"
    file_name: str | None = None  # civitai: files[].name (what the API lists)
    metadata: dict = field(default_factory=dict)
    require_auth: bool = True
    early_access: bool = False
    faults: dict = field(default_factory=dict)

    def public_url(self) -> str:
        if self.site == "hf":
            return f"https://huggingface.co/{self.repo}/resolve/main/{quote(self.path or '')}"
        return f"https://civitai.com/api/download/models/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["url"] = self.public_url()
        d.pop("disk", None)
        return d


def _fill(path: Path, size: int, seed: int) -> str:
    """Write ``size`` deterministic bytes; returns their sha256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(CHUNK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    return h.hexdigest()


class ModelHub:
    """``with ModelHub(root).start() as hub: hub.add_hf("owner/repo", "x.safetensors", size=1_000_000)``."""

    def __init__(self, root: Path | str, *, host: str = "127.0.0.1", demo: bool = True):
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the model hub stand-in listens on loopback only")
        self.root = Path(root)
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self.host = host
        self.files: dict[str, HubFile] = {}
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.served: dict[str, int] = {}
        self.stopped = threading.Event()
        self.commit = hashlib.sha1(b"autopod-sim").hexdigest()
        self.servers = {site: _Server((host, 0), _Handler, self, site) for site in ("hf", "civitai", "cdn")}
        self._threads: list[threading.Thread] = []
        if demo:
            self.add_demo()

    # -- urls
    def url(self, site: str) -> str:
        return f"http://{self.host}:{self.servers[site].server_address[1]}"

    @property
    def endpoints(self) -> dict[str, str]:
        return {"hf": self.url("hf"), "civitai": self.url("civitai"), "cdn": self.url("cdn")}

    # -- lifecycle
    def start(self) -> "ModelHub":
        for site, srv in self.servers.items():
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                                 name=f"modelhub-{site}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stopped.set()
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> "ModelHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- files
    def _new_file(self, site: str, name: str, size: int, seed: int | None, virtual: bool, **kw: Any) -> HubFile:
        fid = secrets.token_hex(8)
        disk, sha = None, None
        if not virtual:
            disk = str(self.root / "files" / fid)
            sha = _fill(Path(disk), size, seed if seed is not None else int(fid, 16))
        f = HubFile(id=fid, site=site, name=name, size=size, sha256=sha, disk=disk, **kw)
        with self.lock:
            self.files[fid] = f
            self.served[fid] = 0
        return f

    def add_hf(self, repo: str, path: str, *, size: int, seed: int | None = None, gated: bool = False,
               lfs: bool = True, virtual: bool = False, faults: dict | None = None) -> HubFile:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
            raise ValueError(f"repo must be owner/name, got {repo!r}")
        return self._new_file("hf", path.rsplit("/", 1)[-1], size, seed, virtual, repo=repo, path=path, gated=gated,
                              lfs=lfs, faults=dict(faults or {}))

    def add_civitai(self, version: int, *, model: str, version_name: str, file_name: str, size: int,
                    model_type: str = "Checkpoint", seed: int | None = None, metadata: dict | None = None,
                    require_auth: bool = True, early_access: bool = False, virtual: bool = False,
                    faults: dict | None = None) -> HubFile:
        ext = os.path.splitext(file_name)[1]
        # Civitai's delivery name: LoRAs keep their file name, checkpoints become <Model>_<Version>.
        served = file_name if model_type.lower() in ("lora", "locon") else \
            re.sub(r"[^A-Za-z0-9_.-]", "", f"{model}_{version_name}".replace(" ", "")) + ext
        return self._new_file("civitai", served, size, seed, virtual, version=int(version), model=model,
                              version_name=version_name, model_type=model_type, file_name=file_name,
                              metadata=dict(metadata or {"format": "SafeTensor", "size": "full", "fp": "fp16"}),
                              require_auth=require_auth, early_access=early_access, faults=dict(faults or {}))

    def add_demo(self) -> None:
        """What a simulator user can pull right away (README's examples)."""
        self.add_hf("autopod-sim/tiny-models", "tiny-sd15.safetensors", size=1_500_000, seed=15)
        self.add_hf("autopod-sim/tiny-models", "split_files/vae/tiny-vae.safetensors", size=300_000, seed=16)
        self.add_hf("autopod-sim/tiny-models", "split_files/text_encoders/tiny-clip.safetensors", size=400_000,
                    seed=17)
        self.add_hf("autopod-sim/tiny-models", "config.json", size=900, seed=18, lfs=False)
        self.add_hf("autopod-sim/gated-model", "gated-unet.safetensors", size=500_000, seed=19, gated=True)
        self.add_civitai(1001, model="Tiny Style", version_name="v1.0", file_name="tiny_style.safetensors",
                         size=200_000, model_type="LORA", seed=20)
        self.add_civitai(1002, model="Tiny Checkpoint", version_name="v2", file_name="tiny_ckpt_v2.safetensors",
                         size=800_000, model_type="Checkpoint", seed=21)

    def find_hf(self, repo: str, path: str) -> HubFile | None:
        with self.lock:
            return next((f for f in self.files.values() if f.site == "hf" and f.repo == repo and f.path == path), None)

    def find_civitai(self, version: int) -> list[HubFile]:
        with self.lock:
            return [f for f in self.files.values() if f.site == "civitai" and f.version == version]

    def set_faults(self, fid: str, faults: dict) -> HubFile:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
        with self.lock:
            f = self.files[fid]
            f.faults = dict(faults)
            return f

    def take_faults(self, f: HubFile) -> dict:
        """The faults for this CDN answer; ``times`` counts them down."""
        with self.lock:
            faults = dict(f.faults)
            times = faults.pop("times", None)
            lasting = {k: faults.pop(k) for k in ("corrupt", "announce_size") if k in faults}
            if times is not None:
                if times <= 0:
                    return lasting
                f.faults["times"] = times - 1
            return {**faults, **lasting}

    def record(self, **entry: Any) -> dict[str, Any]:
        with self.lock:
            entry["at"] = time.time()
            self.requests.append(entry)
        return entry

    def count(self, fid: str, n: int) -> None:
        with self.lock:
            self.served[fid] = self.served.get(fid, 0) + n

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"endpoints": self.endpoints, "files": [f.to_dict() for f in self.files.values()],
                    "requests": list(self.requests), "served": dict(self.served)}

    # -- tokens, as the simulator accepts them
    @staticmethod
    def hf_token_state(token: str | None) -> str:
        if not token:
            return "none"
        if not token.startswith("hf_"):
            return "invalid"
        return "denied" if token.endswith("_denied") else "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, hub: ModelHub, site: str):
        super().__init__(addr, handler)
        self.hub = hub
        self.site = site


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "autopod-modelhub"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:
        pass

    # -- plumbing
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        parts = auth.split()
        return parts[1] if len(parts) == 2 else None

    def _log(self, status: int, fid: str | None = None, sent: int = 0) -> dict[str, Any]:
        return self.server.hub.record(listener=self.server.site, method=self.command, path=urlsplit(self.path).path,
                                      range=self.headers.get("Range"), auth=bool(self.headers.get("Authorization")),
                                      status=status, file=fid, sent=sent, agent=self.headers.get("User-Agent"))

    def _send(self, status: int, body: bytes | str | dict | list = b"", *, ctype: str = "application/json",
              headers: dict | None = None, fid: str | None = None) -> None:
        raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else \
            body.encode() if isinstance(body, str) else body
        self.send_response(status)
        if raw or status >= 300:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
        self._log(status, fid)

    def _redirect(self, status: int, location: str, headers: dict | None = None, fid: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(status, fid)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            {"hf": self._hf, "civitai": self._civitai, "cdn": self._cdn}[self.server.site]()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def do_POST(self) -> None:
        hub = self.server.hub
        path = urlsplit(self.path).path
        if self.server.site != "hf" or not path.startswith("/_hub/"):
            return self._send(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
            if path == "/_hub/files":  # {"hf": "owner/repo", "path", "size", ...} or {"civitai": version, ...}
                f = (hub.add_civitai(doc.pop("civitai"), **doc) if "civitai" in doc else hub.add_hf(doc.pop("hf"), **doc))
                return self._send(200, f.to_dict())
            if path == "/_hub/faults":
                return self._send(200, hub.set_faults(doc["file"], doc.get("faults") or {}).to_dict())
            if path == "/_hub/reset":
                with hub.lock:
                    hub.requests.clear()
                    hub.served = {k: 0 for k in hub.served}
                return self._send(200, {"reset": True})
        except (ValueError, TypeError, KeyError) as e:
            return self._send(400, {"error": f"{type(e).__name__}: {e}"})
        return self._send(404, {"error": "not found"})

    # -- huggingface.co
    def _hf(self) -> None:
        hub = self.server.hub
        u = urlsplit(self.path)
        path = unquote(u.path)
        if path == "/_hub/state":
            return self._send(200, hub.state())
        m = re.fullmatch(r"/([^/]+/[^/]+)/(resolve|blob)/([^/]+)/(.+)", path)
        if not m:
            return self._send(404, "Repository Not Found", ctype="text/plain",
                              headers={"X-Error-Code": "RepoNotFound"})
        repo, kind, _rev, fpath = m.groups()
        f = hub.find_hf(repo, fpath)
        if kind == "blob":  # the web page that shows the file
            return self._send(200, f"<!doctype html><html><body><h1>{fpath}</h1>{repo}</body></html>",
                              ctype="text/html; charset=utf-8")
        gated = f.gated if f else any(x.gated for x in hub.files.values() if x.repo == repo)
        token = hub.hf_token_state(self._token())
        if token == "invalid":
            return self._send(401, {"error": "Invalid credentials in Authorization header"},
                              headers={"X-Error-Message": "Invalid credentials in Authorization header"})
        if gated and token == "none":
            return self._send(401, {"error": f"Access to model {repo} is restricted. You must have access to it and "
                                             "be authenticated to access it. Please log in."},
                              headers={"X-Error-Code": "GatedRepo"})
        if gated and token == "denied":
            return self._send(403, {"error": f"Access to model {repo} is restricted and you are not in the "
                                             "authorized list. Visit its page to ask for access."},
                              headers={"X-Error-Code": "GatedRepo"})
        if f is None:
            return self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
        size = int(f.faults.get("announce_size") or f.size)
        common = {"X-Repo-Commit": hub.commit, "Accept-Ranges": "bytes"}
        if not f.lfs:  # a small git file: served here, its etag a sha1
            return self._serve(f, {**common, "ETag": f'"{hashlib.sha1(f.id.encode()).hexdigest()}"'})
        linked = {**common, "X-Linked-Etag": f'"{f.sha256}"' if f.sha256 else "", "X-Linked-Size": str(size),
                  "ETag": f'"{f.sha256}"' if f.sha256 else ""}
        return self._redirect(302, self._signed(f), {k: v for k, v in linked.items() if v}, fid=f.id)

    def _signed(self, f: HubFile) -> str:
        hub = self.server.hub
        expires = int(time.time() + SIGNED_URL_S)
        sig = hashlib.sha256(f"{f.id}:{expires}".encode()).hexdigest()[:32]
        return f"{hub.url('cdn')}/files/{f.id}/{quote(f.name)}?Expires={expires}&Signature={sig}"

    # -- civitai.com
    def _civitai(self) -> None:
        hub = self.server.hub
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        m = re.fullmatch(r"/api/v1/model-versions/(\d+)", u.path)
        if m:
            files = hub.find_civitai(int(m.group(1)))
            if not files:
                return self._send(404, {"error": f"No model version with id {m.group(1)}"})
            f0 = files[0]
            return self._send(200, {
                "id": f0.version, "modelId": f0.version * 10, "name": f0.version_name,
                "model": {"name": f0.model, "type": f0.model_type},
                "downloadUrl": f"https://civitai.com/api/download/models/{f0.version}",
                "files": [{"id": int(f.id[:6], 16), "name": f.file_name, "type": "Model",
                           "sizeKB": f.size / 1024.0, "metadata": f.metadata, "primary": i == 0,
                           "hashes": {"SHA256": (f.sha256 or "").upper()},
                           "downloadUrl": f"https://civitai.com/api/download/models/{f0.version}"}
                          for i, f in enumerate(files)]})
        m = re.fullmatch(r"/api/download/models/(\d+)", u.path)
        if not m:
            return self._send(404, {"error": "Not found"})
        browser = any(b in (self.headers.get("User-Agent") or "").lower() for b in BROWSERS)
        files = hub.find_civitai(int(m.group(1)))
        token = self._token()
        if files and files[0].require_auth and not token:
            if browser:  # a browser gets the login page: a client that acts like one saves HTML as the model
                return self._redirect(302, f"{hub.url('civitai')}/login?returnUrl={quote(u.path)}")
            return self._send(401, {"error": "Unauthorized", "message": "The creator of this asset requires you to "
                                                                         "be logged in to download it"})
        for key in ("format", "size", "fp"):
            if key in q:
                files = [f for f in files if str(f.metadata.get(key, "")).lower() == q[key].lower()]
        if not files:
            return self._send(404, {"error": "File not found"})
        f = files[0]
        if f.early_access:
            return self._send(403, {"error": "Early Access", "deadline": "2099-01-01T00:00:00.000Z",
                                    "message": "This asset is in Early Access. Buy it with Buzz to download it."})
        return self._redirect(307, self._signed(f), {"Cache-Control": "no-store, max-age=0"}, fid=f.id)

    # -- the CDN
    def _cdn(self) -> None:
        hub = self.server.hub
        u = urlsplit(self.path)
        if u.path == "/login":
            return self._send(200, "<!doctype html><html><body>Sign in</body></html>", ctype="text/html")
        m = re.fullmatch(r"/files/([0-9a-f]+)/.*", u.path)
        f = hub.files.get(m.group(1)) if m else None
        if f is None:
            return self._send(404, "<Error><Code>NoSuchKey</Code></Error>", ctype="application/xml")
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        try:
            expired = int(q.get("Expires", "0")) < time.time()
        except ValueError:
            expired = True
        if expired or q.get("Signature") != hashlib.sha256(f"{f.id}:{q.get('Expires')}".encode()).hexdigest()[:32]:
            return self._send(403, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                              ctype="application/xml", fid=f.id)
        return self._serve(f, {})

    def _serve(self, f: HubFile, extra: dict) -> None:
        hub = self.server.hub
        faults = hub.take_faults(f) if self.command == "GET" else {k: v for k, v in f.faults.items()
                                                                     if k in ("announce_size",)}
        if faults.get("status"):
            return self._send(int(faults["status"]), {"error": "injected"}, fid=f.id)
        if faults.get("html"):
            return self._send(200, "<!doctype html><html><body>Please sign in</body></html>",
                              ctype="text/html; charset=utf-8", fid=f.id)
        size = f.size
        span = byte_range(None if faults.get("no_range") else self.headers.get("Range"), size)
        if span is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._log(416, f.id)
            return
        start, end, status = span
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'attachment; filename="{f.name}"; filename*=UTF-8\'\'{quote(f.name)}')
        self.send_header("Accept-Ranges", "bytes")
        if f.sha256:
            self.send_header("ETag", f'"{f.sha256}"')
        for k, v in extra.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        entry = self._log(status, f.id)  # logged now: a stalled answer may never end
        if self.command == "HEAD":
            return
        entry["sent"] = self._body(f, start, length, faults)

    def _body(self, f: HubFile, start: int, length: int, faults: dict) -> int:
        """Send ``length`` bytes of ``f`` from ``start``, as the faults say. Returns the bytes sent."""
        hub = self.server.hub
        stop_at = length
        for key in ("cut_at", "stall_at"):
            if faults.get(key) is not None:
                stop_at = min(stop_at, max(0, int(faults[key]) - start))
        rate = float(faults.get("slow") or 0)
        plain = not rate and stop_at == length and not faults.get("corrupt") and f.disk
        sent = 0
        if plain:  # the kernel copies: memory stays flat, as fast as loopback goes
            self.wfile.flush()
            with open(f.disk, "rb") as src:
                while sent < length:
                    n = self.connection.sendfile(src, start + sent, length - sent)
                    if not n:
                        break
                    sent += n
                    hub.count(f.id, n)
            return sent
        t0 = time.monotonic()
        src = open(f.disk, "rb") if f.disk else None
        try:
            while sent < stop_at:
                n = min(CHUNK if not rate else max(1024, int(rate / 20)), stop_at - sent)
                if src is not None:
                    src.seek(start + sent)
                    block = src.read(n)
                else:
                    block = bytes((start + sent + i) % 251 for i in range(n))
                if faults.get("corrupt") and start + sent <= f.size // 2 < start + sent + len(block):
                    i = f.size // 2 - start - sent
                    block = block[:i] + bytes([block[i] ^ 0xFF]) + block[i + 1:]
                self.wfile.write(block)
                sent += len(block)
                hub.count(f.id, len(block))  # as it goes: a stalled answer has sent what it sent
                if rate:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0 and hub.stopped.wait(ahead):
                        break
        finally:
            if src is not None:
                src.close()
        if sent < length:
            self.wfile.flush()
            if faults.get("stall_at") is not None:
                hub.stopped.wait(120)  # nothing more, connection open: the client has to notice
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autopod.sim.modelhub", description="Serve a model hub stand-in.")
    p.add_argument("--root", required=True, type=Path, help="folder for the files' bytes")
    p.add_argument("--file", action="append", default=[], metavar="OWNER/REPO/PATH:SIZE",
                   help="also serve this Hugging Face file of SIZE bytes (repeatable)")
    p.add_argument("--no-demo", action="store_true", help="leave out the demo files")
    args = p.parse_args(argv)
    hub = ModelHub(args.root, demo=not args.no_demo)
    files = []
    for spec in args.file:
        where, _, size = spec.rpartition(":")
        owner, repo, path = where.split("/", 2)
        files.append(hub.add_hf(f"{owner}/{repo}", path, size=int(size)).to_dict())
    hub.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({**hub.endpoints, "pid": os.getpid(), "files": files}), flush=True)
    while not done.wait(0.5):
        pass
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

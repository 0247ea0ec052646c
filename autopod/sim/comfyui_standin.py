"""A ComfyUI stand-in: answers and executes like a real ComfyUI 0.3.64, with no GPU and no models.

Model files dropped under ``ROOT/models/<folder>/`` (``checkpoints``, ``loras``, ``vae`` ...) are
listed as ComfyUI lists them, in the core loaders' node definitions and ``/models/<folder>``,
read on every request; they are never loaded.

Tests and the offline simulator use it where a real ComfyUI is not available. Fixed answers
(system stats, node definitions) come from recordings of a real server in
``autopod/sim/data/comfyui/``; prompts are validated like ComfyUI validates them and queued;
one worker thread executes them (``autopod.sim.comfyui.engine``) with real model-free nodes
(EmptyImage, LoadImage, ImageBlur, ImageScale, SaveImage, PreviewImage, SaveAnimatedPNG,
SaveAnimatedWEBP) that read and write real files through Pillow, as ComfyUI does, in the
stand-in's input/output/temp folders. Progress goes out on the WebSocket ``/ws?clientId=...``
on the same port, and every route also exists under ``/api/...``.

The editor: with the ``editor`` extra installed (``comfyui-frontend-package``, the version
ComfyUI 0.3.64 requires), ``/`` is the real ComfyUI editor and every other path one of its
files (``autopod.sim.comfyui.editor``); the calls it makes as it opens (users, settings, user
data, i18n, model folders) are answered as a fresh ComfyUI answers them, and what it saves is
kept under ``user/default/`` in the root (``autopod.sim.comfyui.userdata``). Without the extra,
``/`` is a short page that says how to get it. As in ComfyUI, a request to this loopback server
whose ``Origin`` names another host is refused (403), so other web pages cannot use it.

With ``sim_nodes=True`` it also lists and runs its own nodes (category ``autopod/sim``, see
``autopod.sim.comfyui.nodes``), like a custom node pack: AutopodSleep, AutopodFail,
AutopodSaveGIF, AutopodSaveVideo, AutopodSaveAudio, AutopodBigFile. Without it, it lists
the 477 recorded node types, exactly as the recorded server did.

Fault injection: ``ws_drop_after=N`` cuts every WebSocket connection instead of sending its
(N+1)th message (that message is lost, as in real life; history still records the result).
At run time: ``POST /_sim/faults {"ws_drop_after": N}`` (0 turns it off; every open
connection's count restarts) or ``{"ws_drop_now": true}``; ``{"outage_s": S}`` leaves every request
but ``/_sim/`` unanswered for S seconds (a hung ComfyUI); ``{"view": {"mode": M, "times": N}}``
makes the next N ``/view`` answers something other than the file (M: ``redirect``, ``error``, an
``html`` page with 200, ``short`` or ``long`` of the announced length, ``stall`` after half of it, as a
broken proxy or a dying server would); ``GET /_sim/faults`` shows them.
``faults_file`` (the simulator's) holds the same JSON, applied at start and when listening begins.

Not listening yet: a pod's ComfyUI only starts after the image has copied it onto the
volume. To imitate that, the stand-in binds its port at once (so the port is reserved and
its URL known up front) but calls ``listen()`` only after ``ready_after`` seconds. Until then
a connection to the port is refused by the kernel, exactly like a port nobody listens on.

Command line (the simulator runs one per simulated pod)::

    python -m autopod.sim.comfyui_standin --port 0 --ready-after 30 --sim-nodes --root DIR
    {"url": "http://127.0.0.1:41234", "port": 41234, "pid": 4242, "ready_after": 30.0, "root": "DIR"}

The JSON line is printed as soon as the port is bound; it answers HTTP from
``ready_after`` seconds on. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import copy
import email.parser
import email.utils
import email.policy
import gzip
import ipaddress
import json
import mimetypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .comfyui import editor
from .comfyui import images as im
from .comfyui.engine import Engine
from .comfyui.folders import Folders
from .ranges import byte_range
from .comfyui.hub import Hub
from .comfyui.models import ModelFolders
from .comfyui.nodes import REAL_NODES, SIM_NODES
from .comfyui.userdata import UserData
from ..models.folders import LOADER_INPUTS
from .comfyui.wsproto import ServerWebSocket, accept_key, handshake_problem

DATA_DIR = Path(__file__).resolve().parent / "data" / "comfyui"
MAX_UPLOAD_SIZE = 104857600  # ComfyUI's default --max-upload-size (100 MB), as /features reports it
SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
VIEW_FAULTS = ("redirect", "error", "html", "short", "long", "stall")

# /view makes these download instead of display (ComfyUI does the same)
_UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


def _load(data_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: "ComfyUIStandin"

    def get_request(self) -> tuple[Any, Any]:
        # aiohttp, ComfyUI's server, turns Nagle off on every connection (and sends a small reply's headers
        # and body in one write, see _Handler.wbufsize). Without both, a reply written as headers then
        # body waits for the client's delayed ACK, about 40 ms, on a kept-alive connection.
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


class ComfyUIStandin:
    """``with ComfyUIStandin(sim_nodes=True).start() as s: requests.post(s.url + "/prompt", json=...)``.

    ``state="busy"`` starts with the recorded busy queue (1 running, 4 pending) and the
    recorded history (11 entries): the running prompt holds the queue until it is
    interrupted, then the pending ones run. ``root`` is where input/, output/ and temp/
    live (default: a temporary folder removed by ``stop``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ready_after: float = 0.0,
                 data_dir: Path | None = None, state: str = "idle", root: Path | str | None = None,
                 sim_nodes: bool = False, ws_drop_after: int = 0, faults_file: Path | str | None = None,
                 editor_ui: bool = True, models_dir: Path | str | None = None):
        if state not in ("idle", "busy"):
            raise ValueError(f"state must be 'idle' or 'busy', not {state!r}")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the ComfyUI stand-in listens on loopback only")
        self.host = host
        self.ready_after = float(ready_after)
        self.data_dir = Path(data_dir) if data_dir else DATA_DIR
        self.sim_nodes = sim_nodes
        self.faults_file = Path(faults_file) if faults_file else None
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="comfyui-standin-")) if root is None else Path(root)
        self.folders = Folders(self.root)
        self.userdata = UserData(self.root)
        # the editor's files (comfyui-frontend-package), when installed; else "/" says how to get them
        self.static_root = editor.static_root() if editor_ui else None
        # Model files: under root/models, or where the pod keeps them (a simulated network volume).
        self.models = ModelFolders(Path(models_dir) if models_dir else self.root / "models", self.root)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._serve_thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._started = False
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for tests
        self._load_data()
        self.hub = Hub(drop_after=ws_drop_after)
        self.down_until = 0.0  # monotonic time until which HTTP goes unanswered (the outage fault)
        self.view_fault: dict[str, Any] = {}  # {"mode", "times"}: the next /view answers are not the file
        self.engine = Engine(folders=self.folders, node_info=self.node_info,
                             nodes={**REAL_NODES, **(SIM_NODES if sim_nodes else {})}, send=self.hub.send)
        if state == "busy":
            q = _load(self.data_dir, "queue_busy")["body"]
            self.engine.restore(q["queue_running"], q["queue_pending"], _load(self.data_dir, "history_all")["body"])
        self._httpd = _Server((host, port), _Handler, bind_and_activate=False)
        self._httpd.standin = self

    # -- data ----------------------------------------------------------------------------------

    def _load_data(self) -> None:
        d = self.data_dir
        self.system_stats = _load(d, "system_stats")["body"]
        with gzip.open(d / "object_info_full.json.gz", "rt", encoding="utf-8") as f:
            self.object_info: dict[str, Any] = json.load(f)
        if self.sim_nodes:
            self.object_info.update({name: copy.deepcopy(n.info) for name, n in SIM_NODES.items()})
        self.static = {name: _load(d, name)["body"] for name in ("embeddings", "extensions", "features", "models")}
        boot = {c["path"]: c for c in _load(d, "frontend_boot")["api_calls"]}
        self.i18n = json.loads(boot["/api/i18n"]["body"])

    def node_info(self, class_type: str) -> dict | None:
        """One object_info entry; LoadImage's list is the input folder's images and a loader's list the
        model files in its folder under models/, read now, as in ComfyUI."""
        info = self.object_info.get(class_type)
        if class_type == "LoadImage" and info is not None:
            info = {**info, "input": {**info["input"], "required": {
                **info["input"]["required"], "image": [self.folders.input_images(), {"image_upload": True}]}}}
        return self.models.fill(class_type, info)

    def full_object_info(self) -> dict[str, Any]:
        out = dict(self.object_info)
        for name in {"LoadImage", *(cls for cls, _ in LOADER_INPUTS)} & set(out):
            out[name] = self.node_info(name)
        return out

    # queue and history, as attributes (tests and the busy replay set them)
    @property
    def running(self) -> list:
        return self.engine.running_items()

    @property
    def pending(self) -> list:
        return self.engine.pending_items()

    @pending.setter
    def pending(self, items: list) -> None:
        self.engine.set_pending(items)

    @property
    def history(self) -> dict:
        return self.engine.history

    @history.setter
    def history(self, value: dict) -> None:
        self.engine.history = value

    @property
    def counter(self) -> int:
        return self.engine.counter

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> "ComfyUIStandin":
        """Bind now; listen now or after ``ready_after`` seconds. Returns self (idempotent)."""
        if self._started:
            return self
        self._started = True
        self.load_faults_file()
        self._httpd.server_bind()
        self.engine.start(f"comfyui-standin-worker-{self.port}")
        if self.ready_after <= 0:
            self.become_ready()
        else:
            self._timer = threading.Timer(self.ready_after, self.become_ready)
            self._timer.daemon = True
            self._timer.start()
        return self

    def become_ready(self) -> None:
        """Start listening (idempotent); also what the ``ready_after`` timer calls."""
        with self._lock:
            if self._ready.is_set() or self._stopped.is_set():
                return
            self.load_faults_file()  # settings changed while this ComfyUI was "booting" apply from its start
            self._httpd.server_activate()  # listen(): from here on connections are accepted
            self._serve_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                                  name=f"comfyui-standin-{self.port}", daemon=True)
            self._serve_thread.start()
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            if self._timer:
                self._timer.cancel()
            if self._ready.is_set():
                self._httpd.shutdown()
            self._httpd.server_close()
        self.engine.stop()
        self.hub.close_all()
        if self._serve_thread:
            self._serve_thread.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ComfyUIStandin":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- behaviour -----------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> tuple[int, Any]:
        """POST /prompt: validate like ComfyUI, queue; (status, body)."""
        return self.engine.submit(body)

    def history_slice(self, query: dict[str, list[str]]) -> dict[str, Any]:
        max_items = int(query["max_items"][0]) if "max_items" in query else None
        offset = int(query["offset"][0]) if "offset" in query else -1
        return self.engine.get_history(max_items=max_items, offset=offset)

    def control(self, path: str, body: dict[str, Any]) -> None:
        """POST /queue, /history, /interrupt, /free: ComfyUI answers 200 with an empty body."""
        e = self.engine
        if path == "/queue":
            if "clear" in body and body["clear"]:
                e.clear_pending()
            for pid in body.get("delete") or []:
                e.delete_pending(pid)
        elif path == "/history":
            if "clear" in body and body["clear"]:
                e.clear_history()
            for pid in body.get("delete") or []:
                e.delete_history(pid)
        elif path == "/interrupt":
            e.interrupt(body.get("prompt_id") or None)
        elif path == "/free":
            e.free(body)

    def set_faults(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The run-time fault switch behind ``POST /_sim/faults``."""
        unknown = set(doc) - {"ws_drop_after", "ws_drop_now", "outage_s", "view"}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        outage = doc.get("outage_s")
        if outage is not None:
            if not isinstance(outage, (int, float)) or isinstance(outage, bool) or not 0 <= outage <= 86400:
                raise ValueError("outage_s must be a number of seconds from 0 to 86400 (0: answer again)")
            self.down_until = time.monotonic() + float(outage)
        view = doc.get("view")
        if view is not None:
            if not isinstance(view, dict) or view.get("mode") not in VIEW_FAULTS or not isinstance(
                    view.get("times", 1), int) or isinstance(view.get("times"), bool) or view.get("times", 1) < 0:
                raise ValueError(f"view must be {{\"mode\": one of {', '.join(VIEW_FAULTS)}, \"times\": N}}")
            with self._lock:
                self.view_fault = {"mode": view["mode"], "times": view.get("times", 1)}
        drop_after = doc.get("ws_drop_after")
        if drop_after is not None and (not isinstance(drop_after, int) or isinstance(drop_after, bool)
                                       or drop_after < 0):
            raise ValueError("ws_drop_after must be an integer >= 0 (0: off)")
        return self.hub.set_faults(drop_after=drop_after, drop_now=bool(doc.get("ws_drop_now")))

    def faults(self) -> dict[str, Any]:
        return {**self.hub.faults(), "outage_left_s": round(max(0.0, self.down_until - time.monotonic()), 3),
                "view": dict(self.view_fault)}

    def take_view_fault(self) -> str | None:
        """The misbehaviour for this /view request, if one is still due (each is used once)."""
        with self._lock:
            if self.view_fault.get("times", 0) > 0:
                self.view_fault["times"] -= 1
                return self.view_fault["mode"]
        return None

    def unanswered(self, path: str) -> bool:
        """During an outage every request but /_sim/ goes unanswered, as from a hung or crashed ComfyUI."""
        return not path.startswith("/_sim/") and time.monotonic() < self.down_until

    def load_faults_file(self) -> None:
        """Apply ``faults_file`` (JSON like POST /_sim/faults) if it exists: the simulator writes it when
        ``sim.start --comfy-ws-drop`` changes a running simulator, for stand-ins not listening yet."""
        if self.faults_file is None:
            return
        try:
            doc = json.loads(self.faults_file.read_text(encoding="utf-8"))
            self.set_faults({k: v for k, v in doc.items() if k == "ws_drop_after"})
        except (OSError, ValueError, AttributeError):
            pass  # no file, or a damaged one: the constructor's settings stay

    def upload_mask(self, fields: dict, filename: str, data: bytes) -> tuple[int, dict | None]:
        """POST /upload/mask: the original image's RGB with the uploaded mask's alpha, saved as a new file."""
        ref = json.loads(fields.get("original_ref") or "{}")
        status, original = self.folders.view_path(str(ref.get("filename") or ""), ref.get("type") or "output",
                                                  ref.get("subfolder") or None)
        composed = None
        if status == 200 and original is not None:
            composed = im.compose_mask(original, data)
        # Without the original, ComfyUI answers as if it had saved, and saves nothing.
        return self.folders.upload(filename, data, kind=fields.get("type"), subfolder=fields.get("subfolder", ""),
                                   overwrite=fields.get("overwrite"), content=composed, write=composed is not None)


def _one_segment(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` plus one non-empty path segment, as aiohttp matches ``/prefix/{name}``."""
    rest = path[len(prefix):]
    return path.startswith(prefix) and bool(rest) and "/" not in rest


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cross_origin(host: str | None, origin: str | None) -> bool:
    """ComfyUI's rule: with both headers, a loopback Host and an Origin naming another host (ports compared
    only when both carry one) is a request from some other web page."""
    if not host or not origin:
        return False
    host_domain = host.lower()
    parsed = urlsplit(origin)
    origin_domain = parsed.netloc.lower()
    host_parsed = urlsplit("//" + host_domain)
    try:
        origin_port, host_port = parsed.port, host_parsed.port
    except ValueError:  # a port that is not a number
        return True
    if not _loopback(host_parsed.hostname):
        return False
    if origin_port is None:
        host_domain = host_parsed.hostname or ""
    if host_port is None:
        origin_domain = parsed.hostname or ""
    return bool(host_domain) and bool(origin_domain) and host_domain != origin_domain


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """(fields, files by field name: (filename, bytes)) of a multipart/form-data body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not msg.is_multipart():
        return fields, files
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_param("filename", header="content-disposition")
        if filename is not None:
            files.setdefault(name, (filename, payload))
        else:
            fields.setdefault(name, payload.decode("utf-8", "replace"))
    return fields, files


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "Python/3.11 aiohttp/3.12"
    sys_version = ""
    wbufsize = -1  # buffered: a reply goes out in one write when the request is done (the WebSocket flushes)

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests and the simulator own stderr
        pass

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/api/"):  # every route also exists under /api/...
            path = path[4:]
        return path, parse_qs(parts.query, keep_blank_values=True)

    def _send(self, status: int, body: Any = None, *,
              content_type: str | None = "application/json; charset=utf-8", headers: dict | None = None) -> None:
        if body is None:
            raw = b""
        elif isinstance(body, (bytes, str)):
            raw = body.encode() if isinstance(body, str) else body
        else:
            raw = json.dumps(body).encode()
        self.send_response(status)
        if content_type and (raw or status != 200):
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _empty(self, status: int) -> None:
        self._send(status, None, content_type=None)

    def _server_error(self) -> None:
        self._send(500, SERVER_ERROR, content_type="text/plain; charset=utf-8")

    def _not_found(self) -> None:
        self._send(404, "404: Not Found", content_type="text/plain; charset=utf-8")

    def _text(self, status: int, text: str) -> None:
        self._send(status, text, content_type="text/plain; charset=utf-8")

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._dispatch("GET", self._get)

    def _dispatch(self, method: str, handle: Any) -> None:
        """Every method's common path: record the request, go silent in an outage, refuse a foreign web
        page, then ``handle(standin, path, query)``; a client gone mid-answer is no error."""
        s = self.server.standin
        path, query = self._route()
        s.requests.append((method, path))
        if s.unanswered(path):
            self.close_connection = True
            return
        if self._refused_origin():
            return
        try:
            handle(s, path, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            self._server_error()

    def _get(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> None:
        if path == "/ws":
            return self._websocket(s, query)
        if path == "/":
            return self._index(s)
        if path == "/system_stats":
            return self._send(200, s.system_stats)
        if path == "/queue":
            return self._send(200, {"queue_running": s.running, "queue_pending": s.pending})
        if path == "/prompt":
            return self._send(200, {"exec_info": {"queue_remaining": s.engine.remaining()}})
        if path == "/history":
            return self._send(200, s.history_slice(query))
        if path.startswith("/history/"):
            return self._send(200, s.engine.get_history(unquote(path[len("/history/"):])))
        if path == "/object_info":
            return self._send(200, s.full_object_info())
        if path.startswith("/object_info/"):
            node = unquote(path[len("/object_info/"):])
            info = s.node_info(node)
            return self._send(200, {node: info} if info is not None else {})
        if path in ("/embeddings", "/extensions", "/features", "/models"):
            return self._send(200, s.static[path[1:]])
        if path.startswith("/models/"):
            names = s.models.filenames(unquote(path[len("/models/"):]))
            return self._empty(404) if names is None else self._send(200, names)
        if path == "/experiment/models":
            return self._send(200, s.models.experiment())
        if path.startswith("/experiment/models/"):
            items = s.models.items(unquote(path[len("/experiment/models/"):]))
            return self._empty(404) if items is None else self._send(200, items)
        if path == "/internal/folder_paths":
            return self._send(200, s.models.paths())
        if path == "/view":
            return self._view(s, query)
        if path == "/_sim/faults":
            return self._send(200, s.faults())
        if self._editor_get(s, path, query):
            return None
        return self._static(s)

    # -- the editor ------------------------------------------------------------------------------

    def _index(self, s: ComfyUIStandin) -> None:
        if s.static_root is None:
            return self._send(200, editor.no_editor_page(), content_type="text/html; charset=utf-8")
        self._send_file(s.static_root / "index.html", "text/html", dict(editor.ROOT_HEADERS))

    def _static(self, s: ComfyUIStandin) -> None:
        """Any other GET is a file of the editor's folder, as ComfyUI's static route at "/" answers it
        (a POST-only route like /free included: 404 octet-stream)."""
        url_path = urlsplit(self.path).path
        kind, file = editor.resolve(s.static_root, url_path) if s.static_root else ("missing", None)
        status = {"file": 200, "folder": 403}.get(kind, 404)
        cache = editor.cache_control(url_path, status)
        headers = {"Cache-Control": cache} if cache else {}
        if kind == "file" and file is not None:
            return self._send_file(file, editor.content_type(file), headers)
        if kind == "folder":
            return self._send(403, "403: Forbidden", content_type="text/plain; charset=utf-8", headers=headers)
        if kind == "outside":
            return self._send(404, "404: Not Found", content_type="text/plain; charset=utf-8", headers=headers)
        return self._send(404, None, content_type="application/octet-stream", headers=headers)

    def _editor_get(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> bool:
        """The calls the editor makes as it opens (users, settings, user data, i18n, model folders)."""
        q = {k: v[0] for k, v in query.items()}
        if path == "/users":
            self._send(200, s.userdata.users())
        elif path == "/settings":
            self._send(200, s.userdata.settings())
        elif _one_segment(path, "/settings/"):
            self._send(200, json.dumps(s.userdata.settings().get(unquote(path[len("/settings/"):]))))
        elif path == "/userdata":
            status, body = s.userdata.listing(q)
            if status == 200:
                self._send(200, body)
            else:
                self._text(status, body)
        elif _one_segment(path, "/userdata/"):
            file = s.userdata.path(path[len("/userdata/"):])
            if file is None:
                self._empty(403)
            elif not file.is_file():
                self._empty(404)
            else:
                self._send_file(file, mimetypes.guess_type(file.name)[0] or "application/octet-stream", {})
        elif path == "/i18n":
            self._send(200, s.i18n)
        elif path == "/internal/logs":
            self._send(200, json.dumps(""))  # the editor's terminal panel: the stand-in keeps no server log
        elif path == "/internal/logs/raw":
            self._send(200, {"entries": [], "size": {"cols": 80, "rows": 24}})
        elif _one_segment(path, "/internal/files/"):
            kind = unquote(path[len("/internal/files/"):])
            if kind not in ("input", "output", "temp"):
                self._send(400, {"error": "Invalid directory type"})
            else:
                self._send(200, s.folders.newest_first(kind))
        elif path == "/workflow_templates":
            self._send(200, {})  # no custom node ships templates here
        else:
            return False
        return True

    def _editor_post(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> bool:
        """What the editor writes: settings (JSON) and user data files (raw bytes)."""
        q = {k: v[0] for k, v in query.items()}
        if path.startswith("/userdata/"):
            rest = path[len("/userdata/"):]
            source, sep, dest = rest.partition("/move/")
            overwrite = q.get("overwrite", "true") != "false"
            full_info = q.get("full_info", "false").lower() == "true"
            if sep and "/" not in source and dest and "/" not in dest:
                status, body = s.userdata.move(source, dest, overwrite=overwrite, full_info=full_info)
            elif not sep and rest and "/" not in rest:
                if int(self.headers.get("Content-Length") or 0) > MAX_UPLOAD_SIZE:
                    self.close_connection = True
                    self._text(413, "request body too large")
                    return True
                status, body = s.userdata.write(rest, self._body(), overwrite=overwrite, full_info=full_info)
            else:
                return False
            if status == 200:
                self._send(200, json.dumps(body))  # a bare path is a JSON string too
            elif body is None:
                self._empty(status)
            else:
                self._text(status, body)
            return True
        if path != "/settings" and not _one_segment(path, "/settings/"):
            return False
        try:
            value = json.loads(self._body())
        except ValueError:
            self._server_error()  # ComfyUI's request.json() raises on a body that is not JSON
            return True
        if path == "/settings":
            if not isinstance(value, dict):
                self._server_error()
                return True
            s.userdata.update_settings(value)
        else:
            s.userdata.update_settings({unquote(path[len("/settings/"):]): value})
        self._empty(200)
        return True

    def do_DELETE(self) -> None:
        self._dispatch("DELETE", self._delete)

    def _delete(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> None:
        if _one_segment(path, "/userdata/"):
            return self._empty(s.userdata.delete(path[len("/userdata/"):]))
        return self._not_found()

    def do_PATCH(self) -> None:
        self._dispatch("PATCH", self._patch)

    def _patch(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> None:
        """The editor's logs panel subscribes to log lines; the stand-in has none to send."""
        self._body()
        if urlsplit(self.path).path == "/internal/logs/subscribe":  # ComfyUI's internal routes have no /api/ twin
            return self._empty(200)
        return self._not_found()

    def _refused_origin(self) -> bool:
        """ComfyUI's guard against other web pages: a request to a loopback host whose Origin names another
        host gets 403, so a site open in the same browser cannot queue prompts or write settings."""
        if not cross_origin(self.headers.get("Host"), self.headers.get("Origin")):
            return False
        self._empty(403)
        return True

    def do_POST(self) -> None:
        self._dispatch("POST", self._post)

    def _post(self, s: ComfyUIStandin, path: str, query: dict[str, list[str]]) -> None:
        if path in ("/upload/image", "/upload/mask"):
            return self._upload(s, path)
        if self._editor_post(s, path, query):
            return None
        raw = self._body()
        try:
            body: Any = json.loads(raw)
        except ValueError:  # an empty body too: ComfyUI's request.json() raises, aiohttp answers 500
            body = None
        if path == "/prompt":
            if not isinstance(body, dict):
                return self._server_error()
            status, doc = s.submit(body)
            return self._send(status, doc)
        if path in ("/queue", "/history", "/interrupt", "/free"):
            if not isinstance(body, dict) and path != "/interrupt":  # /interrupt alone tolerates no JSON
                return self._server_error()
            s.control(path, body if isinstance(body, dict) else {})
            return self._empty(200)
        if path == "/_sim/faults":
            try:
                if not isinstance(body, dict):
                    raise ValueError("send a JSON object, e.g. {\"ws_drop_after\": 5}")
                return self._send(200, s.set_faults(body))
            except ValueError as e:
                return self._send(400, {"error": str(e)})
        return self._not_found()

    # -- files -----------------------------------------------------------------------------------

    def _upload(self, s: ComfyUIStandin, path: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_SIZE:
            self.close_connection = True
            return self._send(413, f"Maximum request body size {MAX_UPLOAD_SIZE} exceeded, actual body size {length}",
                              content_type="text/plain; charset=utf-8")
        fields, files = parse_multipart(self.headers.get("Content-Type") or "", self._body())
        if "image" not in files:
            return self._empty(400)  # no file, or the file under another field name
        filename, data = files["image"]
        if path == "/upload/mask":
            status, doc = s.upload_mask(fields, filename, data)
        else:
            status, doc = s.folders.upload(filename, data, kind=fields.get("type"),
                                           subfolder=fields.get("subfolder", ""), overwrite=fields.get("overwrite"))
        if doc is None:
            return self._empty(status)
        return self._send(status, doc)

    def _view(self, s: ComfyUIStandin, query: dict[str, list[str]]) -> None:
        q = {k: v[0] for k, v in query.items()}
        if "filename" not in q:
            return self._empty(404)
        status, file = s.folders.view_path(q["filename"], q.get("type", "output"), q.get("subfolder"))
        if status != 200 or file is None:
            return self._empty(status)
        fault = s.take_view_fault()
        if fault:
            return self._bad_view(s, fault, file)
        name = os.path.basename(s.folders.annotated(q["filename"])[0])
        disposition = {"Content-Disposition": f'filename="{name}"'}
        channel = q.get("channel", "rgba")
        try:  # as ComfyUI's /view does with Pillow; a file it cannot read fails as there (500)
            if "preview" in q:
                body, ctype = im.view_preview(file, q["preview"], q.get("channel", ""))
                return self._send(200, body, content_type=ctype, headers=disposition)
            if channel in ("rgb", "a"):
                return self._send(200, im.view_channel(file, channel), content_type="image/png", headers=disposition)
        except (OSError, ValueError):
            return self._send(500, b"500 Internal Server Error\n\nServer got itself in trouble",
                              content_type="text/plain")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype in _UNSAFE_TYPES:
            ctype = "application/octet-stream"
        self._send_file(file, ctype, disposition)

    def _bad_view(self, s: ComfyUIStandin, mode: str, file: Path) -> None:
        """What a broken proxy or a dying server sends instead of the file (``view`` fault)."""
        size = file.stat().st_size
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "error":
            self._send(502, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        elif mode == "html":
            self._send(200, b"<!doctype html><html><body>Sign in to continue</body></html>",
                       content_type="text/html; charset=utf-8")
        else:  # short, break, stall: announce the whole file, send part of it
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size + (16 if mode == "long" else 0)))
            self.end_headers()
            data = file.read_bytes()
            part = data if mode == "long" else data[:max(1, size // 2)]
            self.wfile.write(part)
            self.wfile.flush()
            if mode == "stall":  # then nothing more until the client gives up or the stand-in stops
                s._stopped.wait(120)
        self.close_connection = True

    def _send_file(self, file: Path, ctype: str, headers: dict) -> None:
        """Stream from disk (sendfile), with single byte ranges like aiohttp's FileResponse."""
        with file.open("rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{st.st_mtime_ns:x}-{size:x}"'  # aiohttp's
            if self._not_modified(etag, int(st.st_mtime)):
                self.send_response(304)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
                self.end_headers()
                return
            span = byte_range(self.headers.get("Range"), size)
            if span is not None:
                start, end, status = span
            else:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = end - start + 1 if size else 0
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD" or not length:
                return
            self.wfile.flush()
            sent = 0
            while sent < length:  # the kernel copies; memory stays flat whatever the file's size
                n = self.connection.sendfile(f, start + sent, length - sent)
                if not n:
                    break
                sent += n

    def _not_modified(self, etag: str, mtime: int) -> bool:
        """A browser revalidating its copy (the editor's scripts are no-cache) gets 304 and no body."""
        match = self.headers.get("If-None-Match")
        if match is not None:
            return etag in (t.strip() for t in match.split(",")) or match.strip() == "*"
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                return mtime <= int(email.utils.parsedate_to_datetime(since).timestamp())
            except (TypeError, ValueError, OverflowError):
                return False
        return False

    # -- the WebSocket ---------------------------------------------------------------------------

    def _websocket(self, s: ComfyUIStandin, query: dict[str, list[str]]) -> None:
        problem = handshake_problem(self.command, self.headers)
        if problem:
            return self._send(400, problem, content_type="text/plain; charset=utf-8")
        key = self.headers["Sec-WebSocket-Key"]

        def accept() -> None:
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "upgrade")
            self.send_header("Sec-WebSocket-Accept", accept_key(key))
            self.end_headers()
            self.wfile.flush()  # frames go to the socket itself from here on

        ws = ServerWebSocket(self.connection, self.rfile)
        s.hub.serve(ws, (query.get("clientId") or [""])[0], accept=accept, greeting=s.engine.greeting,
                    features=s.static["features"])
        self.close_connection = True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m autopod.sim.comfyui_standin",
                                description="Serve and execute like ComfyUI 0.3.64 on a local port.")
    p.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "localhost"))
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--ready-after", type=float, default=0.0,
                   help="seconds before the port accepts connections (a first boot copying ComfyUI)")
    p.add_argument("--state", choices=("idle", "busy"), default="idle")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--root", type=Path, default=None, help="folder for input/, output/, temp/ and models/ (default: a temp dir)")
    p.add_argument("--sim-nodes", action="store_true", help="also list and run the stand-in's own nodes")
    p.add_argument("--ws-drop-after", type=int, default=0, metavar="N",
                   help="cut every WebSocket connection instead of sending its (N+1)th message (0: never)")
    args = p.parse_args(argv)
    if args.ws_drop_after < 0:
        p.error("--ws-drop-after must be >= 0")
    standin = ComfyUIStandin(host=args.host, port=args.port, ready_after=args.ready_after, data_dir=args.data_dir,
                             state=args.state, root=args.root, sim_nodes=args.sim_nodes,
                             ws_drop_after=args.ws_drop_after).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"url": standin.url, "port": standin.port, "pid": os.getpid(), "ready_after": args.ready_after,
                      "root": str(standin.root)}), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        standin.stop()


if __name__ == "__main__":
    main(sys.argv[1:])

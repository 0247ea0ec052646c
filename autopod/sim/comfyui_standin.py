"""A ComfyUI stand-in: answers like a real ComfyUI 0.3.64, from recorded responses.

Tests and the offline simulator use it where a real ComfyUI (and a GPU) is not
available. Responses come from recordings of a real server in
``autopod/sim/data/comfyui/`` (system stats, node definitions, error bodies);
the queue and history are kept in memory so that a POST /prompt shows up in
GET /history like on a real server (prompts "run" instantly and succeed).

Not listening yet: a pod's ComfyUI only starts after the image has copied it
onto the volume. To imitate that, the stand-in binds its port at once (so the
port is reserved and its URL known up front) but calls ``listen()`` only after
``ready_after`` seconds. Until then a connection to the port is refused by the
kernel, exactly like a port nobody listens on; through an SSH tunnel it shows
as a channel that opens and closes at once.

Command line (the simulator runs one per simulated pod)::

    python -m autopod.sim.comfyui_standin --port 0 --ready-after 30
    {"url": "http://127.0.0.1:41234", "port": 41234, "pid": 4242, "ready_after": 30.0}

The JSON line is printed as soon as the port is bound; it answers HTTP from
``ready_after`` seconds on. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DATA_DIR = Path(__file__).resolve().parent / "data" / "comfyui"


def _load(data_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: "ComfyUIStandin"


class ComfyUIStandin:
    """``with ComfyUIStandin(ready_after=2).start() as s: requests.get(s.url + "/system_stats")``.

    ``state="busy"`` starts with the recorded busy queue (1 running, 4 pending) and
    the recorded history (11 entries) instead of an idle, empty server.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ready_after: float = 0.0,
                 data_dir: Path | None = None, state: str = "idle"):
        self.host = host
        self.ready_after = float(ready_after)
        self.data_dir = Path(data_dir) if data_dir else DATA_DIR
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._serve_thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._started = False
        self.requests: list[tuple[str, str]] = []  # (method, path) seen, for tests
        self._load_data(state)
        self._httpd = _Server((host, port), _Handler, bind_and_activate=False)
        self._httpd.standin = self
        self._requested_port = port

    # -- data ----------------------------------------------------------------------------------

    def _load_data(self, state: str) -> None:
        d = self.data_dir
        self.system_stats = _load(d, "system_stats")["body"]
        with gzip.open(d / "object_info_full.json.gz", "rt", encoding="utf-8") as f:
            self.object_info: dict[str, Any] = json.load(f)
        self.static = {name: _load(d, name)["body"] for name in ("embeddings", "extensions", "features", "models")}
        self.errors = {name: _load(d, name)["body"] for name in
                       ("prompt_no_prompt_key", "prompt_no_outputs", "prompt_invalid_class", "prompt_missing_class_type")}
        self.not_json = _load(d, "prompt_not_json")
        if state == "busy":
            q = _load(d, "queue_busy")["body"]
            self.running, self.pending = q["queue_running"], q["queue_pending"]
            self.history: dict[str, Any] = _load(d, "history_all")["body"]
        elif state == "idle":
            self.running, self.pending, self.history = [], [], {}
        else:
            raise ValueError(f"state must be 'idle' or 'busy', not {state!r}")
        numbers = [i[0] for i in self.running + self.pending] + [h["prompt"][0] for h in self.history.values()]
        self.counter = int(max(numbers, default=-1)) + 1

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> "ComfyUIStandin":
        """Bind now; listen now or after ``ready_after`` seconds. Returns self (idempotent)."""
        if self._started:
            return self
        self._started = True
        self._httpd.server_bind()
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
        if self._serve_thread:
            self._serve_thread.join(timeout=5)

    def __enter__(self) -> "ComfyUIStandin":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- behaviour -----------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> tuple[int, Any]:
        """POST /prompt: validate like ComfyUI's first checks, then complete the prompt at once."""
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return 400, self.errors["prompt_no_prompt_key"]
        outputs = []
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                err = copy.deepcopy(self.errors["prompt_missing_class_type"])
                err["error"]["details"] = f"Node ID '#{node_id}'"
                return 400, err
            cls = self.object_info.get(node["class_type"])
            if cls is None:
                err = copy.deepcopy(self.errors["prompt_invalid_class"])
                err["error"]["message"] = f"Cannot execute because node {node['class_type']} does not exist."
                err["error"]["details"] = f"Node ID '#{node_id}'"
                return 400, err
            if cls.get("output_node"):
                outputs.append(str(node_id))
        if not outputs:
            return 400, self.errors["prompt_no_outputs"]
        with self._lock:
            if "number" in body:
                number: Any = float(body["number"])
            elif body.get("front"):
                number = -self.counter
                self.counter += 1
            else:
                number = self.counter
                self.counter += 1
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            extra = dict(body.get("extra_data") or {})
            if body.get("client_id"):
                extra["client_id"] = body["client_id"]
            now = int(time.time() * 1000)
            self.history[prompt_id] = {
                "prompt": [number, prompt_id, prompt, extra, outputs],
                "outputs": {},
                "status": {"status_str": "success", "completed": True, "messages": [
                    ["execution_start", {"prompt_id": prompt_id, "timestamp": now}],
                    ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": now}],
                    ["execution_success", {"prompt_id": prompt_id, "timestamp": now}]]},
                "meta": {},
            }
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": {}}

    def history_slice(self, query: dict[str, list[str]]) -> dict[str, Any]:
        items = list(self.history.items())
        max_items = int(query["max_items"][0]) if "max_items" in query else None
        if "offset" in query:
            # Like ComfyUI: with an offset the count starts from the oldest entry.
            start = int(query["offset"][0])
            items = items[start:start + max_items if max_items is not None else None]
        elif max_items is not None:
            items = items[-max_items:] if max_items > 0 else []
        return dict(items)

    def control(self, path: str, body: dict[str, Any]) -> None:
        """POST /queue, /history, /interrupt, /free: ComfyUI answers 200 with an empty body."""
        with self._lock:
            if path == "/queue":
                if body.get("clear"):
                    self.pending = []
                for pid in body.get("delete") or []:
                    self.pending = [i for i in self.pending if i[1] != pid]
            elif path == "/history":
                if body.get("clear"):
                    self.history = {}
                for pid in body.get("delete") or []:
                    self.history.pop(pid, None)


_MODEL_FOLDERS_EMPTY: list = []


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "Python/3.11 aiohttp/3.12"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: tests and the simulator own stderr
        pass

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/api/"):  # every route also exists under /api/...
            path = path[4:]
        return path, parse_qs(parts.query)

    def _send(self, status: int, body: Any = None, *, content_type: str | None = "application/json; charset=utf-8") -> None:
        if body is None:
            raw = b""
        elif isinstance(body, (bytes, str)):
            raw = body.encode() if isinstance(body, str) else body
        else:
            raw = json.dumps(body).encode()
        self.send_response(status)
        if content_type and (raw or status != 200):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def do_GET(self) -> None:
        s = self.server.standin
        path, query = self._route()
        s.requests.append(("GET", path))
        if path == "/system_stats":
            return self._send(200, s.system_stats)
        if path == "/queue":
            return self._send(200, {"queue_running": s.running, "queue_pending": s.pending})
        if path == "/prompt":
            return self._send(200, {"exec_info": {"queue_remaining": len(s.running) + len(s.pending)}})
        if path == "/history":
            return self._send(200, s.history_slice(query))
        if path.startswith("/history/"):
            pid = unquote(path[len("/history/"):])
            return self._send(200, {pid: s.history[pid]} if pid in s.history else {})
        if path == "/object_info":
            return self._send(200, s.object_info)
        if path.startswith("/object_info/"):
            node = unquote(path[len("/object_info/"):])
            return self._send(200, {node: s.object_info[node]} if node in s.object_info else {})
        if path in ("/embeddings", "/extensions", "/features", "/models"):
            return self._send(200, s.static[path[1:]])
        if path.startswith("/models/"):
            folder = unquote(path[len("/models/"):])
            if folder in s.static["models"]:
                return self._send(200, _MODEL_FOLDERS_EMPTY)  # no model files on the stand-in
            return self._send(404, None, content_type=None)
        if path == "/free":  # POST-only route: aiohttp answers 404 octet-stream
            return self._send(404, None, content_type="application/octet-stream")
        return self._send(404, "404: Not Found", content_type="text/plain; charset=utf-8")

    def do_POST(self) -> None:
        s = self.server.standin
        path, _ = self._route()
        s.requests.append(("POST", path))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        if path == "/prompt":
            if not isinstance(body, dict):
                rec = s.not_json
                return self._send(rec["status"], rec["body"], content_type=rec["headers"]["Content-Type"])
            status, doc = s.submit(body)
            return self._send(status, doc)
        if path in ("/queue", "/history", "/interrupt", "/free"):
            s.control(path, body if isinstance(body, dict) else {})
            return self._send(200, None, content_type=None)
        return self._send(404, "404: Not Found", content_type="text/plain; charset=utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m autopod.sim.comfyui_standin",
                                description="Serve recorded ComfyUI 0.3.64 answers on a local port.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--ready-after", type=float, default=0.0,
                   help="seconds before the port accepts connections (a first boot copying ComfyUI)")
    p.add_argument("--state", choices=("idle", "busy"), default="idle")
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    standin = ComfyUIStandin(host=args.host, port=args.port, ready_after=args.ready_after,
                             data_dir=args.data_dir, state=args.state).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"url": standin.url, "port": standin.port, "pid": _pid(), "ready_after": args.ready_after}),
          flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        standin.stop()


def _pid() -> int:
    import os

    return os.getpid()


if __name__ == "__main__":
    main(sys.argv[1:])

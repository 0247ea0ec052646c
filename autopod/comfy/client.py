"""A small client for ComfyUI's HTTP API: status and node definitions, submitting prompts, uploads,
streamed downloads, the queue and interrupts. Events over the WebSocket live in ``events.py``.

It is synchronous on purpose: a task makes a few requests, and a run follows one
WebSocket in the main thread, so an event loop would add start-up cost and nothing else.

Facts from real ComfyUI 0.3.64 recordings that shape the parsing here:
queue items are 5-element arrays ``[number, prompt_id, prompt, extra_data,
outputs_to_execute]``; ``queue_pending`` is a heap copy, so it is sorted here;
unknown ids answer 200 ``{}`` rather than 404; control endpoints answer 200
with an empty body; a non-JSON request body gets a 500 ``text/plain``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import ComfyError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8188"
DEFAULT_TIMEOUT = 10.0
BODY_LIMIT = 2000  # characters of an error body kept in the message
# A download slower than this over this long has stalled (curl's --speed-limit and --speed-time):
# a server that trickles a byte a minute must not hold a run forever.
LOW_SPEED_BYTES = 1024
LOW_SPEED_S = 30.0


class ComfyUnreachable(ComfyError):
    """Nothing answers at the URL: the tunnel is down, or ComfyUI is not listening yet."""


class ComfyTimeout(ComfyError):
    """Connected, but ComfyUI did not answer in time."""


class BadDownload(ComfyError):
    """A GET /view that did not bring the file: a redirect, an error or HTML page, fewer or more bytes than
    announced, a transfer that broke off or crawled. Worth another try; never saved as the output."""


class DownloadDeadline(ComfyError):
    """The run's ``--timeout`` came during a download."""


class ComfyHTTPError(ComfyError):
    """ComfyUI answered with an HTTP error; ``status`` and ``body`` are kept for callers."""

    def __init__(self, msg: str, *, status: int, body: Any):
        super().__init__(msg)
        self.status = status
        self.body = body


@dataclass
class Submitted:
    """POST /prompt's answer. ``node_errors`` may be non-empty on a 200: ComfyUI dropped the invalid
    outputs and runs the rest, which a caller must report, never treat as plain success."""

    prompt_id: str
    number: float | None
    node_errors: dict[str, Any] = field(default_factory=dict)


@dataclass
class QueueItem:
    """One queue entry; ComfyUI sends it as ``[number, prompt_id, prompt, extra_data, outputs]``."""

    number: float
    prompt_id: str
    prompt: dict[str, Any] = field(repr=False)
    extra_data: dict[str, Any] = field(default_factory=dict, repr=False)
    outputs: list[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, item: Any) -> "QueueItem":
        if not isinstance(item, (list, tuple)) or len(item) < 5:
            raise ComfyError(f"unexpected ComfyUI queue item (want a 5-element array): {str(item)[:200]}")
        number, prompt_id, prompt, extra, outputs = item[:5]
        return cls(number, str(prompt_id), prompt or {}, extra or {}, list(outputs or []))

    @property
    def client_id(self) -> str | None:
        return self.extra_data.get("client_id")

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "prompt_id": self.prompt_id, "client_id": self.client_id,
                "outputs": self.outputs, "nodes": len(self.prompt)}


@dataclass
class QueueInfo:
    running: list[QueueItem]
    pending: list[QueueItem]  # sorted by number: the order ComfyUI will run them

    @property
    def running_count(self) -> int:
        return len(self.running)

    @property
    def pending_count(self) -> int:
        return len(self.pending)

    def to_dict(self) -> dict[str, Any]:
        return {"running": self.running_count, "pending": self.pending_count,
                "running_items": [i.to_dict() for i in self.running],
                "pending_items": [i.to_dict() for i in self.pending]}


class ComfyUIClient:
    """``ComfyUIClient("http://127.0.0.1:8188").get_system_stats()``; one HTTP session per client.

    ``retries``/``backoff``/``max_delay`` drive :meth:`is_ready` (2 s, 4 s, 8 s by
    default); ``sleep`` is injectable so tests and callers with a deadline control
    the waiting.
    """

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT, *, retries: int = 3,
                 backoff: float = 2.0, max_delay: float = 8.0, sleep: Callable[[float], None] = time.sleep,
                 session: Any = None):
        from .transport import Session  # http.client: importing requests cost every comfy command ~40 ms

        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_delay = float(max_delay)
        self.sleep = sleep
        self.session = session or Session()

    def __enter__(self) -> "ComfyUIClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"ComfyUIClient({self.base_url!r}, timeout={self.timeout})"

    # -- readiness -------------------------------------------------------------------------------

    def retry_delays(self, retries: int | None = None) -> list[float]:
        """The waits between attempts: backoff * 2**i, each capped at ``max_delay``."""
        n = self.retries if retries is None else retries
        return [min(self.backoff * (2 ** i), self.max_delay) for i in range(n)]

    def is_ready(self, *, retries: int | None = None, timeout: float | None = None) -> bool:
        """True once GET /system_stats answers 200; never raises for an unreachable server.

        Tries once, then once after each delay of :meth:`retry_delays` (``retries=0``
        is a single probe).
        """
        delays = self.retry_delays(retries)
        for attempt in range(len(delays) + 1):
            try:
                self.get_system_stats(timeout=timeout)
                return True
            except ComfyError as e:
                log.debug("ComfyUI not ready (attempt %d/%d): %s", attempt + 1, len(delays) + 1, e)
            if attempt < len(delays):
                self.sleep(delays[attempt])
        return False

    # -- read-only endpoints -----------------------------------------------------------------------

    def get_system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"system": {comfyui_version, python_version, pytorch_version, ram_total, ram_free, ...}, "devices": [...]}``."""
        data = self._get_json("/system_stats", timeout=timeout)
        if not isinstance(data, dict) or "system" not in data:
            raise ComfyError(f"unexpected /system_stats answer from {self.base_url}: {str(data)[:200]}")
        return data

    def get_queue_info(self) -> QueueInfo:
        data = self._get_json("/queue")
        running = [QueueItem.from_wire(i) for i in data.get("queue_running") or []]
        # queue_pending is a copy of the server's heap: only its first item is in order.
        pending = sorted((QueueItem.from_wire(i) for i in data.get("queue_pending") or []), key=lambda q: q.number)
        return QueueInfo(running=running, pending=pending)

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict[str, Any]:
        """``{prompt_id: {prompt, outputs, status, meta}}``; with ``max_items`` the newest N.

        An unknown ``prompt_id`` gives ``{}`` (ComfyUI answers 200, not 404).
        """
        if prompt_id is not None:
            return self._get_json(f"/history/{_segment(prompt_id)}")
        params = {"max_items": int(max_items)} if max_items is not None else None
        return self._get_json("/history", params=params)

    def get_object_info(self, node: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Every node definition, or ``{node: definition}`` for one (``{}`` when unknown)."""
        path = "/object_info" if node is None else f"/object_info/{_segment(node)}"
        return self._get_json(path, timeout=timeout)

    def list_models(self, folder: str) -> list[str] | None:
        """``GET /models/{folder}``: the files ComfyUI lists there (what it validates against); None when it
        has no such folder."""
        try:
            return list(self._get_json(f"/models/{_segment(folder)}"))
        except ComfyHTTPError as e:
            if e.status == 404:
                return None
            raise

    # -- running prompts ---------------------------------------------------------------------------

    def submit(self, prompt: dict[str, Any], client_id: str, *, prompt_id: str | None = None,
               extra_data: dict[str, Any] | None = None) -> Submitted:
        """POST /prompt. A rejected prompt raises ComfyHTTPError whose ``body`` holds ComfyUI's
        ``{"error", "node_errors"}``; ``prompt_id`` lets the caller choose the id (ComfyUI keeps it)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        data = self._json(self.request("POST", "/prompt", json=body), "POST /prompt")
        if not isinstance(data, dict) or not data.get("prompt_id"):
            raise ComfyError(f"unexpected POST /prompt answer from {self.base_url}: {_clip(str(data), 200)}")
        return Submitted(str(data["prompt_id"]), data.get("number"), data.get("node_errors") or {})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt at its next node boundary; with ``prompt_id``, only if that one runs."""
        self.request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        """Drop pending prompts (a running one is not affected: interrupt it)."""
        if prompt_ids:
            self.request("POST", "/queue", json={"delete": list(prompt_ids)})

    # -- files ---------------------------------------------------------------------------------------

    def upload_image(self, path: Any, *, name: str | None = None, subfolder: str = "", kind: str = "input",
                     overwrite: bool = False) -> dict[str, Any]:
        """POST /upload/image: ``{name, subfolder, type}``. ComfyUI keeps the name for identical bytes
        and renames different bytes ("cat (1).png") unless ``overwrite``."""
        from pathlib import Path

        p = Path(path)
        fields = {"type": kind, "overwrite": "true" if overwrite else "false"}
        if subfolder:
            fields["subfolder"] = subfolder
        with p.open("rb") as f:
            resp = self.request("POST", "/upload/image", files={"image": (name or p.name, f)}, data=fields,
                                timeout=max(self.timeout, 300.0))
        data = self._json(resp, "POST /upload/image")
        if not isinstance(data, dict) or not data.get("name"):
            raise ComfyError(f"unexpected upload answer from {self.base_url}: {_clip(str(data), 200)}")
        return data

    def download(self, item: dict[str, Any], out: Any, *, chunk: int = 1 << 20,
                 on_bytes: Callable[[int], None] | None = None, deadline: float | None = None,
                 low_speed: tuple[int, float] | None = None) -> tuple[int, str]:
        """Stream GET /view for one output ``{filename, subfolder, type}`` into the binary file ``out``.
        Returns (bytes, sha256). Memory stays flat whatever the size: one reused block.

        Only a 200 with the file is an output: a redirect, an error status, an HTML page for a file that
        is not one, a length other than announced, a transfer that broke off or moved slower than
        ``low_speed`` (bytes, seconds) raise ``BadDownload``; ``deadline`` (monotonic) raises
        ``DownloadDeadline``. Nothing is followed: /view never redirects on a real ComfyUI.

        On a 2-core machine a download through the tunnel is CPU-bound: every cycle spent here is one
        the tunnel's encryption does not get. So the socket is read with http.client's ``readinto``
        into one reused block; requests' ``iter_content`` allocates and copies every chunk. Measured
        side by side, 1 GB against ``curl -o``: iter_content with the sha256 in a second thread 0.68;
        readinto with the sha256 in line 0.77; readinto without a sha256 1.21 (a hashing thread that
        reads the file back at low priority did no better: 0.64). The sha256 is the sidecar's.
        """
        import hashlib
        import http.client
        import socket
        from urllib.parse import urlencode, urlsplit

        min_bytes, window = low_speed or (LOW_SPEED_BYTES, LOW_SPEED_S)
        name = item["filename"]
        params = {"filename": name, "subfolder": item.get("subfolder") or "", "type": item.get("type") or "output"}
        u = urlsplit(self.base_url)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection

        def read_timeout() -> float:
            t = min(max(self.timeout, 1.0), window)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DownloadDeadline(f"--timeout came while downloading {name}")
                t = min(t, left)
            return max(t, 0.05)

        conn = cls(u.hostname or "127.0.0.1", u.port, timeout=read_timeout())
        path = f"{u.path.rstrip('/')}/view?{urlencode(params)}"
        total = 0
        try:
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
            except socket.timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DownloadDeadline(f"--timeout came while downloading {name}") from None
                raise BadDownload(f"ComfyUI did not answer GET /view for {name} within {read_timeout():g}s") from None
            except (OSError, http.client.HTTPException) as e:
                raise ComfyUnreachable(_unreachable_msg(self.base_url, e)) from None
            if 300 <= resp.status < 400:
                raise BadDownload(f"GET /view for {name} answered {resp.status} (a redirect to "
                                  f"{_clip(resp.getheader('Location') or '?', 200)}), not the file")
            if resp.status != 200:
                body = resp.read(BODY_LIMIT).decode("utf-8", "replace")
                raise BadDownload(f"GET /view for {name} failed: HTTP {resp.status}: {_clip(body) or '(empty body)'}")
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if ctype in ("text/html", "application/xhtml+xml") and not name.lower().endswith((".html", ".htm")):
                raise BadDownload(f"GET /view for {name} answered an HTML page ({ctype}), not the file")
            expected = resp.getheader("Content-Length")
            sha = hashlib.sha256()
            block = bytearray(chunk)
            view = memoryview(block)
            mark_t, mark_n = time.monotonic(), 0  # the low-speed window
            try:
                while True:
                    if conn.sock is not None:
                        conn.sock.settimeout(read_timeout())
                    n = resp.readinto(block)
                    if not n:
                        break
                    out.write(view[:n])
                    sha.update(view[:n])
                    total += n
                    if on_bytes:
                        on_bytes(n)
                    now = time.monotonic()
                    if now - mark_t >= window:
                        if total - mark_n < min_bytes:
                            raise BadDownload(f"download of {name} stalled: {total - mark_n} bytes in the last "
                                              f"{now - mark_t:.0f}s (at {total} bytes)")
                        mark_t, mark_n = now, total
            except DownloadDeadline:
                raise
            except (socket.timeout, OSError, http.client.HTTPException) as e:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DownloadDeadline(f"--timeout came while downloading {name}") from None
                what = "stalled" if isinstance(e, socket.timeout) else f"broke off ({e})"
                raise BadDownload(f"download of {name} {what} after {total} bytes") from None
            digest = sha.hexdigest()
        finally:
            conn.close()
        if expected is not None and expected.strip().isdigit() and int(expected) != total:
            raise BadDownload(f"download of {name} brought {total} of the {expected} bytes announced")
        log.debug("GET /view %s -> %d bytes", name, total)
        return total, digest

    def ws_url(self, client_id: str) -> str:
        return "ws" + self.base_url[len("http"):] + f"/ws?clientId={client_id}"

    # -- transport -------------------------------------------------------------------------------

    def _json(self, resp: Any, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise ComfyError(f"ComfyUI at {self.base_url} sent a non-JSON answer to {what}: "
                             f"{_clip(resp.text)}") from None

    def _get_json(self, path: str, *, params: dict | None = None, timeout: float | None = None) -> Any:
        return self._json(self.request("GET", path, params=params, timeout=timeout), f"GET {path}")

    def request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        """One HTTP call, logged with URL, status and elapsed time; errors become ComfyError subclasses."""
        from .transport import ConnectionFailed, Timeout

        url = self.base_url + path
        t = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            resp = self.session.request(method, url, timeout=t, **kw)
        except Timeout:
            log.debug("%s %s -> timeout after %.3fs", method, url, time.monotonic() - start)
            raise ComfyTimeout(f"ComfyUI is not responding at {self.base_url} (no answer within {t:g}s); "
                               "it may be busy loading models, or the pod is overloaded") from None
        except ConnectionFailed as e:
            elapsed = time.monotonic() - start
            log.debug("%s %s -> connection error after %.3fs: %s", method, url, elapsed, e)
            raise ComfyUnreachable(_unreachable_msg(self.base_url, e)) from None
        elapsed = time.monotonic() - start
        log.debug("%s %s -> %d in %.3fs", method, resp.url, resp.status_code, elapsed)
        if resp.status_code >= 400:
            body = _body(resp)
            raise ComfyHTTPError(f"ComfyUI {method} {path} failed: HTTP {resp.status_code}: {_describe(body)}",
                                 status=resp.status_code, body=body)
        return resp


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _unreachable_msg(base_url: str, exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return (f"cannot connect to ComfyUI at {base_url}: connection refused; the tunnel is not up "
                "(`autopod comfy.status` creates it), or nothing listens at that address")
    # Through an SSH tunnel a ComfyUI that is not listening yet shows as a closed connection.
    return (f"cannot reach ComfyUI at {base_url}: the connection was closed ({_clip(text, 200)}); "
            "the tunnel is not up, or ComfyUI on the pod is not listening yet")


def _body(resp: Any) -> Any:
    if "json" in resp.headers.get("Content-Type", ""):
        try:
            return resp.json()
        except ValueError:
            pass
    return resp.text


def _describe(body: Any) -> str:
    """The useful part of an error body: ComfyUI's {"error": {type, message, details}} or the text."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        parts = [f"{err.get('type', 'error')}: {err.get('message', '')}".strip()]
        if err.get("details"):
            parts.append(f"({err['details']})")
        for node_id, ne in (body.get("node_errors") or {}).items():
            for e in (ne or {}).get("errors", [])[:3]:
                parts.append(f"node {node_id} ({ne.get('class_type', '?')}): {e.get('message', '')} {e.get('details', '')}".strip())
        return _clip(" ".join(parts))
    if body in ("", None):
        return "(empty body)"
    import json

    return _clip(body if isinstance(body, str) else json.dumps(body))


def _clip(text: str, limit: int = BODY_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"

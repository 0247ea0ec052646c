"""HTTP for the ComfyUI client on the standard library's ``http.client``: the part of ``requests.Session``
the client used (kept-alive connections, JSON and form bodies, one file upload, query parameters).

Every comfy command paid for importing requests (about 40 ms of CPU, a quarter of a small
``comfy.run``) to make a few requests to one host, nearly always 127.0.0.1 through a tunnel. What
this gives up is what that host does not need: proxies from the environment (a tunnel's loopback
address must never go through one), cookies, redirects, compressed answers (ComfyUI sends none).

A request body goes out in one write with its headers (``_OneWrite``): headers and body in two
writes wait for a delayed ACK on a kept-alive connection. Connections are
kept per host and reused by any thread; one the server has closed while idle is noticed before
reuse, and a GET that fails on a reused connection before any answer is sent again on a new one.
"""

from __future__ import annotations

import http.client
import json as _json
import select
import socket
import threading
import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

MAX_IDLE = 8  # kept-alive connections per session (the node definition checks use up to 8 at once)


class TransportError(Exception):
    pass


class ConnectionFailed(TransportError):
    """No answer: refused, reset, closed, or a name that does not resolve."""


class Timeout(TransportError):
    """Connected (or connecting), but nothing came in time."""


class Response:
    """An answer read whole: ``status_code``, ``headers`` (case-insensitive ``get``), ``content``, ``url``."""

    def __init__(self, status: int, headers: Any, content: bytes, url: str):
        self.status_code = status
        self.headers = headers
        self.content = content
        self.url = url

    @property
    def text(self) -> str:
        charset = (self.headers.get_content_charset() if hasattr(self.headers, "get_content_charset") else None)
        return self.content.decode(charset or "utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return _json.loads(self.content)


class _OneWrite:
    """Sends a request's headers and body in one write. http.client writes them apart (two ``send``
    calls), and on a kept-alive connection the body then waits for the server's delayed ACK."""

    hold_headers = False
    _held: bytes | None = None

    def send(self, data: Any) -> None:
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
        elif self.hold_headers:
            self.hold_headers, self._held = False, bytes(data)
            return
        super().send(data)  # type: ignore[misc]


class _HTTP(_OneWrite, http.client.HTTPConnection):
    pass


class _HTTPS(_OneWrite, http.client.HTTPSConnection):
    pass


class Session:
    """``Session().request("GET", url, timeout=10, params={...})`` -> Response; ``close()`` when done."""

    def __init__(self) -> None:
        self._idle: list[tuple[tuple[str, str, int], _HTTP]] = []
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *, timeout: float, params: dict | None = None, json: Any = None,
                data: dict | str | bytes | None = None, files: dict | None = None,
                headers: dict[str, str] | None = None) -> Response:
        u = urlsplit(url)
        key = (u.scheme, u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80))
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        if params:
            target += ("&" if u.query else "?") + urlencode(params)
        body, sent = _body(json, data, files)
        sent.update(headers or {})
        while True:
            conn, reused = self._take(key, timeout)
            try:
                conn.hold_headers = body is not None
                conn.request(method, target, body=body, headers=sent)
                resp = conn.getresponse()
                content = resp.read()
            except (TimeoutError, socket.timeout) as e:
                conn.close()
                raise Timeout(f"{method} {url}: no answer within {timeout:g}s ({e})") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused and method == "GET":  # closed while idle, as it was reused: once more, afresh
                    continue
                raise ConnectionFailed(f"{method} {url}: {e or type(e).__name__}") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise ConnectionFailed(f"{method} {url}: {e or type(e).__name__}") from None
            if resp.will_close:
                conn.close()
            else:
                self._give_back(key, conn)
            return Response(resp.status, resp.headers, content, f"{u.scheme}://{u.netloc}{target}")

    def _take(self, key: tuple[str, str, int], timeout: float) -> tuple[_HTTP, bool]:
        with self._lock:
            while True:
                found = next((i for i, (k, _) in enumerate(self._idle) if k == key), None)
                if found is None:
                    break
                conn = self._idle.pop(found)[1]
                if conn.sock is not None and not _closed_by_peer(conn.sock):
                    conn.sock.settimeout(timeout)
                    return conn, True
                conn.close()
        scheme, host, port = key
        cls = _HTTPS if scheme == "https" else _HTTP
        return cls(host, port, timeout=timeout), False

    def _give_back(self, key: tuple[str, str, int], conn: _HTTP) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append((key, conn))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle kept-alive connection is readable only when the server closed it (or broke the protocol)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _body(json: Any, data: dict | str | bytes | None, files: dict | None) -> tuple[bytes | None, dict[str, str]]:
    headers = {"User-Agent": "autopod", "Accept": "*/*"}
    if isinstance(data, (str, bytes)):
        return (data.encode() if isinstance(data, str) else data), headers
    if json is not None:
        headers["Content-Type"] = "application/json"
        return _json.dumps(json).encode(), headers
    if files:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (data or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_param(name)}"\r\n\r\n'.encode()
                         + str(value).encode() + b"\r\n")
        for name, (filename, fileobj) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_param(name)}"; '
                         f'filename="{_param(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                         + fileobj.read() + b"\r\n")
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return b"".join(parts) + f"--{boundary}--\r\n".encode(), headers
    if data:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return urlencode(data).encode(), headers
    return None, headers


def _param(value: str) -> str:
    """A form field's name or file name inside its quotes, escaped as browsers (and urllib3) escape it."""
    return str(value).replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")

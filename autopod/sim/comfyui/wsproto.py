"""The server side of RFC 6455 WebSockets over a socket an HTTP handler has already accepted.

Enough for ComfyUI's ``/ws``: the opening handshake, text and binary messages (fragmented
ones too), ping/pong, the closing handshake, masked client frames, no extensions. One
thread reads (``recv``); any thread may send: frames are written whole under a lock, and a
send that cannot go out within ``send_timeout`` (a client that stopped reading) kills the
connection instead of stalling the sender.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from typing import BinaryIO

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(Exception):
    pass


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def handshake_problem(method: str, headers) -> str | None:
    """Why this request cannot be upgraded (aiohttp answers that with 400), or None."""
    if method != "GET":
        return "Only GET can be upgraded to a WebSocket"
    if (headers.get("Upgrade") or "").lower() != "websocket":
        return f"No WebSocket UPGRADE hdr: {headers.get('Upgrade')}\n Can \"Upgrade\" only to \"WebSocket\"."
    if "upgrade" not in [t.strip().lower() for t in (headers.get("Connection") or "").split(",")]:
        return f"No CONNECTION upgrade hdr: {headers.get('Connection')}"
    if headers.get("Sec-WebSocket-Version") != "13":
        return f"Unsupported version: {headers.get('Sec-WebSocket-Version')}"
    key = headers.get("Sec-WebSocket-Key") or ""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        return f"Handshake error: {key!r}"
    return None


def encode_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _unmask(mask: bytes, data: bytes) -> bytes:
    if not data:
        return data
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


class ServerWebSocket:
    def __init__(self, sock: socket.socket, rfile: BinaryIO, *, max_message: int = 4 * 1024 * 1024,
                 send_timeout: float = 10.0):
        self.sock = sock
        self.rfile = rfile
        self.max_message = max_message
        self._wlock = threading.Lock()
        self._closing = False  # a close frame went out: nothing else may follow it
        self.closed = False
        if send_timeout:
            # A kernel-level send timeout: the reader thread keeps blocking reads meanwhile.
            secs = int(send_timeout)
            usecs = int((send_timeout - secs) * 1e6)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", secs, usecs))
            except OSError:
                pass

    # -- sending ---------------------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        with self._wlock:
            if self.closed or self._closing:
                raise WebSocketClosed("the WebSocket is closed")
            try:
                self.sock.sendall(encode_frame(opcode, payload))
            except OSError as e:
                self._abort_locked()
                raise WebSocketClosed(str(e)) from None
            if opcode == OP_CLOSE:
                self._closing = True

    def send_text(self, text: str) -> None:
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        self._send_frame(OP_BINARY, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the reader sees the client's answer and ends."""
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        except WebSocketClosed:
            pass

    def abort(self) -> None:
        """Cut the connection without a closing handshake, like a network that drops."""
        with self._wlock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- receiving -------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if data is None or len(data) < n:
            raise WebSocketClosed("connection closed by the client")
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read(2)
        fin, rsv, opcode = bool(b1 & 0x80), b1 & 0x70, b1 & 0x0F
        if rsv:
            raise ProtocolError(1002, "reserved bits set (no extension was negotiated)")
        if not b2 & 0x80:
            raise ProtocolError(1002, "client frames must be masked")
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        if opcode >= 0x8 and (n > 125 or not fin):
            raise ProtocolError(1002, "bad control frame")
        if n > self.max_message:
            raise ProtocolError(1009, "message too big")
        mask = self._read(4)
        return fin, opcode, _unmask(mask, self._read(n))

    def recv(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once the connection is closed."""
        parts: list[bytes] = []
        kind = None
        try:
            while True:
                fin, opcode, payload = self._read_frame()
                if opcode == OP_PING:
                    self._send_frame(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                    if not self._closing:
                        self._send_frame(OP_CLOSE, struct.pack("!H", code))
                    self.abort()
                    return None
                if opcode == OP_CONT:
                    if kind is None:
                        raise ProtocolError(1002, "continuation without a message")
                elif opcode in (OP_TEXT, OP_BINARY):
                    if kind is not None:
                        raise ProtocolError(1002, "new message inside a fragmented one")
                    kind = opcode
                else:
                    raise ProtocolError(1002, f"unknown opcode {opcode}")
                parts.append(payload)
                if sum(map(len, parts)) > self.max_message:
                    raise ProtocolError(1009, "message too big")
                if fin:
                    data = b"".join(parts)
                    if kind == OP_BINARY:
                        return data
                    try:
                        return data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(1007, "text message is not UTF-8") from None
        except ProtocolError as e:
            self.close(e.code, str(e))
            self.abort()
            return None
        except (WebSocketClosed, OSError, ValueError):
            self.abort()
            return None

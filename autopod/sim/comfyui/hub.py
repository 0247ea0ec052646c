"""WebSocket clients of one stand-in, with ComfyUI's routing, and connections cut on demand.

ComfyUI keeps one socket per client id (a reconnect with the same ``clientId`` replaces the
old entry, the old socket stays open but hears nothing more); an event with a client id goes
to that socket only, one without goes to every socket.

Fault injection: with ``drop_after = N`` a connection is cut (no closing handshake, like a
network that drops) instead of sending its (N+1)th message; that message is lost with it.
Changing the setting restarts every open connection's count, so a test can switch it on
in the middle of a run and know how many more messages get through.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Callable

from .wsproto import ServerWebSocket, WebSocketClosed


class Connection:
    def __init__(self, ws: ServerWebSocket, sid: str):
        self.ws = ws
        self.sid = sid
        self.sent = 0
        self.dead = False
        self.lock = threading.Lock()
        self.feature_flags: dict = {}


class Hub:
    def __init__(self, *, drop_after: int = 0):
        self._lock = threading.Lock()
        self._sockets: dict[str, Connection] = {}
        self._open: set[Connection] = set()
        self.drop_after = int(drop_after)
        self.dropped = 0  # connections cut by the fault so far

    # -- faults ----------------------------------------------------------------------------------

    def set_faults(self, *, drop_after: int | None = None, drop_now: bool = False) -> dict:
        with self._lock:
            conns = list(self._open)
            if drop_after is not None:
                self.drop_after = int(drop_after)
        for conn in conns:
            with conn.lock:
                if drop_after is not None:
                    conn.sent = 0
                if drop_now and not conn.dead:
                    self._cut(conn)
        return self.faults()

    def faults(self) -> dict:
        return {"ws_drop_after": self.drop_after, "ws_dropped": self.dropped, "ws_open": len(self._open)}

    def _cut(self, conn: Connection) -> None:
        conn.dead = True
        conn.ws.abort()
        self.dropped += 1

    # -- sending ---------------------------------------------------------------------------------

    def _deliver_locked(self, conn: Connection, text: str) -> None:
        if conn.dead:
            return
        if self.drop_after and conn.sent >= self.drop_after:
            self._cut(conn)
            return
        try:
            conn.ws.send_text(text)
            conn.sent += 1
        except WebSocketClosed:
            conn.dead = True

    def deliver(self, conn: Connection, event: str, data: Any) -> None:
        text = json.dumps({"type": event, "data": data})
        with conn.lock:
            self._deliver_locked(conn, text)

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """To ``sid``'s socket, or to every socket when ``sid`` is None (ComfyUI's send_sync)."""
        text = json.dumps({"type": event, "data": data})
        with self._lock:
            if sid is None:
                targets = list(self._sockets.values())
            else:
                targets = [self._sockets[sid]] if sid in self._sockets else []
        for conn in targets:
            with conn.lock:
                self._deliver_locked(conn, text)

    # -- a connection's life ---------------------------------------------------------------------

    def serve(self, ws: ServerWebSocket, client_id: str, *, accept: Callable[[], None],
              greeting: Callable[[str], list[tuple[str, Any]]], features: dict) -> None:
        """Run one connection until it closes. ``accept`` writes the 101 answer; ``greeting(sid)`` gives the
        first messages. Both happen before any event can reach the socket, so a client that connects and
        then submits never misses the start of its prompt."""
        sid = client_id or uuid.uuid4().hex
        conn = Connection(ws, sid)
        with conn.lock:
            accept()
            with self._lock:
                self._sockets[sid] = conn
                self._open.add(conn)
            for event, data in greeting(sid):
                self._deliver_locked(conn, json.dumps({"type": event, "data": data}))
        try:
            first = True
            while True:
                msg = ws.recv()
                if msg is None:
                    break
                if not isinstance(msg, str):
                    continue
                try:
                    data = json.loads(msg)
                except ValueError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    conn.feature_flags = data.get("data") or {}
                    self.deliver(conn, "feature_flags", features)
                first = False
        finally:
            conn.dead = True
            ws.abort()
            with self._lock:
                if self._sockets.get(sid) is conn:
                    del self._sockets[sid]
                self._open.discard(conn)

    def close_all(self) -> None:
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            conn.ws.close(1001, "server shutdown")
            conn.ws.abort()

"""ComfyUI's events for one client_id, over its WebSocket, surviving a dropped socket.

ComfyUI sends a prompt's execution events only to the socket of the client_id that
submitted it, so a run opens ``/ws?clientId=<the batch's client_id>`` (a re-attaching
``comfy.watch`` uses the same id). A dropped socket is reopened with backoff; while it
is down, ``next()`` returns None and the caller polls ``/history`` instead, so a drop
never loses a result (events are hints; history is the record).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
RETRY_MAX_S = 10.0


class EventStream:
    """``next(timeout)`` -> the next event ``{"type", "data"}``, or None when none came in time or
    the socket is down. ``url`` is called on each (re)connect: a recovered tunnel may have a new port."""

    def __init__(self, url: Callable[[], str], *, clock: Callable[[], float] = time.monotonic,
                 on_state: Callable[[str], None] | None = None):
        self.url = url
        self.clock = clock
        self.on_state = on_state or (lambda s: None)
        self.ws: Any = None
        self.drops = 0
        self._retry_at = 0.0
        self._delay = 0.25

    @property
    def up(self) -> bool:
        return self.ws is not None

    def connect(self) -> bool:
        import websocket  # websocket-client: what ComfyUI's own script examples use

        if self.ws is not None:
            return True
        if self.clock() < self._retry_at:
            return False
        try:
            ws = websocket.create_connection(self.url(), timeout=CONNECT_TIMEOUT_S, enable_multithread=False)
        except Exception as e:  # refused, reset, a tunnel coming back: try again later
            log.debug("WebSocket connect failed: %s", e)
            self._retry_at = self.clock() + self._delay
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            return False
        self.ws = ws
        self._delay = 0.25
        self.on_state("connected" if not self.drops else "reconnected")
        return True

    def next(self, timeout: float) -> dict[str, Any] | None:
        import websocket

        if not self.connect():
            return None
        self.ws.settimeout(max(0.01, timeout))
        try:
            while True:
                frame = self.ws.recv()
                if isinstance(frame, bytes):  # a binary preview image: not an event autopod follows
                    continue
                try:
                    msg = json.loads(frame)
                except ValueError:
                    continue
                if isinstance(msg, dict) and "type" in msg:
                    return msg
        except websocket.WebSocketTimeoutException:
            return None
        except Exception as e:  # closed, reset: the result is safe in history; reconnect later
            log.info("WebSocket dropped: %s", e)
            self._drop()
            return None

    def _drop(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.ws = None
        self.drops += 1
        self._retry_at = self.clock() + self._delay
        self.on_state("dropped")

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None

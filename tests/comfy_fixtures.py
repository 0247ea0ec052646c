"""ComfyUI fixtures shared by the client, stand-in and task tests."""

from __future__ import annotations

import socket

import pytest

from autopod.sim.comfyui_standin import ComfyUIStandin


@pytest.fixture
def standin():
    """An idle ComfyUI stand-in (fresh state: empty queue and history)."""
    with ComfyUIStandin() as s:
        yield s


@pytest.fixture
def busy():
    """A stand-in with the recorded busy queue (1 running, 4 pending) and history (11 entries)."""
    with ComfyUIStandin(state="busy") as s:
        yield s


@pytest.fixture
def refused_url():
    """A loopback URL nobody listens on (the port stays bound, never listening, so nobody else takes it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()

"""The stand-in's WebSocket: RFC 6455 details, ComfyUI's routing by client id, and connections cut on demand."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket
from comfy_fixtures import (WS, empty_save, queue, recorded, recorded_ws, shape, sim, sleep_save,  # noqa: F401
                            standin, wait_history, wait_until)

from autopod.sim.comfyui_standin import ComfyUIStandin


def raw_ws(port: int, path: str = "/ws?clientId=raw") -> tuple[socket.socket, bytes]:
    """A hand-made handshake: (socket, whatever came after the 101 headers)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, rest


def read_frame(s: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
    need(2)
    opcode, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
    assert not buf[1] & 0x80, "server frames are never masked"
    if n == 126:
        need(4)
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        need(10)
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    need(off + n)
    return opcode, buf[off:off + n], buf[off + n:]


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n, bit = len(payload), 0x80 if masked else 0
    if n < 126:
        length = bytes([n | bit])
    elif n < 1 << 16:
        length = bytes([126 | bit]) + struct.pack("!H", n)
    else:
        length = bytes([127 | bit]) + struct.pack("!Q", n)
    if not masked:
        return head + length + payload
    mask = os.urandom(4)
    return head + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_first_frame_is_status_with_the_client_id_and_a_new_hex_sid_without_one(standin):
    with WS(standin.url, "639559ceb3d046e3ab47058000b2dbdb") as ws:
        first = ws.recv()
    assert first == recorded_ws("ws_messages")[0]
    with WS(standin.url, "") as ws:  # no ?clientId: the server makes one up
        first = ws.recv()
    want = recorded("ws_no_client_id")["body"][0]
    assert shape([first]) == shape([want]) and re.fullmatch(r"[0-9a-f]{32}", first["data"]["sid"])
    with WS(standin.url, "abc", path="/api/ws") as ws:  # every route also under /api
        assert ws.recv()["data"]["sid"] == "abc"


def test_feature_flags_first_message_gets_the_features_back(standin):
    rec = recorded("ws_feature_flags")
    with WS(standin.url) as ws:
        ws.recv()
        ws.ws.send(json.dumps(rec["request"]["sent_first"]))
        assert ws.recv() == rec["body"][1]["msg"]
        ws.ws.send(json.dumps(rec["request"]["sent_first"]))  # only a first message is answered
        ws.ws.ping(b"still there?")
        op, frame = ws.ws.recv_data_frame(control_frame=True)
        assert (op, frame.data) == (websocket.ABNF.OPCODE_PONG, b"still there?")


def test_ping_close_fragments_and_big_messages_on_the_wire(standin):
    s, buf = raw_ws(standin.port)
    op, payload, buf = read_frame(s, buf)
    assert op == 1 and json.loads(payload)["data"]["sid"] == "raw"
    s.sendall(client_frame(0x9, b"hi"))
    op, payload, buf = read_frame(s, buf)
    assert (op, payload) == (0xA, b"hi")
    # A feature_flags message in three fragments, with a ping between them, bigger than 64 KiB.
    msg = json.dumps({"type": "feature_flags", "data": {"pad": "x" * 70000}}).encode()
    s.sendall(client_frame(0x1, msg[:100], fin=False) + client_frame(0x9, b"p") +
              client_frame(0x0, msg[100:200], fin=False) + client_frame(0x0, msg[200:]))
    op, payload, buf = read_frame(s, buf)
    assert (op, payload) == (0xA, b"p")
    op, payload, buf = read_frame(s, buf)
    assert op == 1 and json.loads(payload) == {"type": "feature_flags", "data": recorded("features")["body"]}
    s.sendall(client_frame(0x8, struct.pack("!H", 1000)))
    op, payload, buf = read_frame(s, buf)
    assert (op, payload) == (0x8, struct.pack("!H", 1000))
    assert s.recv(10) == b""  # and the server hangs up
    s.close()


def test_unmasked_client_frames_are_a_protocol_error(standin):
    s, buf = raw_ws(standin.port)
    _, _, buf = read_frame(s, buf)
    s.sendall(client_frame(0x1, b"{}", masked=False))
    op, payload, buf = read_frame(s, buf)
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1002
    s.close()


def test_plain_get_on_ws_is_400(standin):
    r = requests.get(standin.url + "/ws", timeout=5)
    assert r.status_code == 400 and "Upgrade" in r.text


def test_events_go_to_the_submitting_client_only_status_and_progress_state_to_all(standin):
    rec = recorded("ws_routing_two_clients")["body"]
    with WS(standin.url) as a, WS(standin.url) as b:
        a.recv(), b.recv()
        pid = queue(standin.url, empty_save("ws_a"), a.client_id)
        got_a = a.until_done(pid)
        wait_until(lambda: requests.get(standin.url + "/queue", timeout=5).json()["queue_running"] == [],
                   what="idle")
        anonymous = queue(standin.url, empty_save("ws_b", color=1))
        wait_history(standin.url, anonymous)
        end_a = a.until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0)
        got_b = b.until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0
                        and any(x["type"] == "progress_state" for x in b.messages))
        want_a = [f["msg"] for f in rec["A"] if "msg" in f][1:]
        want_b = [f["msg"] for f in rec["B"] if "msg" in f][1:]
        assert shape(got_a + end_a) == shape(want_a)
        assert shape(got_b) == shape(want_b)
        assert all(m["data"]["prompt_id"] == anonymous for m in got_b if m["type"] == "progress_state")


def test_a_client_that_reconnects_mid_run_hears_the_current_node(sim):
    with WS(sim.url, "again") as ws:
        ws.recv()
        pid = queue(sim.url, sleep_save(seconds=3, steps=30), "again")
        ws.until(lambda m: m["type"] == "progress")
    with WS(sim.url, "again") as ws:
        first, second = ws.recv(), ws.recv()
        assert first["type"] == "status" and first["data"]["sid"] == "again"
        assert second == {"type": "executing", "data": {"node": "2"}}  # no prompt_id: ComfyUI sends only the node
        requests.post(sim.url + "/interrupt", timeout=5)
        ws.until_done(pid)


def test_drop_after_n_cuts_connections_and_loses_the_event_history_keeps_the_result(tmp_path):
    with ComfyUIStandin(ws_drop_after=5, root=tmp_path) as s:
        ws = WS(s.url)
        pid = queue(s.url, empty_save("dropped"), ws.client_id)
        got = []
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                got.append(ws.recv())
        assert len(got) == 5 and [m["type"] for m in got][:3] == ["status", "status", "status"]
        entry = wait_history(s.url, pid)
        assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"]["images"][0]["filename"] == \
            "dropped_00001_.png"
        assert requests.get(s.url + "/_sim/faults", timeout=5).json()["ws_dropped"] == 1
        again = WS(s.url, ws.client_id)  # a reconnect gets its own five messages
        assert again.recv()["type"] == "status"
        again.close()


def test_faults_switched_on_and_off_at_run_time(sim):
    with WS(sim.url) as ws:
        ws.recv()
        r = requests.post(sim.url + "/_sim/faults", json={"ws_drop_after": 3}, timeout=5)
        assert r.status_code == 200 and r.json()["ws_drop_after"] == 3
        pid = queue(sim.url, sleep_save(seconds=0.1, steps=10), ws.client_id)
        got = []
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while True:
                got.append(ws.recv())
        assert len(got) == 3  # counted from the switch, not from the connection's start
        assert wait_history(sim.url, pid)["status"]["completed"] is True
    assert requests.post(sim.url + "/_sim/faults", json={"ws_drop_after": 0}, timeout=5).json()["ws_drop_after"] == 0
    with WS(sim.url) as ws:
        ws.recv()
        pid = queue(sim.url, sleep_save(seconds=0.05, steps=2, prefix="whole"), ws.client_id)
        assert ws.until_done(pid)[-1]["data"]["node"] is None
        requests.post(sim.url + "/_sim/faults", json={"ws_drop_now": True}, timeout=5)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            ws.recv()
    for bad in ({"ws_drop_after": -1}, {"ws_drop_after": "3"}, {"nope": 1}, [1]):
        r = requests.post(sim.url + "/_sim/faults", json=bad, timeout=5)
        assert r.status_code == 400 and "error" in r.json()


def test_command_line_takes_the_fault_and_the_nodes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.Popen([sys.executable, "-m", "autopod.sim.comfyui_standin", "--port", "0", "--sim-nodes",
                          "--ws-drop-after", "2", "--root", str(tmp_path / "c")], stdout=subprocess.PIPE, text=True,
                         env=env)
    try:
        info = json.loads(p.stdout.readline())
        assert info["root"] == str(tmp_path / "c")
        deadline = time.monotonic() + 10
        while True:
            try:
                faults = requests.get(info["url"] + "/_sim/faults", timeout=5).json()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert faults["ws_drop_after"] == 2
        assert "AutopodSleep" in requests.get(info["url"] + "/object_info", timeout=5).json()
        assert (tmp_path / "c" / "input" / "example.png").is_file()
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0

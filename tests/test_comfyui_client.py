"""ComfyUIClient against the recorded-answer stand-in, a refused port and a silent socket."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from comfy_fixtures import busy, refused_url, standin  # noqa: F401  (fixtures)

from autopod.comfy.client import ComfyHTTPError, ComfyTimeout, ComfyUIClient, ComfyUnreachable, QueueItem
from autopod.core.errors import ComfyError
from autopod.sim.comfyui_standin import DATA_DIR, ComfyUIStandin


def recorded(name: str):
    return json.loads((DATA_DIR / f"{name}.json").read_text())["body"]





@pytest.fixture
def silent_url():
    """A socket that accepts connections (kernel backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_instantiation_defaults_and_one_session():
    c = ComfyUIClient()
    assert c.base_url == "http://127.0.0.1:8188" and c.timeout == 10.0
    assert c.retry_delays() == [2.0, 4.0, 8.0]
    c2 = ComfyUIClient("http://127.0.0.1:9000/", timeout=3)
    assert c2.base_url == "http://127.0.0.1:9000" and c2.timeout == 3.0
    from autopod.comfy.transport import Session

    assert isinstance(c2.session, Session) and c2.session is not c.session
    with c2 as same:
        assert same is c2


def test_is_ready_true_against_standin(standin):
    slept = []
    assert ComfyUIClient(standin.url, sleep=slept.append).is_ready() is True
    assert slept == []  # ready at once: no backoff
    assert standin.requests == [("GET", "/system_stats")]


def test_is_ready_false_after_three_retries_with_backoff(refused_url):
    slept = []
    assert ComfyUIClient(refused_url, sleep=slept.append).is_ready() is False
    assert slept == [2.0, 4.0, 8.0]  # 4 attempts: the first and 3 retries


def test_backoff_cap_and_retry_count_are_configurable(refused_url):
    slept = []
    c = ComfyUIClient(refused_url, retries=5, max_delay=5.0, sleep=slept.append)
    assert c.is_ready() is False
    assert slept == [2.0, 4.0, 5.0, 5.0, 5.0]
    slept.clear()
    assert c.is_ready(retries=0) is False and slept == []


def test_is_ready_counts_attempts_until_comfyui_listens():
    with ComfyUIStandin(ready_after=3600) as s:
        slept = []

        def sleep(d):  # ComfyUI comes up during the second wait
            slept.append(d)
            if len(slept) == 2:
                s.become_ready()

        assert ComfyUIClient(s.url, sleep=sleep).is_ready() is True
        assert slept == [2.0, 4.0]
        assert s.requests == [("GET", "/system_stats")]  # the two refused attempts never reached it


def test_connection_refused_says_the_tunnel_is_not_up(refused_url):
    with pytest.raises(ComfyUnreachable, match="tunnel is not up") as e:
        ComfyUIClient(refused_url).get_system_stats()
    assert isinstance(e.value, ComfyError) and e.value.exit_code == 1
    assert refused_url in str(e.value)


def test_timeout_says_comfyui_is_not_responding(silent_url):
    c = ComfyUIClient(silent_url, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ComfyTimeout, match="not responding"):
        c.get_queue_info()
    assert time.monotonic() - start < 3
    slept = []
    assert ComfyUIClient(silent_url, timeout=0.2, retries=1, sleep=slept.append).is_ready() is False
    assert slept == [2.0]


def test_system_stats_parsing(standin):
    stats = ComfyUIClient(standin.url).get_system_stats()
    assert stats == recorded("system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert stats["devices"][0]["vram_total"] == 25276063744


def test_queue_items_are_5_tuples_and_pending_is_sorted(busy):
    busy.pending = list(reversed(busy.pending))  # a heap copy is not in order
    q = ComfyUIClient(busy.url).get_queue_info()
    assert (q.running_count, q.pending_count) == (1, 4)
    assert [i.number for i in q.pending] == [18, 19, 20, 21]
    first = q.running[0]
    assert first.prompt_id == "d5d72077-3222-49b5-af84-77c5e3c633b5" and first.number == 17
    assert first.outputs == ["3"] and first.client_id == "998444a978bc423e9082ee4512f70177"
    assert set(first.prompt) == {"1", "2", "3"}
    doc = q.to_dict()
    assert doc["running"] == 1 and doc["pending"] == 4 and doc["pending_items"][0]["number"] == 18


def test_queue_item_rejects_other_shapes():
    assert QueueItem.from_wire([-3, "id", {}, {}, ["9"]]).number == -3  # "front": true
    assert QueueItem.from_wire([12.5, "id", {}, {"client_id": "c"}, []]).number == 12.5
    with pytest.raises(ComfyError, match="5-element"):
        QueueItem.from_wire({"number": 1, "prompt_id": "x"})


def test_idle_queue(standin):
    q = ComfyUIClient(standin.url).get_queue_info()
    assert q.running == [] and q.pending == [] and q.to_dict()["pending"] == 0


def test_history_parsing(busy):
    c = ComfyUIClient(busy.url)
    every = c.get_history()
    assert every == recorded("history_all") and len(every) == 11
    assert list(c.get_history(max_items=1)) == list(recorded("history_max_items_1"))  # the newest one
    one_id = "3cf5a002-1438-47d1-921c-0c96e01eebac"
    entry = c.get_history(one_id)[one_id]
    assert entry["status"]["status_str"] == "success" and entry["prompt"][1] == one_id
    assert entry["outputs"]["2"]["images"][0]["filename"] == "ref_00001_.png"
    assert c.get_history("00000000-0000-0000-0000-000000000000") == {}  # unknown id: 200 {}


def test_object_info_parsing(standin):
    c = ComfyUIClient(standin.url)
    every = c.get_object_info()
    assert len(every) == 477 and "KSampler" in every
    one = c.get_object_info("SaveImage")
    assert one == recorded("object_info_SaveImage")
    assert one["SaveImage"]["output_node"] is True and one["SaveImage"]["input_order"]["required"] == ["images", "filename_prefix"]
    assert c.get_object_info("NoSuchNode") == {}
    assert c.get_object_info("../system_stats") == {}  # the name is one path segment, not a path


def test_http_errors_carry_status_and_json_body(standin):
    c = ComfyUIClient(standin.url)
    body = {"prompt": {"1": {"class_type": "NoSuchNodeType", "inputs": {}},
                       "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}}
    with pytest.raises(ComfyHTTPError) as e:
        c.request("POST", "/prompt", json=body)
    assert e.value.status == 400 and e.value.body == recorded("prompt_invalid_class")
    assert "HTTP 400" in str(e.value) and "invalid_prompt" in str(e.value) and "NoSuchNodeType does not exist" in str(e.value)


def test_http_errors_with_text_and_empty_bodies(standin):
    c = ComfyUIClient(standin.url)
    with pytest.raises(ComfyHTTPError) as e:
        c.request("POST", "/prompt", data="this is not json", headers={"Content-Type": "application/json"})
    assert e.value.status == 500 and "Server got itself in trouble" in e.value.body and "HTTP 500" in str(e.value)
    with pytest.raises(ComfyHTTPError, match=r"HTTP 404: \(empty body\)") as e:
        c.request("GET", "/models/not_a_folder")
    assert e.value.body == ""


def test_every_call_is_logged_with_url_status_and_time(standin):
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append  # a handler of our own: the CLI may have turned propagation off
    logger = logging.getLogger("autopod.comfy.client")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        ComfyUIClient(standin.url).get_history(max_items=2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    line = records[0].getMessage()
    assert f"GET {standin.url}/history?max_items=2 -> 200 in " in line and line.endswith("s")


# -- the transport (autopod.comfy.transport, on http.client) -------------------------------------

def _accepted(standin, monkeypatch) -> list:
    """The server side of every connection the stand-in accepts from now on."""
    socks = []
    accept = standin._httpd.get_request

    def recording():
        sock, addr = accept()
        socks.append(sock)
        return sock, addr

    monkeypatch.setattr(standin._httpd, "get_request", recording)
    return socks


def test_requests_share_one_kept_alive_connection_and_a_post_is_one_write(standin, monkeypatch):
    """A body sent apart from its headers would wait for a delayed ACK (about 40 ms) on a kept-alive
    connection; http.client sends bytes with the headers in one write."""
    socks = _accepted(standin, monkeypatch)
    writes = []
    sendall = socket.socket.sendall

    def recording(self, data, *args):
        if self.getsockname()[1] != standin.port:  # the client's end
            writes.append(bytes(data))
        return sendall(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", recording)
    with ComfyUIClient(standin.url) as c:
        c.get_system_stats()
        c.delete_queued(["not-queued"])
        assert c.get_history("nope") == {}
    assert len(socks) == 1  # one TCP connection for all three
    post = [w for w in writes if w.startswith(b"POST /queue")]
    assert len(post) == 1 and post[0].endswith(b'{"delete": ["not-queued"]}')


def test_a_connection_the_server_closed_while_idle_is_replaced(standin, monkeypatch):
    socks = _accepted(standin, monkeypatch)
    with ComfyUIClient(standin.url) as c:
        c.get_system_stats()
        socks[0].shutdown(socket.SHUT_RDWR)  # ComfyUI dropped the idle connection (its keep-alive timeout)
        assert c.get_history("nope") == {}
        assert c.get_object_info("EmptyImage")["EmptyImage"]["name"] == "EmptyImage"
    assert len(socks) == 2


def test_an_upload_names_the_file_as_requests_did(standin, tmp_path):
    """Multipart as urllib3 writes it: a quote or line break in a name is percent-encoded, the rest as is."""
    from autopod.sim.comfyui import images as im

    src = tmp_path / "src.png"
    with src.open("wb") as f:
        im.save_png(f, im.solid(2, 2, 0x112233))
    with ComfyUIClient(standin.url) as c:
        got = c.upload_image(src, name="café 1.png", subfolder="sub")
    assert got == {"name": "café 1.png", "subfolder": "sub", "type": "input"}
    assert (standin.root / "input" / "sub" / "café 1.png").read_bytes() == src.read_bytes()

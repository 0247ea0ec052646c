"""The Serverless job-API client against a local HTTP server: retries with backoff on 429/5xx (Retry-After
honoured), a /run sent again only when RunPod surely did not take it (else SubmitLost), 401, 404 for the
endpoint and for a job, the payload limit, and the key never in a message or a log line."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading

import pytest

from autopod.core.errors import ExitCode
from autopod.runpod import jobapi
from autopod.runpod.jobapi import (
    RUN_PAYLOAD_LIMIT,
    JobAPIError,
    JobClient,
    JobGone,
    NoSuchEndpoint,
    PayloadTooLarge,
    SubmitLost,
    Unauthorized,
    payload_size,
)

KEY = "rpa_SECRETKEY1234567890"


class Scripted:
    """Answers a script: (status, headers, body) tuples, or "reset" to read the request and drop the
    connection without answering. Records (method, path, body, headers) of every request."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.seen.append((self.command, self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                answer = outer.answers.pop(0)
                if answer == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, doc = answer
                raw = json.dumps(doc).encode() if isinstance(doc, (dict, list)) else (doc or b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _any

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v2"

    def client(self, endpoint="ep-1", **kw):
        sleeps = []
        return JobClient(endpoint, api_key=KEY, base_url=self.url, sleep=sleeps.append, timeout=5, **kw), sleeps


@pytest.fixture
def scripted():
    made = []

    def make(*answers):
        s = Scripted(answers)
        made.append(s)
        return s

    yield make
    for s in made:
        s.srv.shutdown()
        s.srv.server_close()


OK_RUN = (200, {}, {"id": "job-1", "status": "IN_QUEUE"})


def test_run_sends_input_and_policy_with_the_key_in_the_header_only(scripted):
    s = scripted(OK_RUN)
    c, _ = s.client()
    payload = {"input": {"workflow": {"1": {"class_type": "X", "inputs": {}}}},
               "policy": {"executionTimeout": 60000, "ttl": 120000}}
    assert c.run(payload) == {"id": "job-1", "status": "IN_QUEUE"}
    method, path, body, headers = s.seen[0]
    assert (method, path) == ("POST", "/v2/ep-1/run")
    assert json.loads(body) == payload
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert KEY not in repr(c)


def test_status_cancel_purge_health_paths(scripted):
    s = scripted((200, {}, {"id": "j", "status": "COMPLETED", "output": {"images": []}}),
                 (200, {}, {"id": "j", "status": "CANCELLED"}),
                 (200, {}, {"removed": 3, "status": "completed"}),
                 (200, {}, {"jobs": {"inQueue": 1}, "workers": {"idle": 0, "running": 1}}))
    c, _ = s.client()
    assert c.status("j")["status"] == "COMPLETED"
    assert c.cancel("j")["status"] == "CANCELLED"
    assert c.purge_queue()["removed"] == 3
    assert c.health()["workers"]["running"] == 1
    assert [(m, p) for m, p, _b, _h in s.seen] == [("GET", "/v2/ep-1/status/j"), ("POST", "/v2/ep-1/cancel/j"),
                                                   ("POST", "/v2/ep-1/purge-queue"), ("GET", "/v2/ep-1/health")]


def test_429_is_retried_after_retry_after_then_answers(scripted):
    s = scripted((429, {"Retry-After": "7"}, {"error": "slow down"}), (429, {}, b""), OK_RUN)
    c, sleeps = s.client()
    assert c.run({"input": {}})["id"] == "job-1"
    assert sleeps == [7.0, 2.0]  # Retry-After first, then the backoff's second step
    assert len(s.seen) == 3


def test_5xx_on_status_backs_off_exponentially_then_gives_up(scripted):
    s = scripted(*[(503, {}, {"error": "busy"})] * 3)
    c, sleeps = s.client(retries=2)
    with pytest.raises(JobAPIError, match=r"status failed after 3 attempts: server error 503") as e:
        c.status("job-9")
    assert not isinstance(e.value, SubmitLost)
    assert e.value.exit_code == ExitCode.FAILED
    assert sleeps == [1.0, 2.0]


def test_run_5xx_with_a_body_is_retried(scripted):
    s = scripted((500, {}, {"error": "internal"}), OK_RUN)
    c, sleeps = s.client()
    assert c.run({"input": {}})["id"] == "job-1"
    assert len(s.seen) == 2 and sleeps == [1.0]


def test_run_5xx_without_a_body_is_submit_lost_and_not_sent_again(scripted):
    s = scripted((502, {}, b""), OK_RUN)
    c, sleeps = s.client()
    with pytest.raises(SubmitLost, match="may exist"):
        c.run({"input": {}})
    assert len(s.seen) == 1 and sleeps == []


def test_run_reset_after_send_is_submit_lost_and_not_sent_again(scripted):
    s = scripted("reset", OK_RUN)
    c, _ = s.client()
    with pytest.raises(SubmitLost) as e:
        c.run({"input": {"x": 1}})
    assert len(s.seen) == 1
    assert e.value.exit_code == ExitCode.FAILED


def test_status_reset_is_retried(scripted):
    s = scripted("reset", (200, {}, {"id": "j", "status": "IN_QUEUE"}))
    c, sleeps = s.client()
    assert c.status("j")["status"] == "IN_QUEUE"
    assert len(s.seen) == 2 and sleeps == [1.0]


def test_run_answer_without_id_is_submit_lost(scripted):
    s = scripted((200, {}, {"status": "IN_QUEUE"}))
    c, _ = s.client()
    with pytest.raises(SubmitLost, match="no job id"):
        c.run({"input": {}})


def test_run_read_timeout_is_submit_lost():
    # A server that takes the request and never answers.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    held = []

    def accept():
        conn, _ = srv.accept()
        held.append(conn)
        conn.recv(65536)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    c = JobClient("ep-1", api_key=KEY, base_url=f"http://127.0.0.1:{srv.getsockname()[1]}/v2", timeout=0.3,
                  sleep=lambda s: None)
    try:
        with pytest.raises(SubmitLost, match="no answer within"):
            c.run({"input": {}})
        assert c.requests_sent == 1
    finally:
        for h in held:
            h.close()
        srv.close()


def test_run_connection_refused_is_sent_again_because_nothing_left():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps = []
    c = JobClient("ep-1", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v2", sleep=sleeps.append, retries=2)
    with pytest.raises(JobAPIError, match="after 3 attempts: connection failed") as e:
        c.run({"input": {}})
    assert not isinstance(e.value, SubmitLost)
    assert sleeps == [1.0, 2.0]


def test_401_is_a_configuration_error_without_the_key(scripted, caplog):
    s = scripted((401, {}, {"error": f"bad key {KEY}"}))
    c, _ = s.client()
    with caplog.at_level(logging.DEBUG, logger="autopod"), pytest.raises(Unauthorized) as e:
        c.health()
    assert e.value.exit_code == ExitCode.USAGE
    assert "RUNPOD_API_KEY" in str(e.value)
    assert KEY not in str(e.value) and "***" in str(e.value)
    assert KEY not in caplog.text


def test_404_on_the_endpoint_is_no_such_endpoint(scripted):
    s = scripted((404, {}, {"error": "endpoint not found"}))
    c, _ = s.client("nope")
    with pytest.raises(NoSuchEndpoint, match="nope.*no such endpoint") as e:
        c.run({"input": {}})
    assert e.value.exit_code == ExitCode.USAGE


def test_404_on_a_job_is_job_gone_when_the_endpoint_answers(scripted):
    s = scripted((404, {}, b""), (200, {}, {"jobs": {}, "workers": {}}))
    c, _ = s.client()
    with pytest.raises(JobGone, match="job-old is gone") as e:
        c.status("job-old")
    assert e.value.data["job_id"] == "job-old"
    assert e.value.exit_code == ExitCode.FAILED
    assert [p for _m, p, _b, _h in s.seen] == ["/v2/ep-1/status/job-old", "/v2/ep-1/health"]


def test_404_on_a_job_of_a_missing_endpoint_is_no_such_endpoint(scripted):
    s = scripted((404, {}, b""), (404, {}, b""))
    c, _ = s.client()
    with pytest.raises(NoSuchEndpoint):
        c.status("job-old")


def test_retry_logs_never_carry_the_key(scripted, caplog):
    s = scripted((503, {}, {"error": f"upstream said {KEY}"}), (200, {}, {"jobs": {}, "workers": {}}))
    c, _ = s.client()
    with caplog.at_level(logging.DEBUG, logger="autopod"):
        c.health()
    assert "retrying" in caplog.text
    assert KEY not in caplog.text


def test_other_4xx_is_an_error_with_runpods_text(scripted):
    s = scripted((400, {}, {"error": "invalid input"}))
    c, sleeps = s.client()
    with pytest.raises(JobAPIError, match=r"run \(400\): invalid input"):
        c.run({"input": {}})
    assert sleeps == [] and len(s.seen) == 1


def test_payload_over_the_limit_is_refused_before_sending(scripted):
    s = scripted(OK_RUN)
    c, _ = s.client()
    big = {"input": {"images": [{"name": "a.png", "image": "A" * RUN_PAYLOAD_LIMIT}]}}
    with pytest.raises(PayloadTooLarge, match=r"over RunPod's /run limit of 10.0 MB") as e:
        c.run(big)
    assert e.value.exit_code == ExitCode.USAGE
    assert e.value.data["size"] == payload_size(big) > RUN_PAYLOAD_LIMIT
    assert s.seen == []


def test_413_is_payload_too_large(scripted):
    s = scripted((413, {}, {"error": "request entity too large"}))
    c, _ = s.client()
    with pytest.raises(PayloadTooLarge):
        c.run({"input": {}})


@pytest.mark.parametrize("bad", ["a/b", "../x", "", "a b", "a?x=1"])
def test_ids_are_checked_before_use(scripted, bad):
    with pytest.raises(jobapi.UsageError):
        JobClient(bad, api_key=KEY, base_url="http://127.0.0.1:1/v2")
    s = scripted()
    c, _ = s.client()
    with pytest.raises(jobapi.UsageError):
        c.status(bad)
    assert s.seen == []


def test_base_url_from_the_sdk_variable_else_the_account_else_runpod(monkeypatch):
    from autopod.core.config import ApiCredentials

    monkeypatch.delenv("RUNPOD_ENDPOINT_BASE_URL", raising=False)
    assert JobClient("e", api_key=KEY).base == "https://api.runpod.ai/v2"
    assert jobapi.default_base_url(ApiCredentials(KEY, "http://127.0.0.1:9/", "simulator")) == \
        "http://127.0.0.1:9/v2"
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", "http://127.0.0.1:5/v2/")
    assert JobClient("e", api_key=KEY).base == "http://127.0.0.1:5/v2"
    assert JobClient("e", api_key=KEY, base_url="http://x:1/v2").base == "http://x:1/v2"

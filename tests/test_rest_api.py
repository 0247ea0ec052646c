"""The REST v2 backend: error mapping from RFC 9457 bodies, retries and Retry-After, no duplicate pod
after a lost answer, the create body REST v2 accepts; and the automatic switch-over when GraphQL
is retired (against the stand-in, which serves both from one world)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from test_pods_standin import ssh_key, standin_for, volume_id  # noqa: F401 (fixtures)

from autopod.core.config import ApiCredentials
from autopod.core.errors import AuthError, Conflict, NoCapacity, RemoteError, TransientError
from autopod.core.paths import autopod_home
from autopod.runpod.rest import RestAPI, create_body, pod_from_rest


class Scripted:
    """A local HTTP server answering a script of (status, headers, body) and recording requests."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []
        self.headers = []  # each request's headers, lower-case names
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.seen.append((self.command, self.path, self.rfile.read(n) if n else b""))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, headers, body = outer.answers.pop(0)
                raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def api(self, **kw):
        sleeps = []
        api = RestAPI(ApiCredentials("sk-test-123456", self.url, "test"), sleep=sleeps.append, **kw)
        return api, sleeps

    def close(self):
        self.srv.shutdown()


@pytest.fixture
def scripted():
    made = []

    def make(*answers):
        s = Scripted(answers)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


PROBLEM = {"Content-Type": "application/problem+json"}


def problem(status, detail, errors=None):
    body = {"title": "x", "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return (status, PROBLEM, body)


@pytest.mark.parametrize("answer,error,text", [
    (problem(400, "There are no longer any instances available with the requested specifications. "
                  "Please refresh and try again."), NoCapacity, "no longer any instances"),
    (problem(402, "Insufficient balance."), RemoteError, "balance is too low (402)"),
    (problem(409, "Action stop is not allowed while the pod is EXITED."), Conflict, "current state (409)"),
    (problem(422, "Request validation failed.", ["$.stopAfter: additional properties are not allowed"]),
     RemoteError, "$.stopAfter"),
    (problem(401, "Invalid API key."), AuthError, "API key rejected"),
    (problem(403, "Forbidden."), AuthError, "may not do this (403)"),
])
def test_problem_bodies_become_autopods_errors(scripted, answer, error, text):
    s = scripted(answer)
    api, _ = s.api()
    with pytest.raises(error) as e:
        api.create_pod({"name": "x", "gpuTypeId": "NVIDIA RTX A40", "gpuCount": 1, "imageName": "i"})
    assert text in str(e.value) and "sk-test" not in str(e.value)


def test_429_waits_as_retry_after_says_even_for_a_post(scripted):
    pod = {"id": "p1", "name": "x", "status": "RUNNING", "gpu": {"id": "NVIDIA RTX A40", "count": 1}}
    s = scripted((429, {"Retry-After": "7", **PROBLEM}, {"title": "Too Many Requests", "status": 429,
                                                         "detail": "rate limit exceeded for the minute window"}),
                 (201, {"Content-Type": "application/json"}, pod))
    api, sleeps = s.api()
    assert api.create_pod({"name": "x", "gpuTypeId": "NVIDIA RTX A40", "gpuCount": 1, "imageName": "i"})["id"] == "p1"
    assert sleeps == [7.0] and [m for m, _, _ in s.seen] == ["POST", "POST"]


def test_5xx_retries_reads_and_gives_up_with_a_transient_error(scripted):
    s = scripted(*[(502, {}, b"<html>502</html>")] * 3)
    api, sleeps = s.api(retries=2, base_delay=0.5)
    with pytest.raises(TransientError, match="after 3 attempts"):
        api.list_pods()
    assert sleeps == [0.5, 1.0]


def test_a_lost_create_answer_adopts_the_pod_instead_of_making_a_second(scripted):
    made = {"id": "p9", "name": "mine", "status": "RUNNING", "gpu": {"id": "NVIDIA RTX A40", "count": 1}}
    s = scripted((502, {}, b"bad gateway"), (200, {"Content-Type": "application/json"}, {"pods": [made]}))
    api, _ = s.api()
    pod = api.create_pod({"name": "mine", "gpuTypeId": "NVIDIA RTX A40", "gpuCount": 1, "imageName": "i"})
    assert pod["id"] == "p9" and [(m, p) for m, p, _ in s.seen] == [("POST", "/v2/pods"), ("GET", "/v2/pods")]


def test_terminate_answers_204_and_a_missing_pod_reads_as_none(scripted):
    s = scripted((204, {}, b""), problem(404, "Pod nope not found."))
    api, _ = s.api()
    assert api.terminate_pod("p1") is None
    assert api.get_pod("nope") is None
    assert s.seen[0][2] == b'{"action": "terminate"}'


def test_the_create_body_is_what_rest_v2_accepts():
    inp = {"name": "n", "imageName": "runpod/comfyui:latest", "gpuTypeId": "NVIDIA RTX A40", "gpuCount": 2,
           "cloudType": "ALL", "supportPublicIp": True, "startSsh": True, "volumeInGb": 0, "containerDiskInGb": 50,
           "minVcpuCount": 1, "minMemoryInGb": 1, "dockerArgs": "", "ports": "8188/http,22/tcp",
           "volumeMountPath": "/workspace", "env": {"PUBLIC_KEY": "ssh-ed25519 AAAA", "N": 1},
           "dataCenterId": "EU-RO-1", "networkVolumeId": "vol123", "stopAfter": "2026-12-01T00:00:00Z"}
    body = create_body(inp)
    assert body == {"name": "n", "gpu": {"id": "NVIDIA RTX A40", "count": 2}, "cloud": "SECURE",
                    "ports": ["8188/http", "22/tcp"], "env": {"PUBLIC_KEY": "ssh-ed25519 AAAA", "N": "1"},
                    "startSsh": True, "image": "runpod/comfyui:latest", "disk": 50, "dataCenterIds": ["EU-RO-1"],
                    "mounts": {"network": [{"volumeId": "vol123", "path": "/workspace"}]}}


def test_a_rest_pod_reads_as_the_graphql_record():
    p = pod_from_rest({"id": "p", "name": "n", "status": "STARTING", "cost": 0.44, "image": "img", "disk": 50,
                       "ports": ["8188/http", "22/tcp"], "env": {"A": "1"}, "gpu": {"id": "NVIDIA GeForce RTX 4090",
                                                                                   "count": 1},
                       "mounts": {"network": [{"volumeId": "v", "path": "/workspace"}]}, "dataCenterId": "EU-RO-1",
                       "ssh": {"proxy": {"username": "p-abc"}, "direct": {"host": "1.2.3.4", "port": 40022}},
                       "runtime": {"uptime": 12, "ports": [{"ip": "100.65.0.1", "private": 8188, "public": 60000,
                                                           "type": "http"}]}})
    from autopod.runpod.records import Pod

    pod = Pod.from_api(p)
    assert (pod.status, pod.gpu, pod.cost_per_hr, pod.uptime_s) == ("RUNNING", "RTX 4090", 0.44, 12)
    assert pod.ssh_direct == ("1.2.3.4", 40022) and pod.ssh_proxy == "p-abc@ssh.runpod.io"
    assert (pod.volume_id, pod.volume_mount, pod.datacenter) == ("v", "/workspace", "EU-RO-1")
    assert Pod.from_api(pod_from_rest({"id": "q", "status": "RUNNING", "runtime": None,
                                       "ssh": {"direct": None}})).ssh_direct is None


# --- the switch-over, against the stand-in ----------------------------------------------------


@pytest.fixture
def standin_auto(monkeypatch, ssh_key):  # noqa: F811
    with standin_for(monkeypatch, None) as s:
        yield s


@pytest.mark.parametrize("status", [410, 200, 404], ids=["410 Gone", "200 with errors", "404 page"])
def test_auto_switches_to_rest_for_good_when_graphql_answers_retired(cli, standin_auto, status):
    s = standin_auto
    assert cli("pod.list").code == 0
    assert s.world.requests["by_field"].get("myself") == 1 and not s.world.requests["rest"]
    # RunPod retires GraphQL mid-session
    s.world.patch({"settings": {"graphql_retired": True, "graphql_retired_status": status}})
    r = cli("pod.create", "--name", "after", "--volume-id", volume_id(s), "--stop-after", "2h", "--json")
    assert r.code == 0, r.err
    assert r.err.count("GraphQL API is retired") == 1 and "REST v2 from now on" in r.err
    assert "--stop-after timer is not available on REST v2" in r.err and "pod.guard" in r.err  # never silent
    assert r.json["pod"]["status"] == "RUNNING" and [p["name"] for p in s.world.pods.values()] == ["after"]
    assert s.world.pods[r.json["pod"]["id"]].get("stopAfter") is None
    remembered = json.loads((autopod_home() / "runpod-api.json").read_text())
    assert list(remembered) == [s.url] and ("retired" in remembered[s.url]["why"] or status == 404)
    tried = s.world.requests["faults"]["retired"]
    info = cli("pod.info", "--pod", "after", "--json")
    assert info.code == 0 and info.json["api"] == "rest" and info.json["guards"]["stop_at"] is None
    assert cli("pod.list").code == 0 and "retired" not in cli("pod.list").err
    assert s.world.requests["faults"]["retired"] == tried  # later commands do not ask GraphQL again
    assert cli("pod.kill", "--pod", "after", "--yes").code == 0


@pytest.mark.parametrize("call", ["list_pods", "stop_pod", "user"])
def test_a_retirement_answered_with_200_switches_reads_and_sdk_mutations_alike(cli, standin_auto, call):
    """A 200 whose GraphQL errors say the API is retired is the news a 410 is: through autopod's own read
    path (list_pods) and through the SDK's run_graphql_query (stop_pod, user), the call goes to REST v2."""
    from autopod.core.config import api_credentials
    from autopod.runpod.api import SwitchingAPI

    s = standin_auto
    pod = cli("pod.create", "--name", "p", "--volume-id", volume_id(s), "--no-wait", "--json").json["pod"]
    api = SwitchingAPI(api_credentials())
    s.world.patch({"settings": {"graphql_retired": True, "graphql_retired_status": 200}})
    s.world.requests.update(rest={}, faults={**s.world.requests["faults"], "retired": 0})
    args = {"list_pods": (), "stop_pod": (pod["id"],), "user": ()}[call]
    getattr(api, call)(*args)
    assert api.backend == "rest" and s.world.requests["faults"]["retired"] == 1 and s.world.requests["rest"]
    assert (autopod_home() / "runpod-api.json").exists()


@pytest.mark.parametrize("message", [
    "There are no longer any instances available with the requested specifications. Please refresh and try again.",
    "Something went wrong. Please try again later or contact support.",
    "The GraphQL API will be retired in early 2027",  # news, not a refusal
    "API key has been retired",
    'Field "podRentInterruptable" is deprecated',
])
def test_other_graphql_errors_are_not_a_retirement(message):
    from autopod.runpod.api import is_retirement_notice

    assert not is_retirement_notice(message)


@pytest.mark.parametrize("message", [
    "The GraphQL API has been retired. Use the REST API v2 at https://api.runpod.io/v2",
    "GraphQL is no longer available; use REST v2", "This API has been deprecated and switched off",
    "The GraphQL API was shut down on 2027-01-15",
])
def test_what_a_retirement_notice_may_say(message):
    from autopod.runpod.api import is_retirement_notice

    assert is_retirement_notice(message)


def test_a_graphql_error_in_auto_mode_is_reported_and_does_not_switch(cli, standin_auto):
    """RunPod's capacity answer is a GraphQL error with "no longer" in it: reported, and GraphQL stays."""
    s = standin_auto
    with s.world.lock:
        for dc in s.world.data_centers.values():
            dc["stock"]["NVIDIA RTX A40"] = 0
    r = cli("pod.create", "--name", "one", "--gpu", "RTX A40", "--no-wait")
    assert r.code == 1 and "There are no longer any instances available" in r.err, r.err
    assert "retired" not in r.err and not s.world.requests["rest"]
    assert not (autopod_home() / "runpod-api.json").exists()


def test_graphql_chosen_explicitly_after_retirement_says_what_to_do(cli, standin_auto, monkeypatch):
    standin_auto.world.patch({"settings": {"graphql_retired": True}})
    monkeypatch.setenv("AUTOPOD_RUNPOD_API", "graphql")
    r = cli("pod.list")
    assert r.code == 1 and "410" in r.err and "retired" in r.err and "Traceback" not in r.err
    monkeypatch.setenv("AUTOPOD_RUNPOD_API", "soap")
    r = cli("pod.list")
    assert r.code == 2 and "AUTOPOD_RUNPOD_API" in r.err


def test_runpod_api_setting_in_config_yaml(cli, standin_auto):
    (autopod_home()).mkdir(parents=True, exist_ok=True)
    (autopod_home() / "config.yaml").write_text("runpod_api: rest\n")
    assert cli("pod.list").code == 0
    assert standin_auto.world.requests["rest"] == {"GET /v2/pods": 1} and not standin_auto.world.requests["by_field"]
    (autopod_home() / "config.yaml").write_text("runpod_api: soap\n")
    r = cli("pod.list")
    assert r.code == 2 and "runpod_api" in r.err


@pytest.mark.parametrize("damage", ['{"x": 5}', '{"x": {"since": "now"}}', "[1]", "{oops"])
def test_a_damaged_switch_record_is_set_aside_and_graphql_asked_first(cli, standin_auto, damage):
    autopod_home().mkdir(parents=True, exist_ok=True)
    path = autopod_home() / "runpod-api.json"
    path.write_text(damage)
    r = cli("pod.list")
    assert r.code == 0 and "runpod-api.json" in r.err, r.err
    assert standin_auto.world.requests["by_field"].get("myself") == 1 and not standin_auto.world.requests["rest"]
    assert path.read_text() == damage  # never overwritten


def test_sim_start_picks_how_a_retired_graphql_answers(cli):
    from autopod.sim.control import fault_settings

    assert fault_settings(graphql_retired_status="200") == {"graphql_retired": True, "graphql_retired_status": 200}
    assert fault_settings(graphql_retired_status="404")["graphql_retired_status"] == 404
    r = cli("sim.start", "--graphql-retired-status", "500", "--json")
    assert r.code == 2 and "--graphql-retired-status must be 410, 404, 200, got '500'" in r.json["msg"]

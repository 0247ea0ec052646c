"""The RunPod adapter without a server: escaping, validation, retries, error mapping."""

from types import SimpleNamespace

import pytest
import requests
from graphql import parse
from graphql.utilities import value_from_ast_untyped

from autopod.core.config import ApiCredentials
from autopod.core.errors import AuthError, NoCapacity, RemoteError, TransientError, UsageError
from autopod.runpod.api import _SdkLikeError
from autopod.runpod.api import Enum, RunPodAPI, check_datacenter, check_id, gql_value, pod_create_mutation

NASTY = 'say "hi" \\ back\\slash\nnew line\ttab é ✓ 🙂 }) { injected }'
KEYS = "ssh-ed25519 AAAAC3Nza1 me@a\nssh-rsa AAAAB3Nza2 me@b"


def _input_of(mutation: str) -> dict:
    doc = parse(mutation)  # the text must be valid GraphQL
    field = doc.definitions[0].selection_set.selections[0]
    assert field.name.value == "podFindAndDeployOnDemand"
    return value_from_ast_untyped(field.arguments[0].value)


def test_strings_round_trip_through_the_mutation():
    text = pod_create_mutation({"name": NASTY, "imageName": "img:\"tag\"", "dockerArgs": "bash -c 'echo \"x\"'",
                                "cloudType": "SECURE", "gpuCount": 2, "startSsh": True, "dataCenterId": None,
                                "env": {"PUBLIC_KEY": KEYS, "X": NASTY}})
    got = _input_of(text)
    assert got["name"] == NASTY
    assert got["imageName"] == 'img:"tag"'
    assert got["dockerArgs"] == "bash -c 'echo \"x\"'"
    assert got["env"] == [{"key": "PUBLIC_KEY", "value": KEYS}, {"key": "X", "value": NASTY}]
    assert got["gpuCount"] == 2 and got["startSsh"] is True and got["dataCenterId"] is None
    assert "cloudType: SECURE" in text  # an enum, not a string


@pytest.mark.parametrize("bad", ["", "a b", 'x"}', "a\nb", "../x", None, 5])
def test_ids_are_validated(bad):
    with pytest.raises(UsageError):
        check_id(bad, "pod id")


def test_good_ids_and_data_centers_pass():
    assert check_id("5xpma5eg46tqjq") == "5xpma5eg46tqjq"
    assert check_datacenter("EU-RO-1") == "EU-RO-1"
    for bad in ("eu-ro-1", "EU RO 1", 'EU-RO-1"'):
        with pytest.raises(UsageError):
            check_datacenter(bad)


def test_enum_and_field_names_are_checked():
    with pytest.raises(UsageError):
        gql_value(Enum("SECURE) { x"))
    with pytest.raises(UsageError):
        gql_value({"na me": 1})
    with pytest.raises(UsageError):
        pod_create_mutation({"cloudType": "SECRET"})
    with pytest.raises(UsageError):
        pod_create_mutation({"env": {"BAD-NAME": "x"}})


class FakeSDK:
    """Stands in for the ``runpod`` module: scripted answers for run_graphql_query."""

    class AuthenticationError(Exception):
        pass

    class QueryError(Exception):
        pass

    def __init__(self, answers):
        self.answers = list(answers)
        self.queries = []
        self.error = SimpleNamespace(AuthenticationError=self.AuthenticationError, QueryError=self.QueryError)
        self.api = SimpleNamespace(graphql=SimpleNamespace(run_graphql_query=self._run))
        self.api_key = None

    def _run(self, text):
        self.queries.append(text)
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a

    def stop_pod(self, pod_id):
        return self._run(f"stop {pod_id}")["data"]["podStop"]


def _api(answers, **kw):
    """The adapter with scripted answers: mutations reach them through the SDK, reads through the
    adapter's own transport (``_post``), whose failures the SDK's error classes stand for here."""
    sleeps = []
    api = RunPodAPI(ApiCredentials("sk-test-123456", None, "test"), sleep=sleeps.append, **kw)
    api._runpod = sdk = FakeSDK(answers)

    def post(text):
        try:
            return sdk._run(text)
        except FakeSDK.AuthenticationError as e:
            raise _SdkLikeError("auth", str(e)) from None
        except FakeSDK.QueryError as e:
            raise _SdkLikeError("query", str(e)) from None

    api._post = post
    return api, sdk, sleeps


def _pods(*names):
    return {"data": {"myself": {"pods": [{"id": f"id{n}", "name": n, "desiredStatus": "RUNNING"} for n in names]}}}


def test_transient_failures_retry_with_backoff():
    bad_json = requests.JSONDecodeError("Expecting value", "<html>502</html>", 0)
    api, sdk, sleeps = _api([bad_json, requests.ConnectionError("refused"), KeyError("data"), _pods("a")],
                            base_delay=0.5)
    assert [p["name"] for p in api.list_pods()] == ["a"]
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(sdk.queries) == 4


def test_retries_give_up_with_a_transient_error():
    api, _, sleeps = _api([requests.Timeout()] * 3, retries=2)
    with pytest.raises(TransientError, match="after 3 attempts"):
        api.list_pods()
    assert len(sleeps) == 2


def test_401_is_api_key_rejected_without_the_key():
    api, _, _ = _api([FakeSDK.AuthenticationError("Unauthorized request, please check your API key.")])
    with pytest.raises(AuthError) as e:
        api.list_pods()
    assert e.value.exit_code == 2
    assert "API key rejected" in str(e.value)
    assert "sk-test-123456" not in str(e.value)


def test_graphql_errors_keep_their_message_and_no_capacity_is_typed():
    api, _, _ = _api([FakeSDK.QueryError("Something went wrong. Please try again later or contact support.")])
    with pytest.raises(RemoteError, match="Something went wrong") as e:
        api.stop_pod("abc123")
    assert not isinstance(e.value, TransientError)
    api, _, _ = _api([FakeSDK.QueryError("There are no longer any instances available with the requested "
                                         "specifications. Please refresh and try again.")])
    with pytest.raises(NoCapacity):
        api.create_pod({"name": "p", "gpuTypeId": "NVIDIA RTX A40", "cloudType": "SECURE"})


def test_create_adopts_the_pod_a_lost_answer_created():
    lost = requests.JSONDecodeError("Expecting value", "<html>502</html>", 0)
    api, sdk, _ = _api([lost, _pods("other", "mine")])
    pod = api.create_pod({"name": "mine", "imageName": "img", "gpuTypeId": "NVIDIA RTX A40", "cloudType": "SECURE"})
    assert pod["id"] == "idmine"
    assert sum("podFindAndDeployOnDemand" in q for q in sdk.queries) == 1  # never sent twice


def test_create_resends_when_nothing_appeared():
    lost = requests.ConnectionError("reset")
    created = {"data": {"podFindAndDeployOnDemand": {"id": "new1", "name": "mine"}}}
    api, sdk, _ = _api([lost, _pods("other"), created])
    assert api.create_pod({"name": "mine", "imageName": "i", "gpuTypeId": "G", "cloudType": "SECURE"})["id"] == "new1"
    assert sum("podFindAndDeployOnDemand" in q for q in sdk.queries) == 2


def test_get_pod_missing_is_none_and_bad_ids_never_reach_the_server():
    api, sdk, _ = _api([{"data": {"pod": None}}])
    assert api.get_pod("gone12") is None
    with pytest.raises(UsageError):
        api.get_pod('x"}) { myself { pubKey } }')
    assert len(sdk.queries) == 1


def test_the_sdk_is_not_imported_by_the_adapter_module():
    import subprocess
    import sys

    code = "import sys, autopod.runpod.api, autopod.runpod.lifecycle, autopod.runpod.volumes; print('runpod' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_sdk_imports_without_its_cpu_probe_and_the_probe_is_where_expected():
    """``api._sdk`` answers the SDK's import-time ``cpuinfo.get_cpu_info()`` from ``platform``. If a new
    SDK moves or drops that call, this fails loudly; the import itself stays correct either way."""
    import inspect
    import subprocess
    import sys

    code = (
        "import sys, json, platform\n"
        "from autopod.runpod.api import _sdk\n"
        "rp = _sdk()\n"
        "import cpuinfo\n"
        "from runpod.serverless.utils import rp_debugger\n"
        "print(json.dumps({'processor': rp_debugger.PROCESSOR, 'restored': cpuinfo.get_cpu_info.__module__,\n"
        "                  'api': hasattr(rp.api.graphql, 'run_graphql_query'), 'again': _sdk() is rp}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    import platform

    doc = json.loads(out.stdout)
    assert doc == {"processor": platform.processor() or platform.machine() or "unknown", "restored": "cpuinfo.cpuinfo",
                   "api": True, "again": True}
    from runpod.serverless.utils import rp_debugger

    assert "cpuinfo.get_cpu_info()" in inspect.getsource(rp_debugger)


def test_reads_send_the_request_the_sdk_sends_without_importing_it(monkeypatch):
    """Reads go out through the adapter's own transport so that `pod.list` does not pay for `import runpod`.
    It must send what the SDK's run_graphql_query sends; if a new SDK changes its request, this fails."""
    import inspect
    import json
    import subprocess
    import sys

    from test_rest_api import Scripted

    answer = (200, {"Content-Type": "application/json"}, {"data": {"myself": {"pods": []}}})
    srv = Scripted([answer] * 3)
    base = srv.url
    try:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", base)
        import runpod
        from runpod.api.graphql import run_graphql_query

        monkeypatch.setattr(runpod, "api_key", "sk-test-123456")
        text = "query myPods {\n  myself {\n    pods { id }\n  }\n}"
        run_graphql_query(text)
        RunPodAPI(ApiCredentials("sk-test-123456", base, "test"))._post(text)
        # and a fresh process that lists pods never imports the SDK
        code = ("import sys\nfrom autopod.runpod.api import RunPodAPI\nfrom autopod.core.config import ApiCredentials\n"
                f"RunPodAPI(ApiCredentials('k', {base!r}, 't')).list_pods()\nprint('runpod' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    (m1, p1, b1), (m2, p2, b2), _ = srv.seen
    h1, h2, _ = srv.headers
    assert (m1, p1, b1) == (m2, p2, b2) == ("POST", "/graphql", json.dumps({"query": text}).encode())
    for h in ("content-type", "authorization"):
        assert h1[h] == h2[h], h
    assert "timeout=30" in inspect.getsource(run_graphql_query)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

"""No cassette may hold a secret: API keys, bearer tokens, SSH key material."""

import re
from pathlib import Path

import pytest
from test_pods_cassettes import CASSETTES, PLACEHOLDER, scrub_request, scrub_response, scrub_text

FILES = sorted(p for p in CASSETTES.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
FORBIDDEN = {
    "bearer token": re.compile(r"Bearer\s", re.I),
    "authorization header": re.compile(r"^\s*authorization:", re.I | re.M),
    "api_key query parameter": re.compile(r"api_key=", re.I),
    "SSH public key material": re.compile(r"ssh-(ed25519|rsa|dss) AAAA"),
    "ECDSA key material": re.compile(r"ecdsa-sha2-nistp\d+ AAAA"),
    "RunPod API key": re.compile(r"\brpa_[A-Za-z0-9]{16,}"),
    "legacy RunPod API key": re.compile(r"\b[A-Z0-9]{32,}\b"),
    "the key used while recording": re.compile(r"sim-key|replay-only"),
}


def test_there_are_cassettes_to_check():
    names = {p.name for p in FILES}
    for api in ("graphql", "rest"):
        assert {f"test_volume_list[{api}].yaml", f"test_create_with_volume_no_wait[{api}].yaml",
                f"test_list_and_info[{api}].yaml", f"test_stop_and_start[{api}].yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CASSETTES)))
def test_cassette_holds_no_secret(path: Path):
    text = path.read_text(encoding="utf-8")
    found = [what for what, rx in FORBIDDEN.items() if rx.search(text)]
    assert not found, f"{path} holds: {', '.join(found)}"


def test_the_scrubber_removes_keys_from_requests_and_responses():
    keys = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5x me@a\\nssh-rsa AAAAB3NzaC1yc2EAAAADAQAB me@b"
    query = 'mutation { x(input: {env: [{key: "PUBLIC_KEY", value: "' + keys + '"}, {key: "A", value: "1"}]}) }'
    out = scrub_text(query)
    assert "AAAA" not in out and f'value: "{PLACEHOLDER}"' in out and '{key: "A", value: "<scrubbed-env-value>"}' in out
    kept = scrub_text('{env: [{key: "AUTOPOD_COMFY_ADDRESS", value: "127.0.0.1:3000"}]}')
    assert 'value: "127.0.0.1:3000"' in kept
    response = '{"env": ["PUBLIC_KEY=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5x me@a"], "pubKey": "ssh-rsa AAAAB3Nz x"}'
    assert "AAAA" not in scrub_text(response)
    import json

    scrubbed = scrub_response({"body": {"string": json.dumps(
        {"data": {"pod": {"env": ["JUPYTER_PASSWORD=hunter2", "AUTOPOD_COMFY_ADDRESS=127.0.0.1:3000"]}}})}, "headers": {}})
    body = scrubbed["body"]["string"].decode()
    assert "hunter2" not in body and "JUPYTER_PASSWORD=<scrubbed-env-value>" in body and "127.0.0.1:3000" in body

    class Req:
        body = ('{"query": "' + query.replace('"', '\\"') + '"}').encode()

    assert b"AAAA" not in scrub_request(Req()).body

    class RestReq:  # REST v2: env is a map in the request and in the answer
        body = json.dumps({"name": "n", "env": {"PUBLIC_KEY": keys, "HF_TOKEN": "hf_secret",
                                                "AUTOPOD_COMFY_ADDRESS": "127.0.0.1:3000"}}).encode()

    out = scrub_request(RestReq()).body
    assert b"AAAA" not in out and b"hf_secret" not in out and b"127.0.0.1:3000" in out
    rest = scrub_response({"body": {"string": json.dumps({"pods": [{"env": {"HF_TOKEN": "hf_secret"}}]})},
                           "headers": {}})
    assert "hf_secret" not in rest["body"]["string"].decode()

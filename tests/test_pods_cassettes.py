"""Pod and volume tasks replayed from cassettes (vcrpy via pytest-recording).

Every test runs on both of RunPod's APIs, each with its own cassette
(``test_x[graphql].yaml``, ``test_x[rest].yaml``). CI only replays (pytest-recording's
default record mode is ``none``); nothing leaves the machine. Every GraphQL call is
the same ``POST /graphql``, so requests match on method, path *and body*.

Re-record against the RunPod stand-in (the default; deterministic ids)::

    pytest tests/test_pods_cassettes.py --record-mode=rewrite

Re-record against the live API with a real key (creates, stops and terminates
small pods named ``autopod-cassette-*``; the account needs a network volume)::

    AUTOPOD_RECORD_LIVE=1 RUNPOD_API_KEY=... pytest tests/test_pods_cassettes.py --record-mode=rewrite

Authorization headers and ``api_key`` query parameters are dropped, and SSH public
keys (``PUBLIC_KEY`` env values, the account's ``pubKey``) are replaced by a
placeholder, both when recording and when matching.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from autopod.core import chain
from autopod.runpod import api as runpod_api

CASSETTES = Path(__file__).resolve().parent.parent / "cassettes"
# Read at import: the autouse fixture in conftest.py removes RUNPOD_API_KEY before each test.
LIVE_KEY = os.environ.get("RUNPOD_API_KEY") if os.environ.get("AUTOPOD_RECORD_LIVE") == "1" else None
PLACEHOLDER = "<scrubbed-public-key>"
_KEY_MATERIAL = re.compile(r"(ssh-(?:ed25519|rsa|dss|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+)) [A-Za-z0-9+/=]{16,}[^\"\\\n]*")
_ENV_PUBLIC_KEY = re.compile(r'(key: "PUBLIC_KEY", value: )"(?:[^"\\]|\\.)*"')
_RESPONSE_PUBLIC_KEY = re.compile(r'(PUBLIC_KEY=)(?:[^"\\]|\\.)*')
_PUBKEY_FIELD = re.compile(r'("pubKey": )"(?:[^"\\]|\\.)*"')
# Env values can hold any secret a user passes (tokens, passwords); only these plain facts are kept.
ENV_KEPT = {"AUTOPOD_COMFY_ADDRESS"}
ENV_PLACEHOLDER = "<scrubbed-env-value>"
_ENV_INPUT = re.compile(r'(key: "([A-Za-z_][A-Za-z0-9_]*)", value: )"(?:[^"\\]|\\.)*"')


def scrub_env_inputs(text: str) -> str:
    return _ENV_INPUT.sub(lambda m: m.group(0) if m.group(2) in ENV_KEPT
                          else f'{m.group(1)}"{PLACEHOLDER if m.group(2) == "PUBLIC_KEY" else ENV_PLACEHOLDER}"', text)


def scrub_env_lists(doc):
    """Every ``env`` in a body: GraphQL's KEY=value lists and REST v2's maps; values scrubbed except ENV_KEPT."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "env" and isinstance(v, list):
                doc[k] = [_scrub_env_item(e) for e in v]
            elif k == "env" and isinstance(v, dict):
                doc[k] = {n: (val if n in ENV_KEPT else PLACEHOLDER if n == "PUBLIC_KEY" else ENV_PLACEHOLDER)
                          for n, val in v.items()}
            else:
                scrub_env_lists(v)
    elif isinstance(doc, list):
        for v in doc:
            scrub_env_lists(v)
    return doc


def _scrub_env_item(item):
    key, sep, _ = str(item).partition("=")
    if not sep or key in ENV_KEPT:
        return item
    return f"{key}={PLACEHOLDER if key == 'PUBLIC_KEY' else ENV_PLACEHOLDER}"


def scrub_text(text: str) -> str:
    text = scrub_env_inputs(text)
    text = _ENV_PUBLIC_KEY.sub(r'\1"' + PLACEHOLDER + '"', text)
    text = _RESPONSE_PUBLIC_KEY.sub(r"\1" + PLACEHOLDER, text)
    text = _PUBKEY_FIELD.sub(r'\1"' + PLACEHOLDER + '"', text)
    return _KEY_MATERIAL.sub(r"\1 " + PLACEHOLDER, text)


def scrub_request(request):
    if request.body:
        raw = request.body.decode() if isinstance(request.body, bytes) else request.body
        try:
            doc = json.loads(raw)
            if isinstance(doc, dict) and "query" in doc:
                doc["query"] = scrub_text(doc["query"])
                request.body = json.dumps(doc).encode()
            else:  # a REST v2 body: its env is a map
                request.body = scrub_text(json.dumps(scrub_env_lists(doc))).encode()
        except (ValueError, KeyError, TypeError):
            request.body = scrub_text(raw).encode()
    return request


def scrub_response(response):
    body = response["body"]["string"]
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        text = json.dumps(scrub_env_lists(json.loads(text)))
    except ValueError:
        pass
    response["body"]["string"] = scrub_text(text).encode()
    for h in ("Set-Cookie", "set-cookie"):
        response["headers"].pop(h, None)
    return response


@pytest.fixture(scope="module")
def vcr_config():
    return {
        "filter_headers": ["authorization", "user-agent", "cookie"],
        "filter_query_parameters": ["api_key"],
        "match_on": ["method", "path", "body"],
        "decode_compressed_response": True,
        "before_record_request": scrub_request,
        "before_record_response": scrub_response,
    }


@pytest.fixture(scope="module")
def vcr_cassette_dir():
    return str(CASSETTES / "test_pods_cassettes")


@pytest.fixture(params=["graphql", "rest"])
def endpoint(request, record_mode, monkeypatch, tmp_path):
    """Where requests go: nowhere on replay, the stand-in (or RunPod itself) when recording; on each API."""
    monkeypatch.setenv("AUTOPOD_RUNPOD_API", request.param)
    import subprocess

    key = tmp_path / "user-home" / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    monkeypatch.setattr(chain, "_pod_id", None)
    monkeypatch.setattr(runpod_api, "DEFAULT_BASE_DELAY", 0.01 if not LIVE_KEY else 2.0)
    if record_mode == "none":
        monkeypatch.setenv("RUNPOD_API_KEY", "replay-only")
        monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")  # never contacted: vcrpy answers
        yield "replay"
    elif LIVE_KEY:
        monkeypatch.setenv("RUNPOD_API_KEY", LIVE_KEY)
        yield "live"
    else:
        from autopod.sim.runpod_standin import RunPodStandin, default_world

        with RunPodStandin(default_world(seed=1), api_key="sim-key") as s:
            monkeypatch.setenv("RUNPOD_API_KEY", "sim-key")
            monkeypatch.setenv("RUNPOD_API_BASE_URL", s.url)
            yield "standin"


def _volume(cli):
    vols = cli("volume.list", "--json").json
    assert vols, "the account needs a network volume"
    return vols[0]


@pytest.mark.vcr
def test_volume_list(cli, endpoint):
    r = cli("volume.list", "--json")
    assert r.code == 0, r.err
    vols = r.json
    assert vols and {"id", "name", "size_gb", "datacenter", "pods"} <= set(vols[0])
    table = cli("volume.list")
    assert table.out.splitlines()[0].split() == ["ID", "NAME", "SIZE", "DATACENTER", "PODS"]
    assert vols[0]["id"] in table.out


@pytest.mark.vcr
def test_create_with_volume_no_wait(cli, endpoint):
    vol = _volume(cli)
    r = cli("pod.create", "--name", "autopod-cassette-create", "--volume-id", vol["id"], "--no-wait", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["changed"] is True and doc["pod"]["name"] == "autopod-cassette-create"
    assert doc["pod"]["volume_id"] == vol["id"] and doc["pod"]["datacenter"] == vol["datacenter"]
    assert doc["pod"]["volume_mount"] == "/workspace"
    again = cli("pod.create", "--name", "autopod-cassette-create", "--volume-id", vol["id"], "--no-wait")
    assert again.code == 0 and again.out.startswith("ok: pod autopod-cassette-create")
    assert cli("pod.kill", "--pod", "autopod-cassette-create", "--yes").code == 0


@pytest.mark.vcr
def test_list_and_info(cli, endpoint):
    assert cli("pod.create", "--name", "autopod-cassette-info", "--no-wait").code == 0
    listed = cli("pod.list", "--json")
    assert listed.code == 0, listed.err
    assert "autopod-cassette-info" in {p["name"] for p in listed.json}
    table = cli("pod.list")
    assert table.out.splitlines()[0].split() == ["NAME", "ID", "STATUS", "GPU", "DATACENTER", "VOLUME", "UPTIME", "$/HR", "SPENT"]
    assert table.out.splitlines()[-1].startswith("total: ")
    info = cli("pod.info", "--pod", "autopod-cassette-info", "--json")
    assert info.code == 0, info.err
    doc = info.json
    assert doc["name"] == "autopod-cassette-info" and doc["image"] == "runpod/comfyui:latest"
    assert "22/tcp" in doc["ports"] and doc["ssh"]["proxy"].endswith("@ssh.runpod.io")
    assert cli("pod.kill", "--pod", "autopod-cassette-info", "--yes").code == 0


@pytest.mark.vcr
def test_stop_and_start(cli, endpoint):
    assert cli("pod.create", "--name", "autopod-cassette-life", "--no-wait").code == 0
    stop = cli("pod.stop", "--pod", "autopod-cassette-life")
    assert stop.code == 0 and stop.out.startswith("changed: stopped pod autopod-cassette-life"), stop.err
    assert cli("pod.stop", "--pod", "autopod-cassette-life").out.startswith("ok:")
    start = cli("pod.start", "--pod", "autopod-cassette-life", "--no-wait", "--json")
    assert start.code == 0, start.err
    assert start.json["changed"] is True and start.json["pod"]["status"] == "RUNNING"
    assert cli("pod.kill", "--pod", "autopod-cassette-life", "--yes").code == 0

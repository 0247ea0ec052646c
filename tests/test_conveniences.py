"""What users of the original tool rely on: the pod as a plain word, short aliases, the HTTP proxy URL."""

from __future__ import annotations

import json

import pytest
from test_pods_standin import ssh_key, standin, volume_id  # noqa: F401  (fixtures)


def live_names(s):
    return sorted(p["name"] for p in s.world.pods.values() if p["desiredStatus"] != "TERMINATED")


def test_the_pod_as_a_plain_word(cli, standin):  # noqa: F811
    assert cli("pod.create", "flux", "--no-wait").code == 0  # the name as a plain word
    assert cli("pod.create", "other", "--no-wait").code == 0
    assert live_names(standin) == ["flux", "other"]
    info = cli("pod.info", "flux", "--json")
    assert info.code == 0 and info.json["name"] == "flux"
    assert cli("pod.info", "--json", "flux").json["name"] == "flux"  # flags first works too
    assert cli("pod.info", "--pod", "flux", "--json").json["name"] == "flux"  # the --pod form keeps working
    assert cli("pod.stop", "flux").out.startswith("changed: stopped pod flux")
    assert cli("pod.start", "flux", "--no-wait").out.startswith("changed: started pod flux")
    assert cli("pod.kill", "flux", "--yes").out.startswith("changed: terminated pod flux")
    assert live_names(standin) == ["other"]


def test_a_plain_word_never_swallows_the_next_task(cli, standin):  # noqa: F811
    assert cli("pod.create", "old", "--no-wait").code == 0
    r = cli("pod.create", "new", "--no-wait", "pod.info", "--json")  # pod.info is a task, not a pod name
    assert r.code == 0, r.err
    created, info = json.loads(r.out)
    assert created["pod"]["name"] == "new" and info["name"] == "new"
    r = cli("pod.info", "new", "pod.list", "--json")
    assert r.code == 0 and sorted(p["name"] for p in json.loads(r.out)[1]) == ["new", "old"]


def test_a_plain_word_and_the_flag_together_is_a_usage_error(cli, standin):  # noqa: F811
    assert cli("pod.create", "a", "--no-wait").code == 0
    r = cli("pod.kill", "a", "--pod", "a", "--yes", "--json")
    assert r.code == 2 and "given twice" in r.json["msg"]
    r = cli("pod.info", "a", "b")  # a second bare word is not a pod
    assert r.code == 2 and "'b'" in r.err
    assert live_names(standin) == ["a"]


def test_empty_plain_word_is_refused_like_an_empty_flag(cli, standin):  # noqa: F811
    assert cli("pod.create", "only", "--no-wait").code == 0
    r = cli("pod.kill", "", "--yes", "--json")
    assert r.code == 2 and "empty value" in r.json["msg"]
    assert live_names(standin) == ["only"]


@pytest.mark.parametrize("alias,name", [("pod.ls", "pod.list"), ("volume.ls", "volume.list")])
def test_short_list_aliases(cli, standin, alias, name):  # noqa: F811
    assert cli("pod.create", "x", "--no-wait").code == 0
    a, b = cli(alias, "--json"), cli(name, "--json")
    assert a.code == b.code == 0
    assert json.loads(a.out) == json.loads(b.out)
    assert alias in cli("--list").out


def test_rm_aliases(cli, standin):  # noqa: F811
    assert cli("pod.create", "gone", "--no-wait").code == 0
    r = cli("pod.rm", "gone", "--yes")
    assert r.code == 0 and r.out.startswith("changed: terminated pod gone")
    vid = volume_id(standin, "datasets")
    r = cli("volume.rm", vid, "--yes")
    assert r.code == 0 and r.out.startswith("changed: deleted volume datasets")
    assert cli("volume.info", volume_id(standin), "--json").json["name"] == "comfy-models"


def test_pod_info_lists_the_http_proxy_urls_as_public(cli, standin):  # noqa: F811
    assert cli("pod.create", "web", "--port", "8188/http", "--port", "8888/http", "--no-wait").code == 0
    doc = cli("pod.info", "web", "--json").json
    pid = doc["id"]
    assert doc["http_proxy"] == [
        {"port": 8188, "url": f"https://{pid}-8188.proxy.runpod.net", "public": True, "authenticated": False},
        {"port": 8888, "url": f"https://{pid}-8888.proxy.runpod.net", "public": True, "authenticated": False}]
    human = cli("pod.info", "web").out
    assert "HTTP PROXY (PUBLIC, NO LOGIN)" in human and f"https://{pid}-8188.proxy.runpod.net" in human


def test_quick_path_takes_the_plain_word_and_agrees_with_the_full_cli(run_autopod, cli):
    from autopod.launch import parse_comfy_status

    assert parse_comfy_status(["comfy.status", "flux"])["pod"] == "flux"
    quick = run_autopod("comfy.status", "nosuchpod", "--json")
    full = cli("comfy.status", "nosuchpod", "--json")
    assert quick.code == full.code and json.loads(quick.out)["msg"] == json.loads(full.out)["msg"]

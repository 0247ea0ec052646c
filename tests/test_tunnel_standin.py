"""Tunnel target resolution for RunPod pods, against the RunPod stand-in."""

from __future__ import annotations

from test_pods_standin import ssh_key, standin  # noqa: F401  (fixtures)


def test_a_pod_without_direct_ssh_gets_a_clear_error(cli, standin):  # noqa: F811
    """A pod reachable only through ssh.runpod.io cannot carry a tunnel: say why and how to fix it."""
    r = cli("pod.create", "--name", "proxied", "--port", "8188/http", "--no-wait")
    assert r.code == 0, r.err
    # RunPod pods created elsewhere may lack 22/tcp; make this one so (autopod always adds it).
    with standin.world.lock:
        pod = next(iter(standin.world.pods.values()))
        pod["ports"] = "8188/http"
    r = cli("tunnel.start", "--pod", "proxied", "--json")
    assert r.code == 1
    assert "cannot forward ports" in r.err and "22/tcp" in r.err and "Traceback" not in r.err
    assert r.json["failed"] is True
    assert cli("tunnel.list", "--json").json == []


def test_tunnel_to_a_stopped_pod_is_refused_and_nothing_is_recorded(cli, standin):  # noqa: F811
    assert cli("pod.create", "--name", "sleepy", "--no-wait").code == 0
    assert cli("pod.stop", "--pod", "sleepy").code == 0
    r = cli("tunnel.start", "--pod", "sleepy")
    assert r.code == 1 and "pod sleepy is stopped: start it with `autopod pod.start --pod sleepy`" in r.err
    assert cli("tunnel.list", "--json").json == []

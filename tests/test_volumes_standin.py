"""The volume tasks against the RunPod stand-in."""

from test_pods_standin import ssh_key, standin, volume_id  # noqa: F401  (fixtures)


def test_list_shows_the_pods_using_each_volume(cli, standin):  # noqa: F811
    vid = volume_id(standin)
    assert cli("pod.create", "--name", "user", "--volume-id", vid, "--no-wait").code == 0
    r = cli("volume.list")
    assert r.code == 0
    assert r.out.splitlines()[0].split() == ["ID", "NAME", "SIZE", "DATACENTER", "PODS"]
    line = next(ln for ln in r.out.splitlines() if vid in ln)
    assert "comfy-models" in line and "100 GB" in line and "EU-RO-1" in line and "user" in line
    docs = cli("volume.list", "--json").json
    by_id = {v["id"]: v for v in docs}
    assert [p["name"] for p in by_id[vid]["pods"]] == ["user"]
    assert by_id[volume_id(standin, "datasets")]["pods"] == []


def test_info(cli, standin):  # noqa: F811
    vid = volume_id(standin)
    doc = cli("volume.info", "--id", vid, "--json").json
    assert doc == {"id": vid, "name": "comfy-models", "size_gb": 100, "datacenter": "EU-RO-1", "pods": []}
    assert "comfy-models" in cli("volume.info", "--id", vid).out
    missing = cli("volume.info", "--id", "nosuchvol1")
    assert missing.code == 2 and "no network volume 'nosuchvol1'" in missing.err
    assert cli("volume.info", "--id", 'bad"id').code == 2


def test_create_is_idempotent_and_checks_input(cli, standin):  # noqa: F811
    r = cli("volume.create", "--name", "loras", "--size-gb", "20", "--datacenter", "US-KS-2", "--json")
    assert r.code == 0 and r.json["changed"] is True
    vid = r.json["volume"]["id"]
    assert standin.world.network_volumes[vid] == {"name": "loras", "size": 20, "dataCenterId": "US-KS-2"}
    again = cli("volume.create", "--name", "loras", "--size-gb", "20", "--datacenter", "US-KS-2")
    assert again.code == 0 and again.out.startswith(f"ok: volume loras ({vid}) already exists")
    assert len(standin.world.network_volumes) == 3
    assert cli("volume.create", "--name", "x", "--size-gb", "lots", "--datacenter", "US-KS-2").code == 2
    assert cli("volume.create", "--name", "x").code == 2
    # A data center the account does not list is a typo: exit 2 before anything is sent.
    cz = cli("volume.create", "--name", "x", "--size-gb", "5", "--datacenter", "CZ-PR-1")
    assert cz.code == 2 and "unknown data center 'CZ-PR-1'" in cz.err
    for bad in (["--size-gb", "999999"], ["--size-gb", "0"], ["--name", "a\nb"]):
        args = {"--name": "x", "--size-gb": "5", "--datacenter": "US-KS-2"}
        args.update(dict(zip(bad[::2], bad[1::2])))
        r = cli("volume.create", *[t for kv in args.items() for t in kv])
        assert r.code == 2, (bad, r.err)
    assert len(standin.world.network_volumes) == 3


def test_delete_is_refused_while_a_pod_uses_the_volume(cli, standin):  # noqa: F811
    vid = volume_id(standin)
    assert cli("pod.create", "--name", "user", "--volume-id", vid, "--no-wait").code == 0
    refused = cli("volume.delete", "--id", vid, "--yes")
    assert refused.code == 1 and "is used by pod(s) user" in refused.err
    assert vid in standin.world.network_volumes
    assert cli("volume.delete", "--id", vid).code == 2  # no --yes and stdin is not a terminal
    assert cli("pod.kill", "--pod", "user", "--yes").code == 0
    done = cli("volume.delete", "--id", vid, "--yes")
    assert done.code == 0 and done.out.startswith("changed: deleted volume comfy-models")
    assert vid not in standin.world.network_volumes
    assert cli("volume.delete", "--id", vid, "--yes").out.startswith("ok: volume")
    # an id autopod never saw is a typo, not "already gone"
    typo = cli("volume.delete", "--id", "nosuchvol1", "--yes")
    assert typo.code == 2 and "no network volume 'nosuchvol1'" in typo.err

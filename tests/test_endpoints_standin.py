"""The endpoint collection end to end against the stand-in (REST v2 ``/v2/serverless`` and the job API on
the same server, one world): create and up idempotent by name, every field sent, PATCH of only what
differs, inventory specs, list with costs, info with workers, jobs and a throttled maximum, kill, purge,
the daily budget for always-on workers, the volume's data center, dry runs, and the job-API client."""

from __future__ import annotations

import pytest
import requests
from test_pods_standin import standin_for, volume_id

from autopod.runpod import rest, serverless
from autopod.runpod.jobapi import JobClient, JobGone, NoSuchEndpoint, SubmitLost, Unauthorized

KEY = "sim-key"


@pytest.fixture
def standin(monkeypatch):
    with standin_for(monkeypatch, "rest") as s:
        monkeypatch.delenv("RUNPOD_ENDPOINT_BASE_URL", raising=False)
        yield s


@pytest.fixture
def patches(monkeypatch):
    """Every PATCH body the adapter sends (passed on to the stand-in unchanged)."""
    sent = []
    real = rest.RestAPI.update_endpoint

    def spy(self, endpoint_id, body):
        sent.append(body)
        return real(self, endpoint_id, body)

    monkeypatch.setattr(rest.RestAPI, "update_endpoint", spy)
    return sent


def get(s, path):
    r = requests.get(f"{s.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def patch(s, eid, body):
    r = requests.patch(f"{s.url}/v2/serverless/{eid}", json=body, headers={"Authorization": f"Bearer {KEY}"},
                       timeout=10)
    r.raise_for_status()
    return r.json()


def endpoints(s):
    return get(s, "/v2/serverless")["endpoints"]


def catalog(s):
    return {g["id"]: g for g in get(s, "/v2/catalog/gpus")["gpus"]}


def inventory(tmp_path, monkeypatch, text):
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    monkeypatch.setenv("AUTOPOD_INVENTORY", str(path))
    return path


def test_create_sends_every_field_and_is_idempotent(cli, standin):
    r = cli("endpoint.create", "--name", "flux", "--gpus", "RTX A40", "--workers-max", "4", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert doc["changed"] and doc["endpoint"]["name"] == "flux"
    eid = doc["endpoint"]["id"]
    ep = get(standin, f"/v2/serverless/{eid}")
    # REST v2 would have made these FlashBoot OFF, idle 10 s and a 300 s timeout: autopod's values arrived.
    assert ep["image"] == serverless.WORKER_IMAGE
    assert ep["flashboot"] == "FLASHBOOT" and ep["timeout"] == 600000
    assert ep["workers"] == {"min": 0, "max": 4, "idleTimeout": 5}
    a40 = catalog(standin)["NVIDIA RTX A40"]
    assert ep["gpu"]["pools"] == [a40["pool"]] and "NVIDIA RTX A40" not in ep["gpu"]["excludedTypes"]
    assert ep["gpu"]["count"] == 1 and ep["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}

    again = cli("endpoint.create", "flux", "--workers-max", "9", "--json")
    assert again.code == 0 and again.json["changed"] is False and "already exists" in again.json["msg"]
    assert get(standin, f"/v2/serverless/{eid}")["workers"]["max"] == 4  # create never changes one
    assert len(endpoints(standin)) == 1


def test_up_patches_only_what_differs(cli, standin, patches):
    assert cli("endpoint.up", "--name", "flux", "--gpus", "RTX A40", "--json").code == 0
    ok = cli("endpoint.up", "--name", "flux", "--gpus", "RTX A40", "--json")
    assert ok.code == 0 and ok.json["changed"] is False and patches == []
    more = cli("endpoint.up", "--name", "flux", "--workers-max", "8", "--idle-timeout", "30", "--json")
    assert more.code == 0 and more.json["changed"] and more.json["changed_fields"] == ["workers"]
    assert patches == [{"workers": {"min": 0, "max": 8, "idleTimeout": 30}}]
    ep = endpoints(standin)[0]
    assert ep["workers"] == {"min": 0, "max": 8, "idleTimeout": 30} and ep["flashboot"] == "FLASHBOOT"
    assert cli("endpoint.up", "--name", "flux", "--workers-max", "8", "--json").json["changed"] is False
    assert len(patches) == 1


def test_up_makes_an_endpoint_match_its_inventory_spec(cli, standin, patches, tmp_path, monkeypatch):
    inv = inventory(tmp_path, monkeypatch, "endpoints:\n  flux:\n    gpus: [RTX A40]\n    workers_max: 4\n")
    made = cli("endpoint.up", "flux", "--json")
    assert made.code == 0 and made.json["changed"], made.err
    eid = made.json["endpoint"]["id"]
    # Someone changed it on the console: up puts back what the spec says, and nothing else.
    patch(standin, eid, {"flashboot": "OFF", "workers": {"min": 0, "max": 2, "idleTimeout": 5}})
    inv.write_text("endpoints:\n  flux:\n    gpus: [RTX A40]\n    workers_max: 6\n    timeout: 120\n")
    r = cli("endpoint.up", "flux", "--json")
    assert r.code == 0 and r.json["changed"], r.err
    assert r.json["changed_fields"] == ["flashboot", "timeout", "workers"]
    assert patches[-1] == {"flashboot": "FLASHBOOT", "timeout": 120000,
                           "workers": {"min": 0, "max": 6, "idleTimeout": 5}}
    assert cli("endpoint.up", "flux", "--json").json["changed"] is False


def test_list_shows_cost_per_hour_at_min_and_max(cli, standin):
    assert cli("endpoint.up", "--name", "a", "--gpus", "RTX A40", "--workers-max", "4", "--gpu-count", "2").code == 0
    r = cli("endpoint.list", "--json")
    assert r.code == 0
    (row,) = r.json
    price = catalog(standin)["NVIDIA RTX A40"]["price"]["serverless"]
    assert price > 0
    assert row["cost_per_hr_min"] == 0 and row["cost_per_hr_max"] == pytest.approx(price * 2 * 4)
    assert row["gpus"] == ["RTX A40"] and row["workers"] == "0-4"
    table = cli("endpoint.list")
    assert table.code == 0 and "$/HR MAX" in table.out and "a" in table.out


def test_info_reads_workers_health_and_a_throttled_maximum(cli, standin):
    eid = cli("endpoint.up", "--name", "flux", "--workers-max", "5", "--json").json["endpoint"]["id"]
    r = cli("endpoint.info", "flux", "--json")
    assert r.code == 0, r.err
    doc = r.json
    assert set(doc["workers_now"]) == {"running", "idle", "initializing", "throttled", "unhealthy", "total"}
    assert doc["jobs"]["in_queue"] == 0 and doc["throttled_max"] is False
    assert any("scaled to zero" in n for n in doc["notes"])
    # RunPod lowers an idle endpoint's maximum to 2 after days without requests.
    patch(standin, eid, {"workers": {"min": 0, "max": 2, "idleTimeout": 5}})
    doc = cli("endpoint.info", "flux", "--json").json
    assert doc["throttled_max"] is True and doc["workers_max_set"] == 5
    assert any("lowered workers.max from 5 to 2" in n for n in doc["notes"])
    text = cli("endpoint.info", "flux")
    assert "note: RunPod lowered workers.max" in text.out
    # An up that leaves the maximum alone does not take the lowered one as what was asked for.
    assert cli("endpoint.up", "flux", "--idle-timeout", "9", "--json").json["changed"]
    assert cli("endpoint.info", "flux", "--json").json["throttled_max"] is True
    # up on the settings autopod set restores it.
    assert cli("endpoint.up", "flux", "--workers-max", "5", "--json").json["changed"]
    assert cli("endpoint.info", "flux", "--json").json["throttled_max"] is False


def test_info_and_purge_see_queued_jobs(cli, standin):
    # No worker may start: jobs stay queued.
    eid = cli("endpoint.up", "--name", "q", "--workers-max", "0", "--json").json["endpoint"]["id"]
    client = JobClient(eid, api_key=KEY, base_url=standin.url + "/v2")
    for i in range(3):
        assert client.run({"input": {"workflow": {}}, "policy": {"ttl": 600000}})["id"]
    doc = cli("endpoint.info", "q", "--json").json
    assert doc["jobs"]["in_queue"] == 3
    assert any("3 job(s) queued and no worker" in n for n in doc["notes"])
    dry = cli("endpoint.purge", "q", "--dry-run", "--json")
    assert dry.code == 0 and dry.json["endpoint"]["in_queue"] == 3 and client.health()["jobs"]["inQueue"] == 3
    r = cli("endpoint.purge", "q", "--json")
    assert r.code == 0 and r.json["changed"] and r.json["endpoint"]["removed"] == 3
    assert client.health()["jobs"]["inQueue"] == 0
    assert cli("endpoint.purge", "q", "--json").json["changed"] is False


def test_kill_needs_yes_and_is_ok_when_gone(cli, standin):
    cli("endpoint.up", "--name", "flux")
    no = cli("endpoint.kill", "flux")
    assert no.code == 2 and "--yes" in no.err and len(endpoints(standin)) == 1
    dry = cli("endpoint.kill", "flux", "--dry-run", "--json")
    assert dry.code == 0 and dry.json["dry_run"] and len(endpoints(standin)) == 1
    r = cli("endpoint.kill", "flux", "--yes", "--json")
    assert r.code == 0 and r.json["changed"] and endpoints(standin) == []
    again = cli("endpoint.kill", "flux", "--yes", "--json")
    assert again.code == 0 and again.json["changed"] is False


def test_always_on_workers_go_through_the_daily_budget(cli, standin, tmp_path, monkeypatch):
    inventory(tmp_path, monkeypatch, "defaults:\n  budget_usd_per_day: 5\n")
    r = cli("endpoint.up", "--name", "hot", "--workers-min", "1", "--json")
    assert r.code == 1 and "budget" in r.json["msg"] and r.json["failed"]
    assert endpoints(standin) == []
    assert cli("endpoint.up", "--name", "cold", "--json").code == 0  # workers_min 0 bills nothing idle
    forced = cli("endpoint.up", "--name", "hot", "--workers-min", "1", "--force", "--json")
    assert forced.code == 0 and forced.json["changed"]
    # Raising the minimum of an endpoint that exists is checked too.
    raised = cli("endpoint.up", "--name", "cold", "--workers-min", "1", "--json")
    assert raised.code == 1 and "budget" in raised.json["msg"]


def test_volume_pins_its_datacenter(cli, standin):
    vid = volume_id(standin)
    dc = standin.world.network_volumes[vid]["dataCenterId"]
    r = cli("endpoint.up", "--name", "flux", "--volume-id", vid, "--json")
    assert r.code == 0, r.err
    ep = endpoints(standin)[0]
    assert ep["networkVolumes"] == [vid] and ep["dataCenterIds"] == [dc]
    bad = cli("endpoint.up", "--name", "other", "--volume-id", "nosuchvol", "--json")
    assert bad.code == 2 and "does not exist" in bad.json["msg"]


def test_dry_run_sends_nothing_and_bad_input_is_exit_2(cli, standin):
    r = cli("endpoint.up", "--name", "flux", "--env", "BUCKET_SECRET_ACCESS_KEY=s3cr3t", "--dry-run", "--json")
    assert r.code == 0 and r.json["dry_run"] and r.json["request"]["flashboot"] == "FLASHBOOT"
    assert r.json["request"]["env"] == {"BUCKET_SECRET_ACCESS_KEY": "<set>"} and "s3cr3t" not in r.out
    assert endpoints(standin) == []
    for argv, match in ((["--gpus", "RTX 9999"], "unknown GPU"), (["--workers-min", "3", "--workers-max", "1"],
                                                                  "more than"),
                        (["--flashboot", "--no-flashboot"], "not both"), (["--timeout", "1"], "--timeout")):
        bad = cli("endpoint.up", "--name", "flux", *argv)
        assert bad.code == 2 and match in bad.err and "Traceback" not in bad.err
    assert endpoints(standin) == []
    missing = cli("endpoint.info", "nope")
    assert missing.code == 2 and "no endpoint 'nope'" in missing.err


def test_job_client_against_the_standin(standin):
    eid = serverless.create({"name": "jobs", "workers_max": 0}).data["id"]
    client = JobClient.for_account(eid)
    assert client.base == standin.url + "/v2"
    job = client.run({"input": {"workflow": {}}})
    assert client.status(job["id"])["status"] == "IN_QUEUE"
    assert client.cancel(job["id"])["status"] == "CANCELLED"
    with pytest.raises(JobGone):
        client.status("no-such-job")
    with pytest.raises(NoSuchEndpoint):
        JobClient("nosuchendpoint", api_key=KEY, base_url=standin.url + "/v2").health()
    with pytest.raises(Unauthorized):
        JobClient(eid, api_key="wrong-key", base_url=standin.url + "/v2").health()


def sim_faults(s, faults):
    r = requests.post(f"{s.url}/_sim/serverless", json={"faults": faults},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    r.raise_for_status()


def job_log(s, eid):
    return [j for j in get(s, "/_sim/serverless/jobs")["jobs"] if j["endpoint_id"] == eid]


def test_job_client_retries_429_and_5xx_and_never_submits_twice(standin):
    eid = serverless.create({"name": "busy", "workers_max": 0}).data["id"]
    sleeps = []
    client = JobClient(eid, api_key=KEY, base_url=standin.url + "/v2", sleep=sleeps.append)
    sim_faults(standin, {"http": [{"op": "run", "status": 429, "times": 2, "retry_after": 3},
                                  {"op": "status", "status": 503, "times": 1}]})
    job = client.run({"input": {"workflow": {}}})
    assert sleeps == [3.0, 3.0] and len(job_log(standin, eid)) == 1
    assert client.status(job["id"])["status"] == "IN_QUEUE" and sleeps[2:] == [1.0]


def test_a_lost_run_answer_is_submit_lost_and_the_job_exists(standin):
    eid = serverless.create({"name": "lossy", "workers_max": 0}).data["id"]
    client = JobClient(eid, api_key=KEY, base_url=standin.url + "/v2", sleep=lambda s: None)
    sim_faults(standin, {"lost_answer": {"times": 1}})
    with pytest.raises(SubmitLost):
        client.run({"input": {"workflow": {"n": 1}}})
    (entry,) = job_log(standin, eid)  # RunPod took it: sending again would have made a second job
    assert entry.get("answer_lost") is True
    assert client.run({"input": {"workflow": {"n": 2}}})["id"] and len(job_log(standin, eid)) == 2


def test_a_throttled_maximum_is_told_from_the_spec_for_an_endpoint_made_elsewhere(cli, standin, tmp_path,
                                                                                    monkeypatch):
    inventory(tmp_path, monkeypatch, "endpoints:\n  flux:\n    workers_max: 6\n")
    body = {"name": "flux", "type": "QUEUE", "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "image": serverless.WORKER_IMAGE, "gpu": {"pools": [catalog(standin)["NVIDIA RTX A40"]["pool"]]},
            "workers": {"min": 0, "max": 2}}
    r = requests.post(f"{standin.url}/v2/serverless", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10)
    assert r.status_code == 201, r.text
    doc = cli("endpoint.info", "flux", "--json").json
    assert doc["throttled_max"] is True and doc["workers_max_set"] == 6


def test_dearer_gpus_under_always_on_workers_go_through_the_budget(cli, standin, tmp_path, monkeypatch):
    prices = {g["displayName"]: g["price"]["serverless"] for g in catalog(standin).values()
              if g.get("pool") and g["price"].get("serverless")}
    cheap, dear = min(prices, key=prices.get), max(prices, key=prices.get)
    assert prices[dear] > prices[cheap]
    budget = round(prices[cheap] * 24 * 1.01, 2)  # room for one cheap worker all day, not one dear one
    inventory(tmp_path, monkeypatch, f"defaults:\n  budget_usd_per_day: {budget}\n")
    assert cli("endpoint.up", "--name", "hot", "--gpus", cheap, "--workers-min", "1", "--workers-max", "1").code == 0
    r = cli("endpoint.up", "--name", "hot", "--gpus", dear, "--json")
    assert r.code == 1 and "budget" in r.json["msg"]
    cheap_id = next(g["id"] for g in catalog(standin).values() if g["displayName"] == cheap)
    assert cli("endpoint.list", "--json").json[0]["gpus"] == [cheap]  # refused: still on the cheap GPU
    assert cheap_id not in endpoints(standin)[0]["gpu"]["excludedTypes"]


def test_ctrl_c_during_a_create_leaves_no_always_on_worker_billing(cli, standin, monkeypatch, patches):
    real = rest.RestAPI.create_endpoint

    def made_then_interrupted(self, body):
        real(self, body)  # RunPod made it; the answer never arrived
        raise KeyboardInterrupt

    monkeypatch.setattr(rest.RestAPI, "create_endpoint", made_then_interrupted)
    r = cli("endpoint.up", "--name", "hot", "--workers-min", "2", "--workers-max", "4", "--json")
    assert r.code == 130 and "interrupted while creating endpoint hot" in r.json["msg"]
    (ep,) = endpoints(standin)
    assert r.json["endpoint"]["id"] == ep["id"] and "workers.min is set to 0" in r.json["msg"]
    assert ep["workers"]["min"] == 0 and ep["workers"]["max"] == 4


def test_endpoints_go_to_rest_v2_whatever_runpod_api_says(cli, monkeypatch, tmp_path):
    with standin_for(monkeypatch, "graphql") as s:
        inventory(tmp_path, monkeypatch, "defaults:\n  budget_usd_per_day: 1000\n")
        r = cli("endpoint.up", "--name", "flux", "--workers-min", "1", "--json")  # the budget lists pods on GraphQL
        assert r.code == 0 and r.json["changed"], r.err
        assert [e["name"] for e in endpoints(s)] == ["flux"]
        assert cli("endpoint.list", "--json").json[0]["workers_min"] == 1


def sim_settings(s, settings):
    r = requests.post(f"{s.url}/_sim/serverless", json={"settings": settings},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    r.raise_for_status()


@pytest.mark.parametrize("fault,words", [(None, "starting (a cold start"), ("THROTTLED", "throttled: RunPod has no "
                                                                                        "capacity"),
                                         ("UNHEALTHY", "unhealthy: the container keeps failing")])
def test_info_tells_a_cold_start_from_no_capacity_and_a_crash_loop(cli, standin, fault, words):
    sim_settings(standin, {"sls_cold_start_s": 30})
    eid = cli("endpoint.up", "--name", "w", "--workers-max", "1", "--json").json["endpoint"]["id"]
    if fault:
        sim_faults(standin, {"workers": {eid: fault}})
    JobClient(eid, api_key=KEY, base_url=standin.url + "/v2").run({"input": {"workflow": {}}})
    doc = cli("endpoint.info", "w", "--json").json
    key = (fault or "initializing").lower()
    assert doc["workers_now"][key] == 1 and doc["jobs"]["in_queue"] == 1
    assert any(words in n for n in doc["notes"]), doc["notes"]
    assert not any("scaled to zero" in n for n in doc["notes"])

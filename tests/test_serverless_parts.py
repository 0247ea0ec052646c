"""The parts of the endpoint collection that decide, without RunPod: settings from flags and the inventory,
GPU names as pools, the create body with every field, the PATCH of only what differs, and the costs."""

from __future__ import annotations

import pytest

from autopod.core.errors import ConfigError, UsageError
from autopod.core.inventory import Inventory, load_inventory
from autopod.runpod import serverless as sls

CATALOG = [
    {"id": "NVIDIA RTX A40", "displayName": "RTX A40", "pool": "AMPERE_48", "price": {"serverless": 0.85}},
    {"id": "NVIDIA RTX A6000", "displayName": "RTX A6000", "pool": "AMPERE_48", "price": {"serverless": 0.95}},
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "pool": "ADA_24", "price": {"serverless": 1.10}},
    {"id": "NVIDIA L4", "displayName": "L4", "pool": "ADA_24", "price": {"serverless": 0.68}},
    {"id": "NVIDIA H100", "displayName": "H100", "pool": None, "price": {}},
]


def spec(**flags):
    return sls.resolve_endpoint_spec({"name": "flux", **flags})


def test_defaults_are_the_consoles_and_the_worker_image():
    s = spec()
    assert s.image == sls.WORKER_IMAGE == "runpod/worker-comfyui:5.8.5-base"
    assert (s.workers_min, s.workers_max, s.idle_timeout, s.timeout, s.flashboot) == (0, 3, 5, 600, True)
    assert s.given == set() and not s.from_inventory


def test_flags_win_and_are_checked():
    s = spec(gpus=["RTX A40,RTX 4090"], workers_max="8", workers_min="1", timeout="120", flashboot=False,
             env=["BUCKET_ENDPOINT_URL=https://s3"])
    assert s.gpus == ["RTX A40", "RTX 4090"] and s.workers_max == 8 and s.timeout == 120
    assert s.flashboot is False and s.env == {"BUCKET_ENDPOINT_URL": "https://s3"}
    assert s.given == {"gpus", "workers_max", "workers_min", "timeout", "flashboot", "env"}
    for bad, match in ((dict(workers_min="4", workers_max="2"), "more than --workers-max"),
                       (dict(timeout="2"), "--timeout"), (dict(idle_timeout="0"), "--idle-timeout"),
                       (dict(workers_max="x"), "--workers-max"), (dict(image="a b"), "--image"),
                       (dict(env=["1X=2"]), "variable name"), (dict(volume_id="../v"), "volume id")):
        with pytest.raises(UsageError, match=match):
            spec(**bad)
    with pytest.raises(UsageError, match="--name is required"):
        sls.resolve_endpoint_spec({})


def test_the_inventory_spec_is_the_whole_truth(tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text("endpoints:\n  flux:\n    gpus: [RTX 4090]\n    workers_max: 8\n    flashboot: false\n"
                   "    env: {COMFY_LOG_LEVEL: INFO}\n")
    s = sls.resolve_endpoint_spec({"name": "flux", "workers_max": "5"}, load_inventory(inv))
    assert s.from_inventory and s.workers_max == 5 and s.gpus == ["RTX 4090"] and s.flashboot is False
    assert s.env == {"COMFY_LOG_LEVEL": "INFO"}


@pytest.mark.parametrize("text,match", [
    ("endpoints:\n  e:\n    flashboot: yes-please\n", "true or false"),
    ("endpoints:\n  e:\n    workers_max: -1\n", "whole number"),
    ("endpoints:\n  e:\n    idle_timeout: 4000\n", "between 1 and 3600"),
    ("endpoints:\n  e:\n    cloud_type: SECURE\n", "unknown key 'cloud_type'"),
])
def test_inventory_endpoint_specs_are_validated(tmp_path, text, match):
    inv = tmp_path / "inv.yml"
    inv.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_inventory(inv)


def test_gpu_names_become_pools_with_the_other_types_excluded():
    plan = sls.plan_pools(["RTX A40", "rtx 4090"], CATALOG)
    assert plan["pools"] == ["AMPERE_48", "ADA_24"]
    assert plan["excludedTypes"] == ["NVIDIA L4", "NVIDIA RTX A6000"]
    with pytest.raises(UsageError, match="unknown GPU 'RTX 9999'"):
        sls.plan_pools(["RTX 9999"], CATALOG)
    with pytest.raises(UsageError, match="no Serverless pool"):
        sls.plan_pools(["H100"], CATALOG)


def test_create_body_writes_every_field_out():
    s = spec(volume_id="vol1", gpus=["RTX A40"], workers_max="4")
    body = sls.create_body(s, sls.plan_pools(s.gpus, CATALOG), "EU-RO-1")
    assert body == {
        "name": "flux", "type": "QUEUE", "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        "image": sls.WORKER_IMAGE,
        "gpu": {"pools": ["AMPERE_48"], "excludedTypes": ["NVIDIA RTX A6000"], "count": 1},
        "workers": {"min": 0, "max": 4, "idleTimeout": 5}, "timeout": 600000, "flashboot": "FLASHBOOT",
        "networkVolumes": ["vol1"], "dataCenterIds": ["EU-RO-1"], "disk": 20, "env": {},
    }


def current_from(s, plan, dc=None, **over):
    return {"id": "ep1", "name": s.name, **sls.create_body(s, plan, dc), **over}


def test_patch_is_empty_when_nothing_differs_and_names_only_the_groups_that_do(tmp_path):
    s = spec(gpus=["RTX A40"])
    plan = sls.plan_pools(s.gpus, CATALOG)
    cur = current_from(s, plan)
    assert sls.patch_for(s, cur, plan, None) == {}
    s2 = spec(gpus=["RTX A40"], workers_max="8")
    assert sls.patch_for(s2, cur, plan, None) == {"workers": {"min": 0, "max": 8, "idleTimeout": 5}}


def test_flags_alone_change_only_what_they_name():
    base = spec(gpus=["RTX 4090"], workers_max="6", idle_timeout="30", flashboot=False)
    cur = current_from(base, sls.plan_pools(base.gpus, CATALOG))
    # Only --workers-min: the rest of the workers group and every other group stay as RunPod has them.
    s = spec(workers_min="1")
    assert sls.patch_for(s, cur, None, None) == {"workers": {"min": 1, "max": 6, "idleTimeout": 30}}
    # --gpu-count alone keeps the pools and exclusions.
    s = spec(gpu_count="2")
    assert sls.patch_for(s, cur, None, None) == {
        "gpu": {"pools": ["ADA_24"], "excludedTypes": ["NVIDIA L4"], "count": 2}}


def test_an_inventory_spec_puts_back_what_it_leaves_to_the_defaults(tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text("endpoints:\n  flux:\n    gpus: [RTX A40]\n")
    s = sls.resolve_endpoint_spec({"name": "flux"}, load_inventory(inv))
    plan = sls.plan_pools(s.gpus, CATALOG)
    cur = current_from(s, plan, workers={"min": 0, "max": 2, "idleTimeout": 5}, flashboot="OFF", timeout=300000,
                       networkVolumes=["vol1"], dataCenterIds=["EU-RO-1"])
    assert sls.patch_for(s, cur, plan, None) == {"flashboot": "FLASHBOOT", "timeout": 600000,
                                                 "workers": {"min": 0, "max": 3, "idleTimeout": 5},
                                                 "networkVolumes": [], "dataCenterIds": []}


def test_a_gpu_patch_always_carries_the_exclusions():
    s = spec(gpus=["RTX A40"])
    cur = current_from(spec(gpus=["RTX A6000"]), sls.plan_pools(["RTX A6000"], CATALOG))
    patch = sls.patch_for(s, cur, sls.plan_pools(s.gpus, CATALOG), None)
    assert patch == {"gpu": {"pools": ["AMPERE_48"], "excludedTypes": ["NVIDIA RTX A6000"], "count": 1}}


def test_volume_pins_its_datacenter():
    s = spec(volume_id="vol1")
    cur = current_from(spec(), sls.plan_pools(["RTX A40"], CATALOG))
    assert sls.patch_for(s, cur, None, "US-KS-2") == {"networkVolumes": ["vol1"], "dataCenterIds": ["US-KS-2"]}
    pinned = current_from(s, sls.plan_pools(["RTX A40"], CATALOG), "US-KS-2")
    assert sls.patch_for(spec(volume_id="vol1"), pinned, None, "US-KS-2") == {}


def test_costs_at_min_and_max_use_the_dearest_allowed_gpu():
    s = spec(gpus=["RTX A40", "RTX 4090"], workers_min="1", workers_max="4", gpu_count="2")
    body = sls.create_body(s, sls.plan_pools(s.gpus, CATALOG), None)
    assert sls.worker_rate(body, CATALOG) == 2.2  # RTX 4090 x2; the excluded A6000 and L4 do not count
    assert sls.costs(body, CATALOG) == (2.2, 8.8)
    rec = sls.record({"id": "e", "name": "flux", **body}, CATALOG)
    assert rec["cost_per_hr_min"] == 2.2 and rec["cost_per_hr_max"] == 8.8
    assert rec["gpus"] == ["RTX A40", "RTX 4090"] and rec["workers"] == "1-4" and rec["timeout_s"] == 600
    assert sls.costs({"gpu": {"pools": ["NOPE"]}, "workers": {"min": 1, "max": 2}}, CATALOG) == (None, None)


def test_secret_looking_env_values_are_hidden_in_shown_bodies():
    shown = sls.shown_body({"env": {"BUCKET_SECRET_ACCESS_KEY": "s3cr3t", "COMFY_LOG_LEVEL": "INFO"}})
    assert shown["env"] == {"BUCKET_SECRET_ACCESS_KEY": "<set>", "COMFY_LOG_LEVEL": "INFO"}


def test_an_empty_inventory_has_no_endpoints():
    assert Inventory().endpoints == {}

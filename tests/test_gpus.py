"""GPU name matching, close-match suggestions, fallback planning and stock (pure)."""

import pytest

from autopod.core.errors import UsageError
from autopod.runpod.gpus import gpu_rows, match_gpu, plan_gpu_order, stock_by_gpu

TYPES = [
    {"id": "NVIDIA RTX A40", "displayName": "RTX A40", "memoryInGb": 48, "securePrice": 0.4, "communityPrice": 0.35},
    {"id": "NVIDIA RTX A6000", "displayName": "RTX A6000", "memoryInGb": 48, "securePrice": 0.49},
    {"id": "NVIDIA RTX A5000", "displayName": "RTX A5000", "memoryInGb": 24, "securePrice": 0.27},
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24, "securePrice": 0.69},
]


@pytest.mark.parametrize("name", ["NVIDIA RTX A40", "RTX A40", "rtx a40", "  nvidia   rtx A40 "])
def test_match_by_id_or_display_name_case_insensitive(name):
    assert match_gpu(name, TYPES)["id"] == "NVIDIA RTX A40"


def test_unknown_gpu_lists_closest_names_once_each():
    with pytest.raises(UsageError) as e:
        match_gpu("rtx a4o", TYPES)
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert "unknown GPU 'rtx a4o'" in msg and "closest known:" in msg
    assert "RTX A40" in msg
    assert msg.count("RTX A40") == 1  # the id "NVIDIA RTX A40" is not offered as a second name


def test_nothing_close_lists_known_gpus():
    with pytest.raises(UsageError) as e:
        match_gpu("TPU v5", TYPES)
    assert "known GPUs include" in str(e.value) and "RTX 4090" in str(e.value)


def test_plan_keeps_order_and_drops_repeats():
    plan = plan_gpu_order(["RTX A6000", "NVIDIA RTX A40", "rtx a6000", "RTX A5000"], TYPES)
    assert [g["id"] for g in plan] == ["NVIDIA RTX A6000", "NVIDIA RTX A40", "NVIDIA RTX A5000"]


def test_plan_checks_every_name_before_anything_runs():
    with pytest.raises(UsageError, match="'RTX A9999'"):
        plan_gpu_order(["RTX A40", "RTX A6000", "RTX A9999"], TYPES)


def test_plan_needs_at_least_one_gpu():
    with pytest.raises(UsageError):
        plan_gpu_order([], TYPES)


def test_stock_takes_the_best_data_center_and_rows_sort_by_stock():
    dcs = [
        {"id": "EU-RO-1", "gpuAvailability": [{"gpuTypeId": "NVIDIA RTX A40", "stockStatus": "Low"},
                                              {"gpuTypeId": "NVIDIA RTX A5000", "stockStatus": "None"}]},
        {"id": "US-KS-2", "gpuAvailability": [{"gpuTypeId": "NVIDIA RTX A40", "stockStatus": "High"},
                                              {"gpuTypeId": "NVIDIA RTX A6000", "stockStatus": "Medium"}]},
    ]
    stock = stock_by_gpu(dcs)
    assert stock["NVIDIA RTX A40"]["best"] == "High"
    assert stock["NVIDIA RTX A5000"]["best"] == "None"
    rows = gpu_rows(TYPES, dcs)
    assert [r["id"] for r in rows][:2] == ["NVIDIA RTX A40", "NVIDIA RTX A6000"]
    a40 = rows[0]
    assert a40["datacenters"] == ["US-KS-2", "EU-RO-1"]
    assert a40["memory_gb"] == 48 and a40["secure_price"] == 0.4 and a40["community_price"] == 0.35
    assert next(r for r in rows if r["id"] == "NVIDIA RTX A5000")["datacenters"] == []

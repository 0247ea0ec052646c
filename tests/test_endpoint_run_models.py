"""``comfy.run --endpoint`` checks the models a run names against what the endpoint's workers see on its network
volume, read through a running pod that has the volume attached (real SSH into a simulated pod)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from sshd_server import require_sshd
from test_models_sim import Sim, kill_tunnel_daemons

pytestmark = pytest.mark.sshd
ROOT = Path(__file__).resolve().parent.parent

WF = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
      "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
      "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
      "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}


@pytest.fixture
def sim(tmp_path):
    require_sshd()
    s = Sim(tmp_path)
    p = s.run("sim.start", "--comfy-ready-after", "0")
    assert p.returncode == 0, p.stderr
    s.vol = s.volume_id()
    yield s
    s.run("sim.stop")
    kill_tunnel_daemons(s.home)


def test_models_are_checked_on_the_volume_when_a_pod_can_list_it(sim, tmp_path):
    sim.ok("endpoint.create", "--name", "vol", "--volume-id", sim.vol)
    wf = tmp_path / "ckpt.json"
    wf.write_text(json.dumps(WF))
    oi = tmp_path / "object_info.json"
    run = ("comfy.run", "--endpoint", "vol", str(wf), "--dry-run")

    sim.ok("pod.create", "--name", "m", "--volume-id", sim.vol)  # the pod autopod lists the volume through
    data = next((ROOT / "autopod" / "sim" / "data").rglob("object_info_full.json.gz"))
    with gzip.open(data, "rt") as f:
        info = json.load(f)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["base.safetensors"]
    oi.write_text(json.dumps(info))

    hand = sim.models(sim.vol) / "checkpoints"  # the pod image's ComfyUI folder: workers do not read it
    hand.mkdir(parents=True, exist_ok=True)
    (hand / "base.safetensors").write_bytes(b"0" * 100)
    p = sim.run(*run, "--object-info", str(oi))
    assert p.returncode == 1, p.stderr
    assert "missing checkpoints/base.safetensors" in p.stderr and "the workers will not see it" in p.stderr
    assert "workers lack 1 model(s)" in p.stderr and "--pod m" in p.stderr

    (hand / "base.safetensors").unlink()
    f = sim.add(hf="sim/base", path="base.safetensors", size=1000)
    sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints")  # where pods and workers both look
    assert (sim.shared(sim.vol) / "checkpoints" / "base.safetensors").is_file()
    p = sim.run(*run, "--object-info", str(oi))
    assert p.returncode == 0, p.stderr
    assert "missing" not in p.stderr and "not checked" not in p.stderr

    assert sim.run("pod.stop", "--pod", "m").returncode == 0
    p = sim.run(*run, "--object-info", str(oi))
    assert p.returncode == 0 and "not checked: no running pod has volume" in p.stderr

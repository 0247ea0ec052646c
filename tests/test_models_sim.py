"""Models on the volume, end to end in the simulator: ``autopod model.*`` over real SSH into simulated pods,
downloading from the model hub stand-in. Every fault is checked against what the hub saw and served (its
request log and byte counts), not against what autopod says about itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from sshd_server import kill_tunnel_daemons, require_sshd, wait_until

pytestmark = pytest.mark.sshd

TINY = "https://huggingface.co/autopod-sim/tiny-models/resolve/main/tiny-sd15.safetensors"
TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "CIVITAI_API_TOKEN", "HF_ENDPOINT", "CIVITAI_ENDPOINT")


class Sim:
    def __init__(self, base: Path):
        home = base / "user-home"
        (home / ".ssh").mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
                       check=True, stdin=subprocess.DEVNULL)
        (base / "inventory.yml").write_text("")
        self.home = base / "autopod-home"
        self.env = {**os.environ, "AUTOPOD_HOME": str(self.home), "HOME": str(home),
                    "AUTOPOD_INVENTORY": str(base / "inventory.yml"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "AUTOPOD_PULL_STALL_S": "1", "AUTOPOD_PULL_TRIES": "2"}
        for k in ("RUNPOD_API_KEY", "RUNPOD_API_BASE_URL", *TOKEN_ENVS):
            self.env.pop(k, None)

    def run(self, *argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autopod", *argv], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, *argv: str, env: dict | None = None) -> dict:
        p = self.run(*argv, "--json", env=env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    @property
    def hub(self) -> str:
        return json.loads((self.home / "sim.json").read_text())["hub"]["hf"]

    def add(self, **doc) -> dict:
        r = requests.post(self.hub + "/_hub/files", json=doc, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def state(self) -> dict:
        return requests.get(self.hub + "/_hub/state", timeout=10).json()

    def served(self, fid: str) -> int:
        return self.state()["served"][fid]

    def gets(self, fid: str, listener: str = "cdn") -> list[dict]:
        return [r for r in self.state()["requests"] if r["file"] == fid and r["listener"] == listener
                and r["method"] == "GET"]

    def volume(self, vid: str) -> Path:
        return self.home / "sim" / "volumes" / vid

    def models(self, vid: str) -> Path:
        """The pod's ComfyUI models folder on the volume (RunPod's ComfyUI image keeps it there)."""
        return self.volume(vid) / "runpod-slim" / "ComfyUI" / "models"

    def shared(self, vid: str) -> Path:
        """Where autopod puts model files on the volume: worker-comfyui's folder names, linked from ComfyUI's."""
        return self.volume(vid) / "models"

    def volume_id(self, name: str = "comfy-models") -> str:
        return next(v["id"] for v in self.ok("volume.list") if v["name"] == name)

    def jobs(self, vid: str) -> list[dict]:
        out = []
        for f in (self.volume(vid) / ".autopod" / "models" / "jobs").glob("*/job.json"):
            try:
                out.append(json.loads(f.read_text()))
            except ValueError:
                pass
        return out


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    require_sshd()
    s = Sim(tmp_path_factory.mktemp("models-sim"))
    p = s.run("sim.start", "--comfy-ready-after", "0.3")
    assert p.returncode == 0, p.stderr
    s.vol = s.volume_id()
    s.ok("pod.create", "--name", "m", "--volume-id", s.vol)
    yield s
    s.run("sim.stop")
    kill_tunnel_daemons(s.home)


def pull(sim: Sim, url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sim.run("model.pull", url, "--pod", "m", *args, "--json", env=env)


# -- pull, list, rm, status --------------------------------------------------------------------------------


def test_pull_list_rm_status(sim):
    doc = sim.ok("model.pull", TINY, "--pod", "m", "--folder", "checkpoints")
    m = doc["model"]
    assert doc["changed"] and m["verified"] and m["sha256_source"] == "X-Linked-Etag" and m["listed"] is True
    assert Path(m["path"]).parent == sim.shared(sim.vol) / "checkpoints" and Path(m["path"]).stat().st_size == m["size"]
    assert (sim.models(sim.vol) / "checkpoints" / "tiny-sd15.safetensors").resolve() == Path(m["path"])
    fid = next(f["id"] for f in sim.state()["files"] if f["url"] == TINY)
    before = sim.served(fid)
    again = sim.ok("model.pull", TINY, "--pod", "m", "--folder", "checkpoints")
    assert again["status"] == "ok" and again["model"]["sha256"] == m["sha256"]
    assert sim.served(fid) == before  # already there: nothing downloaded

    rows = sim.ok("model.list", "--pod", "m", "--folder", "checkpoints")
    row = next(r for r in rows if r["name"] == "tiny-sd15.safetensors")
    assert row["url"] == TINY and row["sha256"] == m["sha256"] and row["size"] == 1_500_000
    human = sim.run("model.list", "m")
    assert human.returncode == 0 and "tiny-sd15.safetensors" in human.stdout and "1.5 MB" in human.stdout

    jobs = sim.ok("model.status", "--pod", "m")
    assert any(j["name"] == "tiny-sd15.safetensors" and j["status"] == "done" for j in jobs)

    no = sim.run("model.rm", "tiny-sd15.safetensors", "--pod", "m")
    assert no.returncode == 2 and "--yes" in no.stderr and Path(m["path"]).exists()
    gone = sim.ok("model.rm", "tiny-sd15.safetensors", "--pod", "m", "--yes")
    assert gone["changed"] and not Path(m["path"]).exists()
    assert sim.ok("model.rm", "tiny-sd15.safetensors", "--pod", "m", "--yes")["status"] == "ok"
    typo = sim.run("model.rm", "tiny-sd16.safetensors", "--pod", "m", "--yes")
    assert typo.returncode == 2 and "no model tiny-sd16.safetensors" in typo.stderr


def test_bad_input_exits_2_before_anything_reaches_the_pod(sim):
    for args, msg in [
        (("ftp://x/y.bin",), "give an http:// or https:// URL"),
        ((TINY, "--name", "../x.safetensors"), "invalid --name"),
        ((TINY, "--sha256", "12ab"), "64 hexadecimal"),
        ((TINY, "--folder", "a/b"), "invalid --folder"),
        ((TINY, "--folder", "x", "--folder", "y"), "--folder"),
        (("https://example.com/x.bin",), "which model folder"),
    ]:
        p = sim.run("model.pull", *args, "--pod", "m", "--json")
        assert p.returncode == 2, (args, p.stderr)
        doc = json.loads(p.stdout)  # one JSON document, also for a failure
        assert doc["failed"] and msg in doc["msg"] and "\n" not in doc["msg"], (args, doc)
    p = sim.run("model.pull", TINY, "--pod", "m", "--fleet", "f")
    assert p.returncode == 2 and "--pod or --fleet" in p.stderr


def test_blob_page_urls_and_civitai_names(sim):
    blob = TINY.replace("/tiny-models/resolve/", "/tiny-models/blob/").replace("tiny-sd15", "split_files/vae/tiny-vae")
    doc = sim.ok("model.pull", blob, "--pod", "m")  # the folder from the path, the page URL made a download URL
    assert doc["model"]["folder"] == "vae" and doc["model"]["name"] == "tiny-vae.safetensors"
    civ = sim.ok("model.pull", "https://civitai.com/api/download/models/1001", "--pod", "m",
                 env={"CIVITAI_API_TOKEN": "civ-sim-token"})
    assert civ["model"]["folder"] == "loras" and civ["model"]["name"] == "tiny_style.safetensors"  # Civitai's type
    assert civ["model"]["sha256_source"] == "Civitai model-version API"


# -- faults, each checked against what the hub served -------------------------------------------------------


def test_kill_9_mid_download_then_pull_again_resumes_with_range(sim):
    f = sim.add(hf="sim/kill", path="k.safetensors", size=6_000_000, faults={"slow": 1_500_000, "times": 1})
    started = sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints", "--detach")
    assert started["changed"] and "model.status" in started["msg"]
    job = wait_until(lambda: next((j for j in sim.jobs(sim.vol) if j["url"] == f["url"]
                                   and (j.get("bytes") or 0) > 1_000_000), None), 15, 0.05)
    assert job, "the download did not get going"
    proc = psutil.Process(job["pid"])
    assert "autopod_puller" in " ".join(proc.cmdline())  # the program autopod sent, forked into its own session
    proc.kill()  # kill -9 of the program in the pod
    proc.wait(5)
    st = sim.ok("model.status", "--pod", "m")
    assert next(j for j in st if j["url"] == f["url"])["status"] == "stopped"
    doc = sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints")
    assert doc["changed"] and doc["model"]["resumed_from"] > 1_000_000 and doc["model"]["verified"]
    gets = sim.gets(f["id"])
    assert gets[0]["range"] is None and gets[-1]["range"] == f"bytes={doc['model']['resumed_from']}-"
    assert sim.served(f["id"]) <= 1.1 * f["size"]


def test_a_pull_cut_short_by_a_pod_stop_resumes_after_the_start(sim):
    # The first answer stops sending at 3 MB and holds the connection, and this pull waits a minute for more:
    # the download is still under way when pod.stop lands, however long a loaded machine takes to send it.
    f = sim.add(hf="sim/stop", path="stop.safetensors", size=5_000_000,
                faults={"slow": 1_500_000, "stall_at": 3_000_000, "times": 1})
    sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints", "--detach",
           env={"AUTOPOD_PULL_STALL_S": "60"})
    assert wait_until(lambda: any(j["url"] == f["url"] and (j.get("bytes") or 0) > 1_000_000
                                  for j in sim.jobs(sim.vol)), 15, 0.05)
    sim.ok("pod.stop", "m")  # stopping a pod ends every process in it, the download too
    sim.ok("pod.start", "m")
    doc = sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints")
    assert doc["changed"] and doc["model"]["resumed_from"] > 1_000_000 and doc["model"]["verified"]
    assert sim.gets(f["id"])[-1]["range"] == f"bytes={doc['model']['resumed_from']}-"
    assert sim.served(f["id"]) <= 1.1 * f["size"]


def test_hash_mismatch_saves_nothing_under_the_name(sim):
    f = sim.add(hf="sim/bad", path="bad.safetensors", size=500_000, faults={"corrupt": True})
    p = pull(sim, f["url"], "--folder", "loras")
    assert p.returncode == 1 and "sha256 mismatch" in json.loads(p.stdout)["msg"]
    folder = sim.shared(sim.vol) / "loras"
    assert not (folder / "bad.safetensors").exists() and not list(folder.glob(".bad.safetensors*"))
    assert sim.served(f["id"]) == f["size"]  # it was downloaded whole, then refused
    wrong = pull(sim, TINY, "--folder", "loras", "--name", "x.safetensors", "--sha256", "0" * 64)
    assert wrong.returncode == 1 and "not the " in json.loads(wrong.stdout)["msg"]  # refused before downloading
    assert not (folder / "x.safetensors").exists()


def test_the_token_goes_to_the_hub_and_never_to_the_cdn_it_redirects_to(sim):
    token = "hf_" + "s3cret" * 6
    doc = sim.ok("model.pull", "https://huggingface.co/autopod-sim/gated-model/resolve/main/gated-unet.safetensors",
                 "--pod", "m", "--folder", "diffusion_models", env={"HF_TOKEN": token})
    assert doc["changed"]
    fid = next(f["id"] for f in sim.state()["files"] if f["name"] == "gated-unet.safetensors")
    hub = [r for r in sim.state()["requests"] if r["file"] == fid or "gated-unet" in r["path"]]
    assert {r["auth"] for r in hub if r["listener"] == "hf"} == {True}
    assert [r for r in hub if r["listener"] == "cdn"] and not [r for r in hub if r["listener"] == "cdn" and r["auth"]]


@pytest.mark.parametrize("url,env,code,words", [
    ("https://huggingface.co/autopod-sim/gated-model/resolve/main/gated-unet.safetensors", {}, 1,
     ["answered 401", "HF_TOKEN", "hf_token"]),
    ("https://huggingface.co/autopod-sim/gated-model/resolve/main/gated-unet.safetensors",
     {"HF_TOKEN": "hf_nope_denied"}, 1, ["refused", "(403, GatedRepo)", "licence"]),
    ("https://civitai.com/api/download/models/1002", {}, 1, ["answered 401", "CIVITAI_API_TOKEN"]),
    ("https://huggingface.co/autopod-sim/tiny-models/resolve/main/nothere.safetensors", {}, 1,
     ["not found (404, EntryNotFound)"]),
])
def test_401_403_and_404_say_what_is_needed(sim, url, env, code, words):
    p = pull(sim, url, "--folder", "checkpoints", env=env)
    assert p.returncode == code
    msg = json.loads(p.stdout)["msg"]
    assert all(w in msg for w in words), msg
    assert "hf_nope_denied" not in p.stdout + p.stderr


def test_an_early_access_civitai_file_is_a_403(sim):
    f = sim.add(civitai=2001, model="Early", version_name="v1", file_name="early.safetensors", size=1000,
                early_access=True)
    p = pull(sim, f["url"], "--folder", "checkpoints", env={"CIVITAI_API_TOKEN": "civ"})
    assert p.returncode == 1 and "Early Access" in json.loads(p.stdout)["msg"]


def test_a_file_larger_than_the_free_space_is_refused_before_downloading(sim):
    f = sim.add(hf="sim/huge", path="huge.safetensors", size=10 ** 16, virtual=True)
    p = pull(sim, f["url"], "--folder", "checkpoints")
    assert p.returncode == 1
    msg = json.loads(p.stdout)["msg"]
    assert "not enough space" in msg and "10.0 PB" not in msg and "free" in msg
    assert sim.served(f["id"]) == 0 and not sim.gets(f["id"])


def test_a_server_that_stops_sending_is_noticed_and_resumed(sim):
    f = sim.add(hf="sim/stall", path="stall.safetensors", size=2_000_000, faults={"stall_at": 800_000, "times": 1})
    t0 = time.monotonic()
    doc = sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "checkpoints")
    assert doc["changed"] and doc["model"]["verified"] and time.monotonic() - t0 < 20
    gets = sim.gets(f["id"])
    assert [g["range"] for g in gets] == [None, "bytes=800000-"]
    assert sim.served(f["id"]) == f["size"]


def test_a_server_that_never_sends_the_rest_fails_clearly(sim):
    f = sim.add(hf="sim/dead", path="dead.safetensors", size=1_000_000, faults={"stall_at": 300_000})
    p = pull(sim, f["url"], "--folder", "checkpoints")
    assert p.returncode == 1
    msg = json.loads(p.stdout)["msg"]
    assert "stopped sending" in msg and "pull again to resume" in msg
    assert not (sim.shared(sim.vol) / "checkpoints" / "dead.safetensors").exists()
    assert not os.path.lexists(sim.models(sim.vol) / "checkpoints" / "dead.safetensors")


@pytest.mark.parametrize("faults,words", [({"html": True}, "HTML page"), ({"announce_size": 123}, "announced")])
def test_html_pages_and_wrong_sizes_are_refused(sim, faults, words):
    name = f"odd-{next(iter(faults))}.safetensors"
    f = sim.add(hf="sim/odd", path=name, size=300_000, faults=faults)
    p = pull(sim, f["url"], "--folder", "vae")
    assert p.returncode == 1 and words in json.loads(p.stdout)["msg"]
    assert not (sim.shared(sim.vol) / "vae" / name).exists() and not list((sim.shared(sim.vol) / "vae").glob(".odd*"))


def test_two_pulls_of_one_file_download_it_once(sim):
    f = sim.add(hf="sim/twice", path="twice.safetensors", size=3_000_000, faults={"slow": 3_000_000, "times": 1})
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(pull(sim, f["url"], "--folder", "checkpoints")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    docs = [json.loads(p.stdout) for p in out]
    assert [p.returncode for p in out] == [0, 0], [p.stderr for p in out]
    assert sorted(d["status"] for d in docs) == ["changed", "ok"]
    assert sim.served(f["id"]) == f["size"] and len(sim.gets(f["id"])) == 1


def test_the_token_is_in_no_process_listing_in_the_pod_nor_in_any_file(sim):
    token = "hf_" + "Tk9" * 12
    f = sim.add(hf="sim/secret", path="secret.safetensors", size=3_000_000, faults={"slow": 2_000_000, "times": 1})
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for proc in psutil.process_iter():
                try:
                    env = proc.environ()
                    if not env.get("AUTOPOD_SIM_POD") and not any("puller" in c for c in proc.cmdline()):
                        continue  # this machine's processes; the pod's carry the marker
                    if token in " ".join(proc.cmdline()) or any(token in v for v in env.values()):
                        seen.append(" ".join(proc.cmdline()))
                    if any("puller" in c for c in proc.cmdline()):
                        seen.append("puller-seen")
                except (psutil.Error, OSError):
                    continue
            time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    try:
        p = pull(sim, f["url"], "--folder", "checkpoints", env={"HF_TOKEN": token})
    finally:
        done.set()
        w.join()
    assert p.returncode == 0, p.stderr
    assert "puller-seen" in seen and [s for s in seen if s != "puller-seen"] == []
    leaks = [str(path) for path in sim.home.rglob("*") if path.is_file() and token.encode() in path.read_bytes()]
    assert leaks == []
    assert token not in p.stdout + p.stderr


def test_the_sim_volume_is_shared_and_comfyui_there_lists_pulled_models(sim):
    doc = sim.ok("pod.create", "--name", "m2", "--volume-id", sim.vol)
    rec = json.loads((sim.home / "sim.json").read_text())
    world = requests.get(rec["base_url"] + "/_sim/world", headers={"Authorization": "Bearer " + rec["api_key"]},
                         timeout=5).json()
    pod = world["pods"][doc["pod"]["id"]]
    address = next(e.split("=", 1)[1] for e in pod["env"] if e.startswith("AUTOPOD_COMFY_ADDRESS="))
    sim.ok("model.pull", TINY, "--pod", "m", "--folder", "checkpoints")  # through the other pod

    def listed() -> list:
        try:
            return requests.get(f"http://{address}/models/checkpoints", timeout=5).json()
        except requests.RequestException:
            return []

    assert "tiny-sd15.safetensors" in wait_until(listed, 10)
    assert sim.ok("model.pull", TINY, "--pod", "m2", "--folder", "checkpoints")["status"] == "ok"
    sim.ok("pod.kill", "m2", "--yes")


# -- declared in the inventory, converged by pod.up; a fleet on one volume ------------------------------------


def test_pod_up_converges_models_and_a_fleet_downloads_once_per_volume(sim, tmp_path):
    f = sim.add(hf="sim/fleet", path="shared.safetensors", size=2_000_000, faults={"slow": 4_000_000, "times": 1})
    inv = tmp_path / "inventory.yml"
    inv.write_text(f"pods:\n  flt:\n    count: 2\n    volume_id: {sim.vol}\n    models:\n"
                   f"      - {{url: '{f['url']}', folder: checkpoints}}\n"
                   f"      - {{url: '{TINY.replace('tiny-sd15', 'split_files/vae/tiny-vae')}', folder: vae, "
                   f"name: fleet-vae.safetensors}}\n")
    env = {"AUTOPOD_INVENTORY": str(inv)}
    dry = sim.run("pod.up", "flt", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    for member in json.loads(dry.stdout):
        assert "would pull 2 model(s), 2.3 MB" in member["msg"], member["msg"]
        assert [m["size"] for m in member["models"]] == [2_000_000, 300_000]
    assert sim.served(f["id"]) == 0

    up = sim.run("pod.up", "flt", "--json", env=env)
    assert up.returncode == 0, up.stderr
    members = json.loads(up.stdout)
    shared = [m for doc in members for m in doc["models"] if m["name"] == "shared.safetensors"]
    assert sorted(m["status"] for m in shared) == ["changed", "ok"]  # the second member joined the first's pull
    assert sim.served(f["id"]) == f["size"] and len(sim.gets(f["id"])) == 1

    again = sim.run("pod.up", "flt", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert [d["changed"] for d in json.loads(again.stdout)] == [False, False]
    assert all("models: 2 already there" in d["msg"] for d in json.loads(again.stdout))
    dry = json.loads(sim.run("pod.up", "flt", "--dry-run", "--json", env=env).stdout)
    assert all("the 2 model(s) are on the volume" in d["msg"] for d in dry)

    g = sim.add(hf="sim/fleet", path="later.safetensors", size=500_000)
    p = sim.run("model.pull", g["url"], "--fleet", "flt", "--folder", "loras", "--json", env=env)
    assert p.returncode == 0, p.stderr
    docs = json.loads(p.stdout)
    assert sorted(d["status"] for d in docs) == ["changed", "ok"]
    assert any(d.get("shared_with") for d in docs)
    assert sim.served(g["id"]) == g["size"] and len(sim.gets(g["id"])) == 1
    sim.run("pod.kill", "--fleet", "flt", "--yes", env=env)


def test_a_model_pod_up_cannot_pull_fails_the_command_and_leaves_the_pod_running(sim, tmp_path):
    inv = tmp_path / "inventory.yml"
    inv.write_text("pods:\n  m:\n    models:\n      - {url: 'https://huggingface.co/autopod-sim/gated-model/resolve/main/"
                   "gated-unet.safetensors', folder: unet}\n")
    p = sim.run("pod.up", "m", env={"AUTOPOD_INVENTORY": str(inv)})
    assert p.returncode == 1 and "HF_TOKEN" in p.stderr and "runs, but 1 of its 1 model(s)" in p.stderr
    assert sim.ok("pod.info", "m")["status"] == "RUNNING"


# -- a workflow's missing models ---------------------------------------------------------------------------


def editor_workflow(url: str, name: str) -> dict:
    """An editor file as the ComfyUI frontend saves it: a loader whose properties.models says where its
    checkpoint comes from, beside a model-free graph the simulator's ComfyUI runs."""
    return {"last_node_id": 3, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
            "links": [[1, 1, 0, 2, 0, "IMAGE"]],
            "nodes": [
                {"id": 1, "type": "EmptyImage", "order": 0, "mode": 0, "inputs": [], "properties": {},
                 "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0}],
                 "widgets_values": [64, 64, 1, 0]},
                {"id": 2, "type": "SaveImage", "order": 1, "mode": 0, "outputs": [], "properties": {},
                 "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "widgets_values": ["needs"]},
                {"id": 3, "type": "CheckpointLoaderSimple", "order": 2, "mode": 0, "inputs": [],
                 "outputs": [{"name": "MODEL", "type": "MODEL", "links": []}, {"name": "CLIP", "type": "CLIP", "links": []},
                             {"name": "VAE", "type": "VAE", "links": []}],
                 "properties": {"Node name for S&R": "CheckpointLoaderSimple",
                                "models": [{"name": name, "url": url, "directory": "checkpoints"},
                                           {"name": "unused.safetensors", "url": url, "directory": "loras"}]},
                 "widgets_values": [name]}]}


def test_comfy_run_names_missing_models_and_pull_missing_fetches_them(sim, tmp_path):
    f = sim.add(hf="sim/needs", path="need.safetensors", size=700_000)
    wf = tmp_path / "needs.json"
    wf.write_text(json.dumps(editor_workflow(f["url"] + "?download=true", "need.safetensors")))
    out = ["--output-dir", str(tmp_path / "out")]
    p = sim.run("comfy.run", str(wf), "--pod", "m", *out, "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert [m["name"] for m in doc["missing"]] == ["need.safetensors"]  # not the entry no widget uses
    line = next(x for x in p.stderr.splitlines() if x.startswith("missing checkpoints/need.safetensors"))
    assert f["url"] in line and "autopod model.pull" in line and "--folder checkpoints" in line and "--pod m" in line
    assert "--pull-missing" in doc["msg"] and sim.served(f["id"]) == 0

    p = sim.run("comfy.run", str(wf), "--pod", "m", *out, "--pull-missing", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"] == {"success": 1}
    assert "pulled checkpoints/need.safetensors" in p.stderr and sim.served(f["id"]) == f["size"]
    again = sim.run("comfy.run", str(wf), "--pod", "m", *out, "--json")  # now the pod has it: no check fails
    assert again.returncode == 0, again.stderr

    api = tmp_path / "api.json"
    api.write_text(json.dumps({"1": {"class_type": "LoraLoaderModelOnly",
                                     "inputs": {"model": ["2", 0], "lora_name": "nowhere.safetensors",
                                                "strength_model": 1.0}},
                               "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "need.safetensors"}}}))
    p = sim.run("comfy.run", str(api), "--pod", "m", *out, "--pull-missing")
    assert p.returncode == 1 and "missing loras/nowhere.safetensors" in p.stderr and "no download URL" in p.stderr

    g = sim.add(hf="sim/needs", path="by-job.safetensors", size=100_000)
    job = tmp_path / "job.yml"
    job.write_text(f"workflow: needs.json\nmodels:\n  - {{url: '{g['url']}', folder: loras}}\n")
    p = sim.run("comfy.run", "--job", str(job), "--pod", "m", *out, "--pull-missing", "--json")
    assert p.returncode == 0, p.stderr
    assert sim.served(g["id"]) == g["size"] and (sim.models(sim.vol) / "loras" / "by-job.safetensors").exists()


# -- one volume for pods and Serverless endpoints ----------------------------------------------------------


def test_endpoint_up_names_the_model_files_its_workers_would_not_see(sim):
    f = sim.add(hf="sim/enc", path="enc.safetensors", size=50_000)
    # A file copied into the pod's ComfyUI folder by hand: RunPod's pod image keeps ComfyUI's models there.
    (sim.models(sim.vol) / "text_encoders" / "by-hand.safetensors").write_bytes(b"1" * 100)
    up = sim.ok("endpoint.up", "--name", "shared", "--volume-id", sim.vol)
    notes = up["notes"]
    assert any(n.startswith("text_encoders/by-hand.safetensors: Serverless workers will not see it: in "
                            "runpod-slim/ComfyUI/models/text_encoders, outside models/") for n in notes), notes
    assert any("model.pull URL --folder F" in n for n in notes)
    # Pulled by autopod: in models/clip, linked from ComfyUI's folder; the workers see it, so no note names it.
    sim.ok("model.pull", f["url"], "--pod", "m", "--folder", "text_encoders")
    assert (sim.shared(sim.vol) / "clip" / "enc.safetensors").is_file()
    rows = sim.ok("model.list", "--pod", "m", "--folder", "text_encoders")
    enc = next(r for r in rows if r["name"] == "enc.safetensors")
    assert enc["worker"] == {"sees": True, "path": "/runpod-volume/models/clip/enc.safetensors", "why": None}
    table = sim.run("model.list", "m", "--folder", "text_encoders")
    assert "SERVERLESS" in table.stdout
    assert [line.split()[-2] for line in table.stdout.splitlines() if "by-hand.safetensors" in line] == ["no"]
    again = sim.ok("endpoint.up", "--name", "shared")  # the endpoint's own volume, without naming it
    assert again["changed"] is False and not any("enc.safetensors" in n for n in again["notes"])
    assert any("by-hand.safetensors" in n for n in again["notes"])
    (sim.models(sim.vol) / "text_encoders" / "by-hand.safetensors").unlink()
    last = sim.ok("endpoint.up", "--name", "shared", "--volume-id", sim.vol)
    assert not any("by-hand.safetensors" in n for n in last.get("notes") or [])
    assert sim.ok("endpoint.kill", "shared", "--yes")["changed"]


def test_endpoint_up_says_when_no_pod_can_read_its_volume(sim):
    dc = next(v for v in sim.ok("volume.list") if v["id"] == sim.vol)["datacenter"]
    sim.ok("volume.create", "--name", "scratch", "--size-gb", "10", "--datacenter", dc)
    other = sim.volume_id("scratch")
    up = sim.ok("endpoint.up", "--name", "lonely", "--volume-id", other)
    assert any(f"the models on volume {other} were not checked: no running pod has it attached" in n
               for n in up["notes"])
    assert sim.ok("endpoint.kill", "lonely", "--yes")["changed"]

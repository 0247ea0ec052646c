"""Model pull throughput: the program that downloads inside a pod against `curl -o` of the same URL.

Run by hand (not part of the test suite):

    .venv/bin/python bench/model_pull.py                 # 1 GB file, best of 3
    .venv/bin/python bench/model_pull.py --mb 256 --runs 5

It starts the simulator's model hub (``python -m autopod.sim.modelhub``, its own process, serving with
sendfile) with one file of N MB behind a Hugging Face-style resolve URL that redirects to its CDN, and a
ComfyUI stand-in whose model folders are on a scratch "volume". Then, interleaved, best of --runs:

  a) `curl -sS -L -o FILE URL`: follows the redirect and writes the file; the reference;
  b) `autopod/models/puller.py`, exactly as it runs in a pod (HF_ENDPOINT pointing at the hub): asks
     ComfyUI for the folder, asks the hub what the file is (HEAD), starts the detached download (Range
     ready, sha256 in a second thread, .part then rename after the hash matched) and follows it to the end.

It prints MB/s for each, the ratio b/a (the goal: at least 0.9), the CPU seconds per GB each used (the
pull also hashes every byte; on a machine with few cores that is what limits it), and the peak resident
memory of the pod-side processes (the front that follows, and the download itself), which must not grow
with the file.
Everything stays on 127.0.0.1 in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_hub(root: Path, mb: int) -> tuple[subprocess.Popen, dict]:
    hub = subprocess.Popen([sys.executable, "-m", "autopod.sim.modelhub", "--root", str(root), "--no-demo",
                            "--file", f"bench/big/model.safetensors:{mb * 1_000_000}"],
                           stdout=subprocess.PIPE, cwd=ROOT, text=True)
    info = json.loads(hub.stdout.readline())  # type: ignore[union-attr]
    return hub, info


def peak_rss(proc: subprocess.Popen, out: dict[int, int], stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    out[p.pid] = max(out.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        stop.wait(0.1)  # memory grows slowly if at all; looking more often would take CPU from the pull


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_puller(url: str, env: dict, comfy_address: str) -> tuple[float, int, dict]:
    req = {"op": "pull", "url": url, "folder": "checkpoints", "mount": "/workspace", "comfy_address": comfy_address}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(ROOT / "autopod" / "models" / "puller.py")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env, text=True)
    rss: dict[int, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=peak_rss, args=(p, rss, stop), daemon=True)
    watcher.start()
    out, _ = p.communicate(json.dumps(req) + "\n")
    dt = time.perf_counter() - t0
    stop.set()
    watcher.join()
    doc = json.loads(out.strip().splitlines()[-1])
    if doc.get("result") != "changed":
        raise SystemExit(f"the pull failed: {doc}")
    return dt, max(rss.values()) if rss else 0, doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1000, help="file size in MB (default 1000)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is not installed")

    from autopod.sim.comfyui_standin import ComfyUIStandin

    tmp = Path(tempfile.mkdtemp(prefix="bench-model-pull-"))
    hub, info = start_hub(tmp / "hub", args.mb)
    volume = tmp / "volume"
    volume.mkdir()
    models = volume / "runpod-slim" / "ComfyUI" / "models"
    comfy = ComfyUIStandin(root=tmp / "comfy", models_dir=models).start()
    try:
        public = info["files"][0]["url"]  # https://huggingface.co/bench/big/resolve/main/model.safetensors
        mirror = public.replace("https://huggingface.co", info["hf"])
        env = {**os.environ, "HF_ENDPOINT": info["hf"], "AUTOPOD_VOLUME_DIR": str(volume)}
        size = info["files"][0]["size"]
        target = models / "checkpoints" / "model.safetensors"
        curl_t, pull_t, peaks, curl_cpu, pull_cpu = [], [], [], [], []
        for i in range(args.runs):
            out = tmp / "curl.out"
            c0, t0 = children_cpu(), time.perf_counter()
            subprocess.run(["curl", "-sS", "-L", "-o", str(out), mirror], check=True)
            curl_t.append(time.perf_counter() - t0)
            curl_cpu.append(children_cpu() - c0)
            assert out.stat().st_size == size
            out.unlink()
            c0 = children_cpu()
            dt, peak, doc = run_puller(public, env, f"127.0.0.1:{comfy.port}")
            pull_cpu.append(children_cpu() - c0)  # the front, and the download it forked and reaped
            assert doc["verified"] and doc["size"] == size and target.stat().st_size == size
            pull_t.append(dt)
            peaks.append(peak)
            target.unlink()
            shutil.rmtree(volume / ".autopod" / "models" / "jobs")
            shutil.rmtree(volume / ".autopod" / "models" / "records")
            print(f"run {i + 1}: curl {size / curl_t[-1] / 1e6:7.1f} MB/s   pull {size / dt / 1e6:7.1f} MB/s   "
                  f"peak RSS {peak / 1e6:.1f} MB", file=sys.stderr)
        best_curl, best_pull = min(curl_t), min(pull_t)
        gb = size / 1e9
        rows = [("curl -o (follows the redirect)", size / best_curl / 1e6, 1.0, min(curl_cpu) / gb),
                ("model pull in the pod (sha256, .part, rename)", size / best_pull / 1e6, best_curl / best_pull,
                 min(pull_cpu) / gb)]
        print(f"\n{args.mb} MB, best of {args.runs}")
        print(f"{'variant':48} {'MB/s':>8} {'vs curl':>8} {'CPU s/GB':>9}")
        for name, mbs, ratio, cpu in rows:
            print(f"{name:48} {mbs:8.1f} {ratio:8.2f} {cpu:9.2f}")
        print(f"peak resident memory of the pod-side processes: {max(peaks) / 1e6:.1f} MB "
              f"(runs: {', '.join(f'{p / 1e6:.1f}' for p in peaks)})")
        ratio = best_curl / best_pull
        print(f"goal >= 0.90 x curl: {'met' if ratio >= 0.9 else 'NOT met'} ({ratio:.2f})")
        return 0 if ratio >= 0.9 else 1
    finally:
        comfy.stop()
        hub.terminate()
        hub.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

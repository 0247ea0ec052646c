"""Model pull throughput: the program that downloads inside a pod against `curl -o` of the same URL.

Run by hand (not part of the test suite):

    .venv/bin/python bench/model_pull.py                 # 1 GB file, 3 rounds
    .venv/bin/python bench/model_pull.py --mb 256 --runs 5
    git show REV:autopod/models/puller.py > /tmp/puller-before.py
    .venv/bin/python bench/model_pull.py --runs 7 --before /tmp/puller-before.py   # an older program joins each round

It starts the simulator's model hub (``python -m autopod.sim.modelhub``, its own process, serving with
sendfile) with one file of N MB behind a Hugging Face-style resolve URL that redirects to its CDN, and a
ComfyUI stand-in whose model folders are on a scratch "volume". Then, interleaved, --runs rounds of:

  a) `curl -sS -L -o FILE URL`: follows the redirect and writes the file; the reference;
  b) `autopod/models/puller.py`, exactly as it runs in a pod (HF_ENDPOINT pointing at the hub): asks
     ComfyUI for the folder, asks the hub what the file is (HEAD), starts the detached download (Range
     ready, sha256 in a second thread, .part then rename after the hash matched) and follows it to the end.

With --before FILE, that older copy of the program runs the same pull in every round too (c).
It prints MB/s for each (best and median of the rounds), the ratios to curl (the goal: at least 0.9), the CPU seconds per GB each used (the
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
import statistics
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


def run_puller(url: str, env: dict, comfy_address: str, program: Path) -> tuple[float, int, dict]:
    req = {"op": "pull", "url": url, "folder": "checkpoints", "mount": "/workspace", "comfy_address": comfy_address}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(program)], stdin=subprocess.PIPE,
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
    ap.add_argument("--before", type=Path, help="an older puller.py to time in the same rounds")
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
        programs = {"pull": ROOT / "autopod" / "models" / "puller.py"}
        if args.before:
            programs["before"] = args.before.resolve()
        times: dict[str, list[float]] = {"curl": [], "curl+sync": [], **{k: [] for k in programs}}
        cpus: dict[str, list[float]] = {k: [] for k in times}
        peaks = []
        for i in range(args.runs):
            out = tmp / "curl.out"
            c0, t0 = children_cpu(), time.perf_counter()
            subprocess.run(["curl", "-sS", "-L", "-o", str(out), mirror], check=True)
            times["curl"].append(time.perf_counter() - t0)
            cpus["curl"].append(children_cpu() - c0)
            assert out.stat().st_size == size
            out.unlink()
            # The same with the file made durable, as the pull makes it before its rename (`curl -o F && sync F`).
            c0, t0 = children_cpu(), time.perf_counter()
            subprocess.run(["curl", "-sS", "-L", "-o", str(out), mirror], check=True)
            subprocess.run(["sync", str(out)], check=True)
            times["curl+sync"].append(time.perf_counter() - t0)
            cpus["curl+sync"].append(children_cpu() - c0)
            out.unlink()
            line = f"run {i + 1}: curl {size / times['curl'][-1] / 1e6:7.1f} MB/s"
            line += f"   curl+sync {size / times['curl+sync'][-1] / 1e6:7.1f} MB/s"
            for key, program in programs.items():
                c0 = children_cpu()
                dt, peak, doc = run_puller(public, env, f"127.0.0.1:{comfy.port}", program)
                cpus[key].append(children_cpu() - c0)  # the front, and the download it forked and reaped
                assert doc["verified"] and doc["size"] == size and target.stat().st_size == size
                times[key].append(dt)
                if key == "pull":
                    peaks.append(peak)
                Path(doc["path"]).unlink()  # the file, in the folder both the pod and the workers read
                target.unlink(missing_ok=True)  # and the link to it in the pod's ComfyUI folder
                shutil.rmtree(volume / ".autopod" / "models" / "jobs")
                shutil.rmtree(volume / ".autopod" / "models" / "records")
                line += f"   {key} {size / dt / 1e6:7.1f} MB/s"
            print(f"{line}   peak RSS {peaks[-1] / 1e6:.1f} MB", file=sys.stderr)
        gb = size / 1e9
        names = {"curl": "curl -o (follows the redirect)", "curl+sync": "curl -o, then sync FILE (made durable)",
                 "pull": "model pull in the pod (sha256, .part, rename)",
                 "before": f"the same, {args.before.name if args.before else ''}"}
        print(f"\n{args.mb} MB, {args.runs} rounds (ratios: curl's time / the variant's, same statistic)")
        print(f"{'variant':48} {'best MB/s':>10} {'vs curl':>8} {'median MB/s':>12} {'vs curl':>8} {'CPU s/GB':>9}")
        for key, ts in times.items():
            best, med = min(ts), statistics.median(ts)
            print(f"{names[key]:48} {size / best / 1e6:10.1f} {min(times['curl']) / best:8.2f} "
                  f"{size / med / 1e6:12.1f} {statistics.median(times['curl']) / med:8.2f} "
                  f"{statistics.median(cpus[key]) / gb:9.2f}")
        print(f"peak resident memory of the pod-side processes: {max(peaks) / 1e6:.1f} MB "
              f"(runs: {', '.join(f'{p / 1e6:.1f}' for p in peaks)})")
        ratio = statistics.median(times["curl"]) / statistics.median(times["pull"])
        durable = statistics.median(times["curl+sync"]) / statistics.median(times["pull"])
        print(f"goal >= 0.90 x curl (medians): {'met' if ratio >= 0.9 else 'NOT met'} ({ratio:.2f}); "
              f"against curl with the file made durable: {durable:.2f}")
        return 0 if ratio >= 0.9 else 1
    finally:
        comfy.stop()
        hub.terminate()
        hub.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

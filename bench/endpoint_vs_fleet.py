"""The same batch on a fleet of pods and on a Serverless endpoint: 48 prompts of 2 s each, in one run.

Starts the simulator in a temporary AUTOPOD_HOME, brings up fleet `bench` (`pod.up --count 8`, the
worker-comfyui image, so autopod keeps its node definitions for the endpoint) and its tunnels, and makes
endpoints with `workers.max` 8 on the same GPU. Then runs, as a user does, each as a fresh process,

    autopod comfy.run --fleet bench sleep.json --sweep 2.steps=...      (48 distinct prompts)
    autopod comfy.run --endpoint bench-warm sleep.json --sweep ...      (cold starts off)
    autopod comfy.run --endpoint bench-cold sleep.json --sweep ...      (cold starts on: the simulator's 2 s)

where each prompt takes a fixed T (the simulator's AutopodSleep node). Reported, all from this one run:

  wall        the whole command (start-up, planning, 48 prompts, outputs on disk)
  ideal       48 * T / 8
  overhead    (wall - ideal) * 8 / 48: what each prompt costs beyond its own T, per pod or worker
  cost        fleet: 8 pods x their $/hr x wall (pods bill while they run);
              endpoint: the sidecars' cost (each job's executionTime x the per-second serverless price; RunPod also
              bills a worker's start and its idle window, which the `billed at most` column bounds: 8 workers x wall)

Goal: the endpoint's wall time within 1.2 x the fleet's with cold starts off.

    python bench/endpoint_vs_fleet.py [--seconds 2] [--prompts 48] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

GPU = "RTX A5000"
IMAGE = "runpod/worker-comfyui:5.8.5-base"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="ComfyUI's time per prompt")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--workers", type=int, default=8, help="fleet members, and the endpoints' workers.max")
    ap.add_argument("--cold-start", type=float, default=2.0, help="a new worker's start in the cold run (s)")
    args = ap.parse_args()
    n = args.workers

    with tempfile.TemporaryDirectory(prefix="autopod-bench-") as tmp:
        root = Path(tmp)
        home = root / "user-home"
        (home / ".ssh").mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")],
                       check=True)
        (root / "inventory.yml").write_text("")
        env = {**os.environ, "AUTOPOD_HOME": str(root / "autopod-home"), "HOME": str(home),
               "AUTOPOD_INVENTORY": str(root / "inventory.yml"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for k in ("RUNPOD_API_KEY", "RUNPOD_API_BASE_URL", "AUTOPOD_RUNPOD_API", "RUNPOD_ENDPOINT_BASE_URL"):
            env.pop(k, None)
        workflow = root / "sleep.json"
        workflow.write_text(json.dumps({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "AutopodSleep", "inputs": {"image": ["1", 0], "seconds": args.seconds, "steps": 1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}}}))

        def autopod(*argv: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
            p = subprocess.run([sys.executable, "-m", "autopod", *argv], env=env, capture_output=True, text=True,
                               cwd=root)
            if p.returncode not in ok:
                sys.exit(f"autopod {' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
            return p

        def sim(settings: dict) -> None:
            s = json.loads((root / "autopod-home" / "sim.json").read_text())
            r = requests.post(s["base_url"] + "/_sim/serverless", json={"settings": settings},
                              headers={"Authorization": f"Bearer {s['api_key']}"}, timeout=10)
            r.raise_for_status()

        first = [1]

        def batch(*target: str, out: str) -> tuple[float, dict]:
            steps = f"2.steps={first[0]}..{first[0] + args.prompts - 1}"  # distinct prompts: nothing cached
            first[0] += args.prompts
            t0 = time.perf_counter()
            p = autopod("comfy.run", *target, str(workflow), "--sweep", steps, "--output-dir", str(root / out),
                        "--json")
            wall = time.perf_counter() - t0
            report = json.loads(p.stdout)
            assert report["counts"] == {"success": args.prompts}, report["counts"]
            return wall, report

        autopod("sim.start", "--comfy-ready-after", "0")
        rows = []
        try:
            autopod("pod.up", "--name", "bench", "--count", str(n), "--gpu", GPU, "--image", IMAGE)
            autopod("tunnel.start", "--fleet", "bench")
            pods = [p for p in json.loads(autopod("pod.list", "--fleet", "bench", "--json").stdout)]
            pod_rate = sum(float(p.get("cost_per_hr") or 0) for p in pods)
            for name in ("bench-warm", "bench-cold"):
                autopod("endpoint.create", "--name", name, "--gpus", GPU, "--workers-max", str(n),
                        "--no-flashboot", "--image", IMAGE)
            print(f"{args.prompts} prompts of {args.seconds:g}s, {n} simulated pods or workers on {GPU}, "
                  f"{os.cpu_count()} CPU cores", file=sys.stderr)

            wall, _ = batch("--fleet", "bench", out="fleet")
            rows.append(("fleet of %d pods" % n, wall, pod_rate * wall / 3600, None))

            for name, cold in (("bench-warm", 0.0), ("bench-cold", args.cold_start)):
                sim({"sls_cold_start_s": cold})
                wall, report = batch("--endpoint", name, out=name)
                sidecars = [json.loads(f.read_text()) for f in (root / name).rglob("*.json")]
                cost = sum(s["cost_usd"] or 0 for s in sidecars)
                price = sidecars[0]["endpoint"]["price_per_s"]
                label = f"endpoint, workers.max {n}, cold starts " + (f"on ({cold:g} s)" if cold else "off")
                rows.append((label, wall, cost, price * n * wall))
        finally:
            autopod("endpoint.kill", "--name", "bench-warm", "--yes", ok=(0, 1, 2))
            autopod("endpoint.kill", "--name", "bench-cold", "--yes", ok=(0, 1, 2))
            autopod("pod.kill", "--fleet", "bench", "--yes", ok=(0, 1))
            autopod("sim.stop")

    ideal = args.prompts * args.seconds / n
    print(f"| run | wall | ideal | overhead per prompt | cost | billed at most |")
    print("|:----|-----:|------:|--------------------:|-----:|---------------:|")
    for label, wall, cost, most in rows:
        print(f"| {label} | {wall:.1f} s | {ideal:.1f} s | {(wall - ideal) * n / args.prompts:.2f} s | "
              f"${cost:.4f} | {'-' if most is None else f'${most:.4f}'} |")
    fleet, warm = rows[0][1], rows[1][1]
    print(f"endpoint (cold starts off) / fleet wall time: {warm / fleet:.2f} (goal: <= 1.2)", file=sys.stderr)
    return 0 if warm <= 1.2 * fleet else 1


if __name__ == "__main__":
    sys.exit(main())

"""How well does `comfy.run --fleet` scale: one batch of 48 prompts over 1, 2, 4 and 8 simulated pods.

Starts the simulator in a temporary AUTOPOD_HOME, brings up fleet `bench` (`pod.up --count 8`) and its
tunnels, then for N = 1, 2, 4, 8 (`pod.up --count N` stops the rest) runs, as a user does,

    autopod comfy.run --fleet bench sleep.json --sweep 2.steps=...   (48 distinct prompts)

where each prompt's ComfyUI takes a fixed time T (the simulator's AutopodSleep node: it sleeps, so the
pods do not compete for this machine's 2 cores). Reported per N, all measured in this one run:

  wall        the whole command, as a fresh process (start-up, planning, 48 prompts, outputs on disk)
  ideal       48 * T / N: every member busy all the time, nothing else
  efficiency  ideal / wall (goal: >= 0.9 at 4 pods, >= 0.8 at 8)
  overhead    (wall - ideal) * N / 48: what each prompt costs beyond its own T, per member

    python bench/fleet_scaling.py [--seconds 2] [--prompts 48]
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

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="ComfyUI's time per prompt")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--sizes", default="1,2,4,8")
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

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
        for k in ("RUNPOD_API_KEY", "RUNPOD_API_BASE_URL", "AUTOPOD_RUNPOD_API"):
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

        autopod("sim.start", "--comfy-ready-after", "0")
        try:
            autopod("pod.up", "--name", "bench", "--count", str(max(sizes)))
            autopod("tunnel.start", "--fleet", "bench")
            print(f"{args.prompts} prompts of {args.seconds:g}s each, fleet of simulated pods, "
                  f"{os.cpu_count()} CPU cores", file=sys.stderr)
            rows = []
            first = 1
            for n in sizes:
                autopod("pod.up", "--name", "bench", "--count", str(n))
                # The running members' tunnels, up before the clock starts (the stopped ones fail: exit 1).
                autopod("tunnel.start", "--fleet", "bench", ok=(0, 1))
                steps = f"2.steps={first}..{first + args.prompts - 1}"  # distinct prompts: nothing cached
                first += args.prompts
                t0 = time.perf_counter()
                p = autopod("comfy.run", "--fleet", "bench", str(workflow), "--sweep", steps,
                            "--output-dir", str(root / f"out-{n}"), "--json")
                wall = time.perf_counter() - t0
                report = json.loads(p.stdout)
                assert report["counts"] == {"success": args.prompts}, report["counts"]
                ideal = args.prompts * args.seconds / n
                rows.append((n, wall, ideal, ideal / wall, (wall - ideal) * n / args.prompts,
                             {m["member"]: m["succeeded"] for m in report["members"]}))
        finally:
            autopod("pod.kill", "--fleet", "bench", "--yes")
            autopod("sim.stop")

    print("| pods | wall | ideal | efficiency | overhead per prompt | prompts per member |")
    print("|-----:|-----:|------:|-----------:|--------------------:|:-------------------|")
    for n, wall, ideal, eff, over, spread in rows:
        per = ", ".join(str(v) for v in spread.values())
        print(f"| {n} | {wall:.1f} s | {ideal:.1f} s | {eff:.2f} | {over:.2f} s | {per} |")
    goals = {4: 0.9, 8: 0.8}
    missed = [n for n, _w, _i, eff, _o, _s in rows if n in goals and eff < goals[n]]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

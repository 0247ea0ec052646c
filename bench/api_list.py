"""How much does `autopod pod.list` cost over the one HTTP request it makes, on each RunPod API?

Starts the RunPod stand-in (GraphQL and REST v2 from one world) with 3 pods, then runs,
interleaved, N times each and per backend:

  A. autopod pod.list                     (AUTOPOD_RUNPOD_API=graphql, then rest)
  B. python -c "import requests; requests.post(URL/graphql, ...)"   (GraphQL: the same query)
     python -c "import requests; requests.get(URL/v2/pods, ...)"    (REST v2: the same request)

and prints the median wall times and the ratio A/B (goal: 2 or less on both). Both pay Python
start-up and the `requests` import; A adds invoke, autopod's settings and the table. Each case
also says whether the command imported the runpod SDK (it must not).

    python bench/api_list.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cli_overhead import autopod_cmd, imported, timed  # noqa: E402

KEY = "bench-key"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()

    from autopod.runpod.api import POD_FIELDS
    from autopod.sim.runpod_standin import RunPodStandin

    results = []
    with tempfile.TemporaryDirectory() as tmp, RunPodStandin(api_key=KEY) as standin:
        with standin.world.lock:
            for i in range(3):
                standin.api.podFindAndDeployOnDemand(None, {"name": f"bench-{i}", "gpuTypeId": "NVIDIA RTX A40",
                                                            "gpuCount": 1, "imageName": "runpod/comfyui:latest",
                                                            "ports": "8188/http,22/tcp", "cloudType": "SECURE"})
        home = Path(tmp) / "home"
        home.mkdir()
        (Path(tmp) / "inv.yml").write_text("")
        base = {**os.environ, "AUTOPOD_HOME": str(home), "HOME": tmp, "AUTOPOD_INVENTORY": str(Path(tmp) / "inv.yml"),
                "RUNPOD_API_KEY": KEY, "RUNPOD_API_BASE_URL": standin.url}
        query = "query myPods {\n  myself {\n    pods {" + POD_FIELDS + "    }\n  }\n}"
        floors = {
            "graphql": ("import json, requests; requests.post(%r, data=json.dumps({'query': %r}), timeout=30, "
                        "headers={'Content-Type': 'application/json', 'Authorization': 'Bearer %s'}).json()"
                        % (standin.url + "/graphql", query, KEY)),
            "rest": ("import requests; requests.get(%r, timeout=30, headers={'Authorization': 'Bearer %s'}).json()"
                     % (standin.url + "/v2/pods", KEY)),
        }
        for backend, floor in floors.items():
            env = {**base, "AUTOPOD_RUNPOD_API": backend}
            a_cmd, b_cmd = [*autopod_cmd(), "pod.list"], [sys.executable, "-c", floor]
            for _ in range(2):  # warm the page cache and .pyc files
                timed(a_cmd, env)
                timed(b_cmd, env)
            a, b = [], []
            for _ in range(args.runs):
                a.append(timed(a_cmd, env))
                b.append(timed(b_cmd, env))
            ma, mb = statistics.median(a), statistics.median(b)
            res = {"backend": backend, "runs": args.runs, "autopod_ms": round(ma * 1000, 1),
                   "python_requests_ms": round(mb * 1000, 1), "ratio": round(ma / mb, 2),
                   "runpod_imported": "runpod" in imported(a_cmd, env)}
            print(f"pod.list on {backend:<8} autopod {res['autopod_ms']:7.1f} ms   python + one request "
                  f"{res['python_requests_ms']:7.1f} ms   ratio {res['ratio']:.2f}   imports runpod: "
                  f"{'yes' if res['runpod_imported'] else 'no'}")
            results.append(res)
    print(json.dumps(results))
    return 0 if all(r["ratio"] <= 2.0 and not r["runpod_imported"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

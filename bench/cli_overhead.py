"""How much does `autopod comfy.status` cost over the HTTP request it makes?

Runs, interleaved, N times each:

  A. autopod comfy.status --no-tunnel        (against a local ComfyUI stand-in)
  B. python -c "import requests; requests.get(URL + '/system_stats')"

and prints the median wall times and the ratio A/B (goal: 1.5 or less). Both
pay Python start-up and the `requests` import; A adds autopod's config and
inventory lookup. A plain `comfy.status` skips invoke (``autopod.launch``); for
reference the bench also times the same task through invoke (what a chain such
as ``autopod tunnel.start comfy.status`` pays; not part of the goal).

With ``--tunnel`` it also measures ``autopod comfy.status --pod gpu`` through a
real SSH tunnel (OpenSSH's sshd on loopback, an inventory host in front of the
stand-in; the tunnel is created once, then reused by every run) against B on
the tunnel's local port. With ``--sim`` it measures the same for a pod of the
offline simulator (no inventory file: the usual RunPod case). With ``--pod P`` it measures your own pod's tunnel
(start it first with ``autopod tunnel.start --pod P``). Each case also says
whether the command imported the RunPod SDK or invoke.

    python bench/cli_overhead.py [--runs 15] [--tunnel] [--pod P]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def autopod_cmd() -> list[str]:
    # `python -m autopod` runs the same entry point as the console script (autopod.launch:main), and does
    # not depend on how old the installed script wrapper is.
    return [sys.executable, "-m", "autopod"]


def timed(cmd: list[str], env: dict[str, str], expect: int = 0) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if p.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    return elapsed


def imported(cmd: list[str], env: dict[str, str]) -> set[str]:
    """Top-level packages the command imports (python -X importtime)."""
    p = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True)
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in p.stderr.splitlines() if "|" in line}


def compare(label: str, a_cmd: list[str], b_cmd: list[str], env: dict[str, str], runs: int) -> dict:
    for _ in range(2):  # warm the page cache and .pyc files
        timed(a_cmd, env)
        timed(b_cmd, env)
    a, b = [], []
    for _ in range(runs):
        a.append(timed(a_cmd, env))
        b.append(timed(b_cmd, env))
    ma, mb = statistics.median(a), statistics.median(b)
    res = {"case": label, "runs": runs, "autopod_ms": round(ma * 1000, 1), "python_requests_ms": round(mb * 1000, 1),
           "ratio": round(ma / mb, 2)}
    mods = imported(a_cmd, env)
    res["runpod_imported"], res["invoke_imported"] = "runpod" in mods, "invoke" in mods
    print(f"{label:<28} autopod {res['autopod_ms']:7.1f} ms   python -c requests {res['python_requests_ms']:7.1f} ms"
          f"   ratio {res['ratio']:.2f}   imports runpod: {'yes' if res['runpod_imported'] else 'no'}, invoke: {'yes' if res['invoke_imported'] else 'no'}")
    return res


def tunnel_case(pod: str, env: dict[str, str], runs: int, label: str) -> dict:
    cmd = [*autopod_cmd(), "comfy.status", "--pod", pod]
    st = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True)  # creates the tunnel if needed
    if st.returncode != 0:
        raise SystemExit(f"comfy.status --pod {pod} is not Ready: {st.stdout or st.stderr}")
    url = json.loads(st.stdout)["url"]
    probe = [sys.executable, "-c", f"import requests; requests.get({url + '/system_stats'!r})"]
    return compare(label, cmd, probe, env, runs)


def loopback_tunnel_case(runs: int) -> dict:
    import yaml

    from autopod.sim.comfyui_standin import ComfyUIStandin
    from autopod.sim.sshd import LocalSSHD, find_sshd

    if not find_sshd():
        raise SystemExit("--tunnel needs OpenSSH's sshd")
    work = Path(tempfile.mkdtemp(prefix="autopod-bench-ssh-"))
    home = work / "home"
    home.mkdir()
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    env = {**os.environ, "AUTOPOD_HOME": str(home), "AUTOPOD_INVENTORY": str(work / "inventory.yml")}
    env.pop("SSH_AUTH_SOCK", None)
    try:
        with ComfyUIStandin() as standin, LocalSSHD(work / "sshd", key.with_suffix(".pub").read_text()) as sshd:
            (work / "inventory.yml").write_text(yaml.safe_dump({"hosts": {"gpu": {
                "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(key),
                "comfy_address": f"127.0.0.1:{standin.port}"}}}))
            try:
                return tunnel_case("gpu", env, runs, "comfy.status --pod (tunnel)")
            finally:
                subprocess.run([*autopod_cmd(), "tunnel.stop-all"], env=env, capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sim_pod_case(runs: int) -> dict:
    """A pod of the offline simulator: real sshd, real tunnel daemon, no inventory (the usual case)."""
    from autopod.sim.sshd import find_sshd

    if not find_sshd():
        raise SystemExit("--sim needs OpenSSH's sshd")
    work = Path(tempfile.mkdtemp(prefix="autopod-bench-sim-"))
    (work / "home" / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "home" / ".ssh" / "id_ed25519")],
                   check=True, stdin=subprocess.DEVNULL)
    env = {**os.environ, "AUTOPOD_HOME": str(work / "autopod"), "HOME": str(work / "home"),
           "AUTOPOD_INVENTORY": str(work / "none.yml")}
    (work / "none.yml").write_text("")
    for k in ("SSH_AUTH_SOCK", "RUNPOD_API_KEY", "RUNPOD_API_BASE_URL"):
        env.pop(k, None)
    try:
        for step in (["sim.start", "--comfy-ready-after", "0"], ["pod.create", "--name", "bench", "--volume-id",
                                                                 "otvpjuryez", "tunnel.start"]):
            p = subprocess.run([*autopod_cmd(), *step], env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"autopod {' '.join(step)} failed: {p.stderr.strip()}")
        return tunnel_case("bench", env, runs, "comfy.status --pod (sim pod)")
    finally:
        subprocess.run([*autopod_cmd(), "sim.stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--pod", help="also measure through the live tunnel of this pod")
    ap.add_argument("--tunnel", action="store_true", help="also measure through a tunnel to a loopback sshd")
    ap.add_argument("--sim", action="store_true", help="also measure a simulated pod's tunnel (no inventory)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = ap.parse_args(argv)

    from autopod.sim.comfyui_standin import ComfyUIStandin

    results = []
    home = Path(tempfile.mkdtemp(prefix="autopod-bench-"))
    try:
        with ComfyUIStandin() as standin:
            (home / "config.yaml").write_text(f"comfy_url: {standin.url}\n")
            env = {**os.environ, "AUTOPOD_HOME": str(home), "AUTOPOD_INVENTORY": str(home / "none.yml")}
            (home / "none.yml").write_text("")
            probe = [sys.executable, "-c", f"import requests; requests.get({standin.url + '/system_stats'!r})"]
            results.append(compare("comfy.status --no-tunnel", [*autopod_cmd(), "comfy.status", "--no-tunnel"],
                                   probe, env, args.runs))
            # The same task through invoke (a chain, or `invoke comfy.status` in a checkout).
            via_invoke = [sys.executable, "-c", "import sys; sys.argv = ['autopod', 'comfy.status', '--no-tunnel']; "
                          "from autopod.cli import main; main()"]
            results.append(compare("(via invoke) comfy.status", via_invoke, probe, env, args.runs))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    if args.tunnel:
        results.append(loopback_tunnel_case(args.runs))
    if args.sim:
        results.append(sim_pod_case(args.runs))
    if args.pod:
        results.append(tunnel_case(args.pod, dict(os.environ), args.runs, f"comfy.status --pod {args.pod}"))

    if args.json:
        print(json.dumps(results, indent=2))
    worst = max(r["ratio"] for r in results if not r["case"].startswith("("))
    print(f"goal: ratio <= 1.5: {'met' if worst <= 1.5 else 'NOT met'} (worst {worst:.2f})")


if __name__ == "__main__":
    main()

"""comfy.run's costs, side by side with the reference in one run, through one autopod tunnel.

Run by hand (not part of the test suite):

    .venv/bin/python bench/comfy_render.py                 # 1024 MB download, 10 single prompts, batch of 20
    .venv/bin/python bench/comfy_render.py --mb 256 --singles 5 --batch 10
    .venv/bin/python bench/comfy_render.py --no-download --before ../old-checkout   # and an older autopod

One process starts a loopback OpenSSH sshd and the simulator's ComfyUI stand-in (its model-free
nodes), puts the stand-in behind the sshd as an inventory host, and starts `autopod tunnel.start`.
Then:

1. Download: a prompt writes an N MB file (AutopodBigFile). `curl -o FILE` fetches it through the
   tunnel (the reference); autopod's downloader (the code comfy.run and comfy.fetch use: a streamed
   GET /view into a file, sha256 on the way) fetches it in this process; and the whole
   `autopod comfy.fetch` command fetches it as a user runs it. All write to the same disk.
   Throughput ratio autopod/curl (goal: at least 0.9), and the peak RSS of each autopod fetch, for
   a small file and the N MB one: it must stay flat, not grow with the file.
2. Per prompt: a tiny workflow (an 8x8 image, saved). The reference is a minimal Python script that
   does what ComfyUI's own script examples do: POST /prompt, wait on the WebSocket, GET the output.
   Both run as fresh processes, alternately; medians of the wall time and of the CPU time each used
   (user and system: on a shared machine it moves less). Then a batch of distinct prompts: one
   `autopod comfy.run --sweep` against the script doing the same prompts in a loop, per prompt.
   With --before DIR, an older autopod checkout runs the same commands in the same rounds, through
   a tunnel its own code started (to the same sshd and stand-in), against the reference script
   through that tunnel: before and after side by side.
Everything stays on 127.0.0.1; AUTOPOD_HOME is a temporary folder. The autopod code is compiled
first (compileall), as an installed package is: with PYTHONDONTWRITEBYTECODE set, every run would
otherwise compile it from source, about 70 ms that no installed autopod pays.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REFERENCE = r'''
import json, sys, urllib.request, uuid
import websocket
host, prompt_file, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
prompts = json.load(open(prompt_file))
client_id = str(uuid.uuid4())
ws = websocket.WebSocket()
ws.connect(f"ws://{host}/ws?clientId={client_id}")
for n, prompt in enumerate(prompts):
    req = urllib.request.Request(f"http://{host}/prompt", data=json.dumps({"prompt": prompt, "client_id": client_id}).encode(),
                                 headers={"Content-Type": "application/json"})
    prompt_id = json.loads(urllib.request.urlopen(req).read())["prompt_id"]
    while True:
        msg = ws.recv()
        if isinstance(msg, str):
            m = json.loads(msg)
            if m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id:
                break
    hist = json.loads(urllib.request.urlopen(f"http://{host}/history/{prompt_id}").read())[prompt_id]
    for node, out in hist["outputs"].items():
        for img in out.get("images", []):
            q = f"filename={img['filename']}&subfolder={img['subfolder']}&type={img['type']}"
            data = urllib.request.urlopen(f"http://{host}/view?{q}").read()
            open(f"{out_dir}/{n}_{img['filename']}", "wb").write(data)
ws.close()
'''

TINY = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}}}


def timed(argv: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS in KiB of the command, the result), the command run as a fresh process. The
    result's ``cpu_s`` is the CPU time (user and system) the command used: on a shared machine it moves
    less than the wall time."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "d = time.perf_counter() - t; r = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(d, r.ru_maxrss, p.returncode, r.ru_utime + r.ru_stime); "
               "sys.stderr.write(p.stderr[-2000:] if p.returncode else '')")
    p = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, env=env, cwd=cwd)
    secs, rss, code, cpu = p.stdout.split()
    if int(code):
        raise SystemExit(f"{' '.join(argv[:6])} failed: {p.stderr}")
    p.cpu_s = float(cpu)  # type: ignore[attr-defined]
    return float(secs), int(rss), p


def warm_server_cpu() -> float:
    """CPU seconds of the commands the warm server has run (its reaped children, /proc/PID/stat's cutime and
    cstime): a warm comfy.run's work is done in a child of the server, not in the process `timed` started."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"autopod.warmstart" not in cmd or os.fsencode(sys.executable) != cmd[0]:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
    return total


def timed_warm(argv: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, int, subprocess.CompletedProcess]:
    """`timed`, with the CPU time of the warm child that ran the command added to the client's."""
    before = warm_server_cpu()
    secs, rss, p = timed(argv, env, cwd)
    p.cpu_s += warm_server_cpu() - before  # type: ignore[attr-defined]
    return secs, rss, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of the big output in MB (default 1024)")
    ap.add_argument("--singles", type=int, default=10, help="single-prompt runs each (default 10)")
    ap.add_argument("--batch", type=int, default=20, help="prompts in the batch comparison (default 20)")
    ap.add_argument("--rounds", type=int, default=5, help="downloads of each kind, median (default 5)")
    ap.add_argument("--no-download", action="store_true", help="skip the download comparison")
    ap.add_argument("--before", type=Path, help="an older autopod checkout to time side by side (per prompt)")
    args = ap.parse_args()

    import shutil

    import requests
    import yaml

    from autopod.sim.sshd import LocalSSHD, find_sshd

    if not find_sshd() or not shutil.which("curl"):
        raise SystemExit("needs OpenSSH's sshd and curl")
    before = args.before.resolve() if args.before else None
    for tree in (ROOT, before):
        if tree is not None:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "autopod")], check=True,
                           stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="autopod-bench-"))
    env = {**os.environ, "AUTOPOD_HOME": str(work / "home"), "AUTOPOD_INVENTORY": str(work / "inv.yml")}
    # The older checkout: its own home (tunnels.json, ledger), code found first from its folder.
    old_env = {**env, "AUTOPOD_HOME": str(work / "home-before"), "PYTHONPATH": str(before)} if before else {}
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    autopod = [sys.executable, "-m", "autopod"]
    results = {}
    # The stand-in in a process of its own, like a pod's ComfyUI: in this process it would share the GIL
    # with the downloader being measured.
    standin = subprocess.Popen([sys.executable, "-m", "autopod.sim.comfyui_standin", "--port", "0", "--sim-nodes",
                                "--root", str(work / "comfyui")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    sport = json.loads(standin.stdout.readline())["port"]
    with LocalSSHD(work / "sshd", key.with_suffix(".pub").read_text()) as sshd:
        (work / "inv.yml").write_text(yaml.safe_dump({"hosts": {"bench": {
            "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(key),
            "comfy_address": f"127.0.0.1:{sport}"}}}))
        start = subprocess.run(autopod + ["tunnel.start", "bench", "--json"], env=env, capture_output=True, text=True)
        if start.returncode:
            raise SystemExit(start.stderr)
        lp = json.loads(start.stdout)["local_port"]
        base = f"http://127.0.0.1:{lp}"
        old_lp = None
        if before:  # the older code's own tunnel daemon, on another port
            start = subprocess.run(autopod + ["tunnel.start", "bench", "--local-port", str(lp + 1000), "--json"],
                                   env=old_env, capture_output=True, text=True, cwd=before)
            if start.returncode:
                raise SystemExit(start.stderr)
            old_lp = json.loads(start.stdout)["local_port"]

        # 1. Download.
        def big(mb: int) -> Path:
            wf = work / f"big{mb}.json"
            wf.write_text(json.dumps({"1": {"class_type": "AutopodBigFile",
                                            "inputs": {"size_mb": mb, "filename_prefix": f"big{mb}"}}}))
            return wf

        def fetch_once(mb: int) -> tuple[float, int]:
            out = work / f"out-{time.monotonic_ns()}"
            sub = subprocess.run(autopod + ["comfy.run", str(big(mb)), "--pod", "bench", "--output-dir", str(out),
                                            "--detach", "--json"], env=env, capture_output=True, text=True)
            batch = json.loads(sub.stdout)["batch"]
            pid = json.loads(sub.stdout)["prompt_ids"][0]
            while not requests.get(f"{base}/history/{pid}", timeout=30).json():
                time.sleep(0.2)
            secs, rss, _ = timed(autopod + ["comfy.fetch", batch, "--json"], env)
            shutil.rmtree(out, ignore_errors=True)
            return secs, rss

        if args.no_download:
            args.rounds = 0
        fetch_once(args.mb if args.rounds else 8)  # writes the file once; later runs are cached by the server
        hist = requests.get(f"http://127.0.0.1:{sport}/history", timeout=30).json()
        item = next(iter(next(iter(hist.values()))["outputs"].values()))["files"][0]
        url = f"{base}/view?filename={item['filename']}&subfolder={item['subfolder']}&type={item['type']}"
        size = args.mb * (1 << 20)
        from autopod.comfy.client import ComfyUIClient
        from autopod.comfy.outputs import save_stream

        def library_download() -> float:
            """The code comfy.run and comfy.fetch use (client.download into save_stream), in this process."""
            t = time.perf_counter()
            with ComfyUIClient(base, timeout=60) as c:
                path, got, _ = save_stream(work / "lib" / "big.bin", lambda f: c.download(item, f))
            secs = time.perf_counter() - t
            assert got == size
            path.unlink()
            return secs

        curl, lib, cmd, rss_big = [], [], [], []
        for n in range(args.rounds):
            dest = work / f"curl-{n}.bin"  # to a file on the same disk, as autopod saves it
            secs, _, _ = timed(["curl", "-s", "-o", str(dest), url], env)
            dest.unlink()
            curl.append(secs)
            lib.append(library_download())
            secs, rss = fetch_once(args.mb)
            cmd.append(secs)
            rss_big.append(rss)
        rss_small = [fetch_once(8)[1] for _ in range(2 if args.rounds else 0)]
        results["download"] = {} if not args.rounds else {
            "mb": args.mb, "rounds": args.rounds, "curl_mb_s": round(size / statistics.median(curl) / 1e6, 1),
            "autopod_mb_s": round(size / statistics.median(lib) / 1e6, 1),
            "ratio": round(statistics.median(curl) / statistics.median(lib), 3),
            "comfy_fetch_command_s": round(statistics.median(cmd), 3),
            "command_ratio": round(statistics.median(curl) / statistics.median(cmd), 3),
            "peak_rss_mib_8mb": round(max(rss_small) / 1024, 1),
            f"peak_rss_mib_{args.mb}mb": round(max(rss_big) / 1024, 1)}

        # 2. Per prompt.
        tiny = work / "tiny.json"
        tiny.write_text(json.dumps(TINY))
        ref_script = work / "reference.py"
        ref_script.write_text(REFERENCE)
        ref_t, ours_t, old_ref_t, old_t, cold_t = [], [], [], [], []
        cpu: dict[int, list[float]] = {i: [] for i in range(5)}  # CPU seconds, in the order of the lists above
        cold_env = {**env, "AUTOPOD_WARM": "0"}  # a fresh interpreter for the whole command, no warm server

        def reference(port: int, tag: str) -> float:
            one = dict(TINY, **{"2": {**TINY["2"], "inputs": {**TINY["2"]["inputs"], "filename_prefix": tag}}})
            pf = work / f"{tag}.json"
            pf.write_text(json.dumps([one]))
            (work / f"out-{tag}").mkdir()
            return timed([sys.executable, str(ref_script), f"127.0.0.1:{port}", str(pf), str(work / f"out-{tag}")],
                         env)

        for n in range(-1, args.singles):  # round -1 warms up: the first run keeps the node definitions
            secs = [reference(lp, f"r{n}"),
                    timed_warm(autopod + ["comfy.run", str(tiny), "--pod", "bench", "--set",
                                          f"2.filename_prefix=a{n}", "--output-dir", str(work / f"ourout{n}")], env)]
            secs += [reference(old_lp, f"q{n}"),
                     timed(autopod + ["comfy.run", str(tiny), "--pod", "bench", "--set",
                                      f"2.filename_prefix=b{n}", "--output-dir", str(work / f"oldout{n}")],
                           old_env, cwd=before)] if before else [None, None]
            secs.append(timed(autopod + ["comfy.run", str(tiny), "--pod", "bench", "--set", f"2.filename_prefix=k{n}",
                                         "--output-dir", str(work / f"coldout{n}")], cold_env))
            if n >= 0:
                for i, (times, t) in enumerate(zip((ref_t, ours_t, old_ref_t, old_t, cold_t), secs)):
                    if t is not None:
                        times.append(t[0])
                        cpu[i].append(t[2].cpu_s)
        results["single_prompt"] = {"reference_s": round(statistics.median(ref_t), 3),
                                    "autopod_s": round(statistics.median(ours_t), 3),
                                    "ratio": round(statistics.median(ours_t) / statistics.median(ref_t), 2),
                                    "reference_cpu_s": round(statistics.median(cpu[0]), 3),
                                    "autopod_cpu_s": round(statistics.median(cpu[1]), 3),
                                    "cpu_ratio": round(statistics.median(cpu[1]) / statistics.median(cpu[0]), 2),
                                    "cold_s": round(statistics.median(cold_t), 3),
                                    "cold_ratio": round(statistics.median(cold_t) / statistics.median(ref_t), 2),
                                    "cold_cpu_s": round(statistics.median(cpu[4]), 3),
                                    "cold_cpu_ratio": round(statistics.median(cpu[4]) / statistics.median(cpu[0]), 2)}
        if before:
            results["single_prompt_before"] = {
                "checkout": str(before), "reference_s": round(statistics.median(old_ref_t), 3),
                "autopod_s": round(statistics.median(old_t), 3),
                "ratio": round(statistics.median(old_t) / statistics.median(old_ref_t), 2),
                "autopod_cpu_s": round(statistics.median(cpu[3]), 3),
                "cpu_ratio": round(statistics.median(cpu[3]) / statistics.median(cpu[2]), 2)}
        prompts = [dict(TINY, **{"2": {**TINY["2"], "inputs": {**TINY["2"]["inputs"], "filename_prefix": f"b{n}"}}})
                   for n in range(args.batch)]
        pf = work / "batch.json"
        pf.write_text(json.dumps(prompts))
        (work / "refbatch").mkdir()
        ref_b = timed([sys.executable, str(ref_script), f"127.0.0.1:{lp}", str(pf), str(work / "refbatch")], env)[0]
        values = ",".join(f"c{n}" for n in range(args.batch))
        ours_b = timed(autopod + ["comfy.run", str(tiny), "--pod", "bench", "--sweep", f"2.filename_prefix={values}",
                                  "--output-dir", str(work / "ourbatch")], env)[0]
        values = ",".join(f"k{n}" for n in range(args.batch))
        cold_b = timed(autopod + ["comfy.run", str(tiny), "--pod", "bench", "--sweep", f"2.filename_prefix={values}",
                                  "--output-dir", str(work / "coldbatch")], cold_env)[0]
        results["batch"] = {"prompts": args.batch, "reference_s_per_prompt": round(ref_b / args.batch, 4),
                            "autopod_s_per_prompt": round(ours_b / args.batch, 4),
                            "ratio": round(ours_b / ref_b, 2), "cold_ratio": round(cold_b / ref_b, 2)}
        subprocess.run(autopod + ["tunnel.stop", "bench"], env=env, capture_output=True)
        if before:
            subprocess.run(autopod + ["tunnel.stop", "bench"], env=old_env, capture_output=True, cwd=before)
    standin.terminate()
    standin.wait(10)
    shutil.rmtree(work, ignore_errors=True)
    d, s, b = results["download"], results["single_prompt"], results["batch"]
    if d:
        print(f"download {d['mb']} MB through the tunnel (median of {d['rounds']}): curl {d['curl_mb_s']} MB/s, "
              f"autopod's downloader {d['autopod_mb_s']} MB/s, ratio {d['ratio']}; the whole `comfy.fetch` command "
              f"{d['comfy_fetch_command_s']} s, ratio {d['command_ratio']}; its peak RSS {d['peak_rss_mib_8mb']} MiB "
              f"for 8 MB, {d[f'peak_rss_mib_{args.mb}mb']} MiB for {d['mb']} MB")
    print(f"one tiny prompt, fresh process each (median of {args.singles}): reference script {s['reference_s']} s, "
          f"autopod comfy.run {s['autopod_s']} s, ratio {s['ratio']}; CPU {s['reference_cpu_s']} s against "
          f"{s['autopod_cpu_s']} s, ratio {s['cpu_ratio']}; with AUTOPOD_WARM=0 {s['cold_s']} s, ratio "
          f"{s['cold_ratio']}, CPU {s['cold_cpu_s']} s, ratio {s['cold_cpu_ratio']}")
    if before:
        o = results["single_prompt_before"]
        print(f"  the same rounds, {before}: reference script through its tunnel {o['reference_s']} s, "
              f"its comfy.run {o['autopod_s']} s, ratio {o['ratio']}; its CPU {o['autopod_cpu_s']} s, "
              f"ratio {o['cpu_ratio']}")
    print(f"batch of {b['prompts']} distinct tiny prompts: reference {b['reference_s_per_prompt']} s/prompt, "
          f"autopod {b['autopod_s_per_prompt']} s/prompt, ratio {b['ratio']}; with AUTOPOD_WARM=0 {b['cold_ratio']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Tunnel throughput: autopod's tunnels against OpenSSH's `ssh -N -L`, in one run, to one sshd.

Run by hand (not part of the test suite):

    .venv/bin/python bench/tunnel_throughput.py            # 300 MB, all backends
    .venv/bin/python bench/tunnel_throughput.py --mb 100 --runs 3

It starts a loopback OpenSSH sshd (autopod.sim.sshd.LocalSSHD) and an HTTP
server that streams N MB from memory behind it, then downloads through:

  a) `ssh -N -L` (OpenSSH client, pinned known_hosts)      -- the reference
  b) the autopod tunnel, sshtunnel backend, with sshtunnel's stock relay
  c) the autopod tunnel, sshtunnel backend (autopod's relay: the default)
  d) the autopod tunnel, openssh backend

and prints MB/s and the ratio to (a), the CPU seconds per GB the tunnel's own
processes used (ssh, or the autopod daemon and its ssh child: a figure that moves
much less than MB/s when other work shares the machine), plus the time from
starting the tunnel (a fresh `ssh -N -L`, or a fresh `autopod tunnel.start`, as a
user runs them, with the host key already pinned) to the first byte of an HTTP
answer through it: the median of --starts starts, and its ratio to ssh's.
Everything stays on 127.0.0.1; AUTOPOD_HOME is a temporary folder.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = memoryview(os.urandom(1 << 20))  # random: nothing along the way can compress it


def http_server(total: int) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            n = total if self.path == "/big" else 16
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            left = n
            while left > 0:
                k = min(left, len(CHUNK))
                self.wfile.write(CHUNK[:k])
                left -= k

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def download(port: int, path: str = "/big") -> tuple[int, float, float]:
    """(bytes, seconds to first byte, total seconds) for one HTTP GET through 127.0.0.1:port."""
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    first = None
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            if first is None:
                first = time.perf_counter() - t0
            got += n
    return got, first or 0.0, time.perf_counter() - t0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (0 for any that is gone)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def tunnel_pids(port: int, env: dict) -> list[int]:
    """The daemon serving 127.0.0.1:port (from `autopod tunnel.list --json`) and its children (ssh)."""
    import psutil

    for entry in autopod("tunnel.list", "--json", env=env):
        if entry.get("local_port") == port and entry.get("pid"):
            try:
                children = psutil.Process(entry["pid"]).children(recursive=True)
            except psutil.Error:
                children = []
            return [entry["pid"]] + [c.pid for c in children]
    raise SystemExit(f"no recorded tunnel on port {port}")


def autopod(*args: str, env: dict) -> Any:
    p = subprocess.run([sys.executable, "-m", "autopod", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    if p.returncode:
        raise SystemExit(f"autopod {' '.join(args)} failed: {p.stderr.strip()}")
    return json.loads(p.stdout) if "--json" in args else {}


def first_byte(port: int, timeout: float = 20) -> None:
    """Until an HTTP answer's first byte comes back through 127.0.0.1:port (polling, as a script would)."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET /small HTTP/1.0\r\nHost: x\r\n\r\n")
                if s.recv(1):
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"no answer through 127.0.0.1:{port}")
        time.sleep(0.005)


def wait_listening(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="download size in MB (default 300)")
    ap.add_argument("--runs", type=int, default=1, help="downloads per variant; the best counts (default 1)")
    ap.add_argument("--starts", type=int, default=5, help="starts per variant; the median counts (default 5)")
    args = ap.parse_args()
    total = args.mb * (1 << 20)

    from autopod.sim.sshd import LocalSSHD, find_sshd, free_port

    if not find_sshd():
        raise SystemExit("OpenSSH sshd not found (apt-get install openssh-server)")
    work = Path(tempfile.mkdtemp(prefix="autopod-bench-"))
    os.environ["AUTOPOD_HOME"] = str(work / "home")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    srv, http_port = http_server(total)
    results: list[tuple[str, float, float, float]] = []
    with LocalSSHD(work / "sshd", (work / "id_ed25519.pub").read_text()) as sshd:
        import yaml

        from autopod.tunnels.hostkeys import known_hosts_path, pin_on_first_use

        inv = work / "inventory.yml"
        inv.write_text(yaml.safe_dump({"hosts": {"bench": {
            "host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(key),
            "comfy_address": f"127.0.0.1:{http_port}"}}}))
        env = {**os.environ, "AUTOPOD_INVENTORY": str(inv)}
        pin_on_first_use("127.0.0.1", sshd.port)

        def best(port: int, pids: list[int]) -> tuple[float, float]:
            """(best MB/s, fewest CPU seconds per GB of the tunnel's processes) over the runs."""
            rates, cpus = [], []
            for _ in range(args.runs):
                c0 = cpu_seconds(pids)
                got, _, secs = download(port)
                assert got >= total, f"short download: {got} of {total} bytes"
                rates.append(got / secs / 1e6)
                cpus.append((cpu_seconds(pids) - c0) / (got / 1e9))
            return max(rates), min(cpus)

        def ssh_cmd(lp: int) -> list[str]:
            return ["ssh", "-N", "-L", f"127.0.0.1:{lp}:127.0.0.1:{http_port}", "-p", str(sshd.port), "-i", str(key),
                    "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", f"UserKnownHostsFile={known_hosts_path()}", "-o", "ExitOnForwardFailure=yes",
                    f"{sshd.user}@127.0.0.1"]

        def start_ssh() -> tuple[Any, int, float]:
            lp = free_port()
            t0 = time.perf_counter()
            proc = subprocess.Popen(ssh_cmd(lp), stdin=subprocess.DEVNULL)
            first_byte(lp)
            return proc, lp, time.perf_counter() - t0

        def start_autopod(backend: str, extra: dict) -> tuple[int, float]:
            lp = free_port()
            t0 = time.perf_counter()
            autopod("tunnel.start", "bench", "--local-port", str(lp), "--backend", backend, env={**env, **extra})
            first_byte(lp)
            return lp, time.perf_counter() - t0

        # a) OpenSSH's own client, the reference.
        starts = []
        for _ in range(args.starts):
            ssh, lp, secs = start_ssh()
            starts.append(secs)
            ssh.terminate()
            ssh.wait()
        ssh, lp, _ = start_ssh()
        try:
            ref, cpu = best(lp, [ssh.pid])
        finally:
            ssh.terminate()
            ssh.wait()
        ref_start = statistics.median(starts)
        results.append(("ssh -N -L (OpenSSH)", ref, cpu, ref_start))

        variants = [
            ("autopod sshtunnel, stock relay", "sshtunnel", {"AUTOPOD_TUNNEL_RELAY": "stock"}),
            ("autopod sshtunnel (default)", "sshtunnel", {}),
            ("autopod openssh backend", "openssh", {}),
        ]
        for label, backend, extra in variants:
            starts = []
            for _ in range(args.starts):
                lp, secs = start_autopod(backend, extra)
                starts.append(secs)
                autopod("tunnel.stop", "bench", env=env)
            lp, _ = start_autopod(backend, extra)
            rate, cpu = best(lp, tunnel_pids(lp, env))
            autopod("tunnel.stop", "bench", env=env)
            results.append((label, rate, cpu, statistics.median(starts)))
    srv.shutdown()

    print(f"\n{args.mb} MB over loopback, best of {args.runs}; starts: median of {args.starts}; "
          f"sshd {sshd.sshd_path}, Python {sys.version.split()[0]}")
    print(f"{'variant':34} {'MB/s':>8} {'vs ssh':>7} {'CPU s/GB':>9} {'start->first byte':>18} {'vs ssh':>7}")
    for label, rate, cpu, tfb in results:
        print(f"{label:34} {rate:8.1f} {rate / ref:7.2f} {cpu:9.2f} {f'{tfb:.3f} s':>18} {tfb / ref_start:7.2f}")
    print(json.dumps({"mb": args.mb, "runs": args.runs, "starts": args.starts, "results": [
        {"variant": label, "mb_per_s": round(rate, 1), "ratio": round(rate / ref, 3), "cpu_s_per_gb": round(cpu, 2),
         "start_to_first_byte_s": round(tfb, 3), "start_ratio": round(tfb / ref_start, 2)}
        for label, rate, cpu, tfb in results]}))


if __name__ == "__main__":
    main()

"""How does loading the inventory scale with its size?

Writes inventories of 10,000 and 30,000 pod specs (one file each, in a temporary
folder), times ``autopod.core.inventory.load_inventory`` on each (best of N runs) and
prints the seconds and the ratio 30k/10k. A loader that is linear in the number
of specs gives a ratio near 3; a quadratic one near 9.

    python bench/inventory_load.py [--runs 3] [--sizes 10000 30000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autopod.core.inventory import load_inventory  # noqa: E402

SPEC = """\
  pod-{i:06d}:
    gpus: [RTX 4090, RTX A6000]
    gpu_count: 1
    cloud_type: SECURE
    disk_gb: 80
    volume_id: vol{i:07d}
    ports: [8188/http, 22/tcp]
    comfy_address: 127.0.0.1:8188
    env:
      HF_HUB_ENABLE_HF_TRANSFER: "1"
      MODEL: flux-{i}
"""


def write_inventory(folder: Path, count: int) -> Path:
    path = folder / f"pods-{count}.yml"
    path.write_text("defaults:\n  timeout: 900\npods:\n" + "".join(SPEC.format(i=i) for i in range(count)))
    return path


def best_of(path: Path, runs: int, count: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        inv = load_inventory(path)
        best = min(best, time.perf_counter() - start)
        assert len(inv.pods) == count, len(inv.pods)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs=2, default=[10_000, 30_000], metavar=("SMALL", "LARGE"))
    args = ap.parse_args()
    small, large = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for count in (small, large):
            path = write_inventory(Path(tmp), count)
            times[count] = best_of(path, args.runs, count)
            print(f"{count:>7,} pod specs ({path.stat().st_size / 1e6:.1f} MB): {times[count]:.3f} s "
                  f"(best of {args.runs})")
    print(f"ratio {large // 1000}k/{small // 1000}k: {times[large] / times[small]:.2f} "
          f"(linear: {large / small:.0f}, quadratic: {(large / small) ** 2:.0f})")


if __name__ == "__main__":
    main()

"""How fast is a contact sheet, and does its memory stay flat as the batch grows?

Makes N PNGs of 1024x1024 (rendered-looking: gradients, a fractal, noise; about 1.3 MB each, saved as
ComfyUI saves, compress level 4) once, in a cache folder, and records them in a throw-away ledger as
one batch of N prompts, one output each, a seed apart (one axis: a grid that wraps at 20 columns).
Then, as fresh processes, alternately:

- ``montage -tile 20x -geometry 256x256+4+4 FILES sheet.png`` (ImageMagick), the reference;
- ``comfy.sheet``'s own function (``autopod.comfy.sheet.make_sheet``) on the batch, thumbnails of 256.

For N = 100 and 400 it prints each one's wall time and peak RSS (the process's ``ru_maxrss``), the
ratio of the sheet's time to montage's, and the ratio of each one's peak RSS at 400 to that at 100. The
sheet widens with the batch up to 20 columns (10 at 100 files, 20 at 400) and holds one band (a row of
cells) at a time, so a sheet of 800 (the 400 files twice, as wide as 400's) is also made, alone: its
peak RSS against 400's is memory against the number of files alone. Goals: at most 1.0x montage's time
at 400 files; peak RSS not growing with the number of files (at most 15 % more at twice the files).

    python bench/contact_sheet.py [--runs 1] [--sizes 100,400] [--wider 800] [--cache DIR] [--sheet-only]

Needs ImageMagick's ``montage`` (``apt-get install imagemagick``); it runs with a policy of its own that lifts
Debian's resource limits (with them it fails at 400 files). Exit 1 when a goal is missed.
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

SIDE = 1024
# Debian's ImageMagick policy (memory 256 MiB, disk 1 GiB) makes montage fail at 400 files of 1024x1024 ("cache
# resources exhausted": it holds every picture); montage gets room instead, as upstream's defaults give it.
MAGICK_POLICY = """<policymap>
  <policy domain="resource" name="memory" value="8GiB"/>
  <policy domain="resource" name="map" value="8GiB"/>
  <policy domain="resource" name="area" value="8GP"/>
  <policy domain="resource" name="disk" value="32GiB"/>
</policymap>
"""
RSS_GROWTH_GOAL = 1.15  # "flat": at most 15 % more at 4x the files (the interpreter's own noise is ~5 %)

# Runs in a fresh interpreter, as `autopod comfy.sheet` would, with AUTOPOD_HOME pointing at the bench's ledger.
SHEET_CHILD = """
import json, sys
from autopod.comfy.ledger import Ledger
from autopod.comfy.sheet import make_sheet
with Ledger.open() as led:
    doc = make_sheet(led, led.batch(sys.argv[1]), thumb=256)
print(json.dumps({"sheet": doc["sheet"], "size": doc["size"], "marked": doc["marked"]}))
"""


def picture(i: int):
    """A 1024x1024 picture that compresses like a render, different for every ``i``."""
    from PIL import Image, ImageChops

    g = Image.linear_gradient("L").resize((SIDE, SIDE)).rotate(i * 37 % 360)
    r = Image.radial_gradient("L").resize((SIDE, SIDE))
    n = Image.effect_noise((SIDE, SIDE), 24 + i % 16)
    m = Image.effect_mandelbrot((SIDE, SIDE), (-2.0 + (i % 7) * 0.05, -1.2, 0.8, 1.2), 40 + i % 60)
    return Image.merge("RGB", (g, ImageChops.multiply(r, m), ImageChops.add(n, g, 2.0)))


def make_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench_{i:05}_.png" for i in range(count)]
    todo = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        print(f"making {len(todo)} PNGs of {SIDE}x{SIDE} in {folder} (kept for later runs)", file=sys.stderr)
    for i, p in todo:
        part = p.with_name(p.name + ".part")
        picture(i).save(part, "PNG", compress_level=4)
        os.replace(part, p)
    return paths


def record_batch(home: Path, files: list[Path], out: Path) -> str:
    """A batch of one prompt per file, a seed apart, every prompt a success with its file saved."""
    os.environ["AUTOPOD_HOME"] = str(home)
    from autopod.comfy.ledger import Ledger

    wf = {"3": {"class_type": "KSampler", "inputs": {"seed": 0}},
          "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench"}}}
    prompts = [{"workflow": "bench.json", "workflow_hash": "0" * 64, "prompt": wf, "prompt_hash": f"{i:064x}",
                "overrides": {}, "seeds": {"3.seed": i}} for i in range(len(files))]
    with Ledger.open() as led:
        batch = led.new_batch("bench", target_id=None, target_name=None, output_dir=str(out), template="",
                              options={}, prompts=prompts)
        now = time.time()
        for i, f in enumerate(files):
            pid = f"bench-{batch.id}-{i}"
            led.update(batch.id, i, prompt_id=pid, status="success", submitted_at=now, started_at=now,
                       finished_at=now + 1, fetched_at=now + 1)
            led.add_output(pid, "9", "images", {"filename": f.name, "subfolder": "", "type": "output"}, str(f),
                           f.stat().st_size, "0" * 64)
        return batch.id


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB, and stdout of one fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, so its own rusage is at hand
        wall = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise SystemExit(f"{argv[0]} failed ({code}): {err.read().decode(errors='replace')[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="rounds; each figure is the median of the rounds")
    ap.add_argument("--sizes", default="100,400", help="file counts, sheet against montage")
    ap.add_argument("--wider", type=int, default=800,
                    help="a sheet-only size as wide as the largest of --sizes (20 columns), the files used again: "
                         "memory against the number of files alone (0: none)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "autopod-bench-sheet")
    ap.add_argument("--sheet-only", action="store_true", help="no montage: the sheet's time and memory alone")
    args = ap.parse_args()
    montage = shutil.which("montage")
    if montage is None and not args.sheet_only:
        print("needs ImageMagick's montage (apt-get install imagemagick)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    lo, hi = min(sizes), max(sizes)
    every = sizes + ([args.wider] if args.wider > hi else [])
    distinct = make_files(args.cache / "png", hi)
    files = [distinct[i % len(distinct)] for i in range(max(every))]
    version = "no montage" if args.sheet_only else \
        subprocess.run([montage, "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{len(distinct)} PNGs of {SIDE}x{SIDE}, {sum(f.stat().st_size for f in distinct) / len(distinct) / 1e6:.2f}"
          f" MB each; {version}", file=sys.stderr)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    widths: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="autopod-bench-sheet-") as tmp:
        work = Path(tmp)
        batches = {n: record_batch(work / "home", files[:n], work / f"out{n}") for n in every}
        env = {**os.environ, "AUTOPOD_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
        (work / "magick").mkdir()
        (work / "magick" / "policy.xml").write_text(MAGICK_POLICY)
        magick_env = {**os.environ, "MAGICK_CONFIGURE_PATH": str(work / "magick")}
        for run in range(args.runs):
            for n in every:
                line = f"round {run + 1}, {n} files:"
                if n in sizes and not args.sheet_only:
                    wall, rss, _ = timed([montage, "-tile", "20x", "-geometry", "256x256+4+4",
                                          *map(str, files[:n]), str(work / f"montage{n}.png")], magick_env)
                    results.setdefault(("montage", n), []).append((wall, rss))
                    line += f" montage {wall:.2f} s, {rss:.0f} MiB;"
                wall, rss, out = timed([sys.executable, "-c", SHEET_CHILD, batches[n]], env)
                results.setdefault(("sheet", n), []).append((wall, rss))
                doc = json.loads(out)
                widths[n] = doc["size"][0]
                if doc["marked"]:
                    raise SystemExit(f"the sheet marked cells: {doc['marked']}")
                print(f"{line} sheet {wall:.2f} s, {rss:.0f} MiB ({doc['size'][0]}x{doc['size'][1]})",
                      file=sys.stderr)

    def med(tool: str, n: int, i: int) -> float | None:
        got = results.get((tool, n))
        return statistics.median(r[i] for r in got) if got else None

    def cell(v: float | None, unit: str, fmt: str = ".2f") -> str:
        return "-" if v is None else f"{v:{fmt}} {unit}".rstrip()

    print("\n| files | montage | sheet | time ratio | montage peak RSS | sheet peak RSS |\n|---:|---:|---:|---:|---:|---:|")
    for n in every:
        m, sh = med("montage", n, 0), med("sheet", n, 0)
        print(f"| {n} | {cell(m, 's')} | {cell(sh, 's')} | {cell(sh / m if m and sh else None, '', '.2f')} | "
              f"{cell(med('montage', n, 1), 'MiB', '.0f')} | {cell(med('sheet', n, 1), 'MiB', '.0f')} |")
    growth = med("sheet", hi, 1) / med("sheet", lo, 1)
    same_width = med("sheet", every[-1], 1) / med("sheet", hi, 1) if every[-1] != hi else None
    print(f"\npeak RSS at {hi} / at {lo} files: sheet {growth:.2f}"
          + ("" if args.sheet_only else f", montage {med('montage', hi, 1) / med('montage', lo, 1):.2f}")
          + (f"; at {every[-1]} / at {hi} (sheets {widths[every[-1]]} and {widths[hi]} px wide): sheet "
             f"{same_width:.2f}" if same_width else ""))
    ok = True
    if not args.sheet_only:
        ratio = med("sheet", hi, 0) / med("montage", hi, 0)
        ok = ratio <= 1.0
        print(f"goal: at most 1.0x montage's time at {hi} files: {ratio:.2f} ({'met' if ok else 'MISSED'})")
    # The sheet grows wider up to 20 columns (10 at 100 files, 20 at 400), and a band (a row of cells) is what it
    # holds: memory against the number of files alone is the same-width comparison.
    flat = same_width if same_width is not None else growth
    print(f"goal: peak RSS not growing with the files (<= {RSS_GROWTH_GOAL}): {flat:.2f} "
          f"({'met' if flat <= RSS_GROWTH_GOAL else 'MISSED'}; medians of {args.runs} round(s))")
    return 0 if ok and flat <= RSS_GROWTH_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())

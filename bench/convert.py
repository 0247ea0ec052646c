"""How long does converting an editor-format workflow take?

Converts the largest template of the official templates package (the most nodes, counting
those inside subgraphs) to its API prompt in this process, as ``comfy.run`` does before it
sends anything, with ComfyUI 0.3.64's recorded /object_info. The reference, in the same run,
is ``json.loads`` of the same file's text: the ratio says how much the conversion costs over
just reading the file. Prints the node count, the best and median wall time of each, and
the ratio of the medians.

    python bench/convert.py [--runs 50] [--template NAME]

Needs the test extra (``pip install -e '.[test]'``: comfyui-workflow-templates).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autopod.comfy.workflow import WorkflowError, convert, parse_workflow  # noqa: E402

OBJECT_INFO = ROOT / "autopod" / "sim" / "data" / "comfyui" / "object_info_full.json.gz"


def node_count(data: dict) -> int:
    subgraphs = (data.get("definitions") or {}).get("subgraphs") or []
    return len(data.get("nodes") or []) + sum(len(s.get("nodes") or []) for s in subgraphs)


def convertible(folder: Path, object_info: dict) -> list[tuple[int, str, Path, dict]]:
    """(node count, name, path, data) of every editor-format template whose classes the server has."""
    sized = []
    for p in folder.glob("*.json"):
        data = json.loads(p.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            continue
        try:
            convert(parse_workflow(data, p), object_info)
        except WorkflowError:  # a class that server lacks: not convertible there
            continue
        sized.append((node_count(data), p.name, p, data))
    return sorted(sized)


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--template", help="a template's file name (default: the largest convertible one)")
    args = ap.parse_args()
    try:
        import comfyui_workflow_templates
    except ImportError:
        print("needs comfyui-workflow-templates (pip install -e '.[test]')", file=sys.stderr)
        return 2
    folder = Path(comfyui_workflow_templates.__file__).parent / "templates"
    with gzip.open(OBJECT_INFO, "rt", encoding="utf-8") as f:
        object_info = json.load(f)
    every = convertible(folder, object_info)
    path = folder / args.template if args.template else every[-1][2]
    text = path.read_text()
    data = json.loads(text)

    def conversion() -> None:
        convert(parse_workflow(data, path), object_info)

    result = convert(parse_workflow(data, path), object_info)
    conv = timed(conversion, args.runs)
    ref = timed(lambda: json.loads(text), args.runs)
    print(f"{path.name}: {node_count(data)} nodes ({len(result.prompt)} in the prompt), {len(text) // 1024} KiB, "
          f"{args.runs} runs, Python {sys.version.split()[0]}")
    print(f"  conversion       best {min(conv) * 1000:7.2f} ms   median {statistics.median(conv) * 1000:7.2f} ms")
    print(f"  json.loads       best {min(ref) * 1000:7.2f} ms   median {statistics.median(ref) * 1000:7.2f} ms")
    print(f"  ratio (medians)  {statistics.median(conv) / statistics.median(ref):.1f}")
    start = time.perf_counter()
    for _, _, p, d in every:
        convert(parse_workflow(d, p), object_info)
    total = time.perf_counter() - start
    print(f"all {len(every)} convertible templates ({sum(c for c, *_ in every)} nodes), one pass: "
          f"{total * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

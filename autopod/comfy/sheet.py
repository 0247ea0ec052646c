"""A batch's contact sheet (``contact.png``) and gallery page (``index.html``), made from the ledger and
the files on disk only: a fleet's batch, a resumed one and one whose pod is gone all work.

Axes are the inputs that vary across the batch's prompts: overrides (sweeps), the seeds ``--repeat``
draws, and the workflow file when several were given. One varying input gives a grid that wraps, each
cell labelled; two an X/Y grid with column and row headers; more, one X/Y grid per Z value. By default
X is the input that changes most often from one prompt to the next (the last ``--sweep``), Y the next;
``--axes`` picks. Prompts that no varying input tells apart (``--repeat`` with fixed seeds) get a
``repeat`` axis of their own.

Memory stays flat as a batch grows: the sheet is drawn and written one band (a row of cells) at a
time, as a PNG streamed to disk, and each file is opened, reduced (``Image.thumbnail``, which uses
``draft`` and ``reduce``) and pasted before the next is read. No full-size image is kept.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import AutopodError, UsageError
from .ledger import FINAL, BatchRow, Ledger, PromptRow

SHEET = "contact.png"
PAGE = "index.html"
THUMB = 256
THUMB_MIN, THUMB_MAX = 16, 2048
MAX_PER_CELL = 16  # files drawn in one cell; the rest are counted
SHORT = 40  # characters of a long value (a prompt) on the sheet; the page has it whole
WRAP_COLUMNS = 20  # a one-axis grid wraps at most this wide (and about square below it)
FFMPEG_TIMEOUT_S = 30

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".apng"}
VIDEO_EXT = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac"}

WHITE, INK, SOFT_INK = (255, 255, 255), (20, 20, 20), (90, 90, 90)
CELL_BG, FAILED_BG, MISSING_BG, MEDIA_BG = (236, 236, 236), (150, 150, 150), (205, 205, 205), (60, 60, 70)
MARK = (200, 30, 30)


# -- what a batch holds ----------------------------------------------------------------------------------


@dataclass
class Axis:
    key: str  # "3.cfg", "workflow", or "#" (repeat)
    label: str  # "KSampler.cfg"
    values: list[str] = field(default_factory=list)  # canonical values, first-seen order
    shown: dict[str, str] = field(default_factory=dict)  # canonical -> display text (whole)
    of_prompt: dict[int, str] = field(default_factory=dict)  # the repeat axis: prompt index -> its value

    def text(self, canon: str, *, short: bool = True) -> str:
        value = self.shown.get(canon, canon)
        return f"{self.label} = {shorten(value) if short else value}"


@dataclass
class Output:
    path: Path
    kind: str  # image, video, audio, other
    exists: bool


@dataclass
class Cell:
    row: PromptRow
    coords: dict[str, str]  # axis key -> canonical value
    params: list[tuple[str, str]]  # (label, whole value) of every override and seed
    outputs: list[Output]
    pod: str | None
    gpu: str | None
    run_s: float | None
    cost: float | None

    @property
    def error_line(self) -> str:
        err = self.row.error or {}
        text = (err.get("summary") or "; ".join(err.get("lines") or [])
                or ("not saved: " + "; ".join(err["fetch"]) if err.get("fetch") else "")
                or (self.row.status if self.row.status != "success" else ""))
        return (str(text).strip().splitlines() or [""])[0]


@dataclass
class Layout:
    x: Axis | None
    y: Axis | None
    z: list[Axis]
    grids: list[tuple[list[tuple[Axis, str]], list[Cell]]]  # (Z values, cells of that grid)


def shorten(value: str, n: int = SHORT) -> str:
    flat = " ".join(str(value).split())
    return flat if len(flat) <= n else flat[: n - 3].rstrip() + "..."


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else _canon(value)


def _node_label(prompt: dict[str, Any], key: str) -> str:
    node_id, _, name = key.rpartition(".")
    node = prompt.get(node_id) if isinstance(prompt, dict) else None
    if not isinstance(node, dict):
        return key
    title = (node.get("_meta") or {}).get("title") or node.get("class_type") or node_id
    return f"{title}.{name}"


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    return ("image" if ext in IMAGE_EXT else "video" if ext in VIDEO_EXT
            else "audio" if ext in AUDIO_EXT else "other")


def _params(row: PromptRow) -> dict[str, Any]:
    return {**row.overrides, **row.seeds}


def find_axes(rows: list[PromptRow]) -> list[Axis]:
    """The inputs whose value differs between prompts, fastest-changing first."""
    keys: list[str] = []
    for r in rows:
        for k in _params(r):
            if k not in keys:
                keys.append(k)
    cols: dict[str, list[tuple[str, str]]] = {}
    for k in keys:
        cols[k] = [((_canon(_params(r)[k]), _shown(_params(r)[k])) if k in _params(r) else ("null", "-"))
                   for r in rows]
    cols["workflow"] = [(_canon(r.workflow), r.workflow) for r in rows]
    names = {r.workflow for r in rows}
    by_name = len({Path(w).name for w in names}) == len(names)  # file names alone tell them apart
    axes = []
    for k, col in cols.items():
        if len({c for c, _ in col}) < 2:
            continue
        label = "workflow" if k == "workflow" else next(
            (_node_label(r.prompt, k) for r in rows if k in _params(r)), k)
        axis = Axis(k, label)
        for canon, shown in col:
            if canon not in axis.shown:
                axis.values.append(canon)
                axis.shown[canon] = Path(shown).name if k == "workflow" and by_name else shown
        axes.append(axis)
    _unique_labels(axes)
    changes = {a.key: sum(1 for i in range(1, len(rows)) if cols[a.key][i][0] != cols[a.key][i - 1][0])
               for a in axes}
    order = {a.key: i for i, a in enumerate(axes)}
    return sorted(axes, key=lambda a: (-changes[a.key], -order[a.key]))


def _unique_labels(axes: list[Axis]) -> None:
    """Two nodes of one title: the label names the node id too (``KSampler#3.cfg``)."""
    seen: dict[str, int] = {}
    for a in axes:
        seen[a.label] = seen.get(a.label, 0) + 1
    for a in axes:
        if seen[a.label] > 1 and "." in a.key:
            node_id, _, name = a.key.rpartition(".")
            a.label = f"{a.label.rpartition('.')[0]}#{node_id}.{name}"


def _repeat_axis(rows: list[PromptRow], axes: list[Axis]) -> Axis | None:
    """Prompts alike in every varying input (``--repeat`` with fixed seeds): a ``repeat`` axis tells them apart."""
    seen: dict[tuple[str, ...], int] = {}
    counts = []
    for r in rows:
        key = tuple(_coord(r, a) for a in axes)
        seen[key] = seen.get(key, 0) + 1
        counts.append(seen[key])
    if max(counts, default=1) < 2:
        return None
    axis = Axis("#", "repeat")
    for n in sorted(set(counts)):
        axis.values.append(str(n))
        axis.shown[str(n)] = str(n)
    axis.of_prompt = {r.idx: str(n) for r, n in zip(rows, counts)}
    return axis


def _coord(row: PromptRow, axis: Axis) -> str:
    if axis.key == "#":
        return axis.of_prompt.get(row.idx, "1")
    if axis.key == "workflow":
        return _canon(row.workflow)
    p = _params(row)
    return _canon(p[axis.key]) if axis.key in p else "null"


def pick_axes(axes: list[Axis], wanted: list[str], batch_id: str) -> list[Axis]:
    """``--axes X[,Y[,Z]]``: each name is an input's label (``KSampler.cfg``), its key (``3.cfg``), the input
    alone when only one node's varies (``cfg``), ``workflow`` or ``repeat``. The varying inputs not named
    join Z (one grid per combination)."""
    def describe() -> str:
        return ", ".join(f"{a.label} ({a.key})" if a.key not in (a.label, "#") else a.label for a in axes)

    if not axes:
        raise UsageError(f"--axes: nothing varies across batch {batch_id}'s prompts")
    if len(wanted) > 3:
        raise UsageError(f"--axes takes at most three names (X,Y,Z), got {len(wanted)}")
    chosen: list[Axis] = []
    for name in wanted:
        n = name.strip().lower()
        hits = [a for a in axes if n in (a.key.lower(), a.label.lower())
                or (a.key == "#" and n in ("#", "repeat"))]
        if not hits:
            hits = [a for a in axes if "." in a.key and a.key.rpartition(".")[2].lower() == n]
        if len(hits) != 1:
            problem = "does not vary" if not hits else "names several inputs"
            raise UsageError(f"--axes: {name!r} {problem} in batch {batch_id}; the inputs that vary: {describe()}")
        if hits[0] in chosen:
            raise UsageError(f"--axes: {name!r} is named twice")
        chosen.append(hits[0])
    return chosen + [a for a in axes if a not in chosen]


def arrange(cells: list[Cell], axes: list[Axis]) -> Layout:
    """X, Y and the Z grids (``axes`` in X, Y, Z... order); a grid per combination of Z values, in order."""
    x = axes[0] if axes else None
    y = axes[1] if len(axes) > 1 else None
    z = axes[2:]
    groups: dict[tuple[str, ...], list[Cell]] = {}
    for c in cells:
        groups.setdefault(tuple(c.coords[a.key] for a in z), []).append(c)
    def rank(combo: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(a.values.index(v) for a, v in zip(z, combo))
    grids = [([(a, v) for a, v in zip(z, combo)], groups[combo]) for combo in sorted(groups, key=rank)]
    return Layout(x, y, z, grids)


# -- reading the batch ----------------------------------------------------------------------------------


def _sidecar(row: PromptRow, outputs: list[Output]) -> dict[str, Any]:
    from .run import _prefix

    name = f"{_prefix(row)}.json"
    for folder in dict.fromkeys(o.path.parent for o in outputs):
        try:
            doc = json.loads((folder / name).read_text(encoding="utf-8"))
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            continue
    return {}


def read_cells(led: Ledger, batch: BatchRow, rows: list[PromptRow]) -> list[Cell]:
    from .run import _pod_facts

    facts: dict[str | None, dict[str, Any]] = {}
    cells = []
    for r in rows:
        saved = sorted(led.saved_outputs(r.prompt_id).values(), key=lambda o: (o["node_id"], o["path"])) \
            if r.prompt_id else []
        outs = [Output(Path(o["path"]), _kind(Path(o["path"])), Path(o["path"]).is_file()) for o in saved]
        side = _sidecar(r, outs)
        pod = side.get("pod") if isinstance(side.get("pod"), dict) else {}
        target = r.target_id or batch.target_id
        if target not in facts:
            facts[target] = _pod_facts(target) if target and not target.startswith("fleet:") else {}
        gpu = pod.get("gpu") or facts[target].get("gpu")
        run_s = (side.get("timings") or {}).get("run_s") if isinstance(side.get("timings"), dict) else None
        if run_s is None and r.started_at and r.finished_at and r.finished_at >= r.started_at:
            run_s = round(r.finished_at - r.started_at, 3)
        cost = side.get("cost_usd")
        rate = pod.get("cost_per_hr") or facts[target].get("cost_per_hr")
        if cost is None and rate is not None and run_s is not None:
            cost = round(rate * run_s / 3600, 6)
        params = [(_node_label(r.prompt, k), _shown(v)) for k, v in _params(r).items()]
        cells.append(Cell(r, {}, params, outs, pod.get("name") or r.target_name or batch.target_name, gpu,
                          run_s, cost if isinstance(cost, (int, float)) else None))
    return cells


# -- the sheet: drawn band by band -------------------------------------------------------------------------


class _Fonts:
    def __init__(self, thumb: int):
        self.size = max(12, round(thumb / 14))
        self.body = font(self.size)
        self.head = font(round(self.size * 1.3))
        self.line = self.size + max(4, self.size // 3)
        self.head_line = round(self.size * 1.3) + max(4, self.size // 3)


_FONTS: dict[int, Any] = {}


def font(size: int) -> Any:
    """Pillow's own TrueType font (Aileron, SIL OFL, in Pillow since 10.1) at ``size`` pixels; DejaVu Sans
    where this Pillow has none."""
    if size in _FONTS:
        return _FONTS[size]
    from PIL import ImageFont

    got: Any = None
    try:
        got = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        got = None
    if not isinstance(got, ImageFont.FreeTypeFont):
        for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
                     "/Library/Fonts/Arial.ttf", "C:\\Windows\\Fonts\\arial.ttf"):
            try:
                got = ImageFont.truetype(path, size)
                break
            except OSError:
                continue
        else:
            raise AutopodError("this Pillow has no TrueType support (FreeType) and no font was found; "
                               "install Pillow from its wheels (pip install -U pillow)")
    _FONTS[size] = got
    return got


def fit(text: str, fnt: Any, width: float) -> str:
    """``text`` cut to ``width`` pixels, with "..." where it was cut."""
    if fnt.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fnt.getlength(text[:mid] + "...") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..."


def wrap(text: str, fnt: Any, width: float, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` pixels (the last one cut)."""
    words, out, cur = str(text).split(), [], ""
    for w in words:
        trial = f"{cur} {w}".strip()
        if fnt.getlength(trial) <= width or not cur:
            cur = trial
        else:
            out.append(cur)
            cur = w
    if cur:
        out.append(cur)
    if len(out) > lines:
        out = out[: lines - 1] + [" ".join(out[lines - 1:])]
    return [fit(s, fnt, width) for s in out]


class _PNGStream:
    """An RGB PNG written as its rows come, so the whole sheet never sits in memory."""

    def __init__(self, f: Any, width: int, height: int):
        self.f, self.width = f, width
        f.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        # Level 3: a 2648x2933 sheet of 100 pictures compressed in 0.48 s to 7795 KiB; level 6 (Pillow's) took
        # 1.16 s for 7760 KiB.
        self.z = zlib.compressobj(3)
        self.pending = bytearray()

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    def band(self, image: Any) -> None:
        # Row by row from one copy of the band's pixels: no second, joined copy of the band.
        raw, stride = memoryview(image.tobytes()), self.width * 3
        for i in range(image.height):
            self.pending += self.z.compress(b"\0")
            self.pending += self.z.compress(raw[i * stride:(i + 1) * stride])
        if len(self.pending) >= 1 << 20:
            self._chunk(b"IDAT", bytes(self.pending))
            self.pending.clear()

    def close(self) -> None:
        self.pending += self.z.flush()
        self._chunk(b"IDAT", bytes(self.pending))
        self._chunk(b"IEND", b"")


@dataclass
class _Geometry:
    thumb: int
    pad: int
    fonts: _Fonts
    captions: int  # text lines under each cell
    row_head: int  # width of the row headers (0 without Y)
    col_head: int  # height of the column headers (0 without X/Y)
    columns: int  # cells a row in a one-axis grid

    @property
    def cell_w(self) -> int:
        return self.thumb

    @property
    def cell_h(self) -> int:
        return self.thumb + self.captions * self.fonts.line

    @property
    def step_x(self) -> int:
        return self.cell_w + self.pad

    @property
    def step_y(self) -> int:
        return self.cell_h + self.pad


class Drawer:
    """Draws the sheet's bands; counts what was marked (failed, missing, damaged, placeholders)."""

    def __init__(self, layout: Layout, cells: list[Cell], thumb: int, *, fleet: bool, title: str):
        self.layout, self.thumb, self.fleet, self.title = layout, thumb, fleet, title
        self.fonts = _Fonts(thumb)
        pad = max(4, thumb // 32)
        captions = (1 if layout.y is None and layout.x is not None else 0) + (1 if fleet else 0)
        row_head = 0
        if layout.y is not None:
            longest = max((self.fonts.body.getlength(layout.y.text(v)) for v in layout.y.values), default=0)
            row_head = int(min(longest, 1.5 * thumb)) + 2 * pad
        col_head = self.fonts.line + pad if layout.y is not None else 0
        biggest = max((len(c) for _, c in layout.grids), default=1)
        # A few cells side by side; more wrap into a grid about as wide as it is high.
        columns = biggest if biggest <= 4 else min(WRAP_COLUMNS, math.ceil(math.sqrt(biggest)))
        self.g = _Geometry(thumb, pad, self.fonts, captions, row_head, col_head, columns)
        self.marked: dict[str, int] = {}
        self.ffmpeg = shutil.which("ffmpeg")
        self.pool: Any = None
        self.ready: dict[tuple[Path, int], Any] = {}  # the pictures of the band being drawn, made ahead

    # -- the plan: each band's height and how to draw it

    def bands(self) -> list[tuple[int, Callable[[Any, Any], None]]]:
        g, lay = self.g, self.layout
        out: list[tuple[int, Callable[[Any, Any], None]]] = [
            (self.fonts.head_line + 2 * g.pad, lambda img, d: d.text((g.pad, g.pad), fit(
                self.title, self.fonts.head, self.width - 2 * g.pad), font=self.fonts.head, fill=INK))]
        for zvals, cells in lay.grids:
            if zvals:
                heading = ", ".join(a.text(v) for a, v in zvals)
                out.append((self.fonts.head_line + g.pad, lambda img, d, h=heading: d.text(
                    (g.pad, g.pad // 2), fit(h, self.fonts.head, self.width - 2 * g.pad), font=self.fonts.head,
                    fill=INK)))
            if lay.y is not None:
                assert lay.x is not None
                out.append((g.col_head, lambda img, d: self._column_heads(d)))
                by = {(c.coords[lay.x.key], c.coords[lay.y.key]): c for c in cells}  # type: ignore[union-attr]
                for yv in lay.y.values:
                    row = [by.get((xv, yv)) for xv in lay.x.values]
                    if any(row):
                        out.append((g.step_y, lambda img, d, yv=yv, row=row: self._xy_row(img, d, yv, row)))
            else:
                if lay.x is not None:
                    cells = sorted(cells, key=lambda c: lay.x.values.index(c.coords[lay.x.key]))  # type: ignore
                for i in range(0, len(cells), g.columns):
                    out.append((g.step_y, lambda img, d, chunk=cells[i:i + g.columns]: self._wrap_row(img, d, chunk)))
        return out

    @property
    def width(self) -> int:
        g, lay = self.g, self.layout
        columns = len(lay.x.values) if lay.y is not None and lay.x is not None else g.columns
        return max(g.pad + g.row_head + columns * g.step_x, 480)

    def write(self, path: Path) -> tuple[int, int]:
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image, ImageDraw

        bands = self.bands()
        height = sum(h for h, _ in bands) + self.g.pad
        width = self.width
        fd, tmp = tempfile.mkstemp(prefix=".contact-", suffix=".png.part", dir=path.parent)
        try:
            # Pillow lets go of the GIL while it decodes and resizes: a band's files are read by a few threads
            # at once. Each holds one file at a time, so memory still does not grow with the batch.
            with os.fdopen(fd, "wb") as f, ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                self.pool = pool
                png = _PNGStream(f, width, height)
                for h, draw in bands:
                    img = Image.new("RGB", (width, h), WHITE)
                    draw(img, ImageDraw.Draw(img))
                    png.band(img)
                    del img
                png.band(Image.new("RGB", (width, self.g.pad), WHITE))
                png.close()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return width, height

    # -- headers and rows

    def _column_heads(self, d: Any) -> None:
        g, x = self.g, self.layout.x
        assert x is not None
        for i, xv in enumerate(x.values):
            left = g.pad + g.row_head + i * g.step_x
            text = fit(x.text(xv), self.fonts.body, g.cell_w)
            w = self.fonts.body.getlength(text)
            d.text((left + (g.cell_w - w) / 2, 0), text, font=self.fonts.body, fill=INK)

    def _prepare(self, cells: list[Cell]) -> None:
        """Read every picture of one band's cells, in parallel, before the band is drawn."""
        wanted = []
        for c in cells:
            if c.row.status != "success":
                continue
            shown = c.outputs[:MAX_PER_CELL]
            if not any(o.exists for o in shown):
                continue
            size = _sub_size(self.g.thumb, len(shown), self.g.pad)
            wanted += [(o, size) for o in shown if o.exists and o.kind in ("image", "video")]
        if self.pool is None or len(wanted) < 2:
            self.ready = {}
            return
        self.ready = dict(zip([(o.path, size) for o, size in wanted],
                              self.pool.map(lambda job: self._picture(*job), wanted)))

    def _picture(self, o: Output, size: int) -> Any:
        if o.kind == "video":
            return self._video_frame(o.path, size) if self.ffmpeg else None
        return self._thumb(o.path, size)

    def _xy_row(self, img: Any, d: Any, yv: str, row: list[Cell | None]) -> None:
        g, y = self.g, self.layout.y
        assert y is not None
        self._prepare([c for c in row if c is not None])
        for n, line in enumerate(wrap(y.text(yv), self.fonts.body, g.row_head - 2 * g.pad, 3)):
            d.text((g.pad, g.thumb // 2 - self.fonts.line + n * self.fonts.line), line, font=self.fonts.body, fill=INK)
        for i, c in enumerate(row):
            if c is not None:
                self._cell(img, d, g.pad + g.row_head + i * g.step_x, 0, c)

    def _wrap_row(self, img: Any, d: Any, chunk: list[Cell]) -> None:
        self._prepare(chunk)
        for i, c in enumerate(chunk):
            self._cell(img, d, self.g.pad + i * self.g.step_x, 0, c)

    # -- a cell

    def _mark(self, what: str) -> None:
        self.marked[what] = self.marked.get(what, 0) + 1

    def _cell(self, img: Any, d: Any, x: int, y: int, c: Cell) -> None:
        g, t = self.g, self.g.thumb
        box = (x, y, x + t - 1, y + t - 1)
        if c.row.status != "success":
            d.rectangle(box, fill=FAILED_BG)
            self._mark("failed" if c.row.status in FINAL else "unfinished")
            head = c.row.status if c.row.status in FINAL else f"{c.row.status} (not finished)"
            self._lines(d, x, y, [head.upper()] + wrap(c.error_line, self.fonts.body, t - 2 * g.pad, 6), INK)
        elif not c.outputs or not any(o.exists for o in c.outputs):
            d.rectangle(box, fill=MISSING_BG, outline=MARK, width=max(2, g.pad // 2))
            self._mark("missing")
            what = "outputs not on disk" if c.outputs else "no outputs recorded"
            self._lines(d, x, y, [what] + [fit(o.path.name, self.fonts.body, t - 2 * g.pad)
                                           for o in c.outputs[:4]], INK)
        else:
            d.rectangle(box, fill=CELL_BG)
            shown = c.outputs[:MAX_PER_CELL]
            k = math.ceil(math.sqrt(len(shown)))
            gap = max(2, g.pad // 2) if k > 1 else 0
            sub = _sub_size(t, len(shown), g.pad)  # the same as (t - (k - 1) * gap) // k
            for i, o in enumerate(shown):
                sx, sy = x + (i % k) * (sub + gap), y + (i // k) * (sub + gap)
                self._file(img, d, sx, sy, sub, o)
            if len(c.outputs) > len(shown):
                more = f"+{len(c.outputs) - len(shown)}"
                d.text((x + t - self.fonts.body.getlength(more) - g.pad, y + t - self.fonts.line), more,
                       font=self.fonts.body, fill=MARK)
        captions = []
        if self.layout.y is None and self.layout.x is not None:
            captions.append(self.layout.x.text(c.coords[self.layout.x.key]))
        if self.fleet:
            captions.append(f"pod {c.pod or '-'}")
        for n, text in enumerate(captions):
            d.text((x, y + t + n * self.fonts.line + 2), fit(text, self.fonts.body, t), font=self.fonts.body,
                   fill=INK if n == 0 else SOFT_INK)

    def _lines(self, d: Any, x: int, y: int, lines: list[str], fill: Any) -> None:
        g = self.g
        for n, line in enumerate(lines[: max(1, (g.thumb - g.pad) // self.fonts.line)]):
            d.text((x + g.pad, y + g.pad + n * self.fonts.line), fit(line, self.fonts.body, g.thumb - 2 * g.pad),
                   font=self.fonts.body, fill=fill)

    def _file(self, img: Any, d: Any, x: int, y: int, size: int, o: Output) -> None:
        if not o.exists:
            self._placeholder(d, x, y, size, "not on disk", o.path.name, MISSING_BG, INK)
            self._mark("missing")
            return
        if o.kind not in ("image", "video"):
            self._placeholder(d, x, y, size, o.kind.upper(), o.path.name, MEDIA_BG, WHITE)
            self._mark("placeholder")
            return
        key = (o.path, size)
        thumb = self.ready.pop(key) if key in self.ready else self._picture(o, size)
        if thumb is None and o.kind == "video":  # no ffmpeg here, or it could not read the file
            self._placeholder(d, x, y, size, "VIDEO", o.path.name, MEDIA_BG, WHITE)
            self._mark("placeholder")
            return
        if thumb is None:
            self._placeholder(d, x, y, size, "DAMAGED", o.path.name, MISSING_BG, MARK)
            self._mark("damaged")
            return
        img.paste(thumb, (x + (size - thumb.width) // 2, y + (size - thumb.height) // 2))
        if o.kind == "video":  # a frame of a video: say so in its corner
            d.rectangle((x, y, x + self.fonts.size * 3, y + self.fonts.line), fill=MEDIA_BG)
            d.text((x + 2, y + 1), "VIDEO", font=self.fonts.body, fill=WHITE)

    def _placeholder(self, d: Any, x: int, y: int, size: int, head: str, name: str, bg: Any, fg: Any) -> None:
        d.rectangle((x, y, x + size - 1, y + size - 1), fill=bg)
        fnt, pad = self.fonts.body, max(2, self.g.pad // 2)
        lines = [head] + wrap(name.replace("_", "_ "), fnt, size - 2 * pad, 3)
        for n, line in enumerate(lines[: max(1, (size - pad) // self.fonts.line)]):
            d.text((x + pad, y + pad + n * self.fonts.line), line.replace("_ ", "_"), font=fnt, fill=fg)

    def _thumb(self, path: Path, size: int) -> Any:
        """The first frame of ``path``, at most ``size`` square, or None when it cannot be read."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                im.seek(0)
                im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
                return _fill(_rgb(im), size)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, MemoryError):
            return None

    def _video_frame(self, path: Path, size: int) -> Any:
        import io

        from PIL import Image

        try:
            got = subprocess.run(
                [str(self.ffmpeg), "-nostdin", "-v", "error", "-i", str(path), "-frames:v", "1", "-vf",
                 f"scale={size}:{size}:force_original_aspect_ratio=decrease", "-f", "image2pipe", "-vcodec", "png",
                 "-"], capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
            if got.returncode != 0 or not got.stdout:
                return None
            with Image.open(io.BytesIO(got.stdout)) as im:
                im.thumbnail((size, size))
                return _fill(_rgb(im), size)
        except (OSError, subprocess.SubprocessError, ValueError, SyntaxError):
            return None


def _sub_size(thumb: int, files: int, pad: int) -> int:
    """The side of each picture when a cell shows ``files`` of them (a square grid in the cell)."""
    k = math.ceil(math.sqrt(max(1, files)))
    gap = max(2, pad // 2) if k > 1 else 0
    return (thumb - (k - 1) * gap) // k


def _fill(im: Any, size: int) -> Any:
    """A picture smaller than its box, scaled up to fill it (the aspect ratio kept)."""
    from PIL import Image

    if max(im.size) >= size:
        return im
    scale = size / max(im.size)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)


def _rgb(im: Any) -> Any:
    """``im`` as RGB; transparency over the cell's grey, as a viewer shows it on a light page."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P", "PA") and ("transparency" in im.info or im.mode.endswith("A")):
        rgba = im.convert("RGBA")
        base = Image.new("RGB", rgba.size, CELL_BG)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return im.convert("RGB")


# -- the page ---------------------------------------------------------------------------------------------


# Nothing on the page runs, and nothing is fetched from anywhere but the files beside it.
CSP = "default-src 'none'; img-src 'self' file:; media-src 'self' file:; style-src 'unsafe-inline'"
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#141414;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}
.totals{margin:0 0 12px;color:#333}.totals b{font-weight:600}
table{border-collapse:collapse}th{font-weight:600;padding:4px 8px;vertical-align:middle;text-align:center}
th[scope=row]{text-align:right;max-width:20em}td{vertical-align:top;padding:4px}
.wrap{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:var(--thumb);font-size:12px}
.media{display:flex;flex-wrap:wrap;gap:2px;background:#ececec;min-height:var(--thumb);align-items:center;
justify-content:center}
.media img,.media video{width:100%;max-height:var(--thumb);object-fit:contain;display:block}
.media>*{flex:0 0 100%;min-width:0;box-sizing:border-box}.many>a:has(img),.many>video{flex:0 0 calc(50% - 1px)}
.many img,.many video{max-height:calc(var(--thumb) / 2)}
.media .file{padding:6px;word-break:break-all}
.failed .media{background:#969696}.missing .media{background:#cdcdcd;outline:3px solid #c81e1e}
.error{padding:6px;margin:0;word-break:break-word}
.label{font-weight:600;margin:4px 0 2px}
dl{margin:4px 0 0;display:grid;grid-template-columns:auto 1fr;gap:0 6px}dt{color:#555}
dd{margin:0;word-break:break-word}
details summary{cursor:pointer;color:#555}
"""


def _rel(path: Path, folder: Path) -> str:
    """``path`` relative to the page, as a URL path: every part percent-encoded (a ``#`` or ``?`` or a quote in
    a file name stays part of the name)."""
    from urllib.parse import quote

    rel = os.path.relpath(path, folder)
    return "/".join(quote(part, safe="") for part in rel.split(os.sep))


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60}h {m % 60}m {sec}s" if m >= 60 else f"{m}m {sec}s"


def _money(c: float | None) -> str:
    return "-" if c is None else f"${c:.4f}"


def page(batch: BatchRow, layout: Layout, cells: list[Cell], folder: Path, sheet_name: str, *, thumb: int,
         fleet: bool) -> str:
    e = html.escape
    ok = sum(1 for c in cells if c.row.status == "success")
    failed = sum(1 for c in cells if c.row.status in FINAL and c.row.status != "success")
    starts = [c.row.submitted_at for c in cells if c.row.submitted_at]
    ends = [c.row.finished_at for c in cells if c.row.finished_at]
    wall = max(ends) - min(starts) if starts and ends and max(ends) >= min(starts) else None
    costs = [c.cost for c in cells if c.cost is not None]
    cost = _money(sum(costs)) if costs else "-"
    if costs and len(costs) < ok:
        cost += f" ({ok - len(costs)} prompt(s) without a price)"
    axes = [("X", layout.x), ("Y", layout.y)] + [("Z", a) for a in layout.z]
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(f'batch {batch.id}: {batch.name}')}</title>",
           f"<style>:root{{--thumb:{thumb}px}}{_CSS}</style></head><body>",
           f"<header><h1>{e(f'batch {batch.id}')} <small>{e(batch.name)}</small></h1>",
           f'<p class="totals"><b>{len(cells)}</b> prompts · <b>{ok}</b> succeeded · <b>{failed}</b> failed'
           f" · wall time <b>{e(_seconds(wall))}</b> · cost <b>{e(cost)}</b>"
           + (f" · {e('pod ' + (batch.target_name or '-'))}" if batch.target_name else "") + "</p>",
           "<p>" + " · ".join(f"{n}: {e(a.label)}" for n, a in axes if a is not None)
           + f' · <a href="{e(_rel(folder / sheet_name, folder))}">contact sheet</a></p></header>']
    for zvals, group in layout.grids:
        out.append("<section>")
        if zvals:
            out.append(f"<h2>{e(', '.join(a.text(v, short=False) for a, v in zvals))}</h2>")
        if layout.y is not None and layout.x is not None:
            by = {(c.coords[layout.x.key], c.coords[layout.y.key]): c for c in group}
            out.append('<table><thead><tr><th></th>' + "".join(
                f'<th scope="col">{e(layout.x.text(v, short=False))}</th>' for v in layout.x.values)
                + "</tr></thead><tbody>")
            for yv in layout.y.values:
                row = [by.get((xv, yv)) for xv in layout.x.values]
                if not any(row):
                    continue
                out.append(f'<tr><th scope="row">{e(layout.y.text(yv, short=False))}</th>' + "".join(
                    f"<td>{_figure(c, layout, folder, fleet)}</td>" if c else "<td></td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        else:
            if layout.x is not None:
                group = sorted(group, key=lambda c: layout.x.values.index(c.coords[layout.x.key]))  # type: ignore
            out.append('<div class="wrap">' + "".join(_figure(c, layout, folder, fleet) for c in group) + "</div>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _figure(c: Cell, layout: Layout, folder: Path, fleet: bool) -> str:
    e = html.escape
    alt = "; ".join(f"{k} = {shorten(v, 200)}" for k, v in c.params) or f"prompt {c.row.idx + 1}"
    status = ("failed" if c.row.status != "success"
              else "missing" if not c.outputs or not any(o.exists for o in c.outputs) else "ok")
    media = []
    if c.row.status != "success":
        media.append(f'<p class="error"><b>{e(c.row.status)}</b>: {e(c.error_line)}</p>')
    elif not c.outputs:
        media.append('<p class="error">no outputs recorded</p>')
    for o in c.outputs if c.row.status == "success" else []:
        href = e(_rel(o.path, folder))
        if not o.exists:
            media.append(f'<p class="file">not on disk: {e(o.path.name)}</p>')
        elif o.kind == "image":
            media.append(f'<a href="{href}"><img src="{href}" alt="{e(alt)}" title="{e(o.path.name)}"></a>')
        elif o.kind == "video":
            media.append(f'<video controls preload="metadata" src="{href}" title="{e(alt)}"></video>')
        elif o.kind == "audio":
            media.append(f'<audio controls preload="none" src="{href}" title="{e(alt)}"></audio>'
                         f'<a class="file" href="{href}">{e(o.path.name)}</a>')
        else:
            media.append(f'<a class="file" href="{href}">{e(o.path.name)}</a>')
    label = ""
    if layout.y is None and layout.x is not None:
        label = f'<p class="label">{e(layout.x.text(c.coords[layout.x.key], short=False))}</p>'
    facts = [(k, v) for k, v in c.params] + [("workflow", c.row.workflow)]
    facts.append(("pod", (c.pod or "-") + (f" ({c.gpu})" if c.gpu else "")))
    facts.append(("time", _seconds(c.run_s)))
    facts.append(("cost", _money(c.cost)))
    facts.append(("prompt", f"#{c.row.idx + 1} {c.row.prompt_id or ''}".strip()))
    if c.row.status != "success" and (c.row.error or {}):
        whole = "\n".join(str(x) for x in ((c.row.error or {}).get("lines") or [c.error_line]))
        facts.append(("error", whole))
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(shorten(v, 120)) if len(v) > 120 else e(v)}</dd>" for k, v in facts)
    long_values = [(k, v) for k, v in c.params if len(v) > 120]
    more = "".join(f"<details><summary>{e(k)} (whole)</summary><p>{e(v)}</p></details>" for k, v in long_values)
    many = " many" if len(c.outputs) > 1 else ""
    return (f'<figure class="{status}"><div class="media{many}">{"".join(media)}</div><figcaption>{label}'
            f"<dl>{dl}</dl>{more}</figcaption></figure>")


# -- the entry point ----------------------------------------------------------------------------------------


def folder_for(batch: BatchRow) -> Path:
    """Where the sheet and page of a batch go: ``OUTPUT_DIR/BATCH/`` (with ``--output {batch}/...`` that is
    the folder of the outputs themselves)."""
    return Path(batch.output_dir) / batch.id


def existing(batch: BatchRow) -> dict[str, str]:
    """The sheet and page of a batch, those that exist."""
    folder = folder_for(batch)
    return {k: str(folder / n) for k, n in (("sheet", SHEET), ("page", PAGE)) if (folder / n).is_file()}


def parse_axes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in str(text).split(",")]
    if not names or any(not n for n in names):
        raise UsageError(f"--axes takes X[,Y[,Z]]: input names separated by commas, got {text!r}")
    return names


def make_sheet(led: Ledger, batch: BatchRow, rows: list[PromptRow] | None = None, *,
               axes: list[str] | None = None, thumb: int = THUMB) -> dict[str, Any]:
    """Write ``contact.png`` and ``index.html`` for ``batch`` (see :func:`folder_for`). Returns a document:
    ``changed``, ``sheet``, ``page`` (paths), ``axes``, ``cells``, ``size``, ``marked`` and ``msg``.
    A batch of one prompt has nothing to compare: nothing is written (``changed`` false)."""
    if not THUMB_MIN <= thumb <= THUMB_MAX:
        raise UsageError(f"--thumb must be between {THUMB_MIN} and {THUMB_MAX} pixels, got {thumb}")
    rows = rows if rows is not None else led.prompts(batch.id)
    if len(rows) < 2:
        return {"changed": False, "batch": batch.id, "sheet": None, "page": None, "cells": len(rows),
                "msg": f"batch {batch.id} has {len(rows)} prompt(s): nothing to compare"}
    found = find_axes(rows)
    repeat = _repeat_axis(rows, found)
    if repeat is not None:
        found.append(repeat)
    chosen = pick_axes(found, axes, batch.id) if axes else found
    cells = read_cells(led, batch, rows)
    for c in cells:
        c.coords = {a.key: _coord(c.row, a) for a in chosen}
    layout = arrange(cells, chosen)
    fleet = (batch.target_id or "").startswith("fleet:") or len({r.target_id for r in rows if r.target_id}) > 1
    folder = folder_for(batch)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AutopodError(f"cannot make {folder} for the contact sheet: {e.strerror or e}") from None
    recorded = {str(o.path.resolve()) for c in cells for o in c.outputs}
    sheet_path = folder / SHEET
    if str(sheet_path.resolve()) in recorded:  # an output of the batch already has that name: keep it
        sheet_path = folder / "contact-sheet.png"
    ok = sum(1 for r in rows if r.status == "success")
    title = (f"batch {batch.id}: {ok} of {len(rows)} succeeded" + (f" on {batch.target_name}" if batch.target_name
                                                                     else "") + f" ({batch.name})")
    drawer = Drawer(layout, cells, thumb, fleet=fleet, title=title)
    t0 = time.monotonic()
    page_path = folder / PAGE
    try:
        size = drawer.write(sheet_path)
        text = page(batch, layout, cells, folder, sheet_path.name, thumb=thumb, fleet=fleet)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".html.part", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, page_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:  # a full disk, a folder made read-only: said in one line, nothing half-written left
        raise AutopodError(f"cannot write the contact sheet and page in {folder}: {e.strerror or e}") from None
    names = {"x": layout.x.label if layout.x else None, "y": layout.y.label if layout.y else None,
             "z": [a.label for a in layout.z]}
    marked = ", ".join(f"{n} {k}" for k, n in sorted(drawer.marked.items()))
    return {"changed": True, "batch": batch.id, "sheet": str(sheet_path), "page": str(page_path), "axes": names,
            "cells": len(cells), "grids": len(layout.grids), "size": list(size), "marked": drawer.marked,
            "seconds": round(time.monotonic() - t0, 3),
            "msg": f"contact sheet {sheet_path} ({size[0]}x{size[1]}, {len(cells)} prompts"
                   + (f"; marked: {marked}" if marked else "") + f") and page {page_path}"}


def sheet(ref: str | None = None, *, axes: list[str] | None = None, thumb: int = THUMB) -> dict[str, Any]:
    """``comfy.sheet``: the sheet and page of batch ``ref`` (an id, a unique start of one, or one of its
    prompt ids; the newest batch without one)."""
    with Ledger.open() as led:
        if ref is None:
            batch = led.latest_batch()
            if batch is None:
                raise UsageError("the ledger has no batch yet; render with `autopod comfy.run WORKFLOW`")
        else:
            batch, _ = led.find(ref)
        return make_sheet(led, batch, axes=axes, thumb=thumb)


def refresh(batch_id: str, *, note: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """After a batch of two or more prompts: its sheet and page, made again. A sheet that cannot be made
    does not fail the run: it is said (``note``) and ``None`` returned."""
    import logging

    try:
        got = sheet(batch_id)
    except Exception as e:  # the batch's outputs are saved whatever happens here; Ctrl-C still stops it
        logging.getLogger(__name__).debug("no contact sheet", exc_info=True)
        if note is not None:
            why = str(e) if isinstance(e, (AutopodError, OSError)) else f"internal error: {type(e).__name__}: {e}"
            note(f"no contact sheet for batch {batch_id}: {why}")
        return None
    return got if got.get("changed") else None


def add_to_report(report: dict[str, Any], *, note: Callable[[str], None] | None = None,
                  only_when_done: bool = False) -> None:
    """A batch's report (``comfy.run``, ``comfy.watch``, ``comfy.fetch``) of two or more prompts: the sheet
    and page made again and named in it (``sheet``, and the message). ``only_when_done``: not while a prompt
    is still unfinished."""
    prompts = report.get("prompts") or []
    if len(prompts) < 2 or not report.get("batch"):
        return
    if only_when_done and any(p.get("status") not in FINAL for p in prompts):
        return
    got = refresh(report["batch"], note=note)
    if got is not None:
        report["sheet"] = {"sheet": got["sheet"], "page": got["page"]}
        report["msg"] = f"{report.get('msg') or ''}; contact sheet {got['sheet']}".lstrip("; ")

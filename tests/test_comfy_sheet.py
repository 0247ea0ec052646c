"""comfy.sheet and the sheet comfy.run writes: contact.png checked by its pixels, index.html by its text,
against batches the simulator's ComfyUI really renders (``--no-tunnel`` to a stand-in on loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from autopod.sim.comfyui_standin import ComfyUIStandin

RED, GREEN, BLUE = 0xFF0000, 0x00FF00, 0x0000FF
CELL_BG = (236, 236, 236)
RGB = {RED: (255, 0, 0), GREEN: (0, 255, 0), BLUE: (0, 0, 255)}


def canvas(color: int = RED, width: int = 64, height: int = 32, batch: int = 1) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                         "color": color}, "_meta": {"title": "Canvas"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sheet"}}}


@pytest.fixture
def comfy(autopod_home, tmp_path):
    """The simulator's ComfyUI (its own nodes too), reached as comfy_url with --no-tunnel."""
    with ComfyUIStandin(sim_nodes=True, root=tmp_path / "comfyui") as s:
        autopod_home.mkdir(parents=True, exist_ok=True)
        (autopod_home / "config.yaml").write_text(f"comfy_url: {s.url}\n")
        yield s


def render(cli, tmp_path: Path, workflow: dict, *argv: str, name: str = "wf.json"):
    wf = tmp_path / name
    wf.write_text(json.dumps(workflow))
    r = cli("comfy.run", str(wf), "--no-tunnel", "--output-dir", str(tmp_path / "out"), *argv, "--json")
    return r


def boxes(img: Image.Image, rgb: tuple[int, int, int]) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of the separate regions of exactly ``rgb`` (cells are apart, so a scan by columns and
    rows of the colour's mask splits them)."""
    w, h = img.size
    px = img.load()
    cols = [x for x in range(w) if any(px[x, y] == rgb for y in range(0, h, 2))]
    found = []
    for xs in _runs(cols):
        rows = [y for y in range(h) if any(px[x, y] == rgb for x in range(xs[0], xs[-1] + 1, 2))]
        for ys in _runs(rows):
            found.append((xs[0], ys[0], xs[-1], ys[-1]))
    return found


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for v in values:
        if runs and v <= runs[-1][-1] + 2:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def cell_of(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """The top left corner of the grey cell a picture sits in."""
    px = img.load()
    x, y = box[0], (box[1] + box[3]) // 2
    while x > 0 and px[x - 1, y] == CELL_BG:
        x -= 1
    top = box[1]
    while top > 0 and px[box[0], top - 1] == CELL_BG:
        top -= 1
    return top, x


def dark(img: Image.Image, box: tuple[int, int, int, int]) -> int:
    return sum(1 for p in img.crop(box).get_flattened_data() if sum(p) < 200)


def test_a_3x2_sweep_puts_each_colour_at_its_row_and_column(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN},{BLUE}",
               "--sweep", "Canvas.width=64,128")
    assert r.code == 0, r.err
    doc = r.json
    sheet = Path(doc["sheet"]["sheet"])
    assert sheet.name == "contact.png" and sheet.parent == tmp_path / "out" / doc["batch"]
    assert Path(doc["sheet"]["page"]).name == "index.html" and str(sheet) in doc["msg"]
    img = Image.open(sheet).convert("RGB")
    # width changes every prompt: X; the colour every second: Y (rows red, green, blue; columns 64, 128)
    found = {c: boxes(img, RGB[c]) for c in RGB}
    assert all(len(v) == 2 for v in found.values()), found
    for c in RGB:
        narrow, wide = sorted(found[c])
        # aspect ratio kept: 64x32 and 128x32 fill a 256 box at their own ratio, in the 64 then the 128 column
        assert abs((narrow[2] - narrow[0] + 1) / (narrow[3] - narrow[1] + 1) - 2) < 0.1
        assert abs((wide[2] - wide[0] + 1) / (wide[3] - wide[1] + 1) - 4) < 0.1
    tops = [min(b[1] for b in found[c]) for c in (RED, GREEN, BLUE)]
    assert tops == sorted(tops) and len(set(tops)) == 3  # one row per colour, in sweep order
    cx = lambda b: (b[0] + b[2]) // 2
    for c in RGB:  # the 64 column left of the 128 one, the same columns in every row
        a, b = sorted(found[c], key=cx)
        assert b[0] > a[2]
    centres = {tuple(sorted(cx(b) for b in found[c])) for c in RGB}
    assert len(centres) == 1, centres
    # column headers above the first row and row headers left of the first column: dark text
    top, left = cell_of(img, min(found[RED], key=cx))
    assert dark(img, (left, top - 30, img.width - 1, top - 1)) > 50
    assert dark(img, (0, top, left - 1, top + 256)) > 50
    assert dark(img, (left, top, left + 255, top + 255)) == 0  # no text over the pictures


def test_one_axis_wraps_and_labels_each_cell(comfy, cli, tmp_path):
    five = [RED, GREEN, BLUE, 0xFFFF00, 0xFF00FF]
    r = render(cli, tmp_path, canvas(width=32, height=32), "--sweep", "Canvas.color=" + ",".join(map(str, five)))
    assert r.code == 0, r.err
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    assert doc["axes"] == {"x": "Canvas.color", "y": None, "z": []} and doc["cells"] == 5
    img = Image.open(doc["sheet"]).convert("RGB")
    found = [boxes(img, ((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in five]
    assert all(len(b) == 1 for b in found), found
    (a, b, c, d, e) = (f[0] for f in found)
    # five cells wrap into rows of three, in the sweep's order
    assert a[1] == b[1] == c[1] < d[1] == e[1] and a[0] < b[0] < c[0] and d[0] == a[0] and e[0] == b[0]
    for box in (a, b, c, d, e):  # each cell's label is written under it
        assert dark(img, (box[0], box[3] + 1, box[2], box[3] + 28)) > 30


def test_bad_axes_and_thumb_exit_2(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--sweep", "Canvas.width=8,16")
    batch = r.json["batch"]
    bad = cli("comfy.sheet", batch, "--axes", "Canvas.height", "--json")
    assert bad.code == 2 and "Canvas.color" in bad.json["msg"] and "Canvas.width" in bad.json["msg"]
    for thumb in ("0", "-5", "nan", "big"):
        assert cli("comfy.sheet", batch, "--thumb", thumb).code == 2
    assert cli("comfy.sheet", "nope-batch").code == 2
    ok = cli("comfy.sheet", batch, "--axes", "color,width", "--thumb", "64", "--json")
    assert ok.code == 0 and ok.json["axes"] == {"x": "Canvas.color", "y": "Canvas.width", "z": []}

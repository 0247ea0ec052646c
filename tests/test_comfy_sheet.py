"""comfy.sheet and the sheet comfy.run writes: contact.png checked by its pixels, index.html by its text,
against batches the simulator's ComfyUI really renders (``--no-tunnel`` to a stand-in on loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from autopod.comfy.ledger import Ledger

RED, GREEN, BLUE = 0xFF0000, 0x00FF00, 0x0000FF
CELL_BG, FAILED_BG, MISSING_BG = (236, 236, 236), (150, 150, 150), (205, 205, 205)
RGB = {RED: (255, 0, 0), GREEN: (0, 255, 0), BLUE: (0, 0, 255)}


def canvas(color: int = RED, width: int = 64, height: int = 32, batch: int = 1) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                         "color": color}, "_meta": {"title": "Canvas"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "sheet"}}}


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


def dark(img: Image.Image, box: tuple[int, int, int, int], limit: int = 200) -> int:
    return sum(1 for p in img.crop(box).get_flattened_data() if sum(p) < limit)


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


def rgb(c: int) -> tuple[int, int, int]:
    return ((c >> 16) & 255, (c >> 8) & 255, c & 255)


def test_three_axes_make_one_grid_per_z_value(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", "Canvas.height=16,32", "--sweep", f"Canvas.color={RED},{GREEN}",
               "--sweep", "Canvas.width=32,64")
    assert r.code == 0, r.err
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    assert doc["axes"] == {"x": "Canvas.width", "y": "Canvas.color", "z": ["Canvas.height"]} and doc["grids"] == 2
    img = Image.open(doc["sheet"]).convert("RGB")
    reds, greens = sorted(boxes(img, RGB[RED])), sorted(boxes(img, RGB[GREEN]))
    assert len(reds) == len(greens) == 4
    # Each grid: red row above green row; the height 16 grid above the height 32 one (32 is less wide)
    by_top = sorted(reds + greens, key=lambda b: b[1])
    colours = [img.getpixel((b[0], b[1])) for b in by_top]
    assert colours == [RGB[RED]] * 2 + [RGB[GREEN]] * 2 + [RGB[RED]] * 2 + [RGB[GREEN]] * 2
    first, second = by_top[:4], by_top[4:]
    ratio = lambda b: (b[2] - b[0] + 1) / (b[3] - b[1] + 1)
    assert sorted(round(ratio(b)) for b in first) == [2, 2, 4, 4]  # 32x16 and 64x16
    assert sorted(round(ratio(b)) for b in second) == [1, 1, 2, 2]  # 32x32 and 64x32
    # a heading names each grid's Z value above it, in the band between the grids
    top2, _ = cell_of(img, second[0])
    assert dark(img, (0, top2 - 75, img.width // 2, top2 - 35)) > 50
    # --axes puts the height on X instead; the colour becomes Z
    doc = cli("comfy.sheet", r.json["batch"], "--axes", "height,width", "--json").json
    assert doc["axes"] == {"x": "Canvas.height", "y": "Canvas.width", "z": ["Canvas.color"]} and doc["grids"] == 2


def test_failed_prompt_is_a_grey_cell_with_its_error(comfy, cli, tmp_path):
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(canvas(GREEN)))
    failing = canvas(RED)
    failing["3"] = {"class_type": "AutopodFail", "inputs": {"image": ["1", 0], "message": "boom: out of memory"}}
    failing["2"]["inputs"]["images"] = ["3", 0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(failing))
    r = cli("comfy.run", str(ok), str(bad), "--no-tunnel", "--output-dir", str(tmp_path / "out"), "--json")
    assert r.code == 1 and r.json["sheet"]["sheet"], r.err  # a failed batch still gets its sheet
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    assert doc["axes"]["x"] == "workflow" and doc["marked"] == {"failed": 1}
    img = Image.open(doc["sheet"]).convert("RGB")
    (green,) = boxes(img, RGB[GREEN])
    (grey,) = [b for b in boxes(img, FAILED_BG) if b[2] - b[0] > 200 and b[3] - b[1] > 200]
    assert grey[0] > green[2] and dark(img, grey) > 100  # its error written in it
    html = Path(doc["page"]).read_text()
    assert "boom: out of memory" in html and "ok.json" in html and "bad.json" in html
    assert "<b>2</b> prompts · <b>1</b> succeeded · <b>1</b> failed · wall time <b>" in html


def test_missing_and_damaged_outputs_are_marked_never_a_traceback(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN},{BLUE}")
    _, green, blue = (p["outputs"][0] for p in r.json["prompts"])
    Path(green).unlink()
    data = Path(blue).read_bytes()
    Path(blue).write_bytes(data[: len(data) // 2])  # truncated
    doc = cli("comfy.sheet", r.json["batch"], "--json")
    assert doc.code == 0 and "Traceback" not in doc.err
    doc = doc.json
    assert doc["marked"] == {"missing": 1, "damaged": 1}
    img = Image.open(doc["sheet"]).convert("RGB")
    assert boxes(img, RGB[RED]) and not boxes(img, RGB[GREEN]) and not boxes(img, RGB[BLUE])
    assert len([b for b in boxes(img, MISSING_BG) if b[2] - b[0] > 200 and b[3] - b[1] > 200]) == 2
    html = Path(doc["page"]).read_text()
    assert f"not on disk: {Path(green).name}" in html


def test_a_batch_of_one_has_nothing_to_compare_and_no_sheet_skips(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas())
    assert r.code == 0 and "sheet" not in r.json
    doc = cli("comfy.sheet", r.json["batch"], "--json")
    assert doc.code == 0 and doc.json["status"] == "ok" and "nothing to compare" in doc.json["msg"]
    assert not (tmp_path / "out" / r.json["batch"]).exists()
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--no-sheet")
    assert r.code == 0 and "sheet" not in r.json and not (tmp_path / "out" / r.json["batch"]).exists()
    # comfy.jobs names the sheet and page once they exist
    made = cli("comfy.sheet", r.json["batch"], "--json").json
    jobs = cli("comfy.jobs", r.json["batch"], "--json").json
    assert jobs["sheet"] == {"sheet": made["sheet"], "page": made["page"]}
    text = cli("comfy.jobs", r.json["batch"]).out
    assert f"contact sheet: {made['sheet']}" in text and f"gallery page: {made['page']}" in text


def test_several_files_per_prompt_animations_video_and_audio(comfy, cli, tmp_path, monkeypatch):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": RED},
                "_meta": {"title": "Canvas"}},
          "2": {"class_type": "AutopodSaveGIF", "inputs": {"images": ["1", 0], "filename_prefix": "anim",
                                                           "frame_rate": 8.0}},
          "3": {"class_type": "AutopodSaveVideo", "inputs": {"images": ["1", 0], "filename_prefix": "clip",
                                                             "frame_rate": 8.0}},
          "4": {"class_type": "AutopodSaveAudio", "inputs": {"filename_prefix": "tone", "seconds": 0.05,
                                                             "frequency": 440.0, "sample_rate": 8000}}}
    monkeypatch.setenv("PATH", str(tmp_path / "no-ffmpeg"))
    r = render(cli, tmp_path, wf, "--sweep", f"Canvas.color={RED},{GREEN}")
    assert r.code == 0, r.err
    kinds = sorted(Path(p).suffix for p in r.json["prompts"][0]["outputs"])
    assert kinds == [".avi", ".gif", ".wav"], kinds
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    # per prompt: the GIF's first frame drawn; the video (no ffmpeg here) and the audio as placeholders
    assert doc["marked"] == {"placeholder": 4}
    img = Image.open(doc["sheet"]).convert("RGB")
    assert len(boxes(img, RGB[RED])) == len(boxes(img, RGB[GREEN])) == 1
    html = Path(doc["page"]).read_text()
    assert html.count("<video ") == 2 and html.count("<audio ") == 2
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ffmpeg").symlink_to(ffmpeg)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    assert doc["marked"] == {"placeholder": 2}  # the video's first frame is drawn now; audio stays a placeholder


def test_a_fleet_batch_names_the_pod_of_each_cell(comfy, cli, tmp_path, autopod_home):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--no-sheet")
    with Ledger.open() as led:  # as comfy.run --fleet records it: the fleet, and the member of each prompt
        led.db.execute("UPDATE batches SET target_id = 'fleet:farm', target_name = 'farm' WHERE id = ?",
                       (r.json["batch"],))
        for i, member in enumerate(("farm-1", "farm-2")):
            led.update(r.json["batch"], i, target_id=f"pod{i}", target_name=member)
    for i, side in enumerate(sorted((tmp_path / "out" / "wf").glob("wf-*.json"))):  # what each member's run wrote
        meta = json.loads(side.read_text())
        meta["pod"].update(gpu=f"GPU {i}", cost_per_hr=0.69)
        meta["cost_usd"] = 0.0125 * (i + 1)
        side.write_text(json.dumps(meta))
    doc = cli("comfy.sheet", r.json["batch"], "--json").json
    html = Path(doc["page"]).read_text()
    assert "<dt>pod</dt><dd>farm-1 (GPU 0)</dd>" in html and "<dt>pod</dt><dd>farm-2 (GPU 1)</dd>" in html
    assert "<dd>$0.0125</dd>" in html and "<dd>$0.0250</dd>" in html and "cost <b>$0.0375</b>" in html
    img = Image.open(doc["sheet"]).convert("RGB")
    top, left = cell_of(img, boxes(img, RGB[RED])[0])
    # under the cell: the value label, then the pod's name
    assert dark(img, (left, top + 256, left + 255, top + 280)) > 30
    assert dark(img, (left, top + 282, left + 255, top + 306), limit=300) > 30  # in grey


@pytest.mark.parametrize("finish", [["comfy.watch"], ["comfy.run", "--resume"], ["comfy.fetch"]])
def test_watch_resume_and_fetch_make_the_sheet_when_the_batch_ends(comfy, cli, tmp_path, finish):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--detach")
    assert r.code == 0 and "sheet" not in r.json, r.err
    batch = r.json["batch"]
    assert not (tmp_path / "out" / batch).exists()
    if finish == ["comfy.fetch"]:  # fetch takes what has finished: wait for the server to finish both
        import time

        import requests

        deadline = time.monotonic() + 20
        while len(requests.get(comfy.url + "/history", timeout=5).json()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    done = cli(*finish, batch, "--no-tunnel", "--json")
    assert done.code == 0, done.err
    sheet = Path(done.json["sheet"]["sheet"])
    assert sheet == tmp_path / "out" / batch / "contact.png" and str(sheet) in done.json["msg"]
    img = Image.open(sheet).convert("RGB")
    assert boxes(img, RGB[RED]) and boxes(img, RGB[GREEN])


def test_long_values_are_shortened_on_the_sheet_and_whole_on_the_page(comfy, cli, tmp_path, monkeypatch):
    long = "a castle on a hill at dusk, volumetric light, oil painting, highly detailed, by nobody in particular"
    values = tmp_path / "prefixes.txt"
    values.write_text(f"{long}\nshort\n")
    r = render(cli, tmp_path, canvas(), "--sweep", f"2.filename_prefix=@{values}", "--no-sheet")
    assert r.code == 0, r.err
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    doc = cli("comfy.sheet", r.json["batch"], "--open", "--json")
    assert doc.code == 0, doc.err
    assert opened == [Path(doc.json["page"]).as_uri()]
    html = Path(doc.json["page"]).read_text()
    assert f'<p class="label">Save Image.filename_prefix = {long}</p>' in html
    # the sheet's label is the value's start (and then cut to the cell's width when drawn)
    from autopod.comfy.sheet import find_axes

    with Ledger.open() as led:
        (axis,) = find_axes(led.prompts(r.json["batch"]))
    assert axis.text(axis.values[0]) == "Save Image.filename_prefix = a castle on a hill at dusk, volumetri..."
    assert axis.text(axis.values[0], short=False) == f"Save Image.filename_prefix = {long}"


def test_a_sheet_that_cannot_be_written_is_one_line_exit_1(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--no-sheet")
    (tmp_path / "out" / r.json["batch"]).write_text("a file where the folder would go")
    got = cli("comfy.sheet", r.json["batch"])
    assert got.code == 1 and got.err.startswith("error: cannot make ") and "Traceback" not in got.err


def test_axes_are_checked(comfy, cli, tmp_path):
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}", "--repeat", "2", "--no-sheet")
    batch = r.json["batch"]
    doc = cli("comfy.sheet", batch, "--json").json  # a fixed seed repeated: a repeat axis tells them apart
    assert doc["axes"] == {"x": "Canvas.color", "y": "repeat", "z": []}
    for axes, words in (("color,color", "named twice"), ("a,b,c,d", "at most three"), ("color,,repeat", "X[,Y[,Z]]"),
                        ("seed", "vary: Canvas.color (1.color), repeat")):
        got = cli("comfy.sheet", batch, "--axes", axes, "--json")
        assert got.code == 2 and words in got.json["msg"], (axes, got.json["msg"])
    assert cli("comfy.sheet", batch, "--axes", "repeat,Canvas.color", "--json").json["axes"]["x"] == "repeat"


def test_first_frames_and_formats_from_files_on_disk(tmp_path):
    """A batch recorded in the ledger with files of every kind, no server: animated WebP and GIF show their
    first frame, a JPEG is read reduced, transparency lies on the cell's grey, other files are named."""
    files = tmp_path / "files"
    files.mkdir()
    red, green = Image.new("RGB", (300, 200), RGB[RED]), Image.new("RGB", (300, 200), RGB[GREEN])
    red.save(files / "anim.webp", save_all=True, append_images=[green], duration=100, lossless=True)
    red.save(files / "anim.gif", save_all=True, append_images=[green], duration=100)
    Image.new("RGB", (2048, 1024), RGB[BLUE]).save(files / "big.jpg", quality=95)
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    clear.save(files / "clear.png")
    (files / "notes.txt").write_text("not a picture")
    names = ["anim.webp", "anim.gif", "big.jpg", "clear.png", "notes.txt"]
    with Ledger.open() as led:
        prompts = [{"workflow": "w.json", "workflow_hash": "h", "prompt_hash": f"p{i}", "overrides": {},
                    "prompt": {"3": {"class_type": "KSampler", "inputs": {}}}, "seeds": {"3.seed": i}}
                   for i in range(len(names))]
        batch = led.new_batch("formats", target_id=None, target_name=None, output_dir=str(tmp_path / "out"),
                              template="{filename}", options={}, prompts=prompts)
        for i, name in enumerate(names):
            led.update(batch.id, i, prompt_id=f"p-{i}", status="success")
            led.add_output(f"p-{i}", "9", "images", {"filename": name}, str(files / name), 1, "x")
        from autopod.comfy.sheet import make_sheet

        doc = make_sheet(led, batch, thumb=128)
    assert doc["axes"] == {"x": "KSampler.seed", "y": None, "z": []} and doc["marked"] == {"placeholder": 1}
    img = Image.open(doc["sheet"]).convert("RGB")
    assert len(boxes(img, RGB[RED])) == 2 and not boxes(img, RGB[GREEN])  # first frames only
    blue = sum(1 for p in img.get_flattened_data() if p[2] > 240 and p[0] < 16 and p[1] < 16)  # JPEG: near blue
    assert abs(blue - 128 * 64) < 128 * 64 * 0.05  # 2048x1024 at a longest side of 128
    assert len([b for b in boxes(img, CELL_BG) if b[2] - b[0] >= 127 and b[3] - b[1] >= 127]) >= 1  # the clear one
    assert "notes.txt" in Path(doc["page"]).read_text()


def test_a_sheet_that_fails_never_fails_the_run(comfy, cli, tmp_path, monkeypatch):
    from autopod.comfy import sheet

    def broken(*a, **k):
        raise ValueError("a bug in drawing")

    monkeypatch.setattr(sheet.Drawer, "write", broken)
    r = render(cli, tmp_path, canvas(), "--sweep", f"Canvas.color={RED},{GREEN}")
    assert r.code == 0 and "sheet" not in r.json and r.json["counts"] == {"success": 2}
    assert "no contact sheet for batch" in r.err and "internal error: ValueError: a bug in drawing" in r.err

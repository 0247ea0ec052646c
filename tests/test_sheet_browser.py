"""The gallery page (index.html) of a batch the simulator rendered, opened from file:// in headless Chromium:
every picture loads, every axis value shows, nothing is fetched from anywhere else, no file name runs script."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from browser import start_chromium, wait_for
from PIL import Image

from autopod.comfy.ledger import Ledger

pytestmark = pytest.mark.browser

# Workflow and output file names a page must show as text, never as markup, and link to intact.
ODD_WORKFLOW = "<img src=x onerror=\"document.title='pwned'\">.json"
ODD_FILE = "odd \"<u>x<u>\" #1 ?&%41 '.png"


def canvas(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1,
                                                         "color": color}, "_meta": {"title": "Canvas"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "page"}}}


def test_the_gallery_page_in_a_real_browser(comfy, cli, tmp_path):
    plain, odd = tmp_path / "plain.json", tmp_path / ODD_WORKFLOW
    plain.write_text(json.dumps(canvas(0x3366CC)))
    odd.write_text(json.dumps(canvas(0xCC6633)))
    r = cli("comfy.run", str(plain), str(odd), "--sweep", "Canvas.width=48,96", "--sweep", "Canvas.height=32,64,80",
            "--no-tunnel", "--output-dir", str(tmp_path / "out"), "--no-sheet", "--json")
    assert r.code == 0, r.err
    batch = r.json["batch"]
    # One output renamed as another template or a person might have named it, and recorded so.
    first = Path(r.json["prompts"][0]["outputs"][0])
    renamed = first.with_name(ODD_FILE)
    first.rename(renamed)
    with Ledger.open() as led:
        led.db.execute("UPDATE outputs SET path = ? WHERE path = ?", (str(renamed), str(first)))
    doc = cli("comfy.sheet", batch, "--thumb", "96", "--json")
    assert doc.code == 0, doc.err
    doc = doc.json
    assert doc["axes"] == {"x": "Canvas.height", "y": "Canvas.width", "z": ["workflow"]} and doc["cells"] == 12
    page = Path(doc["page"])
    text = page.read_text()
    assert "<u>" not in text and "onerror=\"" not in text and "&lt;img src=x onerror=" in text

    driver = start_chromium(tmp_path / "profile", network_log=True)
    try:
        driver.get_log("performance")  # what the browser's own start page fetched
        driver.get(page.as_uri())
        wait_for(driver, "document.readyState === 'complete'", what="the page")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(images) == 12 and all(done and width > 0 for _, done, width in images), images
        assert any("%3Cu%3Ex%3Cu%3E" in src and "%231" in src and "%3F" in src for src, _, _ in images)
        body = driver.execute_script("return document.body.innerText")
        for value in ("Canvas.width = 48", "Canvas.width = 96", "Canvas.height = 32", "Canvas.height = 64",
                      "Canvas.height = 80", "workflow = plain.json", f"workflow = {ODD_WORKFLOW}"):
            assert value in body, value
        assert driver.title.startswith(f"batch {batch}") and driver.title != "pwned"
        assert driver.execute_script("return document.querySelectorAll('u, script').length") == 0
        sent = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in sent if m["method"] == "Network.requestWillBeSent"
                and m["params"].get("documentURL", "").startswith("file://")]  # the page's, not the browser's own
        assert len(urls) >= 13 and all(u.startswith("file://") for u in urls), [u for u in urls
                                                                             if not u.startswith("file:")]
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        colours = shot.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20 and max(n for n, _ in colours) < shot.width * shot.height * 0.95
        # the page survives its folder being moved: the outputs go with it, the links are relative
        moved = tmp_path / "elsewhere"
        (tmp_path / "out").rename(moved)
        driver.get((moved / batch / "index.html").as_uri())
        wait_for(driver, "document.readyState === 'complete'", what="the moved page")
        assert driver.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 0)")
    finally:
        driver.quit()

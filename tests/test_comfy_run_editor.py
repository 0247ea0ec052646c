"""comfy.run with files the editor saved: what --dry-run prints, what it says on stderr, how overrides reach nodes
inside a subgraph, and how errors name them. Against the executing ComfyUI stand-in (comfy_url, no tunnel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from autopod.sim.comfyui_standin import ComfyUIStandin
from workflow_fixtures import DATA

SOFTEN = "5b0f1c9e-3a47-4d2e-9c61-7e2f8a4b1d30"


@pytest.fixture
def standin(autopod_home):
    with ComfyUIStandin(sim_nodes=True, root=autopod_home / "comfyui") as s:
        autopod_home.mkdir(parents=True, exist_ok=True)
        (autopod_home / "config.yaml").write_text(f"comfy_url: {s.url}\n")
        yield s


def posts(standin) -> int:
    return sum(1 for m, path in standin.requests if m == "POST" and path in ("/prompt", "/api/prompt"))


def run(cli, tmp_path, *argv):
    return cli("comfy.run", *argv, "--no-tunnel", "--output-dir", str(tmp_path / "out"))


def blur(tmp_path: Path, change=None) -> Path:
    data = json.loads((DATA / "subgraph_blur.json").read_text())
    if change:
        change(data)
    p = tmp_path / "soften.json"
    p.write_text(json.dumps(data))
    return p


def test_dry_run_json_prints_the_prompt_the_editor_sends_and_notes_go_to_stderr(standin, cli, tmp_path):
    data = json.loads((DATA / "image_pipeline.json").read_text())
    next(n for n in data["nodes"] if n["id"] == 8)["widgets_values"] = []  # SaveImage "Result": no value saved
    wf = tmp_path / "pipeline.json"
    wf.write_text(json.dumps(data))
    r = run(cli, tmp_path, str(wf), "--dry-run", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # exactly one document on stdout: the prompt as it would be sent
    expected = json.loads((DATA / "image_pipeline.api.json").read_text())
    expected["8"]["inputs"]["filename_prefix"] = "ComfyUI"  # the default, as the editor fills it in
    assert doc == expected
    assert f"{wf}: node 8 (SaveImage \"Result\"): took the default of filename_prefix='ComfyUI' (the file saved " \
           "0 value(s) for 1 widget(s))" in r.err
    assert posts(standin) == 0


def test_overrides_reach_nodes_inside_a_subgraph_by_id_title_and_class(standin, cli, tmp_path):
    r = run(cli, tmp_path, str(blur(tmp_path)), "--set", "10:5.sigma=2.5", "--set", "Blur.blur_radius=4",
            "--set", "ImageScale.width=640", "--sweep", "10:6.height=100,200", "--dry-run", "--json")
    assert r.code == 0, r.err
    prompts = json.loads(r.out)  # two prompts: a list
    assert [p["10:5"]["inputs"]["sigma"] for p in prompts] == [2.5, 2.5]
    assert [p["10:5"]["inputs"]["blur_radius"] for p in prompts] == [4, 4]
    assert [(p["10:6"]["inputs"]["width"], p["10:6"]["inputs"]["height"]) for p in prompts] == [(640, 100),
                                                                                                 (640, 200)]


def test_an_input_file_reaches_a_loader_inside_a_subgraph(standin, cli, tmp_path):
    def loader_inside(data):
        sg = data["definitions"]["subgraphs"][0]
        sg["nodes"].append({"id": 8, "type": "LoadImage", "mode": 0, "order": 3, "title": "Mask source",
                            "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []},
                                                      {"name": "MASK", "type": "MASK", "links": []}],
                            "widgets_values": ["example.png", "image"]})
        sg["nodes"].append({"id": 9, "type": "PreviewImage", "mode": 0, "order": 4,
                            "inputs": [{"name": "images", "type": "IMAGE", "link": 20}], "outputs": []})
        sg["nodes"][-2]["outputs"][0]["links"] = [20]
        sg["links"].append({"id": 20, "origin_id": 8, "origin_slot": 0, "target_id": 9, "target_slot": 0,
                            "type": "IMAGE"})

    png = tmp_path / "cat.png"
    Image.new("RGB", (2, 2), (255, 0, 0)).save(png)
    for ref in ("10:8", "Mask source", "LoadImage"):
        r = run(cli, tmp_path, str(blur(tmp_path, loader_inside)), "--input", f"{ref}=" + str(png), "--dry-run",
                "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["10:8"]["inputs"]["image"] == "cat.png", ref


def test_a_subgraph_workflow_runs_and_errors_name_the_node_with_its_subgraph(standin, cli, tmp_path, monkeypatch):
    from autopod.comfy.progress import Progress

    shown = []
    original = Progress.node
    monkeypatch.setattr(Progress, "node", lambda self, *a, **kw: shown.append((*a, kw)) or original(self, *a, **kw))
    r = run(cli, tmp_path, str(blur(tmp_path)), "--json")
    assert r.code == 0, r.err
    (p,) = r.json["prompts"]
    assert p["status"] == "success" and len(p["outputs"]) == 1
    # The progress names the running node with its subgraph, as the editor shows it.
    assert ("10:5", "ImageBlur", "Blur", {"where": "subgraph 'Soften'"}) in shown
    assert ("3", "SaveImage", "Save Image", {"where": None}) in shown

    def failing_inside(data):
        sg = data["definitions"]["subgraphs"][0]
        node = next(n for n in sg["nodes"] if n["id"] == 6)
        node.update(type="AutopodFail", title="Breaks", widgets_values=["boom"])
    r = run(cli, tmp_path, str(blur(tmp_path, failing_inside)), "--json")
    assert r.code == 1
    (p,) = r.json["prompts"]
    assert p["error"].startswith("node 10:6 (AutopodFail in subgraph 'Soften'): RuntimeError: boom"), p["error"]

    def refused_inside(data):  # the server refuses a value: node_errors name the node with its subgraph
        next(n for n in data["nodes"] if n["id"] == 10)["widgets_values"] = [99]  # blur_radius max is 31
    r = run(cli, tmp_path, str(blur(tmp_path, refused_inside)))
    assert r.code == 1
    assert "node 10:5 (ImageBlur, 'Blur' in subgraph 'Soften') input blur_radius: Value 99 bigger than max of 31" \
        in r.err, r.err

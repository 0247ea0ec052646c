"""The real ComfyUI editor, served by the simulator's ComfyUI, in headless Chromium.

One browser and one stand-in for the module; the editor loads once, then every check runs scripts in it:
- it opens as it does on a real ComfyUI 0.3.64 (the recorded boot: calls, statuses, no error shown);
- it is the oracle for autopod's editor-to-API conversion: the official templates, and variations made with the
  editor's own graph API (bypass, mute, widget values, reroutes, primitives, subgraphs), each compared with what
  ``app.graphToPrompt()`` sends;
- a person queues a model-free graph from it with the Run button and the simulated pod runs it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from browser import require_browser, run_async, start_chromium, wait_for
from comfy_fixtures import wait_until
from conftest import IN_CI

from autopod.comfy.workflow import WorkflowError, parse_workflow, to_api
from autopod.sim.comfyui import editor
from autopod.sim.comfyui_standin import DATA_DIR, ComfyUIStandin

pytestmark = pytest.mark.browser

ORACLE_JS = (Path(__file__).parent / "editor_oracle.js").read_text()
BOOT = json.loads((DATA_DIR / "frontend_boot.json").read_text())
EDITOR_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# A run converts every 8th template and 6 variations per kind and base graph in the live editor (about 5 s each
# on two cores). AUTOPOD_EDITOR_ORACLE=all takes all 159 templates and all 465 variations (about 35 s and 12 s);
# the conversion tests check all 154 recorded templates against the recording of this same editor.
EVERYTHING = os.environ.get("AUTOPOD_EDITOR_ORACLE") == "all"
SAMPLE_EVERY = 1 if EVERYTHING else 8
# Templates chosen for what they hold, on top of the sample.
NAMED = ("default.json", "depth_t2i_adapter.json", "api_openai_chat.json", "image2image.json",
         "sdxl_simple_example.json", "hidream_e1_1.json")


@dataclass
class Page:
    driver: Any
    standin: ComfyUIStandin
    object_info: dict
    boot_log: list


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    require_browser()
    if editor.static_root() is None:
        reason = f"the editor is not installed (pip install '{editor.PACKAGE}=={editor.VERSION}', part of [test])"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("editor")
    with ComfyUIStandin(sim_nodes=True, root=tmp / "comfyui") as s:
        driver = start_chromium(tmp / "profile", network_log=True)
        try:
            driver.set_script_timeout(300)
            driver.get(s.url + "/")
            wait_for(driver, "!!(window.app && window.app.graph && window.LiteGraph)", what="the editor")
            # the recorded calls, some of which come just after the graph exists
            calls = {c["path"].split("?")[0].removeprefix("/api") or "/" for c in BOOT["api_calls"]}
            wait_until(lambda: calls <= {p for _, p in s.requests}, what="the editor's calls as it opens")
            boot_log = driver.get_log("performance")
            driver.execute_script(ORACLE_JS)
            object_info = requests.get(s.url + "/api/object_info", timeout=10).json()
            yield Page(driver, s, object_info, boot_log)
        finally:
            driver.quit()


# -- the editor opens ------------------------------------------------------------------------------------

def _responses(log: list, origin: str) -> dict[str, tuple[int, str]]:
    """URL path (with query) -> (status, mime) of every response the page got from ``origin`` (DevTools log)."""
    out = {}
    for entry in log:
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.responseReceived":
            r = msg["params"]["response"]
            if r["url"].startswith(origin + "/"):
                out[r["url"][len(origin):]] = (r["status"], r["mimeType"])
    return out


def test_the_editor_opens_as_on_a_fresh_comfyui(page, tmp_path):
    seen = _responses(page.boot_log, page.standin.url)
    for call in BOOT["api_calls"]:  # the 13 calls of the recording, answered alike
        assert call["path"] in seen, f"the editor did not ask for {call['path']}"
        status, mime = seen[call["path"]]
        assert status == call["status"], call["path"]
        if call["mime"]:
            assert mime == call["mime"], call["path"]
    api = {c["path"] for c in BOOT["api_calls"]}
    static = {p: st for p, (st, _) in seen.items() if p not in api and not p.startswith("/ws")}
    assert {p for p, st in static.items() if st != 200} == {f["path"] for f in BOOT["static_files"]["not_200"]}
    assert len(static) >= BOOT["static_files"]["count"] * 0.9  # the recording: 459 files
    shot = tmp_path / "editor.png"
    page.driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20000  # a drawn canvas, not a blank page
    shown = "return document.querySelectorAll('.p-dialog, .p-toast-message-error').length"
    assert page.driver.execute_script(shown) == 0  # no error dialog or toast
    assert page.driver.execute_script("return app.graph.nodes.length") == 7  # ComfyUI's default graph


# -- the conversion oracle: templates ------------------------------------------------------------------

def _templates_dir() -> Path | None:
    try:
        import comfyui_workflow_templates
    except ImportError:
        return None
    return Path(comfyui_workflow_templates.__file__).parent / "templates"


def _convertible(wf: dict, object_info: dict) -> bool:
    """Every node class is one the server has (or the editor's own); so the 154 of the recording."""
    subgraphs = (wf.get("definitions") or {}).get("subgraphs") or []
    ids = {sg.get("id") for sg in subgraphs}
    known = set(object_info) | EDITOR_ONLY | ids
    return all(n.get("type") in known for g in [wf, *subgraphs] for n in g.get("nodes") or [])


def _template_names() -> tuple[list[str], list[str]]:
    """(templates without subgraphs, templates with subgraphs) whose node classes the server has."""
    folder = _templates_dir()
    if folder is None:
        return [], []
    import gzip

    with gzip.open(DATA_DIR / "object_info_full.json.gz", "rt") as f:
        info = json.load(f)
    plain, nested = [], []
    for p in sorted(folder.glob("*.json")):
        wf = json.loads(p.read_text())
        if isinstance(wf, dict) and "nodes" in wf and _convertible(wf, info):
            (nested if (wf.get("definitions") or {}).get("subgraphs") else plain).append(p.name)
    return plain, nested


# The 154 of the recording, and 5 more that hold subgraphs (the recording counted their subgraph nodes as
# unknown classes): the only subgraphs in the official templates, all in every run.
TEMPLATES, SUBGRAPH_TEMPLATES = _template_names()
SAMPLE = sorted(set(TEMPLATES[::SAMPLE_EVERY]) | {n for n in NAMED if n in TEMPLATES} | set(SUBGRAPH_TEMPLATES))

def test_the_templates_are_the_recorded_154_and_five_with_subgraphs():
    if _templates_dir() is None:
        reason = "comfyui-workflow-templates is not installed (part of [test]): no template goes through the editor"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    assert (len(TEMPLATES), len(SUBGRAPH_TEMPLATES)) == (154, 5)


@pytest.fixture(scope="module")
def live_templates(page):
    folder = _templates_dir()
    named = {n: json.loads((folder / n).read_text()) for n in SAMPLE}
    got = run_async(page.driver, "return await window.autopodOracle.templates(args[0]);", named)
    return {name: {k: json.loads(v) if k == "output" else v for k, v in r.items()} for name, r in got.items()}


@pytest.mark.parametrize("name", SAMPLE)
def test_template_converts_as_the_live_editor(page, live_templates, name):
    live = live_templates[name]
    assert "error" not in live, live.get("error")
    wf = json.loads((_templates_dir() / name).read_text())
    try:
        mine = to_api(parse_workflow(wf), page.object_info)
    except WorkflowError as e:
        pytest.fail(f"autopod refuses what the editor sends: {e}")
    assert _diff(mine, live["output"]) == []


# -- the conversion oracle: variations made in the editor ----------------------------------------------

SUBGRAPH_KINDS = ("subgraph", "nested subgraph", "muted subgraph", "bypassed subgraph")
KINDS = ("as loaded", "muted node", "bypassed node", "widget value", "reroute node", "native reroute",
         "primitive node", *SUBGRAPH_KINDS)
PER_KIND = 1000 if EVERYTHING else 6  # per base graph and kind


@pytest.fixture(scope="module")
def variations(page):
    folder = _templates_dir()
    model_free = run_async(page.driver, "return await window.autopodOracle.modelFree();")
    bases = [("model-free", model_free)]
    for label, title in (("primitive", None), ("titled primitive", "Radius")):
        bases.append((label, run_async(page.driver, "return await window.autopodOracle.withPrimitive("
                                       "args[0], 3, 'blur_radius', args[1]);", model_free, title)))
    if folder is not None:
        bases += [(n, json.loads((folder / n).read_text())) for n in ("default.json", "sdxl_simple_example.json")]
    out = []
    for label, wf in bases:
        out += run_async(page.driver, "return await window.autopodOracle.variations(args[0], args[1], args[2]);",
                         wf, label, PER_KIND)
    return [{**v, "workflow": json.loads(v["workflow"]), "output": json.loads(v.get("output") or "null")} for v in out]


def _convert(v: dict, object_info: dict) -> dict | str:
    try:
        return to_api(parse_workflow(v["workflow"]), object_info)
    except WorkflowError as e:
        return f"refused: {e}"


@pytest.mark.parametrize("kind", KINDS)
def test_variations_convert_as_the_live_editor(page, variations, kind):
    mine = [v for v in variations if v["kind"] == kind and "error" not in v]
    assert mine, f"no {kind} variation was made"
    wrong = []
    for v in mine:
        got = _convert(v, page.object_info)
        if isinstance(got, str) or _diff(got, v["output"]):
            wrong.append(f"{v['label']}: {got if isinstance(got, str) else _diff(got, v['output'])[:3]}")
    assert wrong == [], f"{len(mine) - len(wrong)}/{len(mine)} {kind} variations match the editor"


def test_a_graph_the_editor_fails_on_in_session_converts_as_the_editor_converts_the_saved_file(page, variations):
    """Moving primitive nodes' targets into a subgraph leaves the live session's PrimitiveNode.applyToGraph
    throwing, so that editor sends nothing. The graph it saves is a good file all the same: opened again, the
    editor queues it. A file is what autopod gets, so the oracle for it is the editor that opened that file."""
    failed = [v for v in variations if "error" in v]
    assert failed, "no variation made the live session fail; this test has nothing to check"
    reloaded = run_async(page.driver, "return await window.autopodOracle.templates(args[0]);",
                         {f"{v['kind']}: {v['label']}": v["workflow"] for v in failed})
    wrong = []
    for v in failed:
        live = reloaded[f"{v['kind']}: {v['label']}"]
        assert "error" not in live, f"the editor cannot queue the saved file either: {live['error'][:300]}"
        got = _convert(v, page.object_info)
        if isinstance(got, str) or _diff(got, json.loads(live["output"])):
            wrong.append(f"{v['kind']}: {v['label']}: {got if isinstance(got, str) else _diff(got, json.loads(live['output']))[:3]}")
    assert wrong == [], f"{len(failed) - len(wrong)}/{len(failed)} saved files match the editor that opened them"


def test_titles_are_the_editors(page, live_templates, variations):
    wrong = []
    for name in SAMPLE:
        wf = json.loads((_templates_dir() / name).read_text())
        wrong += [f"{name}: {d}" for d in _diff(to_api(parse_workflow(wf), page.object_info),
                                                 live_templates[name]["output"], titles=True)]
    for v in variations:
        got = _convert(v, page.object_info)
        if v["kind"] not in SUBGRAPH_KINDS and "error" not in v and isinstance(got, dict):
            wrong += [f"{v['label']}: {d}" for d in _diff(got, v["output"], titles=True)]
    assert wrong == []


def _diff(mine: dict, editor_prompt: dict, *, titles: bool = False) -> list[str]:
    """What differs between autopod's prompt and the editor's, node by node and input by input; with ``titles``,
    only the nodes' ``_meta.title`` (the one difference that needs the editor's translations, not the graph)."""
    out = []
    for node_id in sorted(set(mine) | set(editor_prompt)):
        a, b = mine.get(node_id), editor_prompt.get(node_id)
        if a is None or b is None:
            out.append(f"node {node_id}: autopod {'lacks' if a is None else 'adds'} it")
            continue
        if titles:
            if a.get("_meta") != b.get("_meta"):
                out.append(f"node {node_id} _meta: autopod {a.get('_meta')} != editor {b.get('_meta')}")
            continue
        if a.get("class_type") != b.get("class_type"):
            out.append(f"node {node_id}: class {a.get('class_type')} != {b.get('class_type')}")
        for k in sorted(set(a.get("inputs", {})) | set(b.get("inputs", {}))):
            x, y = a.get("inputs", {}).get(k, "<absent>"), b.get("inputs", {}).get(k, "<absent>")
            if x != y:
                out.append(f"node {node_id} {k}: autopod {json.dumps(x)[:80]} != editor {json.dumps(y)[:80]}")
    return out


# -- a person queues from the editor ---------------------------------------------------------------------

def test_a_graph_queued_from_the_editor_runs_on_the_simulated_pod(page, tmp_path):
    s, d = page.standin, page.driver
    before = set(s.history)
    run_async(d, "await window.autopodOracle.load(JSON.parse(await window.autopodOracle.modelFree()));")
    assert d.execute_script("return document.querySelectorAll('.p-toast-message, .p-dialog').length") == 0
    d.find_element("css selector", "[data-testid='queue-button']").click()  # the Run button, as a person does
    prompt_id = wait_until(lambda: next(iter(set(s.history) - before), None), what="the prompt in the history")
    entry = wait_until(lambda: s.history[prompt_id] if s.history[prompt_id]["status"]["completed"] else None,
                       what="the prompt to finish")
    assert entry["status"]["status_str"] == "success"
    saved = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved and saved[0]["filename"].startswith("from-the-editor")
    assert (s.folders.output / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    assert any(img["type"] == "temp" for out in entry["outputs"].values() for img in out.get("images", []))
    # the editor followed the run over the WebSocket and shows the outputs it was sent
    shown = wait_for(d, "Object.values(app.nodeOutputs || {}).flatMap(o => o.images || []).map(i => i.filename)",
                     what="the outputs shown in the editor")
    assert saved[0]["filename"] in shown
    wait_until(lambda: ("GET", "/view") in s.requests, what="the editor fetching the image it shows")
    shot = tmp_path / "queued.png"
    d.save_screenshot(str(shot))
    if os.environ.get("AUTOPOD_SCREENSHOTS"):  # a folder to look at the editor in, when debugging
        shutil.copy(shot, Path(os.environ["AUTOPOD_SCREENSHOTS"]) / shot.name)


# -- the conversion oracle: legacy group nodes ------------------------------------------------------------
# (base graph, groups of node ids): a chain's two ends, a node with its inputs' sources, a whole branch.
# [8, 3] takes the note in too; [[1, 3], [4, 6]] makes two group nodes, the first feeding the second. A primitive
# node (9) feeding node 3's blur_radius (untitled, then titled) goes into the group with its target.
GROUP_SUBSETS = {"model-free": [[3, 4], [1, 3, 4], [2, 5], [8, 3], [[1, 3], [4, 6]]],
                 "default.json": [[3, 4], [6, 7], [4, 3, 8]], "primitive": [[9, 3, 4]], "titled primitive": [[9, 3]]}
GROUP_KINDS = ("group node", "group node widget", "muted group node", "bypassed group node")


@pytest.fixture(scope="module")
def group_nodes(page):
    model_free = run_async(page.driver, "return await window.autopodOracle.modelFree();")
    bases = [("model-free", model_free)]
    for label, title in (("primitive", None), ("titled primitive", "Radius")):
        bases.append((label, run_async(page.driver, "return await window.autopodOracle.withPrimitive("
                                       "args[0], 3, 'blur_radius', args[1]);", model_free, title)))
    folder = _templates_dir()
    if folder is not None:
        bases.append(("default.json", json.loads((folder / "default.json").read_text())))
    out = []
    for label, wf in bases:
        out += run_async(page.driver, "return await window.autopodOracle.groupNodes(args[0], args[1], args[2]);",
                         wf, label, GROUP_SUBSETS[label])
    made = [{**v, "workflow": json.loads(v["workflow"]), "output": json.loads(v.get("output") or "null")} for v in out]
    if os.environ.get("AUTOPOD_RECORD_GROUP_NODES"):  # rewrite the recording the offline test checks
        import gzip

        with gzip.open(Path(__file__).parent / "data" / "editor" / "live-group-nodes.json.gz", "wt") as f:
            json.dump([{k: v[k] for k in ("kind", "label", "workflow", "output")} for v in made if "error" not in v], f)
    return made


@pytest.mark.parametrize("kind", GROUP_KINDS)
def test_group_nodes_convert_as_the_live_editor(page, group_nodes, kind):
    mine = [v for v in group_nodes if v["kind"] == kind]
    assert mine, f"no {kind} was made"
    assert all("error" not in v for v in mine), [v["error"] for v in mine if "error" in v]
    assert all(v["workflow"]["extra"].get("groupNodes") for v in mine)
    wrong = []
    for v in mine:
        got = _convert(v, page.object_info)
        if isinstance(got, str) or _diff(got, v["output"], titles=True) or _diff(got, v["output"]):
            wrong.append(f"{v['label']}: {got if isinstance(got, str) else _diff(got, v['output'])[:3]}")
    assert wrong == [], f"{len(mine) - len(wrong)}/{len(mine)} {kind}s match the editor"


def test_the_editor_loses_the_link_through_a_reroute_inside_a_group_node(page):
    """What autopod's refusal of such a group node rests on: the editor's prompt, live and from the saved file,
    leaves the input after the Reroute unset (ComfyUI then refuses the prompt), so autopod exits 2 instead."""
    made = run_async(page.driver, "return await window.autopodOracle.rerouteInGroup();")
    for key in ("live", "reloaded"):
        assert "error" not in made[key], made[key]
        prompt = json.loads(made[key]["output"])
        scale = next(n for k, n in prompt.items() if n["class_type"] == "ImageScale" and ":" in k)
        assert "image" not in scale["inputs"]
        assert "image" in page.object_info["ImageScale"]["input"]["required"]
    with pytest.raises(WorkflowError) as e:
        to_api(parse_workflow(json.loads(made["live"]["workflow"])), page.object_info)
    assert "Reroute" in str(e.value) and "subgraph" in str(e.value)


# Last: after the editor saves a workflow under a name, loading another graph the oracle's way no longer works.
def test_settings_and_a_workflow_saved_in_the_editor_are_kept(page):
    """What the editor writes (a setting, Save with a name typed into its dialog) lands in the pod's ComfyUI folder,
    and the editor lists the saved workflow from there."""
    from selenium.webdriver.common.keys import Keys

    s, d = page.standin, page.driver
    user = s.root / "user" / "default"
    run_async(d, "await app.extensionManager.setting.set('Comfy.Sidebar.Location', 'right');")
    assert json.loads((user / "comfy.settings.json").read_text())["Comfy.Sidebar.Location"] == "right"
    run_async(d, "await window.autopodOracle.load(JSON.parse(await window.autopodOracle.modelFree()));")
    d.execute_script("app.extensionManager.command.execute('Comfy.SaveWorkflow')")  # Ctrl+S
    box = wait_for(d, "document.querySelector('.p-dialog input')", what="the dialog asking for a name")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("saved in the editor", Keys.ENTER)
    saved = user / "workflows" / "saved in the editor.json"
    wait_until(saved.exists, what="the saved workflow in the pod's folder")
    wf = json.loads(saved.read_text())
    assert {n["type"] for n in wf["nodes"]} >= {"EmptyImage", "SaveImage", "Note"}
    listed = run_async(d, "await app.extensionManager.workflow.syncWorkflows();"
                          "return app.extensionManager.workflow.persistedWorkflows.map(w => w.path);")
    assert "workflows/saved in the editor.json" in listed
    assert d.execute_script("return document.querySelectorAll('.p-toast-message-error').length") == 0

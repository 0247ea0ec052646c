"""Legacy group nodes made in the live ComfyUI editor, converted as the editor converted them (no browser needed).

tests/data/editor/live-group-nodes.json.gz holds graphs that tests/test_editor_browser.py turned into group nodes
with the editor's own "Convert selected nodes to group node" command (then a widget value set on the group node,
then the group node muted and bypassed), each with what the editor's ``graphToPrompt()`` gave.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from pathlib import Path

import pytest
from workflow_fixtures import object_info, oi  # noqa: F401

from autopod.comfy.editor import Converter
from autopod.comfy.workflow import WorkflowError, parse_workflow, to_api
from autopod.core.errors import ExitCode

RECORDING = Path(__file__).parent / "data" / "editor" / "live-group-nodes.json.gz"
with gzip.open(RECORDING, "rt", encoding="utf-8") as _f:
    CASES = json.load(_f)
@pytest.mark.parametrize("v", CASES, ids=[f"{v['kind']}: {v['label']}" for v in CASES])
def test_a_group_node_made_in_the_editor_converts_as_the_editor_converted_it(v, oi):
    assert v["workflow"]["extra"]["groupNodes"]
    assert to_api(parse_workflow(v["workflow"]), oi) == v["output"]


# -- hand-made edge cases, built on the editor's group of ImageBlur 3 and ImageScale 4 (group node 9) -----------
def _case(label: str = "model-free: nodes 3,4", kind: str = "group node") -> dict:
    v = next(v for v in CASES if v["label"] == label and v["kind"] == kind)
    return copy.deepcopy(v)


def _node(data: dict, node_id: int) -> dict:
    return next(n for n in data["nodes"] if n["id"] == node_id)


def _error(data: dict, oi: dict) -> str:
    with pytest.raises(WorkflowError) as e:
        to_api(parse_workflow(data), oi)
    assert e.value.exit_code == ExitCode.USAGE and "\n" not in str(e.value)
    return str(e.value)


def test_inner_widgets_whose_names_clash_take_the_class_then_a_count(oi):
    """Three ImageBlurs in a chain: the group's widgets are blur_radius, sigma, then "ImageBlur blur_radius",
    "ImageBlur sigma", then "ImageBlur 2 blur_radius", "ImageBlur 2 sigma"; each value reaches its own node."""
    v = _case()
    wf = v["workflow"]
    group = wf["extra"]["groupNodes"]["Group 1"]
    blur = group["nodes"][0]
    group["nodes"] = [{**copy.deepcopy(blur), "index": i} for i in range(3)]
    group["links"] = [[None, 0, 0, 0, 1, "IMAGE"], [0, 0, 1, 0, 3, "IMAGE"], [1, 0, 2, 0, 3, "IMAGE"]]
    group["external"] = [[2, 0, "IMAGE"]]
    _node(wf, 9)["widgets_values"] = [2, 0.5, 3, 0.6, 4, 0.7]
    prompt = to_api(parse_workflow(wf), oi)
    assert [prompt[f"9:{i}"]["inputs"] for i in range(3)] == [
        {"blur_radius": 2, "sigma": 0.5, "image": ["1", 0]},
        {"blur_radius": 3, "sigma": 0.6, "image": ["9:0", 0]},
        {"blur_radius": 4, "sigma": 0.7, "image": ["9:1", 0]}]
    assert prompt["6"]["inputs"]["images"] == ["9:2", 0]
    assert _group_widgets(wf, oi) == ["blur_radius", "sigma", "ImageBlur blur_radius", "ImageBlur sigma",
                                      "ImageBlur 2 blur_radius", "ImageBlur 2 sigma"]
    group["nodes"][1]["title"] = "Soft"  # a titled inner node's clashing widgets take its title instead
    assert _group_widgets(wf, oi) == ["blur_radius", "sigma", "Soft blur_radius", "Soft sigma",
                                      "ImageBlur blur_radius", "ImageBlur sigma"]
    assert {k: n["inputs"] for k, n in to_api(parse_workflow(wf), oi).items()} == \
        {k: n["inputs"] for k, n in prompt.items()}


def _group_widgets(wf: dict, oi: dict) -> list[str]:
    return [w.name for w in Converter(wf, oi, random.Random(), 0).group_def("Group 1").cls.widgets]


def test_a_group_node_saved_with_the_older_separator_converts_the_same(oi):
    v = _case("model-free: nodes 3,4: blur_radius", "group node widget")
    _node(v["workflow"], 9)["type"] = "workflow/Group 1"
    assert to_api(parse_workflow(v["workflow"]), oi) == v["output"]


def test_a_group_node_inside_a_subgraph_is_refused_as_the_editor_refuses_it(oi):
    v = _case()
    wf = v["workflow"]
    sg = "0b6b9e0c-2f9e-4d3a-9d55-7c1f5a0e8a11"
    inside = {**_node(wf, 9), "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
              "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]}
    wf["definitions"] = {"subgraphs": [{"id": sg, "name": "Holds a group node", "nodes": [inside], "links": [],
                                        "inputs": [], "outputs": []}]}
    _node(wf, 9).update(type=sg, inputs=[], outputs=[], widgets_values=[])
    wf["links"] = [lk for lk in wf["links"] if 9 not in (lk[1], lk[3])]
    _node(wf, 6)["inputs"][0]["link"] = None
    msg = _error(wf, oi)
    assert "node 9:9 (workflow>Group 1" in msg and "group node inside a subgraph" in msg


def test_a_group_node_feeding_another_drops_that_input_as_the_editor_does(oi):
    """Made live too ("nodes 1,3 / 4,6"): the second group's inner input resolves to the first group node itself,
    which is not in the prompt, so the editor sends ImageScale without its image."""
    v = _case("model-free: nodes 1,3 / 4,6")
    prompt = to_api(parse_workflow(v["workflow"]), oi)
    assert prompt == v["output"]
    assert "image" not in prompt["10:0"]["inputs"] and prompt["10:1"]["inputs"]["images"] == ["10:0", 0]


def test_a_reroute_inside_a_group_node_is_refused_naming_the_node(oi):
    v = _case()
    group = v["workflow"]["extra"]["groupNodes"]["Group 1"]
    group["nodes"].append({"id": -1, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": None}],
                           "outputs": [{"name": "", "type": "*", "links": []}], "index": 2})
    msg = _error(v["workflow"], oi)
    assert msg.startswith("workflow: node 9 (workflow>Group 1): holds a Reroute"), msg


def test_a_reroute_made_inside_a_group_node_in_the_editor_is_refused_where_the_editor_loses_its_link(oi):
    """Made live (tests/test_editor_browser.py makes it again): a Reroute between ImageBlur and ImageScale, the three
    made a group node. The editor's prompt, live and from the saved file, has ImageScale without its required
    image, which ComfyUI refuses; autopod says why before anything is sent."""
    rec = json.loads((RECORDING.parent / "live-group-node-reroute.json").read_text())
    for prompt in (rec["output"], rec["reloaded_output"]):
        assert prompt["10:2"]["class_type"] == "ImageScale" and "image" not in prompt["10:2"]["inputs"]
    assert "image" in oi["ImageScale"]["input"]["required"]
    msg = _error(rec["workflow"], oi)
    assert msg.startswith("workflow: node 10 (workflow>RG): holds a Reroute (group node 'RG'), and the editor "
                          "loses the links through it"), msg


def test_a_primitive_inside_that_also_feeds_outside_is_refused(oi):
    v = _case("primitive: nodes 9,3,4")
    (group,) = v["workflow"]["extra"]["groupNodes"].values()
    group["external"].append([0, 0, "INT"])
    assert "holds a PrimitiveNode that also feeds nodes outside" in _error(v["workflow"], oi)


def test_a_value_socket_inside_a_group_node_is_refused(oi):
    """SaveLoRANode's optional steps is an INT the editor makes a socket (forceInput); its group node would take it
    for a widget and shift the inner node's inputs."""
    v = _case()
    group = v["workflow"]["extra"]["groupNodes"]["Group 1"]
    group["nodes"][1] = {"id": -1, "type": "SaveLoRANode", "inputs": [], "outputs": [], "index": 1,
                         "widgets_values": ["loras/x"]}
    assert "SaveLoRANode whose input 'steps' is a socket for a value" in _error(v["workflow"], oi)

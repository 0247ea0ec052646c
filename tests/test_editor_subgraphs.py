"""Subgraphs, as the ComfyUI editor (frontend 1.27.10) flattens them when it queues a workflow.

tests/data/workflows/subgraph_blur.json: EmptyImage 1 -> subgraph node 10 "Soften" (inside: ImageBlur 5 "Blur",
whose blur_radius is the subgraph's input, shown on the subgraph node as 12; then ImageScale 6) -> SaveImage 3.
subgraph_nested.json: EmptyImage 1 -> subgraph node 20 "My pipeline" (inside: a "Soften" node 7 "Soften inside",
whose blur_radius is the pipeline's own input, shown as 9; and PreviewImage 8) -> SaveImage 3.
Each variation below is what a person gets in the editor (mode changes, links, values); every expected prompt was
also checked against the real editor loading the same file.
"""

from __future__ import annotations

import copy
import json
from typing import Callable

import pytest

from autopod.comfy.workflow import Workflow, WorkflowError, convert
from workflow_fixtures import DATA, object_info, oi  # noqa: F401

SOFTEN = "5b0f1c9e-3a47-4d2e-9c61-7e2f8a4b1d30"
PIPELINE = "a8d3e6f2-1c5b-4e90-b7a4-62c9d0f3e815"


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def run(data: dict, oi: dict):
    return convert(Workflow(None, "ui", data), oi)


def definition(data: dict, sg: str) -> dict:
    return next(d for d in data["definitions"]["subgraphs"] if d["id"] == sg)


def node(graph: dict, node_id: int) -> dict:
    return next(n for n in graph["nodes"] if n["id"] == node_id)


def inputs(prompt: dict, node_id: str) -> dict:
    return prompt[node_id]["inputs"]


# -- the plain files -----------------------------------------------------------------------------------------
def test_a_subgraph_is_flattened_with_the_editors_ids_and_the_value_shown_on_the_subgraph_node(oi):
    result = run(load("subgraph_blur"), oi)
    assert result.prompt == {
        "1": {"inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 16711680}, "class_type": "EmptyImage",
              "_meta": {"title": "EmptyImage"}},
        "10:5": {"inputs": {"blur_radius": 12, "sigma": 1.0, "image": ["1", 0]}, "class_type": "ImageBlur",
                 "_meta": {"title": "Blur"}},
        "10:6": {"inputs": {"upscale_method": "nearest-exact", "width": 1024, "height": 1024, "crop": "disabled",
                            "image": ["10:5", 0]}, "class_type": "ImageScale", "_meta": {"title": "Upscale Image"}},
        "3": {"inputs": {"filename_prefix": "soft", "images": ["10:6", 0]}, "class_type": "SaveImage",
              "_meta": {"title": "Save Image"}}}
    assert result.paths == {"10:5": "subgraph 'Soften'", "10:6": "subgraph 'Soften'"}
    assert result.notes == []


def test_nested_subgraphs_take_one_id_part_per_level_and_pass_the_value_down_both(oi):
    result = run(load("subgraph_nested"), oi)
    assert set(result.prompt) == {"1", "20:7:5", "20:7:6", "20:8", "3"}
    assert inputs(result.prompt, "20:7:5") == {"blur_radius": 9, "sigma": 1.0, "image": ["1", 0]}
    assert inputs(result.prompt, "20:8") == {"images": ["20:7:6", 0]}
    assert inputs(result.prompt, "3") == {"filename_prefix": "nested", "images": ["20:7:6", 0]}
    assert result.paths["20:7:5"] == "subgraph 'My pipeline' > 'Soften inside'"
    assert result.paths["20:8"] == "subgraph 'My pipeline'"


def test_two_instances_of_one_subgraph_are_two_sets_of_nodes_with_their_own_values(oi):
    data = load("subgraph_blur")
    twin = copy.deepcopy(node(data, 10))
    twin.update(id=11, widgets_values=[30], title="Soften more")
    twin["inputs"][0]["link"] = 3
    twin["outputs"][0]["links"] = [4]
    data["nodes"] += [twin, {"id": 12, "type": "PreviewImage", "mode": 0, "order": 3,
                             "inputs": [{"name": "images", "type": "IMAGE", "link": 4}], "outputs": []}]
    data["links"] += [[3, 1, 0, 11, 0, "IMAGE"], [4, 11, 0, 12, 0, "IMAGE"]]
    result = run(data, oi)
    assert inputs(result.prompt, "10:5")["blur_radius"] == 12 and inputs(result.prompt, "11:5")["blur_radius"] == 30
    assert inputs(result.prompt, "12") == {"images": ["11:6", 0]}
    assert result.paths["11:6"] == "subgraph 'Soften more'"


# -- variations, each as the editor sends it -------------------------------------------------------------------
def _set_modes(mode: int, *, children: bool) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        node(data, 10)["mode"] = mode
        if children:  # what the editor's mute/bypass command does to a subgraph node: its nodes get the mode too
            for n in definition(data, SOFTEN)["nodes"]:
                n["mode"] = mode
    return change


def _primitive_into_the_subgraph_input(data: dict) -> None:
    data["nodes"].append({"id": 30, "type": "PrimitiveNode", "mode": 0, "order": 0, "inputs": [],
                          "outputs": [{"name": "INT", "type": "INT", "links": [30], "widget": {"name": "blur_radius"}}],
                          "properties": {"Run widget replace on values": False}, "widgets_values": [25, "fixed"]})
    node(data, 10)["inputs"].append({"name": "blur_radius", "type": "INT", "widget": {"name": "blur_radius"},
                                     "link": 30})
    data["links"].append([30, 30, 0, 10, 1, "INT"])


def _node_into_the_subgraph_input(data: dict) -> None:
    data["nodes"].append({"id": 31, "type": "PrimitiveInt", "mode": 0, "order": 0, "inputs": [],
                          "outputs": [{"name": "INT", "type": "INT", "links": [31]}], "widgets_values": [7, "fixed"]})
    node(data, 10)["inputs"].append({"name": "blur_radius", "type": "INT", "widget": {"name": "blur_radius"},
                                     "link": 31})
    data["links"].append([31, 31, 0, 10, 1, "INT"])


def _no_saved_value_on_the_subgraph_node(data: dict) -> None:
    del node(data, 10)["widgets_values"]


def _promoted_text_is_sent_as_shown(data: dict) -> None:
    # The subgraph's input feeds a prompt text (dynamic prompts): the subgraph node's value is sent as it is.
    sg = definition(data, SOFTEN)
    sg["inputs"].append({"id": "6d0bef74-8192-43a4-afc5-708192a3b4c5", "name": "text", "type": "STRING",
                         "linkIds": [15]})
    sg["nodes"].append({"id": 7, "type": "CLIPTextEncode", "mode": 0, "order": 2,
                        "inputs": [{"name": "clip", "type": "CLIP", "link": None},
                                   {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 15}],
                        "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
                        "widgets_values": ["inner {x|y}"]})
    sg["links"].append({"id": 15, "origin_id": -10, "origin_slot": 2, "target_id": 7, "target_slot": 1,
                        "type": "STRING"})
    node(data, 10)["widgets_values"] = [12, "a {red|blue} cat"]


VARIATIONS = {
    # The subgraph node alone bypassed (its mode set, as a script or an older editor does): its nodes still run,
    # and what it feeds gets its matching input instead.
    "bypassed subgraph node": (_set_modes(4, children=False), {
        "10:5": {"blur_radius": 12, "sigma": 1.0, "image": ["1", 0]},
        "3": {"filename_prefix": "soft", "images": ["1", 0]}}),
    "bypassed subgraph": (_set_modes(4, children=True), {"3": {"filename_prefix": "soft", "images": ["1", 0]}}),
    "muted subgraph node": (_set_modes(2, children=False), {"3": {"filename_prefix": "soft", "images": ["10:6", 0]}}),
    "muted subgraph": (_set_modes(2, children=True), {"3": {"filename_prefix": "soft"}}),
    # A primitive node writes into the subgraph node's shown value; its link leads nowhere, so the inner node sends
    # its own widget, which the editor has just set from the subgraph node's value as it saved the graph.
    "primitive into a subgraph input": (_primitive_into_the_subgraph_input, {
        "10:5": {"blur_radius": 25, "sigma": 1.0, "image": ["1", 0]}}),
    "node into a subgraph input": (_node_into_the_subgraph_input, {
        "31": {"value": 7}, "10:5": {"blur_radius": ["31", 0], "sigma": 1.0, "image": ["1", 0]}}),
    "no value saved on the subgraph node": (_no_saved_value_on_the_subgraph_node, {
        "10:5": {"blur_radius": 3, "sigma": 1.0, "image": ["1", 0]}}),
    "promoted text": (_promoted_text_is_sent_as_shown, {"10:7": {"text": "a {red|blue} cat"}}),
}


@pytest.mark.parametrize("kind", sorted(VARIATIONS))
def test_a_variation_converts_as_the_editor_sends_it(kind, oi):
    change, expected = VARIATIONS[kind]
    data = load("subgraph_blur")
    change(data)
    prompt = run(data, oi).prompt
    for node_id, want in expected.items():
        assert inputs(prompt, node_id) == want, node_id
    if kind in ("bypassed subgraph", "muted subgraph"):
        assert set(prompt) == {"1", "3"}


def test_subgraph_nodes_of_one_subgraph_share_its_inner_widgets_where_a_link_leads_nowhere(oi):
    data = load("subgraph_blur")
    _primitive_into_the_subgraph_input(data)  # node 10's blur_radius: a primitive (25)
    twin = copy.deepcopy(node(data, 10))
    twin.update(id=11, widgets_values=[30], order=5)
    twin["inputs"] = [{"name": "image", "type": "IMAGE", "link": 3}]
    twin["outputs"][0]["links"] = []
    data["nodes"].append(twin)
    data["links"].append([3, 1, 0, 11, 0, "IMAGE"])
    prompt = run(data, oi).prompt
    # Node 11 shows 30 and sends it; node 10's inner blur reads the shared inner widget, last set from node 11.
    assert inputs(prompt, "11:5")["blur_radius"] == 30
    assert inputs(prompt, "10:5")["blur_radius"] == 30


def test_a_nested_subgraph_node_s_own_value_is_lost_when_its_definition_comes_later_in_the_file(oi):
    data = load("subgraph_nested")
    # The pipeline's blur_radius no longer reaches the inner "Soften": the inner node's own value (5) counts.
    pipe = definition(data, PIPELINE)
    pipe["inputs"] = pipe["inputs"][:1]
    pipe["links"] = [lk for lk in pipe["links"] if lk["id"] != 22]
    node(pipe, 7)["inputs"][1]["link"] = None
    node(data, 20)["widgets_values"] = []
    assert inputs(run(data, oi).prompt, "20:7:5")["blur_radius"] == 5
    # The editor makes the inner subgraph node before it has read the subgraph it is an instance of, so its
    # saved value has nowhere to go; the value shown is then the inner widget's (3).
    data["definitions"]["subgraphs"].reverse()
    assert inputs(run(data, oi).prompt, "20:7:5")["blur_radius"] == 3


# -- what the editor cannot queue ----------------------------------------------------------------------------
def _error(data: dict, oi: dict) -> str:
    with pytest.raises(WorkflowError) as e:
        run(data, oi)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_subgraph_output_fed_straight_from_its_input_is_refused(oi):
    data = load("subgraph_blur")
    sg = definition(data, SOFTEN)
    sg["outputs"][0]["linkIds"] = [16]
    sg["links"].append({"id": 16, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                        "type": "IMAGE"})
    assert "node 10 (5b0f1c9e" in _error(data, oi) and "straight from a subgraph input" in _error(data, oi)


def test_a_class_the_server_lacks_inside_a_subgraph_is_named_with_its_subgraph(oi):
    data = load("subgraph_nested")
    node(definition(data, SOFTEN), 6)["type"] = "UpscaleWithSomething"
    msg = _error(data, oi)
    assert msg.startswith("workflow: node 20:7:6 (UpscaleWithSomething) in subgraph 'My pipeline' > 'Soften inside': "
                          "the server has no node class 'UpscaleWithSomething'"), msg


def test_a_subgraph_node_without_its_definition_is_refused(oi):
    data = load("subgraph_blur")
    del data["definitions"]
    assert "node 10 (5b0f1c9e-3a47-4d2e-9c61-7e2f8a4b1d30): is a subgraph whose definition is not in the file" \
        in _error(data, oi)


def test_a_subgraph_inside_itself_is_refused(oi):
    data = load("subgraph_blur")
    sg = definition(data, SOFTEN)
    sg["nodes"].append({"id": 9, "type": SOFTEN, "mode": 0, "inputs": [], "outputs": []})
    assert "contains itself" in _error(data, oi)

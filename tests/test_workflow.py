"""Loading workflows and converting the editor format to API prompts (autopod.comfy.workflow).

The editor-format files under tests/data/workflows/ are written the way the ComfyUI frontend saves them;
each has its expected prompt beside it (NAME.api.json), written by hand from the frontend's rules.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib

import pytest

from autopod.comfy import schema as sch
from autopod.comfy.workflow import (Workflow, WorkflowError, is_link, load_workflow, parse_workflow, prompt_hash,
                                    to_api)
from autopod.comfy.workflow import convert as convert_workflow
from autopod.core.errors import ExitCode, UsageError
from workflow_fixtures import DATA, err, object_info, oi  # noqa: F401

UI_FILES = ["default_txt2img", "txt2img_features", "image_pipeline", "load_image"]


def ui(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def expected(name: str) -> dict:
    return json.loads((DATA / f"{name}.api.json").read_text())


def convert(data: dict, oi: dict) -> dict:
    return to_api(Workflow(None, "ui", data), oi)


def convert_notes(data: dict, oi: dict):
    return convert_workflow(Workflow(None, "ui", data), oi)


def node(data: dict, node_id: int) -> dict:
    return next(n for n in data["nodes"] if n["id"] == node_id)


def server_problems(prompt: dict, oi: dict) -> list[str]:
    """What ComfyUI's validation would refuse: a missing required input, a link to a missing node or
    output, or a link whose type differs from the input's."""
    problems = []
    for node_id, n in prompt.items():
        schema = oi[n["class_type"]]
        for name, spec, section in sch.ordered_inputs(schema):
            value = n["inputs"].get(name)
            if value is None:
                if section == "required":
                    problems.append(f"{node_id}.{name} missing")
                continue
            if is_link(value):
                origin = prompt.get(value[0])
                if origin is None:
                    problems.append(f"{node_id}.{name} links to missing {value[0]}")
                    continue
                outputs = oi[origin["class_type"]]["output"]
                if value[1] >= len(outputs):
                    problems.append(f"{node_id}.{name} links to missing output {value}")
                elif sch.value_kind(spec) != "COMBO" and outputs[value[1]] != sch.socket_type(spec):
                    problems.append(f"{node_id}.{name}: {outputs[value[1]]} into {sch.socket_type(spec)}")
    return problems


# -- the shipped workflows -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", UI_FILES)
def test_editor_workflows_convert_to_their_expected_prompt(name, oi):
    wf = load_workflow(DATA / f"{name}.json")
    assert wf.kind == "ui"
    prompt = to_api(wf, oi)
    assert prompt == expected(name)
    assert server_problems(prompt, oi) == []


@pytest.mark.parametrize("name", UI_FILES)
def test_api_files_load_as_api_and_pass_through(name, oi):
    wf = load_workflow(DATA / f"{name}.api.json")
    assert wf.kind == "api"
    assert to_api(wf, oi) == expected(name)
    assert to_api(wf, oi) is not wf.data  # a copy: callers may change it


def test_widget_inputs_in_order_with_the_seed_control_value_skipped(oi):
    prompt = convert(ui("default_txt2img"), oi)
    assert list(prompt["3"]["inputs"])[:6] == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert prompt["3"]["inputs"]["seed"] == 156680208700286
    assert "randomize" not in prompt["3"]["inputs"].values()


def test_a_control_value_on_a_real_primitive_node_is_skipped(oi):
    # PrimitiveInt is an ordinary node; its INT carries control_after_generate: [30, "fixed"].
    assert convert(ui("txt2img_features"), oi)["18"] == {
        "inputs": {"value": 30}, "class_type": "PrimitiveInt", "_meta": {"title": "Steps"}}


def test_upload_widget_value_is_skipped_after_the_last_required_input(oi):
    data = ui("load_image")
    data["nodes"].append({"id": 6, "type": "LoadImageMask", "mode": 0, "inputs": [],
                          "outputs": [{"name": "MASK", "type": "MASK", "links": None}],
                          "widgets_values": ["mask.png", "red", "image"]})  # upload after channel, as saved
    prompt = convert(data, oi)
    assert prompt["1"]["inputs"] == {"image": "example.png"}  # ["example.png", "image"]
    assert prompt["6"]["inputs"] == {"image": "mask.png", "channel": "red"}


def test_a_save_that_ends_before_the_upload_slot_is_accepted(oi):
    data = ui("load_image")
    node(data, 1)["widgets_values"] = ["cat.png"]
    assert convert(data, oi)["1"]["inputs"] == {"image": "cat.png"}


def test_a_widget_converted_to_an_input_takes_the_link(oi):
    data = ui("txt2img_features")
    assert node(data, 3)["widgets_values"][2] == 25  # the widget's own value, unused
    assert convert(data, oi)["3"]["inputs"]["steps"] == ["18", 0]  # PrimitiveInt "Steps"


def test_a_primitive_node_gives_its_value_to_every_input_it_feeds_and_is_not_in_the_prompt(oi):
    data = ui("txt2img_features")
    node(data, 17)["widgets_values"] = [640, "fixed"]
    prompt = convert(data, oi)
    assert prompt["5"]["inputs"]["width"] == prompt["5"]["inputs"]["height"] == 640
    assert "17" not in prompt and "10" not in prompt


def test_the_primitive_value_wins_over_the_targets_own_widget_value(oi):
    data = ui("txt2img_features")
    node(data, 3)["widgets_values"][0] = 7
    assert convert(data, oi)["3"]["inputs"]["seed"] == 42


def test_a_primitive_feeding_through_a_reroute_does_not_reach_the_widget(oi):
    data = ui("txt2img_features")
    # Seed primitive 10 -> Reroute 20 -> KSampler.seed: the editor writes a primitive's value only into the
    # inputs it feeds directly (the reroute has no widget), and the link ends at the primitive: the
    # KSampler sends its own seed value.
    data["nodes"].append({"id": 20, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 30}],
                          "outputs": [{"name": "", "type": "INT", "links": [10]}], "properties": {}})
    data["links"] = [lk for lk in data["links"] if lk[0] != 10] + [[10, 20, 0, 3, 4, "INT"], [30, 10, 0, 20, 0, "INT"]]
    node(data, 10)["widgets_values"] = [99, "fixed"]
    node(data, 10)["outputs"][0]["links"] = [30]
    node(data, 3)["widgets_values"][0] = 7
    assert convert(data, oi)["3"]["inputs"]["seed"] == 7
    # A primitive whose saved output forgot its link still writes along it, as the editor repairs the list.
    node(data, 10)["outputs"][0]["links"] = []
    data["links"].append([31, 10, 0, 3, 4, "INT"])
    node(data, 3)["inputs"][4]["link"] = 31
    assert convert(data, oi)["3"]["inputs"]["seed"] == 99


def test_reroute_chains_are_followed(oi):
    assert convert(ui("txt2img_features"), oi)["8"]["inputs"]["vae"] == ["4", 2]  # through Reroutes 11 and 12
    assert convert(ui("image_pipeline"), oi)["8"]["inputs"]["images"] == ["4", 0]  # through Reroutes 6 and 7


def test_a_reroute_with_nothing_upstream_leaves_the_input_out(oi):
    data = ui("image_pipeline")
    node(data, 6)["inputs"][0]["link"] = None
    prompt = convert(data, oi)
    assert "images" not in prompt["8"]["inputs"]


def test_notes_groups_and_muted_nodes_are_not_in_the_prompt(oi):
    prompt = convert(ui("txt2img_features"), oi)
    assert set(prompt) == {"3", "4", "5", "6", "7", "8", "9", "18"}  # no Note 15, MarkdownNote 16, Preview 14
    assert set(convert(ui("image_pipeline"), oi)) == {"1", "4", "8", "9", "10"}  # no muted SaveImage 11


def test_an_input_linked_to_a_muted_node_is_left_out(oi):
    data = ui("default_txt2img")
    node(data, 8)["mode"] = 2  # mute VAEDecode
    prompt = convert(data, oi)
    assert "8" not in prompt
    assert prompt["9"]["inputs"] == {"filename_prefix": "ComfyUI"}


def test_a_bypassed_node_passes_its_matching_input_through(oi):
    assert convert(ui("txt2img_features"), oi)["8"]["inputs"]["samples"] == ["3", 0]  # LatentUpscale 13
    assert convert(ui("image_pipeline"), oi)["4"]["inputs"]["image"] == ["1", 0]  # ImageBlur 3
    assert convert(ui("load_image"), oi)["3"]["inputs"]["image"] == ["1", 0]  # ImageBlur 2, links as objects


def test_a_bypassed_node_feeding_an_optional_input(oi):
    data = ui("load_image")
    node(data, 3)["type"] = "ImageStitch"  # both images from the bypassed ImageBlur 2; image2 is optional
    node(data, 3)["inputs"][0]["name"] = "image1"
    node(data, 3)["inputs"].append({"name": "image2", "type": "IMAGE", "link": 9})
    node(data, 3)["widgets_values"] = ["right", True, 0, "white"]
    data["links"].append({"id": 9, "origin_id": 2, "origin_slot": 0, "target_id": 3, "target_slot": 1})
    assert convert(data, oi)["3"]["inputs"] == {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                                 "spacing_color": "white", "image1": ["1", 0], "image2": ["1", 0]}


def test_bypass_takes_the_first_input_of_the_consumers_type_when_the_same_slot_does_not_fit(oi):
    data = ui("default_txt2img")
    node(data, 3)["mode"] = 4  # KSampler: inputs model, positive, negative, latent_image; output LATENT
    prompt = convert(data, oi)
    assert "3" not in prompt
    assert prompt["8"]["inputs"]["samples"] == ["5", 0]  # its latent_image (slot 3), not model (slot 0)


def test_bypass_prefers_the_input_at_the_same_slot_as_the_output(oi):
    data = ui("load_image")
    # A bypassed two-image node whose output 0 stands for input 0 and output 1 for input 1.
    data["nodes"].append({"id": 9, "type": "ImageBlend", "mode": 4,
                          "inputs": [{"name": "image1", "type": "IMAGE", "link": 20},
                                     {"name": "image2", "type": "IMAGE", "link": 21}],
                          "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []},
                                      {"name": "IMAGE", "type": "IMAGE", "links": [22]}],
                          "widgets_values": [0.5, "normal"]})
    data["nodes"].append({"id": 10, "type": "EmptyImage", "mode": 0, "inputs": [],
                          "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [21]}],
                          "widgets_values": [64, 64, 1, 0]})
    node(data, 4)["inputs"][0]["link"] = 22
    data["links"] = [lk for lk in data["links"] if lk["id"] != 4] + [
        {"id": 20, "origin_id": 3, "origin_slot": 0, "target_id": 9, "target_slot": 0, "type": "IMAGE"},
        {"id": 21, "origin_id": 10, "origin_slot": 0, "target_id": 9, "target_slot": 1, "type": "IMAGE"},
        {"id": 22, "origin_id": 9, "origin_slot": 1, "target_id": 4, "target_slot": 0, "type": "IMAGE"}]
    assert convert(data, oi)["4"]["inputs"]["images"] == ["10", 0]


def test_bypass_prefers_an_exact_type_over_a_wildcard_input(oi):
    data = ui("default_txt2img")
    # A bypassed switch: output 1 (LATENT) feeds VAEDecode; input 1 is a MODEL, so the same slot does not fit;
    # the wildcard input 0 would fit, but the exact LATENT input 2 comes first in the frontend's rule.
    data["nodes"].append({"id": 20, "type": "SomeLatentSwitch", "mode": 4,
                          "inputs": [{"name": "any", "type": "*", "link": 30},
                                     {"name": "model", "type": "MODEL", "link": 31},
                                     {"name": "latent", "type": "LATENT", "link": 32}],
                          "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []},
                                      {"name": "LATENT", "type": "LATENT", "links": [33]}]})
    node(data, 8)["inputs"][0]["link"] = 33
    data["links"] = [lk for lk in data["links"] if lk[0] != 7] + [
        [30, 5, 0, 20, 0, "LATENT"], [31, 4, 0, 20, 1, "MODEL"], [32, 3, 0, 20, 2, "LATENT"],
        [33, 20, 1, 8, 0, "LATENT"]]
    assert convert(data, oi)["8"]["inputs"]["samples"] == ["3", 0]


def test_a_chain_of_bypassed_nodes_is_walked(oi):
    data = ui("image_pipeline")
    node(data, 4)["mode"] = 4  # ImageScale too: SaveImage (through the reroutes) gets EmptyImage
    prompt = convert(data, oi)
    assert prompt["8"]["inputs"]["images"] == ["1", 0]
    assert prompt["9"]["inputs"]["image"] == ["1", 0]


def test_a_bypassed_node_without_a_matching_input_leaves_the_input_out(oi):
    data = ui("default_txt2img")
    node(data, 8)["mode"] = 4  # VAEDecode has no IMAGE input to pass through
    prompt = convert(data, oi)
    assert "images" not in prompt["9"]["inputs"]


def test_a_bypass_dead_end_on_a_widget_input_keeps_the_widget_value(oi):
    data = ui("txt2img_features")
    # KSampler.steps comes from PrimitiveInt 18; bypass it: it has no input to pass through.
    node(data, 18)["mode"] = 4
    assert convert(data, oi)["3"]["inputs"]["steps"] == 25


def test_titles_come_from_the_node_else_the_display_name_else_the_class(oi):
    prompt = convert(ui("image_pipeline"), oi)
    assert prompt["8"]["_meta"]["title"] == "Result"
    assert prompt["4"]["_meta"]["title"] == "Upscale Image"
    # ImageBlur's server definition has no display name; the editor shows its own English name for it.
    assert prompt["9"]["_meta"]["title"] == "Image Blur"


def test_list_widget_values_are_wrapped_so_they_do_not_read_as_links(oi):
    data = ui("image_pipeline")
    node(data, 9)["widgets_values"] = [["a", 1], 1.5]
    assert convert(data, oi)["9"]["inputs"]["blur_radius"] == {"__value__": ["a", 1]}


def test_a_save_node_prefix_that_is_not_text_is_refused_as_the_editor_fails_on_it(oi):
    data = ui("image_pipeline")
    node(data, 8)["widgets_values"] = [["a", 1]]  # the editor's %...% replacement needs text
    assert "filename_prefix is ['a', 1], not text" in _error(data, oi)


def test_widgets_values_as_an_object_are_read_by_name(oi):
    data = ui("image_pipeline")
    node(data, 9)["widgets_values"] = {"sigma": 2.5, "blur_radius": 4, "videopreview": {}}
    assert convert(data, oi)["9"]["inputs"] == {"blur_radius": 4, "sigma": 2.5, "image": ["4", 0]}


def test_the_saved_value_of_a_force_input_is_dropped_when_the_count_is_one_per_input():
    oi = {"Demo": {"input": {"required": {"a": ["INT", {}], "b": ["STRING", {"forceInput": True}],
                                          "c": ["FLOAT", {}]}},
                   "input_order": {"required": ["a", "b", "c"]}, "output": [], "display_name": "Demo"}}
    data = {"nodes": [{"id": 1, "type": "Demo", "mode": 0, "inputs": [], "widgets_values": [1, 2.5]}], "links": []}
    assert convert(data, oi)["1"]["inputs"] == {"a": 1, "c": 2.5}
    data["nodes"][0]["widgets_values"] = [1, "old", 2.5]  # one per input: the editor drops the forceInput's
    assert convert(data, oi)["1"]["inputs"] == {"a": 1, "c": 2.5}


# -- what cannot be converted: an error naming the node -------------------------------------------------
def _error(data: dict, oi: dict) -> str:
    with pytest.raises(WorkflowError) as e:
        convert(data, oi)
    assert e.value.exit_code == ExitCode.USAGE and isinstance(e.value, UsageError)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_unknown_class_is_named_with_the_node(oi):
    data = ui("txt2img_features")
    node(data, 9)["type"] = "SaveImageExtended"
    msg = _error(data, oi)
    assert "node 9 (SaveImageExtended)" in msg and "no node class 'SaveImageExtended'" in msg


def test_unknown_classes_are_fine_when_muted_or_bypassed(oi):
    data = ui("txt2img_features")
    node(data, 13)["type"] = "SomeCustomUpscale"  # bypassed
    node(data, 14)["type"] = "SomeCustomPreview"  # muted
    assert convert(data, oi) == expected("txt2img_features")


def test_extra_saved_values_are_ignored_as_the_editor_does(oi):
    data = ui("default_txt2img")
    node(data, 3)["widgets_values"] = [1, "fixed", 20, 8, "euler", "normal", 0.5, "extra"]
    result = convert_notes(data, oi)
    assert result.prompt["3"]["inputs"] == {**expected("default_txt2img")["3"]["inputs"], "seed": 1, "denoise": 0.5}
    assert [n for n in result.notes if n.startswith("node 3 ")] == [
        "node 3 (KSampler): ignored 1 saved value(s) the node no longer has a widget for: 'extra'"]


def test_missing_saved_values_take_the_widgets_defaults(oi):
    data = ui("default_txt2img")
    node(data, 3)["widgets_values"] = [1, "fixed", 20, 8, "euler", "normal"]  # no denoise
    result = convert_notes(data, oi)
    assert result.prompt["3"]["inputs"]["denoise"] == 1
    assert result.notes == ["node 3 (KSampler): took the default of denoise=1 (the file saved 6 value(s) for 7 "
                            "widget(s))"]
    # Without the control value the values shift, as in the editor: steps gets 20's slot's neighbour and so on.
    node(data, 3)["widgets_values"] = [156680208700286, 20, 8, "euler", "normal", 1]
    inputs = convert(data, oi)["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["sampler_name"]) == (156680208700286, 8, "euler",
                                                                                      "normal")
    assert inputs["denoise"] == 1


def test_a_subgraph_without_what_its_node_is_linked_from_is_refused(oi):
    data = ui("image_pipeline")
    sg = "9c5f7d0e-6d2a-4f0a-8e1b-3c4d5e6f7a8b"
    data["definitions"] = {"subgraphs": [{"id": sg, "name": "Blur twice", "nodes": [], "links": []}]}
    node(data, 9)["type"] = sg  # PreviewImage 10 is linked from its output 0, which the subgraph does not have
    msg = _error(data, oi)
    assert f"node 9 ({sg}" in msg and "output 0, which subgraph 'Blur twice' does not have" in msg
    del data["definitions"]  # a UUID-named type the server does not know: a subgraph whose definition is missing
    assert "is a subgraph whose definition is not in the file" in _error(data, oi)


def test_a_group_node_whose_type_the_file_does_not_define_is_a_missing_class(oi):
    data = ui("image_pipeline")
    node(data, 9)["type"] = "workflow>Blur and preview"
    assert "the server has no node class 'workflow>Blur and preview'" in _error(data, oi)


def test_editor_drawn_widgets_are_refused(oi):
    data = {"nodes": [{"id": 1, "type": "Load3D", "mode": 0, "inputs": [], "widgets_values": ["a.glb", "", 1024, 1024]}],
            "links": []}
    assert "LOAD_3D" in _error(data, oi)


@pytest.mark.parametrize("change, words", [
    (lambda d: node(d, 9).update(inputs=[{"name": "images", "type": "IMAGE", "link": 99}]), "link 99"),
    (lambda d: d["links"].append([20, 77, 0, 9, 0, "IMAGE"]) or node(d, 9).update(
        inputs=[{"name": "images", "type": "IMAGE", "link": 20}]), "node 77, which does not exist"),
    (lambda d: d["links"].append([1, 4, 0, 3, 0, "MODEL"]), "two links have the id 1"),
    (lambda d: d["nodes"].append(copy.deepcopy(node(d, 9))), "two nodes have the id 9"),
    (lambda d: d["links"].append("nonsense"), "links[9] is not a link"),
    (lambda d: node(d, 9).update(widgets_values="ComfyUI"), "neither a list nor an object"),
    (lambda d: node(d, 9).update(mode=7), "unknown mode 7"),
])
def test_broken_graphs_are_errors(change, words, oi):
    data = ui("default_txt2img")
    change(data)
    assert words in _error(data, oi)


def test_a_loop_through_reroutes_is_an_error(oi):
    data = ui("image_pipeline")
    node(data, 6)["inputs"][0]["link"] = 11
    data["links"].append([11, 7, 0, 6, 0, "IMAGE"])
    assert "loop" in _error(data, oi)


def test_nothing_to_run_is_an_error(oi):
    data = ui("image_pipeline")
    for n in data["nodes"]:
        n["mode"] = 2
    assert "no node would run" in _error(data, oi)


# -- loading files ---------------------------------------------------------------------------------------
def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(WorkflowError, match="cannot read the workflow file: no such file"):
        load_workflow(tmp_path / "missing.json")
    with pytest.raises(WorkflowError, match="is a folder"):
        load_workflow(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "SaveImage",\n "inputs": {}')
    with pytest.raises(WorkflowError, match=r"bad.json:2: not valid JSON"):
        load_workflow(bad)
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(WorkflowError, match="not UTF-8"):
        load_workflow(bad)


@pytest.mark.parametrize("data, words", [
    ([], "a JSON list"),
    ({}, "an empty object"),
    ({"foo": 1}, "an object without nodes"),
    ("text", "a JSON str"),
    ({"nodes": [], "links": {}}, "'links' must be a list"),
])
def test_anything_else_is_not_a_workflow(data, words):
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow|must be a list") as e:
        parse_workflow(data)
    assert words in str(e.value)


def test_duplicate_json_keys_are_refused(tmp_path):
    f = tmp_path / "dup.json"
    f.write_text('{"1": {"class_type": "SaveImage", "inputs": {}}, "1": {"class_type": "PreviewImage", "inputs": {}}}')
    with pytest.raises(WorkflowError, match="duplicate key '1'"):
        load_workflow(f)


def test_a_bom_is_fine(tmp_path):
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + (DATA / "load_image.api.json").read_bytes())
    assert load_workflow(f).kind == "api"


def test_a_prompt_wrapped_in_a_request_body_is_api(oi):
    wf = parse_workflow({"prompt": expected("load_image"), "client_id": "x"})
    assert wf.kind == "api" and to_api(wf, oi) == expected("load_image")


@pytest.mark.parametrize("change, words", [
    (lambda p: p["5"]["inputs"].update(images=["42", 0]), "links to node 42, which is not in the prompt"),
    (lambda p: p["5"].pop("inputs"), "has no 'inputs' object"),
    (lambda p: p["5"].update(class_type=""), "has no class_type"),
    (lambda p: p["5"]["inputs"].update(images=[1, 2, 3]), "is a list but not a link"),
    (lambda p: p.update({"6": "x"}), "node 6 is not an object"),
])
def test_api_format_is_checked_for_shape(change, words):
    prompt = expected("load_image")
    change(prompt)
    with pytest.raises(WorkflowError) as e:
        parse_workflow(prompt)
    assert words in str(e.value)


def test_api_format_classes_must_exist_and_missing_titles_are_filled(oi):
    prompt = expected("load_image")
    del prompt["5"]["_meta"]
    assert to_api(parse_workflow(prompt), oi)["5"]["_meta"] == {"title": "Preview Image"}
    prompt["5"]["class_type"] = "SaveImageExtended"
    with pytest.raises(WorkflowError, match=r"node 5 \(SaveImageExtended\).*no node class"):
        to_api(parse_workflow(prompt), oi)


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for ctype, body in [(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)), *chunks, (b"IEND", b"")]:
        out += struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))
    return out


def test_a_png_saved_by_comfyui_gives_its_embedded_prompt(tmp_path, oi):
    prompt = json.dumps(expected("load_image"))
    workflow = json.dumps(ui("load_image"))
    f = tmp_path / "ComfyUI_00001_.png"
    f.write_bytes(_png([(b"tEXt", b"prompt\0" + prompt.encode()), (b"tEXt", b"workflow\0" + workflow.encode())]))
    wf = load_workflow(f)
    assert wf.kind == "api" and to_api(wf, oi) == expected("load_image")
    f.write_bytes(_png([(b"iTXt", b"workflow\0\1\0\0\0" + zlib.compress(workflow.encode()))]))
    assert load_workflow(f).kind == "ui"
    f.write_bytes(_png([]))
    with pytest.raises(WorkflowError, match="without an embedded ComfyUI workflow"):
        load_workflow(f)


# -- hashing ---------------------------------------------------------------------------------------------
def test_prompt_hash_is_stable_across_key_order_and_whitespace():
    a = expected("default_txt2img")
    text = json.dumps(a, indent=4, sort_keys=True)
    b = json.loads(text)
    b = {k: {"_meta": v["_meta"], "class_type": v["class_type"], "inputs": dict(reversed(v["inputs"].items()))}
         for k, v in reversed(b.items())}
    assert prompt_hash(a) == prompt_hash(b) == prompt_hash(json.loads(json.dumps(a, separators=(",", ":"))))
    assert len(prompt_hash(a)) == 64


def test_prompt_hash_changes_with_what_runs_only():
    a = expected("default_txt2img")
    b = copy.deepcopy(a)
    b["6"]["_meta"]["title"] = "Positive"
    assert prompt_hash(a) == prompt_hash(b)  # titles do not change what runs
    b["3"]["inputs"]["cfg"] = 8.0
    assert prompt_hash(a) == prompt_hash(b)  # 8.0 runs as 8
    b["3"]["inputs"]["cfg"] = 8.5
    assert prompt_hash(a) != prompt_hash(b)


# -- dynamic prompts -------------------------------------------------------------------------------------
class Pick:
    """An rng that always draws option ``k`` (the last one when there are fewer)."""

    def __init__(self, k: int):
        self.k = k

    def randrange(self, n: int) -> int:
        return min(self.k, n - 1)


def test_dynamic_prompts_are_resolved_like_the_editor_does_at_queue_time(oi):
    data = ui("default_txt2img")
    node(data, 6)["widgets_values"] = ["a {red|blue|{green|teal}} bottle // a note\non /* old */ a table"]
    node(data, 9)["widgets_values"] = ["out/{a|b}"]  # not a dynamicPrompts input: as it is
    assert to_api(Workflow(None, "ui", data), oi, rng=Pick(0))["6"]["inputs"]["text"] == "a red bottle \non  a table"
    assert to_api(Workflow(None, "ui", data), oi, rng=Pick(2))["6"]["inputs"]["text"].startswith("a teal bottle")
    assert to_api(Workflow(None, "ui", data), oi, rng=Pick(0))["9"]["inputs"]["filename_prefix"] == "out/{a|b}"


def test_escaped_braces_stay_literal_and_plain_text_is_untouched(oi):
    data = ui("default_txt2img")
    node(data, 6)["widgets_values"] = [r"json \{\"a\": 1\} a\|b"]
    node(data, 7)["widgets_values"] = ["text, watermark"]
    prompt = to_api(Workflow(None, "ui", data), oi, rng=Pick(5))
    assert prompt["6"]["inputs"]["text"] == r'json {\"a\": 1} a|b'
    assert prompt["7"]["inputs"]["text"] == "text, watermark"


def test_a_primitive_value_into_a_dynamic_prompt_is_resolved_too(oi):
    data = ui("txt2img_features")
    data["nodes"].append({"id": 30, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                          "outputs": [{"name": "STRING", "type": "STRING", "widget": {"name": "text"}, "links": [40]}],
                          "widgets_values": ["a {cat|dog}"]})
    node(data, 6)["inputs"][1]["link"] = 40
    data["links"].append([40, 30, 0, 6, 1, "STRING"])
    assert to_api(Workflow(None, "ui", data), oi, rng=Pick(1))["6"]["inputs"]["text"] == "a dog"


def test_api_prompts_are_not_resolved_again(oi):
    prompt = expected("default_txt2img")
    prompt["6"]["inputs"]["text"] = "a {red|blue} bottle"
    assert to_api(parse_workflow(prompt), oi, rng=Pick(0))["6"]["inputs"]["text"] == "a {red|blue} bottle"

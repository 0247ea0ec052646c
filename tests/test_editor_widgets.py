"""What the editor does with widget values: how each kind of widget holds and sends a value, upload and remote
combos, primitive nodes, text replacements, renamed classes, saved inputs for widgets that are gone.

Small graphs on ComfyUI 0.3.64's recorded /object_info; each expected prompt is what the real editor (frontend
1.27.10) sends for the same file (checked by loading it there), except where a test says otherwise.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from autopod.comfy.editor import convert as convert_editor
from autopod.comfy.workflow import Workflow, convert
from workflow_fixtures import object_info, oi  # noqa: F401


def n(node_id: int, type_: str, values: Any = None, *, inputs: list | None = None, outputs: list | None = None,
      **extra: Any) -> dict:
    node = {"id": node_id, "type": type_, "mode": 0, "order": node_id, "inputs": inputs or [],
            "outputs": outputs or [], "properties": {}}
    if values is not None:
        node["widgets_values"] = values
    return {**node, **extra}


def graph(*nodes: dict, links: list | None = None, **extra: Any) -> dict:
    return {"version": 0.4, "nodes": list(nodes), "links": links or [], "extra": {}, **extra}


def prompt(data: dict, oi: dict) -> dict:
    return convert(Workflow(None, "ui", data), oi).prompt


def image_out(*links: int) -> list:
    return [{"name": "IMAGE", "type": "IMAGE", "links": list(links)}]


def images_in(link: int) -> list:
    return [{"name": "images", "type": "IMAGE", "link": link}]


# -- values as each widget holds them ------------------------------------------------------------------------
@pytest.mark.parametrize("saved, sent", [([42], "42"), ([None], ""), (["a\r\nb\rc"], "a\nb\nc"), ([1.5], "1.5"),
                                         ([True], "true"), ([[1, "x"]], "1,x")])
def test_a_text_area_sends_text_whatever_it_was_given(saved, sent, oi):
    assert prompt(graph(n(1, "PrimitiveStringMultiline", saved)), oi)["1"]["inputs"] == {"value": sent}


def test_a_one_line_text_keeps_the_value_as_it_was_saved(oi):
    assert prompt(graph(n(1, "PrimitiveString", [42])), oi)["1"]["inputs"] == {"value": 42}


def test_numbers_are_sent_as_javascript_holds_them(oi):
    p = prompt(graph(n(1, "EmptyImage", [512.0, 64, 1, 0], outputs=image_out(1)),
                     n(2, "PreviewImage", inputs=images_in(1)), links=[[1, 1, 0, 2, 0, "IMAGE"]]), oi)
    assert p["1"]["inputs"]["width"] == 512 and isinstance(p["1"]["inputs"]["width"], int)
    seed = prompt(graph(n(1, "PrimitiveInt", [18446744073709551615, "fixed"])), oi)["1"]["inputs"]["value"]
    assert seed == 18446744073709552000  # a JavaScript number: the nearest double, written as an integer


def test_preview_any_sends_its_empty_preview_text(oi):
    p = prompt(graph(n(1, "PrimitiveInt", [3, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [1]}]),
                     n(2, "PreviewAny", [], inputs=[{"name": "source", "type": "*", "link": 1}]),
                     links=[[1, 1, 0, 2, 0, "INT"]]), oi)
    assert p["2"]["inputs"] == {"preview": "", "source": ["1", 0]}


@pytest.mark.parametrize("cls, saved, sent", [
    ("LoadImage", ["cat.png", "image"], {"image": "cat.png"}),
    ("LoadImage", ["", "image"], {"image": "example.png"}),  # nothing chosen: the file it started with
    ("LoadImage", [], {"image": "example.png"}),
    ("LoadImageOutput", ["render.png", False, "refresh", "image"], {"image": "render.png [output]",
                                                                    "refresh": "refresh"}),
    ("LoadImageOutput", ["done.png [temp]", False, "refresh", "image"], {"image": "done.png [temp]",
                                                                         "refresh": "refresh"}),
])
def test_an_upload_combo_sends_the_file_as_its_upload_widget_reads_it(cls, saved, sent, oi):
    # LoadImageOutput's choices come from the server (a remote combo): once the editor has that list, it sets the
    # value to the list's first file. What it sends before, and what the recording of the templates holds
    # (flux_kontext_dev_basic.json), is the saved file; autopod sends that.
    outs = [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}]
    p = prompt(graph(n(1, cls, saved, outputs=outs), n(2, "PreviewImage", inputs=images_in(1)),
                     links=[[1, 1, 0, 2, 0, "IMAGE"]]), oi)
    assert p["1"]["inputs"] == sent


# -- primitive nodes -----------------------------------------------------------------------------------------
def _primitive_into(cls: str, values: list, widget: str, wtype: str, primitive: list | None) -> dict:
    prim = n(9, "PrimitiveNode", primitive,
             outputs=[{"name": wtype, "type": wtype, "links": [5], "widget": {"name": widget}}],
             properties={"Run widget replace on values": False})
    target = n(2, cls, values, inputs=[{"name": "image" if cls != "LatentUpscaleBy" else "samples",
                                        "type": "IMAGE" if cls != "LatentUpscaleBy" else "LATENT", "link": None},
                                       {"name": widget, "type": wtype, "widget": {"name": widget}, "link": 5}])
    return graph(prim, target, links=[[5, 9, 0, 2, 1, wtype]])


@pytest.mark.parametrize("cls, values, widget, wtype, primitive, sent", [
    ("LatentUpscaleBy", ["nearest-exact", 1.5], "scale_by", "FLOAT", [1.23456, "fixed"], 1.23),  # step 0.01
    ("ImageBlur", [1, 1.0], "blur_radius", "INT", [99, "fixed"], 31),  # kept within the input's range
    ("ImageBlur", [1, 1.0], "blur_radius", "INT", [4.6, "fixed"], 5),  # an INT rounds
    ("ImageBlur", [6, 1.0], "blur_radius", "INT", None, 6),  # a primitive without a value takes the input's
])
def test_a_primitive_node_s_value_is_fitted_to_the_widget_it_feeds(cls, values, widget, wtype, primitive, sent, oi):
    p = prompt(_primitive_into(cls, values, widget, wtype, primitive), oi)
    assert "9" not in p and p["2"]["inputs"][widget] == sent


# -- what the editor changes as it loads or queues -----------------------------------------------------------
def test_renamed_classes_and_sampler_names_are_mapped_as_the_editor_does(oi):
    ks = n(3, "KSampler", [7, "fixed", 20, 8, "sample_euler", "normal", 1])
    result = convert(Workflow(None, "ui", graph(n(1, "T2IAdapterLoader", ["t2i.pth"]), ks)), oi)
    assert result.prompt["1"]["class_type"] == "ControlNetLoader"
    assert result.prompt["3"]["inputs"]["sampler_name"] == "euler"
    assert result.notes == ["node 3 (KSampler): sampler_name 'euler' (was saved as 'sample_euler')"]


def test_a_save_nodes_prefix_takes_dates_and_other_nodes_values(oi):
    data = graph(n(1, "EmptyImage", [640, 64, 1, 0], outputs=image_out(1), title="Canvas",
                   properties={"Node name for S&R": "EmptyImage"}),
                 n(2, "SaveImage", ["%date:yyyy-MM-dd%/%Canvas.height%_%EmptyImage.width%_%nope.x%"],
                   inputs=images_in(1)),
                 links=[[1, 1, 0, 2, 0, "IMAGE"]])
    result = convert_editor(data, oi, now=lambda: dt.datetime(2026, 3, 4, 5, 6, 7))
    assert result.prompt["2"]["inputs"]["filename_prefix"] == "2026-03-04/64_640_%nope.x%"


def test_a_saved_input_for_a_widget_the_node_lacks_is_dropped_a_plain_extra_input_is_sent(oi):
    outs = [{"name": "INT", "type": "INT", "links": [1, 2]}]
    blur = n(2, "ImageBlur", [1, 1.0], inputs=[{"name": "image", "type": "IMAGE", "link": None},
                                               {"name": "radius", "type": "INT", "widget": {"name": "radius"},
                                                "link": 1},
                                               {"name": "extra", "type": "INT", "link": 2}])
    p = prompt(graph(n(1, "PrimitiveInt", [4, "fixed"], outputs=outs), blur,
                     links=[[1, 1, 0, 2, 1, "INT"], [2, 1, 0, 2, 2, "INT"]]), oi)
    assert p["2"]["inputs"] == {"blur_radius": 1, "sigma": 1.0, "extra": ["1", 0]}


def test_native_reroutes_on_a_link_change_nothing(oi):
    data = graph(n(1, "EmptyImage", [64, 64, 1, 0], outputs=image_out(1)), n(2, "PreviewImage", inputs=images_in(1)),
                 links=[[1, 1, 0, 2, 0, "IMAGE"]])
    data["extra"] = {"reroutes": [{"id": 1, "pos": [10, 10], "linkIds": [1]},
                                  {"id": 2, "parentId": 1, "pos": [20, 20], "linkIds": [1]}],
                     "linkExtensions": [{"id": 1, "parentId": 2}]}
    assert prompt(data, oi)["2"]["inputs"] == {"images": ["1", 0]}


def test_a_remote_combo_never_loaded_sends_what_the_editor_shows_meanwhile(oi):
    # Before its list of files arrives (see above); after, the editor would send the list's first file.
    p = prompt(graph(n(1, "LoadImageOutput", [], outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1]}]),
                     n(2, "PreviewImage", inputs=images_in(1)), links=[[1, 1, 0, 2, 0, "IMAGE"]]), oi)
    assert p["1"]["inputs"] == {"image": "Loading... [output]", "refresh": "refresh"}


@pytest.mark.parametrize("second, second_widget, sent", [
    ("ImageBlur", "blur_radius", {"2": 31, "3": 31}),  # one range for both: 1..31
    ("EmptyImage", "width", {"2": 31, "3": 31}),  # specs that differ are not merged: the first input's range
])
def test_a_primitive_feeding_several_inputs_is_fitted_to_them(second, second_widget, sent, oi):
    data = _primitive_into("ImageBlur", [1, 1.0], "blur_radius", "INT", [99, "fixed"])
    data["nodes"][0]["outputs"][0]["links"] = [5, 6]
    values = [1, 1.0] if second == "ImageBlur" else [64, 64, 1, 0]
    inputs = ([{"name": "image", "type": "IMAGE", "link": None}] if second == "ImageBlur" else []) + [
        {"name": second_widget, "type": "INT", "widget": {"name": second_widget}, "link": 6}]
    data["nodes"].append(n(3, second, values, inputs=inputs))
    data["links"].append([6, 9, 0, 3, len(inputs) - 1, "INT"])
    p = prompt(data, oi)
    assert {k: p[k]["inputs"][w] for k, w in (("2", "blur_radius"), ("3", second_widget))} == sent

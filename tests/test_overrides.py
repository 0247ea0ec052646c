"""--set and --input: parsing, naming nodes, checking values against the schema (autopod.comfy.overrides)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from autopod.comfy.overrides import (InputFile, Override, apply_overrides, check_prompt, check_value, parse_input,
                                     parse_set, prompt_problems, resolve_input, resolve_node, resolve_target,
                                     set_uploaded)
from autopod.comfy.workflow import Workflow, to_api
from workflow_fixtures import DATA, err, object_info, oi, pipeline, txt2img  # noqa: F401


@pytest.fixture
def txt2img() -> dict:
    """The text-to-image prompt with titled prompts (6 "Positive Prompt", 7 "Negative Prompt")."""
    return json.loads((DATA / "txt2img_features.api.json").read_text())


@pytest.fixture
def pipeline() -> dict:
    """Model-free: 1 EmptyImage, 4 ImageScale, 8 SaveImage "Result", 9 ImageBlur, 10 PreviewImage."""
    return json.loads((DATA / "image_pipeline.api.json").read_text())


# -- parsing --set -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, node, name, value", [
    ("6.text=a cat", "6", "text", "a cat"),
    ("KSampler.seed=42", "KSampler", "seed", "42"),
    ("Positive Prompt.text=a cat, red", "Positive Prompt", "text", "a cat, red"),
    ("6.text=a=b", "6", "text", "a=b"),  # the value starts after the first =
    ("SD1.5 Loader.ckpt_name=x.safetensors", "SD1.5 Loader", "ckpt_name", "x.safetensors"),  # last dot
    ("6.text=", "6", "text", ""),
    ("6.text=@@home", "6", "text", "@home"),  # @@: a literal @
])
def test_parse_set(spec, node, name, value):
    assert parse_set(spec) == Override(node, name, value, spec)


@pytest.mark.parametrize("spec, words", [
    ("6.text", "expected NODE.INPUT=VALUE"),
    ("seed=42", "with a dot between the node and the input"),
    (".seed=42", "must not be empty"),
    ("KSampler.=42", "must not be empty"),
    ("6.text=@", "'@' must be followed by a file name"),
])
def test_parse_set_errors(spec, words):
    assert words in err(parse_set, spec)


def test_a_value_from_a_file(tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("a cat\non a mat\n", encoding="utf-8")
    assert parse_set(f"6.text=@{f}").value == "a cat\non a mat"  # one trailing newline dropped
    f.write_bytes("snow, ünïcode\r\n\r\n".encode())
    assert parse_set(f"6.text=@{f}").value == "snow, ünïcode\r\n"
    assert "no such file" in err(parse_set, f"6.text=@{tmp_path / 'missing.txt'}")
    assert "is a folder" in err(parse_set, f"6.text=@{tmp_path}")
    f.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in err(parse_set, f"6.text=@{f}")


def test_the_file_reader_is_injectable():
    seen = []
    o = parse_set("6.text=@p.txt", read_file=lambda p: seen.append(p) or "from memory")
    assert o.value == "from memory" and seen == ["p.txt"]


# -- naming nodes --------------------------------------------------------------------------------------
def test_resolve_node_by_id_class_or_title(txt2img):
    assert resolve_node(txt2img, "6") == "6"
    assert resolve_node(txt2img, "KSampler") == "3"
    assert resolve_node(txt2img, "Positive Prompt") == "6"
    assert resolve_node(txt2img, "positive prompt") == "6"  # case is a fallback
    assert resolve_node(txt2img, "Load Checkpoint") == "4"  # the display-name title


def test_an_ambiguous_reference_lists_the_candidates(txt2img):
    msg = err(resolve_node, txt2img, "CLIPTextEncode")
    assert "names 2 nodes" in msg
    assert '6 (CLIPTextEncode "Positive Prompt")' in msg and '7 (CLIPTextEncode "Negative Prompt")' in msg


def test_a_unique_title_beats_an_ambiguous_class(txt2img):
    txt2img["7"]["_meta"]["title"] = "CLIPTextEncode"
    assert resolve_node(txt2img, "CLIPTextEncode") == "7"


def test_an_unknown_reference_suggests_close_names(txt2img):
    msg = err(resolve_node, txt2img, "KSamplr")
    assert "no node 'KSamplr'" in msg and "did you mean 'KSampler' (3 (KSampler))" in msg
    assert "nodes: 3 (KSampler)" in err(resolve_node, txt2img, "zzz")


def test_the_longest_node_reference_that_exists_wins(txt2img):
    txt2img["4"]["_meta"]["title"] = "SD1.5 Loader"
    txt2img["5"]["_meta"]["title"] = "SD1"
    assert resolve_target(txt2img, "SD1.5 Loader.ckpt_name") == ("4", "ckpt_name")
    assert resolve_target(txt2img, "SD1.width") == ("5", "width")
    # An input name with a dot: no node is called "KSampler.model", so the split moves left.
    assert resolve_target(txt2img, "KSampler.model.seed") == ("3", "model.seed")
    assert "no node 'Nope.x'" in err(resolve_target, txt2img, "Nope.x.y")


# -- checking values -----------------------------------------------------------------------------------
def check(cls, name, value, oi, label="node 3 (KSampler)"):
    return check_value(cls, name, value, oi, node_label=label)


@pytest.mark.parametrize("value, out", [("42", 42), ("0", 0), ("18446744073709551615", 18446744073709551615), (7, 7)])
def test_int_values(value, out, oi):
    assert check("KSampler", "seed", value, oi) == out


@pytest.mark.parametrize("value", ["1_0", "+2", " 2", "2.0", "0x10", "", "two", True, 2.0, None])
def test_ints_are_read_strictly(value, oi):
    assert "takes a whole number" in err(check, "KSampler", "steps", value, oi)


def test_out_of_range_values_are_refused_never_clamped(oi):
    msg = err(check, "KSampler", "steps", "0", oi)
    assert msg == "node 3 (KSampler) input 'steps': 0 is below the minimum 1 (allowed 1..10000)"
    assert "above the maximum 10000" in err(check, "KSampler", "steps", "10001", oi)
    assert "above the maximum 100.0" not in err(check, "KSampler", "cfg", "100.5", oi)
    assert "100.5 is above the maximum 100 (allowed 0..100)" in err(check, "KSampler", "cfg", "100.5", oi)


@pytest.mark.parametrize("value, out", [("7.5", 7.5), ("8", 8.0), (".5", 0.5), ("1e1", 10.0), ("7.55", 7.55), (3, 3.0)])
def test_float_values_step_is_not_enforced(value, out, oi):
    got = check("KSampler", "cfg", value, oi)
    assert got == out and isinstance(got, float)


@pytest.mark.parametrize("value, words", [("nan", "takes a number"), ("inf", "takes a number"),
                                          ("1e400", "finite"), ("+1", "takes a number"), ("1,5", "takes a number"),
                                          (10 ** 400, "finite"), (True, "takes a number")])
def test_bad_floats(value, words, oi):
    assert words in err(check, "KSampler", "cfg", value, oi)


@pytest.mark.parametrize("value, out", [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True),
                                        ("NO", False), (True, True), (0, False)])
def test_boolean_values(value, out, oi):
    assert check("ImageStitch", "match_image_size", value, oi) is out


def test_bad_boolean(oi):
    assert "takes true or false" in err(check, "ImageStitch", "match_image_size", "maybe", oi)


def test_strings_are_taken_as_they_are(oi):
    assert check("CLIPTextEncode", "text", "  a cat\non a mat  ", oi) == "  a cat\non a mat  "
    assert check("SaveImage", "filename_prefix", 42, oi) == "42"


def test_combo_values_in_both_styles(oi):
    assert check("KSampler", "sampler_name", "dpmpp_2m", oi) == "dpmpp_2m"  # legacy [[...], {}]
    assert check("ImageBlend", "blend_mode", "multiply", oi) == "multiply"  # v3 ["COMBO", {"options"}]
    assert check("RunwayImageToVideoNodeGen3a", "duration", "10", oi) == 10  # non-text choices
    assert check("LoadImageOutput", "image", "out.png [output]", oi) == "out.png [output]"  # remote: unknown


def test_a_bad_combo_value_names_the_nearest_choices(oi):
    msg = err(check, "KSampler", "sampler_name", "eulr", oi)
    assert msg.startswith("node 3 (KSampler) input 'sampler_name': 'eulr' is not one of its 42 choice(s); nearest: ")
    assert "'euler'" in msg
    assert "allowed: 'normal', 'multiply'" in err(check, "ImageBlend", "blend_mode", "zzzzzz", oi)
    assert "is not one of" in err(check, "ImageBlend", "blend_mode", "Multiply", oi)  # no case folding


def test_a_model_file_that_is_not_on_the_pod(oi):
    msg = err(check, "CheckpointLoaderSimple", "ckpt_name", "sdxl.safetensors", oi, label="node 4 (CheckpointLoaderSimple)")
    assert "no choices" in msg and "no files in that model folder" in msg
    info = copy.deepcopy(oi)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["sd_xl_base_1.0.safetensors",
                                                                          "v1-5-pruned-emaonly.safetensors"]
    assert check("CheckpointLoaderSimple", "ckpt_name", "v1-5-pruned-emaonly.safetensors", info) == \
        "v1-5-pruned-emaonly.safetensors"
    assert "nearest: 'sd_xl_base_1.0.safetensors'" in err(check, "CheckpointLoaderSimple", "ckpt_name",
                                                           "sd_xl_base.safetensors", info)


def test_inputs_the_schema_does_not_have(oi):
    msg = err(check, "KSampler", "sed", "1", oi)
    assert "node 3 (KSampler) has no input 'sed' (did you mean 'seed'?); its inputs: model, seed, steps" in msg
    assert "input 'prompt' is hidden: the server fills it; its inputs: images, filename_prefix" in \
        err(check, "SaveImage", "prompt", "x", oi)
    assert "takes a link (MODEL), not a value" in err(check, "KSampler", "model", "x", oi)
    assert "no node class 'Nope'" in err(check, "Nope", "x", "1", oi)


# -- applying ------------------------------------------------------------------------------------------
def test_apply_overrides_returns_a_new_prompt_and_what_it_did(txt2img, oi):
    before = copy.deepcopy(txt2img)
    new, applied = apply_overrides(txt2img, [parse_set("KSampler.seed=7"), parse_set("Positive Prompt.text=a dog"),
                                             parse_set("5.width=1024"), parse_set("KSampler.cfg=6")], oi)
    assert txt2img == before
    assert new["3"]["inputs"]["seed"] == 7 and new["3"]["inputs"]["cfg"] == 6.0
    assert new["6"]["inputs"]["text"] == "a dog" and new["5"]["inputs"]["width"] == 1024
    assert applied[0] == {"node": "3", "class_type": "KSampler", "title": "KSampler", "input": "seed", "value": 7,
                          "replaced_link": None}
    assert applied[1]["title"] == "Positive Prompt"


def test_setting_a_linked_input_replaces_the_link_and_says_so(txt2img, oi):
    new, applied = apply_overrides(txt2img, [parse_set("KSampler.steps=20")], oi)  # steps came from PrimitiveInt 18
    assert new["3"]["inputs"]["steps"] == 20
    assert applied[0]["replaced_link"] == ["18", 0]


def test_the_last_override_of_an_input_wins(txt2img, oi):
    new, applied = apply_overrides(txt2img, [parse_set("3.steps=10"), parse_set("KSampler.steps=12")], oi)
    assert new["3"]["inputs"]["steps"] == 12 and [a["value"] for a in applied] == [10, 12]


def test_a_bad_override_names_node_input_and_value(txt2img, oi):
    msg = err(apply_overrides, txt2img, [parse_set("Positive Prompt.steps=5")], oi)
    assert msg.startswith('node 6 (CLIPTextEncode "Positive Prompt") has no input \'steps\'')
    msg = err(apply_overrides, txt2img, [parse_set("KSampler.steps=-1")], oi)
    assert msg == "node 3 (KSampler) input 'steps': -1 is below the minimum 1 (allowed 1..10000)"


# -- --input -------------------------------------------------------------------------------------------
@pytest.fixture
def cat(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp_path / "cat.png"


def test_parse_input(cat):
    assert parse_input("LoadImage.image=./cat.png") == InputFile("LoadImage", "image", Path("cat.png"),
                                                                 "LoadImage.image=./cat.png")
    assert parse_input("12=cat.png") == InputFile("12", None, Path("cat.png"), "12=cat.png")
    assert parse_input(f"12={cat}").path == cat


@pytest.mark.parametrize("spec, words", [("12=dog.png", "dog.png: cannot read the input file: no such file"),
                                         ("12=.", "cannot read the input file: it is a folder"),
                                         ("12", "expected NODE.INPUT=VALUE"), ("12=", "expected NODE=PATH"),
                                         ("=cat.png", "must not be empty")])
def test_parse_input_errors(spec, words, cat):
    assert words in err(parse_input, spec)


def test_resolve_input_picks_the_upload_input(cat, oi):
    prompt = json.loads((DATA / "load_image.api.json").read_text())
    t = resolve_input(prompt, parse_input("1=cat.png"), oi)
    assert (t.node, t.input, t.class_type, t.title, t.path) == ("1", "image", "LoadImage", "Load Image", Path("cat.png"))
    prompt["6"] = {"class_type": "LoadImageMask", "inputs": {"image": "example.png", "channel": "red"}}
    assert resolve_input(prompt, parse_input("LoadImageMask=cat.png"), oi).input == "image"
    assert resolve_input(prompt, parse_input("LoadImage.image=cat.png"), oi).node == "1"
    prompt["1"]["_meta"]["title"] = "Load v1.2"  # a title with a dot, and no input named
    assert (resolve_input(prompt, parse_input("Load v1.2=cat.png"), oi).node,
            resolve_input(prompt, parse_input("Load v1.2=cat.png"), oi).input) == ("1", "image")


def test_resolve_input_errors(cat, oi):
    prompt = json.loads((DATA / "load_image.api.json").read_text())
    assert "has no upload input" in err(resolve_input, prompt, parse_input("SaveImage=cat.png"), oi)
    assert "takes a link (IMAGE), not a value" in err(resolve_input, prompt, parse_input("ImageScale.image=cat.png"), oi)
    assert "takes INT values, not a file name" in err(resolve_input, prompt, parse_input("ImageScale.width=cat.png"), oi)
    assert "no node 'Nope'" in err(resolve_input, prompt, parse_input("Nope=cat.png"), oi)


def test_set_uploaded(cat, oi):
    prompt = json.loads((DATA / "load_image.api.json").read_text())
    t = resolve_input(prompt, parse_input("1=cat.png"), oi)
    new = set_uploaded(prompt, t, "cat (1).png")
    assert new["1"]["inputs"]["image"] == "cat (1).png" and prompt["1"]["inputs"]["image"] == "example.png"
    assert set_uploaded(prompt, t, "cat.png", "jobs")["1"]["inputs"]["image"] == "jobs/cat.png"


# -- checking a whole prompt -----------------------------------------------------------------------------

def test_the_shipped_model_free_prompts_have_no_problems(pipeline, oi):
    assert prompt_problems(pipeline, oi) == []
    assert prompt_problems(json.loads((DATA / "load_image.api.json").read_text()), oi) == []


def test_a_model_the_pod_does_not_have_is_a_problem(oi):
    prompt = json.loads((DATA / "default_txt2img.api.json").read_text())
    assert prompt_problems(prompt, oi) == [
        "node 4 (CheckpointLoaderSimple \"Load Checkpoint\") input 'ckpt_name': 'v1-5-pruned-emaonly.safetensors' "
        "is not available: the server lists no choices for it (for a model loader: no files in that model folder "
        "on the pod)"]


def test_a_required_input_left_out_by_a_bypass_is_a_problem(oi):
    data = json.loads((DATA / "default_txt2img.json").read_text())
    next(n for n in data["nodes"] if n["id"] == 8)["mode"] = 4
    problems = prompt_problems(to_api(Workflow(None, "ui", data), oi), oi)
    assert problems[-1] == ("node 9 (SaveImage \"Save Image\") needs input 'images' (IMAGE); it is missing "
                            "(an input fed by a muted or bypassed node is left out)")


@pytest.mark.parametrize("inputs, words", [
    ({"images": ["18", 0]}, "input 'images' takes IMAGE but is linked to node 18 (PrimitiveInt \"Steps\") output 0 (INT)"),
    ({"images": ["18", 3]}, "links to output 3 of node 18 (PrimitiveInt \"Steps\"), which has 1 output(s)"),
    ({"images": ["77", 0]}, "links to node 77, which is not in the prompt"),
    ({"images": "a.png"}, "input 'images' takes a link (IMAGE), not the value 'a.png'"),
])
def test_link_and_value_problems(inputs, words, txt2img, oi):
    txt2img["9"]["inputs"] = {**inputs, "filename_prefix": "x"}
    assert [p for p in prompt_problems(txt2img, oi) if words in p], prompt_problems(txt2img, oi)


def test_the_server_reads_other_scalars_as_text(pipeline, oi):
    pipeline["8"]["inputs"]["filename_prefix"] = 5
    assert prompt_problems(pipeline, oi) == []


def test_ints_saved_as_whole_floats_are_fine_and_out_of_range_ones_are_not(pipeline, oi):
    pipeline["1"]["inputs"]["width"] = 512.0
    assert prompt_problems(pipeline, oi) == []
    pipeline["1"]["inputs"]["width"] = 0
    assert prompt_problems(pipeline, oi) == [
        "node 1 (EmptyImage) input 'width': 0 is below the minimum 1 (allowed 1..16384)"]


def test_skip_leaves_an_uploaded_file_unchecked_and_check_prompt_raises_the_first(oi):
    prompt = json.loads((DATA / "load_image.api.json").read_text())
    prompt["1"]["inputs"]["image"] = "cat (1).png"
    prompt["99"] = {"class_type": "Nope", "inputs": {}}
    assert len(prompt_problems(prompt, oi)) == 2
    assert prompt_problems(prompt, oi, skip={("1", "image")}) == ["node 99 (Nope): the server has no node class 'Nope'"]
    msg = err(check_prompt, prompt, oi)
    assert "'cat (1).png' is not one of its 1 choice(s)" in msg and msg.endswith("(and 1 more problem(s))")


def test_an_ambiguous_override_names_the_flag_and_the_candidates(txt2img, oi):
    msg = err(apply_overrides, txt2img, [parse_set("CLIPTextEncode.text=a cat")], oi)
    assert msg.startswith("--set CLIPTextEncode.text: 'CLIPTextEncode' names 2 nodes: 6 (CLIPTextEncode")

"""Sweeps, repeats and seeds (autopod.comfy.batch)."""

from __future__ import annotations

import copy
import random

import pytest

from autopod.comfy.batch import MAX_VARIANTS, RANDOM_MAX, Sweep, expand, parse_sweep, seed_inputs
from workflow_fixtures import DATA, err, object_info, oi, pipeline, txt2img  # noqa: F401


class Ends(random.Random):
    """An rng that always draws the low (or high) end of the range it is given."""

    def __init__(self, high: bool = False):
        super().__init__(0)
        self.high = high

    def randint(self, a, b):
        return b if self.high else a


# -- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, node, name, values", [
    ("KSampler.seed=1..4", "KSampler", "seed", [1, 2, 3, 4]),
    ("KSampler.seed=-1..1", "KSampler", "seed", [-1, 0, 1]),
    ("KSampler.seed=7..7", "KSampler", "seed", [7]),
    ("1.width=512,768,1024", "1", "width", ["512", "768", "1024"]),
    ("1.width=512, 768", "1", "width", ["512", "768"]),
    ("KSampler.sampler_name=euler", "KSampler", "sampler_name", ["euler"]),
    ("Positive Prompt.text=@@handle", "Positive Prompt", "text", ["@handle"]),
    ("SD1.5 Loader.ckpt_name=a,b", "SD1.5 Loader", "ckpt_name", ["a", "b"]),
])
def test_parse_sweep(spec, node, name, values):
    assert parse_sweep(spec) == Sweep(node, name, values, spec)


def test_a_sweep_from_a_file_has_one_value_per_line(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a cat, red\n\n  \na dog, blue\r\nan owl\n", encoding="utf-8")
    assert parse_sweep(f"6.text=@{f}").values == ["a cat, red", "a dog, blue", "an owl"]
    f.write_text("\n\n")
    assert "has no values" in err(parse_sweep, f"6.text=@{f}")
    assert "no such file" in err(parse_sweep, f"6.text=@{tmp_path / 'nope.txt'}")


@pytest.mark.parametrize("spec, words", [
    ("KSampler.seed=8..1", "is empty"),
    (f"KSampler.seed=1..{MAX_VARIANTS + 1}", "at most"),
    ("1.width=512,,768", "no empty values"),
    ("1.width=512,", "no empty values"),
    ("1.width=", "no empty values"),
    ("width=512", "dot between the node and the input"),
    ("6.text=@", "must be followed by a file name"),
])
def test_parse_sweep_errors(spec, words):
    assert words in err(parse_sweep, spec)


# -- seeds -----------------------------------------------------------------------------------------------
def test_seed_inputs_are_the_seed_like_ints(txt2img, pipeline, oi):
    assert seed_inputs(txt2img, oi) == [("3", "seed")]  # PrimitiveInt 18 feeds steps, not a seed
    assert seed_inputs(pipeline, oi) == []


def test_other_samplers_seeds(oi):
    prompt = {"10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
              "11": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 2}},
              "2": {"class_type": "KSampler", "inputs": {"seed": 3}},
              "3": {"class_type": "EmptyImage", "inputs": {"width": 4}}}
    assert seed_inputs(prompt, oi) == [("2", "seed"), ("10", "noise_seed"), ("11", "noise_seed")]


def test_a_seed_fed_by_a_primitive_int_is_that_primitives_value(txt2img, oi):
    txt2img["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 5}, "_meta": {"title": "Seed"}}
    txt2img["3"]["inputs"]["seed"] = ["20", 0]
    assert seed_inputs(txt2img, oi) == [("20", "value")]
    # PrimitiveInt allows negatives; what it feeds does not, so random seeds stay in KSampler's range.
    low = expand(txt2img, oi, repeat=1, seed="random", rng=Ends())[0]
    high = expand(txt2img, oi, repeat=1, seed="random", rng=Ends(high=True))[0]
    assert low.seeds == {"20.value": 0} and high.seeds == {"20.value": RANDOM_MAX}
    assert low.prompt["20"]["inputs"]["value"] == 0 and low.prompt["3"]["inputs"]["seed"] == ["20", 0]


# -- expanding -------------------------------------------------------------------------------------------
def test_no_sweeps_and_one_repeat_is_the_prompt_itself(txt2img, oi):
    [v] = expand(txt2img, oi)
    assert v.index == 0 and v.prompt == txt2img and v.prompt is not txt2img
    assert v.overrides == {} and v.seeds == {"3.seed": 42}


def test_sweeps_form_a_cross_product_in_a_fixed_order(txt2img, oi):
    vs = expand(txt2img, oi, sweeps=[parse_sweep("KSampler.cfg=5,7"), parse_sweep("3.steps=10..12")])
    assert [v.index for v in vs] == list(range(6))
    assert [v.overrides for v in vs] == [{"3.cfg": c, "3.steps": s} for c in (5.0, 7.0) for s in (10, 11, 12)]
    assert all(isinstance(v.prompt["3"]["inputs"]["cfg"], float) for v in vs)
    assert [(v.prompt["3"]["inputs"]["cfg"], v.prompt["3"]["inputs"]["steps"]) for v in vs][:2] == [(5.0, 10), (5.0, 11)]
    assert txt2img["3"]["inputs"]["cfg"] == 7.5  # the input prompt is not changed


def test_repeat_with_increment_shares_each_repeats_seed_across_the_sweep(txt2img, oi):
    vs = expand(txt2img, oi, sweeps=[parse_sweep("5.width=512,768")], repeat=3, seed="increment")
    assert len(vs) == 6
    assert [(v.overrides["5.width"], v.seeds["3.seed"]) for v in vs] == [
        (512, 42), (768, 42), (512, 43), (768, 43), (512, 44), (768, 44)]
    assert [v.prompt["3"]["inputs"]["seed"] for v in vs] == [42, 42, 43, 43, 44, 44]


def test_increment_wraps_past_the_maximum(txt2img, oi):
    txt2img["3"]["inputs"]["seed"] = 18446744073709551615
    assert [v.seeds["3.seed"] for v in expand(txt2img, oi, repeat=3, seed="increment")] == [
        18446744073709551615, 0, 1]


def test_fixed_keeps_the_workflows_seeds(txt2img, oi):
    assert [v.seeds for v in expand(txt2img, oi, repeat=2)] == [{"3.seed": 42}, {"3.seed": 42}]


def test_random_seeds_come_from_the_injected_rng_within_range(txt2img, oi):
    a = expand(txt2img, oi, repeat=4, seed="random", rng=random.Random(7))
    b = expand(txt2img, oi, repeat=4, seed="random", rng=random.Random(7))
    assert [v.seeds for v in a] == [v.seeds for v in b]
    seeds = [v.seeds["3.seed"] for v in a]
    assert len(set(seeds)) == 4 and all(0 <= s <= RANDOM_MAX for s in seeds)
    assert [v.prompt["3"]["inputs"]["seed"] for v in a] == seeds


def test_a_swept_seed_is_left_to_the_sweep(txt2img, oi):
    vs = expand(txt2img, oi, sweeps=[parse_sweep("KSampler.seed=1..3")], seed="random", rng=random.Random(1))
    assert [v.prompt["3"]["inputs"]["seed"] for v in vs] == [1, 2, 3]
    assert all(v.seeds == {} for v in vs) and [v.overrides for v in vs] == [{"3.seed": s} for s in (1, 2, 3)]


def test_a_batch_without_seeds(pipeline, oi):
    vs = expand(pipeline, oi, sweeps=[parse_sweep("ImageBlur.blur_radius=1,5")], repeat=2, seed="random")
    assert [v.overrides for v in vs] == [{"9.blur_radius": 1}, {"9.blur_radius": 5}] * 2
    assert all(v.seeds == {} for v in vs)


def test_every_value_is_checked_before_any_variant_exists(txt2img, oi):
    assert err(expand, txt2img, oi, sweeps=[parse_sweep("KSampler.cfg=5,7"), parse_sweep("KSampler.steps=0..3")]) == \
        "node 3 (KSampler) input 'steps': 0 is below the minimum 1 (allowed 1..10000)"
    assert "'eulr' is not one of" in err(expand, txt2img, oi, sweeps=[parse_sweep("3.sampler_name=euler,eulr")])
    assert "no node 'KSamplr'" in err(expand, txt2img, oi, sweeps=[parse_sweep("KSamplr.seed=1..2")])


def test_the_same_input_swept_twice_is_an_error(txt2img, oi):
    msg = err(expand, txt2img, oi, sweeps=[parse_sweep("KSampler.cfg=5,7"), parse_sweep("3.cfg=6")])
    assert "swept twice" in msg


@pytest.mark.parametrize("kw, words", [
    ({"seed": "randomize"}, "--seed must be one of fixed, random, increment"),
    ({"repeat": 0}, "--repeat must be a whole number of at least 1"),
    ({"repeat": True}, "--repeat must be"),
    ({"repeat": "3"}, "--repeat must be"),
    ({"repeat": MAX_VARIANTS + 1}, f"at most {MAX_VARIANTS}"),
])
def test_bad_batch_settings(kw, words, txt2img, oi):
    assert words in err(expand, txt2img, oi, **kw)


def test_the_product_is_capped(txt2img, oi):
    msg = err(expand, txt2img, oi, sweeps=[parse_sweep("KSampler.seed=1..1000"), parse_sweep("3.steps=1..11")])
    assert "11000 variants" in msg


def test_variants_do_not_share_state(txt2img, oi):
    vs = expand(txt2img, oi, repeat=2)
    vs[0].prompt["6"]["inputs"]["text"] = "changed"
    assert vs[1].prompt["6"]["inputs"]["text"] == txt2img["6"]["inputs"]["text"] != "changed"
    assert copy.deepcopy(vs[1].prompt) == txt2img

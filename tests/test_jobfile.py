"""Job files (autopod.comfy.jobfile): strict YAML or JSON, paths relative to the file, errors with lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopod.comfy.jobfile import Job, load_job
from autopod.comfy.workflow import WorkflowError
from autopod.core.errors import ExitCode

FULL = """\
# A whole job
workflow: flows/txt2img.json
set:
  - KSampler.steps=30
  - "Positive Prompt.text=@prompts/cat.txt"
  - "Negative Prompt.text=@@not a file"
input:
  - LoadImage=photos/cat.png
  - 12.image=photos/cat.png
sweep:
  - KSampler.cfg=5,6.5,8
  - "6.text=@prompts/many.txt"
repeat: 4
seed: random
output: "renders/{index}.png"
pod: 007
"""


@pytest.fixture
def jobdir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "jobs"
    for name in ("flows/txt2img.json", "prompts/cat.txt", "prompts/many.txt", "photos/cat.png"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the job file, not to the working directory
    return d


def write(d: Path, name: str, text: str) -> Path:
    f = d / name
    f.write_text(text, encoding="utf-8")
    return f


def err(path: Path) -> str:
    with pytest.raises(WorkflowError) as e:
        load_job(path)
    assert e.value.exit_code == ExitCode.USAGE and "\n" not in str(e.value)
    return str(e.value)


def expected(d: Path, source: Path) -> Job:
    return Job(workflow=d / "flows/txt2img.json",
               sets=["KSampler.steps=30", f"Positive Prompt.text=@{d / 'prompts/cat.txt'}",
                     "Negative Prompt.text=@@not a file"],
               inputs=[f"LoadImage={d / 'photos/cat.png'}", f"12.image={d / 'photos/cat.png'}"],
               sweeps=["KSampler.cfg=5,6.5,8", f"6.text=@{d / 'prompts/many.txt'}"],
               repeat=4, seed="random", output_template="renders/{index}.png", pod="007", source=source)


def test_a_yaml_job_with_every_key(jobdir):
    f = write(jobdir, "job.yaml", FULL)
    assert load_job(f) == expected(jobdir, f)


def test_the_same_job_in_json(jobdir):
    data = {"workflow": "flows/txt2img.json",
            "set": ["KSampler.steps=30", "Positive Prompt.text=@prompts/cat.txt", "Negative Prompt.text=@@not a file"],
            "input": ["LoadImage=photos/cat.png", "12.image=photos/cat.png"],
            "sweep": ["KSampler.cfg=5,6.5,8", "6.text=@prompts/many.txt"],
            "repeat": 4, "seed": "random", "output": "renders/{index}.png", "pod": "007"}
    f = write(jobdir, "job.json", json.dumps(data, indent=2))
    assert load_job(f) == expected(jobdir, f)
    g = write(jobdir, "job", json.dumps(data))  # no suffix: JSON when it starts with {
    assert load_job(g).sweeps == expected(jobdir, g).sweeps


def test_defaults_and_a_single_spec(jobdir):
    f = write(jobdir, "job.yml", "workflow: flows/txt2img.json\nset: KSampler.steps=30\n")
    assert load_job(f) == Job(workflow=jobdir / "flows/txt2img.json", sets=["KSampler.steps=30"], source=f)


def test_absolute_paths_stay(jobdir):
    f = write(jobdir, "job.yaml", f"workflow: {jobdir / 'flows/txt2img.json'}\n")
    assert load_job(f).workflow == jobdir / "flows/txt2img.json"


@pytest.mark.parametrize("text, words", [
    ("workflow: flows/txt2img.json\nsweeps: [a.b=1]\n", "job.yaml:2: unknown key 'sweeps' (did you mean 'sweep'?)"),
    ("workflow: flows/txt2img.json\nrepeat: '3'\n", "job.yaml:2: 'repeat' must be a whole number like 4 (without quotes)"),
    ("workflow: flows/txt2img.json\nrepeat: 0\n", "job.yaml:2: 'repeat' must be between 1 and"),
    ("workflow: flows/txt2img.json\nrepeat: 1_0\n", "'repeat' must be a whole number like 4, got '1_0'"),
    ("workflow: flows/txt2img.json\nrepeat: 010\n", "'repeat' must be a whole number"),
    ("workflow: flows/txt2img.json\n\nseed: randomize\n", "job.yaml:3: 'seed' must be one of fixed, random, increment"),
    ("workflow: [a, b]\n", "job.yaml:1: 'workflow' must be text, got a list"),
    ("workflow: flows/none.json\n", "job.yaml:1: 'workflow': flows/none.json is not a file (no such file)"),
    ("workflow: flows\n", "'workflow': flows is not a file"),
    ("set: [a.b=1]\n", "job.yaml:1: 'workflow' is required"),
    ("workflow: flows/txt2img.json\npod:\n", "job.yaml:2: 'pod' has no value"),
    ("workflow: flows/txt2img.json\npod: ''\n", "'pod' must not be empty"),
    ("workflow: flows/txt2img.json\nset:\n  - KSampler.steps=3\n  - Positive Prompt.text=a cat: red\n",
     "job.yaml:4: an item of 'set' is a mapping; quote it"),
    ("workflow: flows/txt2img.json\nset:\n  - steps=3\n", "job.yaml:3: --set 'steps=3': expected NODE.INPUT=VALUE"),
    ("workflow: flows/txt2img.json\nset:\n  -\n", "job.yaml:3: an item of 'set' is empty"),
    ("workflow: flows/txt2img.json\nset:\n  - 6.text=@prompts/dog.txt\n", "job.yaml:3: 'set': prompts/dog.txt"),
    ("workflow: flows/txt2img.json\nsweep: [6.text=@nope.txt]\n", "job.yaml:2: 'sweep': nope.txt is not a file"),
    ("workflow: flows/txt2img.json\ninput:\n  - LoadImage=photos/dog.png\n", "job.yaml:3: 'input': photos/dog.png"),
    ("workflow: flows/txt2img.json\ninput: [LoadImage=]\n", "expected NODE=PATH"),
    ("- workflow: flows/txt2img.json\n", "job.yaml:1: a job file must be a mapping"),
    ("workflow: &w flows/txt2img.json\noutput: *w\n", "job.yaml:2: YAML aliases (*w) are not allowed"),
    ("workflow: flows/txt2img.json\nworkflow: flows/txt2img.json\n", "job.yaml:2: duplicate key 'workflow'"),
    ("workflow: flows/txt2img.json\nseed: [\n", "job.yaml:3: invalid YAML"),
    ("# nothing\n", "the job file is empty"),
])
def test_yaml_errors_name_the_file_and_line(text, words, jobdir):
    assert words in err(write(jobdir, "job.yaml", text))


@pytest.mark.parametrize("text, words", [
    ('{"workflow": "flows/txt2img.json", "repeat": 2.5}', "job.json: 'repeat' must be a whole number like 4, got 2.5"),
    ('{"workflow": "flows/txt2img.json", "repeat": true}', "'repeat' must be a whole number"),
    ('{"workflow": "flows/txt2img.json", "set": [1]}', "--set '1': expected NODE.INPUT=VALUE"),
    ('{"workflow": "flows/txt2img.json", "pod": false}', "'pod' must be text, got False"),
    ('{"workflow": "flows/txt2img.json", "wat": 1}', "job.json: unknown key 'wat'"),
    ('{"workflow": "flows/txt2img.json", "seed": "fixed", "seed": "random"}', "duplicate key 'seed'"),
    ('{"workflow": "flows/txt2img.json",\n "seed": }', "job.json:2: not valid JSON"),
    ('["flows/txt2img.json"]', "a job file must be a mapping"),
])
def test_json_errors_name_the_file(text, words, jobdir):
    assert words in err(write(jobdir, "job.json", text))


def test_a_missing_job_file(tmp_path):
    assert "cannot read the job file" in err(tmp_path / "job.yaml")
    assert "cannot read the job file: no such file" in err(tmp_path / "job.json")


def test_a_job_from_file_to_checked_variants(tmp_path, monkeypatch):
    """The calls the run side makes, in order, with every step pure (the upload is the run side's)."""
    import gzip
    import shutil

    from autopod.comfy.batch import expand, parse_sweep
    from autopod.comfy.overrides import (apply_overrides, check_prompt, parse_input, parse_set, resolve_input,
                                         set_uploaded)
    from autopod.comfy.workflow import load_workflow, prompt_hash, to_api

    data = Path(__file__).parent / "data" / "workflows"
    with gzip.open(Path(__file__).parent.parent / "autopod/sim/data/comfyui/object_info_full.json.gz", "rt") as f:
        oi = json.load(f)
    d = tmp_path / "job"
    (d / "in").mkdir(parents=True)
    shutil.copy(data / "load_image.json", d / "flow.json")
    (d / "in/cat.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "radii.txt").write_text("2\n\n5\n")
    write(d, "job.yaml", "workflow: flow.json\nset: [Save Image.filename_prefix=cats/run]\ninput: [LoadImage=in/cat.png]\n"
                         "sweep:\n  - ImageScale.width=512,768\n  - ImageScale.height=@radii.txt\nrepeat: 2\n")
    monkeypatch.chdir(tmp_path)

    job = load_job(d / "job.yaml")
    prompt = to_api(load_workflow(job.workflow), oi)
    prompt, applied = apply_overrides(prompt, [parse_set(s) for s in job.sets], oi)
    targets = [resolve_input(prompt, parse_input(s), oi) for s in job.inputs]
    assert [(t.node, t.input, t.path) for t in targets] == [("1", "image", d / "in/cat.png")]
    prompt = set_uploaded(prompt, targets[0], "cat (1).png")  # the name POST /upload/image returned
    variants = expand(prompt, oi, sweeps=[parse_sweep(s) for s in job.sweeps], repeat=job.repeat, seed=job.seed)
    for v in variants:
        check_prompt(v.prompt, oi, skip={(t.node, t.input) for t in targets})
    assert applied[0]["node"] == "4" and len(variants) == 8
    assert [v.overrides for v in variants[:4]] == [{"3.width": w, "3.height": h} for w in (512, 768) for h in (2, 5)]
    assert variants[0].prompt["1"]["inputs"]["image"] == "cat (1).png"
    assert len({prompt_hash(v.prompt) for v in variants}) == 4  # no seeds here: repeats are the same prompt

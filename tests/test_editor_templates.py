"""The editor format converted exactly as the ComfyUI editor converts it: the official templates.

tests/data/editor/prompts-templates-0.1.95.json.gz holds what the real editor (frontend 1.27.10 on ComfyUI
0.3.64) sends for each of the 154 templates of comfyui-workflow-templates 0.1.95 that the server can run;
autopod's conversion must give the same prompt, input for input, titles included.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import pytest

from autopod.comfy.workflow import convert, load_workflow
from workflow_fixtures import object_info, oi  # noqa: F401

RECORDING = Path(__file__).parent / "data" / "editor" / "prompts-templates-0.1.95.json.gz"
templates = pytest.importorskip("comfyui_workflow_templates", reason="pip install -e '.[test]' brings the templates")
TEMPLATES = Path(templates.__file__).parent / "templates"


@cache
def recorded() -> dict[str, dict]:
    with gzip.open(RECORDING, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_the_recording_is_the_154_templates_of_the_pinned_package():
    assert len(recorded()) == 154
    assert all((TEMPLATES / name).is_file() for name in recorded())


@pytest.mark.parametrize("name", sorted(recorded()))
def test_a_template_converts_to_the_prompt_the_editor_sent(name, oi):
    result = convert(load_workflow(TEMPLATES / name), oi)
    assert result.prompt == recorded()[name]


def test_what_the_editor_fills_in_or_drops_is_said_once_per_node(oi):
    # default.json saves SaveImage without values; depth_t2i_adapter.json saves LoadImage with a third one.
    notes = convert(load_workflow(TEMPLATES / "default.json"), oi).notes
    assert notes == ["node 9 (SaveImage \"Save Image\"): took the default of filename_prefix='ComfyUI' "
                     "(the file saved 0 value(s) for 1 widget(s))"]
    notes = convert(load_workflow(TEMPLATES / "depth_t2i_adapter.json"), oi).notes
    assert notes == ["node 20 (LoadImage \"Load Image\"): ignored 1 saved value(s) the node no longer has a widget "
                     "for: ''"]

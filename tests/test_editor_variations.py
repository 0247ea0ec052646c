"""Graphs made in the live ComfyUI editor, converted as the editor converted them (no browser needed).

tests/data/editor/live-variations.json.gz holds graphs that tests/test_editor_browser.py made with the editor's
own graph API, each with what the editor's ``graphToPrompt()`` gave: the prompt, or the error it threw and then
what the editor gave for the same file opened again. autopod must give the same prompt.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from workflow_fixtures import object_info, oi  # noqa: F401

from autopod.comfy.workflow import parse_workflow, to_api

RECORDING = Path(__file__).parent / "data" / "editor" / "live-variations.json.gz"
with gzip.open(RECORDING, "rt", encoding="utf-8") as _f:
    VARIATIONS = json.load(_f)


@pytest.mark.parametrize("v", [pytest.param(v, id=f"{v['kind']}: {v['label']}") for v in VARIATIONS])
def test_a_graph_made_in_the_editor_converts_as_the_editor_converted_it(v, oi):
    # Where the live session failed (``editor_error``), the oracle is the editor that opened the saved file
    # again (``reloaded_output``): a file is what autopod gets.
    expected = v["reloaded_output"] if "editor_error" in v else v["output"]
    assert to_api(parse_workflow(v["workflow"]), oi) == expected

"""Legacy group nodes made in the live ComfyUI editor, converted as the editor converted them (no browser needed).

tests/data/editor/live-group-nodes.json.gz holds graphs that tests/test_editor_browser.py turned into group nodes
with the editor's own "Convert selected nodes to group node" command (then a widget value set on the group node,
then the group node muted and bypassed), each with what the editor's ``graphToPrompt()`` gave.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from workflow_fixtures import object_info, oi  # noqa: F401

from autopod.comfy.workflow import parse_workflow, to_api

RECORDING = Path(__file__).parent / "data" / "editor" / "live-group-nodes.json.gz"
with gzip.open(RECORDING, "rt", encoding="utf-8") as _f:
    CASES = json.load(_f)
@pytest.mark.parametrize("v", CASES, ids=[f"{v['kind']}: {v['label']}" for v in CASES])
def test_a_group_node_made_in_the_editor_converts_as_the_editor_converted_it(v, oi):
    assert v["workflow"]["extra"]["groupNodes"]
    assert to_api(parse_workflow(v["workflow"]), oi) == v["output"]

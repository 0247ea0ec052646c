"""Graphs made in the live ComfyUI editor, converted as the editor converted them (no browser needed).

tests/data/editor/live-variations.json.gz holds graphs that tests/test_editor_browser.py made with the editor's
own graph API, each with what the editor's ``graphToPrompt()`` gave: the prompt, or the error it threw. autopod
must give the same prompt, and must not send a graph the editor cannot queue.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from workflow_fixtures import object_info, oi  # noqa: F401

from autopod.comfy.workflow import WorkflowError, parse_workflow, to_api

RECORDING = Path(__file__).parent / "data" / "editor" / "live-variations.json.gz"
with gzip.open(RECORDING, "rt", encoding="utf-8") as _f:
    VARIATIONS = json.load(_f)

CANNOT_QUEUE = ("primitive nodes feed the subgraph's inputs: the editor's PrimitiveNode.applyToGraph throws and the "
                "editor sends nothing; autopod converts it")


def _case(v: dict):
    marks = [pytest.mark.xfail(strict=True, reason=CANNOT_QUEUE)] if "editor_error" in v else []
    return pytest.param(v, id=f"{v['kind']}: {v['label']}", marks=marks)


@pytest.mark.parametrize("v", [_case(v) for v in VARIATIONS])
def test_a_graph_made_in_the_editor_converts_as_the_editor_converted_it(v, oi):
    if "editor_error" in v:
        with pytest.raises(WorkflowError):
            to_api(parse_workflow(v["workflow"]), oi)
    else:
        assert to_api(parse_workflow(v["workflow"]), oi) == v["output"]

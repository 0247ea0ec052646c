"""Shared by the workflow-layer tests: the recorded /object_info, the shipped workflows, one-line errors."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest

from autopod.comfy.workflow import WorkflowError
from autopod.core.errors import ExitCode

DATA = Path(__file__).parent / "data" / "workflows"
OBJECT_INFO = Path(__file__).parent.parent / "autopod" / "sim" / "data" / "comfyui" / "object_info_full.json.gz"


@functools.cache
def object_info() -> dict:
    """ComfyUI 0.3.64's whole /object_info, as recorded (read once per test run)."""
    with gzip.open(OBJECT_INFO, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def oi() -> dict:
    return object_info()


@pytest.fixture
def txt2img() -> dict:
    """The text-to-image prompt: KSampler 3 (seed 42, cfg 7.5, steps from PrimitiveInt 18), EmptyLatentImage 5,
    titled prompts 6 "Positive Prompt" and 7 "Negative Prompt", SaveImage 9."""
    return json.loads((DATA / "txt2img_features.api.json").read_text())


@pytest.fixture
def pipeline() -> dict:
    """Model-free: 1 EmptyImage, 4 ImageScale, 8 SaveImage "Result", 9 ImageBlur, 10 PreviewImage; no seeds."""
    return json.loads((DATA / "image_pipeline.api.json").read_text())


def err(fn, *args, **kw) -> str:
    """The message of the one-line usage error (exit 2) that ``fn(*args, **kw)`` raises."""
    with pytest.raises(WorkflowError) as e:
        fn(*args, **kw)
    assert e.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(e.value), "errors are one line"
    return str(e.value)

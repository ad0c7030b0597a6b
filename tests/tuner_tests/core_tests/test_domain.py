"""The value objects' own words and checks: how a workload is described for each kind of model."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.core.domain import INPUT_KINDS
from tuner.core.domain import Run
from tuner.core.domain import Workload


@pytest.mark.parametrize(
    ("inputs", "described", "shape"),
    [
        ("text", "batch 4, seq 512, 32 new tokens, bfloat16", "4x512+32 bfloat16"),
        ("vision", "batch 4, one image each, 32 new tokens, bfloat16", "4ximage+32 bfloat16"),
        ("speech", "batch 4, one audio clip each, 32 new tokens, bfloat16", "4xaudio+32 bfloat16"),
    ],
)
def test_a_workload_says_what_each_prompt_is(inputs: str, described: str, shape: str) -> None:
    workload = Workload(batch=4, seq=512, new_tokens=32, dtype="bfloat16")
    assert workload.describe(inputs) == described
    assert workload.shape(inputs) == shape


def test_the_kinds_described_are_the_kinds_a_run_takes(run: Run) -> None:
    for inputs in INPUT_KINDS:
        described = dataclasses.replace(run, inputs=inputs).workload.describe(inputs)
        assert described.startswith(f"batch {run.workload.batch}, {run.workload.prompt(inputs)}, ")
    with pytest.raises(ValueError, match="unknown inputs 'audio'; choose one of text, vision, speech"):
        dataclasses.replace(run, inputs="audio")

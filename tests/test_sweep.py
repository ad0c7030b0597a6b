"""The sweep: every family of tests/families.py through the whole tool, as a user runs it.

Each family's checkpoint is profiled (by pricing the all-disk map, which also gives the least
memory any map needs), tuned with a RAM cap halfway between that and the whole model in RAM, so
the winner must offload to disk, exported as JSON, loaded with ``from_pretrained`` and compared
with the model loaded whole: same logits for the inputs the profiler fed, and, for a model that
generates, the same greedy tokens. Few trials, one timed repeat, short prompts: seconds per family.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import tuner
from profiler.inputs import model_inputs
from profiler.model import build_meta_model
from profiler.source import resolve_source
from tests.families import FAMILIES
from tests.families import save_family
from tests.families import with_short_audio
from tuner.core.domain import DeviceMemory
from tuner.core.domain import Workload

pytestmark = pytest.mark.usefixtures("one_thread")

#: Seq and new tokens of every family's workload; the search is small, the check is for real.
SEQ, NEW_TOKENS = 8, 2


def _cpu_memory(prediction: tuner.Prediction) -> DeviceMemory:
    return next(memory for memory in prediction.memory if memory.device == "cpu")


def _inputs(folder: Path, new_tokens: int) -> dict[str, object]:
    """The prompt the profiler fed, with seeded values, for the model loaded for real."""
    meta = build_meta_model(resolve_source(str(folder)))
    workload = Workload(seq=SEQ, new_tokens=new_tokens, dtype=meta.dtype)
    inputs = model_inputs(meta.runnable, workload, folder)
    prefill = inputs.prefill(torch.device("cpu"), meta.runnable.dtype, seed=0)
    return {"prompt": inputs.prompt(torch.device("cpu"), meta.runnable.dtype, seed=0), "prefill": prefill}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_tuned_with_offload_and_loads_with_the_unsplit_outputs(
    family: str, tmp_path: Path, measured_db_url: str
) -> None:
    spec = FAMILIES[family]
    folder = save_family(family, tmp_path / family)
    if family == "wav2vec2":  # 2 s of audio, not its extractor's 30 s: the same code, a 15th of the work
        with_short_audio(folder)
    model_class = getattr(transformers, spec.config().architectures[0])
    new_tokens = NEW_TOKENS if model_class.can_generate() else 0
    options: dict[str, object] = dict(seq=SEQ, new_tokens=new_tokens, repeats=1, db=measured_db_url)
    # halfway between what the least map needs (every unit on disk) and the whole model in RAM
    least = _cpu_memory(tuner.price(str(folder), {"": "disk"}, **options))  # type: ignore[arg-type]
    most = _cpu_memory(tuner.price(str(folder), {"": "cpu"}, **options))  # type: ignore[arg-type]
    assert most.total > least.total
    cap = (least.total + most.total) // 2
    run = tuner.optimize(str(folder), max_memory={"cpu": cap}, trials=8, random_seed=0, **options)  # type: ignore[arg-type]
    assert run.winner is not None and run.winner.prediction is not None
    exported = json.loads(json.dumps(run.winner.device_map.to_hf()))
    assert "disk" in exported.values(), exported

    split = model_class.from_pretrained(
        folder, device_map=exported, offload_folder=tmp_path / "offload"
    ).eval()
    unsplit = model_class.from_pretrained(folder).eval()
    assert split.dtype == unsplit.dtype == spec.dtype
    fed = _inputs(folder, new_tokens)
    with torch.no_grad():
        got, want = split(**fed["prefill"]), unsplit(**fed["prefill"])
        outputs = ("logits", "last_hidden_state", "start_logits", "logits_per_image")
        first = next(iter(k for k in outputs if k in want))
        torch.testing.assert_close(got[first], want[first])
        if new_tokens:
            steps: dict[str, object] = dict(
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
            assert torch.equal(
                split.generate(**fed["prompt"], **steps), unsplit.generate(**fed["prompt"], **steps)
            )


def test_the_sweep_covers_every_kind_of_model_and_checkpoint() -> None:
    kinds = {spec.kind for spec in FAMILIES.values()}
    assert kinds == {
        "decoder",
        "moe",
        "encoder-decoder",
        "encoder",
        "speech",
        "vision-language",
        "vision",
        "state-space",
        "hybrid",
    }
    assert {spec.dtype for spec in FAMILIES.values()} == {torch.float32, torch.float16, torch.bfloat16}
    assert {spec.tied for spec in FAMILIES.values()} == {True, False}
    saved = [spec.save for spec in FAMILIES.values()]
    assert {"max_shard_size": "40KB"} in saved and {"safe_serialization": False} in saved
    assert len(FAMILIES) >= 30

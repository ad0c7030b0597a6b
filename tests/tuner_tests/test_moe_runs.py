"""Mixture-of-experts models through `optimize`: planned for a spec's GPUs in every dtype, and for
real on this machine with experts offloaded, loading with the unsplit model's outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

import tuner
from tests.checkpoints import MOE_CONFIGS
from tests.checkpoints import moe_folder  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, trials=6, random_seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("family", sorted(MOE_CONFIGS))
def test_every_moe_family_is_planned_for_gpus_in_float32_and_float16(
    family: str,
    dtype: str,
    moe_folder: Callable[..., Path],  # noqa: F811
    measured_db_url: str,
) -> None:
    found = tuner.optimize(
        str(moe_folder(family)), hardware="4xL4-24GB-pcie", dtype=dtype, db=measured_db_url, **OPTIONS
    )  # type: ignore[arg-type]
    assert found.workload.dtype == dtype
    assert found.winner is not None and found.winner.prediction is not None
    assert found.winner.prediction.latency_s > 0


def test_a_moe_checkpoint_with_offloaded_experts_loads_with_the_unsplit_outputs(
    moe_folder: Callable[..., Path],  # noqa: F811
    measured_db_url: str,
    tmp_path: Path,
) -> None:
    folder = moe_folder("mixtral", weights=True)
    cap = sum(f.stat().st_size for f in folder.glob("*.safetensors")) * 4 // 5  # a MoE layer streams whole
    found = tuner.optimize(str(folder), max_memory={"cpu": cap}, db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert found.winner is not None
    device_map = found.winner.device_map.to_hf()
    assert "disk" in device_map.values()
    # the experts are stacked on load, so disk units are re-saved: from_pretrained wants a folder
    split = transformers.AutoModelForCausalLM.from_pretrained(
        folder, device_map=device_map, offload_folder=tmp_path / "offload"
    )
    whole = transformers.AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(split(input_ids=ids).logits, whole(input_ids=ids).logits)
    checked = tuner.validate(str(folder), run=found.id, repeats=1, db=measured_db_url)
    assert checked.validation.ok and checked.validation.tokens_equal, checked.validation.reason
    loaded = tuner.from_pretrained(str(folder), max_memory={"cpu": cap}, db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert dict(loaded.hf_device_map) == device_map

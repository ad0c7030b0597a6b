"""bitsandbytes 4-bit and 8-bit checkpoints end to end on this CPU: profiled, optimized, exported,
loaded, with the outputs of the quantized model loaded whole; their placement rule and memory
reserve in plans for a spec's GPUs; FP8 planned for GPUs; GPTQ refused in one line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

import tuner
from tests.checkpoints import bnb_folder  # noqa: F401 - a fixture
from tests.checkpoints import llama_with
from tests.tuner_tests.conftest import run
from tuner.core.domain import Quantization

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS: dict[str, object] = dict(seq=8, new_tokens=2, repeats=1, trials=6, random_seed=0)


def logits(model: transformers.PreTrainedModel) -> torch.Tensor:
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("bits", [4, 8])
def test_a_bitsandbytes_checkpoint_is_profiled_optimized_exported_and_loads_with_the_same_outputs(
    bits: int,
    bnb_folder: Callable[[int], Path],  # noqa: F811
    measured_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = str(bnb_folder(bits))
    found = tuner.optimize(folder, db=measured_db_url, measure=1, measure_rounds=1, **OPTIONS)  # type: ignore[arg-type]
    assert found.winner is not None and found.winner.measured_s is not None
    # no GPU: bitsandbytes loads the whole model on cpu, or nothing
    assert set(found.winner.device_map.devices) == {"cpu"}

    target = tmp_path / "map.json"
    code, _, err = run(["export", str(found.id), "-o", str(target), "--db", measured_db_url], capsys)
    assert code == 0, err
    device_map = json.loads(target.read_text())
    split = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map=device_map)
    whole = transformers.AutoModelForCausalLM.from_pretrained(folder)  # the quantized model, loaded whole
    assert type(split.model.layers[0].self_attn.q_proj).__name__ in {"Linear4bit", "Linear8bitLt"}
    torch.testing.assert_close(logits(split), logits(whole))
    checked = tuner.validate(folder, run=found.id, repeats=1, db=measured_db_url)
    assert checked.validation.ok and checked.validation.tokens_equal, checked.validation.reason
    capsys.readouterr()
    caplog.clear()  # the forwards above log bitsandbytes' lines: the command's alone count
    command = ["validate", str(found.id), folder, "--repeats", "1", "--db", measured_db_url]
    with caplog.at_level(logging.INFO):
        code, out, err = run(command, capsys)
    assert code == 0 and "validation: ok" in out, err
    # bitsandbytes logs a line per 8-bit matrix product on the cpu (1092 in one validate)
    assert not [record for record in caplog.records if record.name.startswith("bitsandbytes")]


def test_a_cap_that_forces_offloading_a_bitsandbytes_model_is_refused_in_one_line(
    bnb_folder: Callable[[int], Path],  # noqa: F811
    measured_db_url: str,
) -> None:
    folder = str(bnb_folder(4))
    with pytest.raises(tuner.InfeasibleError, match="bitsandbytes_4bit refuses cpu or disk units") as raised:
        tuner.optimize(folder, max_memory={"cpu": "600KiB"}, db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)
    # the limit it names is the one given less the quantizer's reserve, and it says so
    assert "more than its 540.0 KiB (bitsandbytes_4bit keeps 10% of the device's limit in reserve)" in str(
        raised.value
    )
    with pytest.raises(tuner.ConstraintError, match=r"pins\['lm_head'\]: bitsandbytes_4bit refuses"):
        tuner.optimize(folder, pins={"lm_head": "disk"}, db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert tuner.list_runs(db=measured_db_url) == []


def test_plans_for_gpus_keep_bitsandbytes_units_on_gpus_within_the_reserve(
    bnb_folder: Callable[[int], Path],  # noqa: F811
    measured_db_url: str,
) -> None:
    folder = str(bnb_folder(4))
    spec = tuner.read_spec("rtx3090-rtx3060-pcie")
    found = tuner.optimize(folder, hardware="rtx3090-rtx3060-pcie", db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert found.winner is not None and found.winner.prediction is not None
    # the searched optimum stays on the GPUs; the winner may be that, or the whole model on cpu,
    # which pays no GPU's cost per kernel and for so small a model is faster
    assert set(found.baseline("exact").device_map.devices) <= {"0", "1"}
    assert set(found.winner.device_map.devices) <= {"0", "1"} or set(found.winner.device_map.devices) == {
        "cpu"
    }
    memory = {m.device: m for m in found.winner.prediction.memory}
    for key, device in memory.items():
        assert device.limit == int(0.9 * spec.device(key).free_memory)
    auto = found.baseline("auto")
    assert auto.prediction is not None and auto.prediction.feasible
    # the whole model on cpu loads (the one map with cpu units that does): no constraint broken,
    # though the search never places a unit on cpu
    assert found.baseline("single:cpu").breaks == ""
    # the model at its stored bytes: 4-bit decoder layers, float32 embeddings and head
    weights = sum(m.weights for m in found.winner.prediction.memory)
    footprint = transformers.AutoModelForCausalLM.from_pretrained(folder).get_memory_footprint()
    assert abs(weights - footprint) <= 0.05 * footprint

    # each GPU with room for 60% of the weights after its reserve: split across both, never offloaded
    def room(key: str) -> int:
        return int((spec.device(key).runtime_overhead + 0.6 * weights + 2**18) / 0.9)

    split = tuner.optimize(
        folder,
        hardware="rtx3090-rtx3060-pcie",
        max_memory={"0": room("0"), "1": room("1")},
        db=measured_db_url,
        **OPTIONS,  # type: ignore[arg-type]
    )
    # the searched optimum splits across both GPUs; the winner may be that, or the whole model on
    # cpu (the one map with cpu entries bitsandbytes loads, faster here for so small a model)
    assert set(split.baseline("exact").device_map.devices) == {"0", "1"}
    assert split.winner is not None
    assert set(split.winner.device_map.devices) in ({"0", "1"}, {"cpu"})
    with pytest.raises(tuner.InfeasibleError, match="bitsandbytes_4bit refuses"):
        tuner.optimize(
            folder,
            hardware="rtx3090-rtx3060-pcie",
            max_memory={"0": room("0") // 2, "1": room("1") // 2},
            db=measured_db_url,
            **OPTIONS,  # type: ignore[arg-type]
        )


def test_an_fp8_checkpoint_is_planned_for_gpus_at_its_stored_bytes(
    tmp_path: Path, measured_db_url: str
) -> None:
    config = llama_with(hidden_size=256, intermediate_size=512, vocab_size=256)
    config.quantization_config = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    }
    config.dtype = "bfloat16"
    config.save_pretrained(tmp_path)
    found = tuner.optimize(str(tmp_path), hardware="1xA10G-24GB", db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert found.workload.dtype == "bfloat16"
    plain = llama_with(hidden_size=256, intermediate_size=512, vocab_size=256)
    plain.dtype = "bfloat16"
    plain_folder = tmp_path / "plain"
    plain.save_pretrained(plain_folder)
    unquantized = tuner.optimize(str(plain_folder), hardware="1xA10G-24GB", db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert found.winner is not None and unquantized.winner is not None
    assert found.winner.prediction is not None and unquantized.winner.prediction is not None
    fp8 = sum(m.weights for m in found.winner.prediction.memory)
    bf16 = sum(m.weights for m in unquantized.winner.prediction.memory)
    assert fp8 < 0.75 * bf16  # decoder layers at one byte per weight, embeddings and head in bfloat16


def test_a_gptq_checkpoint_is_refused_with_what_transformers_needs(
    tmp_path: Path, measured_db_url: str
) -> None:
    config = llama_with()
    config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    config.save_pretrained(tmp_path)
    with pytest.raises(tuner.ProfilingError, match="cannot size .*gptq weights.*optimum") as raised:
        tuner.optimize(str(tmp_path), hardware="1xA10G-24GB", db=measured_db_url, **OPTIONS)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_the_quantization_reaches_the_stored_profile(
    bnb_folder: Callable[[int], Path],  # noqa: F811
    measured_db_url: str,
) -> None:
    outcome = tuner.profile(str(bnb_folder(8)), seq=8, new_tokens=2, repeats=1, db=measured_db_url)
    assert outcome.profile.graph.quantization == Quantization("bitsandbytes_8bit", "whole-cpu", 0.9)
    again = tuner.profile(str(bnb_folder(8)), seq=8, new_tokens=2, repeats=1, db=measured_db_url)
    assert again.reused and again.profile.graph == outcome.profile.graph

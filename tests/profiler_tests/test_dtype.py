"""``dtype="auto"``: the model is built, sized and loaded in the dtype ``from_pretrained`` loads
without one, decided by transformers' own rules (config, then weights), once, where it is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.utils import compute_module_sizes
from transformers import AutoModelForCausalLM
from transformers import T5ForConditionalGeneration

from profiler.loading import load_with_map
from profiler.model import build_meta_model
from profiler.model import model_dtype
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.validate import validate
from tests.checkpoints import bf16_folder  # noqa: F401 - a fixture
from tests.checkpoints import save_weights
from tests.checkpoints import set_config
from tests.conftest import TINY_CONFIGS
from tuner.core.domain import DeviceMap
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError


def unit_bytes_loaded(folder: Path, unit_names: tuple[str, ...], **kwargs: object) -> dict[str, int]:
    """Bytes per unit of the model `from_pretrained` loads, by accelerate's own count."""
    loaded = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    sizes = compute_module_sizes(loaded)
    return {name: sizes[name] for name in unit_names} | {"": loaded.get_memory_footprint()}


def test_auto_is_the_checkpoints_dtype_and_its_bytes_are_what_from_pretrained_loads(
    bf16_folder: Path,  # noqa: F811
) -> None:
    meta = build_meta_model(resolve_source(str(bf16_folder)))
    assert meta.dtype == "bfloat16"
    graph = trace_graph(meta, Workload(seq=8, new_tokens=2, dtype=meta.dtype))
    assert graph.dtype == "bfloat16"
    loaded = unit_bytes_loaded(bf16_folder, graph.unit_names)  # no dtype: the checkpoint's
    for unit in graph.units:
        assert unit.bytes == loaded[unit.name], unit.name
    assert graph.total_bytes == loaded[""]
    # the same model asked for in bfloat16 is the same model: one fingerprint, one profile
    assert build_meta_model(resolve_source(str(bf16_folder)), "bfloat16").fingerprint() == meta.fingerprint()
    assert build_meta_model(resolve_source(str(bf16_folder)), "float32").fingerprint() != meta.fingerprint()


def test_without_a_config_dtype_the_weights_decide(tmp_path: Path) -> None:
    folder = save_weights(TINY_CONFIGS["llama"](), tmp_path, torch.float16)
    set_config(folder, dtype=None, torch_dtype=None)
    assert model_dtype(str(folder)) == "float16"
    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.float16


def test_the_legacy_torch_dtype_key_is_read(tmp_path: Path) -> None:
    TINY_CONFIGS["llama"]().save_pretrained(tmp_path)
    set_config(tmp_path, dtype=None, torch_dtype="bfloat16")
    assert build_meta_model(resolve_source(str(tmp_path))).dtype == "bfloat16"


def test_a_config_alone_without_a_dtype_builds_in_float32(tmp_path: Path) -> None:
    TINY_CONFIGS["gpt2"]().save_pretrained(tmp_path)
    set_config(tmp_path, dtype=None, torch_dtype=None)
    assert build_meta_model(resolve_source(str(tmp_path))).dtype == "float32"


def test_a_dtype_asked_for_wins_over_the_checkpoints(bf16_folder: Path) -> None:  # noqa: F811
    assert build_meta_model(resolve_source(str(bf16_folder)), "float16").dtype == "float16"
    assert model_dtype(str(bf16_folder), "float32") == "float32"


def test_a_checkpoint_dtype_the_tuner_does_not_price_is_refused_in_one_line(tmp_path: Path) -> None:
    TINY_CONFIGS["llama"]().save_pretrained(tmp_path)
    set_config(tmp_path, dtype="float64")
    with pytest.raises(ProfilingError, match=r"loads in float64.*--dtype") as raised:
        build_meta_model(resolve_source(str(tmp_path)))
    assert "\n" not in str(raised.value)
    with pytest.raises(ProfilingError, match="unknown dtype 'int8'; choose one of auto, float32"):
        build_meta_model(resolve_source(str(tmp_path)), "int8")


def test_float32_modules_of_the_dtype_plan_stay_float32(tmp_path: Path) -> None:
    """T5 keeps its ``wo`` projections in float32 when loaded in float16 (``_keep_in_fp32_modules``):
    the meta model is sized as loaded."""
    folder = save_weights(TINY_CONFIGS["t5"](), tmp_path, torch.float16)
    meta = build_meta_model(resolve_source(str(folder)))
    assert meta.dtype == "float16"
    assert meta.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    graph = trace_graph(meta, Workload(seq=8, new_tokens=0, dtype="float16"))
    loaded = T5ForConditionalGeneration.from_pretrained(folder)
    sizes = compute_module_sizes(loaded)
    for unit in graph.units:
        assert unit.bytes == sizes[unit.name], unit.name


def test_validate_and_loading_use_the_planned_dtype(bf16_folder: Path) -> None:  # noqa: F811
    meta = build_meta_model(resolve_source(str(bf16_folder)))
    units = meta.unit_names
    model = load_with_map(str(bf16_folder), {"": "cpu"}, dtype=meta.dtype)
    assert model.dtype == torch.bfloat16
    workload = Workload(seq=8, new_tokens=2, dtype=meta.dtype)
    result = validate(str(bf16_folder), DeviceMap.from_hf({"": "cpu"}, units), workload, repeats=1)
    assert result.ok, result.reason
    # the weights resident in bfloat16 (a float32 load would hold twice as much), a few KiB of activations
    weights = sum(p.numel() * 2 for p in meta.model.parameters())
    assert weights <= result.peak_memory["cpu"] < 1.25 * weights

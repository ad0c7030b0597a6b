"""Generation state beyond ``past_key_values``: Mamba's ``cache_params``, hybrids, a model's own
cache classes, and models that keep no state at all. Tiny real models of tests/families.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from transformers.cache_utils import DynamicLayer

from profiler.inputs import model_inputs
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.state import StateSnapshot
from profiler.state import state_tensors
from tests.families import FAMILIES
from tests.families import save_family
from tuner.core.domain import INPUT
from tuner.core.domain import Phase
from tuner.core.domain import Workload

pytestmark = pytest.mark.usefixtures("one_thread")


class _ModelOwnLayer(DynamicLayer):
    """A cache layer as a model may define it: extra state in dicts, beside keys and values."""

    def __init__(self) -> None:
        super().__init__()
        self.compressed: dict[str, torch.Tensor | None] = {"compressor": None}
        self.count: dict[str, int] = {"compressor": 0}


def test_a_snapshot_restores_a_model_defined_layers_dicts_and_counts_their_tensors() -> None:
    layer = _ModelOwnLayer()
    layer.compressed["compressor"] = torch.zeros(2, 3)
    snapshot = StateSnapshot([[layer]])
    layer.compressed["compressor"] = torch.cat([torch.zeros(2, 3), torch.zeros(2, 3)])
    layer.count["compressor"] += 2
    assert sum(t.numel() for t in state_tensors([layer])) == 12
    snapshot.restore()
    assert layer.compressed["compressor"] is not None and layer.compressed["compressor"].shape == (2, 3)
    assert layer.count == {"compressor": 0}


def profiled(folder: Path, workload: Workload, repeats: int = 1) -> tuple[object, list[object]]:
    meta = build_meta_model(resolve_source(str(folder)))
    workload = Workload(
        batch=workload.batch, seq=workload.seq, new_tokens=workload.new_tokens, dtype=meta.dtype
    )
    graph = trace_graph(meta, workload)
    return graph, list(profile_units(meta, graph, workload, torch.device("cpu"), repeats=repeats))


def test_mamba_decodes_with_its_cache_params_and_its_state_counts_like_a_kv_cache(tmp_path: Path) -> None:
    graph, measured = profiled(
        save_family("mamba", tmp_path, weights=False), Workload(batch=2, seq=8, new_tokens=2)
    )
    config = FAMILIES["mamba"].config()
    blocks = [p for p in measured if ".layers." in p.unit]
    assert {p.phase for p in blocks} == {Phase.PREFILL, Phase.DECODE}
    # per block: a convolution state (batch, inner, kernel) and an ssm state (batch, inner, state size)
    inner = config.intermediate_size
    state = 2 * inner * (config.conv_kernel + config.state_size) * 4
    assert all(p.cache_bytes == state for p in blocks if p.phase is Phase.PREFILL)
    assert all(p.kv_bytes_per_token == 0 for p in blocks if p.phase is Phase.DECODE)  # it does not grow


@pytest.mark.parametrize("family", ["jamba", "deepseek_v4"])
def test_hybrid_and_model_defined_caches_repeat_from_the_same_state(family: str, tmp_path: Path) -> None:
    # three timed repeats and a warm-up per unit and phase: a cache that kept growing across them
    # would change the shapes of the next call until they no longer match
    _, measured = profiled(
        save_family(family, tmp_path, weights=False), Workload(seq=16, new_tokens=2), repeats=3
    )
    layers = [p for p in measured if ".layers." in p.unit]
    assert all(p.repeats == 3 for p in layers)
    assert all(p.cache_bytes > 0 for p in layers if p.phase is Phase.PREFILL)


def test_a_model_without_a_cache_decodes_the_whole_sequence_again(tmp_path: Path) -> None:
    workload = Workload(seq=8, new_tokens=2)
    graph, measured = profiled(save_family("openai_gpt", tmp_path, weights=False), workload)
    ids = {e.consumer: e for e in graph.edges if e.producer == INPUT}
    embedding = ids["transformer.tokens_embed"]
    assert embedding.decode_bytes == (workload.seq + 1) * 8  # int64 ids of seq + 1 tokens, every step
    assert all(p.kv_bytes_per_token == 0 for p in measured)


@pytest.mark.parametrize("family", ["biogpt", "marian"])
def test_an_attention_split_into_leaf_units_keeps_the_cache_its_glue_code_builds(
    family: str, tmp_path: Path
) -> None:
    """Without no-split classes the attention's cache update runs between its leaf units, in no
    unit's call: the keys and values are counted on the projections that made them, and they add
    up to the cache a real forward of the model builds."""
    folder = save_family(family, tmp_path, weights=False)
    workload = Workload(batch=2, seq=8, new_tokens=2)
    _, measured = profiled(folder, workload)
    holders = {p.unit.rsplit(".", 1)[-1] for p in measured if p.cache_bytes or p.kv_bytes_per_token}
    assert holders == {"k_proj", "v_proj"}

    config = FAMILIES[family].config()
    model = getattr(transformers, config.architectures[0])(config).eval()
    inputs = model_inputs(model, workload, folder)
    with torch.no_grad():
        prefill = inputs.prefill(torch.device("cpu"), torch.float32)
        output = model(**prefill)
        after_prefill = sum(t.numel() * t.element_size() for t in state_tensors([output]))
        decoded = model(**inputs.decode(model, prefill, output))
        after_step = sum(t.numel() * t.element_size() for t in state_tensors([decoded]))
    assert sum(p.cache_bytes for p in measured if p.phase is Phase.PREFILL) == after_prefill > 0
    per_token = sum(p.kv_bytes_per_token for p in measured if p.phase is Phase.DECODE)
    assert per_token == after_step - after_prefill > 0

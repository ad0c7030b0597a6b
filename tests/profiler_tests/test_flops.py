from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AlbertConfig

from profiler.flops import UnitWork
from profiler.flops import count_work
from profiler.flops import kernels_launched
from profiler.model import MetaModel
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tests.conftest import TINY_CONFIGS
from tests.conftest import model_class
from tuner.core.domain import Phase
from tuner.core.domain import Workload

GENERATES = {"llama": 4, "gpt2": 4, "t5": 4, "bert": 0}


def meta_of(folder: Path, dtype: str = "float32") -> MetaModel:
    return build_meta_model(resolve_source(str(folder)), dtype)


def llama_shape() -> dict[str, int]:
    config = TINY_CONFIGS["llama"]()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // heads
    # q, k, v, o projections and gate, up, down of the MLP (no biases in Llama)
    linear = hidden * hidden + 2 * hidden * kv_heads * head_dim + hidden * hidden + 3 * hidden * inter
    return {
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab": config.vocab_size,
        "linear": linear,
    }


def attention_flops(batch: int, heads: int, s_q: int, s_k: int, head_dim: int) -> int:
    # QK^T and AV, each 2 * (b * h) * s_q * s_k * d, over the query heads and the full score
    # matrix: FlopCounterMode's sdpa formula ignores the causal mask.
    return 2 * 2 * batch * heads * s_q * s_k * head_dim


def test_llama_layer_prefill_flops_by_hand(config_folder: Callable[[str], Path]) -> None:
    s = llama_shape()
    batch, seq = 2, 8
    work = count_work(meta_of(config_folder("llama")), Workload(batch=batch, seq=seq))
    expected = 2 * batch * seq * s["linear"] + attention_flops(batch, s["heads"], seq, seq, s["head_dim"])
    for index in range(3):
        assert work[f"model.layers.{index}", Phase.PREFILL].flops == expected
    assert work["lm_head", Phase.PREFILL].flops == 2 * batch * seq * s["hidden"] * s["vocab"]
    # FlopCounterMode counts matmuls, convolutions and attention only.
    for name in ("model.embed_tokens", "model.rotary_emb", "model.norm"):
        assert work[name, Phase.PREFILL].flops == 0


def test_llama_decode_flops_for_one_token(config_folder: Callable[[str], Path]) -> None:
    s = llama_shape()
    batch, seq = 2, 8
    work = count_work(meta_of(config_folder("llama")), Workload(batch=batch, seq=seq, new_tokens=3))
    # One token attends to the seq cached tokens plus itself.
    expected = 2 * batch * s["linear"] + attention_flops(batch, s["heads"], 1, seq + 1, s["head_dim"])
    assert work["model.layers.1", Phase.DECODE].flops == expected
    assert work["lm_head", Phase.DECODE].flops == 2 * batch * s["hidden"] * s["vocab"]


def test_lm_head_bytes_are_weight_input_output(config_folder: Callable[[str], Path]) -> None:
    s = llama_shape()
    batch, seq, elem = 2, 8, 2
    weight = s["vocab"] * s["hidden"] * elem
    # generate asks for the last position's logits alone (logits_to_keep=1); a forward, for all
    for new_tokens, phases in ((3, ((Phase.PREFILL, 1), (Phase.DECODE, 1))), (0, ((Phase.PREFILL, seq),))):
        workload = Workload(batch, seq, new_tokens, "bfloat16")
        work = count_work(meta_of(config_folder("llama"), "bfloat16"), workload)
        for phase, tokens in phases:
            io = batch * tokens * s["hidden"] * elem + batch * tokens * s["vocab"] * elem
            assert work["lm_head", phase].bytes_moved == weight + io, (new_tokens, phase)


def test_tied_lm_head_still_reads_its_weight(config_folder: Callable[[str], Path]) -> None:
    # GPT-2 ties lm_head to wte: the graph counts the weight's bytes in wte only, but lm_head
    # must still read them on every pass.
    batch, seq, hidden, vocab = 1, 4, 64, 128
    work = count_work(meta_of(config_folder("gpt2")), Workload(batch=batch, seq=seq))
    expected = vocab * hidden * 4 + batch * seq * (hidden + vocab) * 4
    assert work["lm_head", Phase.PREFILL].bytes_moved == expected


def test_decode_bytes_grow_with_the_kv_cache_read(config_folder: Callable[[str], Path]) -> None:
    s = llama_shape()
    meta = meta_of(config_folder("llama"))
    batch = 2
    short = count_work(meta, Workload(batch=batch, seq=8, new_tokens=1))
    long = count_work(meta, Workload(batch=batch, seq=24, new_tokens=1))
    # 16 more tokens of keys and values, float32, over the KV heads, moved three times: attention
    # reads them, and DynamicCache's torch.cat reads them into a new tensor and writes them there
    kv = 2 * batch * s["kv_heads"] * 16 * s["head_dim"] * 4
    layer = "model.layers.0"
    assert long[layer, Phase.DECODE].bytes_moved - short[layer, Phase.DECODE].bytes_moved == 3 * kv
    # Units without a cache move the same bytes whatever the context.
    assert long["lm_head", Phase.DECODE] == short["lm_head", Phase.DECODE]
    # A decode step reads more than its weights: weights, token activations, the whole cache
    # (9 tokens) for attention, and the cache copied by torch.cat (8 tokens read, 9 written).
    weights = (s["linear"] + 2 * s["hidden"]) * 4
    per_token = 2 * batch * s["kv_heads"] * s["head_dim"] * 4
    assert short[layer, Phase.DECODE].bytes_moved > weights + (9 + 8 + 9) * per_token


def test_a_cache_grown_by_copy_moves_the_copy(config_folder: Callable[[str], Path]) -> None:
    s = llama_shape()
    meta = meta_of(config_folder("llama"))
    batch, layer = 2, "model.layers.0"
    per_token = 2 * batch * s["kv_heads"] * s["head_dim"] * 4  # keys and values, float32
    weights = (s["linear"] + 2 * s["hidden"]) * 4

    def rest(seq: int) -> int:
        """A decode step's bytes less the weights and (seq + 1) + seq + (seq + 1) tokens of cache:
        attention's read, and torch.cat's read of the old tensor and write of the new one."""
        moved = count_work(meta, Workload(batch=batch, seq=seq, new_tokens=1))[
            layer, Phase.DECODE
        ].bytes_moved
        return moved - weights - (3 * seq + 2) * per_token

    # what is left is the layer's inputs and outputs for one token: the same whatever the context,
    # and at least the token's hidden state in and out
    assert rest(8) == rest(12) == rest(31)
    assert rest(8) >= 2 * batch * s["hidden"] * 4


def test_every_unit_that_runs_has_an_entry(family: str, config_folder: Callable[[str], Path]) -> None:
    meta = meta_of(config_folder(family))
    workload = Workload(batch=2, seq=8, new_tokens=GENERATES[family])
    graph = trace_graph(meta, workload)
    work = count_work(meta, workload)
    ran = {(u.name, Phase.PREFILL) for u in graph.units if u.calls}
    ran |= {(u.name, Phase.DECODE) for u in graph.units if u.decode_calls}
    assert set(work) == ran
    assert all(isinstance(w, UnitWork) and w.bytes_moved > 0 for w in work.values())
    # Transformer blocks (matmuls and attention) carry FLOPs in every phase they run.
    blocks = [u.name for u in graph.units if u.module_class.endswith(("Layer", "Block"))]
    assert blocks and all(work[key].flops > 0 for key in work if key[0] in blocks)


def test_no_decode_phase_without_new_tokens(config_folder: Callable[[str], Path]) -> None:
    work = count_work(meta_of(config_folder("llama")), Workload(batch=1, seq=8, new_tokens=0))
    assert {phase for _, phase in work} == {Phase.PREFILL}


def test_unit_called_three_times_adds_up(tmp_path: Path) -> None:
    # ALBERT shares one layer over all its hidden layers: each of its units runs three times.
    AlbertConfig(
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=128,
        architectures=["AlbertForMaskedLM"],
    ).save_pretrained(tmp_path)
    batch, seq, hidden = 2, 8, 64
    work = count_work(meta_of(tmp_path), Workload(batch=batch, seq=seq))
    query = work["albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query", Phase.PREFILL]
    assert query.flops == 3 * 2 * batch * seq * hidden * hidden
    weights = (hidden * hidden + hidden) * 4  # read once per pass
    activations = 3 * 2 * batch * seq * hidden * 4  # each call reads its input and writes its output
    assert query.bytes_moved == weights + activations


def test_unit_work_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        UnitWork(flops=-1, bytes_moved=0)


def test_70b_shaped_config_is_counted_on_meta_without_materialising_a_weight(tmp_path: Path) -> None:
    # how long it takes is benchmarks/scale_70b's to print, not a threshold here
    hidden, layers, inter, heads, kv_heads, vocab = 8192, 80, 28672, 64, 8, 32000
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    batch, seq = 1, 32
    meta = meta_of(tmp_path, "bfloat16")
    work = count_work(meta, Workload(batch=batch, seq=seq, new_tokens=1, dtype="bfloat16"))
    assert all(tensor.is_meta for tensor in [*meta.model.parameters(), *meta.model.buffers()])

    assert work["lm_head", Phase.PREFILL].flops == 2 * batch * 8192 * 32000  # the last position's logits
    head_dim = hidden // heads
    linear = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    layer = work["model.layers.79", Phase.PREFILL]
    assert layer.flops == 2 * batch * seq * linear + attention_flops(batch, heads, seq, seq, head_dim)
    assert len([key for key in work if key[1] is Phase.PREFILL]) == layers + 4
    # A decode step of a 70B layer is memory bound: it reads ~1.7 GB of weights for ~3.4 GFLOP.
    decode = work["model.layers.0", Phase.DECODE]
    assert decode.flops < 2.0 * decode.bytes_moved


def test_kernels_are_the_operators_that_do_work(config_folder: Callable[[str], Path]) -> None:
    work = count_work(meta_of(config_folder("llama")), Workload(batch=1, seq=8, new_tokens=3))
    for phase in Phase:
        # Llama's RMSNorm in float32: pow, mean, add, rsqrt, mul, mul; the head's views and
        # transpose are free and leave one matmul; an embedding is one gather
        assert work["model.norm", phase].kernels == 6
        assert work["lm_head", phase].kernels == 1
        assert work["model.embed_tokens", phase].kernels == 1
        layers = {w.kernels for (unit, p), w in work.items() if p is phase and ".layers." in unit}
        assert len(layers) == 1 and layers.pop() > 7  # seven projections, and more


def test_fused_attention_is_one_kernel() -> None:
    from torch.nn import functional

    from profiler.flops import _KernelCounter

    q = torch.zeros(1, 2, 4, 8, device="meta")
    assert kernels_launched(lambda: functional.scaled_dot_product_attention(q, q, q, is_causal=True)) == 1
    counter = _KernelCounter()
    with counter:  # without the attention mode, its math path's operators each count
        functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert counter.count > 2


def test_a_real_decode_step_launches_the_kernels_the_meta_pass_gives_its_units(
    config_folder: Callable[[str], Path],
) -> None:
    # the measured cost per kernel is a real step's time over its kernels, and a unit is priced
    # at its meta-counted kernels times that cost: the two counts must agree
    config = TINY_CONFIGS["llama"]()
    torch.manual_seed(0)
    model = model_class(config)(config).eval()
    with torch.no_grad():
        output = model(torch.randint(0, config.vocab_size, (1, 8)), use_cache=True)
        token = output.logits[:, -1:].argmax(-1)
        real = kernels_launched(lambda: model(token, past_key_values=output.past_key_values, use_cache=True))
    work = count_work(meta_of(config_folder("llama")), Workload(batch=1, seq=8, new_tokens=2))
    units = sum(w.kernels for (_, phase), w in work.items() if phase is Phase.DECODE)
    # what runs outside every unit is priced in none: the model's glue, here the step's cache
    # positions (an arange and an add)
    assert units <= real <= units + 2

from __future__ import annotations

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import LlamaConfig
from transformers import LlamaForCausalLM

from profiler.memory import LiveBytesTracker
from profiler.memory import storage_bytes


def test_linear_layer_peak_is_its_output() -> None:
    linear = torch.nn.Linear(256, 512)
    x = torch.randn(2, 16, 256)
    with torch.no_grad(), LiveBytesTracker(existing=[x, *linear.parameters()]) as tracker:
        linear(x)
    expected = 2 * 16 * 512 * 4
    assert abs(tracker.peak - expected) <= 0.1 * expected


def test_freed_temporaries_leave_the_working_set() -> None:
    x = torch.randn(64, 128)

    def chain(x: torch.Tensor) -> torch.Tensor:
        a = x * 2
        b = a + 1
        del a
        c = b * 3
        del b
        return c * 4

    with LiveBytesTracker(existing=[x]) as tracker:
        chain(x)
    one = 64 * 128 * 4
    # Never more than two temporaries are alive at once.
    assert tracker.peak == 2 * one


def test_decoder_layer_peak_matches_pytorch_memory_tracker() -> None:
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    layer = model.model.layers[0]
    x = torch.randn(2, 64, 256)
    positions = torch.arange(64).unsqueeze(0)
    cos, sin = model.model.rotary_emb(x, positions)
    with torch.no_grad(), LiveBytesTracker(existing=[x, cos, sin, *layer.parameters()]) as ours:
        layer(x, position_embeddings=(cos, sin), attention_mask=None)
    reference = MemTracker()
    reference.track_external(layer, x, cos, sin)
    with torch.no_grad(), reference:
        layer(x, position_embeddings=(cos, sin), attention_mask=None)
    peak = reference.get_tracker_snapshot("peak")[torch.device("cpu")]
    live = sum(value for kind, value in peak.items() if str(kind) in {"_MemRefType.ACT", "_MemRefType.TEMP"})
    assert live > 0
    assert abs(ours.peak - live) <= 0.1 * live


def test_storage_bytes_counts_views_once() -> None:
    base = torch.zeros(1000)
    assert storage_bytes([base, base[:10], base.view(10, 100)]) == 4000

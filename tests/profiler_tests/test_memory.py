from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import DynamicCache
from transformers import LlamaConfig
from transformers import LlamaForCausalLM

from profiler.memory import HeldBytes
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4096), st.lists(st.integers(0, 7), max_size=3)), max_size=40))
def test_the_peak_is_the_most_bytes_live_after_any_op(program: list[tuple[int, list[int]]]) -> None:
    """Each step frees some tensors, then makes one of `size` bytes: however many were freed
    since the tracker last looked, its peak and (once it looks) its count are exact."""
    live: list[torch.Tensor] = []
    expected_peak = 0
    with LiveBytesTracker() as tracker:
        for size, frees in program:
            for index in frees:
                if index < len(live):
                    del live[index]
            live.append(torch.empty(size, dtype=torch.uint8, device="meta"))
            expected_peak = max(expected_peak, sum(t.nbytes for t in live))
        assert tracker.peak == expected_peak
        tracker.live()
        assert tracker.current == sum(t.nbytes for t in live)


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


class _KeepsItsFirstOutput(torch.nn.Module):
    """Two units; the glue between them keeps the first's output, doubles it with the help of a
    temporary it drops at once, and writes a generation state (a KV cache) that the forward
    returns."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 8)
        self.second = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
        kept = self.first(x)
        doubled = kept * 2 + torch.ones(10, 10).sum() * 0
        cache = DynamicCache()
        cache.update(torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4), 0)
        return self.second(doubled), kept, cache


def test_held_bytes_are_what_the_forward_keeps_when_each_unit_starts_its_state_aside() -> None:
    model = _KeepsItsFirstOutput()
    held = HeldBytes(existing=[*model.parameters()])
    for name in ("first", "second"):
        unit = model.get_submodule(name)
        unit.register_forward_pre_hook(lambda module, args, name=name: held.unit_starts(name))
        unit.register_forward_hook(lambda module, args, output, name=name: held.unit_ends(name))
    with torch.no_grad(), held:
        x = torch.ones(3, 4)  # made in the phase: the forward's input, 48 bytes
        output = model(x)
        held.phase_ended(output)
        # The next phase counts from zero: the first phase's outputs, still referenced here,
        # are not held by its forward.
        output = model(torch.ones(3, 4))
        held.phase_ended(output)
    # first: its input. second: the input, the kept output and its double (3 x 8 floats each);
    # the cache's keys and values (32 bytes each) are the state's, not held. Before it, the glue
    # held its first product, a temporary of 10 x 10 floats and its sum as well, all at once.
    assert held.held == {"first": 48, "second": 48 + 96 + 96}
    assert held.glue == {"first": 48, "second": 48 + 96 + 96 + 400 + 4}
    # Inside, each allocates its output: 3 x 8 and 3 x 2 floats, in each phase.
    assert held.inside == [{"first": 96, "second": 24}] * 2


def test_the_glue_peak_is_what_was_live_at_once_however_much_was_freed_since_a_look() -> None:
    """Below the peak of a unit before it, the glue code's count is not looked at by the tracker
    and may still hold a freed storage: a large temporary freed before a small one is made must
    not be counted beside it."""

    def made(nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device="meta")

    held = HeldBytes()
    with held:
        held.unit_starts("first")
        scratch = made(5000)
        del scratch
        first = made(10)
        held.unit_ends("first")
        large = made(1000)  # live beside `first`: the glue's peak, 1010
        del large
        small = made(10)
        held.unit_starts("second")
        second = made(30)
        held.unit_ends("second")
        held.phase_ended(second)
    del first, small
    assert held.glue == {"first": 0, "second": 1010} and held.held == {"first": 0, "second": 20}
    assert held.inside == [{"first": 5000, "second": 30}]

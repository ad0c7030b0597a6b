"""The tiny Llama the measurements run: a transformers model whose work is next to nothing, so
that what it costs is what a real layer pays around its work (kernels launched, Python, hooks,
weight reads)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from profiler.hardware._lazy import LazyModule

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = ["tiny_llama"]


def tiny_llama(device: torch.device, layers: int = 4) -> Any:
    """A Llama of `layers` decoder layers, hidden 64, random weights (seeded), in eval mode."""
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    return model.to(device).eval()

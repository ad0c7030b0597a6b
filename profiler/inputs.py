"""The forward passes of a workload: the prefill call and one decode step, as `generate` makes them.

Token ids are zeros: every timing and every byte count depends on shapes, never on values.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from tuner.core.domain import Workload
from tuner.core.exceptions import WorkloadError

__all__ = ["check_workload", "prefill_inputs", "decode_inputs", "TORCH_DTYPES"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def check_workload(model: PreTrainedModel, workload: Workload) -> None:
    """Refuse a workload the model cannot run, before any measurement starts."""
    if workload.new_tokens > 0 and not model.can_generate():
        raise WorkloadError(
            f"{type(model).__name__} does not generate text; ask for new_tokens=0 (--new-tokens 0), "
            "a forward-only workload"
        )
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    total = workload.seq + workload.new_tokens
    if limit is not None and not model.config.is_encoder_decoder and total > limit:
        raise WorkloadError(
            f"seq + new tokens = {total} exceeds the model's {limit} positions (max_position_embeddings)"
        )


def prefill_inputs(model: PreTrainedModel, workload: Workload, device: torch.device) -> dict[str, Any]:
    """Keyword arguments of the first forward of `generate` (the whole prompt)."""
    ids = torch.zeros(workload.batch, workload.seq, dtype=torch.long, device=device)
    inputs: dict[str, Any] = {"input_ids": ids}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.zeros(workload.batch, 1, dtype=torch.long, device=device)
    if model.can_generate():
        inputs["use_cache"] = True
    return inputs


def decode_inputs(
    model: PreTrainedModel, workload: Workload, prefill_output: Any, device: torch.device
) -> dict[str, Any]:
    """Keyword arguments of one decode step after the prefill returned `prefill_output`.

    An encoder-decoder model reuses the encoder's output, as `generate` does: a decode step runs
    only the decoder.
    """
    next_ids = torch.zeros(workload.batch, 1, dtype=torch.long, device=device)
    inputs: dict[str, Any] = {"past_key_values": prefill_output.past_key_values, "use_cache": True}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = next_ids
        inputs["encoder_outputs"] = (prefill_output.encoder_last_hidden_state,)
    else:
        inputs["input_ids"] = next_ids
    return inputs

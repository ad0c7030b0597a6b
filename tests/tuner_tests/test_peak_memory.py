"""Predicted peak memory against the peak a model loaded for real reaches: the whole model in
RAM, priced (`tuner.price`) and then loaded and run (`tuner.validate`, whose cpu peak is the
resident weights plus the most the call's tensors held at once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tuner
from tests.checkpoints import llama_with
from tests.checkpoints import save_weights
from tests.families import FAMILIES
from tests.families import save_family
from tests.families import with_short_audio
from tuner.core.domain import DeviceMemory

pytestmark = pytest.mark.usefixtures("one_thread")


def cpu_peaks(folder: Path, device_map: dict[str, str], **options: object) -> tuple[DeviceMemory, int]:
    """The cpu's predicted memory under `device_map` (`tuner.price`), and the peak it reaches
    loaded and run for real (`tuner.validate`, which must succeed)."""
    predicted = tuner.price(str(folder), device_map, repeats=1, **options)  # type: ignore[arg-type]
    validated = tuner.validate(str(folder), device_map=device_map, repeats=1, **options)  # type: ignore[arg-type]
    assert validated.validation.ok, validated.validation.reason
    memory = next(memory for memory in predicted.memory if memory.device == "cpu")
    return memory, validated.validation.peak_memory["cpu"]


@pytest.mark.parametrize("family", ["wav2vec2", "whisper", "speecht5", "biogpt", "llama", "mamba", "t5"])
def test_the_predicted_cpu_peak_covers_what_the_loaded_model_reaches(
    family: str, tmp_path: Path, measured_db_url: str
) -> None:
    folder = save_family(family, tmp_path / family)
    config = FAMILIES[family].config()
    if family == "wav2vec2":
        with_short_audio(folder)
    new_tokens = 0 if config.architectures[0].endswith("CTC") else 2
    options: dict[str, object] = dict(seq=8, new_tokens=new_tokens, db=measured_db_url)
    memory, measured = cpu_peaks(folder, {"": "cpu"}, **options)
    # Never short (a short prediction is an out-of-memory error); at most 20% over: the KV
    # cache is priced as if held beside the largest working set, an encoder's included (Whisper:
    # 1.5 MB of cross-attention cache beside its encoder's 4.4 MB; 15% over).
    assert measured <= memory.total <= 1.2 * measured, (memory, measured)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("embedding", ["cpu", "disk"])
def test_a_mixture_of_experts_decodes_on_the_path_generate_takes_for_the_map(
    family: str, embedding: str, tmp_path: Path, measured_db_url: str
) -> None:
    """generate decodes experts on batched_mm, which gathers the chosen experts' weights, when
    ``model.device`` (its first parameter's) is not the cpu: with the embedding on disk it is
    ``meta``. Both maps are covered as they run."""
    folder = save_family(family, tmp_path / family)
    device_map = {"model.embed_tokens": embedding, "model.rotary_emb": "cpu", "model.layers": "cpu"}
    device_map |= {"model.norm": "cpu", "lm_head": "cpu"}
    options: dict[str, object] = dict(seq=8, new_tokens=4, db=measured_db_url)
    memory, measured = cpu_peaks(folder, device_map, **options)
    assert measured <= memory.total <= 1.2 * measured, (memory, measured)


def test_generate_is_priced_with_the_last_logits_of_the_prompt_alone(
    tmp_path: Path, measured_db_url: str
) -> None:
    """generate asks a model whose forward takes ``logits_to_keep`` for the last position's
    logits alone, and keeps copies of them (float32 scores, a processor's) until the next step
    returns; a forward makes every position's logits. With a vocabulary of 8192 the prompt's
    logits (batch 4 x seq 64 x 8192 floats, 8 MiB) are most of a forward's peak."""
    folder = save_weights(llama_with(vocab_size=8192), tmp_path / "llama")
    peaks = {}
    for new_tokens in (0, 2):
        options: dict[str, object] = dict(batch=4, seq=64, new_tokens=new_tokens, db=measured_db_url)
        memory, measured = cpu_peaks(folder, {"": "cpu"}, **options)
        assert measured <= memory.total <= 1.1 * measured, (new_tokens, memory, measured)
        peaks[new_tokens] = memory.total
    assert peaks[0] - peaks[2] > 4 * 64 * 8192 * 4 // 2  # most of the prompt's logits


@pytest.mark.parametrize(
    ("stored", "pickled"), [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)]
)
def test_weights_read_from_disk_in_another_dtype_are_priced_with_the_copy_the_cast_holds(
    stored: torch.dtype, pickled: bool, tmp_path: Path, measured_db_url: str
) -> None:
    """A float32 checkpoint run in bfloat16 with its embedding and head on disk: accelerate's loader
    reads each of their weights whole in float32 and casts it, both copies held for a moment (the
    embedding's: 8192 x 64 x 4 bytes, 2 MiB); a bfloat16 checkpoint reads them as they run, and a
    ``.bin`` one from the offload folder, where they were written as loaded, in bfloat16."""
    folder = save_weights(llama_with(vocab_size=8192), tmp_path / "llama", stored)
    if pickled:
        weights = folder / "model.safetensors"
        torch.save(load_file(weights), folder / "pytorch_model.bin")
        weights.unlink()
    graph = tuner.profile(
        str(folder), seq=8, new_tokens=2, dtype="bfloat16", db=measured_db_url
    ).profile.graph
    cast = {unit.name: unit.disk_cast_bytes for unit in graph.units}
    expected = 8192 * 64 * 4 if stored == torch.float32 and not pickled else 0
    assert cast["model.embed_tokens"] == cast["lm_head"] == expected
    device_map = {"model.embed_tokens": "disk", "model.rotary_emb": "cpu", "model.layers": "cpu"}
    device_map |= {"model.norm": "cpu", "lm_head": "disk"}
    options: dict[str, object] = dict(seq=8, new_tokens=2, dtype="bfloat16", db=measured_db_url)
    memory, measured = cpu_peaks(folder, device_map, **options)
    assert measured <= memory.total <= 1.2 * measured, (memory, measured)

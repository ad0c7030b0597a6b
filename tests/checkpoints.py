"""Checkpoints as users bring them, beyond float32 weights: a bfloat16 checkpoint, bitsandbytes
4-bit and 8-bit checkpoints (quantized on this CPU, as bitsandbytes 0.50 does), and tiny
mixture-of-experts configs of each family transformers ships. Nothing is downloaded.

Fixtures are session-wide: a test that needs one imports it from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from transformers import DeepseekV3Config
from transformers import MixtralConfig
from transformers import PretrainedConfig
from transformers import Qwen2MoeConfig
from transformers import Qwen3MoeConfig

from tests.conftest import TINY_CONFIGS
from tests.conftest import model_class

_MOE_COMMON: dict[str, object] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
)

#: Tiny mixture-of-experts configs: 4 experts, 2 of them per token, per family.
MOE_CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {
    "mixtral": lambda experts=4: MixtralConfig(
        intermediate_size=128,
        num_local_experts=experts,
        num_experts_per_tok=2,
        architectures=["MixtralForCausalLM"],
        **_MOE_COMMON,
    ),
    "qwen2_moe": lambda experts=4: Qwen2MoeConfig(
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=experts,
        num_experts_per_tok=2,
        architectures=["Qwen2MoeForCausalLM"],
        **_MOE_COMMON,
    ),
    "qwen3_moe": lambda experts=4: Qwen3MoeConfig(
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=experts,
        num_experts_per_tok=2,
        head_dim=16,
        architectures=["Qwen3MoeForCausalLM"],
        **_MOE_COMMON,
    ),
    "deepseek_v3": lambda experts=4: DeepseekV3Config(
        intermediate_size=128,
        moe_intermediate_size=32,
        n_routed_experts=experts,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_shared_experts=1,
        architectures=["DeepseekV3ForCausalLM"],
        **_MOE_COMMON,
    ),
}

#: The config.json entry of a bitsandbytes checkpoint, by bits, as `save_pretrained` writes it.
BNB_SETTINGS: dict[int, dict[str, object]] = {
    4: {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"},
    8: {"load_in_8bit": True},
}


def llama_with(**changes: object) -> PretrainedConfig:
    config = TINY_CONFIGS["llama"]()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def save_weights(config: PretrainedConfig, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(0)
    model_class(config)(config).to(dtype).save_pretrained(folder)
    return folder


def set_config(folder: Path, **entries: object) -> None:
    """Change config.json as a user's file may have it (a legacy key, a key left out)."""
    path = folder / "config.json"
    document = json.loads(path.read_text())
    for key, value in entries.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    path.write_text(json.dumps(document, indent=2))


@pytest.fixture(scope="session")
def bf16_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved in bfloat16: from_pretrained loads it in bfloat16 when given no dtype."""
    return save_weights(TINY_CONFIGS["llama"](), tmp_path_factory.mktemp("llama-bf16"), torch.bfloat16)


@pytest.fixture(scope="session")
def bnb_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """A bitsandbytes checkpoint of a Llama (hidden 256, so that 4-bit blocks are whole), by bits:
    float32 weights quantized on this CPU by `from_pretrained`, then saved pre-quantized."""
    pytest.importorskip("bitsandbytes")
    made: dict[int, Path] = {}

    def make(bits: int) -> Path:
        if bits not in made:
            plain = save_weights(
                llama_with(hidden_size=256, intermediate_size=512, vocab_size=256),
                tmp_path_factory.mktemp("llama-plain"),
            )
            settings = transformers.BitsAndBytesConfig(**BNB_SETTINGS[bits])
            quantized = transformers.AutoModelForCausalLM.from_pretrained(
                plain, quantization_config=settings, device_map={"": "cpu"}
            )
            made[bits] = tmp_path_factory.mktemp(f"llama-bnb{bits}")
            quantized.save_pretrained(made[bits])
        return made[bits]

    return make


@pytest.fixture(scope="session")
def moe_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A folder of a tiny MoE model by family: config.json alone, or with float32 weights."""
    made: dict[tuple[str, bool, int], Path] = {}

    def make(family: str, *, weights: bool = False, experts: int = 4) -> Path:
        key = (family, weights, experts)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{family}-{experts}")
            config = MOE_CONFIGS[family](experts)
            made[key] = save_weights(config, folder) if weights else folder
            if not weights:
                config.save_pretrained(folder)
        return made[key]

    return make

"""Tiny configs of the model families users bring, one builder per family, and checkpoints of them
as users have them (safetensors, sharded, ``.bin``, float16 and bfloat16). Nothing is downloaded.

Every config is small enough that a family is profiled, tuned and loaded in seconds: hidden sizes
of 32 to 64, two layers, a vocabulary of 128. Token ids the configs name (padding, start, end)
lie inside that vocabulary, as transformers asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import torch
import transformers as T
from transformers import PretrainedConfig

_TOKENS: dict[str, object] = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER: dict[str, object] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    **_TOKENS,
)
_SEQ2SEQ: dict[str, object] = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    vocab_size=128,
    max_position_embeddings=256,
    decoder_start_token_id=2,
    **_TOKENS,
)
_ENCODER: dict[str, object] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    vocab_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
)


#: A waveform model's feature encoder: two convolutions striding 10x, a small positional one.
_WAVEFORM: dict[str, object] = dict(
    conv_dim=(32, 32),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def _gpt2_like(
    config_class: type[PretrainedConfig], architecture: str, **changes: object
) -> PretrainedConfig:
    settings: dict[str, object] = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=256)
    settings.update(bos_token_id=1, eos_token_id=2)
    settings.update(changes)
    return config_class(architectures=[architecture], **settings)


#: One tower of a dual encoder (CLIP's text and vision towers).
_SMALL_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2}


@dataclass(frozen=True)
class Family:
    """A family of models by one tiny config, and how its checkpoint is saved.

    Args:
        kind: decoder, moe, encoder-decoder, encoder, speech, vision-language, vision,
            state-space, hybrid.
        config: builds the config.
        dtype: the dtype the weights are saved in (the checkpoint's own).
        save: extra arguments of ``save_pretrained`` (``max_shard_size``); ``safe_serialization``
            False writes ``pytorch_model.bin``, as transformers 4 did (transformers 5 ignores it).
        tied: the output head shares the input embedding's weight.
    """

    kind: str
    config: Callable[[], PretrainedConfig]
    dtype: torch.dtype = torch.float32
    save: dict[str, object] = field(default_factory=dict)

    @property
    def tied(self) -> bool:
        config = self.config()
        text = config.get_text_config(decoder=True)
        return bool(
            getattr(text, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False)
        )


def _llama(**changes: object) -> PretrainedConfig:
    return T.LlamaConfig(architectures=["LlamaForCausalLM"], **{**_DECODER, **changes})


#: Family name -> its tiny config and checkpoint.
FAMILIES: dict[str, Family] = {
    # decoders
    "llama": Family("decoder", _llama),
    "llama-tied": Family("decoder", lambda: _llama(tie_word_embeddings=True)),
    "llama-fp16": Family("decoder", _llama, dtype=torch.float16),
    "llama-bf16": Family("decoder", _llama, dtype=torch.bfloat16),
    "llama-sharded": Family("decoder", _llama, save={"max_shard_size": "40KB"}),
    "llama-bin": Family("decoder", _llama, save={"safe_serialization": False}),
    "mistral": Family("decoder", lambda: T.MistralConfig(architectures=["MistralForCausalLM"], **_DECODER)),
    "qwen2": Family("decoder", lambda: T.Qwen2Config(architectures=["Qwen2ForCausalLM"], **_DECODER)),
    "qwen3": Family(
        "decoder", lambda: T.Qwen3Config(architectures=["Qwen3ForCausalLM"], head_dim=16, **_DECODER)
    ),
    "gemma": Family(
        "decoder", lambda: T.GemmaConfig(architectures=["GemmaForCausalLM"], head_dim=16, **_DECODER)
    ),
    "gemma2": Family(  # soft-capped logits, sliding-window layers between global ones
        "decoder", lambda: T.Gemma2Config(architectures=["Gemma2ForCausalLM"], head_dim=16, **_DECODER)
    ),
    "phi": Family("decoder", lambda: T.PhiConfig(architectures=["PhiForCausalLM"], **_DECODER)),
    "phi3": Family("decoder", lambda: T.Phi3Config(architectures=["Phi3ForCausalLM"], **_DECODER)),
    "gpt2": Family("decoder", lambda: _gpt2_like(T.GPT2Config, "GPT2LMHeadModel")),
    "gpt_bigcode": Family("decoder", lambda: _gpt2_like(T.GPTBigCodeConfig, "GPTBigCodeForCausalLM")),
    "openai_gpt": Family("decoder", lambda: _gpt2_like(T.OpenAIGPTConfig, "OpenAIGPTLMHeadModel")),
    "gpt_neox": Family(
        "decoder",
        lambda: T.GPTNeoXConfig(
            architectures=["GPTNeoXForCausalLM"],
            **{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"},
        ),
    ),
    "opt": Family(
        "decoder",
        lambda: T.OPTConfig(
            architectures=["OPTForCausalLM"],
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            vocab_size=128,
            max_position_embeddings=256,
            **_TOKENS,
        ),
    ),
    "bloom": Family(
        "decoder",
        lambda: T.BloomConfig(
            architectures=["BloomForCausalLM"], hidden_size=64, n_layer=2, n_head=4, vocab_size=128
        ),
    ),
    "falcon": Family(
        "decoder",
        lambda: T.FalconConfig(
            architectures=["FalconForCausalLM"],
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=128,
        ),
    ),
    "biogpt": Family(
        "decoder",
        lambda: T.BioGptConfig(
            architectures=["BioGptForCausalLM"],
            **{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"},
        ),
    ),
    # mixture of experts (Qwen3-MoE and DeepSeek-V3 run in tests/tuner_tests/test_moe_runs.py)
    "mixtral": Family(
        "moe",
        lambda: T.MixtralConfig(
            architectures=["MixtralForCausalLM"], num_local_experts=4, num_experts_per_tok=2, **_DECODER
        ),
    ),
    "qwen2_moe": Family(
        "moe",
        lambda: T.Qwen2MoeConfig(
            architectures=["Qwen2MoeForCausalLM"],
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=4,
            num_experts_per_tok=2,
            **_DECODER,
        ),
    ),
    "gpt_oss": Family(  # attention sinks, experts' weights fused in one parameter per layer
        "moe",
        lambda: T.GptOssConfig(
            architectures=["GptOssForCausalLM"],
            num_local_experts=4,
            num_experts_per_tok=2,
            head_dim=16,
            layer_types=["sliding_attention", "full_attention"],
            **_DECODER,
        ),
    ),
    "deepseek_v4": Family(
        "moe",
        lambda: T.DeepseekV4Config(
            architectures=["DeepseekV4ForCausalLM"],
            vocab_size=128,
            hidden_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            q_lora_rank=32,
            num_experts_per_tok=2,
            n_routed_experts=4,
            n_shared_experts=1,
            max_position_embeddings=256,
            layer_types=["heavily_compressed_attention", "compressed_sparse_attention"],
            mlp_layer_types=["hash_moe", "moe"],
            hc_mult=2,
            sliding_window=8,
            o_groups=2,
            o_lora_rank=32,
            index_n_heads=4,
            index_head_dim=16,
            index_topk=4,
            qk_rope_head_dim=8,
            **_TOKENS,
        ),
    ),
    # encoder-decoders
    "t5": Family(
        "encoder-decoder",
        lambda: T.T5Config(
            architectures=["T5ForConditionalGeneration"],
            d_model=64,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            d_kv=16,
            vocab_size=128,
            decoder_start_token_id=0,
            **_TOKENS,
        ),
    ),
    "bart": Family(
        "encoder-decoder", lambda: T.BartConfig(architectures=["BartForConditionalGeneration"], **_SEQ2SEQ)
    ),
    "marian": Family("encoder-decoder", lambda: T.MarianConfig(architectures=["MarianMTModel"], **_SEQ2SEQ)),
    # encoders with heads
    "bert": Family("encoder", lambda: T.BertConfig(architectures=["BertForMaskedLM"], **_ENCODER)),
    "roberta": Family(
        "encoder",
        lambda: T.RobertaConfig(
            architectures=["RobertaForSequenceClassification"],
            num_labels=3,
            **{**_ENCODER, "pad_token_id": 1},
        ),
    ),
    "distilbert": Family(
        "encoder",
        lambda: T.DistilBertConfig(
            architectures=["DistilBertForQuestionAnswering"],
            dim=64,
            hidden_dim=128,
            n_layers=2,
            n_heads=4,
            vocab_size=128,
            max_position_embeddings=256,
        ),
    ),
    # speech, vision
    "whisper": Family(
        "speech",
        lambda: T.WhisperConfig(
            architectures=["WhisperForConditionalGeneration"],
            num_mel_bins=80,
            max_source_positions=1500,
            max_target_positions=64,
            suppress_tokens=[],
            begin_suppress_tokens=[],
            **{k: v for k, v in _SEQ2SEQ.items() if k != "max_position_embeddings"},
        ),
    ),
    "wav2vec2": Family(  # a weight-normed convolution: a parametrization, kept one unit
        "speech",
        lambda: T.Wav2Vec2Config(
            architectures=["Wav2Vec2ForCTC"],
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=32,
            **_WAVEFORM,
        ),
    ),
    "speecht5": Family(  # a waveform longer than its speech positions take: the window is cut to fit
        "speech",
        lambda: T.SpeechT5Config(
            architectures=["SpeechT5ForSpeechToText"],
            hidden_size=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            vocab_size=128,
            **_WAVEFORM,
            max_speech_positions=500,
            max_text_positions=64,
            decoder_start_token_id=2,
            **_TOKENS,
        ),
    ),
    "llava": Family(
        "vision-language",
        lambda: T.LlavaConfig(
            architectures=["LlavaForConditionalGeneration"],
            vision_config=T.CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            text_config=T.LlamaConfig(**_DECODER),
            image_token_id=100,
        ),
    ),
    "vit": Family(
        "vision",
        lambda: T.ViTConfig(
            architectures=["ViTForImageClassification"],
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
            num_labels=3,
        ),
    ),
    "clip": Family(  # a text tower beside a vision tower, and a bare parameter (logit_scale)
        "vision-language",
        lambda: T.CLIPConfig(
            architectures=["CLIPModel"],
            text_config={
                **_SMALL_TOWER,
                "vocab_size": 128,
                "bos_token_id": 0,
                "eos_token_id": 1,
                "pad_token_id": 2,
            },
            vision_config={**_SMALL_TOWER, "image_size": 32, "patch_size": 8},
            projection_dim=32,
        ),
    ),
    # state-space and hybrids
    "mamba": Family(
        "state-space",
        lambda: T.MambaConfig(
            architectures=["MambaForCausalLM"],
            hidden_size=64,
            num_hidden_layers=2,
            vocab_size=128,
            state_size=8,
            **_TOKENS,
        ),
    ),
    "jamba": Family(
        "hybrid",
        lambda: T.JambaConfig(
            architectures=["JambaForCausalLM"],
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=2,
            mamba_d_state=8,
            **_DECODER,
        ),
    ),
}


def save_family(family: str, folder: Path, *, weights: bool = True) -> Path:
    """`family`'s checkpoint in `folder` (seeded random weights in its dtype), or its config.json
    alone without `weights`."""
    spec = FAMILIES[family]
    config = spec.config()
    if not weights:
        config.save_pretrained(folder)
        return folder
    torch.manual_seed(0)
    model = getattr(T, config.architectures[0])(config).to(spec.dtype)
    saving = dict(spec.save)
    pickled = saving.pop("safe_serialization", True) is False
    model.save_pretrained(folder, **saving)  # type: ignore[arg-type]
    if pickled:  # transformers 5 writes safetensors whatever it is asked: the state dict by hand
        for written in folder.glob("*.safetensors"):
            written.unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def with_short_audio(folder: Path) -> Path:
    """`folder` with a wav2vec2 feature extractor whose window is 2 s of audio, not the 30 s a
    model without one is fed: a tiny wav2vec2's attention over 30 s (48k positions) takes
    minutes on this cpu."""
    extractor = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "n_samples": 32_000}
    (folder / "preprocessor_config.json").write_text(json.dumps(extractor))
    return folder

"""The inputs of a workload's forward passes, as ``generate`` makes them, for every kind of model.

What a model is fed comes from the model itself, never from a table of model names:

- its main input (``model.main_input_name``): token ids for text; input features or values for
  speech, as the model's own feature extractor makes them from a silent window (the one in the
  model's folder, else its class's defaults with the config's mel bins); pixel values for vision;
- an image per prompt for a vision-language model (one with ``get_image_features`` and an image
  placeholder token in its config): pixels at the image processor's size (its
  ``preprocessor_config.json``, else the vision config's ``image_size``), and as many placeholder
  tokens before the prompt's ``seq`` text tokens as the vision tower, run on the meta device,
  makes features for one image;
- the decoder's start token for an encoder-decoder, whose encoder takes the prompt;
- for one decode step, what ``generate`` passes after the prefill: the model's own
  ``prepare_inputs_for_generation`` given the next token, the prefill's generation state under the
  name the model returned it (``past_key_values``, Mamba's ``cache_params``), or, for a model that
  keeps no state (OpenAI-GPT), the whole sequence again.

Token ids are the smallest id that is no placeholder (profiling: shapes decide every time and
byte count, never values) or seeded random ones that avoid placeholders (validation).
"""

from __future__ import annotations

import inspect
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from tuner.core.domain import Workload
from tuner.core.exceptions import WorkloadError

__all__ = ["ModelInputs", "TORCH_DTYPES", "check_workload", "model_inputs"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

#: Seconds of audio a speech model is fed when its feature extractor names no window of its own
#: (Whisper's does: 30 s, padded), or as much as its positions take.
DEFAULT_AUDIO_SECONDS = 30.0

#: Config attributes that name placeholder tokens random prompt tokens must not hit.
_PLACEHOLDER_MARKERS = ("image_token", "video_token", "audio_token")

_KINDS = {"input_ids": "text", "input_features": "speech", "input_values": "speech", "pixel_values": "vision"}


@dataclass(frozen=True)
class ModelInputs:
    """What one generate call (or one forward) of a workload feeds a model, by shape.

    Args:
        batch: prompts per call.
        seq: text tokens of each prompt.
        main_input: the model's main input (``input_ids``, ``input_features``, ``input_values``,
            ``pixel_values``).
        encoder_decoder: the prompt goes to an encoder; a decoder generates from its start token.
        vocab: token ids are below this.
        decoder_start: the first decoder token of an encoder-decoder.
        features: one sample's shape of a speech model's main input.
        image: one image's pixel values shape (channels, height, width), for vision models and
            vision-language models.
        image_token: the placeholder token of a vision-language model.
        image_tokens: placeholders per image, before the text tokens.
        reserved: token ids text tokens never take (placeholders).
        last_logits: the prefill computes the logits of the last position only, as ``generate``
            has a model whose forward takes ``logits_to_keep`` do (all of them for a forward).
    """

    batch: int
    seq: int
    main_input: str = "input_ids"
    encoder_decoder: bool = False
    vocab: int = 1
    decoder_start: int = 0
    features: tuple[int, ...] = ()
    image: tuple[int, ...] = ()
    image_token: int | None = None
    image_tokens: int = 0
    reserved: tuple[int, ...] = ()
    last_logits: bool = False

    @property
    def kind(self) -> str:
        """``text``, ``speech`` or ``vision`` (a vision-language model is ``text`` with an image)."""
        return _KINDS[self.main_input]

    @property
    def takes(self) -> str:
        """What a prompt is, for people: ``text``, ``images of 3 x 224 x 224``, ``speech features
        of 80 x 3000``."""
        if self.kind == "text":
            return "text and images" if self.image else "text"
        what, shape = ("images", self.image) if self.kind == "vision" else ("speech features", self.features)
        return f"{what} of {' x '.join(map(str, shape))}"

    @property
    def prompt_tokens(self) -> int:
        """Token positions of the prompt: text tokens and image placeholders; 0 without token ids."""
        return self.seq + self.image_tokens if self.kind == "text" else 0

    def prompt(self, device: torch.device, dtype: torch.dtype, *, seed: int | None = None) -> dict[str, Any]:
        """The prompt as ``generate`` takes it: token ids and their attention mask, the image's
        pixels, the speech features. Values are fixed (`seed` None) or seeded random ones."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        inputs: dict[str, Any] = {}
        if self.kind == "text":
            # made where they are used: a meta pass of a huge batch allocates nothing
            text = self._text_ids(generator, device)
            if self.image_tokens:
                image_id = int(self.image_token or 0)
                images = torch.full((self.batch, self.image_tokens), image_id, device=device)
                text = torch.cat([images, text], dim=1)
            inputs["input_ids"] = text
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        elif self.kind == "speech":
            inputs[self.main_input] = _values((self.batch, *self.features), dtype, device, generator)
        if self.image:
            inputs["pixel_values"] = _values((self.batch, *self.image), dtype, device, generator)
        return inputs

    def prefill(self, device: torch.device, dtype: torch.dtype, *, seed: int | None = None) -> dict[str, Any]:
        """Keyword arguments of the first forward of ``generate``: the prompt, the decoder's start
        token for an encoder-decoder."""
        inputs = self.prompt(device, dtype, seed=seed)
        if self.encoder_decoder:
            inputs["decoder_input_ids"] = torch.full((self.batch, 1), self.decoder_start, device=device)
        if self.last_logits:
            inputs["logits_to_keep"] = 1
        return inputs

    def decode(self, model: PreTrainedModel, prefill: dict[str, Any], output: Any) -> dict[str, Any]:
        """Keyword arguments of one decode step after the prefill `prefill` returned `output`, as
        ``generate`` makes them with the model's own ``prepare_inputs_for_generation``.

        The generation state is whatever `Cache` the output holds, passed back under its name;
        a model that returns none runs the whole sequence again, as ``generate`` then does. An
        encoder-decoder reuses its encoder's output: a decode step runs only the decoder.
        """
        name, cache = _generation_state(output)
        key = "decoder_input_ids" if self.encoder_decoder else "input_ids"
        sequence = prefill[key]
        ids = torch.cat([sequence, torch.full_like(sequence[:, :1], self._filler())], dim=1)
        kwargs: dict[str, Any] = {k: v for k, v in prefill.items() if k not in (key, "use_cache")}
        if self.encoder_decoder:
            from transformers.modeling_outputs import BaseModelOutput

            for encoder_input in ("input_ids", self.main_input, "pixel_values"):
                kwargs.pop(encoder_input, None)
            kwargs["encoder_outputs"] = BaseModelOutput(last_hidden_state=output.encoder_last_hidden_state)
        elif "attention_mask" in kwargs:
            mask = kwargs["attention_mask"]
            kwargs["attention_mask"] = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if cache is not None:
            kwargs[name] = cache
        prepare: Any = model.prepare_inputs_for_generation  # GenerationMixin: mixed in per class
        return dict(
            prepare(
                ids,
                next_sequence_length=1 if cache is not None else None,
                use_cache=cache is not None,
                is_first_iteration=False,
                **kwargs,
            )
        )

    def _filler(self) -> int:
        """The token id of fixed prompts: the smallest id that is no placeholder."""
        return next(token for token in range(len(self.reserved) + 1) if token not in self.reserved)

    def _text_ids(self, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        shape = (self.batch, self.seq)
        if generator is None:
            return torch.full(shape, self._filler(), dtype=torch.long, device=device)
        # uniform over the ids that are no placeholder: draw among them, then step over each one
        ids = torch.randint(0, max(1, self.vocab - len(self.reserved)), shape, generator=generator)
        for token in sorted(self.reserved):
            ids += (ids >= token).long()
        return ids.to(device)


_CACHED: weakref.WeakKeyDictionary[PreTrainedModel, dict[tuple[Workload, str], ModelInputs]] = (
    weakref.WeakKeyDictionary()
)


def model_inputs(model: PreTrainedModel, workload: Workload, folder: Path | None = None) -> ModelInputs:
    """The inputs `model` takes for `workload`, derived from its config, its class and the
    processor settings in its `folder` (when given); computed once per model and workload.

    `model` is our meta-device instance: a vision-language model's vision tower runs on it to
    count the placeholder tokens of one image.

    Raises:
        WorkloadError: the model takes an input the tuner cannot make, in one line naming it.
    """
    key = (workload, str(folder or ""))
    known = _CACHED.setdefault(model, {})
    if key not in known:
        known[key] = _derive(model, workload, folder)
    return known[key]


def check_workload(model: PreTrainedModel, workload: Workload, folder: Path | None = None) -> ModelInputs:
    """Refuse a workload the model cannot run, before any measurement starts; the inputs it runs
    with otherwise."""
    if workload.new_tokens > 0 and not model.can_generate():
        raise WorkloadError(
            f"{type(model).__name__} does not generate text; ask for new_tokens=0 (--new-tokens 0), "
            f"a forward-only workload{_generating_class(model)}"
        )
    inputs = model_inputs(model, workload, folder)
    config = model.config
    if config.is_encoder_decoder and workload.new_tokens > 0:
        generation = _generation_config(model, folder)
        starts = (getattr(generation, name, None) for name in ("decoder_start_token_id", "bos_token_id"))
        if all(start is None for start in starts):
            raise WorkloadError(
                f"{type(model).__name__} cannot generate: its generation config names no "
                "decoder_start_token_id or bos_token_id for the decoder's first token; set one in "
                "config.json or generation_config.json, or ask for new_tokens=0 (--new-tokens 0)"
            )
    # the last new token is never fed back: it takes no position; but a profile times a decode
    # step whenever the workload generates, at the position after the prompt
    fed_back = max(1, workload.new_tokens - 1) if workload.new_tokens > 0 else 0
    more = "1 (the decode step a profile times)" if workload.new_tokens == 1 else "new tokens - 1"
    if config.is_encoder_decoder:
        limit = _setting(config, "max_target_positions", "max_position_embeddings")
        total, what = 1 + fed_back, f"the decoder's start token + {more}"
        if workload.new_tokens > 0 and _counts_every_new_token(model):
            total, what = 1 + workload.new_tokens, "the decoder's start token + new tokens"
        if inputs.kind == "text":
            source = _setting(config, "max_source_positions", "max_position_embeddings")
            if source is not None and workload.seq > source:
                raise WorkloadError(f"seq = {workload.seq} exceeds the encoder's {source} positions")
    else:
        limit = _setting(config, "max_position_embeddings", "n_positions")
        total = inputs.prompt_tokens + fed_back
        what = f"seq + image tokens + {more}" if inputs.image_tokens else f"seq + {more}"
    if limit is not None and total > limit:
        raise WorkloadError(f"{what} = {total} exceeds the model's {limit} positions")
    return inputs


def _generating_class(model: PreTrainedModel) -> str:
    """For a bare model (``BartModel``, as some checkpoints' configs name their class), the
    class of its family with a language-modelling head, which generates; empty otherwise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(model.config, "model_type", "")
    if not type(model).__name__.endswith("Model") or type(model).__name__.endswith("PreTrainedModel"):
        return ""
    for mapping in (MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        name = mapping.get(model_type)
        if name:
            return (
                f"; config.json's architectures names the bare {type(model).__name__}, without the "
                f"head that generates: {name} has it"
            )
    return ""


def _counts_every_new_token(model: PreTrainedModel) -> bool:
    """Whether the model's ``generate`` refuses start tokens + new tokens beyond its target
    positions, the last new token included though it is never fed back: Whisper's does (and
    counts the language and task tokens its generation config adds, which come on top)."""
    from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

    return isinstance(model, WhisperGenerationMixin)


def _setting(config: Any, *names: str) -> int | None:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for source in (config, text):
        for name in names:
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _derive(model: PreTrainedModel, workload: Workload, folder: Path | None) -> ModelInputs:
    config = model.config
    main = str(getattr(model, "main_input_name", "input_ids"))
    name = type(model).__name__
    if main not in _KINDS:
        raise WorkloadError(f"{name} takes {main} as its input, which the tuner cannot make")
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None) or 1)
    reserved = _placeholders(config)
    settings = _processor_settings(folder)
    fields: dict[str, Any] = {}
    if main == "pixel_values":
        fields["image"] = _image_shape(config, settings)
    elif main != "input_ids":
        fields["features"] = _speech_shape(model, folder, settings)
    elif _image_token(config) is not None and hasattr(model, "get_image_features"):
        image = _image_shape(config, settings)
        fields.update(image=image, image_token=_image_token(config), image_tokens=_image_tokens(model, image))
    elif hasattr(config, "vision_config") and "pixel_values" in inspect.signature(model.forward).parameters:
        # a text tower beside a vision tower (CLIP, SigLIP): each gets its own input, no
        # placeholders; fed text alone, the vision tower fails
        fields["image"] = _image_shape(config, settings)
    return ModelInputs(
        batch=workload.batch,
        seq=workload.seq,
        main_input=main,
        encoder_decoder=bool(config.is_encoder_decoder),
        vocab=vocab,
        decoder_start=_decoder_start(model, folder),
        reserved=tuple(sorted(reserved)),
        # generate's own test (GenerationMixin._supports_logits_to_keep): batch x seq x vocab
        # logits, 1 GiB for a 7B model at batch 8 x 2048 in fp16, are never made
        last_logits=workload.new_tokens > 0
        and "logits_to_keep" in inspect.signature(model.forward).parameters,
        **fields,
    )


def _placeholders(config: Any) -> set[int]:
    found: set[int] = set()
    for source in {id(c): c for c in (config, _sub(config, "text_config"))}.values():
        for key, value in vars(source).items():
            if any(marker in key for marker in _PLACEHOLDER_MARKERS) and isinstance(value, int):
                found.add(value)
    token = _image_token(config)
    if token is not None:
        found.add(token)
    return found


def _sub(config: Any, name: str) -> Any:
    return getattr(config, name, None) or config


def _image_token(config: Any) -> int | None:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _decoder_start(model: PreTrainedModel, folder: Path | None) -> int:
    """The decoder's first token as ``generate`` picks it (the generation config's
    ``decoder_start_token_id``, else its ``bos_token_id``), else the config's; else, for a forward
    alone, the padding token or 0."""
    config = model.config
    generation = _generation_config(model, folder)
    for candidate in (
        getattr(generation, "decoder_start_token_id", None),
        getattr(generation, "bos_token_id", None),
        getattr(config, "decoder_start_token_id", None),
        getattr(config, "pad_token_id", None),
    ):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int):
            return candidate
    return 0


def _generation_config(model: PreTrainedModel, folder: Path | None) -> Any:
    """The generation config ``from_pretrained`` gives the model: its folder's
    ``generation_config.json``, else the one transformers makes from its config."""
    if folder is not None and (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(folder)
        except (OSError, ValueError):
            pass  # from_pretrained warns and keeps the one made from the config
    return getattr(model, "generation_config", None)


def _processor_settings(folder: Path | None) -> dict[str, Any]:
    """The model's processor settings as saved beside it (``preprocessor_config.json``, or the
    image processor's or feature extractor's part of ``processor_config.json``); empty without."""
    if folder is None:
        return {}
    for file_name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / file_name
        if not path.is_file():
            continue
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict):
            for part in ("image_processor", "feature_extractor"):
                if isinstance(settings.get(part), dict):
                    return dict(settings[part])
            return settings
    return {}


def _image_shape(config: Any, settings: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of one image as the image processor hands it to the model."""
    vision = _sub(config, "vision_config")
    channels = int(getattr(vision, "num_channels", None) or 3)
    size = settings.get("crop_size") if settings.get("do_center_crop", True) else None
    size = size or settings.get("size") or getattr(vision, "image_size", None)
    if isinstance(size, dict):
        size = (
            (size["height"], size["width"])
            if "height" in size and "width" in size
            else size.get("shortest_edge") or size.get("longest_edge")
        )
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise WorkloadError(
            f"{type(config).__name__} names no image size (vision_config.image_size, the processor's "
            "size); cannot make its pixel values"
        )
    return channels, int(size[0]), int(size[1])


def _image_tokens(model: PreTrainedModel, image: tuple[int, int, int]) -> int:
    """Placeholder tokens one image takes: the rows of features the model's vision tower makes
    for it, counted on the meta device."""
    from profiler.metavalues import KnownValues

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    pixels = torch.zeros((1, *image), dtype=dtype, device="meta")
    get_features: Any = model.get_image_features
    try:
        with torch.no_grad(), KnownValues():
            features = get_features(pixel_values=pixels)
    except Exception as exc:  # a model whose images need more than pixel values (sizes, grids)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkloadError(
            f"{type(model).__name__}: no image features from pixel values of {image[1]} x {image[2]} "
            f"alone ({first}); the tuner cannot make its image inputs"
        ) from exc
    features = getattr(features, "pooler_output", features)
    parts = list(features) if isinstance(features, (list, tuple)) else [features]
    return sum(part.numel() // part.shape[-1] for part in parts if isinstance(part, torch.Tensor))


def _speech_shape(model: PreTrainedModel, folder: Path | None, settings: dict[str, Any]) -> tuple[int, ...]:
    """One sample's shape of a speech model's input, as its feature extractor makes it from a
    silent window: the extractor's own window (``n_samples``, ``chunk_length``), else
    `DEFAULT_AUDIO_SECONDS` or as much of it as the model's positions take."""
    import numpy as np

    extractor = _feature_extractor(model, folder, settings)
    rate = int(getattr(extractor, "sampling_rate", 16000))
    chunk = getattr(extractor, "chunk_length", None)
    own_window = getattr(extractor, "n_samples", None) or (int(rate * chunk) if chunk else None)
    samples = own_window or _fitting_samples(model, int(rate * DEFAULT_AUDIO_SECONDS))
    made = extractor(np.zeros(int(samples), dtype=np.float32), sampling_rate=rate, return_tensors="pt")
    values = made[model.main_input_name]
    return tuple(int(size) for size in values.shape[1:])


def _fitting_samples(model: PreTrainedModel, samples: int) -> int:
    """`samples` of waveform, or the most that the model's speech positions take (SpeechT5's
    ``max_speech_positions``, else ``max_source_positions``), counted by the model's own
    ``_get_feat_extract_output_lengths``; a model fed features, not a waveform, is left as it is:
    its frames are the extractor's to count."""
    limit = _setting(model.config, "max_speech_positions", "max_source_positions")
    counters = (getattr(m, "_get_feat_extract_output_lengths", None) for m in model.modules())
    counter: Any = next((count for count in counters if callable(count)), None)
    if model.main_input_name != "input_values" or limit is None or counter is None:
        return samples

    def positions(length: int) -> int:
        return int(counter(torch.tensor(length)))

    if positions(samples) <= limit:
        return samples
    fits, too_many = 1, samples  # positions grow with the length: the last length that fits
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if positions(middle) <= limit else (fits, middle)
    return fits


def _feature_extractor(model: PreTrainedModel, folder: Path | None, settings: dict[str, Any]) -> Any:
    from transformers.models.auto import feature_extraction_auto as auto

    name = type(model).__name__
    defaults: dict[str, str] = getattr(auto, "FEATURE_EXTRACTOR_MAPPING_NAMES", {})
    class_name = settings.get("feature_extractor_type") or defaults.get(model.config.model_type)
    cls = auto.feature_extractor_class_from_name(class_name) if class_name else None
    if cls is None:
        raise WorkloadError(
            f"{name} has no feature extractor in transformers; cannot make its {model.main_input_name}"
        )
    options = {k: v for k, v in settings.items() if k not in ("feature_extractor_type", "processor_class")}
    if not options:
        mel_bins = getattr(model.config, "num_mel_bins", None)
        if isinstance(mel_bins, int):
            options["feature_size"] = mel_bins
    try:
        return cls(**options)
    except Exception as exc:  # a feature extractor that needs a library not installed here
        raise WorkloadError(f"{name}: its feature extractor {cls.__name__} cannot be set up: {exc}") from exc


def _values(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    if generator is None:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator).to(dtype=dtype, device=device)


def _generation_state(output: Any) -> tuple[str, Any]:
    """(name, state) of the generation state an output holds, as ``generate`` finds it: the first
    `Cache` among the output's fields; ("", None) for a model that keeps none."""
    from transformers.cache_utils import Cache

    items = output.items() if hasattr(output, "items") else ()
    for name, value in items:
        if isinstance(value, Cache):
            return name, value
    return "", None

"""A model source becomes a ModelGraph: units in execution order, their bytes, ties and data flow.

The model is built on the meta device (no memory, no weights) and run once per phase of the
workload with hooks that record which unit runs when and which tensors each unit receives from
which other unit. Nothing here changes a model the user owns: the meta model is ours.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary
from transformers import PretrainedConfig
from transformers import PreTrainedModel

from profiler.inputs import TORCH_DTYPES
from profiler.inputs import check_workload
from profiler.inputs import model_inputs
from profiler.memory import FusedKernelsOnMeta
from profiler.memory import HeldBytes
from profiler.memory import storage_bytes
from profiler.metavalues import MAX_KNOWN_ELEMENTS
from profiler.metavalues import KnownValues
from profiler.source import ModelSource
from profiler.source import config_fingerprint
from profiler.source import load_config
from profiler.source import safetensors_header
from profiler.state import state_tensors
from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import DTYPE_CHOICES
from tuner.core.domain import INPUT
from tuner.core.domain import Edge
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Quantization
from tuner.core.domain import Unit
from tuner.core.domain import Workload
from tuner.core.domain import stable_hash
from tuner.core.exceptions import ModelSourceError
from tuner.core.exceptions import ProfilingError

__all__ = [
    "MetaModel",
    "build_meta_model",
    "experts_on_meta",
    "forward_phases",
    "kept_by_generate",
    "model_dtype",
    "placeable_units",
    "pretrained_class",
    "resolve_dtype",
    "structural_signature",
    "tied_unit_groups",
    "trace_graph",
]

META = torch.device("meta")

#: The auto classes tried, in order, for a config whose architectures name no transformers class.
_AUTO_CLASSES = (
    transformers.AutoModelForCausalLM,
    transformers.AutoModelForSeq2SeqLM,
    transformers.AutoModel,
)

# Attributes that differ between otherwise identical layers and do not change their cost.
_POSITIONAL_ATTRIBUTES = ("idx", "index", "layer_id", "layer_number")


@dataclass(frozen=True)
class MetaModel:
    """Our own instance of the user's model, on the meta device, with what we know of its source.

    Args:
        source: where the model's files are.
        model: the model as ``from_pretrained`` builds it before loading weights: in `dtype`, with
            the dtype plan's float32 modules, and for a quantized checkpoint with its quantizer's
            modules (``model.hf_quantizer`` is that quantizer). Names and bytes come from it.
        dtype: the dtype it loads in, resolved (``auto`` is the checkpoint's own).
        unquantized: for a quantized checkpoint, the same architecture with plain modules in
            `dtype`: quantized kernels cannot run on the meta device, so forwards run through it.
            None for plain weights.
    """

    source: ModelSource
    model: PreTrainedModel
    dtype: str
    unquantized: PreTrainedModel | None = None

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def runnable(self) -> PreTrainedModel:
        """The model forwards run through: `model` itself, or its unquantized twin."""
        return self.unquantized if self.unquantized is not None else self.model

    @property
    def quantizer(self) -> Any:
        """transformers' quantizer of a quantized checkpoint (an ``HfQuantizer``), else None."""
        return getattr(self.model, "hf_quantizer", None)

    @property
    def quantization(self) -> Quantization | None:
        """What the quantizer decides beyond bytes: placements it allows, the memory it reserves."""
        return _quantization(self.quantizer) if self.quantizer is not None else None

    @property
    def unit_names(self) -> tuple[str, ...]:
        """The units a device map places, in registration order; no forward is run."""
        return tuple(name for name, _ in placeable_units(self.model, no_split_classes(self.model)))

    @property
    def tensorless_units(self) -> frozenset[str]:
        """The units that hold no parameter or buffer (dropouts, activations): a map given to
        ``from_pretrained`` may leave them out."""
        entries = placeable_units(self.model, no_split_classes(self.model))
        return frozenset(
            name
            for name, entry in entries
            if isinstance(entry, nn.Module) and not [*entry.parameters(), *entry.buffers()]
        )

    @property
    def module_names(self) -> frozenset[str]:
        """Every name a device map may use: modules (the whole model is ``""``), parameters and
        buffers, at any depth, under every name a shared one has."""
        names = [
            *(name for name, _ in self.model.named_modules(remove_duplicate=False)),
            *(name for name, _ in self.model.named_parameters(remove_duplicate=False)),
            *(name for name, _ in self.model.named_buffers(remove_duplicate=False)),
        ]
        return frozenset(names)

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes of every parameter and buffer as loaded, under each of its names (a tied weight
        under both): the quantizer's element size for a quantized parameter, else the tensor's."""
        return _stored_bytes(self.model, self.quantizer)

    def unsaved_units(self) -> tuple[str, ...]:
        """Units holding a weight that is not in the checkpoint, made by ``from_pretrained`` when
        it loads: one the model declares a checkpoint may lack (``_keys_to_ignore_on_save``,
        ``_keys_to_ignore_on_load_missing``: Marian's sinusoidal positions, never saved) and the
        checkpoint indeed lacks (every such one for a folder with config.json alone). accelerate
        reads a ``disk`` unit's weights from the checkpoint on every call, so such a unit cannot
        be on disk: the call would fail with a ``KeyError``.
        """
        model = self.model
        patterns = [
            *(getattr(model, "_keys_to_ignore_on_save", None) or ()),
            *(getattr(model, "_keys_to_ignore_on_load_missing", None) or ()),
        ]
        if not patterns:
            return ()
        saved = _checkpoint_names(self.source)
        units = set(self.unit_names)
        return tuple(
            sorted(
                {
                    tensor_owner(units, name)
                    for name, _ in model.named_parameters()
                    if name not in saved and any(re.search(pattern, name) for pattern in patterns)
                }
            )
        )

    def fingerprint(self) -> str:
        identity: dict[str, object] = {
            "architecture": self.architecture,
            "config": config_fingerprint(self.model.config),
            "dtype": self.dtype,
            "weights": self.source.weights_identity(),
        }
        # One unit each since `placeable_units` stopped splitting them: a profile stored before
        # has other units. Named only where there are some, so that no other model's changes.
        kept_whole = [name for name, sub in self.model.named_modules() if parametrize.is_parametrized(sub)]
        if kept_whole:
            identity["parametrized"] = kept_whole
        return stable_hash(identity)


def build_meta_model(
    source: ModelSource,
    dtype: str = AUTO_DTYPE,
    *,
    trust_remote_code: bool = False,
    check_environment: bool = True,
) -> MetaModel:
    """Instantiate the model on the meta device as ``from_pretrained`` would, choosing the class its
    config names.

    `dtype` ``auto`` resolves as ``from_pretrained`` without a ``dtype`` does: the config's
    ``dtype`` (or ``torch_dtype``), else the first floating dtype of the checkpoint's weights,
    else (a folder with config.json alone) float32; a quantizer may then change it
    (``update_dtype``). A checkpoint with a ``quantization_config`` gets transformers' own
    quantizer, which replaces modules and sizes parameters exactly as it does when loading.

    Args:
        check_environment: also run the quantizer's check of this machine (its libraries, its
            devices), as loading here would; leave it off to plan for other hardware.

    Raises:
        ProfilingError: an unknown dtype, a checkpoint dtype the tuner does not price, a
            quantization transformers cannot set up here, or a config the class cannot build.
        ModelSourceError: the checkpoint holds a weight in another shape than the config's.
    """
    if dtype != AUTO_DTYPE and dtype not in TORCH_DTYPES:
        raise ProfilingError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    config = load_config(source, trust_remote_code=trust_remote_code)
    quantizer = _quantizer(source, config, check_environment=check_environment)
    resolved = resolve_dtype(source, config, dtype, quantizer)
    model_class = _model_class(config, trust_remote_code)
    # transformers logs generation defaults and init notes at warning level on every build.
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = _built(model_class, copy.deepcopy(config), resolved)
        unquantized = None
        if quantizer is not None:
            unquantized, model = model, _built(model_class, copy.deepcopy(config), resolved)
            _quantize(model, quantizer, source, resolved)
    except ProfilingError:
        raise
    except Exception as exc:  # a model class can fail in many ways on an odd config
        raise ProfilingError(f"cannot build {source.name} from its config: {_first_line(exc)}") from exc
    finally:
        transformers.logging.set_verbosity(previous)
    if quantizer is None:  # a quantized checkpoint stores its weights packed, in other shapes
        _check_weights_fit_config(source, model)
    for built in (model, unquantized):
        if built is not None:
            _without_others_hooks(built)
            built.eval()
    return MetaModel(source=source, model=model, dtype=resolved, unquantized=unquantized)


def _without_others_hooks(model: nn.Module) -> None:
    """Give `model` its own copy of every module that another model's device map hooked.

    Some classes share one module object between all their instances (OpenAI-GPT's activation,
    ``ACT_FNS``); loading any instance with a device map puts accelerate's hook on it, and that
    hook would then move our meta tensors to the other model's devices. The copy has no hook.
    """
    from accelerate.hooks import remove_hook_from_module

    copies: dict[int, nn.Module] = {}

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if id(child) in copies or hasattr(child, "_hf_hook"):
                if id(child) not in copies:  # the copy and all inside it are ours, unhooked
                    copies[id(child)] = remove_hook_from_module(copy.deepcopy(child), recurse=True)
                setattr(parent, name, copies[id(child)])
            else:
                visit(child)

    visit(model)


def resolve_dtype(source: ModelSource, config: PretrainedConfig, dtype: str, quantizer: Any = None) -> str:
    """The dtype ``from_pretrained(..., dtype=dtype)`` loads the model in, by its own rules.

    ``auto``: the config's ``dtype``; else the dtype the sharded index records; else the first
    floating dtype in the first checkpoint file's header; else float32, what a folder with
    config.json alone builds. A quantizer has the last word (``update_dtype``).

    Raises:
        ProfilingError: the result is not a dtype the tuner prices (float32, float16, bfloat16).
    """
    import torch

    if dtype != AUTO_DTYPE:
        chosen: Any = TORCH_DTYPES[dtype]
    else:
        chosen = getattr(config, "dtype", None) or _weights_dtype(source) or torch.get_default_dtype()
        if isinstance(chosen, str):
            chosen = getattr(torch, chosen, chosen)
    if quantizer is not None:
        chosen = quantizer.update_dtype(chosen)
    name = str(chosen).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise ProfilingError(
            f"{source.name} loads in {name}, which the tuner does not price; "
            f"ask for one of {', '.join(TORCH_DTYPES)} (dtype=..., --dtype)"
        )
    return name


def model_dtype(model: str, dtype: str = AUTO_DTYPE, *, trust_remote_code: bool = False) -> str:
    """The dtype `model` (a folder or a cached hub id) loads in when asked for `dtype`: `resolve_dtype`
    on its files, without building it.

    Raises:
        ModelSourceError, ProfilingError: as `build_meta_model`.
    """
    from profiler.source import resolve_source

    if dtype != AUTO_DTYPE and dtype not in TORCH_DTYPES:
        raise ProfilingError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    source = resolve_source(model)
    config = load_config(source, trust_remote_code=trust_remote_code)
    return resolve_dtype(source, config, dtype, _quantizer(source, config, check_environment=False))


@dataclass(frozen=True)
class _StoredTensor:
    """A tensor as the checkpoint's safetensors header lists it."""

    listed: int  # tensors its file lists: accelerate parses them all to read this one
    dtype: str  # by torch's name; empty for a dtype no floating weight has
    nbytes: int
    shape: tuple[int, ...]


def _stored_tensors(source: ModelSource) -> dict[str, _StoredTensor]:
    """Every tensor of the checkpoint's safetensors files, read from their headers; empty for a
    checkpoint in another format (``.bin``) or none."""
    if not source.weight_files or any(file.suffix != ".safetensors" for file in source.weight_files):
        return {}
    stored: dict[str, _StoredTensor] = {}
    for file in source.weight_files:
        header = json.loads(safetensors_header(file))
        entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
        for name, entry in entries.items():
            start, end = entry["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"], "")
            shape = tuple(int(size) for size in entry.get("shape", ()))
            stored[name] = _StoredTensor(len(entries), dtype, int(end) - int(start), shape)
    return stored


def _check_weights_fit_config(source: ModelSource, model: nn.Module) -> None:
    """Refuse a config.json that does not describe its checkpoint: a weight that both name with
    another number of elements (a config edited, or copied from another size of the model).
    ``from_pretrained`` would refuse to load it, and a plan would size weights the checkpoint does
    not hold. The same elements in another shape are let through: transformers converts some
    layouts as it loads (Qwen3-VL-MoE's experts are stored transposed).

    Raises:
        ModelSourceError: naming the first such weight and both shapes.
    """
    stored = _stored_tensors(source)
    for name, parameter in model.named_parameters():
        tensor = stored.get(name)
        if tensor is not None and math.prod(tensor.shape) != parameter.numel():
            raise ModelSourceError(
                f"{source.name}: config.json does not describe its weights: {name} is "
                f"{list(tensor.shape)} in the checkpoint and {list(parameter.shape)} by the config; "
                "from_pretrained would refuse to load them"
            )


def _read_in_another_dtype(meta: MetaModel, stored: dict[str, _StoredTensor]) -> dict[str, int]:
    """Parameter name -> stored bytes, for each parameter a ``disk`` placement reads from the
    checkpoint's safetensors (`stored`) in another dtype than the model's: transformers indexes a
    disk unit's weights in the checkpoint's own files, and accelerate's loader casts each as it
    reads it. A tied parameter reads the tensor it is tied to. Empty for a ``.bin`` checkpoint
    (its disk weights are re-saved as loaded) and a quantized one (stored as the quantizer loads
    them)."""
    if meta.quantization is not None:
        return {}
    tied: dict[str, str] = dict(getattr(meta.model, "all_tied_weights_keys", None) or {})
    found: dict[str, int] = {}
    for name, parameter in meta.model.named_parameters(remove_duplicate=False):
        tensor = stored.get(name) or stored.get(tied.get(name, ""))
        if (
            tensor is not None
            and tensor.dtype
            and tensor.dtype != str(parameter.dtype).removeprefix("torch.")
        ):
            found[name] = tensor.nbytes
    return found


#: safetensors' dtype codes of the floating dtypes a checkpoint stores, by torch's names.
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _unit_file_tensors(tensors: list[str], listed: dict[str, int]) -> int:
    """What the files holding a unit's tensors list: the largest; the files' mean when the
    checkpoint names its tensors otherwise than the model (a key conversion)."""
    found = [listed[tensor] for tensor in tensors if tensor in listed]
    if found:
        return max(found)
    counts = set(listed.values())
    return round(sum(counts) / len(counts)) if counts else 0


def _checkpoint_names(source: ModelSource) -> frozenset[str]:
    """The names of the tensors the checkpoint holds (its safetensors headers, its shards' index,
    or a ``.bin`` file read on the meta device); none for a folder with config.json alone."""
    names: set[str] = set()
    for index in source.path.glob("*.index.json"):
        try:
            names.update(json.loads(index.read_text()).get("weight_map", {}))
        except (OSError, ValueError, AttributeError):
            continue
    if names:
        return frozenset(names)
    for file in source.weight_files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as opened:
                names.update(opened.keys())
        else:
            from transformers.modeling_utils import load_state_dict

            names.update(load_state_dict(str(file), map_location="meta", weights_only=True))
    return frozenset(names)


def _weights_dtype(source: ModelSource) -> Any:
    """The dtype ``from_pretrained`` reads off the weights when the config names none: the sharded
    index's ``dtype`` entry, else the first floating tensor of the first checkpoint file."""
    if not source.weight_files:
        return None
    for index in source.path.glob("*.index.json"):
        try:
            recorded = json.loads(index.read_text()).get("metadata", {}).get("dtype")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded:
            return recorded
    from transformers.modeling_utils import get_state_dict_dtype
    from transformers.modeling_utils import load_state_dict

    try:
        header = load_state_dict(str(source.weight_files[0]), map_location="meta", weights_only=True)
    except Exception as exc:  # a damaged file: from_pretrained would fail on it too
        raise ModelSourceError(f"cannot read {source.weight_files[0]}: {_first_line(exc)}") from exc
    return get_state_dict_dtype(header)


def _quantizer(source: ModelSource, config: PretrainedConfig, *, check_environment: bool) -> Any:
    """transformers' quantizer for a checkpoint whose config has a ``quantization_config``, as
    ``from_pretrained`` sets it up (pre-quantized weights); None for plain weights.

    Raises:
        ProfilingError: in one line, when transformers cannot set it up (a library it needs is
            missing, a method it does not know) or, with `check_environment`, refuses this machine.
    """
    settings = getattr(config, "quantization_config", None)
    if settings is None and hasattr(config, "get_text_config"):
        settings = getattr(config.get_text_config(decoder=True), "quantization_config", None)
    if settings is None:
        return None
    from transformers.quantizers.auto import AutoHfQuantizer

    method = settings.get("quant_method", "?") if isinstance(settings, dict) else settings.quant_method
    try:
        if isinstance(settings, dict) and not AutoHfQuantizer.supports_quant_method(settings):
            return None  # from_pretrained ignores a method it does not know, and loads plain weights
        quantizer = AutoHfQuantizer.from_config(settings, pre_quantized=True)
        if check_environment:
            quantizer.validate_environment(device_map=None, weights_only=True)
    except Exception as exc:  # ImportError, ValueError, RuntimeError: each quantizer has its own
        raise ProfilingError(
            f"cannot size {source.name}'s {method} weights: transformers' quantizer says {_first_line(exc)}"
        ) from exc
    config.quantization_config = quantizer.quantization_config
    return quantizer


def _quantize(model: PreTrainedModel, quantizer: Any, source: ModelSource, dtype: str) -> None:
    """Replace `model`'s modules with the quantizer's, as ``from_pretrained`` does before loading.

    Raises:
        ProfilingError: the quantizer cannot convert the model here (a library it needs).
    """
    try:
        quantizer.preprocess_model(
            model=model,
            dtype=TORCH_DTYPES[dtype],
            device_map=None,
            checkpoint_files=[str(f) for f in source.weight_files] or None,
            use_kernels=False,
        )
    except Exception as exc:  # each quantizer fails its own way: ImportError, ValueError, ...
        method = getattr(quantizer.quantization_config, "quant_method", "?")
        method = getattr(method, "value", method)
        raise ProfilingError(
            f"cannot size {source.name}'s {method} weights: transformers' quantizer says {_first_line(exc)}"
        ) from exc
    model.hf_quantizer = quantizer


def _quantization(quantizer: Any) -> Quantization:
    """The placement rule and memory reserve of transformers' `quantizer`.

    bitsandbytes' ``validate_environment`` refuses a map with cpu or disk entries unless every
    entry is cpu, or ``llm_int8_enable_fp32_cpu_offload`` is set; with it,
    ``_process_model_before_weight_loading`` leaves those entries' modules unquantized, and a
    pre-quantized checkpoint's tensors then fail to load into them (4-bit: a shape mismatch) or
    to run (8-bit: int8 weights in a float layer), whole-cpu map included. Every other quantizer
    keeps its stored bytes wherever a unit lives. The reserve is what ``adjust_max_memory`` takes
    off a limit.
    """
    settings = quantizer.quantization_config
    method = str(getattr(settings.quant_method, "value", settings.quant_method))
    offload = "allowed"
    if method == "bitsandbytes":
        method += "_8bit" if getattr(settings, "load_in_8bit", False) else "_4bit"
        offload = "never" if getattr(settings, "llm_int8_enable_fp32_cpu_offload", False) else "whole-cpu"
    probe = 1 << 40
    share = float(quantizer.adjust_max_memory({"probe": probe})["probe"]) / probe
    return Quantization(method=method, offload=offload, memory_share=min(max(share, 1e-6), 1.0))


def _stored_bytes(model: PreTrainedModel, quantizer: Any) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        size = (
            quantizer.param_element_size(model, name, param)
            if quantizer is not None
            else param.element_size()
        )
        sizes[name] = int(round(param.numel() * size))
    for name, buffer in model.named_buffers(remove_duplicate=False):
        sizes[name] = buffer.numel() * buffer.element_size()
    return sizes


def _built(model_class: Any, config: PretrainedConfig, dtype: str) -> PreTrainedModel:
    """The model on the meta device in `dtype`, with the float32 modules of its dtype plan
    (``_keep_in_fp32_modules``), as ``from_pretrained`` casts them when it loads."""
    import torch
    from accelerate.utils import set_module_tensor_to_device

    with torch.device(META):
        model = model_class(config, dtype=TORCH_DTYPES[dtype])
    # A legacy constructor (``torch.Tensor(n)``: wav2vec2's and SpeechT5's masked_spec_embed)
    # ignores the device context. A parameter's value comes from the checkpoint, and a real one
    # ahead of the meta ones makes ``model.device`` the cpu, where generate moves the inputs.
    for name, parameter in list(model.named_parameters()):
        if not parameter.is_meta:
            set_module_tensor_to_device(model, name, META)
    plan = model._get_dtype_plan(TORCH_DTYPES[dtype])
    if plan:
        from transformers.core_model_loading import build_glob_alternation

        pattern, groups, _ = build_glob_alternation(list(plan))
        for name, tensor in model.state_dict(keep_vars=True).items():
            found = pattern.search(name)
            if found is not None and found.lastgroup is not None and tensor.is_floating_point():
                tensor.data = tensor.data.to(plan[groups[found.lastgroup]])
    return model


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _model_class(config: Any, trust_remote_code: bool) -> Any:
    """A callable ``(config, dtype=...) -> model`` of the class `pretrained_class` chooses."""
    cls = pretrained_class(config, trust_remote_code=trust_remote_code)
    if cls in _AUTO_CLASSES:
        return lambda cfg, dtype: cls.from_config(cfg, dtype=dtype, trust_remote_code=trust_remote_code)
    return lambda cfg, dtype: cls._from_config(cfg, dtype=dtype)


def generates(config: PretrainedConfig) -> bool:
    """Whether the model of `config` generates (``can_generate``: what `optimize` reads to default
    to 32 new tokens, else 0), from its class alone: nothing is built."""
    cls = pretrained_class(config, trust_remote_code=False)
    if cls in _AUTO_CLASSES:
        cls = cls._model_mapping[type(config)]
    return bool(cls.can_generate())


def pretrained_class(config: PretrainedConfig, *, trust_remote_code: bool) -> Any:
    """The class that builds the model, for our meta instance and for loading a map alike: the one
    the config's architectures name, else the first auto class that maps the config's type (any,
    with the model's own code).

    Raises:
        ProfilingError: transformers has no class for the config.
    """
    for architecture in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, architecture, None)
        if cls is not None:
            return cls
    for auto in _AUTO_CLASSES:
        if type(config) in auto._model_mapping or trust_remote_code:
            return auto
    raise ProfilingError(f"transformers has no model class for config type {type(config).__name__}")


def placeable_units(
    model: nn.Module, no_split_classes: set[str]
) -> list[tuple[str, nn.Module | torch.Tensor]]:
    """The smallest pieces a device map can place, in registration order.

    This is the full expansion of accelerate's ``infer_auto_device_map`` walk: a module is split
    into its direct parameters, children and direct buffers unless it has no children, its class
    must not be split, or a parametrization computes one of its tensors (wav2vec2's weight-normed
    convolution): accelerate's walk splits that one too, into its bias and the parametrization's
    ``original0`` / ``original1``, but a map that places those apart fails in the forward
    ("weight_norm: expected v_in and g_in to be on the same device").
    """
    units: list[tuple[str, nn.Module | torch.Tensor]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        entries: list[tuple[str, nn.Module | torch.Tensor]] = [
            *module.named_parameters(recurse=False),
            *module.named_children(),
            *module.named_buffers(recurse=False),
        ]
        for name, entry in entries:
            full_name = f"{prefix}{name}"
            if (
                isinstance(entry, nn.Module)
                and any(True for _ in entry.children())
                and type(entry).__name__ not in no_split_classes
                and not parametrize.is_parametrized(entry)
            ):
                visit(f"{full_name}.", entry)
            else:
                units.append((full_name, entry))

    visit("", model)
    return units


def structural_signature(entry: nn.Module | torch.Tensor) -> str:
    """Digest of what makes a unit cost what it costs: classes, scalar settings, tensor shapes.

    Positional attributes such as ``layer_idx`` are left out, so that decoder layer 3 and decoder
    layer 30 of one model share a signature.
    """
    if isinstance(entry, torch.Tensor):
        return stable_hash(["tensor", list(entry.shape), str(entry.dtype)])
    parts: list[object] = []
    for name, sub in entry.named_modules():
        settings = sorted(
            (key, value)
            for key, value in vars(sub).items()
            if not key.startswith("_")
            and isinstance(value, (bool, int, float, str, type(None)))
            and not any(marker in key for marker in _POSITIONAL_ATTRIBUTES)
        )
        parts.append([name, type(sub).__name__, settings])
    for name, tensor in [*entry.named_parameters(), *entry.named_buffers()]:
        parts.append([name, list(tensor.shape), str(tensor.dtype)])
    return stable_hash(parts)


def no_split_classes(model: PreTrainedModel) -> set[str]:
    return set(getattr(model, "_no_split_modules", None) or ())


def tensor_owner(unit_names: set[str], tensor_name: str) -> str:
    """The unit that owns a parameter or buffer, by longest name prefix."""
    parts = tensor_name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in unit_names:
            return candidate
    raise KeyError(tensor_name)


def forward_phases(
    meta: MetaModel,
    workload: Workload,
    watcher: Any,
    *,
    what: str,
    on_output: Callable[[Phase, Any], None] | None = None,
) -> None:
    """Run the workload's forwards on the meta device under `watcher`: the prefill, then one
    decode step when the workload generates, fed as `profiler.inputs` makes them. `watcher` is a
    torch mode whose `phase` attribute is set to the phase running; `on_output` sees each phase's
    output as it returns, before the next phase changes the generation state it holds. Values
    model code reads from meta tensors made of the inputs alone (masks, placeholder counts) are
    known (`KnownValues`).

    Raises:
        ProfilingError: a forward failed; the message starts with `what`.
    """
    model = meta.runnable
    inputs = model_inputs(model, workload, meta.source.path)
    dtype = TORCH_DTYPES[meta.dtype]
    fed: list[str] = []
    try:
        with torch.no_grad(), experts_on_meta(model), KnownValues(), watcher:
            watcher.phase = Phase.PREFILL
            prefill = inputs.prefill(META, dtype)
            fed = sorted(prefill)
            output = model(**prefill)
            kept = kept_by_generate(output) if workload.new_tokens > 0 else ()
            if on_output is not None:
                on_output(Phase.PREFILL, output)
            if workload.new_tokens > 0:
                watcher.phase = Phase.DECODE
                # made again, with the logits: held through the step, as generate holds them
                kept = kept_by_generate(output, logits=True)
                decoded = model(**inputs.decode(model, prefill, output))
                next_kept = kept_by_generate(decoded)
                if on_output is not None:
                    on_output(Phase.DECODE, decoded)
                del next_kept
            del kept
    except Exception as exc:
        reason = _first_line(exc)
        tokens = workload.batch * inputs.prompt_tokens
        if "meta tensors" in reason and tokens > MAX_KNOWN_ELEMENTS:
            # torch's words (".item() cannot be called on meta tensors") are the symptom only
            reason = (
                f"batch x prompt = {tokens} tokens, above the {MAX_KNOWN_ELEMENTS} whose ids and"
                " masks the meta pass knows: ask for a smaller batch"
            )
        if "'NoneType'" in reason and fed:
            # an input the model reads and was not given (CLIPModel's pixel_values beside its text)
            reason += f" (it was fed {', '.join(fed)}; an input it needs may be missing)"
        raise ProfilingError(f"{what} of {meta.source.name} failed: {reason}") from exc


def kept_by_generate(output: Any, *, logits: bool = False) -> tuple[torch.Tensor, ...]:
    """What generate makes of a forward's output to pick the next token, and keeps until it has
    the next step's: a float32 copy of the last position's logits and a logits processor's copy
    of that (penalties, temperature); with `logits`, a copy of the output's logits too, for a
    step of its own (generate holds the previous output until the next one returns)."""
    found = getattr(output, "logits", None)
    if not isinstance(found, torch.Tensor) or found.dim() != 3:
        return ()
    scores = found[:, -1, :].to(dtype=torch.float32, copy=True)
    kept = (scores, scores.clone())
    return (found.clone(), *kept) if logits else kept


def trace_graph(meta: MetaModel, workload: Workload) -> ModelGraph:
    """Run the meta model through the workload's phases and describe what it did.

    Unit bytes are those the model loads with (`MetaModel.tensor_bytes`: a quantized checkpoint's
    stored bytes); the forwards run through `MetaModel.runnable`, with mixture-of-experts layers
    on transformers' ``batched_mm`` path (`experts_on_meta`).
    """
    model = meta.runnable
    check_workload(model, workload, meta.source.path)
    classes = no_split_classes(model)
    entries = placeable_units(model, classes)
    names = [name for name, _ in entries]
    tracer = _Tracer(entries, [*model.parameters(), *model.buffers()])
    with FusedKernelsOnMeta():  # the glue code's attention, as it allocates where it runs
        forward_phases(meta, workload, tracer, what="the traced forward", on_output=tracer.state_made)
    state = tracer.state[Phase.PREFILL]
    state_growth = {
        name: max(0, tracer.state[Phase.DECODE][name] - state[name]) if workload.new_tokens > 0 else 0
        for name in names
    }

    stored = placeable_units(meta.model, no_split_classes(meta.model))
    if [name for name, _ in stored] != names:
        raise ProfilingError(f"{meta.source.name}: the quantizer changed which units a device map places")
    sizes = meta.tensor_bytes()
    param_bytes, buffer_bytes = _bytes_per_unit(meta.model, set(names), sizes)
    loaded = {name: _loaded(name, entry) for name, entry in stored}
    # The traced forward runs experts on batched_mm (`experts_on_meta`), as generate decodes off
    # the cpu: what a decode step of theirs allocates so.
    experts_decode = tracer.held.inside[1] if workload.new_tokens > 0 else {}
    stored_tensors = _stored_tensors(meta.source)
    listed = {name: tensor.listed for name, tensor in stored_tensors.items()}
    read_as = _read_in_another_dtype(meta, stored_tensors)
    units = [
        Unit(
            name=name,
            module_class=type(entry).__name__ if isinstance(entry, nn.Module) else "",
            param_bytes=param_bytes[name],
            buffer_bytes=buffer_bytes[name],
            executed=name in tracer.first_call,
            calls=tracer.calls[Phase.PREFILL][name],
            decode_calls=tracer.calls[Phase.DECODE][name],
            hooks=tracer.hooks[Phase.PREFILL][name],
            decode_hooks=tracer.hooks[Phase.DECODE][name],
            signature=structural_signature(entry),
            param_tensors=len(loaded[name]),
            load_bytes=sum(sizes[tensor] for tensor in loaded[name]),
            lookup=isinstance(entry, nn.Embedding),
            state_bytes=state[name],
            state_bytes_per_token=state_growth[name],
            file_tensors=_unit_file_tensors(loaded[name], listed),
            disk_cast_bytes=max((read_as.get(tensor, 0) for tensor in loaded[name]), default=0),
            held_bytes=tracer.held.held.get(name, 0),
            glue_bytes=tracer.held.glue.get(name, 0),
            experts_decode_peak_bytes=experts_decode.get(name) if _holds_experts(entry) else None,
        )
        for name, entry in entries
    ]
    return ModelGraph(
        model_name=meta.source.name,
        architecture=meta.architecture,
        dtype=meta.dtype,
        fingerprint=meta.fingerprint(),
        units=tuple(_execution_order(units, tracer.first_call)),
        edges=tuple(
            Edge(producer, consumer, flow[Phase.PREFILL], flow[Phase.DECODE])
            for (producer, consumer), flow in tracer.edges.items()
        ),
        tied_groups=tied_unit_groups(meta.model, set(names)),
        no_split_classes=tuple(sorted(classes)),
        weights=meta.source.weights,
        quantization=meta.quantization,
        device_unit=_first_parameter_unit(meta.model, set(names)),
    )


@contextlib.contextmanager
def experts_on_meta(model: PreTrainedModel) -> Iterator[None]:
    """Mixture-of-experts layers on transformers' ``batched_mm`` experts path for the duration.

    The default path (``grouped_mm``) calls ``torch._grouped_mm``, whose meta kernel accepts
    bfloat16 only, so a float32 or float16 MoE cannot run on the meta device. ``batched_mm``
    (a setting transformers offers, ``set_experts_implementation``) runs every (token, chosen
    expert) pair through ``bmm``: it works on meta tensors in every dtype, and
    ``FlopCounterMode`` counts it as the top-k experts that run, not all of them. Its gathered
    copies of expert weights are what a memory pass must not count: memory is sized on the
    default path (`profiler.layers`). A model without experts is left as it is.
    """
    current = getattr(model.config, "_experts_implementation", None)
    if not isinstance(current, str) or current == "batched_mm" or not any(map(_is_experts, model.modules())):
        yield
        return
    model.set_experts_implementation("batched_mm")
    try:
        yield
    finally:
        model.set_experts_implementation(current)


def _holds_experts(entry: nn.Module | torch.Tensor) -> bool:
    return isinstance(entry, nn.Module) and any(map(_is_experts, entry.modules()))


def _first_parameter_unit(model: nn.Module, unit_names: set[str]) -> str:
    """The unit holding the model's first parameter, whose device is ``model.device``."""
    first = next((name for name, _ in model.named_parameters()), None)
    return "" if first is None else tensor_owner(unit_names, first)


def _is_experts(module: nn.Module) -> bool:
    """A block of experts as transformers' ``use_experts_implementation`` makes them: stacked
    weights, one slice per expert."""
    return hasattr(module, "num_experts") and hasattr(module, "has_gate") and hasattr(module, "is_transposed")


def _bytes_per_unit(
    model: nn.Module, unit_names: set[str], sizes: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """Parameter and buffer bytes per unit, each tensor at its `sizes` entry; a shared tensor
    counts once, where it is first named.

    ``named_parameters`` drops duplicates the way accelerate's ``compute_module_sizes`` does, so
    a tied weight (GPT-2's ``lm_head``) counts in the unit that registers it first.
    """
    params: dict[str, int] = defaultdict(int)
    buffers: dict[str, int] = defaultdict(int)
    for name, _ in model.named_parameters():
        params[tensor_owner(unit_names, name)] += sizes[name]
    for name, _ in model.named_buffers():
        buffers[tensor_owner(unit_names, name)] += sizes[name]
    return params, buffers


def _loaded(name: str, entry: nn.Module | torch.Tensor) -> list[str]:
    """The parameters an offload hook loads for a call of the unit, by name: all of its own, tied
    ones included (a tied ``lm_head`` reads the whole embedding matrix), each tensor once."""
    if isinstance(entry, torch.Tensor):
        return [name] if isinstance(entry, nn.Parameter) else []
    return [tensor for tensor, _ in entry.named_parameters(prefix=name)]


def tied_unit_groups(model: PreTrainedModel, unit_names: set[str]) -> tuple[tuple[str, ...], ...]:
    """Groups of units that share a parameter, from transformers' own record of tied weights."""
    tied: dict[str, str] = dict(getattr(model, "all_tied_weights_keys", None) or {})
    by_target: dict[str, set[str]] = defaultdict(set)
    for param, target in tied.items():
        by_target[target].update({tensor_owner(unit_names, param), tensor_owner(unit_names, target)})
    groups = {tuple(sorted(group)) for group in by_target.values() if len(group) > 1}
    return tuple(sorted(groups))


def _execution_order(units: list[Unit], first_call: dict[str, int]) -> Iterator[Unit]:
    """Executed units by first call; each unit that never ran goes right before its next registered
    neighbour that did, so that placement keeps it beside the code that owns it."""
    executed = sorted((u for u in units if u.name in first_call), key=lambda u: first_call[u.name])
    waiting: dict[str, list[Unit]] = defaultdict(list)
    pending: list[Unit] = []
    for unit in units:
        if unit.name in first_call:
            waiting[unit.name].extend(pending)
            pending = []
        else:
            pending.append(unit)
    for unit in executed:
        yield from waiting[unit.name]
        yield unit
    yield from pending


class _Tracer(TorchFunctionMode):
    """Records the order units run in, the bytes each receives from each producer, and the calls
    of the modules accelerate would hook in each.

    Tensors made by glue code between units (masks, residual adds) inherit the most recent
    producer among their inputs, so an edge names the unit whose output actually moves. The same
    inheritance tells whose outputs the generation state that glue code builds is made of: where
    an attention is split into leaf units (a model without no-split classes: BioGPT, Marian), the
    cache update runs between them, in no unit's call, and its tensors are those of the key and
    value projections, on their devices.

    A map that spans devices gets an ``AlignDevicesHook`` on every unit and on every module inside
    it that holds a tensor (accelerate's ``attach_execution_device_hook`` hooks a module whose
    ``state_dict`` is not empty, ``attach_align_device_hook`` one with tensors of its own); each
    call of such a module, attributed to the unit running, is one hooked call.

    What the forward holds when each unit starts is counted alongside (`HeldBytes`, `held`).
    """

    def __init__(
        self, entries: list[tuple[str, nn.Module | torch.Tensor]], weights: list[torch.Tensor]
    ) -> None:
        super().__init__()
        self.phase = Phase.PREFILL
        self.held = HeldBytes(existing=weights)
        self.first_call: dict[str, int] = {}
        self.calls: dict[Phase, dict[str, int]] = {phase: defaultdict(int) for phase in Phase}
        self.hooks: dict[Phase, dict[str, int]] = {phase: defaultdict(int) for phase in Phase}
        self._running = ""
        self.edges: dict[tuple[str, str], dict[Phase, int]] = defaultdict(lambda: defaultdict(int))
        self._origin = WeakTensorKeyDictionary()
        self._glue_made = WeakTensorKeyDictionary()
        #: Per phase and unit: bytes of generation state made by glue code from the unit's outputs,
        #: as the phase's forward returned it.
        self.state: dict[Phase, dict[str, int]] = {phase: defaultdict(int) for phase in Phase}
        self._depth = 0
        self._handles: list[Any] = []
        for name, entry in entries:
            if isinstance(entry, nn.Module):
                self._handles.append(entry.register_forward_pre_hook(self._enter(name), with_kwargs=True))
                self._handles.append(entry.register_forward_hook(self._leave(name), always_call=True))
                for module in entry.modules():
                    if module is not entry and _hooked(module):
                        self._handles.append(module.register_forward_pre_hook(self._hooked_call))
            else:
                self._origin[entry] = name

    def __enter__(self) -> _Tracer:
        super().__enter__()
        self.held.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.held.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        super().__exit__(*exc)

    def _rank(self, name: str) -> int:
        return self.first_call.get(name, -1)

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._depth == 0:
                self.first_call.setdefault(name, len(self.first_call))
                self.calls[self.phase][name] += 1
                self._running = name
                self.held.unit_starts(name)
                seen: set[int] = set()
                for leaf in tree_leaves((args, kwargs)):
                    if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
                        seen.add(id(leaf))
                        producer = self._origin.get(leaf, INPUT)
                        if producer != name:
                            self.edges[(producer, name)][self.phase] += leaf.numel() * leaf.element_size()
            self.hooks[self.phase][self._running] += 1
            self._depth += 1

        return hook

    def _hooked_call(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._depth:
            self.hooks[self.phase][self._running] += 1

    def _leave(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._depth -= 1
            if self._depth == 0:
                self.held.unit_ends(name)
                for leaf in tree_leaves(output):
                    if isinstance(leaf, torch.Tensor):
                        self._origin[leaf] = name

        return hook

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if self._depth == 0:
            producers = [
                self._origin[leaf]
                for leaf in tree_leaves((args, kwargs))
                if isinstance(leaf, torch.Tensor) and leaf in self._origin
            ]
            if producers:
                latest = max(producers, key=self._rank)
                for leaf in tree_leaves(result):
                    if isinstance(leaf, torch.Tensor) and leaf not in self._origin:
                        self._origin[leaf] = latest
                        self._glue_made[leaf] = True
        return result

    def state_made(self, phase: Phase, output: Any) -> None:
        """Count the generation state `output` holds that glue code made, by the unit it came from
        (state a unit updates in its own call is that unit's, measured by `profiler.layers`)."""
        made: dict[str, list[torch.Tensor]] = defaultdict(list)
        for tensor in state_tensors([output]):
            if tensor in self._glue_made and tensor in self._origin:
                made[self._origin[tensor]].append(tensor)
        for unit, tensors in made.items():
            self.state[phase][unit] += storage_bytes(tensors)  # as profiler.layers counts a cache
        self.held.phase_ended(output)


def _hooked(module: nn.Module) -> bool:
    """Whether accelerate hooks `module` inside a unit of a map that has hooks: it holds a tensor
    of its own, or one of its submodules holds a saved one."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return bool(own) or any(True for _ in module.state_dict(keep_vars=True))

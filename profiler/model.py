"""A model source becomes a ModelGraph: units in execution order, their bytes, ties and data flow.

The model is built on the meta device (no memory, no weights) and run once per phase of the
workload with hooks that record which unit runs when and which tensors each unit receives from
which other unit. Nothing here changes a model the user owns: the meta model is ours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary
from transformers import PretrainedConfig
from transformers import PreTrainedModel

from profiler.inputs import TORCH_DTYPES
from profiler.inputs import check_workload
from profiler.inputs import decode_inputs
from profiler.inputs import prefill_inputs
from profiler.source import ModelSource
from profiler.source import config_fingerprint
from profiler.source import load_config
from tuner.core.domain import INPUT
from tuner.core.domain import Edge
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import Workload
from tuner.core.domain import stable_hash
from tuner.core.exceptions import ProfilingError

__all__ = [
    "MetaModel",
    "build_meta_model",
    "placeable_units",
    "pretrained_class",
    "structural_signature",
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
    """Our own instance of the user's model, on the meta device, with what we know of its source."""

    source: ModelSource
    model: PreTrainedModel
    dtype: str

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def unit_names(self) -> tuple[str, ...]:
        """The units a device map places, in registration order; no forward is run."""
        return tuple(name for name, _ in placeable_units(self.model, no_split_classes(self.model)))

    @property
    def module_names(self) -> frozenset[str]:
        """Every name a device map may use: modules (the whole model is ``""``), parameters and
        buffers, at any depth."""
        names = [
            *(name for name, _ in self.model.named_modules()),
            *(name for name, _ in self.model.named_parameters()),
            *(name for name, _ in self.model.named_buffers()),
        ]
        return frozenset(names)

    def fingerprint(self) -> str:
        return stable_hash(
            {
                "architecture": self.architecture,
                "config": config_fingerprint(self.model.config),
                "dtype": self.dtype,
                "weights": self.source.weights_identity(),
            }
        )


def build_meta_model(source: ModelSource, dtype: str, *, trust_remote_code: bool = False) -> MetaModel:
    """Instantiate the model on the meta device in `dtype`, choosing the class its config names."""
    if dtype not in TORCH_DTYPES:
        raise ProfilingError(f"unknown dtype {dtype!r}; choose one of {', '.join(TORCH_DTYPES)}")
    config = load_config(source, trust_remote_code=trust_remote_code)
    model_class = _model_class(config, trust_remote_code)
    # transformers logs generation defaults and init notes at warning level on every build.
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with torch.device(META):
            model = model_class(config, dtype=TORCH_DTYPES[dtype])
    except Exception as exc:  # a model class can fail in many ways on an odd config
        raise ProfilingError(f"cannot build {source.name} from its config: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(previous)
    model.eval()
    return MetaModel(source=source, model=model, dtype=dtype)


def _model_class(config: Any, trust_remote_code: bool) -> Any:
    """A callable ``(config, dtype=...) -> model`` of the class `pretrained_class` chooses."""
    cls = pretrained_class(config, trust_remote_code=trust_remote_code)
    if cls in _AUTO_CLASSES:
        return lambda cfg, dtype: cls.from_config(cfg, dtype=dtype, trust_remote_code=trust_remote_code)
    return lambda cfg, dtype: cls._from_config(cfg, dtype=dtype)


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
    into its direct parameters, children and direct buffers unless it has no children or its class
    must not be split.
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


def trace_graph(meta: MetaModel, workload: Workload) -> ModelGraph:
    """Run the meta model through the workload's phases and describe what it did."""
    model = meta.model
    check_workload(model, workload)
    classes = no_split_classes(model)
    entries = placeable_units(model, classes)
    names = [name for name, _ in entries]
    tracer = _Tracer(entries)
    try:
        with torch.no_grad(), tracer:
            tracer.phase = Phase.PREFILL
            output = model(**prefill_inputs(model, workload, META))
            if workload.new_tokens > 0:
                tracer.phase = Phase.DECODE
                model(**decode_inputs(model, workload, output, META))
    except Exception as exc:
        raise ProfilingError(f"the traced forward of {meta.source.name} failed: {exc}") from exc

    param_bytes, buffer_bytes = _bytes_per_unit(model, set(names))
    loaded = {name: _loaded(entry) for name, entry in entries}
    units = [
        Unit(
            name=name,
            module_class=type(entry).__name__ if isinstance(entry, nn.Module) else "",
            param_bytes=param_bytes[name],
            buffer_bytes=buffer_bytes[name],
            executed=name in tracer.first_call,
            calls=tracer.calls[Phase.PREFILL][name],
            decode_calls=tracer.calls[Phase.DECODE][name],
            signature=structural_signature(entry),
            param_tensors=len(loaded[name]),
            load_bytes=sum(t.numel() * t.element_size() for t in loaded[name]),
            lookup=isinstance(entry, nn.Embedding),
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
        tied_groups=_tied_unit_groups(model, set(names)),
        no_split_classes=tuple(sorted(classes)),
        weights=meta.source.weights,
    )


def _bytes_per_unit(model: nn.Module, unit_names: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Parameter and buffer bytes per unit; a shared tensor counts once, where it is first named.

    ``named_parameters`` drops duplicates the way accelerate's ``compute_module_sizes`` does, so
    a tied weight (GPT-2's ``lm_head``) counts in the unit that registers it first.
    """
    params: dict[str, int] = defaultdict(int)
    buffers: dict[str, int] = defaultdict(int)
    for name, tensor in model.named_parameters():
        params[tensor_owner(unit_names, name)] += tensor.numel() * tensor.element_size()
    for name, buffer in model.named_buffers():
        buffers[tensor_owner(unit_names, name)] += buffer.numel() * buffer.element_size()
    return params, buffers


def _loaded(entry: nn.Module | torch.Tensor) -> list[torch.Tensor]:
    """The parameters an offload hook loads for a call of the unit: all of its own, tied ones
    included (a tied ``lm_head`` reads the whole embedding matrix), each tensor once."""
    if isinstance(entry, torch.Tensor):
        return [entry] if isinstance(entry, nn.Parameter) else []
    return list(entry.parameters())


def _tied_unit_groups(model: PreTrainedModel, unit_names: set[str]) -> tuple[tuple[str, ...], ...]:
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
    """Records the order units run in and the bytes each receives from each producer.

    Tensors made by glue code between units (masks, residual adds) inherit the most recent
    producer among their inputs, so an edge names the unit whose output actually moves.
    """

    def __init__(self, entries: list[tuple[str, nn.Module | torch.Tensor]]) -> None:
        super().__init__()
        self.phase = Phase.PREFILL
        self.first_call: dict[str, int] = {}
        self.calls: dict[Phase, dict[str, int]] = {phase: defaultdict(int) for phase in Phase}
        self.edges: dict[tuple[str, str], dict[Phase, int]] = defaultdict(lambda: defaultdict(int))
        self._origin = WeakTensorKeyDictionary()
        self._depth = 0
        self._handles: list[Any] = []
        for name, entry in entries:
            if isinstance(entry, nn.Module):
                self._handles.append(entry.register_forward_pre_hook(self._enter(name), with_kwargs=True))
                self._handles.append(entry.register_forward_hook(self._leave(name), always_call=True))
            else:
                self._origin[entry] = name

    def __exit__(self, *exc: object) -> None:
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
                seen: set[int] = set()
                for leaf in tree_leaves((args, kwargs)):
                    if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
                        seen.add(id(leaf))
                        producer = self._origin.get(leaf, INPUT)
                        if producer != name:
                            self.edges[(producer, name)][self.phase] += leaf.numel() * leaf.element_size()
            self._depth += 1

        return hook

    def _leave(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._depth -= 1
            if self._depth == 0:
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
        return result

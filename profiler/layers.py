"""Per-unit cost: forward time, activation peak, output bytes and KV cache growth, per phase.

The meta model runs the workload for real, one unit at a time: just before a unit runs, its
weights are materialised on the compute device (random values: cost does not depend on them),
the unit is timed over repeats and its memory tracked, and its weights are released again. A
model far larger than memory can so be profiled from its config alone.

A unit whose structure and input shapes match a unit measured earlier in the same pass is not
run again (unless ``full``): it hands on that unit's output and shares its measurement.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils._pytree import tree_map
from transformers import PreTrainedModel

from profiler.inputs import TORCH_DTYPES
from profiler.inputs import model_inputs
from profiler.memory import FusedKernelsOnMeta
from profiler.memory import LiveBytesTracker
from profiler.memory import storage_bytes
from profiler.metavalues import KnownValues
from profiler.model import META
from profiler.model import MetaModel
from profiler.model import no_split_classes
from profiler.model import placeable_units
from profiler.model import structural_signature
from profiler.state import StateSnapshot
from profiler.state import is_state
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError

__all__ = ["profile_units", "placement_key", "UnitEvent"]


@dataclass(frozen=True)
class UnitEvent:
    """What a progress display is told after each unit call."""

    unit: str
    phase: Phase
    shared_with: str | None


def placement_key(device: torch.device) -> str:
    """The device as device maps spell it: ``cpu`` or the CUDA index."""
    return str(device.index if device.index is not None else 0) if device.type == "cuda" else device.type


def profile_units(
    meta: MetaModel,
    graph: ModelGraph,
    workload: Workload,
    device: torch.device,
    *,
    repeats: int = 5,
    warmup: int = 1,
    full: bool = False,
    on_unit: Callable[[UnitEvent], None] | None = None,
) -> tuple[UnitProfile, ...]:
    """Measure every unit of `graph` on `device` for each phase of `workload`.

    Returns one UnitProfile per unit that ran and phase, in the graph's unit order. A unit called
    several times in one pass (a shared module) reports the sum of its calls' times.

    On the meta device nothing is computed or timed (every time is 0): the pass sizes outputs,
    KV cache and activation peaks at any model size and workload, in seconds. Attention is sized
    as a fused kernel (flash or memory-efficient) allocates, its output only: on meta, sdpa would
    otherwise fall back to its math path and materialise a batch x heads x seq x seq score
    matrix that no GPU or CPU kernel allocates. A mixture-of-experts layer runs its default
    ``grouped_mm`` path, each grouped product sized as its kernel allocates, its output: the
    meta kernel of ``torch._grouped_mm`` accepts bfloat16 only.

    A quantized checkpoint runs through its unquantized twin (`MetaModel.runnable`): quantized
    kernels cannot run on meta, and materialising random weights cannot make quantized ones; its
    units are timed at the model's dtype.
    """
    if repeats < 1:
        raise ProfilingError(f"repeats must be at least 1 (got {repeats})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProfilingError(f"cannot profile on {device}: CUDA is not available here")
    model = meta.runnable
    inputs = model_inputs(model, workload, meta.source.path)  # before our forwards are in place
    dtype = TORCH_DTYPES[meta.dtype]
    session = _Session(model, device, repeats=repeats, warmup=warmup, full=full, on_unit=on_unit)
    on_meta = device.type == "meta"
    fused = FusedKernelsOnMeta() if on_meta else contextlib.nullcontext()
    known = KnownValues() if on_meta else contextlib.nullcontext()
    try:
        with session.installed(), torch.no_grad(), fused, known:
            session.phase = Phase.PREFILL
            prefill = inputs.prefill(device, dtype)
            output = model(**prefill)
            if workload.new_tokens > 0:
                session.phase = Phase.DECODE
                model(**inputs.decode(model, prefill, output))
            del output, prefill
    except torch.OutOfMemoryError as exc:
        raise ProfilingError(
            f"{session.current or 'the model'} ran out of memory on {device} during {session.phase.value}; "
            "try a smaller batch or seq"
        ) from exc
    except RuntimeError as exc:
        where = f"{session.current} on {device}" if session.current else str(device)
        raise ProfilingError(f"profiling {where} failed during {session.phase.value}: {exc}") from exc
    order = {name: index for index, name in enumerate(graph.unit_names)}
    units = {unit.name: unit for unit in graph.units}
    profiles = [_with_glue_state(profile, units[profile.unit]) for profile in session.results()]
    return tuple(sorted(profiles, key=lambda p: (order[p.unit], p.phase is Phase.DECODE)))


def _with_glue_state(profile: UnitProfile, unit: Unit) -> UnitProfile:
    """`profile` with the generation state that glue code builds from the unit's outputs
    (`Unit.state_bytes`: no call of any unit sees it grow), so a map keeps it on the unit's
    device as accelerate's hooks do."""
    if profile.phase is Phase.PREFILL:
        return replace(profile, cache_bytes=profile.cache_bytes + unit.state_bytes)
    growth = unit.state_bytes_per_token
    return replace(
        profile,
        cache_bytes=profile.cache_bytes + growth,
        kv_bytes_per_token=profile.kv_bytes_per_token + growth,
    )


class _Timer:
    """Wall time on the CPU; CUDA events on a GPU, so that queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def seconds(self, run: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(self.device)
            return float(start.elapsed_time(end)) / 1000.0
        begin = time.perf_counter()
        run()
        return time.perf_counter() - begin


class _Session:
    """One streaming pass over a meta model on one device."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        *,
        repeats: int,
        warmup: int,
        full: bool,
        on_unit: Callable[[UnitEvent], None] | None,
    ) -> None:
        self.model = model
        self.device = device
        self.key = placement_key(device)
        self.repeats = repeats
        self.warmup = warmup
        self.full = full
        self.on_unit = on_unit
        self.phase = Phase.PREFILL
        self.current = ""  # the unit being measured, named in errors
        self.timer = _Timer(device)
        self._calls: list[UnitProfile] = []
        # (phase, unit signature, input signature) -> (unit measured, its output, its profile)
        self._measured: dict[tuple[Any, ...], tuple[str, Any, UnitProfile]] = {}
        self._entries = placeable_units(model, no_split_classes(model))
        self._owners = _init_owners(model)

    def installed(self) -> _Installed:
        return _Installed(self)

    def results(self) -> list[UnitProfile]:
        """Calls folded into one profile per unit and phase (times of repeated calls add up)."""
        folded: dict[tuple[str, Phase], UnitProfile] = {}
        for call in self._calls:
            key = (call.unit, call.phase)
            if key in folded:
                before = folded[key]
                call = replace(
                    before,
                    time_s=before.time_s + call.time_s,
                    activation_peak_bytes=max(before.activation_peak_bytes, call.activation_peak_bytes),
                    output_bytes=before.output_bytes + call.output_bytes,
                    cache_bytes=before.cache_bytes + call.cache_bytes,
                    kv_bytes_per_token=before.kv_bytes_per_token + call.kv_bytes_per_token,
                )
            folded[key] = call
        return list(folded.values())

    def wrap(self, name: str, module: nn.Module) -> Callable[..., Any]:
        forward = module.forward
        signature = structural_signature(module)

        def measured_forward(*args: Any, **kwargs: Any) -> Any:
            key = (self.phase, signature, _input_signature(args, kwargs))
            if not self.full and key in self._measured:
                twin, output, profile = self._measured[key]
                self._calls.append(replace(profile, unit=name, measured_as=twin))
                self._notify(name, twin)
                return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, output)
            self.current = name
            _materialize(module, self.device, self._owners.get(name, self.model))
            try:
                profile, output = self._measure(name, forward, args, kwargs)
            finally:
                module.to_empty(device=META)
            self._measured.setdefault(key, (name, output, profile))
            self._calls.append(profile)
            self._notify(name, None)
            return output

        return measured_forward

    def _notify(self, name: str, twin: str | None) -> None:
        if self.on_unit is not None:
            self.on_unit(UnitEvent(name, self.phase, twin))

    def _measure(
        self, name: str, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[UnitProfile, Any]:
        caches = [leaf for leaf in tree_leaves((args, kwargs)) if is_state(leaf)]
        snapshot = StateSnapshot(caches)
        cache_before = storage_bytes(snapshot.tensors())
        times = [0.0]  # the meta device computes nothing: it only sizes tensors
        timed_runs = self.warmup + self.repeats if self.device.type != "meta" else 0
        if timed_runs:
            times = []
        for attempt in range(timed_runs):
            snapshot.restore()
            elapsed = self.timer.seconds(lambda: forward(*args, **kwargs))
            if attempt >= self.warmup:
                times.append(elapsed)
        snapshot.restore()
        output, peak = self._run_tracked(forward, args, kwargs, caches, snapshot)
        cache_growth = max(0, storage_bytes(snapshot.tensors()) - cache_before)
        outputs = [leaf for leaf in tree_leaves(output) if isinstance(leaf, torch.Tensor)]
        profile = UnitProfile(
            unit=name,
            device=self.key,
            phase=self.phase,
            time_s=statistics.median(times),
            activation_peak_bytes=peak,
            output_bytes=storage_bytes(outputs),
            cache_bytes=cache_growth,
            kv_bytes_per_token=cache_growth if self.phase is Phase.DECODE else 0,
            measured_as=name,
            repeats=self.repeats if timed_runs else 0,
        )
        return profile, output

    def _run_tracked(
        self,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        caches: list[Any],
        snapshot: StateSnapshot,
    ) -> tuple[Any, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            output = forward(*args, **kwargs)
            torch.cuda.synchronize(self.device)
            return output, max(0, torch.cuda.max_memory_allocated(self.device) - base)
        existing = [
            *(t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)),
            *snapshot.tensors(),
            *self.model.parameters(),
            *self.model.buffers(),
        ]
        with LiveBytesTracker(existing=existing) as tracker:
            output = forward(*args, **kwargs)
        return output, tracker.peak


class _Installed:
    """Context manager: our forwards in place on the meta model's units, and removed afterwards."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def __enter__(self) -> _Session:
        for name, entry in self.session._entries:
            if isinstance(entry, nn.Module):
                entry.forward = self.session.wrap(name, entry)  # type: ignore[method-assign]
        # Bare parameters and buffers are used by their parent's own code: keep them resident.
        _materialize_tensors(self.session.model, self.session.device)
        return self.session

    def __exit__(self, *exc: object) -> None:
        for _, entry in self.session._entries:
            if isinstance(entry, nn.Module):
                vars(entry).pop("forward", None)
        self.session.model.to_empty(device=META)
        # Moving between meta and a real device gives each module new Parameter objects; tie the
        # shared weights again so the model is the one we were handed.
        self.session.model.tie_weights()


def _init_owners(model: PreTrainedModel) -> dict[str, PreTrainedModel]:
    """For each module name, the innermost PreTrainedModel around it: its ``_init_weights`` knows
    how to initialise that module's buffers (rotary frequencies, position ids)."""
    owners: dict[str, PreTrainedModel] = {}
    stack: list[tuple[str, PreTrainedModel]] = [("", model)]
    for name, module in model.named_modules():
        while stack and stack[-1][0] and not name.startswith(stack[-1][0] + "."):
            stack.pop()
        if isinstance(module, PreTrainedModel) and name:
            stack.append((name, module))
        owners[name] = stack[-1][1] if stack else model
    return owners


@torch.no_grad()
def _materialize(module: nn.Module, device: torch.device, owner: PreTrainedModel) -> None:
    """Give a meta module real tensors on `device` that are safe to compute with.

    Uninitialised memory can hold NaNs and denormals, which slow CPU arithmetic; the model's own
    initialiser then sets buffers whose values matter (indices, frequencies).
    """
    module.to_empty(device=device)
    for tensor in [*module.parameters(), *module.buffers()]:
        _fill(tensor)
    for sub in module.modules():
        try:
            owner._init_weights(sub)
        except (AttributeError, TypeError, ValueError):
            # Some custom initialisers expect the whole model; the generic fill above stands.
            pass


@torch.no_grad()
def _materialize_tensors(model: nn.Module, device: torch.device) -> None:
    """Real storage for bare parameters and buffers, which their parent's own code uses."""
    for name, entry in placeable_units(model, no_split_classes(model)):  # type: ignore[arg-type]
        if isinstance(entry, torch.Tensor):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            real = torch.empty_like(entry, device=device)
            _fill(real)
            if isinstance(entry, nn.Parameter):
                setattr(parent, attr, nn.Parameter(real, requires_grad=False))
            else:
                parent.register_buffer(attr, real)


def _fill(tensor: torch.Tensor) -> None:
    if tensor.is_floating_point():
        tensor.normal_(0.0, 0.02)
    else:
        tensor.zero_()


def _input_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Shapes and settings of a call; caches are left out (each layer has its own slot)."""
    parts: list[Any] = []
    for key, value in [*enumerate(args), *sorted(kwargs.items())]:
        for leaf in tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                parts.append((key, tuple(leaf.shape), leaf.dtype))
            elif isinstance(leaf, (bool, int, float, str, type(None))):
                parts.append((key, leaf))
            elif not is_state(leaf):
                parts.append((key, type(leaf).__name__))
    return tuple(parts)

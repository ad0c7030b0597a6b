"""Load a device map for real: same outputs as the model on one device, measured latency and memory.

`validate` loads one map with ``from_pretrained(device_map=...)``, times the workload's call
(``generate`` with exactly ``new_tokens`` greedy tokens, or one forward when there are none),
measures the peak memory of each device, and compares logits and generated tokens with the
model loaded whole on one device. `measure_interleaved` times several maps of one model in
rotating round-robin order, so that drift on a noisy machine (thermal throttling, a neighbour's
job, page cache) hits every map alike; this is what ``tuner optimize --measure K`` runs.

A map that does not cover the model, fails to load, fails to run or runs out of memory is a
result, not an error: it comes back with ``ok=False`` and a one-line reason. Only bad arguments
(a missing model folder, a workload the model cannot run) raise, as `tuner.core.exceptions` errors.

What is measured:

- **latency**: the median over timed calls of one whole call. In the same call, a logits
  processor stamps the end of every forward pass (a CUDA event on the main device, else the wall
  clock), which splits it into the prefill (call start to the first token's logits) and the
  mean decode step (first to last logits over ``new_tokens - 1`` steps); each is then the
  median over calls. ``generate`` makes one prefill and ``new_tokens - 1`` decode forwards; the
  cost model prices ``new_tokens`` decode steps, one more than runs.
- **peak memory** per device key (``"cpu"``, ``"0"``, ``"1"``, ...): the bytes of the model's
  own tensors resident on the device after loading (for a GPU-main map that includes the weights
  accelerate keeps in cpu RAM for ``cpu`` units) plus the peak of bytes allocated during one
  untimed call. On a GPU that peak is ``max_memory_allocated`` after
  ``reset_peak_memory_stats``, less what was allocated before the call. On the cpu it is a
  `LiveBytesTracker` counting only cpu storages created by the call's ops: activations, the KV
  cache, and the weights of ``disk`` units while they are streamed in. Allocator slack, the
  Python heap and the page cache are not counted, so it is comparable with the cost model's
  figure rather than with the process's RSS.

Maps load through `profiler.loading`, as ``tuner.from_pretrained`` loads them for users. Timing
happens in this process; no subprocess is spawned.
"""

from __future__ import annotations

import contextlib
import gc
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import check_device_map
from torch.multiprocessing.reductions import StorageWeakRef
from transformers import LogitsProcessor
from transformers import LogitsProcessorList
from transformers import PreTrainedModel

from profiler.inputs import TORCH_DTYPES
from profiler.inputs import check_workload
from profiler.loading import absent_devices
from profiler.loading import error_line
from profiler.loading import load_pretrained
from profiler.loading import open_checkpoint
from profiler.loading import quiet
from profiler.memory import LiveBytesTracker
from profiler.model import MetaModel
from profiler.model import build_meta_model
from profiler.model import pretrained_class
from profiler.source import ModelSource
from tuner.core.devices import gpu_index
from tuner.core.devices import is_gpu
from tuner.core.domain import DeviceMap
from tuner.core.domain import Workload
from tuner.core.exceptions import ProfilingError

__all__ = ["TOLERANCES", "Validation", "measure_interleaved", "validate"]

#: (absolute, relative) tolerance of the logits comparison per dtype, as ``torch.allclose`` reads
#: them: ``|map - reference| <= atol + rtol * |reference|`` for every element. On one device the
#: same kernels usually give identical logits; the room is for a reference that runs on another
#: device than the map (a GPU map checked against the cpu) and for reduced precision.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-3, 1e-3),
    "float16": (2e-2, 2e-2),
    "bfloat16": (5e-2, 5e-2),
}

#: Seed of the token ids every call is fed: the same inputs for every map and the reference.
INPUT_SEED = 0

#: Share of a device's free memory that the maps measured together may take with their weights
#: before `measure_interleaved` loads each map afresh for every call instead of keeping them all.
_RESIDENT_SHARE = 0.8

_REASON_CHARS = 300


@dataclass(frozen=True)
class Validation:
    """What loading and running a device map showed.

    Args:
        ok: the map loaded, ran, and (when compared) gave the reference's outputs.
        reason: why not, in one line (``out of memory on device 0``, ``load failed: ...``,
            ``outputs differ: max |diff| 3.1e-02 ...``); empty when ok.
        max_abs_diff: largest absolute difference of the prefill logits from the reference's
            (the last hidden state for a model without logits); None when not compared.
        tokens_equal: whether greedy generation gave the reference's tokens; None when not
            compared or the workload generates nothing.
        latency_s: median seconds of one call: ``generate`` with ``new_tokens`` tokens, or one
            forward when ``new_tokens`` is 0.
        prefill_s: median seconds from the call's start to the first token's logits.
        decode_s: median seconds per decode step, when two or more tokens are generated.
        peak_memory: peak bytes per device key (``cpu``, ``0``, ...): resident tensors of the
            model plus the peak the call allocated (see the module docstring).
        samples_s: every timed call's seconds, in the order they ran.
    """

    ok: bool
    reason: str = ""
    max_abs_diff: float | None = None
    tokens_equal: bool | None = None
    latency_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    peak_memory: dict[str, int] = field(default_factory=dict)
    samples_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.ok == bool(self.reason):
            raise ValueError("a validation has a reason exactly when it is not ok")
        times = (("latency", self.latency_s), ("prefill", self.prefill_s), ("decode", self.decode_s))
        for label, value in times:
            if value is not None and value < 0:
                raise ValueError(f"negative {label} time {value}")
        if any(nbytes < 0 for nbytes in self.peak_memory.values()):
            raise ValueError("peak memory must not be negative")

    @classmethod
    def failed(cls, reason: str) -> Validation:
        return cls(ok=False, reason=_one_line(reason) or "failed")


def validate(
    model_path: str,
    device_map: DeviceMap,
    workload: Workload,
    *,
    repeats: int = 5,
    warmup: int = 1,
    offload_folder: Path | None = None,
    reference: bool = True,
    trust_remote_code: bool = False,
) -> Validation:
    """Load `model_path` with `device_map`, time the workload and compare with one device.

    The map is loaded and measured first and released before the reference is loaded, so the
    reference never shares memory with the measured map. The reference runs on the map's main
    GPU when the whole model fits its free memory, else on the cpu when it fits there; a model
    that fits neither (the usual reason to offload) is not compared (``max_abs_diff`` None).

    Args:
        model_path: a model folder with weights, or a hub id in the local cache.
        device_map: where each unit lives.
        workload: batch, prompt length, new tokens (0: one forward), dtype.
        repeats: timed calls; the latencies are their medians.
        warmup: untimed calls before them; the first also measures peak memory (one such call
            is made even when `warmup` is 0).
        offload_folder: where accelerate may write ``disk`` weights (only ``.bin`` checkpoints
            need it); a temporary folder when None.
        reference: compare logits and tokens with the model loaded whole on one device.

    Returns:
        A Validation; ``ok=False`` with a reason for a map that does not cover the model, fails
        to load or run, runs out of memory, or gives other outputs than the reference.

    Raises:
        ModelSourceError: no such model, or a folder without weights.
        WorkloadError: the model cannot run the workload (generation on an encoder, too long).
        ProfilingError: `repeats` below 1 or `warmup` below 0.

    Example:
        >>> dmap = DeviceMap.from_hf({"model": "cpu", "lm_head": "disk"}, units)  # doctest: +SKIP
        >>> result = validate("./tiny-llama", dmap, Workload(seq=16, new_tokens=4))  # doctest: +SKIP
        >>> result.ok, result.tokens_equal, f"{result.decode_s * 1e3:.1f} ms/token"  # doctest: +SKIP
        (True, True, '3.2 ms/token')
    """
    if repeats < 1:
        raise ProfilingError(f"repeats must be at least 1 (got {repeats})")
    if warmup < 0:
        raise ProfilingError(f"warmup must not be negative (got {warmup})")
    subject = _Subject.open(model_path, workload, trust_remote_code=trust_remote_code)
    problem = subject.coverage_problem(device_map)
    if problem:
        return Validation.failed(problem)
    with _offload_folder(offload_folder, device_map) as folder:
        try:
            loaded = subject.load(device_map, folder)
        except Exception as exc:  # a map that cannot load is a result, whatever the cause
            _free_memory()
            return Validation.failed(_failure_reason(exc, "load"))
        try:
            peak = loaded.measure_memory()
            for _ in range(warmup - 1):
                loaded.call()
            samples = [loaded.call() for _ in range(repeats)]
            outputs = loaded.outputs()
        except Exception as exc:  # out of memory, a hook that cannot find a weight, ...
            return Validation.failed(_failure_reason(exc, "run"))
        finally:
            loaded.release()
    timing = _summarise(samples)
    if not reference:
        return Validation(ok=True, peak_memory=peak, **timing)
    return subject.compare(outputs, device_map, peak=peak, timing=timing)


def measure_interleaved(
    model_path: str,
    maps: Mapping[str, DeviceMap],
    workload: Workload,
    *,
    rounds: int = 5,
    offload_folder_root: Path | None = None,
    reference: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Validation]:
    """Time several maps of one model in rotating round-robin order; the median per map.

    Every map is loaded once and warmed up by the untimed call that measures its peak memory
    (a map that does not cover the model, fails to load or to run is recorded with its reason
    and left out of the rounds). Round ``r`` then calls each map once, starting at the ``r``-th
    map, so that no map is always first or last after another one.

    The maps stay loaded side by side when their weights together take at most 80% of each
    device's free memory; otherwise each call loads its map afresh (load time is not counted),
    which is slower but never lets one map's weights crowd out another's.

    Args:
        maps: device maps by name (``auto``, ``trial 17``, ...); the result has the same keys.
        rounds: timed calls per map.
        offload_folder_root: folder under which each map gets its own offload folder (named
            after its position); temporary folders when None.
        reference: also compare each map's outputs with the model on one device.

    Raises:
        ModelSourceError, WorkloadError, ProfilingError: as `validate`.
    """
    if rounds < 1:
        raise ProfilingError(f"rounds must be at least 1 (got {rounds})")
    subject = _Subject.open(model_path, workload, trust_remote_code=trust_remote_code)
    results: dict[str, Validation] = {}
    peaks: dict[str, dict[str, int]] = {}
    outputs: dict[str, _Outputs] = {}
    resident = subject.fit_together(maps.values())
    with contextlib.ExitStack() as stack:
        folders: dict[str, Path | None] = {}
        loaded: dict[str, _Loaded] = {}
        try:
            for position, (name, dmap) in enumerate(maps.items()):
                problem = subject.coverage_problem(dmap)
                if problem:
                    results[name] = Validation.failed(problem)
                    continue
                given = offload_folder_root / f"map-{position}" if offload_folder_root is not None else None
                folders[name] = stack.enter_context(_offload_folder(given, dmap))
                try:
                    model = subject.load(dmap, folders[name])
                except Exception as exc:
                    _free_memory()
                    results[name] = Validation.failed(_failure_reason(exc, "load"))
                    continue
                try:
                    peaks[name] = model.measure_memory()
                    outputs[name] = model.outputs()
                except Exception as exc:
                    results[name] = Validation.failed(_failure_reason(exc, "run"))
                    model.release()
                    continue
                if resident:
                    loaded[name] = model
                else:
                    model.release()

            order = [name for name in maps if name not in results]
            samples: dict[str, list[_Sample]] = {name: [] for name in order}
            for round_ in range(rounds):
                shift = round_ % len(order) if order else 0
                for name in [*order[shift:], *order[:shift]]:
                    if name in results:
                        continue  # failed in an earlier round
                    try:
                        samples[name].append(_call_once(subject, maps[name], folders[name], loaded.get(name)))
                    except Exception as exc:
                        results[name] = Validation.failed(_failure_reason(exc, "run"))
                        if name in loaded:
                            loaded.pop(name).release()
        finally:
            for model in loaded.values():
                model.release()
    for name in order:
        if name in results:
            continue
        timing = _summarise(samples[name])
        if reference:
            results[name] = subject.compare(outputs[name], maps[name], peak=peaks[name], timing=timing)
        else:
            results[name] = Validation(ok=True, peak_memory=peaks[name], **timing)
    return {name: results[name] for name in maps}


def _call_once(subject: _Subject, dmap: DeviceMap, folder: Path | None, model: _Loaded | None) -> _Sample:
    """One timed call of a resident model, or of one loaded afresh and warmed up by an untimed
    call first (a first call pays for lazy initialisation that a resident model paid long ago)."""
    if model is not None:
        return model.call()
    try:
        fresh = subject.load(dmap, folder)
    except Exception:
        _free_memory()
        raise
    try:
        fresh.call()
        return fresh.call()
    finally:
        fresh.release()


# ---- the model under test ------------------------------------------------------------------


@dataclass(frozen=True)
class _Outputs:
    """What a map computed for the fixed inputs, on the cpu: prefill logits and greedy tokens."""

    logits: torch.Tensor
    tokens: torch.Tensor | None


@dataclass(frozen=True)
class _Sample:
    total_s: float
    prefill_s: float
    decode_s: float | None


class _Subject:
    """One model and one workload: its class, its meta copy and the fixed inputs of every call."""

    def __init__(
        self,
        source: ModelSource,
        model_class: Any,
        meta: MetaModel,
        workload: Workload,
        *,
        trust_remote_code: bool,
    ) -> None:
        self.source = source
        self.model_class = model_class
        self.trust_remote_code = trust_remote_code
        meta_model = meta.model
        self.meta_model = meta_model
        # what each tensor takes once loaded: a quantized checkpoint's stored bytes
        self.tensor_bytes = meta.tensor_bytes()
        self.workload = workload
        self.dtype = TORCH_DTYPES[workload.dtype]
        # the inputs the profiler measured, with seeded random values in place of fixed ones
        self.inputs = check_workload(meta.runnable, workload, source.path)
        config = meta_model.config
        generation = getattr(meta_model, "generation_config", None)  # None for encoders (BERT)
        self.pad_id = _first_id(
            getattr(config, "pad_token_id", None),
            getattr(generation, "pad_token_id", None),
            getattr(generation, "eos_token_id", None),
            getattr(config, "eos_token_id", None),
        )
        self._references: dict[int | str, _Outputs | str] = {}

    @classmethod
    def open(cls, model_path: str, workload: Workload, *, trust_remote_code: bool) -> _Subject:
        source = open_checkpoint(model_path)
        meta = build_meta_model(source, workload.dtype, trust_remote_code=trust_remote_code)
        model_class = pretrained_class(meta.model.config, trust_remote_code=trust_remote_code)
        return cls(source, model_class, meta, workload, trust_remote_code=trust_remote_code)

    # -- before loading ----------------------------------------------------------------------

    def coverage_problem(self, dmap: DeviceMap) -> str:
        """accelerate's complaint about the map, or an empty string when it covers the model.

        accelerate's ``check_device_map`` only warns about names that are no submodule; a bare
        parameter or buffer (BERT's ``cls.predictions.bias``) is a valid entry all the same, so
        unknown names are told apart here. A buffer that is not saved (GPTBigCode's
        ``transformer.bias``) and a module registered under two names (OpenAI-GPT's shared
        activation) are valid too: ``from_pretrained`` places each by its entry.
        """
        mapping = dmap.to_hf()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                check_device_map(self.meta_model, mapping)
            except ValueError as exc:
                return f"incomplete map: {exc}"
        model = self.meta_model
        known = {
            *(name for name, _ in model.named_modules(remove_duplicate=False)),
            *(name for name, _ in model.named_parameters(remove_duplicate=False)),
            *(name for name, _ in model.named_buffers(remove_duplicate=False)),
        }
        unknown = [name for name in mapping if name and name not in known]
        return f"map names modules the model does not have: {', '.join(unknown)}" if unknown else ""

    def weight_bytes(self, dmap: DeviceMap) -> dict[str, int]:
        """Bytes of parameters and buffers each memory holds under `dmap` (``disk`` left out)."""
        mapping = {name: str(place) for name, place in dmap.to_hf().items()}
        main = dmap.main_device
        buffers = dict(self.meta_model.named_buffers())
        held: dict[str, int] = {}
        for name, _ in [*self.meta_model.named_parameters(), *buffers.items()]:
            place = _longest_prefix(mapping, name)
            if place is None:
                continue
            if place in ("cpu", "disk") and place != main:
                if name not in buffers:
                    if place == "disk":
                        continue
                else:
                    place = main  # buffers of offloaded units stay on the main device
            held[place] = held.get(place, 0) + self.tensor_bytes[name]
        return held

    def fit_together(self, maps: Iterable[DeviceMap]) -> bool:
        """Whether the weights of all `maps` fit side by side in each device's free memory."""
        from profiler.hardware import describe_hardware

        free = {device.key: device.free_memory for device in describe_hardware().devices}
        total: dict[str, int] = {}
        for dmap in maps:
            for key, nbytes in self.weight_bytes(dmap).items():
                total[key] = total.get(key, 0) + nbytes
        return all(nbytes <= _RESIDENT_SHARE * free[key] for key, nbytes in total.items() if key in free)

    # -- loading and comparing ---------------------------------------------------------------

    def load(self, dmap: DeviceMap, offload_folder: Path | None) -> _Loaded:
        return _Loaded(self, self.load_model(dmap.to_hf(), offload_folder), dmap)

    def load_model(
        self, device_map: dict[str, int | str], offload_folder: Path | None = None
    ) -> PreTrainedModel:
        with quiet():
            model = load_pretrained(
                self.model_class,
                self.source,
                device_map,
                dtype=self.dtype,
                offload_folder=offload_folder,
                trust_remote_code=self.trust_remote_code,
            )
        model.eval()
        return model

    def compare(
        self, outputs: _Outputs, dmap: DeviceMap, *, peak: dict[str, int], timing: dict[str, Any]
    ) -> Validation:
        """Compare the map's outputs with the model's loaded whole on one device."""
        device = self._reference_device(dmap)
        if device is None:  # loading it whole would swap or be killed: run the map alone
            return Validation(ok=True, peak_memory=peak, **timing)
        expected = self._reference_outputs(device)
        if isinstance(expected, str):
            why = f"the one-device reference could not run ({expected}); pass reference=False to skip it"
            return Validation(ok=False, reason=_one_line(why), peak_memory=peak, **timing)
        atol, rtol = TOLERANCES[self.workload.dtype]
        got, want = outputs.logits, expected.logits
        diff: float | None = None
        reason = ""
        if got.shape != want.shape:
            reason = f"outputs differ: shape {tuple(got.shape)} vs {tuple(want.shape)}"
        else:
            diff = float((got - want).abs().max()) if got.numel() else 0.0
            if not torch.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True):
                reason = f"outputs differ: max |diff| {diff:.1e} (allowed {atol:g} + {rtol:g} x |reference|)"
        tokens_equal: bool | None = None
        if outputs.tokens is not None and expected.tokens is not None:
            tokens_equal = outputs.tokens.shape == expected.tokens.shape and bool(
                torch.equal(outputs.tokens, expected.tokens)
            )
            if tokens_equal is False and not reason:
                where = _first_difference(outputs.tokens, expected.tokens)
                reason = f"generated tokens differ from the reference's {where}"
        return Validation(
            ok=not reason,
            reason=reason,
            max_abs_diff=diff,
            tokens_equal=tokens_equal,
            peak_memory=peak,
            **timing,
        )

    def _reference_outputs(self, device: int | str) -> _Outputs | str:
        """The reference's outputs on `device` (computed once per device), or why it failed."""
        if device not in self._references:
            try:
                model = self.load_model({"": device})
                units = [name for name, _ in self.meta_model.named_children()]
                reference = _Loaded(self, model, DeviceMap.from_hf({"": device}, units))
                try:
                    self._references[device] = reference.outputs()
                finally:
                    reference.release()
            except Exception as exc:  # the reference may not fit one device
                _free_memory()
                self._references[device] = _failure_reason(exc, "load")
        return self._references[device]

    def _reference_device(self, dmap: DeviceMap) -> int | str | None:
        """The map's main GPU when the whole model fits its free memory with room to run; else the
        cpu when it fits there; else None: the model is offloaded because it fits nowhere whole."""
        from profiler.hardware import describe_hardware

        total = sum(self.tensor_bytes[name] for name, _ in self.meta_model.named_parameters())
        main = dmap.main_device
        if is_gpu(main) and not absent_devices([main]):
            free, _ = torch.cuda.mem_get_info(int(main))
            if total <= _RESIDENT_SHARE * free:
                return int(main)
        return "cpu" if total <= _RESIDENT_SHARE * describe_hardware().device("cpu").free_memory else None

    def forward_inputs(self, device: torch.device) -> dict[str, Any]:
        """The prefill forward the profiler measures, fed the seeded inputs."""
        return self.inputs.prefill(device, self.dtype, seed=INPUT_SEED)

    def generate_inputs(self, device: torch.device) -> dict[str, Any]:
        n = self.workload.new_tokens
        return {
            **self.inputs.prompt(device, self.dtype, seed=INPUT_SEED),
            "max_new_tokens": n,
            "min_new_tokens": n,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": self.pad_id,
        }


class _Loaded:
    """A model loaded with a device map, with the calls that time and measure it."""

    def __init__(self, subject: _Subject, model: PreTrainedModel, dmap: DeviceMap) -> None:
        self.subject = subject
        # Any: transformers 5 mixes ``generate`` in per model class (GenerationMixin), not on
        # PreTrainedModel, so the type checker cannot see it.
        self.model: Any = model
        self.dmap = dmap
        self.gpus = sorted(gpu_index(place) for place in dmap.devices if is_gpu(place))
        main = dmap.main_device
        self.main = torch.device("cuda", int(main)) if is_gpu(main) else torch.device(main)
        self.clock = _Clock(self.main, self.gpus)
        self._tokens: torch.Tensor | None = None

    def call(self) -> _Sample:
        """One timed call of the workload: ``generate`` with new tokens, else one forward."""
        stamps = _Stamps(self.clock)
        with torch.no_grad(), quiet():
            start = self.clock.start()
            if self.subject.workload.new_tokens > 0:
                tokens = self.model.generate(
                    **self.subject.generate_inputs(self.main), logits_processor=LogitsProcessorList([stamps])
                )
            else:
                self.model(**self.subject.forward_inputs(self.main))
                tokens = None
            end = self.clock.stop()
        if tokens is not None and self._tokens is None:
            self._tokens = tokens.detach().cpu()
        total = self.clock.seconds(start, end)
        if not stamps.marks:
            return _Sample(total, total, None)
        prefill = self.clock.seconds(start, stamps.marks[0])
        steps = len(stamps.marks) - 1
        decode = self.clock.seconds(stamps.marks[0], stamps.marks[-1]) / steps if steps else None
        return _Sample(total, prefill, decode)

    def measure_memory(self) -> dict[str, int]:
        """Peak bytes per device key during one untimed call (see the module docstring)."""
        resident = self.resident_bytes()
        base = {}
        for index in self.gpus:
            torch.cuda.synchronize(index)
            torch.cuda.reset_peak_memory_stats(index)
            base[index] = torch.cuda.memory_allocated(index)
        existing = [*self.model.parameters(), *self.model.buffers()]
        with _CpuBytesTracker(existing=existing) as tracker:
            self.call()
        peak = {"cpu": resident.get("cpu", 0) + tracker.peak}
        for index in self.gpus:
            torch.cuda.synchronize(index)
            grown = max(0, torch.cuda.max_memory_allocated(index) - base[index])
            peak[str(index)] = resident.get(str(index), 0) + grown
        return peak

    def outputs(self) -> _Outputs:
        """Prefill logits of one forward and the tokens of the first generate call, on the cpu."""
        with torch.no_grad(), quiet():
            result = self.model(**self.subject.forward_inputs(self.main))
            if self.subject.workload.new_tokens > 0 and self._tokens is None:
                self._tokens = self.model.generate(**self.subject.generate_inputs(self.main)).detach().cpu()
        logits = getattr(result, "logits", None)
        if logits is None:
            logits = getattr(result, "last_hidden_state", None)
        if logits is None:
            logits = next(t for t in result.values() if isinstance(t, torch.Tensor))
        return _Outputs(logits.detach().float().cpu(), self._tokens)

    def resident_bytes(self) -> dict[str, int]:
        """Bytes of the model's tensors per device key: parameters and buffers that are not on
        meta, and the cpu copies accelerate's hooks keep of ``cpu`` units under a GPU-main map."""
        storages: dict[int, tuple[str, int]] = {}

        def note(tensor: torch.Tensor) -> None:
            if tensor.device.type == "meta":
                return
            key = str(tensor.device.index or 0) if tensor.device.type == "cuda" else tensor.device.type
            storage = tensor.untyped_storage()
            storages[StorageWeakRef(storage).cdata] = (key, storage.nbytes())

        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            note(tensor)
        for tensor in _hook_weights(self.model):
            note(tensor)
        held: dict[str, int] = {}
        for key, nbytes in storages.values():
            held[key] = held.get(key, 0) + nbytes
        return held

    def release(self) -> None:
        """Drop the model and give its memory back before anything else is loaded."""
        self.model = None  # type: ignore[assignment]
        _free_memory()


def _free_memory() -> None:
    """Collect what a released (or half-loaded) model left and hand cached GPU blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- timing and memory helpers ---------------------------------------------------------------


class _Clock:
    """CUDA events on the main GPU when the map uses GPUs, the wall clock otherwise.

    Every used GPU is synchronised before the start mark and after the stop mark, so queued
    kernels of earlier calls never count and none of this call's are missed.
    """

    def __init__(self, main: torch.device, gpus: list[int]) -> None:
        self.cuda = main.type == "cuda"
        self.main = main
        self.gpus = gpus

    def _sync(self) -> None:
        for index in self.gpus:
            torch.cuda.synchronize(index)
        if self.main.type == "mps":
            torch.mps.synchronize()

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.main))
            return event
        return time.perf_counter()

    def start(self) -> Any:
        self._sync()
        return self.mark()

    def stop(self) -> Any:
        mark = self.mark()
        self._sync()
        return mark

    def seconds(self, begin: Any, end: Any) -> float:
        if self.cuda:
            return float(begin.elapsed_time(end)) / 1000.0
        return float(end - begin)


class _Stamps(LogitsProcessor):
    """Marks the moment each forward's logits reach the sampler; changes nothing."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.marks: list[Any] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.marks.append(self.clock.mark())
        return scores


class _CpuBytesTracker(LiveBytesTracker):
    """A LiveBytesTracker that counts cpu storages only (meta placeholders and GPU tensors of the
    same call are left out)."""

    def _remember(self, storage: torch.UntypedStorage) -> None:
        if storage.device.type == "cpu":
            super()._remember(storage)


def _hook_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """In-memory weights held by accelerate's offload hooks (``cpu`` units of a GPU-main map)."""
    from accelerate.utils.offload import OffloadedWeightsLoader
    from accelerate.utils.offload import PrefixedDataset

    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for single in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            weights_map = getattr(single, "weights_map", None)
            dataset = weights_map.dataset if isinstance(weights_map, PrefixedDataset) else weights_map
            if id(dataset) in seen:
                continue
            seen.add(id(dataset))
            if isinstance(dataset, OffloadedWeightsLoader):
                tensors.extend(t for t in dataset.state_dict.values() if isinstance(t, torch.Tensor))
            elif isinstance(dataset, dict):
                tensors.extend(t for t in dataset.values() if isinstance(t, torch.Tensor))
    return tensors


def _summarise(samples: list[_Sample]) -> dict[str, Any]:
    decode = [s.decode_s for s in samples if s.decode_s is not None]
    return {
        "latency_s": statistics.median(s.total_s for s in samples),
        "prefill_s": statistics.median(s.prefill_s for s in samples),
        "decode_s": statistics.median(decode) if len(decode) == len(samples) else None,
        "samples_s": tuple(s.total_s for s in samples),
    }


# ---- small helpers ---------------------------------------------------------------------------


def _first_id(*candidates: object) -> int:
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int):
            return candidate
    return 0


def _longest_prefix(mapping: Mapping[str, str], name: str) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        prefix = ".".join(parts[:end])
        if prefix in mapping:
            return mapping[prefix]
    return None


def _first_difference(got: torch.Tensor | None, want: torch.Tensor | None) -> str:
    if got is None or want is None or got.shape != want.shape:
        return "(other length)"
    columns = (got != want).any(dim=0).nonzero()
    return f"(first at position {int(columns[0])})" if len(columns) else ""


_GPU_INDEX = re.compile(r"GPU (\d+)")


def _failure_reason(exc: BaseException, stage: str) -> str:
    """One line: ``out of memory on device N`` / ``on cpu``, or ``<stage> failed: <message>``."""
    message = str(exc).strip()
    if isinstance(exc, torch.OutOfMemoryError):
        match = _GPU_INDEX.search(message)
        return f"out of memory on device {match.group(1)}" if match else "out of memory on a GPU"
    if isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in message:
        return "out of memory on cpu"
    return _one_line(f"{stage} failed: {error_line(exc)}")


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


@contextlib.contextmanager
def _offload_folder(given: Path | None, dmap: DeviceMap) -> Iterator[Path | None]:
    """The folder accelerate may write ``disk`` weights to: the given one, a temporary one for a
    map with ``disk`` units, or None when nothing is offloaded."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
    elif "disk" in dmap.devices:
        with tempfile.TemporaryDirectory(prefix="tuner-offload-") as folder:
            yield Path(folder)
    else:
        yield None

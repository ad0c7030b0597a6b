"""A tuning request: what a run answers, read from the caller's arguments and checked against the
model and the hardware before anything is measured or stored.

Three steps, each cheaper than the next one's failure would be:

1. `TuningRequest.from_arguments` reads arguments as `from_pretrained` takes them (``{0: "20GiB",
   "cpu": 64 * 2**30}``, GPU keys as ints or ``"cuda:0"``) into device keys and bytes: pure,
   instant, no import of torch.
2. `request_key` digests the request as written, with the config's text, the weights' identity
   and this machine's identity: a stored answer is found without loading any model code.
3. `prepare` builds the model on the meta device and describes the hardware (nothing measured)
   to check units, devices, pins and the caller's own maps, and computes the run's key.

A run on this machine is priced from the stored profile of its model for its workload; its key
names that profile (`priced_from`), so a newer profile (``tuner profile --force``) makes the same
request search again instead of reusing predictions of measurements that were replaced.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple

from tuner.core.devices import is_gpu
from tuner.core.devices import is_placement
from tuner.core.devices import main_device
from tuner.core.devices import to_key
from tuner.core.domain import AUTO_DTYPE
from tuner.core.domain import DTYPE_CHOICES
from tuner.core.domain import MAX_STORED_INT
from tuner.core.domain import THIS_MACHINE
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelProfile
from tuner.core.domain import Run
from tuner.core.domain import Workload
from tuner.core.domain import stable_hash
from tuner.core.exceptions import ConstraintError
from tuner.core.exceptions import SpecError
from tuner.core.exceptions import WorkloadError
from tuner.core.sizes import format_bytes
from tuner.core.sizes import read_limits
from tuner.plan.costmodel import PRICING_VERSION

if TYPE_CHECKING:
    from pathlib import Path

    from profiler.model import MetaModel
    from profiler.source import ModelSource
    from storage import Store

__all__ = [
    "CheckedWorkload",
    "Prepared",
    "TuningRequest",
    "check_device_map",
    "check_spec_name",
    "check_whole_numbers",
    "checked_workload",
    "prepare",
    "priced_from",
    "priced_from_stored_profile",
    "profile_digest",
    "read_device_keys",
    "read_dtype",
    "read_placements",
    "request_key",
]


@dataclass(frozen=True)
class TuningRequest:
    """What a run answers: a model on some hardware for a workload, under limits.

    Args:
        model: a local folder (weights, or config.json alone) or a hub id in the local cache.
        hardware: a spec file or the name of a shipped spec; None plans for this machine.
        batch: prompts per call.
        seq: prompt length in tokens.
        new_tokens: tokens to generate; None means 32 for a model that generates, else 0.
        dtype: the dtype the model is loaded in: ``auto`` (the default) is the one
            ``from_pretrained`` loads without a dtype, the checkpoint's own; resolved by `prepare`.
        max_memory: bytes each device key may use; devices not named may use what is free.
        pins: unit name -> device key that every candidate keeps.
        exclude: device keys no candidate may use.
        candidates: maps of the caller's own, module name (prefixes allowed) -> device key; they
            are priced and tried first, so the winner is never worse than any of them.
        trust_remote_code: let transformers run code shipped in the model's folder.
        calibrate: multiply each phase's predicted seconds by what maps measured on this
            machine took over what was predicted for them (`Calibration`).

    Raises:
        WorkloadError: batch or seq below 1, negative new tokens, an unknown dtype.
        ConstraintError: a limit, pin, exclusion or candidate that names no device, or a
            negative limit; calibrating a plan for a spec's machine.
    """

    model: str
    hardware: str | None = None
    batch: int = 1
    seq: int = 128
    new_tokens: int | None = None
    dtype: str = AUTO_DTYPE
    max_memory: Mapping[str, int] = field(default_factory=dict)
    pins: Mapping[str, str] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    candidates: tuple[Mapping[str, str], ...] = ()
    trust_remote_code: bool = False
    calibrate: bool = False

    def __post_init__(self) -> None:
        check_flags(ConstraintError, trust_remote_code=self.trust_remote_code, calibrate=self.calibrate)
        check_whole_numbers(WorkloadError, batch=(self.batch, 1), seq=(self.seq, 1))
        if self.calibrate and self.hardware is not None:
            raise ConstraintError(
                f"calibrate learns from maps measured on this machine, and none ran on {self.hardware}: "
                "plan for this machine or do not calibrate"
            )
        if self.new_tokens is not None:
            check_whole_numbers(WorkloadError, new_tokens=(self.new_tokens, 0))
        read_dtype(self.dtype)
        for key, limit in self.max_memory.items():
            if not is_placement(key):
                raise ConstraintError(f"max_memory: {key!r} is not a device key (0, 1, ..., mps, cpu, disk)")
            if limit < 0:
                raise ConstraintError(f"max_memory[{key!r}] must not be negative (got {limit})")
        for unit, place in self.pins.items():
            if not is_placement(place):
                raise ConstraintError(f"pins[{unit!r}]: {place!r} is not a device key")
        for key in self.exclude:
            if not is_placement(key):
                raise ConstraintError(f"exclude: {key!r} is not a device key")
        for index, mapping in enumerate(self.candidates):
            for name, place in mapping.items():
                if not is_placement(place):
                    raise ConstraintError(f"candidates[{index}][{name!r}]: {place!r} is not a device key")

    @classmethod
    def from_arguments(
        cls,
        model: str | os.PathLike[str],
        *,
        hardware: str | os.PathLike[str] | None = None,
        batch: int = 1,
        seq: int = 128,
        new_tokens: int | None = None,
        dtype: str = AUTO_DTYPE,
        max_memory: Mapping[Any, int | str] | None = None,
        pins: Mapping[str, int | str] | None = None,
        exclude: Iterable[int | str] | int | str = (),
        candidates: Iterable[Mapping[str, int | str]] = (),
        trust_remote_code: bool = False,
        calibrate: bool = False,
    ) -> TuningRequest:
        """A request from arguments written as `from_pretrained` takes them.

        ``max_memory={0: "20GiB", "cpu": 64 * 2**30}``, ``pins={"lm_head": 1}``,
        ``exclude=["disk"]``, ``candidates=[{"model": 0, "lm_head": "cpu"}]``. GPU keys may be
        ints, digit strings or ``"cuda:N"``; sizes may be byte counts or strings like ``"20GiB"``.

        Raises:
            WorkloadError, ConstraintError: an argument that cannot be read; the message names it.
        """
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise ConstraintError(f"model must be a folder or a hub id (got {model!r})")
        if isinstance(hardware, os.PathLike):
            hardware = os.fspath(hardware)
        if isinstance(hardware, HardwareProfile):
            raise ConstraintError(
                "hardware takes a spec file's path or a shipped spec's name, not a HardwareProfile: "
                "save it with tuner.write_spec(hardware, path) and pass the path"
            )
        if hardware is not None and (not isinstance(hardware, str) or not hardware):
            raise ConstraintError(
                f"hardware must be a spec file or a shipped spec's name (got {_shortened(repr(hardware))})"
            )
        return cls(
            model=_spelt_once(model),
            hardware=hardware if hardware is None else _spelt_once(hardware),
            batch=batch,
            seq=seq,
            new_tokens=new_tokens,
            dtype=_dtype_name(dtype),
            max_memory=read_max_memory(max_memory),
            pins=read_placements("pins", pins),
            exclude=_excluded(exclude),
            candidates=_candidate_mappings(candidates),
            trust_remote_code=trust_remote_code,
            calibrate=calibrate,
        )


def _spelt_once(name: str) -> str:
    """A folder or file of this machine by its absolute path in its normal spelling (``./m``,
    ``m/`` and ``/work//m`` name one folder), so that a run stored under one spelling is found by
    another and read again from any working directory; an absolute path that does not exist in
    its normal spelling; anything else (a hub id, a spec's name, a path that is not here) as
    given, as its error then names it."""
    if os.path.exists(os.path.expanduser(name)):
        return absolute_path(name)
    return os.path.normpath(name) if name.startswith("/") else name


def absolute_path(path: str) -> str:
    """`path` (``~`` expanded) as an absolute path in its normal spelling, named relative to
    this process's working directory."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def read_max_memory(max_memory: Mapping[Any, int | str] | None) -> dict[str, int]:
    """Bytes per device key from limits as callers give them (``{0: "20GiB", "cpu": 2**36}``).

    Raises:
        ConstraintError: not a mapping, or a device or size that cannot be read; named.
    """
    if max_memory is None:
        return {}
    if not isinstance(max_memory, Mapping):
        raise ConstraintError(
            f"max_memory must map devices to sizes, e.g. {{0: '20GiB', 'cpu': '64GiB'}} (got {max_memory!r})"
        )
    try:
        return read_limits((f"max_memory[{device!r}]", device, size) for device, size in max_memory.items())
    except ValueError as exc:
        raise ConstraintError(str(exc)) from None


def read_dtype(dtype: object) -> str:
    """The name of a dtype the tuner plans in (``auto``, ``float16``, ...), given by its name or
    as a torch dtype, as ``from_pretrained`` takes both.

    Raises:
        WorkloadError: any other dtype, listing those the tuner plans in.
    """
    name = _dtype_name(dtype)
    if name not in DTYPE_CHOICES:
        raise WorkloadError(f"dtype: unknown {name!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return name


def _dtype_name(dtype: object) -> str:
    """A torch dtype (``torch.float16``) by its name; read without importing torch, which the
    caller imported. Anything else as it reads."""
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        return str(dtype).removeprefix("torch.")
    return dtype if isinstance(dtype, str) else repr(dtype)


def check_flags(error: type[Exception], **values: object) -> None:
    """Raise `error` naming the first argument that is not True or False: ``"no"`` is truthy, and
    read as a yes it would turn ``trust_remote_code`` on."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise error(f"{name} must be True or False (got {value!r})")


def check_whole_numbers(error: type[Exception], **values: tuple[object, int]) -> None:
    """Raise `error` naming the first argument that is not a whole number of at least its least
    value and at most `MAX_STORED_INT`; `values` maps each argument's name to (value, least)."""
    for name, (value, least) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise error(f"{name} must be a whole number of at least {least} (got {value!r})")
        if value > MAX_STORED_INT:
            raise error(f"{name} must be at most {MAX_STORED_INT} (got {value})")


def read_placements(parameter: str, mapping: Mapping[str, int | str] | None) -> dict[str, str]:
    """Module name -> device key, from a map written as `from_pretrained` takes it.

    Raises:
        ConstraintError: naming `parameter`, for a name that is not a string or a device that
            names no device.
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConstraintError(f"{parameter} must map unit names to devices, e.g. {{'lm_head': 0}}")
    placements: dict[str, str] = {}
    for name, place in mapping.items():
        if not isinstance(name, str):
            raise ConstraintError(f"{parameter}: {name!r} is not a module name")
        try:
            placements[name] = to_key(place)
        except ValueError as exc:
            raise ConstraintError(f"{parameter}[{name!r}]: {exc}") from None
    return placements


def read_device_keys(parameter: str, devices: Iterable[int | str] | int | str | None) -> tuple[str, ...]:
    """Device keys, each once in the order first given, from one device or several as users
    write them (``0``, ``"cuda:0"``, ``"cpu"``; None: none).

    Raises:
        ConstraintError: naming `parameter`, for something that is no device or no list of them.
    """
    if devices is None:
        return ()
    if isinstance(devices, (int, str)):
        devices = [devices]
    elif not isinstance(devices, Iterable):
        raise ConstraintError(
            f"{parameter} takes a device or a list of them, e.g. ['disk'] (got {devices!r})"
        )
    keys: dict[str, None] = {}
    for device in devices:
        try:
            keys[to_key(device)] = None
        except ValueError as exc:
            raise ConstraintError(f"{parameter}: {exc}") from None
    return tuple(keys)


def _excluded(exclude: Iterable[int | str] | int | str | None) -> tuple[str, ...]:
    return tuple(sorted(read_device_keys("exclude", exclude)))


def _candidate_mappings(candidates: Iterable[Mapping[str, int | str]] | None) -> tuple[dict[str, str], ...]:
    if candidates is None:
        return ()
    if isinstance(candidates, Mapping):
        raise ConstraintError("candidates takes a list of device maps, not one map: write [your_map]")
    return tuple(read_placements(f"candidates[{index}]", mapping) for index, mapping in enumerate(candidates))


def request_key(request: TuningRequest) -> str:
    """A digest of the request as written, with what identifies the model and the hardware.

    Torch-free and fast (the config's text, the checkpoint's headers, this machine's identity
    from the OS): `tuner.device_map` looks up a stored answer with it before loading any model
    code. Equal keys mean equal requests; unequal keys may still name one run.
    """
    from profiler.source import resolve_source

    source = resolve_source(request.model)
    return stable_hash(
        {
            "pricing": PRICING_VERSION,
            "model": source.request_identity(),
            "hardware": _hardware_identity(request.hardware),
            "workload": [request.batch, request.seq, request.new_tokens, request.dtype],
            "trust_remote_code": request.trust_remote_code,
            "max_memory": dict(request.max_memory),
            "pins": sorted(request.pins.items()),
            "exclude": list(request.exclude),
            "candidates": [sorted(mapping.items()) for mapping in request.candidates],
            # only when set, so that the keys of requests stored before it existed still match
            **({"calibrate": True} if request.calibrate else {}),
        }
    )


def _shortened(text: str, most: int = 60) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _hardware_identity(spec: str | None) -> str:
    if spec is None:
        from profiler.hardware.host import machine_identity

        return machine_identity()
    from profiler.spec import load_spec
    from tuner.core.codec import to_dict

    # The whole spec, speeds included: an edited spec file is another request.
    return stable_hash(to_dict(load_spec(spec)))


@dataclass(frozen=True)
class Prepared:
    """A request checked against its model and hardware, ready to plan.

    Args:
        request: what was asked.
        source: where the model's files are.
        meta: our meta-device instance of the model.
        workload: the workload, `new_tokens` and `dtype` resolved.
        hardware: the spec, or this machine as described (no speeds are measured yet).
        hardware_name: the spec's name, or ``this machine``.
        candidate_maps: the caller's own maps, expanded to one placement per unit.
        key: `Run.key` of the run that answers it.
        model_pins: placements the model itself needs (`model_pins`), beside the request's.
        seq_note: why the workload's seq is not the one asked for ("" when it is).
        inputs: what the model takes as a prompt (`INPUT_KINDS`).
    """

    request: TuningRequest
    source: ModelSource
    meta: MetaModel
    workload: Workload
    hardware: HardwareProfile
    hardware_name: str
    candidate_maps: tuple[DeviceMap, ...]
    key: str
    model_pins: Mapping[str, str] = field(default_factory=dict)
    seq_note: str = ""
    inputs: str = "text"

    @property
    def pins(self) -> dict[str, str]:
        """Unit -> placement every map keeps: the model's own needs (`model_pins`), then the
        request's pins, which win; a pin on a module pins each unit inside it, and a pin on a
        module inside another pinned one wins over that."""
        units = self.meta.unit_names
        asked = sorted(self.request.pins.items(), key=lambda pin: len(pin[0]))
        pinned = {unit: place for name, place in asked for unit in units_under(name, units)}
        return {**self.model_pins, **pinned}

    def broken_by(self, dmap: DeviceMap) -> str:
        """Which pins and excluded devices `dmap` does not keep (`DeviceMap.broken_constraints`),
        the model's own pins named as such: a user who asked for none reads ``the model's pin
        model.encoder.conv1=0``, not a pin of theirs."""
        pins = self.pins
        own = {unit: place for unit, place in pins.items() if self.model_pins.get(unit) == place}
        asked = {unit: place for unit, place in pins.items() if unit not in own}
        parts = (
            dmap.broken_constraints(own, (), pin="the model's pin"),
            dmap.broken_constraints(asked, set(self.request.exclude)),
        )
        return ", ".join(part for part in parts if part)

    @property
    def excluded(self) -> set[str]:
        """Devices no map may use: the request's exclusions, and the placements the model's
        quantizer refuses (bitsandbytes' cpu and disk, see `Quantization.refused_placements`)."""
        return set(self.request.exclude) | _refused_placements(self.meta, self.hardware)


def _refused_placements(meta: MetaModel, hardware: HardwareProfile) -> frozenset[str]:
    quantization = meta.quantization
    if quantization is None:
        return frozenset()
    accelerators = any(is_gpu(device.key) or device.kind == "mps" for device in hardware.compute_devices)
    return quantization.refused_placements(accelerators=accelerators)


def model_pins(
    meta: MetaModel, workload: Workload, hardware: HardwareProfile, excluded: Collection[str] = ()
) -> dict[str, str]:
    """Placements a model needs for its workload to run at all, whatever is fastest; each such
    unit is kept on the main device: the lowest GPU not `excluded`, else ``mps``, else the cpu.

    - A unit with a weight the checkpoint does not hold (`MetaModel.unsaved_units`) cannot be
      read from disk.
    - A model class with its own ``generate`` (Whisper's and other speech and multimodal models')
      reads ``model.device``, the device of the model's first weight, to make its prompt tokens;
      when that weight is offloaded (on ``meta`` until a hook loads it), ``generate`` fails
      with "Cannot copy out of meta tensor", so the unit holding it stays resident. accelerate's
      own maps always put it there, since they fill devices in order.
    - A unit that is a parameter of the model itself (CLIP's ``logit_scale``), not of one of its
      modules, is loaded by no hook of accelerate's from disk: ``from_pretrained`` fails with
      "logit_scale is on the meta device, we need a `value`". (A bare parameter of a module, BERT's
      ``cls.predictions.bias``, streams with its module's hook.)
    """
    from transformers import GenerationMixin

    from profiler.model import tensor_owner

    units: list[str] = list(meta.unsaved_units())
    own = {name for name, _ in meta.model.named_parameters(recurse=False)}
    units += [unit for unit in meta.unit_names if unit in own]
    generate = getattr(type(meta.model), "generate", None)
    if workload.new_tokens > 0 and generate is not None and generate is not GenerationMixin.generate:
        first = next((name for name, _ in meta.model.named_parameters()), None)
        if first is not None:
            units.append(tensor_owner(set(meta.unit_names), first))
    keys = [device.key for device in hardware.compute_devices if device.key not in excluded]
    gpus = sorted((key for key in keys if is_gpu(key)), key=int)
    main = gpus[0] if gpus else "mps" if "mps" in keys else "cpu"
    return dict.fromkeys(units, main)


def prepare(request: TuningRequest) -> Prepared:
    """Build the model on the meta device, describe the hardware, and check every argument.

    Nothing is measured, profiled or stored, so a wrong argument costs seconds, not a profile.

    Raises:
        ModelSourceError: the model cannot be found or read.
        WorkloadError: the model cannot run the workload (generation on an encoder, too long).
        ConstraintError: a limit, exclusion or pin names a device the hardware lacks; a pin names
            no unit; a candidate map names no module, splits a unit, misses a unit, or uses a
            device that is absent or excluded.
    """
    from profiler.source import resolve_source

    # first, before torch and transformers load (seconds): a model folder that is not there, and
    # a spec too large to plan for
    source = resolve_source(request.model)
    hardware, hardware_name = _described_hardware(request.hardware)
    _check_plannable(hardware, hardware_name)

    from profiler.model import build_meta_model

    # A plan for a spec's machine loads nowhere here: the quantizer sizes the weights without
    # judging this machine's libraries and devices.
    meta = build_meta_model(
        source,
        request.dtype,
        trust_remote_code=request.trust_remote_code,
        check_environment=request.hardware is None,
    )
    new_tokens = request.new_tokens
    if new_tokens is None:
        new_tokens = 32 if meta.model.can_generate() else 0
    workload = Workload(batch=request.batch, seq=request.seq, new_tokens=new_tokens, dtype=meta.dtype)
    workload, inputs, seq_note = checked_workload(meta, workload, source.path)
    if request.hardware is not None:
        _check_speeds_for(hardware, hardware_name, workload.dtype)
    keys = [device.key for device in hardware.devices]
    check_devices_named(request, hardware)
    unit_names = meta.unit_names
    excluded = set(request.exclude)
    refused = _refused_placements(meta, hardware)
    for unit, place in request.pins.items():
        if not units_under(unit, unit_names):
            inside = next((name for name in unit_names if unit.startswith(f"{name}.")), None)
            if inside is not None:
                raise ConstraintError(f"pins: {unit!r} is inside unit {inside!r}, which a map places whole")
            raise ConstraintError(f"pins: the model has no unit or module {unit!r}{_hint(unit, unit_names)}")
        if place in refused and meta.quantization is not None:
            # a pinned unit is never the whole model: the map has other entries beside it
            raise ConstraintError(f"pins[{unit!r}]: {meta.quantization.refusal([place, 'disk'])}")
    candidate_maps = tuple(
        _candidate_map(f"candidates[{index}]", mapping, meta, keys, excluded)
        for index, mapping in enumerate(request.candidates)
    )
    key_payload: dict[str, object] = {
        "pricing": PRICING_VERSION,
        "model": meta.fingerprint(),
        "hardware": hardware.fingerprint,
        "workload": [workload.batch, workload.seq, workload.new_tokens, workload.dtype],
        "max_memory": dict(request.max_memory),
        "pins": sorted(f"{unit}={place}" for unit, place in request.pins.items()),
        "exclude": sorted(excluded),
    }
    if candidate_maps:
        key_payload["candidates"] = sorted(_encoded(dmap) for dmap in candidate_maps)
    if request.calibrate:
        key_payload["calibrate"] = True
    return Prepared(
        request=request,
        source=source,
        meta=meta,
        workload=workload,
        hardware=hardware,
        hardware_name=hardware_name,
        candidate_maps=candidate_maps,
        key=stable_hash(key_payload),
        model_pins=model_pins(meta, workload, hardware, request.exclude),
        seq_note=seq_note,
        inputs=inputs,
    )


class CheckedWorkload(NamedTuple):
    """A workload the model runs (`checked_workload`): `inputs` is what the model takes as a prompt
    (`INPUT_KINDS`), `note` why the seq is not the one asked for ("" when it is)."""

    workload: Workload
    inputs: str
    note: str


def checked_workload(meta: MetaModel, workload: Workload, folder: Path | None) -> CheckedWorkload:
    """`workload` once the model is known to run it (`check_workload`), and a note for people.

    A model that takes no text (a vision or speech model) has no prompt of `seq` tokens: its
    workload keeps the default seq, so that asking with another finds the same profile and run,
    and the note says that the seq asked for does not apply ("" when nothing was changed).

    Raises:
        WorkloadError: the model cannot run the workload.
    """
    from profiler.inputs import check_workload

    inputs = check_workload(meta.runnable, workload, folder)
    if inputs.kind == "text" or workload.seq == DEFAULT_SEQ:
        return CheckedWorkload(workload, inputs.kind, "")
    note = (
        f"seq {workload.seq} does not apply to {type(meta.runnable).__name__}, which takes "
        f"{inputs.takes}, not text: it is kept under seq {DEFAULT_SEQ}, as every workload of it"
    )
    return CheckedWorkload(replace(workload, seq=DEFAULT_SEQ), inputs.kind, note)


#: The seq a workload has when none is given, and the one of a model that takes no text.
DEFAULT_SEQ = Workload().seq


def check_device_map(
    parameter: str, mapping: Mapping[str, str], meta: MetaModel, hardware: HardwareProfile
) -> DeviceMap:
    """A caller's map (module prefixes allowed, ``""`` for the whole model) as one placement per
    unit, after checking it names only modules of the model, splits no unit, covers every unit,
    and uses only devices the hardware has.

    Raises:
        ConstraintError: naming `parameter` and what is wrong.
    """
    keys = [device.key for device in hardware.devices]
    return _candidate_map(parameter, mapping, meta, keys, set())


#: The most accelerators `prepare` plans for. A device map places one process's model on one
#: machine (the largest hold 16 GPUs); the planners' work and the run's tables grow with the
#: GPUs (a 1000-GPU spec: a million links, a thousand single-GPU baselines and search params).
MAX_ACCELERATORS = 64


def _check_plannable(hardware: HardwareProfile, name: str) -> None:
    count = sum(device.kind in ("cuda", "mps") for device in hardware.devices)
    if count > MAX_ACCELERATORS:
        raise ConstraintError(
            f"hardware {name}: {count} GPUs, and the tuner plans for at most {MAX_ACCELERATORS}: a device "
            "map places one process's model on one machine's GPUs (show it: tuner hardware --spec)"
        )


def _check_speeds_for(hardware: HardwareProfile, name: str, dtype: str) -> None:
    """Refuse a spec whose device gives speeds but none for the dtype planned: its compute time
    cannot be estimated. Before anything is profiled, naming the file."""
    from profiler.roofline import peak_flops

    for device in hardware.compute_devices:
        if device.peak_flops or device.memory_bandwidth:
            try:
                peak_flops(device, dtype)
            except ValueError:
                known = ", ".join(sorted(k for k, v in device.peak_flops.items() if v > 0)) or "none"
                raise SpecError(
                    f"spec {name}: device {device.key!r} ({device.name}) gives no peak_flops for {dtype}, "
                    f"the dtype planned (it gives: {known}); add it, or plan another --dtype"
                ) from None


def _described_hardware(spec: str | None) -> tuple[HardwareProfile, str]:
    if spec is not None:
        from profiler.spec import load_spec

        return load_spec(spec), spec
    from profiler.hardware import describe_hardware

    return describe_hardware(), THIS_MACHINE


def check_spec_name(hardware: str) -> None:
    """Refuse a `hardware` that names a spec the way a shipped one is named (no path, no
    ``.json``: `is_bare_name`) but is none of them, nor a file here: a misspelling, refused now
    rather than by a worker later, or looked up in vain. A spec file's path passes: its file may
    be another machine's.

    Raises:
        SpecError: naming the shipped specs.
    """
    from profiler.spec import is_bare_name
    from profiler.spec import shipped_specs

    shipped = shipped_specs()
    if not isinstance(hardware, str) or not is_bare_name(hardware) or hardware in shipped:
        return  # not text: the request's own checks say what is wrong
    if os.path.exists(hardware):
        return
    raise SpecError(
        f"hardware {hardware!r}: no shipped spec has this name ({', '.join(sorted(shipped))}); "
        "name a spec file the workers can read by its path"
    )


def check_devices_named(request: TuningRequest, hardware: HardwareProfile) -> None:
    """Refuse limits, exclusions and pins that name a device `hardware` does not have, before
    the model is read (a queued request: before a worker takes it).

    Raises:
        ConstraintError: naming the parameter, the device and the devices there are.
    """
    keys = [device.key for device in hardware.devices]
    # a map file exported with the limits of a spec's GPUs, priced here without the spec
    elsewhere = (
        ""
        if request.hardware is not None
        else "; for devices this machine lacks, name a spec (--hardware, or hardware= in Python)"
    )
    _check_devices("max_memory", request.max_memory, keys, elsewhere)
    _check_devices("exclude", request.exclude, keys, elsewhere)
    if all(device.key in request.exclude for device in hardware.compute_devices):
        raise ConstraintError(
            f"exclude leaves no device that computes ({', '.join(request.exclude)} excluded); "
            "the model's layers must run somewhere"
        )
    for device in hardware.devices:
        limit = request.max_memory.get(device.key)
        if limit is not None and limit > device.total_memory:
            # A map planned under it would not fit the device: accelerate does not check either.
            has = "has free" if device.kind == "disk" else "has"
            raise ConstraintError(
                f"max_memory[{device.key!r}] is {format_bytes(limit)}, more than device {device.key} "
                f"{has} ({format_bytes(device.total_memory)}); leave it out to plan with what is free"
            )
    for unit, place in request.pins.items():
        _check_place(f"pins[{unit!r}]", place, keys, set(request.exclude))


def _check_devices(parameter: str, named: Iterable[str], keys: list[str], hint: str) -> None:
    for key in named:
        if key not in keys:
            raise ConstraintError(
                f"{parameter} names device {key}, which this hardware does not have ({', '.join(keys)}){hint}"
            )


def _check_place(where: str, place: str, keys: list[str], excluded: set[str]) -> None:
    if place not in keys:
        raise ConstraintError(f"{where}: no device {place} on this hardware ({', '.join(keys)})")
    if place in excluded:
        raise ConstraintError(f"{where}: device {place} is excluded")


def _candidate_map(
    where: str, mapping: Mapping[str, str], meta: MetaModel, keys: list[str], excluded: set[str]
) -> DeviceMap:
    known = meta.module_names
    units = meta.unit_names
    for name, place in mapping.items():
        if name not in known:
            raise ConstraintError(f"{where}: {name!r} is no module of the model{_hint(name, sorted(known))}")
        inside = next((unit for unit in units if name.startswith(f"{unit}.")), None)
        if inside is not None:
            raise ConstraintError(
                f"{where}: {name!r} is inside unit {inside!r}, which a device map places whole"
            )
        _check_place(f"{where}[{name!r}]", place, keys, excluded)
    _check_loadable_nesting(where, mapping)
    try:
        dmap = DeviceMap.from_hf(dict(mapping), units, meta.tensorless_units)
    except ValueError as exc:
        raise ConstraintError(f"{where}: {exc}") from None
    _check_tied_together(where, dmap, meta)
    return dmap


def _check_tied_together(where: str, dmap: DeviceMap, meta: MetaModel) -> None:
    """Refuse a map that places units sharing a weight (GPT-2's ``lm_head`` and
    ``transformer.wte``) apart: the weight is one tensor, in one place, and ``from_pretrained``
    fails on such a map ("weight is on the meta device") however well it prices."""
    from profiler.model import tied_unit_groups

    for group in tied_unit_groups(meta.model, set(meta.unit_names)):
        places = {unit: dmap.placement(unit) for unit in group}
        if len(set(places.values())) > 1:
            apart = ", ".join(f"{unit!r} on {place}" for unit, place in places.items())
            raise ConstraintError(
                f"{where}: {apart} share a weight (tied), which lives in one place: put them on one device"
            )


def _check_loadable_nesting(where: str, mapping: Mapping[str, str]) -> None:
    """Refuse a module placed inside another (``""`` holds them all) on another device where
    either is offloaded (disk; the cpu too when a GPU is the main device, as accelerate counts
    them): accelerate's hook on the outer module moves all it holds to where that module runs,
    the inner one's weights included, so ``from_pretrained`` fails ("weight is on the meta
    device"), or holds the offloaded weights on a GPU while loading, however well the map prices."""
    main = main_device(mapping.values())

    def offloaded(place: str) -> bool:
        return place == "disk" or (place == "cpu" and is_gpu(main))

    for outer, outer_place in mapping.items():
        for name, place in mapping.items():
            inside = name != outer and (outer == "" or name.startswith(f"{outer}."))
            if inside and place != outer_place and (offloaded(place) or offloaded(outer_place)):
                holder = "the whole model ('')" if outer == "" else repr(outer)
                raise ConstraintError(
                    f"{where}: {name!r} on {place} inside {holder} on {outer_place}: from_pretrained "
                    "does not load such a map as written (accelerate's hook on the outer module moves "
                    f"all it holds, offloaded weights included); name the modules beside {name!r} instead"
                )


def units_under(name: str, units: Sequence[str]) -> list[str]:
    """The units module `name` holds: itself when it is a unit, else every unit inside it."""
    return [unit for unit in units if unit == name or unit.startswith(f"{name}.")]


def _hint(name: str, choices: Iterable[str]) -> str:
    options = [option for option in choices if option]
    close = difflib.get_close_matches(name, options, n=3)
    if close:
        return f"; did you mean {', '.join(close)}?"
    top = sorted({option.partition(".")[0] for option in options})
    return f"; its top-level modules: {', '.join(top[:8])}{', ...' if len(top) > 8 else ''}"


def _encoded(dmap: DeviceMap) -> str:
    return ",".join(f"{unit}={place}" for unit, place in dmap.placements)


def profile_digest(profile: ModelProfile) -> str:
    """The identity of a profile: a digest of all it holds (graph, workload, every measurement),
    so a profile measured again is another profile even when the machine and model are the same."""
    from tuner.core.codec import to_dict

    return stable_hash(to_dict(profile))


def priced_from(prepared: Prepared, store: Store) -> Prepared:
    """`prepared` with its key naming the profile a run of it is priced from.

    On this machine that is the stored profile of the model for the workload: the key becomes
    ``<request key>.<profile digest>``, so a run records the profile it was priced from without
    a column of its own, and a newer profile is another key. With no profile stored yet the key
    is left bare (a run is only ever stored after its profile); call this again once profiled. A
    plan for a spec's machine is priced from estimates that the model and the spec's figures
    determine: its key names the whole spec (``<request key>.<spec digest>``), since the
    hardware's fingerprint names devices and sizes, not speeds, and an edited spec is another plan.
    """
    base = prepared.key.partition(".")[0]
    if prepared.hardware.source == "spec":
        from tuner.core.codec import to_dict

        return replace(prepared, key=f"{base}.{stable_hash(to_dict(prepared.hardware))}")
    model, hardware = prepared.meta.fingerprint(), prepared.hardware.fingerprint
    profile = store.find_profile(model, hardware, prepared.workload)
    return replace(prepared, key=base if profile is None else f"{base}.{profile_digest(profile)}")


def priced_from_stored_profile(run: Run, store: Store) -> bool:
    """Whether `run` was priced from the profile stored now for its model, machine and workload
    (always, for a plan for a spec's machine, whose key names the spec it was priced from)."""
    digest = run.key.partition(".")[2]
    if run.hardware_name != THIS_MACHINE:
        return True
    profile = store.find_profile(run.model_fingerprint, run.hardware_fingerprint, run.workload)
    return profile is not None and bool(digest) and digest == profile_digest(profile)

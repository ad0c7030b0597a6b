"""Plain-dict form of the domain objects, for JSON files and database columns.

`to_dict` turns any value object of `tuner.core.domain` into dicts, lists, strings and numbers that
`json.dumps` accepts; the `*_from_dict` functions rebuild equal objects, reading each field as its
annotation says. Reading is strict: a missing field, a field of the wrong type or an unknown field
raises `ValueError` naming the field by its path (``ModelGraph.units[3].param_bytes``), so a
hand-written spec file fails clearly. A field the domain adds with a default reads older documents
(and database rows) unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from typing import Any
from typing import TypeVar

from tuner.core.domain import Candidate
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import PhaseCost
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload

__all__ = [
    "candidate_from_dict",
    "device_map_from_dict",
    "graph_from_dict",
    "hardware_from_dict",
    "model_profile_from_dict",
    "prediction_from_dict",
    "run_from_dict",
    "to_dict",
    "unit_profile_from_dict",
    "workload_from_dict",
]

DomainObject = (
    ModelGraph
    | Unit
    | Edge
    | UnitProfile
    | ModelProfile
    | Device
    | Link
    | HardwareProfile
    | Workload
    | DeviceMap
    | PhaseCost
    | DeviceMemory
    | Prediction
    | Candidate
    | Run
)

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
#: Reads one field's JSON value; the path names the field in error messages.
Reader = Callable[[object, str], T]

_FIELD_READERS: dict[type, dict[str, Reader[Any]]] = {}


def to_dict(obj: DomainObject) -> dict[str, Any]:
    """Every field of a domain dataclass as plain data: enums by value, tuples as lists."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict takes a domain object, not {type(obj).__name__}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)  # type: ignore[arg-type]
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def workload_from_dict(data: object) -> Workload:
    """Rebuild a `Workload` from `to_dict` output."""
    return _build(Workload, data, "Workload")


def graph_from_dict(data: object) -> ModelGraph:
    """Rebuild a `ModelGraph` (units and edges included) from `to_dict` output."""
    return _build(ModelGraph, data, "ModelGraph")


def unit_profile_from_dict(data: object) -> UnitProfile:
    """Rebuild a `UnitProfile` from `to_dict` output."""
    return _build(UnitProfile, data, "UnitProfile")


def model_profile_from_dict(data: object) -> ModelProfile:
    """Rebuild a `ModelProfile` (graph, workload and unit profiles) from `to_dict` output."""
    return _build(ModelProfile, data, "ModelProfile")


def hardware_from_dict(data: object) -> HardwareProfile:
    """Rebuild a `HardwareProfile` (devices and links) from `to_dict` output."""
    return _build(HardwareProfile, data, "HardwareProfile")


def device_map_from_dict(data: object) -> DeviceMap:
    """Rebuild a `DeviceMap` (placements in order) from `to_dict` output."""
    return _build(DeviceMap, data, "DeviceMap")


def prediction_from_dict(data: object) -> Prediction:
    """Rebuild a `Prediction` (phase costs and memory per device) from `to_dict` output."""
    return _build(Prediction, data, "Prediction")


def candidate_from_dict(data: object) -> Candidate:
    """Rebuild a `Candidate` (map and prediction, if any) from `to_dict` output."""
    return _build(Candidate, data, "Candidate")


def run_from_dict(data: object) -> Run:
    """Rebuild a `Run` (workload, winner and baselines included) from `to_dict` output."""
    return _build(Run, data, "Run")


def _build(cls: type[T], data: object, path: str) -> T:
    """Read each field of dataclass `cls`; absent fields with a default keep it."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    readers = _field_readers(cls)
    unknown = sorted(set(data) - set(readers), key=str)
    if unknown:
        raise ValueError(f"{path}: unknown field {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = readers[f.name](data[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{path}: missing field {f.name!r}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        # The domain's own invariant messages do not say where in a nested document they failed.
        raise ValueError(f"{path}: {e}") from e


def _field_readers(cls: type) -> dict[str, Reader[Any]]:
    # Readers follow the annotations, so a field added to the domain is read without a change here.
    if cls not in _FIELD_READERS:
        hints = typing.get_type_hints(cls)
        _FIELD_READERS[cls] = {f.name: _reader(hints[f.name]) for f in dataclasses.fields(cls)}
    return _FIELD_READERS[cls]


@functools.cache
def _reader(annotation: Any) -> Reader[Any]:
    simple: dict[Any, Reader[Any]] = {str: _str, bool: _bool, int: _int, float: _float}
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return functools.partial(_enum, annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return functools.partial(_build, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (present,) = (arg for arg in args if arg is not type(None))
        return functools.partial(_optional, _reader(present))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return functools.partial(_tuple_of, _reader(args[0]))
    if origin is tuple and args and Ellipsis not in args:
        return functools.partial(_fixed_tuple, tuple(_reader(arg) for arg in args))
    if origin is dict and args[0] is str:
        return functools.partial(_dict_of, _reader(args[1]))
    raise TypeError(f"the codec cannot read fields of type {annotation!r}")


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {value!r}")
    return value


def _int(value: object, path: str) -> int:
    # bool is an int subclass, and `true` for a byte count is a mistake, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    return value


def _float(value: object, path: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{path}: expected true or false, got {value!r}")
    return value


def _enum(cls: type[E], value: object, path: str) -> E:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in cls)
        raise ValueError(f"{path}: expected one of {choices}, got {value!r}") from None


def _tuple_of(read: Reader[T], value: object, path: str) -> tuple[T, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{path}: expected a list, got {value!r}")
    return tuple(read(item, f"{path}[{index}]") for index, item in enumerate(value))


def _optional(read: Reader[T], value: object, path: str) -> T | None:
    return None if value is None else read(value, path)


def _fixed_tuple(reads: tuple[Reader[Any], ...], value: object, path: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != len(reads):
        raise ValueError(f"{path}: expected a list of {len(reads)} items, got {value!r}")
    items = enumerate(zip(reads, value, strict=True))
    return tuple(read(item, f"{path}[{index}]") for index, (read, item) in items)


def _dict_of(read: Reader[T], value: object, path: str) -> dict[str, T]:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected an object, got {value!r}")
    return {_str(key, f"{path} key"): read(item, f"{path}.{key}") for key, item in value.items()}

"""Map files as `tuner export` writes them, read back for `from_pretrained` and for the tuner.

A file holds a bare map (``{module: device}``) or, from ``export --with-max-memory``,
``{"device_map": {...}, "max_memory": {...}, "dtype": "bfloat16"}``. JSON keys are text, so a
file's GPU limits read ``"0"``, which accelerate's ``max_memory`` refuses ("Device 0 is not
recognized"): `read_map` gives them back as ints, as ``from_pretrained`` takes them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from typing import NotRequired
from typing import TypedDict

from tuner.core.devices import to_hf
from tuner.core.domain import DTYPE_BYTES
from tuner.core.exceptions import ConstraintError
from tuner.workflows.request import read_max_memory
from tuner.workflows.request import read_placements

__all__ = ["MapArguments", "read_map"]


class MapArguments(TypedDict):
    """A map file as keyword arguments of ``from_pretrained``: the map, and when the file has them
    the limits the run was planned against in bytes (GPUs as ints in both) and the dtype it was
    planned in."""

    device_map: dict[str, int | str]
    max_memory: NotRequired[dict[int | str, int]]
    dtype: NotRequired[str]


def read_map(path: str | os.PathLike[str]) -> MapArguments:
    """The map file at `path` as ``from_pretrained``'s keyword arguments::

        model = AutoModelForCausalLM.from_pretrained(folder, **tuner.read_map("map.json"))

    Args:
        path: a file of ``tuner export``, with ``--with-max-memory`` or not, or one written by
            hand in the same form (devices as ``0``, ``"cuda:0"``, ``"cpu"``; sizes as bytes or
            ``"20GiB"``).

    Returns:
        ``{"device_map": ...}``, ``"max_memory"`` in bytes when the file has limits, and
        ``"dtype"`` when it names one.

    Raises:
        ConstraintError: the file cannot be read, is not JSON (or repeats a key), or holds no map
            as `tuner export` writes one (a device that is none, a limit given twice for one
            device, a size that is none, a dtype that is none, an empty map); in one line naming
            the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConstraintError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except (ValueError, RecursionError) as exc:
        raise ConstraintError(f"{path} is not valid JSON: {exc}") from None
    limits = dtype = None
    if isinstance(document, dict) and isinstance(document.get("device_map"), dict):
        limits = document.get("max_memory")
        dtype = document.get("dtype")
        if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPE_BYTES):
            raise ConstraintError(f"{path}: dtype must be one of {', '.join(DTYPE_BYTES)} (got {dtype!r})")
        if limits is not None and not _of_numbers_or_texts(limits):
            raise ConstraintError(
                f"{path}: max_memory must be an object of device -> bytes, as tuner export writes it"
            )
        document = document["device_map"]
    if not _of_numbers_or_texts(document):
        raise ConstraintError(
            f"{path} is not a device map: write a JSON object of module name -> device "
            '(0, 1, ..., "cpu", "disk"), as tuner export does'
        )
    # a device that is none is named by the file it is in; "0" and "CPU" as accelerate takes them
    placements = read_placements(str(path), document)
    if not placements:
        raise ConstraintError(
            f'{path} holds an empty device map: place the whole model at least ({{"": "cpu"}})'
        )
    arguments = MapArguments(device_map={name: to_hf(key) for name, key in placements.items()})
    if limits is not None:
        try:
            read = read_max_memory(limits)  # a device twice ("0" and "cuda:0"), a size that is none
        except ConstraintError as exc:
            raise ConstraintError(f"{path}: {exc}") from None
        arguments["max_memory"] = {to_hf(key): size for key, size in read.items()}
    if dtype is not None:
        arguments["dtype"] = dtype
    return arguments


def _of_numbers_or_texts(document: Any) -> bool:
    """Whether `document` is a JSON object whose values are whole numbers or texts (a device, a
    size), as a map file's map and limits are."""
    return isinstance(document, dict) and all(
        isinstance(value, (int, str)) and not isinstance(value, bool) for value in document.values()
    )


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, item in pairs:
        if key in document:
            raise ValueError(f"the key {key!r} appears twice")
        document[key] = item
    return document

"""Every rule about device keys, written once.

A *key* is how the tuner spells a placement: ``"0"``, ``"1"``... for GPUs, ``"mps"``, ``"cpu"`` and
``"disk"``. `from_pretrained(device_map=...)` and `max_memory` spell GPUs as integers (``0``) or
``"cuda:0"``; `to_key` reads any of these and `to_hf` writes what transformers takes.

Pure functions, no torch.

Example:
    >>> to_key(0), to_key("cuda:1"), to_key("cpu")
    ('0', '1', 'cpu')
    >>> to_hf("0"), to_hf("disk")
    (0, 'disk')
    >>> sorted(["disk", "1", "cpu", "0"], key=device_order)
    ['0', '1', 'cpu', 'disk']
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "NON_GPU_KEYS",
    "OFFLOAD",
    "device_label",
    "device_order",
    "gpu_index",
    "is_gpu",
    "is_offload",
    "is_placement",
    "main_device",
    "to_hf",
    "to_key",
]

#: Placements that hold weights off any accelerator; at run time such a unit computes on the main
#: device and its weights are copied in on every forward.
OFFLOAD = ("cpu", "disk")

#: The placements that are not GPU indices, in the order tables list them.
NON_GPU_KEYS = ("mps", "cpu", "disk")

_HELP = "use 0, 1, ..., mps, cpu, disk"


def is_gpu(key: str) -> bool:
    """A GPU index such as ``"0"`` (not ``"cuda:0"``: read that with `to_key` first)."""
    return key.isdigit()


def gpu_index(key: str) -> int:
    """The integer index of a GPU key.

    Raises:
        ValueError: the key is not a GPU.
    """
    if not is_gpu(key):
        raise ValueError(f"{key!r} is not a GPU")
    return int(key)


def is_placement(key: str) -> bool:
    """Whether a device map may put a unit there."""
    return is_gpu(key) or key in NON_GPU_KEYS


def is_offload(key: str) -> bool:
    """Whether a unit placed there streams its weights in on every call."""
    return key in OFFLOAD


def to_key(value: int | str) -> str:
    """The key of a placement as users and transformers write it: ``0``, ``"0"``, ``"cuda:0"``,
    ``"CPU"``, ``" disk "``, ``torch.device("cuda:1")``.

    Raises:
        ValueError: it names no device a map can use.
    """
    if isinstance(value, bool):  # True is an int, and never a GPU anyone meant
        raise ValueError(f"{value!r} is not a device ({_HELP})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a device ({_HELP})")
        return str(value)
    if type(value).__module__ == "torch" and type(value).__name__ == "device":  # torch.device("cuda:0")
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a device ({_HELP})")
    text = value.strip().lower().removeprefix("cuda:")
    if is_gpu(text):
        return str(int(text))
    if text not in NON_GPU_KEYS:
        raise ValueError(f"{value!r} is not a device ({_HELP})")
    return text


def to_hf(key: str) -> int | str:
    """The placement as `from_pretrained(device_map=...)` and `max_memory` take it: GPUs as ints."""
    return int(key) if is_gpu(key) else key


def device_order(key: str) -> tuple[int, int, str]:
    """Sort key: GPUs by index, then mps, cpu, disk, then anything else by name. Among
    accelerators this is also the order accelerate picks the main device in."""
    if is_gpu(key):
        return (0, int(key), "")
    if key in NON_GPU_KEYS:
        return (1 + NON_GPU_KEYS.index(key), 0, "")
    return (1 + len(NON_GPU_KEYS), 0, key)


def main_device(keys: Iterable[str]) -> str:
    """Where accelerate runs offloaded units and feeds the inputs: the lowest GPU among `keys`,
    else mps, else the cpu."""
    present = set(keys)
    gpus = sorted(int(key) for key in present if is_gpu(key))
    if gpus:
        return str(gpus[0])
    return "mps" if "mps" in present else "cpu"


def device_label(key: str) -> str:
    """How tables name a device: ``GPU 0``, ``cpu``."""
    return f"GPU {key}" if is_gpu(key) else key

"""The ``disk`` device (the offload folder) and how fast accelerate streams weights from it.

``disk -> cpu`` is measured as accelerate streams a ``disk`` unit: reads of a safetensors file
through ``dispatch_model`` and an offload index, uncached (the file's pages dropped from the page
cache with `drop_from_page_cache`) for the ``disk -> cpu`` link, and from the page cache for the
profile's `page_cache` link. Each is an alpha-beta link (`profiler.hardware.links`) whose alpha is
paid per weight tensor.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from profiler.hardware._dispatch import dispatch_quietly
from profiler.hardware._lazy import LazyModule
from tuner.core.domain import Device
from tuner.core.domain import Link
from tuner.core.exceptions import ProfilingError

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = ["disk_device", "drop_from_page_cache", "measure_disk_links", "safetensors_entry_seconds"]


def disk_device(folder: Path) -> Device:
    """The ``disk`` device: the folder (created if missing) and its file system's size and free space."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(folder)
    except OSError as error:
        raise ProfilingError(f"cannot use {folder} as the disk device: {error}") from error
    return Device(
        key="disk",
        kind="disk",
        name=str(folder.resolve()),
        total_memory=usage.total,
        free_memory=usage.free,
    )


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages so the next read comes from the device.

    The file was fsynced, so its pages are clean and DONTNEED really drops them. Where
    posix_fadvise does not exist (macOS, Windows) reads come from the page cache and the link
    measures memory speed; there is no unprivileged portable alternative.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # some file systems (FUSE, tmpfs) refuse the hint; the figure is then an upper bound
    finally:
        os.close(fd)


#: The stacks `measure_disk_links` streams, as (layers, side of each float32 square weight).
#: Many small weights (16 KiB): the per-tensor cost dominates. Weights of 4 MiB, the size of a
#: hidden-1024 projection: the per-byte cost. Mapping cached pages costs less per byte for larger
#: tensors (about 12 GB/s at 4 MiB, 20 at 32 MiB, 36 at 128 MiB on a 2-core EPYC), so models
#: with larger weights stream somewhat faster than this link says.
_SMALL_STACK = (48, 64)
_LARGE_STACK = (17, 1024)
#: Forwards of each stack per figure at least: one lasts a few milliseconds, so a scheduler tick
#: or a neighbour's burst weighs on it, and the best of several is what runs agree on (with 7,
#: repeated runs on a quiet machine spread 13% in alpha, a difference of two bests).
_MIN_READ_SAMPLES = 12

#: Tensors in the two files `safetensors_entry_seconds` opens.
_FEW_ENTRIES, _MANY_ENTRIES = 16, 4096
#: Reads per timed sample of `safetensors_entry_seconds`, and samples at least: the disk links
#: subtract this figure times thousands of listed tensors, so its noise reaches their alpha.
_READS = 20
_MIN_ENTRY_SAMPLES = 7


def safetensors_entry_seconds(folder: Path, repeats: int) -> float:
    """Seconds that opening a safetensors file costs per tensor its header lists.

    accelerate's weights loader opens the checkpoint file anew for every tensor of a ``disk``
    unit it reads (``safe_open`` then ``get_tensor``), and ``safe_open`` parses the whole header:
    a checkpoint of thousands of small tensors costs milliseconds per weight read. The figure
    is the slope between reading one tensor from a file of `_FEW_ENTRIES` tiny tensors and from
    one of `_MANY_ENTRIES` (both in the page cache: the parse is the host's work).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    seconds: dict[int, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-header-", dir=folder) as scratch:
            for count in (_FEW_ENTRIES, _MANY_ENTRIES):
                path = str(Path(scratch) / f"{count}.safetensors")
                save_file({f"t.{i}": torch.zeros(4) for i in range(count)}, path)

                def read(path: str = path) -> None:
                    with safe_open(path, framework="pt", device="cpu") as handle:
                        handle.get_tensor("t.0")

                read()
                samples = []
                for _ in range(max(repeats, _MIN_ENTRY_SAMPLES)):
                    begin = time.perf_counter()
                    for _ in range(_READS):
                        read()
                    samples.append((time.perf_counter() - begin) / _READS)
                seconds[count] = min(samples)  # a neighbour's burst only ever slows a sample
    except OSError as error:
        raise ProfilingError(f"cannot measure reads from {folder}: {error}") from error
    return max(0.0, (seconds[_MANY_ENTRIES] - seconds[_FEW_ENTRIES]) / (_MANY_ENTRIES - _FEW_ENTRIES))


def measure_disk_links(
    folder: Path,
    largest: int,
    repeats: int,
    memory_bandwidth: float,
    step: Callable[[str], None],
    hook_call_s: float = 0.0,
    entry_s: float = 0.0,
) -> tuple[Link, Link]:
    """``disk -> cpu`` as accelerate streams a ``disk`` unit, from the device and from the page
    cache: (device link, page cache link), each ``alpha`` per weight tensor + bytes / ``beta``.

    Two stacks of bias-free linear layers (`_SMALL_STACK`, `_LARGE_STACK`) are saved as
    safetensors checkpoints and dispatched with accelerate's ``dispatch_model`` and an offload
    index into the file, which is how ``from_pretrained`` offloads a safetensors checkpoint:
    before each layer runs, its hook reads the weight (``safe_open`` + ``get_tensor``, a memory
    map of the file), then puts it back on meta. A sample is one forward of a stack with its
    layers on ``disk``; the best such forward less the best forward with the weights resident
    leaves the streaming, compute cancelling. For the device link the file's pages are dropped from the
    cache before each forward; for the page cache link they were read once before. The
    many-small stack gives the cost per tensor, the stack of 4 MiB weights (`largest` bytes at
    most in all) the cost per byte. The resident weights are a memory map of a copy of the file,
    as ``from_pretrained`` keeps them, so that only the streaming differs. The streamed stack's
    hooks (one call per layer and one for the model, the resident stack has none) are taken out
    at `hook_call_s` each, and the parse of the file's header on every read at `entry_s` per
    tensor it lists: the cost model prices both on their own.
    """
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    step(f"link disk -> cpu ({folder})")
    count, side = _SMALL_STACK
    large_count, large_side = _LARGE_STACK
    # the streamed layers (all but the first) hold at most `largest` bytes in all
    large_side = max(side * 2, min(large_side, math.isqrt(largest // (large_count - 1) // 4)))
    stacks = {"small": [side] * count, "large": [large_side] * large_count}
    extra: dict[tuple[str, bool], float] = {}
    shape: dict[str, tuple[int, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="tuner-disk-", dir=folder) as scratch:
            for name, sides in stacks.items():
                # Random values, so a compressing file system (btrfs, ZFS) cannot shrink the reads.
                resident = torch.nn.Sequential(*(torch.nn.Linear(n, n, bias=False) for n in sides)).eval()
                path = Path(scratch) / f"{name}.safetensors"
                weights = {key: tensor.contiguous() for key, tensor in resident.state_dict().items()}
                save_file(weights, str(path))
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())  # on the device, and its cached pages clean
                # the first layer stays on the cpu and streams nothing
                shape[name] = (len(sides) - 1, sum(n * n * 4 for n in sides[1:]))
                # from_pretrained keeps resident cpu weights as a memory map of the checkpoint too;
                # of a copy, since pages a process maps cannot be dropped from the cache
                copy = path.with_suffix(".resident.safetensors")
                shutil.copyfile(path, copy)
                resident.load_state_dict(load_file(str(copy)), assign=True)
                streamed = _dispatched_from(path, sides)
                x = torch.randn(1, sides[0])
                with torch.no_grad():
                    resident(x)
                    # Cold first: the warm samples then map pages the cache got by reading the
                    # file, as a checkpoint on disk comes in; pages left by writing the file
                    # (larger folios) map several times faster and would flatter the link.
                    for cold in (True, False):
                        streamed(x)  # warm up: hooks, allocator, and the file's pages when warm
                        offloaded, kept = [], []
                        for _ in range(max(repeats, _MIN_READ_SAMPLES)):
                            if cold:
                                drop_from_page_cache(path)
                            begin = time.perf_counter()
                            streamed(x)
                            offloaded.append(time.perf_counter() - begin)
                            begin = time.perf_counter()
                            resident(x)
                            kept.append(time.perf_counter() - begin)
                        # the best of each, not the best difference: a disturbed resident forward
                        # would make one difference look fast
                        # the streamed stack's hooked calls and header parses, priced on their own
                        fixed = (len(sides) + 1) * hook_call_s + (len(sides) - 1) * len(sides) * entry_s
                        extra[name, cold] = max(0.0, min(offloaded) - min(kept) - fixed)
                del streamed, resident
    except OSError as error:
        raise ProfilingError(f"cannot measure reads from {folder}: {error}") from error
    return (
        _solve_read(shape, {name: extra[name, True] for name in stacks}, memory_bandwidth),
        _solve_read(shape, {name: extra[name, False] for name in stacks}, memory_bandwidth),
    )


def _dispatched_from(path: Path, sides: list[int]) -> torch.nn.Module:
    """A stack of linear layers whose weights stream from `path` as accelerate streams ``disk``
    units; the first layer lives on the cpu, since accelerate needs one unit that is not on disk."""
    from safetensors import safe_open

    with torch.device("meta"):
        model = torch.nn.Sequential(*(torch.nn.Linear(n, n, bias=False) for n in sides)).eval()
    with safe_open(str(path), framework="pt") as handle:
        model[0].weight = torch.nn.Parameter(handle.get_tensor("0.weight").clone(), requires_grad=False)
    device_map = {"0": "cpu", **{str(i): "disk" for i in range(1, len(sides))}}
    index = {
        f"{i}.weight": {"safetensors_file": str(path), "weight_name": f"{i}.weight", "dtype": "float32"}
        for i in range(1, len(sides))
    }
    return dispatch_quietly(model, device_map, main_device="cpu", offload_index=index)


def _solve_read(shape: dict[str, tuple[int, int]], extra: dict[str, float], memory_bandwidth: float) -> Link:
    """``alpha`` per tensor and ``beta`` from the extra seconds of the two stacks: two equations
    ``tensors * alpha + bytes / beta = extra``. Where noise makes the bytes look free or costlier
    than the small stack allows, bytes cost what copying memory costs and alpha takes the rest."""
    (t_small, b_small), (t_large, b_large) = shape["small"], shape["large"]
    determinant = t_small * b_large - t_large * b_small
    per_byte = (t_small * extra["large"] - t_large * extra["small"]) / determinant
    alpha = (extra["small"] - b_small * per_byte) / t_small
    if per_byte <= 0 or alpha < 0:
        per_byte = 1.0 / memory_bandwidth
        alpha = max(0.0, (extra["small"] - b_small * per_byte) / t_small)
    return Link(src="disk", dst="cpu", alpha_s=alpha, beta_bytes_per_s=1.0 / per_byte)

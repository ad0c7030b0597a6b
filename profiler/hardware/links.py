"""The links between this machine's devices: the alpha-beta model, its fit, and the GPU links.

Every link is modelled as Hockney's alpha-beta model, ``t(n) = alpha + n / beta``
(R. W. Hockney, "The communication challenge for MPP: Intel Paragon and Meiko CS-2",
Parallel Computing 20(3), 1994), which is what `tuner.core.domain.Link` stores. `fit_link` is the
pure part: (size, seconds) samples in, a latency and a bandwidth out. The measuring part times
single copies ``cpu -> i`` and ``i -> cpu`` through pinned host memory, the same from pageable
memory as accelerate makes them (`measure_pageable_link`), and ``i -> j`` for a pair of GPUs
(peer to peer where they allow it); the ``disk -> cpu`` link is in `profiler.hardware.disk`.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING

from profiler.hardware._lazy import LazyModule
from profiler.hardware.compute import MiB
from profiler.hardware.compute import cuda_seconds
from tuner.core.domain import Link
from tuner.core.exceptions import ProfilingError

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = [
    "COLD_POOL_BYTES",
    "DEFAULT_SIZES",
    "cold_offsets",
    "fit_link",
    "measure_host_link",
    "measure_pageable_link",
    "measure_peer_link",
    "time_pageable_copies",
]

#: Transfer sizes a link is measured at: from where latency still shows to where only bandwidth does.
DEFAULT_SIZES: tuple[int, ...] = (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)

#: Timed copies per size at least: copies last microseconds to milliseconds, so many are cheap.
_COPY_SAMPLES = 10
#: Host memory the pageable copies into a GPU read from, in turn: far more than a processor's
#: last-level cache, so each copy reads bytes from memory as a streamed weight is (last touched a
#: forward ago). From one reused 64 MiB buffer, a host whose cache holds it reads the cache: on an
#: H200's host the pageable link was priced 10-29% faster than the streamed layers ran
#: (benchmarks/results/gpu_truth_runs.md). On a 2-core EPYC with 32 MiB of L3 the two read alike
#: (0.93-1.12x, benchmarks/results/pageable_cache.md): its cache never held the buffer.
COLD_POOL_BYTES = 512 * MiB


def fit_link(sizes: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """Fit ``t = alpha + n / beta`` to transfer samples by least squares.

    The samples are first reduced to the median time per distinct size, so a size measured many
    times weighs as much as one measured once and a single outlier (a page fault, a context
    switch) does not pull the line. An ordinary least-squares line is then fitted to the medians.
    A negative intercept is not a physical latency: it is clamped to zero and the slope refitted
    through the origin, which is the least-squares optimum under the constraint ``alpha >= 0``.

    Complexity: O(m log m) for m samples (sorting for the medians).

    Args:
        sizes: bytes moved by each sample; at least two distinct values.
        seconds: the time each sample took, aligned with `sizes`.

    Returns:
        ``(alpha_s, beta_bytes_per_s)``: latency in seconds (``>= 0``) and bandwidth in bytes
        per second (``> 0``).

    Raises:
        ValueError: the sequences differ in length, a value is negative or not finite, fewer
            than two distinct sizes were given, or time does not grow with size.

    Example:
        >>> alpha, beta = fit_link([1_000, 2_000, 3_000], [0.002, 0.003, 0.004])
        >>> round(alpha, 9), round(beta)
        (0.001, 1000000)
    """
    if len(sizes) != len(seconds):
        raise ValueError(f"sizes and seconds differ in length ({len(sizes)} != {len(seconds)})")
    by_size: dict[float, list[float]] = {}
    for size, time_s in zip(sizes, seconds, strict=True):
        if not (math.isfinite(size) and size >= 0):
            raise ValueError(f"sizes must be finite and non-negative (got {size})")
        if not (math.isfinite(time_s) and time_s >= 0):
            raise ValueError(f"seconds must be finite and non-negative (got {time_s})")
        by_size.setdefault(float(size), []).append(float(time_s))
    if len(by_size) < 2:
        raise ValueError(f"fitting a link needs at least 2 distinct sizes (got {len(by_size)})")

    xs = sorted(by_size)
    ys = [statistics.median(by_size[x]) for x in xs]
    x_mean = statistics.fmean(xs)
    y_mean = statistics.fmean(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    if intercept < 0:
        # Constrained optimum with alpha = 0: the least-squares slope of a line through the origin.
        intercept = 0.0
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    if not slope > 0:
        raise ValueError(
            f"time does not grow with size (slope {slope:.3g} s/byte): cannot derive a bandwidth; "
            "measure larger sizes or more repeats"
        )
    return intercept, 1.0 / slope


def measure_host_link(
    index: int, *, to_device: bool, sizes: list[int], repeats: int, step: Callable[[str], None]
) -> Link:
    """``cpu -> index`` or ``index -> cpu`` through pinned host memory.

    Pinned memory is what a copy can reach at full bus speed and asynchronously; pageable memory
    goes through a staging buffer and is slower, so this is the link's best case.
    """
    src_key, dst_key = ("cpu", str(index)) if to_device else (str(index), "cpu")
    step(f"link {src_key} -> {dst_key} (pinned)")
    host = torch.empty(sizes[-1], dtype=torch.uint8, pin_memory=True)
    gpu = torch.empty(sizes[-1], dtype=torch.uint8, device=torch.device("cuda", index))
    src, dst = (host, gpu) if to_device else (gpu, host)
    xs, ys = _time_copies(src, dst, index, sizes, repeats)
    del host, gpu, src, dst
    torch.cuda.empty_cache()  # the pinned and device buffers go back, not into the next figures
    return _fit(src_key, dst_key, xs, ys)


def measure_pageable_link(
    index: int, *, to_device: bool, sizes: list[int], repeats: int, step: Callable[[str], None]
) -> Link:
    """``cpu -> index`` or ``index -> cpu`` from or to pageable host memory, one copy at a time
    as accelerate makes them: ``tensor.to(device)`` (synchronous: the driver stages pageable
    bytes through a pinned buffer), the copy's memory allocated afresh, and, into the GPU,
    ``clear_device_cache()`` after each copy as ``set_module_tensor_to_device`` calls it, so the
    next copy's memory is a new allocation too. What accelerate's hooks pay per tensor streamed."""
    from accelerate.utils.memory import clear_device_cache

    src_key, dst_key = ("cpu", str(index)) if to_device else (str(index), "cpu")
    step(f"link {src_key} -> {dst_key} (pageable, as accelerate copies)")
    gpu = torch.device("cuda", index)
    pool = max(sizes[-1], COLD_POOL_BYTES) if to_device else sizes[-1]
    source = torch.ones(pool, dtype=torch.uint8, device="cpu" if to_device else gpu)
    target = gpu if to_device else torch.device("cpu")

    def settle() -> None:
        if to_device:
            clear_device_cache()
        torch.cuda.synchronize(index)

    xs, ys = time_pageable_copies(source, target, sizes, repeats, settle)
    del source
    torch.cuda.empty_cache()
    return _fit(src_key, dst_key, xs, ys)


def time_pageable_copies(
    source: torch.Tensor,
    target: torch.device,
    sizes: list[int],
    repeats: int,
    settle: Callable[[], None],
) -> tuple[list[int], list[float]]:
    """Wall-clock seconds of copying `size` bytes of `source` into a new tensor on `target`,
    dropping it, then `settle` (which waits for the device and does what the caller's copies do
    after each one), one copy per sample. Each copy reads the bytes after the last one's
    (`cold_offsets`), so a `source` larger than the caches is read from memory every time.

    The wall clock, not device events: a copy from pageable memory holds the host until it is
    done, and what it costs a hook is the host's time.
    """

    def copy(size: int, start: int) -> float:
        started = time.perf_counter()
        moved = source[start : start + size].to(target, copy=True)
        # Freed before the settle, as a streamed weight is by the time of a later copy's
        # clear_device_cache: each copy then allocates afresh and frees once, as there.
        del moved
        settle()
        return time.perf_counter() - started

    # a warm-up copy first: the staging buffer and the allocator (the source is written)
    sizes_in_turn = [sizes[-1], *(size for _ in range(repeats) for size in sizes)]
    copies = list(zip(sizes_in_turn, cold_offsets(sizes_in_turn, source.numel()), strict=True))
    copy(*copies[0])
    timed = copies[1:]
    return [size for size, _ in timed], [copy(size, start) for size, start in timed]


def cold_offsets(sizes: Sequence[int], pool: int) -> list[int]:
    """Where each of the copies of `sizes` starts in a `pool` of bytes: right after the one
    before, back at the start when the next would run past the end. No byte is read twice until
    the pool has been read through.

    Example:
        >>> cold_offsets([3, 3, 3, 3, 2], pool=10)
        [0, 3, 6, 0, 3]
    """
    if any(size > pool for size in sizes):
        raise ValueError(f"a copy of {max(sizes)} bytes does not fit a pool of {pool}")
    offsets, cursor = [], 0
    for size in sizes:
        if cursor + size > pool:
            cursor = 0
        offsets.append(cursor)
        cursor += size
    return offsets


def measure_peer_link(
    src: int, dst: int, sizes: list[int], repeats: int, step: Callable[[str], None]
) -> Link:
    """``src -> dst`` between two GPUs.

    When the GPUs can reach each other, torch enables peer access on the first copy and the bytes
    go straight over NVLink or PCIe; otherwise the driver stages them through host memory, which
    is exactly the path a device map would pay for, so it is measured all the same.
    """
    peer = torch.cuda.can_device_access_peer(src, dst)
    step(f"link {src} -> {dst} ({'peer to peer' if peer else 'through host'})")
    source = torch.empty(sizes[-1], dtype=torch.uint8, device=torch.device("cuda", src))
    target = torch.empty(sizes[-1], dtype=torch.uint8, device=torch.device("cuda", dst))
    # torch runs a cross-device copy on the source device's current stream, so time it there.
    xs, ys = _time_copies(source, target, src, sizes, repeats)
    del source, target
    torch.cuda.empty_cache()
    return _fit(str(src), str(dst), xs, ys)


def _fit(src: str, dst: str, sizes: list[int], seconds: list[float]) -> Link:
    try:
        alpha, beta = fit_link(sizes, seconds)
    except ValueError as error:
        raise ProfilingError(f"link {src} -> {dst}: {error}") from error
    return Link(src=src, dst=dst, alpha_s=alpha, beta_bytes_per_s=beta)


def _time_copies(
    src: torch.Tensor, dst: torch.Tensor, timing_device: int, sizes: list[int], repeats: int
) -> tuple[list[int], list[float]]:
    """The best time of copying the first `size` bytes of `src` into `dst`, one transfer per
    sample, over `_COPY_SAMPLES` samples per size at least (`repeats` when more).

    No batching of transfers: alpha is the cost of a single transfer, which batching would hide.
    The best sample, as for the devices' figures (`profiler.hardware.compute`): a single copy of
    a MiB lasts tens of microseconds, which any interruption of the host doubles.
    """

    def copy(size: int) -> object:
        return dst[:size].copy_(src[:size], non_blocking=True)

    copy(sizes[-1])  # warm up: driver paths, peer access, pinned mappings
    best = dict.fromkeys(sizes, math.inf)
    for _ in range(max(repeats, _COPY_SAMPLES)):
        for size in sizes:
            best[size] = min(best[size], cuda_seconds(timing_device, functools.partial(copy, size), 1))
    return list(best), list(best.values())

"""How fast each compute device of this machine computes and moves its own memory.

For the cpu and every CUDA device: dense matmul FLOP/s per dtype and the bandwidth of a copy
within the device's memory, timed with the wall clock on the cpu and with CUDA events on a GPU,
each figure the best of a few samples long enough for the timer to resolve. The best, not the
median: another process, an interrupt or a page fault only ever slows a sample down, so the
fastest sample is the least disturbed one, and it is what repeated measurements agree on; the
figures are peaks (``peak_flops``), which is what a roofline divides by.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from profiler.hardware._lazy import LazyModule
from tuner.core.domain import Device

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = ["MiB", "cuda_seconds", "measure_cpu", "measure_cuda_device"]

MiB = 1 << 20

#: The dtypes whose matmul speed is measured; a dtype a device cannot multiply is left out.
_FLOPS_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

#: Bytes copied to measure memory bandwidth: well above any last-level cache (tens of MiB), so
#: the copy streams from memory rather than from cache.
_CPU_BANDWIDTH_BYTES = 128 * MiB
_CUDA_BANDWIDTH_BYTES = 512 * MiB

#: Matmul sizes are grown by doubling from `_MATMUL_MIN_N` while one multiplication takes less than
#: this long or the last doubling still raised the FLOP/s by `_MATMUL_GROWTH` (and `max_n` is not
#: passed). A fixed size does not work on CPUs: an fp32 GEMM of 1024 runs in 13 ms on a 2-core
#: EPYC while a bf16 one without AVX512-BF16 takes 2 s, and 2048 takes 55 s. Time alone does not
#: decide either: with a busy core, a 2-thread fp32 GEMM of 256 took 16 ms (2 GFLOP/s, against
#: 225 idle), which stopped the growth there and reported 3 GFLOP/s for the device.
_MATMUL_MIN_N = 256
_MATMUL_GROWTH = 0.1
_CPU_MATMUL_MAX_N = 1024
_CUDA_MATMUL_MAX_N = 8192
_CPU_OP_TARGET_S = 0.01
_CUDA_OP_TARGET_S = 0.001
#: Each timed sample repeats the operation until it lasts about this long, so timer resolution
#: and launch overhead stay small against the measured time.
_CPU_SAMPLE_TARGET_S = 0.02
_CUDA_SAMPLE_TARGET_S = 0.02


def measure_cpu(
    name: str, total_memory: int, free_memory: int, repeats: int, step: Callable[[str], None]
) -> Device:
    """The ``cpu`` device: matmul FLOP/s per dtype it can multiply, and main memory bandwidth."""
    peak_flops: dict[str, float] = {}
    for dtype_name in _FLOPS_DTYPES:
        dtype = getattr(torch, dtype_name)
        try:
            # Half precision matmul is missing on some CPU builds; find out on a tiny one first.
            torch.mm(torch.ones(2, 2, dtype=dtype), torch.ones(2, 2, dtype=dtype))
        except RuntimeError:
            continue
        step(f"cpu: {dtype_name} matmul")

        def make(n: int, dtype: torch.dtype = dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return (torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype), torch.empty(n, n, dtype=dtype))

        peak_flops[dtype_name] = _matmul_flops(
            make,
            _cpu_seconds,
            max_n=_CPU_MATMUL_MAX_N,
            op_target_s=_CPU_OP_TARGET_S,
            sample_target_s=_CPU_SAMPLE_TARGET_S,
            repeats=repeats,
        )

    step("cpu: memory bandwidth")
    bandwidth = _copy_bandwidth(
        _CPU_BANDWIDTH_BYTES, torch.device("cpu"), _cpu_seconds, repeats, _CPU_SAMPLE_TARGET_S
    )
    return Device(
        key="cpu",
        kind="cpu",
        name=name,
        total_memory=total_memory,
        free_memory=free_memory,
        peak_flops=peak_flops,
        memory_bandwidth=bandwidth,
    )


def measure_cuda_device(index: int, repeats: int, step: Callable[[str], None]) -> Device:
    """CUDA device `index`: name, memory, matmul FLOP/s per dtype and device memory bandwidth."""
    properties = torch.cuda.get_device_properties(index)
    # Before we allocate, and after the CUDA context exists: what a device map may really use.
    free, _ = torch.cuda.mem_get_info(index)
    device = torch.device("cuda", index)

    def timer(op: Callable[[], object], iters: int) -> float:
        return cuda_seconds(index, op, iters)

    # Three n x n fp32 operands of the largest size must fit with room to spare.
    max_n = _CUDA_MATMUL_MAX_N
    while max_n > _MATMUL_MIN_N and 3 * max_n * max_n * 4 > free // 4:
        max_n //= 2

    peak_flops: dict[str, float] = {}
    for dtype_name in _FLOPS_DTYPES:
        dtype = getattr(torch, dtype_name)
        step(f"cuda {index}: {dtype_name} matmul")

        def make(n: int, dtype: torch.dtype = dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return (
                torch.randn(n, n, device=device, dtype=dtype),
                torch.randn(n, n, device=device, dtype=dtype),
                torch.empty(n, n, device=device, dtype=dtype),
            )

        try:
            peak_flops[dtype_name] = _matmul_flops(
                make,
                timer,
                max_n=max_n,
                op_target_s=_CUDA_OP_TARGET_S,
                sample_target_s=_CUDA_SAMPLE_TARGET_S,
                repeats=repeats,
            )
        except RuntimeError:
            continue  # e.g. bf16 on a GPU older than Ampere in some builds: no figure, no guess

    step(f"cuda {index}: memory bandwidth")
    nbytes = min(_CUDA_BANDWIDTH_BYTES, max(free // 8, MiB))
    bandwidth = _copy_bandwidth(nbytes, device, timer, repeats, _CUDA_SAMPLE_TARGET_S)
    torch.cuda.empty_cache()  # give the memory back so later devices' free figures are honest
    return Device(
        key=str(index),
        kind="cuda",
        name=properties.name,
        total_memory=int(properties.total_memory),  # the spec figure: fixed, so fingerprints hold
        free_memory=int(free),
        peak_flops=peak_flops,
        memory_bandwidth=bandwidth,
    )


def cuda_seconds(device: int, op: Callable[[], object], iters: int) -> float:
    """Seconds per call of `op`, timed with CUDA events on the current stream of `device`.

    Events time the GPU's own work, so host-side launch jitter is excluded; `op` must enqueue its
    work on that stream (torch's copies and matmuls do, cross-device copies on the source's).
    """
    with torch.cuda.device(device):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            op()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters


def _cpu_seconds(op: Callable[[], object], iters: int) -> float:
    """Wall-clock seconds per call of `op` over `iters` back-to-back calls (CPU ops are synchronous)."""
    start = time.perf_counter()
    for _ in range(iters):
        op()
    return (time.perf_counter() - start) / iters


def _best_sample(
    timer: Callable[[Callable[[], object], int], float],
    op: Callable[[], object],
    repeats: int,
    sample_target_s: float,
) -> float:
    """Least seconds per call of `op` over `repeats` samples of enough calls to last `sample_target_s`.

    A first call pays one-off costs (cuBLAS handle creation, page faults, kernel selection) and
    a second calibrates the number of calls per sample.
    """
    op()
    first = timer(op, 1)
    iters = max(1, math.ceil(sample_target_s / max(first, 1e-9)))
    return min(timer(op, iters) for _ in range(repeats))


def _matmul_flops(
    make: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    timer: Callable[[Callable[[], object], int], float],
    *,
    max_n: int,
    op_target_s: float,
    sample_target_s: float,
    repeats: int,
) -> float:
    """Peak FLOP/s of a square ``n x n`` matmul over the sizes tried, each the best of `repeats`
    samples; `n` doubles while a multiplication is short or a doubling still paid
    (`_MATMUL_GROWTH`), so no single slow sample ends the growth."""
    best = 0.0
    n = _MATMUL_MIN_N
    while True:
        a, b, out = make(n)

        def op(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out) -> object:
            return torch.mm(a, b, out=out)

        seconds = _best_sample(timer, op, repeats, sample_target_s)
        rate = 2.0 * n**3 / seconds
        grew = rate > best * (1 + _MATMUL_GROWTH)
        best = max(best, rate)
        del a, b, out, op
        if n * 2 > max_n or (seconds >= op_target_s and not grew):
            return best
        n *= 2


def _copy_bandwidth(
    nbytes: int,
    device: torch.device,
    timer: Callable[[Callable[[], object], int], float],
    repeats: int,
    sample_target_s: float,
) -> float:
    """Bytes per second of a same-device copy of `nbytes`; the buffers die when this returns."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)  # ones, not empty: touch every page
    dst = torch.zeros_like(src)
    seconds = _best_sample(timer, lambda: dst.copy_(src), repeats, sample_target_s)
    # A copy reads and writes every byte; count both, as STREAM's "copy" does, so the figure is
    # comparable with the bytes a roofline estimate counts (reads plus writes).
    return 2 * nbytes / seconds

"""Measure the devices of this machine and the links between them.

The module follows torchgpipe's split between measuring and deciding: the measuring functions are
thin (time a matmul, a copy, a file read, and return seconds), and the one decision taken here,
turning (size, seconds) samples into a latency and a bandwidth, is the pure function `fit_link`.

Every link is modelled as Hockney's alpha-beta model, ``t(n) = alpha + n / beta``
(R. W. Hockney, "The communication challenge for MPP: Intel Paragon and Meiko CS-2",
Parallel Computing 20(3), 1994), which is what `tuner.core.domain.Link` stores.

What is measured:

* ``cpu``: the CPU model, total and available memory, dense matmul FLOP/s per dtype and copy
  bandwidth of main memory.
* ``0``, ``1``, ...: each CUDA device: name, total and free memory, matmul FLOP/s per dtype
  (timed with CUDA events) and device-to-device copy bandwidth.
* ``disk``: a folder (the offload folder): its file system's size and free space.
* links ``disk -> cpu`` (reads of a safetensors file as accelerate makes them, uncached; the
  same reads from the page cache are the profile's `page_cache` link), ``cpu -> i`` and
  ``i -> cpu`` (pinned host memory), and ``i -> j`` for every ordered GPU pair (peer to peer
  where the GPUs allow it).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path

import torch

from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.exceptions import ProfilingError

__all__ = ["DEFAULT_SIZES", "describe_hardware", "drop_from_page_cache", "fit_link", "measure_hardware"]

MiB = 1 << 20
GiB = 1 << 30

#: Transfer sizes a link is measured at: from where latency still shows to where only bandwidth does.
DEFAULT_SIZES: tuple[int, ...] = (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)

#: The dtypes whose matmul speed is measured; a dtype a device cannot multiply is left out.
_FLOPS_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

#: Bytes copied to measure memory bandwidth: well above any last-level cache (tens of MiB), so
#: the copy streams from memory rather than from cache.
_CPU_BANDWIDTH_BYTES = 128 * MiB
_CUDA_BANDWIDTH_BYTES = 512 * MiB

#: Matmul sizes are grown by doubling from `_MATMUL_MIN_N` until one multiplication takes at least
#: this long (or `max_n` is reached). A fixed size does not work on CPUs: an fp32 GEMM of 1024 runs
#: in 13 ms on a 2-core EPYC while a bf16 one without AVX512-BF16 takes 2 s, and 2048 takes 55 s.
_MATMUL_MIN_N = 256
_CPU_MATMUL_MAX_N = 1024
_CUDA_MATMUL_MAX_N = 8192
_CPU_OP_TARGET_S = 0.01
_CUDA_OP_TARGET_S = 0.001
#: Each timed sample repeats the operation until it lasts about this long, so timer resolution
#: and launch overhead stay small against the measured time.
_CPU_SAMPLE_TARGET_S = 0.02
_CUDA_SAMPLE_TARGET_S = 0.02

#: cgroup v1 writes "no limit" as a huge page-aligned number rather than "max".
_CGROUP_NO_LIMIT = 1 << 60


# --------------------------------------------------------------------------------------------
# The pure part
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def measure_hardware(
    *,
    disk_dir: str | Path | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 3,
    on_step: Callable[[str], None] | None = None,
) -> HardwareProfile:
    """Measure the devices of this machine and every link between them.

    Nothing here touches a user's model; every buffer is allocated and freed here. With the
    defaults, the CPU and disk part takes a few seconds on a 2-core machine.

    Args:
        disk_dir: the folder standing for the ``disk`` device (the offload folder); created if
            missing. Defaults to the system's temporary folder. Scratch files are written to a
            private subfolder and removed afterwards.
        sizes: bytes per transfer that each link is timed at; at least two distinct positive
            sizes.
        repeats: timed samples per size (and per FLOP/s or bandwidth figure); at least 1.
        on_step: called with a short description before each measurement, so a caller can show
            progress.

    Returns:
        A `HardwareProfile` with source ``measured``, devices ``cpu``, ``0``, ``1``... and
        ``disk``, links ``disk -> cpu``, ``cpu <-> i`` and ``i -> j``, and a `host` identifier
        that does not depend on the host name.

    Raises:
        ValueError: `sizes` or `repeats` are unusable.
        ProfilingError: a measurement failed (for example, the disk folder is not writable).
    """
    distinct = sorted({int(size) for size in sizes})
    if len(distinct) < 2 or distinct[0] <= 0:
        raise ValueError(f"sizes must hold at least 2 distinct positive byte counts (got {list(sizes)})")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 ({repeats} < 1)")

    def step(message: str) -> None:
        if on_step is not None:
            on_step(message)

    # The folder first: it is cheap to check and a bad one should fail before seconds of timing.
    folder = Path(disk_dir) if disk_dir is not None else Path(tempfile.gettempdir())
    disk = _disk_device(folder)

    machine_memory, total_memory, free_memory = _host_memory()
    cpu_name = _cpu_name()
    devices = [_measure_cpu(cpu_name, total_memory, free_memory, repeats, step)]
    links: list[Link] = []

    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(gpu_count):
        devices.append(_measure_cuda_device(index, repeats, step))
    for index in range(gpu_count):
        links.append(_measure_host_link(index, to_device=True, sizes=distinct, repeats=repeats, step=step))
        links.append(_measure_host_link(index, to_device=False, sizes=distinct, repeats=repeats, step=step))
    for src in range(gpu_count):
        for dst in range(gpu_count):
            if src != dst:
                links.append(_measure_peer_link(src, dst, distinct, repeats, step))

    devices.append(disk)
    disk_link, page_cache = _measure_disk_links(
        folder, distinct[-1], repeats, devices[0].memory_bandwidth, step
    )
    links.append(disk_link)

    host = _host_identity(cpu_name, machine_memory)
    return HardwareProfile(
        devices=tuple(devices), links=tuple(links), source="measured", host=host, page_cache=page_cache
    )


def describe_hardware() -> HardwareProfile:
    """This machine's devices without timing anything: names and memory, no speeds, no links.

    Its fingerprint equals the one `measure_hardware` gives, so a profile can be keyed to this
    machine in milliseconds.
    """
    machine_memory, total_memory, free_memory = _host_memory()
    cpu_name = _cpu_name()
    devices = [
        Device(key="cpu", kind="cpu", name=cpu_name, total_memory=total_memory, free_memory=free_memory)
    ]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        free, _ = torch.cuda.mem_get_info(index)
        devices.append(
            Device(
                key=str(index),
                kind="cuda",
                name=properties.name,
                total_memory=int(properties.total_memory),
                free_memory=int(free),
            )
        )
    host = _host_identity(cpu_name, machine_memory)
    return HardwareProfile(devices=tuple(devices), source="described", host=host)


def _host_identity(cpu_name: str, machine_memory: int) -> str:
    # The host name is deliberately absent: containers and CI runners get a new one every start,
    # which would make every stored result look like it came from another machine.
    return f"{cpu_name} | {os.cpu_count() or 0} logical cpus | {round(machine_memory / GiB)} GiB"


# ---- timing helpers ------------------------------------------------------------------------


def _cpu_seconds(op: Callable[[], object], iters: int) -> float:
    """Wall-clock seconds per call of `op` over `iters` back-to-back calls (CPU ops are synchronous)."""
    start = time.perf_counter()
    for _ in range(iters):
        op()
    return (time.perf_counter() - start) / iters


def _cuda_seconds(device: int, op: Callable[[], object], iters: int) -> float:
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


def _sampled(
    timer: Callable[[Callable[[], object], int], float],
    op: Callable[[], object],
    repeats: int,
    sample_target_s: float,
) -> float:
    """Median seconds per call of `op` over `repeats` samples of enough calls to last `sample_target_s`.

    The first call warms up (allocator, kernel selection, page faults) and calibrates the number
    of calls per sample. The median, not the minimum, is kept: the cost model compares these
    figures with unit times that are medians too.
    """
    first = timer(op, 1)
    iters = max(1, math.ceil(sample_target_s / max(first, 1e-9)))
    return statistics.median(timer(op, iters) for _ in range(repeats))


def _matmul_flops(
    make: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    timer: Callable[[Callable[[], object], int], float],
    *,
    max_n: int,
    op_target_s: float,
    sample_target_s: float,
    repeats: int,
) -> float:
    """FLOP/s of a square ``n x n`` matmul, `n` grown until one multiplication is long enough."""
    n = _MATMUL_MIN_N
    while True:
        a, b, out = make(n)

        def op(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out) -> object:
            return torch.mm(a, b, out=out)

        # Warm up before timing: the first call pays one-off costs (cuBLAS handle creation,
        # page faults, kernel selection) that would stop the growth at a size far below peak.
        op()
        single = timer(op, 1)
        if single >= op_target_s or n * 2 > max_n:
            break
        del a, b, out, op
        n *= 2
    seconds = _sampled(timer, op, repeats, sample_target_s)
    return 2.0 * n**3 / seconds


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
    seconds = _sampled(timer, lambda: dst.copy_(src), repeats, sample_target_s)
    # A copy reads and writes every byte; count both, as STREAM's "copy" does, so the figure is
    # comparable with the bytes a roofline estimate counts (reads plus writes).
    return 2 * nbytes / seconds


# ---- cpu -----------------------------------------------------------------------------------


def _cpu_name() -> str:
    """The CPU model: /proc/cpuinfo on Linux (x86 and ARM spell it differently), else platform."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model", "cpu"):
        for line in text.splitlines():
            label, _, value = line.partition(":")
            if label.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def _read_meminfo() -> dict[str, int]:
    """/proc/meminfo as bytes per field; empty where the file does not exist (macOS, Windows)."""
    fields: dict[str, int] = {}
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        label, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            factor = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            fields[label.strip()] = int(parts[0]) * factor
    return fields


def _cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) of this process's memory cgroup, or None when there is no limit.

    Inside a container /proc/meminfo shows the whole host; the cgroup limit is what the kernel's
    OOM killer enforces, so it is the memory a device map may actually use.
    """
    candidates = (
        (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),  # cgroup v2
        (
            Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
            Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ),
    )
    for limit_path, usage_path in candidates:
        try:
            limit_text = limit_path.read_text().strip()
            usage_text = usage_path.read_text().strip()
        except OSError:
            continue
        if not limit_text.isdigit() or not usage_text.isdigit():
            return None  # "max": no limit
        limit = int(limit_text)
        if limit >= _CGROUP_NO_LIMIT:
            return None
        return limit, int(usage_text)
    return None


def _host_memory() -> tuple[int, int, int]:
    """(machine total, usable total, available) bytes of main memory.

    The machine total identifies the host; the usable total and the available figure are what a
    device map may use here (a container's limit lowers them).
    """
    info = _read_meminfo()
    machine = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    if machine == 0:
        # No /proc (macOS, BSD): POSIX sysconf knows the physical pages; available pages only
        # exist on some systems.
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            machine = page * os.sysconf("SC_PHYS_PAGES")
            available = page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = available or 0
    total = machine
    limited = _cgroup_memory()
    if limited is not None:
        limit, usage = limited
        total = min(total, limit) if total else limit
        available = min(available, max(limit - usage, 0)) if available else max(limit - usage, 0)
    return machine, total, min(available, total)


def _measure_cpu(
    name: str, total_memory: int, free_memory: int, repeats: int, step: Callable[[str], None]
) -> Device:
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


# ---- cuda ----------------------------------------------------------------------------------


def _measure_cuda_device(index: int, repeats: int, step: Callable[[str], None]) -> Device:
    properties = torch.cuda.get_device_properties(index)
    # Before we allocate, and after the CUDA context exists: what a device map may really use.
    free, _ = torch.cuda.mem_get_info(index)
    device = torch.device("cuda", index)

    def timer(op: Callable[[], object], iters: int) -> float:
        return _cuda_seconds(index, op, iters)

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


def _fit(src: str, dst: str, sizes: list[int], seconds: list[float]) -> Link:
    try:
        alpha, beta = fit_link(sizes, seconds)
    except ValueError as error:
        raise ProfilingError(f"link {src} -> {dst}: {error}") from error
    return Link(src=src, dst=dst, alpha_s=alpha, beta_bytes_per_s=beta)


def _time_copies(
    src: torch.Tensor, dst: torch.Tensor, timing_device: int, sizes: list[int], repeats: int
) -> tuple[list[int], list[float]]:
    """Time copying the first `size` bytes of `src` into `dst`, one transfer per sample.

    No batching of transfers: alpha is the cost of a single transfer, which batching would hide.
    """

    def copy(size: int) -> object:
        return dst[:size].copy_(src[:size], non_blocking=True)

    copy(sizes[-1])  # warm up: driver paths, peer access, pinned mappings
    xs: list[int] = []
    ys: list[float] = []
    for _ in range(repeats):
        for size in sizes:
            xs.append(size)
            ys.append(_cuda_seconds(timing_device, functools.partial(copy, size), 1))
    return xs, ys


def _measure_host_link(
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


def _measure_peer_link(
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


# ---- disk ----------------------------------------------------------------------------------


def _disk_device(folder: Path) -> Device:
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


#: The stacks `_measure_disk_links` streams, as (layers, side of each float32 square weight).
#: Many small weights (16 KiB): the per-tensor cost dominates. Weights of 4 MiB, the size of a
#: hidden-1024 projection: the per-byte cost. Mapping cached pages costs less per byte for larger
#: tensors (about 12 GB/s at 4 MiB, 20 at 32 MiB, 36 at 128 MiB on a 2-core EPYC), so models
#: with larger weights stream somewhat faster than this link says.
_SMALL_STACK = (48, 64)
_LARGE_STACK = (17, 1024)


def _measure_disk_links(
    folder: Path, largest: int, repeats: int, memory_bandwidth: float, step: Callable[[str], None]
) -> tuple[Link, Link]:
    """``disk -> cpu`` as accelerate streams a ``disk`` unit, from the device and from the page
    cache: (device link, page cache link), each ``alpha`` per weight tensor + bytes / ``beta``.

    Two stacks of bias-free linear layers (`_SMALL_STACK`, `_LARGE_STACK`) are saved as
    safetensors checkpoints and dispatched with accelerate's ``dispatch_model`` and an offload
    index into the file, which is how ``from_pretrained`` offloads a safetensors checkpoint:
    before each layer runs, its hook reads the weight (``safe_open`` + ``get_tensor``, a memory
    map of the file), then puts it back on meta. A sample is one forward of a stack with its
    layers on ``disk`` less the same forward with the weights resident, so compute cancels and
    what remains is the streaming. For the device link the file's pages are dropped from the
    cache before each forward; for the page cache link they were read once before. The
    many-small stack gives the cost per tensor, the stack of 4 MiB weights (`largest` bytes at
    most in all) the cost per byte. The resident weights are a memory map of a copy of the file,
    as ``from_pretrained`` keeps them, so that only the streaming differs.
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
                        samples = []
                        for _ in range(repeats):
                            if cold:
                                drop_from_page_cache(path)
                            begin = time.perf_counter()
                            streamed(x)
                            offloaded = time.perf_counter() - begin
                            begin = time.perf_counter()
                            resident(x)
                            samples.append(offloaded - (time.perf_counter() - begin))
                        extra[name, cold] = max(0.0, statistics.median(samples))
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
    from accelerate import dispatch_model
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
    dispatch_logger = logging.getLogger("accelerate.big_modeling")
    level = dispatch_logger.level
    dispatch_logger.setLevel(logging.ERROR)  # "some parameters are on the meta device": meant to be
    try:
        return dispatch_model(model, device_map=device_map, main_device="cpu", offload_index=index)
    finally:
        dispatch_logger.setLevel(level)


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

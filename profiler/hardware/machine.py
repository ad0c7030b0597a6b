"""This machine as a `HardwareProfile`: its devices and every link between them.

The module follows torchgpipe's split between measuring and deciding: the measuring functions
(`profiler.hardware.compute`, `.links`, `.disk`) are thin (time a matmul, a copy, a file read,
and return seconds), and the one decision, turning (size, seconds) samples into a latency and a
bandwidth, is the pure function `profiler.hardware.links.fit_link`. This module composes them.

What is measured:

* ``cpu``: the CPU model, total and available memory, dense matmul FLOP/s per dtype and copy
  bandwidth of main memory.
* ``0``, ``1``, ...: each CUDA device: name, total and free memory, matmul FLOP/s per dtype
  (timed with CUDA events) and device-to-device copy bandwidth.
* ``disk``: a folder (the offload folder): its file system's size and free space.
* links ``disk -> cpu`` (reads of a safetensors file as accelerate makes them, uncached; the
  same reads from the page cache are the profile's `page_cache` link), ``cpu -> i`` and
  ``i -> cpu`` (pinned host memory; from pageable memory as accelerate copies, the profile's
  `pageable` links), and ``i -> j`` for every ordered GPU pair (peer to peer where the GPUs
  allow it).
* the fixed costs a roofline leaves out (`profiler.hardware.overheads`): each compute device's
  cost per kernel, and, on the main device (GPU 0, else the cpu), ``generate``'s work per
  decode step and accelerate's per hooked module call.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from profiler.hardware._lazy import LazyModule
from profiler.hardware.compute import measure_cpu
from profiler.hardware.compute import measure_cuda_device
from profiler.hardware.disk import disk_device
from profiler.hardware.disk import measure_disk_links
from profiler.hardware.disk import safetensors_entry_seconds
from profiler.hardware.host import cpu_name
from profiler.hardware.host import host_identity
from profiler.hardware.host import host_memory
from profiler.hardware.links import DEFAULT_SIZES
from profiler.hardware.links import measure_host_link
from profiler.hardware.links import measure_pageable_link
from profiler.hardware.links import measure_peer_link
from profiler.hardware.load import LoadWatch
from profiler.hardware.overheads import host_overheads
from profiler.hardware.overheads import kernel_and_forward_seconds
from tuner.core.domain import Device
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

__all__ = ["MEASURING_METHOD", "describe_hardware", "measure_hardware"]

#: The version of what `measure_hardware` measures and how, kept in each profile it returns
#: (`HardwareProfile.method`). Raise it with any change that makes a stored profile price a plan
#: otherwise than a fresh one would; planning measures a profile of a lower version again.
#: 1: the page cache, pageable copies, the cost per kernel as a layer's kernels pay it, the
#: forward's own Python, generate's step, accelerate's hook and safetensors' header entries.
#: 2: a weight's read from disk and a header entry's parse timed between a tiny Llama's layers,
#: where a model pays them, instead of from a stack of linear layers and in a loop.
#: 3: pageable copies into a GPU read a source larger than the caches, as streamed weights are.
MEASURING_METHOD = 3


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
        ``disk`` (each compute device with its cost per kernel), links ``disk -> cpu``,
        ``cpu <-> i`` (pinned, and pageable in `pageable`) and ``i -> j``, the host's costs per
        ``generate`` step and per hooked call, a `host` identifier that does not depend on the
        host name, and `busy` saying why the figures may not be the machine's when other
        processes loaded it meanwhile (`profiler.hardware.load`).

    Raises:
        ValueError: `sizes` or `repeats` are unusable.
        ProfilingError: a measurement failed (for example, the disk folder is not writable).
    """
    distinct = sorted({int(size) for size in sizes})
    if len(distinct) < 2 or distinct[0] <= 0:
        raise ValueError(f"sizes must hold at least 2 distinct positive byte counts (got {list(sizes)})")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 ({repeats} < 1)")

    watch = LoadWatch()

    def step(message: str) -> None:
        if on_step is not None:
            on_step(message)
        watch.tick(f"before {message!r}")  # before each measurement, the host's speed once more

    # The folder first: it is cheap to check and a bad one should fail before seconds of timing.
    folder = Path(disk_dir) if disk_dir is not None else Path(tempfile.gettempdir())
    disk = disk_device(folder)

    machine_memory, total_memory, free_memory = host_memory()
    name = cpu_name()
    links: list[Link] = []
    with watch:
        devices = [measure_cpu(name, total_memory, free_memory, repeats, step)]
        gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for index in range(gpu_count):
            devices.append(measure_cuda_device(index, repeats, step))
        for index in range(gpu_count):
            links.append(measure_host_link(index, to_device=True, sizes=distinct, repeats=repeats, step=step))
            links.append(
                measure_host_link(index, to_device=False, sizes=distinct, repeats=repeats, step=step)
            )
        for src in range(gpu_count):
            for dst in range(gpu_count):
                if src != dst:
                    links.append(measure_peer_link(src, dst, distinct, repeats, step))

        pageable: list[Link] = []
        for index in range(gpu_count):
            for to_device in (True, False):
                pageable.append(
                    measure_pageable_link(
                        index, to_device=to_device, sizes=distinct, repeats=repeats, step=step
                    )
                )
        step("cost per kernel and per forward")
        fixed = {
            device.key: kernel_and_forward_seconds(_torch_device(device.key), repeats) for device in devices
        }
        devices = [dataclasses.replace(device, kernel_s=fixed[device.key][0]) for device in devices]
        # the host's own figures are taken where its models run: the first GPU, else the cpu
        host_key = "0" if gpu_count else "cpu"
        forward_call = fixed[host_key][1]
        step("generate's cost per step and accelerate's per hook")
        generate_step, hook_call = host_overheads(_torch_device(host_key), repeats)

        devices.append(disk)
        step("safetensors headers")
        entry = safetensors_entry_seconds(folder, repeats)
        disk_link, page_cache = measure_disk_links(
            folder, distinct[-1], repeats, devices[0].memory_bandwidth, step, hook_call, entry
        )
        links.append(disk_link)

    host = host_identity(name, machine_memory)
    return HardwareProfile(
        devices=tuple(devices),
        links=tuple(links),
        source="measured",
        host=host,
        page_cache=page_cache,
        busy=watch.busy,
        pageable=tuple(pageable),
        generate_step_s=generate_step,
        hook_call_s=hook_call,
        safetensors_entry_s=entry,
        forward_call_s=forward_call,
        method=MEASURING_METHOD,
    )


def _torch_device(key: str) -> torch.device:
    return torch.device("cpu") if key == "cpu" else torch.device("cuda", int(key))


def describe_hardware() -> HardwareProfile:
    """This machine's devices without timing anything: names and memory, no speeds, no links.

    The devices are those `measure_hardware` reports with its defaults (the ``disk`` is the
    temporary folder's file system), so arguments naming devices can be checked before anything
    is measured; its fingerprint equals the measured one, so a profile can be keyed to this
    machine in milliseconds.
    """
    machine_memory, total_memory, free_memory = host_memory()
    name = cpu_name()
    devices = [Device(key="cpu", kind="cpu", name=name, total_memory=total_memory, free_memory=free_memory)]
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
    devices.append(disk_device(Path(tempfile.gettempdir())))
    host = host_identity(name, machine_memory)
    return HardwareProfile(devices=tuple(devices), source="described", host=host)

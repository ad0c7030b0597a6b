"""The host: its CPU model, its main memory (with a container's limit) and its identity.

Everything here reads small files (/proc, /sys) or asks the standard library, and nothing imports
torch, so the machine can be identified in milliseconds, before torch (seconds to import) loads.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from tuner.core.domain import stable_hash

__all__ = ["cpu_name", "host_identity", "host_memory", "machine_identity"]

GiB = 1 << 30

#: cgroup v1 writes "no limit" as a huge page-aligned number rather than "max".
_CGROUP_NO_LIMIT = 1 << 60

#: One folder per NVIDIA GPU the driver sees, each with an ``information`` file naming its model.
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")

#: Environment variables that change which GPUs torch sees (CUDA, containers, ROCm).
_VISIBILITY_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)


def machine_identity() -> str:
    """A short digest of this machine's compute hardware, computed without importing torch.

    It is meant as a cache key: whatever was derived from this machine's hardware (a described
    or measured `HardwareProfile`, its fingerprint) may be reused while the digest stays the
    same, and asking for it takes milliseconds where describing the hardware needs torch.

    It digests the CPU model, the logical CPU count, total and usable RAM (a container's memory
    limit lowers the latter), ``platform.system()`` and ``platform.machine()``, the models of the
    NVIDIA GPUs the driver lists under ``/proc/driver/nvidia/gpus`` (sorted), and the variables
    that select which GPUs torch sees (``CUDA_VISIBLE_DEVICES``, ``NVIDIA_VISIBLE_DEVICES``,
    ``HIP_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``). So it changes whenever a GPU appears or
    disappears, or the visible set changes; the host name is left out, as in `host_identity`.

    Example:
        >>> machine_identity() == machine_identity()
        True
    """
    name = cpu_name()
    machine_memory, usable_memory, _ = host_memory()
    return stable_hash(
        {
            "host": host_identity(name, machine_memory),
            "usable_memory": usable_memory,
            "system": platform.system(),
            "machine": platform.machine(),
            "gpus": _nvidia_gpu_models(),
            "visible": {variable: os.environ.get(variable) for variable in _VISIBILITY_VARIABLES},
        }
    )


def host_identity(cpu_name: str, machine_memory: int) -> str:
    """What names this host in a hardware profile: CPU model, logical CPUs and GiB of RAM."""
    # The host name is deliberately absent: containers and CI runners get a new one every start,
    # which would make every stored result look like it came from another machine.
    return f"{cpu_name} | {os.cpu_count() or 0} logical cpus | {round(machine_memory / GiB)} GiB"


def cpu_name() -> str:
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


def host_memory() -> tuple[int, int, int]:
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


def _nvidia_gpu_models() -> list[str]:
    """The "Model:" line of every GPU the NVIDIA driver lists, sorted; empty without the driver."""
    models: list[str] = []
    for information in _NVIDIA_GPUS.glob("*/information"):
        try:
            text = information.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            label, _, value = line.partition(":")
            if label.strip() == "Model":
                models.append(value.strip())
    return sorted(models)

"""Rich tables for the terminal: what a person reads after `tuner profile` or `tuner hardware`."""

from __future__ import annotations

from rich.table import Table

from tuner.domain import HardwareProfile
from tuner.domain import ModelProfile
from tuner.domain import Phase

__all__ = ["format_bytes", "format_seconds", "profile_table", "hardware_tables"]


def format_bytes(count: float) -> str:
    """Binary units, as memory is sold and as ``--max-memory`` reads them: 1.5 GiB, 12 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def profile_table(profile: ModelProfile) -> Table:
    """One row per unit: bytes, then time and activation peak per device and phase."""
    graph = profile.graph
    workload = profile.workload
    table = Table(
        title=(
            f"{graph.model_name} ({graph.architecture}, {graph.dtype}) - batch {workload.batch}, "
            f"seq {workload.seq}, {workload.new_tokens} new tokens"
        ),
        title_justify="left",
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("unit", no_wrap=True)
    table.add_column("bytes", justify="right")
    columns = [(device, phase) for device in profile.devices for phase in workload.phases]
    for device, phase in columns:
        where = device if len(profile.devices) > 1 else ""
        table.add_column(f"{phase.value} {where}".strip(), justify="right")
        table.add_column("act. peak", justify="right")
    if Phase.DECODE in workload.phases:
        table.add_column("KV/token", justify="right")
    table.add_column("measured as", style="dim")
    index = {(p.unit, p.device, p.phase): p for p in profile.units}
    for position, unit in enumerate(graph.units):
        cells = [str(position), unit.name, format_bytes(unit.bytes)]
        shared = ""
        kv = 0
        for device, phase in columns:
            measured = index.get((unit.name, device, phase))
            if measured is None:
                cells += ["-", "-"]
                continue
            cells += [format_seconds(measured.time_s), format_bytes(measured.activation_peak_bytes)]
            kv = max(kv, measured.kv_bytes_per_token)
            if measured.shared:
                shared = measured.measured_as
        if Phase.DECODE in workload.phases:
            cells.append(format_bytes(kv) if kv else "")
        cells.append(shared if unit.executed else "never runs")
        table.add_row(*cells)
    return table


def hardware_tables(hardware: HardwareProfile) -> tuple[Table, Table]:
    """Devices (memory, speed) and links (latency, bandwidth)."""
    devices = Table(title=f"devices ({hardware.source})", title_justify="left")
    for column in ("key", "kind", "name", "total", "free", "matmul", "memory bw"):
        devices.add_column(column, justify="right" if column in {"total", "free", "matmul", "memory bw"} else "left")
    for device in hardware.devices:
        flops = ", ".join(f"{dtype} {_format_flops(value)}" for dtype, value in device.peak_flops.items())
        bandwidth = f"{format_bytes(device.memory_bandwidth)}/s" if device.memory_bandwidth else ""
        devices.add_row(
            device.key,
            device.kind,
            device.name,
            format_bytes(device.total_memory),
            format_bytes(device.free_memory),
            flops,
            bandwidth,
        )
    links = Table(title="links: time = alpha + bytes / beta", title_justify="left")
    for column in ("from", "to", "alpha", "beta"):
        links.add_column(column, justify="right" if column in {"alpha", "beta"} else "left")
    for link in hardware.links:
        links.add_row(link.src, link.dst, format_seconds(link.alpha_s), f"{format_bytes(link.beta_bytes_per_s)}/s")
    return devices, links


def _format_flops(value: float) -> str:
    """GFLOP/s for a CPU, TFLOP/s from a trillion up (datasheet GPUs): 850 GFLOP/s, 312.0 TFLOP/s."""
    return f"{value / 1e12:.1f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.0f} GFLOP/s"

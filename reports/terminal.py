"""Rich tables for the terminal: what a person reads after `tuner profile` or `tuner hardware`."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.devices import gpu_index
from tuner.core.devices import is_gpu
from tuner.core.domain import FITTED_AUTO
from tuner.core.domain import Candidate
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelProfile
from tuner.core.domain import Phase
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.sizes import format_bytes

__all__ = [
    "format_ratios",
    "format_seconds",
    "hardware_tables",
    "host_note",
    "history_table",
    "placement_table",
    "price_table",
    "profile_table",
    "run_tables",
]


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def profile_table(profile: ModelProfile, inputs: str = "text") -> Table:
    """One row per unit: bytes, then time and activation peak per device and phase; `inputs` is
    what the model takes as a prompt (`INPUT_KINDS`)."""
    graph = profile.graph
    workload = profile.workload
    table = Table(
        title=(
            f"{graph.model_name} ({graph.architecture}, {graph.dtype}) - batch {workload.batch}, "
            f"{workload.prompt(inputs)}, {workload.new_tokens} new tokens"
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


#: Above this many links (an 8-GPU machine has 73) `hardware_tables` groups devices and links.
SUMMARY_LINKS = 100


def hardware_tables(hardware: HardwareProfile, *, summary: bool | None = None) -> tuple[Table, Table]:
    """Devices (memory, speed) and links (latency, bandwidth).

    A large machine (more than `SUMMARY_LINKS` links, or `summary`) is summarized: devices alike
    in every figure share a row with their keys and count, and links of one kind of pair with
    one latency and bandwidth share a row (a 1000-GPU spec: 3 device rows, 4 link rows). Linear
    in the links, whose table lists every ordered pair of GPUs otherwise.
    """
    if summary is None:
        summary = len(hardware.links) > SUMMARY_LINKS
    if summary:
        return _device_groups(hardware), _link_groups(hardware)
    devices = Table(title=f"devices ({hardware.source})", title_justify="left")
    for column in ("key", "kind", "name", "total", "free", "matmul", "memory bw", "per kernel"):
        devices.add_column(column, justify="left" if column in {"key", "kind", "name"} else "right")
    for device in hardware.devices:
        devices.add_row(device.key, device.kind, device.name, *_device_figures(device))
    links = Table(title="links: time = alpha + bytes / beta", title_justify="left")
    for column in ("from", "to", "alpha", "beta"):
        links.add_column(column, justify="right" if column in {"alpha", "beta"} else "left")
    for link in hardware.links:
        links.add_row(link.src, link.dst, *_link_figures(link))
    for link in hardware.pageable:
        src, dst = (
            (f"{link.src} (pageable)", link.dst)
            if link.src == "cpu"
            else (link.src, f"{link.dst} (pageable)")
        )
        links.add_row(src, dst, *_link_figures(link))
    _add_page_cache(links, hardware, summary=False)
    return devices, links


def _device_figures(device: Device) -> tuple[str, str, str, str, str]:
    """Total and free memory, matmul speed per dtype, memory bandwidth and the fixed cost of one
    kernel, as the tables show them."""
    flops = ", ".join(f"{dtype} {_format_flops(value)}" for dtype, value in device.peak_flops.items())
    bandwidth = f"{format_bytes(device.memory_bandwidth)}/s" if device.memory_bandwidth else ""
    kernel = format_seconds(device.kernel_s) if device.kernel_s else ""
    return format_bytes(device.total_memory), format_bytes(device.free_memory), flops, bandwidth, kernel


def host_note(hardware: HardwareProfile) -> str:
    """The host's fixed costs (the header entry's to two decimals: thousands of entries multiply
    it), and which host links lack a pageable figure (priced pinned): printed under the tables
    at the console's width, not as a caption as narrow as the links table."""
    note = (
        f"a forward's own Python: {format_seconds(hardware.forward_call_s)} per call; generate: "
        f"{format_seconds(hardware.generate_step_s)} per token; accelerate's hooks: "
        f"{format_seconds(hardware.hook_call_s)} per hooked module call; a read from disk: "
        f"{hardware.safetensors_entry_s * 1e6:.2f} µs per tensor its checkpoint's header lists"
    )
    missing = hardware.pinned_only
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        note += (
            f"\nno pageable figure for {shown}: accelerate's copies of offloaded weights over them "
            "are priced on the pinned link (optimistic)"
        )
    bare = [d.key for d in hardware.devices if d.kind != "disk" and not d.runtime_overhead]
    if hardware.source == "spec" and bare:
        note += (
            f"\nno runtime_overhead for {', '.join(bare)}: a map may fill them to the last byte "
            "(the shipped specs keep 2 GiB of RAM for the OS and Python, 0.5 GiB a GPU for CUDA)"
        )
    return note


def _link_figures(link: Link) -> tuple[str, str]:
    return format_seconds(link.alpha_s), f"{format_bytes(link.beta_bytes_per_s)}/s"


def _add_page_cache(links: Table, hardware: HardwareProfile, *, summary: bool) -> None:
    if hardware.page_cache is not None:
        cached = hardware.page_cache
        count = ("1",) if summary else ()
        links.add_row(cached.src, f"{cached.dst} (page cache)", *count, *_link_figures(cached))


def _device_groups(hardware: HardwareProfile) -> Table:
    """One row per group of devices alike in kind, name, memory and speed, in order of appearance."""
    groups: dict[tuple[object, ...], list[Device]] = {}
    order = {device.key: k for k, device in enumerate(hardware.devices)}
    for device in hardware.devices:
        alike = (
            device.kind, device.name, device.total_memory, device.free_memory,
            tuple(device.peak_flops.items()), device.memory_bandwidth, device.runtime_overhead,
            device.kernel_s,
        )  # fmt: skip
        groups.setdefault(alike, []).append(device)
    table = Table(
        title=f"devices ({hardware.source}): {len(hardware.devices)} in {len(groups)} groups",
        title_justify="left",
    )
    for column in ("keys", "count", "kind", "name", "total", "free", "matmul", "memory bw", "per kernel"):
        table.add_column(column, justify="left" if column in {"keys", "kind", "name"} else "right")
    for members in groups.values():
        first = members[0]
        keys = _key_ranges([device.key for device in members], order)
        table.add_row(keys, str(len(members)), first.kind, first.name, *_device_figures(first))
    return table


def _link_groups(hardware: HardwareProfile) -> Table:
    """One row per kind of pair (cuda -> cuda, cpu -> cuda, ...) and figures, with its ends and count."""
    kind = {device.key: device.kind for device in hardware.devices}
    order = {device.key: k for k, device in enumerate(hardware.devices)}
    groups: dict[tuple[str, str, float, float, str], tuple[dict[str, None], dict[str, None], list[int]]] = {}
    marked = [(link, "") for link in hardware.links] + [(link, " (pageable)") for link in hardware.pageable]
    for link, mark in marked:
        alike = (kind[link.src], kind[link.dst], link.alpha_s, link.beta_bytes_per_s, mark)
        group = groups.get(alike)
        if group is None:
            group = groups[alike] = ({}, {}, [0])
        group[0][link.src] = None
        group[1][link.dst] = None
        group[2][0] += 1
    table = Table(
        title=f"links: alpha + bytes / beta, {len(marked)} in {len(groups)} rows",
        title_justify="left",
    )
    for column in ("from", "to", "links", "alpha", "beta"):
        table.add_column(column, justify="left" if column in {"from", "to"} else "right")
    for (src_kind, _, alpha, beta, mark), (sources, targets, count) in groups.items():
        src_mark, dst_mark = (mark, "") if src_kind == "cpu" else ("", mark)
        table.add_row(
            _key_ranges(sources, order) + src_mark, _key_ranges(targets, order) + dst_mark, str(count[0]),
            format_seconds(alpha), f"{format_bytes(beta)}/s",
        )  # fmt: skip
    _add_page_cache(table, hardware, summary=True)
    return table


def _key_ranges(keys: Iterable[str], order: Mapping[str, int]) -> str:
    """Device keys in the hardware's `order`, runs of consecutive GPU indices joined: ``0-999``,
    ``cpu``, ``0-3, 5``."""
    parts: list[str] = []
    run: list[int] = []
    for key in [*sorted(keys, key=order.__getitem__), ""]:
        if is_gpu(key) and (not run or gpu_index(key) == run[-1] + 1):
            run.append(gpu_index(key))
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [gpu_index(key)] if is_gpu(key) else []
        if key and not is_gpu(key):
            parts.append(key)
    return ", ".join(parts)


def _format_flops(value: float) -> str:
    """GFLOP/s for a CPU, TFLOP/s from a trillion up (datasheet GPUs): 850 GFLOP/s, 312.0 TFLOP/s."""
    return f"{value / 1e12:.1f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.0f} GFLOP/s"


def run_tables(run: Run, *, placements: bool = False, measured: Sequence[Candidate] = ()) -> list[Table]:
    """The winner beside accelerate's strategies and the exact optimum; optionally where each unit went.

    `measured` adds the run's other candidates that were loaded and run for real (the best trials
    of ``optimize --measure``); a column then shows each measured latency or why the map failed.
    """
    workload = run.workload
    title = (
        f"run {run.id}: {run.model_name} on {run.hardware_name} - "
        f"{workload.describe(run.inputs)} ({run.status.value}, {run.trials} trials)"
    )
    asked = _asked_cell(run)
    if asked != "-":  # the limits, pins and exclusions every map was held to
        title += f"\nasked: {asked}"
    rows = [(f"winner ({run.winner.name})", run.winner)] if run.winner else []
    rows += [(candidate.name, candidate) for candidate in run.baselines]
    listed = {candidate.name for _, candidate in rows}
    rows += [(candidate.name, candidate) for candidate in measured if candidate.name not in listed]
    if not rows:  # nothing priced (a run that failed early, or waits): no empty table, its title and why
        note = Table.grid(padding=0)
        note.add_column()
        note.add_row(title)
        note.add_row(_run_caption(run) or "no map priced yet")
        return [note]
    best = run.winner.prediction.latency_s if run.winner and run.winner.prediction else None
    table = _candidates_table(
        title,
        rows,
        generates=workload.new_tokens > 0,
        best=best,
        versus="vs winner",
        measured=run.measured,
        caption=_run_caption(run),
    )
    tables = [table]
    if placements and run.winner is not None:
        tables.append(placement_table(run.winner.device_map))
    return tables


def price_table(yours: Candidate, others: Sequence[Candidate], *, model: str, workload: str) -> Table:
    """Your map beside accelerate's strategies and the exact optimum, all priced alike for
    `workload` (`Workload.describe`, in the title); the ratio column compares each with the
    fastest map that fits."""
    rows = [("yours", yours), *((candidate.name, candidate) for candidate in others)]
    fitting = [
        c.prediction.latency_s
        for _, c in rows
        if c.prediction is not None and c.prediction.feasible and not c.breaks
    ]
    prediction = yours.prediction
    generates = prediction is not None and prediction.new_tokens > 0
    return _candidates_table(
        f"{model}: your map beside accelerate's and the exact optimum (predicted) - {workload}",
        rows,
        generates=generates,
        best=min(fitting, default=None),
        versus="vs best",
        measured=False,
        caption="\n".join(
            [*(_bound_line(c) for _, c in rows if c.lower_bound_s is not None), *_auto_overrun(others)]
        )
        or None,
    )


def _candidates_table(
    title: str,
    rows: Sequence[tuple[str, Candidate]],
    *,
    generates: bool,
    best: float | None,
    versus: str,
    measured: bool,
    caption: str | None,
) -> Table:
    """One row per priced candidate: generate, prefill and per-token latency (a forward's alone
    when nothing is generated, which is its prefill), the ratio to `best`, memory per device, and
    what a real measurement showed when any was taken."""
    was_measured = measured or any(_measurement_cell(candidate) for _, candidate in rows)
    # as wide as its title at least: a title wrapped at the width of a few short columns broke mid-phrase
    table = Table(
        title=title, title_justify="left", caption=caption, caption_justify="left", min_width=len(title)
    )
    phases = [("prefill", "right"), ("per token", "right")] if generates else []
    for column, justify in (
        ("map", "left"),
        ("generate" if generates else "forward", "right"),
        *phases,
        (versus, "right"),
        ("memory: peak / limit per device", "left"),
        *([("measured", "left")] if was_measured else []),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, candidate in rows:
        prediction = candidate.prediction
        if prediction is None:
            continue
        kept = prediction.feasible and not candidate.breaks
        ratio = f"{prediction.latency_s / best:.2f}x" if best and kept else ""
        if candidate.gap is not None:
            label += f" (≤{candidate.gap:.1%} above the optimum)"
        if candidate.breaks:
            label += f" (breaks {candidate.breaks})"
        table.add_row(
            label,
            format_seconds(prediction.latency_s) if prediction.feasible else "OOM",
            *(
                [format_seconds(prediction.prefill.total_s), format_seconds(prediction.decode.total_s)]
                if generates
                else []
            ),
            ratio,
            _memory_cell(prediction),
            *([_measurement_cell(candidate)] if was_measured else []),
            style="bold" if label.startswith(("winner", "yours")) else None,
        )
    return table


def _measurement_cell(candidate: Candidate) -> str:
    if candidate.measure_error:
        return f"[red]{escape(candidate.measure_error)}[/red]"
    if candidate.measured_s is None:
        return ""
    cell = format_seconds(candidate.measured_s)
    if candidate.measured_prefill_s is not None:
        cell += f" (over predicted: {format_ratios(candidate.phase_ratios)})"
    return cell + (" [yellow]busy[/yellow]" if candidate.measure_busy else "")


def format_ratios(ratios: tuple[float | None, float | None]) -> str:
    """Measured over predicted per phase: ``prefill 1.31x, step 2.05x``; without a decode step
    (a forward-only run) the prefill is the forward: ``forward 0.76x``."""
    prefill, decode = ratios
    first = "prefill" if decode is not None else "forward"
    parts = [f"{first} {prefill:.2f}x" if prefill is not None else f"{first} -"]
    if decode is not None:
        parts.append(f"step {decode:.2f}x")
    return ", ".join(parts)


def _run_caption(run: Run) -> str | None:
    """Why the run failed; how the winner was chosen, when maps were measured for real; what the
    exact solver proved when its time limit stopped it."""
    lines = [f"failed: {run.error}"] if run.error else []
    if run.measured:
        if run.winner is not None and run.winner.measured_s is not None:
            lines.append("winner: the fastest map measured for real among those that fit the limits")
        else:
            lines.append("no map that fits the limits ran when measured: the winner is the modelled best")
    lines += [_bound_line(candidate) for candidate in run.baselines if candidate.lower_bound_s is not None]
    lines += _auto_overrun(run.baselines)
    calibration = run.winner.prediction.calibration if run.winner and run.winner.prediction else None
    if calibration is not None:
        lines.append(
            f"calibrated: predicted prefill x{calibration.prefill:.2f}, decode step "
            f"x{calibration.decode:.2f}, measured over predicted of {calibration.maps} maps "
            "timed on this machine"
        )
    return "\n".join(lines) or None


def _auto_overrun(candidates: Sequence[Candidate]) -> list[str]:
    """Why accelerate's ``auto``, a map accelerate would load and often the fastest in the table,
    is passed over when it overruns the limits: a line, or none when it fits."""
    auto = next((candidate for candidate in candidates if candidate.name == "auto"), None)
    if auto is None or auto.prediction is None or auto.prediction.feasible:
        return []
    overruns = "; ".join(format_overrun(memory) for memory in auto.prediction.shortfalls)
    fitted = next((c.name for c in candidates if c.name.startswith(FITTED_AUTO)), None)
    lowered = f"; {fitted}: its plan under limits lowered until it fits" if fitted else ""
    return [f"auto: accelerate plans from weight bytes alone; {overruns}{lowered}"]


def format_overrun(memory: DeviceMemory) -> str:
    """What a device over its limit holds: ``cpu needs 16.2 MiB (weights 14.1 MiB, KV cache
    1.9 MiB, working set 279 KiB), 1.9 MiB over its 14.4 MiB limit``."""
    held = ", ".join(f"{part} {format_bytes(size)}" for part, size in memory.parts.items() if size)
    return (
        f"{device_label(memory.device)} needs {format_bytes(memory.total)} ({held}), "
        f"{format_bytes(memory.over_by)} over its {format_bytes(memory.limit)} limit"
    )


def _bound_line(candidate: Candidate) -> str:
    assert candidate.lower_bound_s is not None
    return (
        f"{candidate.name}: the solver's time limit came first; no map of its class is faster than "
        f"{format_seconds(candidate.lower_bound_s)}"
    )


def _memory_cell(prediction: Prediction) -> str:
    cells = []
    for memory in sorted(prediction.memory, key=lambda memory: device_order(memory.device)):
        mark = "" if memory.fits else f" OVER by {format_bytes(memory.over_by)}"
        cells.append(f"{memory.device}: {format_bytes(memory.total)} / {format_bytes(memory.limit)}{mark}")
    return "; ".join(cells)


def placement_table(device_map: DeviceMap) -> Table:
    """Consecutive units on the same device folded into one row: where the model lives."""
    table = Table(title="placement", title_justify="left")
    table.add_column("device")
    table.add_column("units")
    block: list[str] = []
    current = ""
    for unit, place in [*device_map.placements, ("", "")]:
        if place != current and block:
            shown = block[0] if len(block) == 1 else f"{block[0]} .. {block[-1]} ({len(block)} units)"
            table.add_row(current, shown)
            block = []
        current = place
        block.append(unit)
    return table


def _asked_cell(run: Run) -> str:
    """What a run was asked to keep to, which tells apart runs of one model and workload: its
    memory limits, pins and excluded devices."""
    parts = [", ".join(f"{device} {format_bytes(limit)}" for device, limit in run.max_memory.items())]
    parts += [f"pin {unit}={place}" for unit, place in run.pins]
    parts += [f"no {', '.join(run.exclude)}"] if run.exclude else []
    return "; ".join(part for part in parts if part) or "-"


def _status_cell(run: Run) -> str:
    """The run's status, and for a failed run why, shortened (`tuner show` gives it whole)."""
    if not run.error:
        return run.status.value
    return f"{run.status.value}: [dim]{escape(textwrap.shorten(run.error, 60, placeholder=' ...'))}[/dim]"


#: Below this many columns the history leaves out what `tuner show` gives of each run: ten
#: columns squeezed into 80 cut every cell to a few letters.
HISTORY_FULL_WIDTH = 120
_HISTORY_COLUMNS = (
    "run",
    "when (UTC)",  # as stored, and as the runs page says
    "model",
    "hardware",
    "workload",
    "asked",
    "status",
    "trials",
    "winner",
    "measured",
)
_HISTORY_NARROW_COLUMNS = ("run", "when (UTC)", "model", "workload", "status", "winner")


def history_table(runs: list[Run], *, width: int = HISTORY_FULL_WIDTH) -> Table:
    """The runs, one row each, for a console `width` columns wide: under `HISTORY_FULL_WIDTH`,
    the hardware, limits, trials and measurement are left out, and the caption says so."""
    narrow = width < HISTORY_FULL_WIDTH
    caption = "hardware, limits, trials, measured: tuner show RUN, or a wider terminal" if narrow else None
    table = Table(
        title="tuning runs, newest first", title_justify="left", caption=caption, caption_justify="left"
    )
    cells: list[dict[str, str]] = []
    for run in runs:
        winner = run.winner.prediction if run.winner else None
        cells.append(
            {
                "run": str(run.id),
                "when (UTC)": run.created_at.replace("T", " ")[:16],
                "model": run.model_name,
                "hardware": run.hardware_name,
                "workload": run.workload.shape(run.inputs),
                "asked": _asked_cell(run),
                "status": _status_cell(run),
                "trials": str(run.trials),
                "winner": format_seconds(winner.latency_s) if winner else "-",
                "measured": (_measurement_cell(run.winner) if run.winner else "") or "-",
            }
        )
    columns = _HISTORY_NARROW_COLUMNS if narrow else _HISTORY_COLUMNS
    for column in columns:
        table.add_column(
            column,
            justify="right" if column in {"run", "trials"} else "left",
            no_wrap=column in {"run", "when (UTC)", "winner"},
            overflow="fold",  # a long model path wraps whole rather than end in an ellipsis
        )
    for row in cells:
        table.add_row(*(row[column] for column in columns))
    return table

"""A tuning run as one self-contained HTML page: what `tuner report` writes.

`render` is pure: it takes the domain objects the store hands out and returns the text of one
document with inline CSS, inline SVG charts and a few lines of inline JavaScript (hovering a unit
highlights it in every chart). Nothing is fetched: a Content-Security-Policy in the page forbids
any network request, so the file can be mailed, archived or opened offline.

Every value that comes from a run is escaped with `html.escape`. Every chart element that carries
data has a stable class and ``data-`` attributes, so a test (or a script) can find what rendered:

- ``svg.chart.placement[data-candidate]``: ``rect.unit[data-unit][data-device][data-exec]``;
- ``svg.chart.memory[data-candidate]``: ``rect.mem[data-device][data-part][data-bytes]``,
  ``line.limit[data-device][data-bytes]``;
- ``svg.chart.units``: ``rect.unit-time[data-unit][data-device][data-phase][data-seconds]``,
  ``rect.unit-mem[data-unit][data-part][data-bytes]``;
- ``svg.chart.history``: ``circle.trial.feasible[data-trial]``, ``path.trial.infeasible``,
  ``path.trial.unpriced``, ``polyline.best-so-far``, ``line.baseline[data-baseline]``;
- ``table.comparison``: ``tr.candidate[data-candidate]``, class ``oom`` when the map does not fit.

Example:
    >>> from reports.html import render
    >>> page = render(store.get_run(7), store.list_candidates(7))  # doctest: +SKIP
    >>> Path("report.html").write_text(page, encoding="utf-8")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

from reports.terminal import format_seconds
from tuner.core.devices import OFFLOAD
from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.devices import is_gpu
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import DeviceMemory
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.domain import RunStatus
from tuner.core.domain import UnitProfile
from tuner.core.sizes import format_bytes

__all__ = ["MEMORY_PARTS", "render"]

#: The parts of a device's peak memory: `DeviceMemory` attribute, label, colour.
MEMORY_PARTS: tuple[tuple[str, str, str], ...] = (
    ("weights", "weights", "#4c78a8"),
    ("offloaded_buffers", "offloaded buffers", "#72b7b2"),
    ("kv_cache", "KV cache", "#f58518"),
    ("working_set", "working set", "#54a24b"),
    ("overhead", "runtime overhead", "#b279a2"),
)

#: GPU k gets colour k (cycling); the other placements have their own.
_GPU_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#bcbd22", "#393b79", "#637939", "#7b4173")
_OTHER_COLOURS = {"mps": "#e377c2", "cpu": "#ff7f0e", "disk": "#8c564b"}
_WEIGHTS_COLOUR = MEMORY_PARTS[0][2]
_ACTIVATION_COLOUR = MEMORY_PARTS[3][2]
_FEASIBLE_COLOUR = "#1f77b4"
_INFEASIBLE_COLOUR = "#d62728"
_BEST_COLOUR = "#2ca02c"
_BASELINE_COLOUR = "#777"

#: Width of every chart in SVG user units; the page scales charts down on narrow screens.
_WIDTH = 960

Attrs = Mapping[str, object]


def render(
    run: Run,
    candidates: Sequence[Candidate],
    graph: ModelGraph | None = None,
    profiles: Sequence[UnitProfile] = (),
) -> str:
    """The report of one run as a complete HTML document.

    Args:
        run: the run, with its winner and baselines (`Store.get_run`).
        candidates: the run's candidates (`Store.list_candidates`); those with `Candidate.trial`
            set make the optimization history, in trial order.
        graph: the model's units in execution order; orders the placement diagram and adds
            weight bytes to tooltips and to the per-unit chart.
        profiles: per-unit measurements; with them the page charts time and memory per unit.

    Returns:
        The document, starting with ``<!DOCTYPE html>``.
    """
    auto = _find(run.baselines, "auto")
    order = _unit_order(run, auto, graph, profiles)
    body = [
        _header(run),
        _comparison(run, candidates),
        _placements(run, auto, order, graph),
        _memory(run, auto),
        _units(graph, profiles),
        _history(run, candidates),
    ]
    policy = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(policy)}">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            f"<title>{_e(f'Tuning run {run.id}: {run.model_name}')}</title>\n",
            f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n",
            *body,
            "</main>\n",
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n",
        ]
    )


# --------------------------------------------------------------------------------------------
# header and comparison table


def _header(run: Run) -> str:
    workload = run.workload
    limits = ", ".join(
        f"{device_label(key)}: {format_bytes(limit)}" for key, limit in _by_device(run.max_memory)
    )
    phases = ", ".join(f"{phase} {format_seconds(seconds)}" for phase, seconds in run.phase_seconds.items())
    asked = f"batch {workload.batch}, prompt {workload.seq} tokens, {workload.new_tokens} new tokens"
    rows = [
        ("model", run.model_name, run.model_fingerprint),
        ("hardware", run.hardware_name, run.hardware_fingerprint),
        ("workload", f"{asked}, {workload.dtype}", ""),
        ("status", run.status.value, ""),
        ("trials", str(run.trials), f"study {run.study_name}"),
        ("memory limits", limits or "what is free on each device", ""),
        ("pins", ", ".join(f"{unit} → {device_label(place)}" for unit, place in run.pins) or "none", ""),
        ("excluded devices", ", ".join(device_label(d) for d in run.exclude) or "none", ""),
        ("started", run.created_at.replace("T", " ") or "-", ""),
        ("time per phase", phases or "-", ""),
        ("run key", run.key, ""),
    ]
    facts = "".join(
        f"<dt>{_e(label)}</dt>"
        + _tag(
            "dd",
            {"data-field": label},
            _e(value) + (f' <span class="dim">{_e(extra)}</span>' if extra else ""),
        )
        for label, value, extra in rows
    )
    banner = ""
    if run.status is not RunStatus.COMPLETE:
        text = f"This run is {run.status.value}: what follows is what was stored so far."
        banner = _tag("p", {"class": f"banner status-{run.status.value}"}, _e(text))
    return (
        f'<header id="header" class="section">\n<h1>{_e(f"Tuning run {run.id}: {run.model_name}")}</h1>\n'
        f'{banner}<dl class="facts">{facts}</dl>\n{_verdict(run)}</header>\n'
    )


def _verdict(run: Run) -> str:
    """One paragraph: the winner, its gap to the exact optimum, how accelerate's `auto` fares."""
    winner = run.winner
    if winner is None or winner.prediction is None:
        if run.status is RunStatus.COMPLETE:
            return '<p class="verdict">No feasible map was found: every candidate runs out of memory.</p>\n'
        return '<p class="verdict">No winner is stored yet.</p>\n'
    best = winner.prediction.latency_s
    parts = [f"Winner <b>{_e(winner.name)}</b>: {_e(format_seconds(best))} per generate call"]
    exact = _find(run.baselines, "exact")
    if exact is not None and exact.prediction is not None and exact.prediction.latency_s > 0:
        optimum = exact.prediction.latency_s
        gap = (best - optimum) / optimum * 100
        parts.append(f"exact optimum {_e(format_seconds(optimum))} (gap {gap:.1f}%)")
    auto = _find(run.baselines, "auto")
    if auto is not None and auto.prediction is not None:
        if auto.prediction.feasible:
            latency = format_seconds(auto.prediction.latency_s)
            parts.append(f"<code>auto</code> {_e(latency)}, {_e(_speedup(auto.prediction, best))} slower")
        else:
            parts.append(f"<code>auto</code> runs out of memory ({_e(_shortfall(auto.prediction))})")
    if winner.measured_s is not None:
        measured = f"measured for real: the winner {_e(format_seconds(winner.measured_s))}"
        if auto is not None and auto.measured_s is not None:
            measured += f", <code>auto</code> {_e(format_seconds(auto.measured_s))}"
        parts.append(measured)
    return f'<p class="verdict">{"; ".join(parts)}.</p>\n'


_COLUMNS = (
    ("map", "the winner, accelerate's strategies, single devices and the exact optimum"),
    ("placement", "units per device"),
    ("generate", "predicted latency of one generate call: prefill + (new tokens - 1) x decode step"),
    ("prefill", "predicted time of the prompt's forward pass"),
    ("per token", "predicted time of one decode step"),
    ("winner's speed-up", "this map's predicted latency / the winner's"),
    ("memory", "whether every device's predicted peak fits its limit, or by how much it does not"),
    ("measured", "generate latency measured by loading and running the map, or why it failed"),
    ("error", "prediction error: (predicted - measured) / measured"),
)


def _comparison(run: Run, candidates: Sequence[Candidate]) -> str:
    """The winner, the baselines, then any other candidate that was measured (or failed) for real."""
    best = run.winner.prediction.latency_s if run.winner and run.winner.prediction else None
    listed: list[tuple[str, Candidate]] = []
    if run.winner is not None:
        listed.append((f"winner ({run.winner.name})", run.winner))
    listed += [(candidate.name, candidate) for candidate in run.baselines]
    named = {candidate.name for _, candidate in listed}
    listed += [
        (c.name, c)
        for c in candidates
        if (c.measured_s is not None or c.measure_error) and c.name not in named
    ]
    decoding = run.workload.new_tokens > 0
    rows = [
        _comparison_row(label, candidate, best, decoding=decoding, is_winner=candidate is run.winner)
        for label, candidate in listed
    ]
    head = "".join(_tag("th", {"title": tip}, _e(name)) for name, tip in _COLUMNS)
    empty = f'<tr><td colspan="{len(_COLUMNS)}" class="empty">no candidates stored</td></tr>'
    return (
        '<section id="comparison" class="section">\n<h2>Candidates</h2>\n'
        '<p class="note">Every map is priced by the same cost model. '
        "A map that does not fit is marked OOM with the devices it overflows.</p>\n"
        f'<table class="comparison">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        f"{chr(10).join(rows) if rows else empty}\n</tbody>\n</table>\n</section>\n"
    )


def _comparison_row(
    label: str, candidate: Candidate, best: float | None, *, decoding: bool, is_winner: bool
) -> str:
    prediction = candidate.prediction
    classes = ["candidate"] + (["winner"] if is_winner else [])
    cells = [
        _tag("td", {"class": "name"}, _e(label)),
        _tag("td", {"class": "placement"}, _e(_placement_summary(candidate.device_map))),
    ]
    if prediction is None:
        classes.append("unpriced")
        cells.append('<td colspan="5" class="empty">not priced</td>')
    else:
        if not prediction.feasible:
            classes.append("oom")
        cells += [
            _seconds_cell("generate", prediction.latency_s),
            _seconds_cell("prefill", prediction.prefill.total_s),
            _seconds_cell("decode", prediction.decode.total_s, shown=decoding),
            _tag("td", {"class": "num speedup"}, _e(_speedup_cell(prediction, best, is_winner))),
            _memory_cell(prediction),
        ]
    if candidate.measure_error:
        classes.append("measure-failed")
    cells += _measured_cells(candidate)
    return _tag("tr", {"class": " ".join(classes), "data-candidate": candidate.name}, "".join(cells))


def _seconds_cell(kind: str, seconds: float, *, shown: bool = True) -> str:
    text = _e(format_seconds(seconds)) if shown else ""
    return _tag("td", {"class": f"num {kind}", "data-seconds": repr(seconds)}, text)


def _speedup_cell(prediction: Prediction, best: float | None, is_winner: bool) -> str:
    if best is None:
        return ""
    if is_winner:
        return "1.00×"
    return _speedup(prediction, best) if prediction.feasible else "— (OOM)"


def _memory_cell(prediction: Prediction) -> str:
    if not prediction.feasible:
        worst = max(m.over_by for m in prediction.shortfalls)
        return _tag("td", {"class": "oom", "data-over-bytes": worst}, _e(f"OOM: {_shortfall(prediction)}"))
    text = "fits"
    if prediction.memory:
        tight = min(prediction.memory, key=lambda m: m.limit - m.total)
        used = f"{format_bytes(tight.total)} / {format_bytes(tight.limit)}"
        text += f" (tightest {device_label(tight.device)}: {used})"
    return _tag("td", {"class": "fits"}, _e(text))


def _measured_cells(candidate: Candidate) -> list[str]:
    if candidate.measure_error:
        failed = _tag("td", {"class": "measure-failed"}, _e(candidate.measure_error))
        return [failed, '<td class="num error"></td>']
    measured = candidate.measured_s
    if measured is None:
        return ['<td class="num measured"></td>', '<td class="num error"></td>']
    cells = [_seconds_cell("measured", measured)]
    if candidate.prediction is None or measured <= 0:
        return [*cells, '<td class="num error"></td>']
    error = (candidate.prediction.latency_s - measured) / measured * 100
    return [*cells, _tag("td", {"class": "num error", "data-percent": f"{error:.2f}"}, f"{error:+.1f}%")]


def _speedup(prediction: Prediction, best: float) -> str:
    return f"{prediction.latency_s / best:.2f}×" if best > 0 else ""


def _shortfall(prediction: Prediction) -> str:
    return "; ".join(
        f"{device_label(m.device)} over by {format_bytes(m.over_by)}" for m in prediction.shortfalls
    )


def _placement_summary(device_map: DeviceMap) -> str:
    counts: dict[str, int] = {}
    for _, place in device_map.placements:
        counts[place] = counts.get(place, 0) + 1
    return " · ".join(f"{device_label(place)}×{count}" for place, count in _by_device(counts))


# --------------------------------------------------------------------------------------------
# placement diagram


def _placements(run: Run, auto: Candidate | None, order: list[str], graph: ModelGraph | None) -> str:
    shown = _shown(run, auto)
    if not shown:
        return _empty_section(
            "placement", "Placement", "No map to show: the run has neither a winner nor auto."
        )
    devices = _sorted_devices(
        {place for _, candidate in shown for _, place in candidate.device_map.placements}
        | {key for key in run.max_memory if key not in run.exclude}
    )
    sizes = {unit.name: unit.bytes for unit in graph.units} if graph is not None else {}
    figures = []
    for role, candidate in shown:
        units = _ordered(candidate.device_map, order)
        svg = _placement_svg(role, candidate.device_map, units, devices, sizes, dict(run.pins))
        figures.append(
            _tag(
                "figure",
                {"class": "placement", "data-candidate": role},
                f"<figcaption>{_e(_caption(role, candidate))}</figcaption>{svg}"
                + _placement_list(candidate.device_map, units),
            )
        )
    return (
        '<section id="placement" class="section">\n<h2>Placement</h2>\n'
        '<p class="note">One row per device, one block per unit in execution order. Hatched blocks are '
        "offloaded: their weights live on cpu or disk and are copied to the main device on every forward. "
        "A dark bar above a block marks a pinned unit.</p>\n"
        f"{_legend([(device_label(d), _colour(d)) for d in devices])}{''.join(figures)}</section>\n"
    )


def _placement_svg(
    role: str,
    device_map: DeviceMap,
    units: list[str],
    devices: list[str],
    sizes: dict[str, int],
    pins: dict[str, str],
) -> str:
    left, right, row_h, gap, top = 80, 10, 28, 8, 8
    placed = dict(device_map.placements)
    plot = _WIDTH - left - right
    column = plot / max(len(units), 1)
    rows = {device: top + index * (row_h + gap) for index, device in enumerate(devices)}
    axis_y = top + len(devices) * (row_h + gap)
    main = device_map.main_device
    out = [_svg_open("chart placement", axis_y + 30, {"data-candidate": role, "data-units": len(units)})]
    for device, y in rows.items():
        out.append(_tag("rect", {"class": "lane", "x": left, "y": y, "width": plot, "height": row_h}))
        out.append(_lane_label(left, y, row_h, device_label(device)))
    inset = 1.0 if column > 4 else 0.0
    width = max(column - inset, 0.5)
    for index, unit in enumerate(units):
        place = placed[unit]
        offloaded = place in OFFLOAD and place != main
        execution = main if offloaded else place
        tip = f"#{index} {unit} on {device_label(place)}"
        if offloaded:
            tip += f", runs on {device_label(execution)} (weights copied in on every forward)"
        if unit in sizes:
            tip += f", {format_bytes(sizes[unit])}"
        if unit in pins:
            tip += f", pinned to {device_label(pins[unit])}"
        x = left + index * column + inset / 2
        attrs: dict[str, object] = {
            "class": "unit offloaded" if offloaded else "unit",
            "data-unit": unit,
            "data-device": place,
            "data-exec": execution,
            "data-index": index,
            "x": _n(x),
            "y": rows[place],
            "width": _n(width),
            "height": row_h,
            "fill": f"url(#hatch-{role}-{place})" if offloaded else _colour(place),
        }
        out.append(_tag("rect", attrs, _title(tip)))
        if unit in pins:
            pin = {"class": "pin", "data-unit": unit, "x": _n(x), "y": rows[place] - 4, "width": _n(width)}
            out.append(_tag("rect", {**pin, "height": 3, "fill": "#222"}))
    out.append(_run_labels(units, placed, rows, left, column, row_h))
    out.append(_hatches(role, [d for d in devices if d in OFFLOAD]))
    out.append(_index_axis(len(units), left, column, axis_y))
    out.append("</svg>")
    return "".join(out)


def _runs(units: list[str], placed: dict[str, str]) -> list[tuple[int, int]]:
    """(start, end) of each stretch of consecutive units on one device."""
    stretches = []
    start = 0
    for end in range(1, len(units) + 1):
        if end == len(units) or placed[units[end]] != placed[units[start]]:
            stretches.append((start, end))
            start = end
    return stretches


def _run_labels(
    units: list[str], placed: dict[str, str], rows: dict[str, int], left: float, column: float, row_h: int
) -> str:
    """A label on each stretch of units on one device, where one fits."""
    out = []
    for start, end in _runs(units, placed):
        first, last = _short(units[start]), _short(units[end - 1])
        width = (end - start) * column
        for text in (first if end == start + 1 else f"{first} – {last}", f"{end - start} units"):
            if len(text) * 6.2 + 8 <= width:
                y = rows[placed[units[start]]] + row_h / 2 + 4
                attrs = {"class": "run-label", "x": _n(left + start * column + width / 2), "y": y}
                out.append(_tag("text", {**attrs, "text-anchor": "middle"}, _e(text)))
                break
    return "".join(out)


def _hatches(role: str, devices: list[str]) -> str:
    patterns = "".join(
        _tag(
            "pattern",
            {
                "id": f"hatch-{role}-{device}",
                "patternUnits": "userSpaceOnUse",
                "width": 6,
                "height": 6,
                "patternTransform": "rotate(45)",
            },
            f'<rect width="6" height="6" fill="{_colour(device)}"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2.5"/>',
        )
        for device in devices
    )
    return f"<defs>{patterns}</defs>" if patterns else ""


def _index_axis(count: int, left: float, column: float, y: float) -> str:
    step = max(int(_nice_step(count / 12)), 1)
    ticks = []
    for index in range(0, count, step):
        x = _n(left + (index + 0.5) * column)
        ticks.append(f'<line x1="{x}" y1="{y - 4}" x2="{x}" y2="{y}" stroke="#888"/>')
        ticks.append(f'<text class="tick" x="{x}" y="{y + 12}" text-anchor="middle">{index}</text>')
    title = f'<text class="axis-title" x="{left}" y="{y + 26}">unit, in execution order →</text>'
    return f'<g class="axis">{"".join(ticks)}{title}</g>'


def _placement_list(device_map: DeviceMap, units: list[str]) -> str:
    """The same map as text: consecutive units on one device folded into one line."""
    placed = dict(device_map.placements)
    items = []
    for start, end in _runs(units, placed):
        count = end - start
        shown = units[start] if count == 1 else f"{units[start]} .. {units[end - 1]} ({count} units)"
        items.append(f"<li><b>{_e(device_label(placed[units[start]]))}</b> {_e(shown)}</li>")
    return f'<details class="placement-list"><summary>as text</summary><ul>{"".join(items)}</ul></details>'


# --------------------------------------------------------------------------------------------
# memory per device


def _memory(run: Run, auto: Candidate | None) -> str:
    shown = [
        (role, candidate, candidate.prediction)
        for role, candidate in _shown(run, auto)
        if candidate.prediction is not None and candidate.prediction.memory
    ]
    if not shown:
        return _empty_section("memory", "Memory per device", "No priced map to show.")
    scales: dict[str, float] = {}
    for _, _, prediction in shown:
        for memory in prediction.memory:
            scales[memory.device] = max(scales.get(memory.device, 0.0), memory.total, memory.limit)
    figures = []
    for role, candidate, prediction in shown:
        caption = f"{_caption(role, candidate)}: {'fits' if prediction.feasible else 'OOM'}"
        figures.append(
            _tag(
                "figure",
                {"class": "memory", "data-candidate": role},
                f"<figcaption>{_e(caption)}</figcaption>{_memory_svg(role, prediction.memory, scales)}",
            )
        )
    legend = _legend([(label, colour) for _, label, colour in MEMORY_PARTS] + [("limit", "#000")])
    return (
        '<section id="memory" class="section">\n<h2>Memory per device</h2>\n'
        '<p class="note">Predicted peak on each device, by what holds it, against its limit (black line). '
        "Each device has its own scale, shared by the maps shown.</p>\n"
        f"{legend}{''.join(figures)}</section>\n"
    )


def _memory_svg(role: str, memory: tuple[DeviceMemory, ...], scales: dict[str, float]) -> str:
    left, right, row_h, gap, top = 80, 250, 22, 10, 8
    bar = _WIDTH - left - right
    out = [_svg_open("chart memory", top + len(memory) * (row_h + gap), {"data-candidate": role})]
    for index, device in enumerate(sorted(memory, key=lambda m: device_order(m.device))):
        y = top + index * (row_h + gap)
        scale = bar / scales[device.device] if scales.get(device.device) else 0.0
        out.append(_tag("rect", {"class": "lane", "x": left, "y": y, "width": bar, "height": row_h}))
        out.append(_lane_label(left, y, row_h, device_label(device.device)))
        x = float(left)
        for attribute, label, colour in MEMORY_PARTS:
            size = int(getattr(device, attribute))
            if size <= 0:
                continue
            attrs = {"class": "mem", "data-device": device.device, "data-part": attribute, "data-bytes": size}
            shape = {"x": _n(x), "y": y, "width": _n(max(size * scale, 0.5)), "height": row_h, "fill": colour}
            tip = f"{label} on {device_label(device.device)}: {format_bytes(size)}"
            out.append(_tag("rect", {**attrs, **shape}, _title(tip)))
            x += size * scale
        limit_x = _n(left + device.limit * scale)
        attrs = {"class": "limit", "data-device": device.device, "data-bytes": device.limit}
        line = {
            "x1": limit_x,
            "y1": y - 3,
            "x2": limit_x,
            "y2": y + row_h + 3,
            "stroke": "#000",
            "stroke-width": 2,
        }
        tip = f"limit of {device_label(device.device)}: {format_bytes(device.limit)}"
        out.append(_tag("line", {**attrs, **line}, _title(tip)))
        text = _e(f"{format_bytes(device.total)} / {format_bytes(device.limit)}")
        if not device.fits:
            text += f' <tspan class="over">over by {_e(format_bytes(device.over_by))}</tspan>'
        position = {"x": _WIDTH - right + 10, "y": y + row_h / 2 + 4}
        out.append(_tag("text", {"class": "mem-total", "data-device": device.device, **position}, text))
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# per-unit time and memory


def _units(graph: ModelGraph | None, profiles: Sequence[UnitProfile]) -> str:
    if graph is None and not profiles:
        return _empty_section("units", "Per unit", "No model profile was given: `tuner profile` makes one.")
    names = list(graph.unit_names) if graph is not None else []
    names += [name for name in dict.fromkeys(p.unit for p in profiles) if name not in set(names)]
    devices = _sorted_devices({p.device for p in profiles})
    phases = [phase for phase in (Phase.PREFILL, Phase.DECODE) if any(p.phase is phase for p in profiles)]
    weights = {unit.name: unit.bytes for unit in graph.units} if graph is not None else {}
    activation = dict.fromkeys(names, 0)
    for profile in profiles:
        if profile.phase is Phase.PREFILL:
            activation[profile.unit] = max(activation[profile.unit], profile.activation_peak_bytes)
    name_w, gap, top = 200, 14, 22
    panel_w = (_WIDTH - name_w - gap * (len(phases) + 1)) / (len(phases) + 1)
    row_h = max(14, 4 + 6 * max(len(devices), 1))
    out = [_svg_open("chart units", top + len(names) * row_h + 6, {"data-units": len(names)})]
    x0 = float(name_w + gap)
    for phase in phases:
        out.append(_time_panel(phase, names, devices, profiles, (x0, top, panel_w, row_h)))
        x0 += panel_w + gap
    peak = max((weights.get(name, 0) + activation[name] for name in names), default=0)
    out.append(_panel_title(x0, f"memory (max {format_bytes(peak)})"))
    scale = panel_w / peak if peak > 0 else 0.0
    for row, name in enumerate(names):
        x = x0
        parts = (
            ("weights", "weights", weights.get(name, 0), _WEIGHTS_COLOUR),
            ("activation", "activation peak (prefill)", activation[name], _ACTIVATION_COLOUR),
        )
        for part, label, size, colour in parts:
            if size <= 0:
                continue
            attrs = {"class": "unit-mem", "data-unit": name, "data-part": part, "data-bytes": size}
            shape = {"x": _n(x), "y": top + row * row_h + 2, "width": _n(max(size * scale, 0.5))}
            tip = f"{name}: {label} {format_bytes(size)}"
            out.append(_tag("rect", {**attrs, **shape, "height": row_h - 4, "fill": colour}, _title(tip)))
            x += size * scale
    for row, name in enumerate(names):
        attrs = {
            "class": "unit-name",
            "data-unit": name,
            "x": name_w - 4,
            "y": _n(top + row * row_h + row_h / 2 + 4),
        }
        out.append(_tag("text", {**attrs, "text-anchor": "end"}, _e(_clip(name, 32)) + _title(name)))
    out.append("</svg>")
    legend = _legend(
        [(device_label(d), _colour(d)) for d in devices]
        + [("weights", _WEIGHTS_COLOUR), ("activation peak (prefill)", _ACTIVATION_COLOUR)]
    )
    return (
        '<section id="units" class="section">\n<h2>Per unit</h2>\n'
        '<p class="note">Forward time of each unit per phase, one bar per compute device measured, and what '
        "it needs in memory: its weights and the peak of its activations.</p>\n"
        f"{legend}{''.join(out)}</section>\n"
    )


def _time_panel(
    phase: Phase,
    names: list[str],
    devices: list[str],
    profiles: Sequence[UnitProfile],
    box: tuple[float, int, float, int],
) -> str:
    x0, top, panel_w, row_h = box
    index = {(p.unit, p.device): p for p in profiles if p.phase is phase}
    peak = max((p.time_s for p in index.values()), default=0.0)
    scale = panel_w / peak if peak > 0 else 0.0
    out = [_panel_title(x0, f"{phase.value} time (max {format_seconds(peak)})")]
    for row, name in enumerate(names):
        for lane, device in enumerate(devices):
            measured = index.get((name, device))
            if measured is None:
                continue
            tip = f"{name} on {device_label(device)}, {phase.value}: {format_seconds(measured.time_s)}"
            if measured.shared:
                tip += f" (measured as {measured.measured_as})"
            attrs = {
                "class": "unit-time",
                "data-unit": name,
                "data-device": device,
                "data-phase": phase.value,
                "data-seconds": repr(measured.time_s),
            }
            y = top + row * row_h + 2 + lane * 6
            shape = {"x": _n(x0), "y": y, "width": _n(max(measured.time_s * scale, 0.5)), "height": 5}
            out.append(_tag("rect", {**attrs, **shape, "fill": _colour(device)}, _title(tip)))
    return "".join(out)


def _panel_title(x: float, text: str) -> str:
    return _tag("text", {"class": "panel-title", "x": _n(x), "y": 14}, _e(text))


# --------------------------------------------------------------------------------------------
# optimization history


def _history(run: Run, candidates: Sequence[Candidate]) -> str:
    trials = sorted((c for c in candidates if c.trial is not None), key=lambda c: c.trial or 0)
    if not trials:
        return _empty_section("history", "Search history", "No Optuna trial is stored for this run.")
    left, right, top, bottom, height = 92, 104, 14, 40, 320
    box = (left, top, _WIDTH - left - right, height - top - bottom)
    references = [
        (name, c.prediction)
        for name in ("exact", "auto")
        if (c := _find(run.baselines, name)) is not None and c.prediction is not None
    ]
    values = [c.prediction.latency_s for c in trials if c.prediction is not None]
    values += [prediction.latency_s for _, prediction in references]
    values = [v for v in values if math.isfinite(v) and v > 0] or [1.0]
    lo, hi = min(values), max(values)
    log = hi / lo > 20
    y_of = _y_scale(lo, hi, log, box)
    numbers = [c.trial or 0 for c in trials]
    first, last = min(numbers), max(numbers)

    def x_of(number: float) -> float:
        # a margin of 2% on both sides keeps the first and last trial off the frame
        return left + box[2] * (0.02 + 0.96 * (number - first) / (last - first) if last > first else 0.5)

    scale = "log" if log else "linear"
    out = [_svg_open("chart history", height, {"data-trials": len(trials), "data-scale": scale})]
    out.append(_history_axes(lo, hi, log, y_of, (first, last), x_of, box))
    for name, prediction in references:
        out.append(_reference_line(name, prediction, y_of(prediction.latency_s), box))
    out.append(_trial_marks(trials, x_of, y_of, top))
    out.append("</svg>")
    feasible = sum(1 for c in trials if c.prediction is not None and c.prediction.feasible)
    legend = _legend(
        [
            ("feasible trial ●", _FEASIBLE_COLOUR),
            ("infeasible trial (OOM) ×", _INFEASIBLE_COLOUR),
            ("best so far", _BEST_COLOUR),
            ("exact optimum, auto", _BASELINE_COLOUR),
        ]
    )
    note = f"{len(trials)} trials stored, {feasible} feasible: the predicted generate latency of each"
    return (
        '<section id="history" class="section">\n<h2>Search history</h2>\n'
        f'<p class="note">{_e(note)}{" (log scale)" if log else ""}.</p>\n'
        f"{legend}{''.join(out)}</section>\n"
    )


def _trial_marks(
    trials: list[Candidate], x_of: Callable[[float], float], y_of: Callable[[float], float], top: float
) -> str:
    """A dot per feasible trial, a cross per infeasible one, the best-so-far step line."""
    out = []
    best = math.inf
    steps: list[tuple[float, float]] = []
    for candidate in trials:
        number = candidate.trial or 0
        x = x_of(number)
        prediction = candidate.prediction
        if prediction is None or not math.isfinite(prediction.latency_s):
            shape = f"M{_n(x - 4)},{top} L{_n(x + 4)},{top} L{_n(x)},{top + 7} Z"
            attrs = {"class": "trial unpriced", "data-trial": number, "d": shape, "fill": "#999"}
            out.append(_tag("path", attrs, _title(f"trial {number}: not priced")))
            continue
        latency = prediction.latency_s
        y = y_of(latency)
        tip = f"trial {number}: {format_seconds(latency)}"
        if prediction.feasible:
            attrs = {"class": "trial feasible", "data-trial": number, "data-seconds": repr(latency)}
            dot = {"cx": _n(x), "cy": _n(y), "r": 3.5, "fill": _FEASIBLE_COLOUR}
            out.append(_tag("circle", {**attrs, **dot}, _title(tip)))
            if latency < best:
                if steps:
                    steps.append((x, y_of(best)))
                best = latency
                steps.append((x, y))
        else:
            left, right, up, down = _n(x - 3.5), _n(x + 3.5), _n(y - 3.5), _n(y + 3.5)
            cross = f"M{left},{up} L{right},{down} M{left},{down} L{right},{up}"
            attrs = {
                "class": "trial infeasible",
                "data-trial": number,
                "data-seconds": repr(latency),
                "d": cross,
            }
            style = {"stroke": _INFEASIBLE_COLOUR, "stroke-width": 1.6, "fill": "none"}
            out.append(_tag("path", {**attrs, **style}, _title(f"{tip}, OOM: {_shortfall(prediction)}")))
    if steps:
        points = " ".join(
            f"{_n(x)},{_n(y)}" for x, y in [*steps, (x_of(trials[-1].trial or 0), steps[-1][1])]
        )
        attrs = {"class": "best-so-far", "data-best": repr(best), "points": points, "fill": "none"}
        tip = f"best so far: {format_seconds(best)}"
        out.append(_tag("polyline", {**attrs, "stroke": _BEST_COLOUR, "stroke-width": 2}, _title(tip)))
    return "".join(out)


def _reference_line(
    name: str, prediction: Prediction, y: float, box: tuple[float, float, float, float]
) -> str:
    left, _, plot_w, _ = box
    label = name if prediction.feasible else f"{name} (OOM)"
    attrs = {"class": "baseline", "data-baseline": name, "data-seconds": repr(prediction.latency_s)}
    line = {"x1": left, "y1": _n(y), "x2": left + plot_w, "y2": _n(y), "stroke": _BASELINE_COLOUR}
    tip = _title(f"{label}: {format_seconds(prediction.latency_s)}")
    text = {"class": "baseline-label", "x": left + plot_w + 6, "y": _n(y + 4)}
    return _tag("line", {**attrs, **line, "stroke-dasharray": "5 4"}, tip) + _tag("text", text, _e(label))


def _y_scale(
    lo: float, hi: float, log: bool, box: tuple[float, float, float, float]
) -> Callable[[float], float]:
    _, top, _, plot_h = box
    if log:
        a, b = math.log10(lo) - 0.05, math.log10(hi) + 0.05
        return lambda v: top + (b - math.log10(max(v, lo))) / (b - a) * plot_h
    pad = (hi - lo) * 0.08 or hi * 0.1 or 1.0
    a, b = max(lo - pad, 0.0), hi + pad
    return lambda v: top + (b - v) / (b - a) * plot_h


def _history_axes(
    lo: float,
    hi: float,
    log: bool,
    y_of: Callable[[float], float],
    span: tuple[int, int],
    x_of: Callable[[float], float],
    box: tuple[float, float, float, float],
) -> str:
    left, top, plot_w, plot_h = box
    out = [_tag("rect", {"class": "plot", "x": left, "y": top, "width": plot_w, "height": plot_h})]
    for value in _y_ticks(lo, hi, log):
        y = y_of(value)
        if top - 0.5 <= y <= top + plot_h + 0.5:
            out.append(f'<line class="grid" x1="{left}" y1="{_n(y)}" x2="{left + plot_w}" y2="{_n(y)}"/>')
            label = {"class": "tick", "x": left - 6, "y": _n(y + 4), "text-anchor": "end"}
            out.append(_tag("text", label, _e(format_seconds(value))))
    first, last = span
    step = max(int(_nice_step((last - first) / 10)), 1)
    for number in range(first + (-first) % step, last + 1, step):
        label = {"class": "tick", "x": _n(x_of(number)), "y": top + plot_h + 14, "text-anchor": "middle"}
        out.append(_tag("text", label, str(number)))
    middle = top + plot_h / 2
    out.append(_tag("text", {"class": "axis-title", "x": left + plot_w / 2, "y": top + plot_h + 32}, "trial"))
    rotate = {"transform": f"rotate(-90 12 {middle})", "text-anchor": "middle"}
    out.append(_tag("text", {"class": "axis-title", "x": 12, "y": middle, **rotate}, "generate latency"))
    return "".join(out)


def _y_ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        ticks = [
            mantissa * 10.0**exponent
            for exponent in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for mantissa in (1, 2, 5)
        ]
        return [t for t in ticks if lo / 1.15 <= t <= hi * 1.15]
    step = _nice_step((hi - lo) / 5 or hi / 5 or 1.0)
    start = math.floor(max(lo - (hi - lo) * 0.08, 0.0) / step) * step
    return [start + k * step for k in range(12) if start + k * step <= hi * 1.1]


# --------------------------------------------------------------------------------------------
# small helpers


def _shown(run: Run, auto: Candidate | None) -> list[tuple[str, Candidate]]:
    """The maps the diagrams show, by role: the winner and accelerate's `auto`."""
    shown = []
    if run.winner is not None:
        shown.append(("winner", run.winner))
    if auto is not None:
        shown.append(("auto", auto))
    return shown


def _caption(role: str, candidate: Candidate) -> str:
    return f"winner ({candidate.name})" if role == "winner" else "accelerate's auto"


def _find(candidates: Iterable[Candidate], name: str) -> Candidate | None:
    return next((c for c in candidates if c.name == name), None)


def _unit_order(
    run: Run, auto: Candidate | None, graph: ModelGraph | None, profiles: Sequence[UnitProfile]
) -> list[str]:
    """Units in execution order: the graph's when given, else as the maps list them."""
    if graph is not None:
        return list(graph.unit_names)
    names: dict[str, None] = {}
    for _, candidate in _shown(run, auto):
        names.update(dict.fromkeys(unit for unit, _ in candidate.device_map.placements))
    names.update(dict.fromkeys(p.unit for p in profiles))
    return list(names)


def _ordered(device_map: DeviceMap, order: list[str]) -> list[str]:
    placed = dict(device_map.placements)
    known = set(order)
    return [u for u in order if u in placed] + [u for u, _ in device_map.placements if u not in known]


def _sorted_devices(keys: Iterable[str]) -> list[str]:
    return sorted(set(keys), key=device_order)


def _by_device(mapping: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(mapping.items(), key=lambda item: device_order(item[0]))


def _colour(key: str) -> str:
    if is_gpu(key):
        return _GPU_COLOURS[int(key) % len(_GPU_COLOURS)]
    return _OTHER_COLOURS.get(key, "#7f7f7f")


def _short(unit: str) -> str:
    return unit.removeprefix("model.") or unit


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else "…" + text[-(size - 1) :]


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least `raw`."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-12))


def _n(value: float) -> str:
    """A coordinate, short and stable."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _lane_label(left: float, y: float, row_h: float, text: str) -> str:
    attrs = {"class": "lane-label", "x": left - 8, "y": _n(y + row_h / 2 + 4), "text-anchor": "end"}
    return _tag("text", attrs, _e(text))


def _legend(entries: list[tuple[str, str]]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{_e(colour)}"></span>{_e(label)}</li>'
        for label, colour in entries
    )
    return f'<ul class="legend">{items}</ul>'


def _svg_open(classes: str, height: float, attrs: Attrs) -> str:
    size = {"viewBox": f"0 0 {_WIDTH} {height:.0f}", "width": _WIDTH, "height": f"{height:.0f}"}
    return _open(
        "svg", {"class": classes, **attrs, "xmlns": "http://www.w3.org/2000/svg", **size, "role": "img"}
    )


def _empty_section(ident: str, title: str, message: str) -> str:
    return (
        f'<section id="{ident}" class="section">\n<h2>{_e(title)}</h2>\n'
        f'<p class="empty">{_e(message)}</p>\n</section>\n'
    )


def _tag(name: str, attrs: Attrs, content: str | None = None) -> str:
    """An element with escaped attribute values; `content` is markup, already escaped."""
    if content is None and name in {"rect", "line", "circle", "path", "polyline"}:
        return _open(name, attrs)[:-1] + "/>"
    return f"{_open(name, attrs)}{content or ''}</{name}>"


def _open(name: str, attrs: Attrs) -> str:
    return f"<{name}" + "".join(f' {key}="{_e(value)}"' for key, value in attrs.items()) + ">"


def _title(text: str) -> str:
    """An SVG tooltip."""
    return f"<title>{_e(text)}</title>"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_CSS = "".join(
    [
        "body{margin:0;background:#fff;color:#222;font-size:14px;line-height:1.45;",
        "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}",
        "main{max-width:1000px;margin:0 auto;padding:16px 20px 40px}",
        "h1{font-size:22px;margin:8px 0 12px;overflow-wrap:anywhere}h2{font-size:18px;margin:0 0 8px}",
        ".section{margin:0 0 28px}",
        ".facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0 0 10px}",
        ".facts dt{color:#555}.facts dd{margin:0;overflow-wrap:anywhere}",
        ".dim,.note{color:#666}.note{margin:0 0 8px}.empty{color:#888;font-style:italic}",
        ".verdict{background:#f3f7fb;border-left:4px solid #1f77b4;padding:8px 12px;margin:8px 0}",
        ".banner{background:#fff4e5;border-left:4px solid #ff7f0e;padding:8px 12px}",
        "table.comparison{border-collapse:collapse;width:100%;font-size:13px}",
        ".comparison th,.comparison td{border-bottom:1px solid #e4e4e4;padding:4px 6px;text-align:left}",
        ".comparison th{background:#f4f4f4;cursor:help;vertical-align:bottom}",
        ".comparison td.num{text-align:right;white-space:nowrap}",
        ".comparison tr.winner{font-weight:bold;background:#f0f8ec}",
        ".comparison tr.oom td.generate{color:#999}.comparison td.oom{color:#c00}",
        ".comparison td.fits{color:#2a7a2a}.comparison td.measure-failed{color:#c00}",
        "figure{margin:8px 0 16px}figcaption{font-weight:600;margin:0 0 4px}",
        "svg.chart{display:block;max-width:100%;height:auto;font-size:11px}",
        "svg.chart text{fill:#333}svg.chart text.run-label{fill:#fff;font-size:10px;pointer-events:none;",
        "paint-order:stroke;stroke:rgba(0,0,0,.35);stroke-width:2px}",
        "svg.chart text.panel-title,svg.chart text.axis-title{fill:#555}",
        "svg.chart .lane{fill:#f4f4f4}svg.chart .plot{fill:#fafafa;stroke:#ccc}",
        "svg.chart .grid{stroke:#e4e4e4}svg.chart .over{fill:#c00;font-weight:bold}",
        "svg.chart .hl{stroke:#000;stroke-width:2px}",
        ".legend{list-style:none;padding:0;margin:0 0 6px;display:flex;flex-wrap:wrap;gap:4px 14px;",
        "font-size:12px}",
        ".legend .swatch{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px}",
        ".placement-list{font-size:12px;color:#444}.placement-list ul{margin:4px 0;padding-left:18px}",
    ]
)

# Hovering any element of a unit outlines that unit in every chart.
_SCRIPT = (
    "document.addEventListener('mouseover',function(e){"
    "var t=e.target.closest?e.target.closest('[data-unit]'):null;"
    "document.querySelectorAll('.hl').forEach(function(n){n.classList.remove('hl')});"
    "if(!t)return;var u=t.getAttribute('data-unit');"
    "document.querySelectorAll('[data-unit]').forEach(function(n){"
    "if(n.getAttribute('data-unit')===u)n.classList.add('hl')})});"
)

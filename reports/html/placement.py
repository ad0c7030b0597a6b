"""The placement diagram of the winner and of accelerate's `auto`: one lane per device, one block
per unit in execution order, offloaded units hatched, pinned ones marked; and the same map as text."""

from __future__ import annotations

from reports.html.markup import _e
from reports.html.markup import _empty_section
from reports.html.markup import _tag
from reports.html.runs import _caption
from reports.html.runs import _shown
from reports.html.runs import _sorted_devices
from reports.html.svg import _WIDTH
from reports.html.svg import _colour
from reports.html.svg import _lane_label
from reports.html.svg import _legend
from reports.html.svg import _n
from reports.html.svg import _nice_step
from reports.html.svg import _svg_open
from reports.html.svg import _title
from tuner.core.devices import OFFLOAD
from tuner.core.devices import device_label
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import ModelGraph
from tuner.core.domain import Run
from tuner.core.sizes import format_bytes

__all__ = ["placement_section"]


def placement_section(run: Run, auto: Candidate | None, graph: ModelGraph | None) -> str:
    """The winner's and `auto`'s maps, drawn in the graph's execution order when it is given."""
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
    order = _unit_order(run, auto, graph)
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


def _unit_order(run: Run, auto: Candidate | None, graph: ModelGraph | None) -> list[str]:
    """Units in execution order: the graph's when given, else as the maps list them."""
    if graph is not None:
        return list(graph.unit_names)
    names: dict[str, None] = {}
    for _, candidate in _shown(run, auto):
        names.update(dict.fromkeys(unit for unit, _ in candidate.device_map.placements))
    return list(names)


def _ordered(device_map: DeviceMap, order: list[str]) -> list[str]:
    placed = dict(device_map.placements)
    known = set(order)
    return [u for u in order if u in placed] + [u for u, _ in device_map.placements if u not in known]


def _short(unit: str) -> str:
    return unit.removeprefix("model.") or unit

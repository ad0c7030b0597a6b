"""Memory per device for the winner and accelerate's `auto`: each device's predicted peak, stacked
by what holds it (`MEMORY_PARTS`), against its limit."""

from __future__ import annotations

from reports.html.markup import _e
from reports.html.markup import _empty_section
from reports.html.markup import _tag
from reports.html.runs import _caption
from reports.html.runs import _shown
from reports.html.svg import _WIDTH
from reports.html.svg import MEMORY_PARTS
from reports.html.svg import _lane_label
from reports.html.svg import _legend
from reports.html.svg import _n
from reports.html.svg import _svg_open
from reports.html.svg import _title
from tuner.core.devices import device_label
from tuner.core.devices import device_order
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMemory
from tuner.core.domain import Run
from tuner.core.sizes import format_bytes

__all__ = ["memory_section"]


def memory_section(run: Run, auto: Candidate | None) -> str:
    """A bar per device for each priced map shown; a device keeps one scale across the maps."""
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

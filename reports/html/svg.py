"""What the charts share: the width, the colours, coordinates, scales and ticks, legends, lanes.

Colours are chosen here once so that a device, or a part of memory, has the same colour in every
chart and in its legend.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from reports.html.markup import Attrs
from reports.html.markup import _e
from reports.html.markup import _open
from reports.html.markup import _tag
from tuner.core.devices import is_gpu

__all__ = ["MEMORY_PARTS"]

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

#: Width of every chart in SVG user units; the page scales charts down on narrow screens.
_WIDTH = 960


def _colour(key: str) -> str:
    if is_gpu(key):
        return _GPU_COLOURS[int(key) % len(_GPU_COLOURS)]
    return _OTHER_COLOURS.get(key, "#7f7f7f")


def _n(value: float) -> str:
    """A coordinate, short and stable."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least `raw`."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-12))


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


def _svg_open(classes: str, height: float, attrs: Attrs) -> str:
    size = {"viewBox": f"0 0 {_WIDTH} {height:.0f}", "width": _WIDTH, "height": f"{height:.0f}"}
    return _open(
        "svg", {"class": classes, **attrs, "xmlns": "http://www.w3.org/2000/svg", **size, "role": "img"}
    )


def _lane_label(left: float, y: float, row_h: float, text: str) -> str:
    attrs = {"class": "lane-label", "x": left - 8, "y": _n(y + row_h / 2 + 4), "text-anchor": "end"}
    return _tag("text", attrs, _e(text))


def _legend(entries: list[tuple[str, str]]) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{_e(colour)}"></span>{_e(label)}</li>'
        for label, colour in entries
    )
    return f'<ul class="legend">{items}</ul>'


def _title(text: str) -> str:
    """An SVG tooltip."""
    return f"<title>{_e(text)}</title>"

"""The search history: the predicted generate latency of every Optuna trial (a dot when it fits, a
cross when it does not), the best-so-far step line, and the exact optimum and `auto` for reference."""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence

from reports.html.markup import _e
from reports.html.markup import _empty_section
from reports.html.markup import _tag
from reports.html.runs import _find
from reports.html.runs import _shortfall
from reports.html.svg import _WIDTH
from reports.html.svg import _legend
from reports.html.svg import _n
from reports.html.svg import _nice_step
from reports.html.svg import _svg_open
from reports.html.svg import _title
from reports.html.svg import _y_scale
from reports.html.svg import _y_ticks
from reports.terminal import format_seconds
from tuner.core.domain import Candidate
from tuner.core.domain import Prediction
from tuner.core.domain import Run

__all__ = ["history_section"]

#: Only this chart uses these; the colours of devices and of memory parts are in `svg`.
_FEASIBLE_COLOUR = "#1f77b4"
_INFEASIBLE_COLOUR = "#d62728"
_BEST_COLOUR = "#2ca02c"
_BASELINE_COLOUR = "#777"


def history_section(run: Run, candidates: Sequence[Candidate]) -> str:
    """The trials in number order; a log scale when their latencies span more than 20x."""
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
    latency = "generate latency" if run.workload.new_tokens > 0 else "forward latency"
    out.append(_history_axes(lo, hi, log, y_of, (first, last), x_of, box, latency))
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
    note = f"{len(trials)} trials stored, {feasible} feasible: the predicted {latency} of each"
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


def _history_axes(
    lo: float,
    hi: float,
    log: bool,
    y_of: Callable[[float], float],
    span: tuple[int, int],
    x_of: Callable[[float], float],
    box: tuple[float, float, float, float],
    latency: str,
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
    out.append(_tag("text", {"class": "axis-title", "x": 12, "y": middle, **rotate}, latency))
    return "".join(out)

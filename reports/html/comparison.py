"""The table of candidates: the winner, accelerate's strategies, single devices and the exact
optimum, each with its predicted latency, speed-up, memory verdict and, where it was run, the measured
latency and the prediction's error."""

from __future__ import annotations

from collections.abc import Sequence

from reports.html.markup import _e
from reports.html.markup import _tag
from reports.html.runs import _by_device
from reports.html.runs import _shortfall
from reports.html.runs import _speedup
from reports.terminal import format_ratios
from reports.terminal import format_seconds
from tuner.core.devices import device_label
from tuner.core.domain import Candidate
from tuner.core.domain import DeviceMap
from tuner.core.domain import Prediction
from tuner.core.domain import Run
from tuner.core.sizes import format_bytes

__all__ = ["comparison_section"]

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

#: The columns of a generate call's phases: a forward-only run has one, the forward itself.
_PHASE_COLUMNS = ("prefill", "per token")
#: The columns a prediction fills, which an unpriced row's "not priced" spans.
_PRICED_COLUMNS = ("generate", "prefill", "per token", "winner's speed-up", "memory")
#: The headings and tips that say "generate" when nothing is generated: the latency is a forward's.
_FORWARD = {
    "generate": ("forward", "predicted latency of one forward pass (the prompt's)"),
    "measured": ("measured", "forward latency measured by loading and running the map, or why it failed"),
}


def comparison_section(run: Run, candidates: Sequence[Candidate]) -> str:
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
    columns = [
        (name, tip) if decoding else _FORWARD.get(name, (name, tip))
        for name, tip in _COLUMNS
        if _shown(name, decoding=decoding)
    ]
    head = "".join(_tag("th", {"title": tip}, _e(name)) for name, tip in columns)
    empty = f'<tr><td colspan="{len(columns)}" class="empty">no candidates stored</td></tr>'
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
    shown = f"{label} (breaks {candidate.breaks})" if candidate.breaks else label
    cells = [
        _tag("td", {"class": "name"}, _e(shown)),
        _tag("td", {"class": "placement"}, _e(_placement_summary(candidate.device_map))),
    ]
    if prediction is None:
        classes.append("unpriced")
        span = sum(_shown(name, decoding=decoding) for name in _PRICED_COLUMNS)
        cells.append(f'<td colspan="{span}" class="empty">not priced</td>')
    else:
        if not prediction.feasible:
            classes.append("oom")
        cells.append(_seconds_cell("generate", prediction.latency_s))
        if decoding:
            cells += [
                _seconds_cell("prefill", prediction.prefill.total_s),
                _seconds_cell("decode", prediction.decode.total_s),
            ]
        cells += [
            _tag("td", {"class": "num speedup"}, _e(_speedup_cell(candidate, best, is_winner))),
            _memory_cell(prediction),
        ]
    if candidate.measure_error:
        classes.append("measure-failed")
    cells += _measured_cells(candidate)
    return _tag("tr", {"class": " ".join(classes), "data-candidate": candidate.name}, "".join(cells))


def _shown(column: str, *, decoding: bool) -> bool:
    return decoding or column not in _PHASE_COLUMNS


def _seconds_cell(kind: str, seconds: float) -> str:
    return _tag("td", {"class": f"num {kind}", "data-seconds": repr(seconds)}, _e(format_seconds(seconds)))


def _speedup_cell(candidate: Candidate, best: float | None, is_winner: bool) -> str:
    prediction = candidate.prediction
    if best is None or prediction is None:
        return ""
    if is_winner:
        return "1.00×"
    if not prediction.feasible:
        return "— (OOM)"
    return "— (breaks the pins)" if candidate.breaks else _speedup(prediction, best)


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
    attributes = {"class": "num error", "data-percent": f"{error:.2f}"}
    if candidate.measured_prefill_s is not None:
        # per phase, what `optimize --calibrate` learns from
        attributes["title"] = f"measured over predicted: {format_ratios(candidate.phase_ratios)}"
        if candidate.measure_busy:
            attributes["title"] += f"; timed while the machine was busy ({candidate.measure_busy})"
    return [*cells, _tag("td", attributes, f"{error:+.1f}%")]


def _placement_summary(device_map: DeviceMap) -> str:
    counts: dict[str, int] = {}
    for _, place in device_map.placements:
        counts[place] = counts.get(place, 0) + 1
    return " · ".join(f"{device_label(place)}×{count}" for place, count in _by_device(counts))

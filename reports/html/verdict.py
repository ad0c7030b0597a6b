"""The verdict under the run's settings: the winner, its gap to the exact optimum, how accelerate's
`auto` fares, and what was measured for real."""

from __future__ import annotations

from reports.html.markup import _e
from reports.html.runs import _find
from reports.terminal import format_overrun
from reports.terminal import format_seconds
from tuner.core.domain import FITTED_AUTO
from tuner.core.domain import Run
from tuner.core.domain import RunStatus

__all__ = ["verdict"]


def verdict(run: Run) -> str:
    """One paragraph: the winner, its gap to the exact optimum, how accelerate's `auto` fares."""
    winner = run.winner
    if winner is None or winner.prediction is None:
        if run.status is RunStatus.COMPLETE:
            return '<p class="verdict">No feasible map was found: every candidate runs out of memory.</p>\n'
        return '<p class="verdict">No winner is stored yet.</p>\n'
    best = winner.prediction.latency_s
    call = "generate call" if run.workload.new_tokens > 0 else "forward"  # nothing generated: one forward
    parts = [f"Winner <b>{_e(winner.name)}</b>: {_e(format_seconds(best))} per {call}"]
    exact = _find(run.baselines, "exact")
    if exact is not None and exact.lower_bound_s is not None and exact.prediction is not None:
        # the solver's time limit came first: its map is the best it found, the bound is proven
        found, bound = exact.prediction.latency_s, exact.lower_bound_s
        within = (best - bound) / best * 100 if best > 0 else 0.0
        parts.append(
            f"the exact solver's best map in its time limit {_e(format_seconds(found))}, and none "
            f"faster than {_e(format_seconds(bound))}: the winner is within {within:.1f}% of the optimum"
        )
    elif exact is not None and exact.prediction is not None and exact.prediction.latency_s > 0:
        optimum = exact.prediction.latency_s
        gap = (best - optimum) / optimum * 100
        parts.append(f"exact optimum {_e(format_seconds(optimum))} (gap {gap:.1f}%)")
    auto = _find(run.baselines, "auto")
    if auto is not None and auto.prediction is not None:
        if auto.prediction.feasible:
            latency = format_seconds(auto.prediction.latency_s)
            if auto.breaks:
                parts.append(f"<code>auto</code> {_e(latency)}, but it breaks {_e(auto.breaks)}")
            else:
                parts.append(
                    f"<code>auto</code> {_e(latency)}, {_e(_slower(auto.prediction.latency_s, best))}"
                )
        else:
            overruns = " and ".join(format_overrun(memory) for memory in auto.prediction.shortfalls)
            parts.append(
                "<code>auto</code> runs out of memory: accelerate plans from weight bytes alone, and "
                + _e(overruns)
            )
            fitted = next((c for c in run.baselines if c.name.startswith(FITTED_AUTO)), None)
            if fitted is not None and fitted.prediction is not None:
                fitted_s = fitted.prediction.latency_s
                parts.append(
                    f"planned under limits lowered until it fits, <code>{_e(fitted.name)}</code> "
                    f"{_e(format_seconds(fitted_s))}, {_e(_slower(fitted_s, best))}"
                )
    if winner.measured_s is not None:
        measured = f"measured for real: the winner {_e(format_seconds(winner.measured_s))}"
        if auto is not None and auto.measured_s is not None:
            measured += f", <code>auto</code> {_e(format_seconds(auto.measured_s))}"
        parts.append(measured)
    return f'<p class="verdict">{"; ".join(parts)}.</p>\n'


def _slower(latency: float, best: float) -> str:
    """How much slower than the winner, in words a reader takes in: a percentage under 1.1x
    (0.5% reads better than 1.00x), a factor above."""
    if best <= 0 or latency <= best:
        return "as fast"
    ratio = latency / best
    return f"{(ratio - 1) * 100:.1f}% slower" if ratio < 1.1 else f"{ratio:.2f}× slower"

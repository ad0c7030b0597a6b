"""An exact optimum cut short by the solver's time limit shows its proven bound, in the terminal
and in the HTML report; a proven optimum shows as before."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from reports.html.verdict import verdict
from reports.terminal import format_seconds
from reports.terminal import price_table
from reports.terminal import run_tables
from tuner.core.domain import Candidate
from tuner.core.domain import PhaseCost
from tuner.core.domain import Run


def text(table: Table) -> str:
    console = Console(width=250, record=True)
    console.print(table)
    return console.export_text()


def with_exact(run: Run, bound_share: float | None) -> Run:
    """`run` complete, `auto` the winner, and an exact candidate on the same map; its lower bound
    `bound_share` of its latency (None: proven optimal)."""
    auto = run.baseline("auto")
    assert auto.prediction is not None
    bound = None if bound_share is None else auto.prediction.latency_s * bound_share
    exact = Candidate("exact", auto.device_map, auto.prediction, lower_bound_s=bound)
    return dataclasses.replace(run, baselines=(*run.baselines, exact), winner=auto)


def test_the_run_table_shows_the_bound_when_the_time_limit_came_first(run: Run) -> None:
    shown = text(run_tables(with_exact(run, 0.96))[0])
    assert "exact (≤4.0% above the optimum)" in shown
    assert "exact: the solver's time limit came first; no map of its class is faster than" in shown


def test_a_proven_optimum_shows_as_before(run: Run) -> None:
    shown = text(run_tables(with_exact(run, None))[0])
    assert "above the optimum" not in shown and "time limit" not in shown
    assert "exact optimum" in verdict(with_exact(run, None))


def test_the_price_table_shows_the_bound(run: Run) -> None:
    exact = with_exact(run, 0.9).baseline("exact")
    shown = text(price_table(run.baseline("auto"), [exact], model="toy", workload=run.workload.describe()))
    assert "exact (≤10.0% above the optimum)" in shown


def test_the_report_says_how_close_the_winner_is(run: Run) -> None:
    paragraph = verdict(with_exact(run, 0.96))
    assert "the exact solver's best map in its time limit 15.38 ms, and none faster than 14.77" in paragraph
    assert "the winner is within 4.0% of the optimum" in paragraph


def test_the_report_says_by_how_much_auto_is_slower_in_words_that_show_it(run: Run) -> None:
    """auto feasible and the winner: 'as fast'; 0.5% faster winner: a percentage, not '1.00x'; a
    winner twice as fast: a factor."""
    auto = run.baseline("auto")
    assert auto.prediction is not None and auto.prediction.feasible
    for share, words in ((1.0, "as fast"), (1 / 1.005, "0.5% slower"), (0.5, "2.00× slower")):
        prefill, decode = (
            PhaseCost(*(seconds * share for seconds in dataclasses.astuple(phase)))
            for phase in (auto.prediction.prefill, auto.prediction.decode)
        )
        prediction = dataclasses.replace(auto.prediction, prefill=prefill, decode=decode)
        winner = Candidate("trial 1", auto.device_map, prediction)
        paragraph = verdict(dataclasses.replace(run, winner=winner))
        assert f"<code>auto</code> {format_seconds(auto.prediction.latency_s)}, {words}" in paragraph

"""Search quality: how close Optuna gets to the exact optimum on its own (no seeds).

For every scenario of `benchmarks.scenarios` (a public model shape x a shipped hardware spec x a
workload x memory limits, priced on the meta device), `tuner.plan.search.search` runs with
``seeds=()`` and no named strategies, the way ``--no-seed`` does, in an in-memory study. The best
feasible latency after 100, 300 and 1000 trials is compared with `tuner.plan.exact.solve`'s optimum,
and the first trial within 1 % of it is reported. Then the search of llama-2-70b on 8 x H100 is
timed at 300 trials (target: under 30 s).

    python -m benchmarks.search_quality [--only SUBSTRING] [--trials 1000] [--repeats 1]

Writes benchmarks/results/search_quality.md. Prints figures; it is no test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from benchmarks.common import write_result
from benchmarks.scenarios import SCENARIOS
from benchmarks.scenarios import Scenario
from benchmarks.scenarios import prepare
from profiler.model import MetaModel
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import solve
from tuner.plan.search import search

CHECKPOINTS = (100, 300, 1000)
WITHIN = 0.01
TIMED_TRIALS = 300
TIMED_TARGET_S = 30.0


def best_so_far(model: CostModel, trials: int, seed: int) -> tuple[list[float], float]:
    """Best feasible latency after each trial of one unseeded search, and its wall time."""
    begin = time.perf_counter()
    result = search(model, storage=None, study_name=f"quality-{seed}", trials=trials, seed=seed)
    seconds = time.perf_counter() - begin
    best, curve = float("inf"), []
    for candidate in result.candidates:
        prediction = candidate.prediction
        if prediction is not None and prediction.feasible:
            best = min(best, prediction.latency_s)
        curve.append(best)
    return curve, seconds


def gap_cell(best: float, optimum: float) -> str:
    if best == float("inf"):
        return "none fits"
    return f"{100 * (best / optimum - 1):.2f} %"


def describe(scenario: Scenario) -> list[str]:
    return [
        f"{scenario.model} {scenario.dtype}",
        scenario.hardware,
        f"{scenario.batch} x {scenario.seq} + {scenario.new_tokens}",
        scenario.max_memory or "free",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="run scenarios whose model or hardware contains this")
    parser.add_argument("--trials", type=int, default=max(CHECKPOINTS), help="trials per search")
    parser.add_argument(
        "--repeats", type=int, default=1, help="searches per scenario (sampler seeds 0, 1, ...)"
    )
    args = parser.parse_args()
    checkpoints = [n for n in CHECKPOINTS if n <= args.trials]
    work = Path(tempfile.mkdtemp(prefix="tuner-search-quality-"))
    metas: dict[tuple[str, str], MetaModel] = {}
    header = ["#", "model", "hardware", "batch x seq + new", "max_memory", "units", "exact optimum",
              *(f"gap @ {n}" for n in checkpoints), "trials to 1 %", f"s / {args.trials} trials"]  # fmt: skip
    lines = [
        "# Search quality: Optuna on its own (no seeds) against the exact optimum",
        "",
        "TPE via `tuner.plan.search.search(seeds=())`, in-memory study, "
        f"sampler seeds 0..{args.repeats - 1}; gap = best feasible predicted latency after n trials "
        "over the exact optimum (`tuner.plan.exact.solve`), "
        "minus 1. Trials to 1 %: the trial number (from 1) of the first map within 1 % of the optimum.",
        f"Machine: {machine()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    runs = within_300 = 0
    timed: dict[int, Scenario] = {}
    for index, scenario in enumerate(SCENARIOS, start=1):
        if args.only and args.only not in scenario.model and args.only not in scenario.hardware:
            continue
        model = prepare(scenario, metas, work).model
        optimum = solve(model)
        if scenario.model == "llama-2-70b" and scenario.hardware.startswith("8xH100"):
            timed[index] = scenario
        if optimum is None:
            lines.append("| " + " | ".join([str(index), *describe(scenario), "-", "infeasible", "-"]) + " |")
            continue
        target = optimum.latency_s * (1 + WITHIN)
        for seed in range(args.repeats):
            curve, seconds = best_so_far(model, args.trials, seed)
            reached = next((n + 1 for n, best in enumerate(curve) if best <= target), None)
            runs += 1
            within_300 += reached is not None and reached <= 300
            row = [
                str(index) + (f" (seed {seed})" if args.repeats > 1 else ""), *describe(scenario),
                str(len(model.graph.units)), f"{optimum.latency_s:.4f} s",
                *(gap_cell(curve[min(n, len(curve)) - 1], optimum.latency_s) for n in checkpoints),
                str(reached) if reached is not None else f"> {args.trials}", f"{seconds:.1f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    summary = (
        f"Within 1 % of the exact optimum by trial 300: {within_300} of {runs} searches "
        f"({100 * within_300 / max(runs, 1):.0f} %)."
    )
    lines += ["", summary]
    print(summary)
    if timed:
        lines += ["", f"## Time of a {TIMED_TRIALS}-trial search (target under {TIMED_TARGET_S:.0f} s)", ""]
        lines += ["| # | scenario | units | trials | seconds | per trial |", "|---|---|---|---|---|---|"]
        for index, scenario in timed.items():
            model = prepare(scenario, metas, work).model
            begin = time.perf_counter()
            result = search(model, storage=None, study_name="timed", trials=TIMED_TRIALS, seed=0)
            seconds = time.perf_counter() - begin
            per_trial = f"{1000 * seconds / TIMED_TRIALS:.1f} ms"
            row = [str(index), " ".join(describe(scenario)), str(len(model.graph.units)),
                   str(len(result.candidates)), f"{seconds:.1f}", per_trial]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    print(f"written to {write_result('search_quality', lines)}")


if __name__ == "__main__":
    main()

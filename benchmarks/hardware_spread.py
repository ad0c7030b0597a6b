"""Do repeated `tuner hardware` runs agree? N runs, each a fresh process as a user starts it, and
the spread of every figure: (max - min) / median, over all runs and over the runs not flagged busy.

    python -m benchmarks.hardware_spread [--runs 5]

The machine may be shared: every run's load average before it and its busy flag (other
processes' share of the CPUs while it measured, `profiler.hardware.load`) are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from benchmarks.common import write_result

#: The goal: repeated runs on a quiet machine agree within this on every figure.
TARGET_SPREAD = 0.10


def figures(document: dict[str, Any]) -> dict[str, float]:
    """Every speed a `tuner hardware --json` document holds, by a readable name."""
    found: dict[str, float] = {}
    for device in document["devices"]:
        for dtype, flops in device.get("peak_flops", {}).items():
            found[f"{device['key']} {dtype} matmul GFLOP/s"] = flops / 1e9
        if device.get("memory_bandwidth"):
            found[f"{device['key']} copy GB/s"] = device["memory_bandwidth"] / 1e9
        if device.get("kernel_s"):
            found[f"{device['key']} per kernel us"] = device["kernel_s"] * 1e6
    for name in ("generate_step_s", "hook_call_s", "forward_call_s"):
        if document.get(name):
            found[f"{name.removesuffix('_s').replace('_', ' ')} us"] = document[name] * 1e6
    links = [(link, "") for link in document["links"]]
    links += [(link, " (pageable)") for link in document.get("pageable", ())]
    if document.get("page_cache"):
        links.append((document["page_cache"], " (page cache)"))
    for link, label in links:
        name = f"{link['src']} -> {link['dst']}{label}"
        found[f"{name} alpha us"] = link["alpha_s"] * 1e6
        found[f"{name} beta GB/s"] = link["beta_bytes_per_s"] / 1e9
    return found


def spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    db = Path(tempfile.mkdtemp(prefix="tuner-spread-")) / "tuner.db"
    runs: list[tuple[float, float, str, dict[str, float]]] = []
    for index in range(args.runs):
        load = os.getloadavg()[0]
        begin = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "tuner", "hardware", "--json", "--db", f"sqlite:///{db}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        seconds = time.perf_counter() - begin
        document = json.loads(out)
        runs.append((load, seconds, document.get("busy", ""), figures(document)))
        busy = document.get("busy") or "no"
        print(f"run {index + 1}: load {load:.2f} before, {seconds:.1f} s, busy: {busy}")

    names = list(runs[0][3])
    quiet = [run for run in runs if not run[2]]
    lines = [
        "# Repeated `tuner hardware`: does every figure agree?",
        "",
        f"`python -m benchmarks.hardware_spread --runs {args.runs}`: each run a fresh `tuner hardware` "
        "process, one after another. Spread = (max - min) / median; the goal is at most "
        f"{TARGET_SPREAD:.0%} on a quiet machine.",
        f"Machine: {machine()}, {os.cpu_count()} cpus. "
        f"Runs flagged busy: {len(runs) - len(quiet)} of {len(runs)}.",
        "",
        "| run | load before | seconds | busy |",
        "|---|---|---|---|",
        *(
            f"| {i + 1} | {load:.2f} | {seconds:.1f} | {busy or 'no'} |"
            for i, (load, seconds, busy, _) in enumerate(runs)
        ),
        "",
        "| figure | min | median | max | spread, all runs | spread, quiet runs |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        values = [run[3][name] for run in runs if name in run[3]]
        calm = [run[3][name] for run in quiet if name in run[3]]
        calm_spread = f"{spread(calm):.1%}" if len(calm) > 1 else "-"
        lines.append(
            f"| {name} | {min(values):.4g} | {statistics.median(values):.4g} | {max(values):.4g} "
            f"| {spread(values):.1%} | {calm_spread} |"
        )
    print("\n".join(lines))
    print(f"written to {write_result('hardware_spread', lines)}")


if __name__ == "__main__":
    main()

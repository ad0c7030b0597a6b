"""Exact solver speed: a 130-unit Llama (126 identical decoder layers) on 8 GPUs + cpu + disk.

The model is shaped like Llama-3.1-405B (126 layers of 6.4 GB in bf16, a 4.2 GB embedding and
head), scaled down for the 8- and 4-bit rows, with the edges a real trace records (the inputs and
``rotary_emb`` feed every layer, each layer feeds the next). Times are synthetic: prefill and
decode proportional to weight bytes over a device's speed; the solver's work depends on their
shape, not their realism. A last row plans a 70B-sized model on 1000 alike GPUs.

Each scenario is solved twice per round, the rounds interleaving the scenarios: to the proven
optimum (no time limit), and within ``--limit`` seconds (anytime: the best map found then, and
the lower bound the search had proven). Printed: the seconds to the optimum, the anytime answer's
latency over the optimum (its true gap) and its proven gap, and the 1-minute load average seen
before each timing (this process's own included); a row timed while the load was above
``--max-load`` (by default the cores: processes then waited for one) is marked, not a figure of
the machine. The figures are never asserted (the optimum is checked against brute force in
the tests).

    python -m benchmarks.exact_speed [--layers 126] [--repeats 3] [--limit 1] [--only 0,1]
        [--max-load CORES] [--output benchmarks/results/exact_speed.md]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from tuner.core.domain import INPUT
from tuner.core.domain import Device
from tuner.core.domain import Edge
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Phase
from tuner.core.domain import Unit
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.plan.costmodel import CostModel
from tuner.plan.exact import Solution
from tuner.plan.exact import solve

GB = 10**9
MB = 10**6
SEQ, NEW_TOKENS, HIDDEN = 2048, 256, 16384
H100 = (80, 3.0e12)  # memory GB, speed (weight bytes per second of prefill x 40)
A100_40 = (40, 1.0e12)
MIXED = [(40 + 8 * i, (1.0 + 0.25 * i) * 1e12) for i in range(8)]  # no two alike


def llama(layers: int, scale: float, tied: bool) -> ModelGraph:
    """Units and edges as `trace_graph` records them for a Llama; sizes of the 405B model."""
    layer_bytes, vocab_bytes = int(6.4 * GB * scale), int(4.2 * GB * scale)
    layer = functools.partial(Unit, module_class="LlamaDecoderLayer", buffer_bytes=0, calls=1, decode_calls=1)
    units = [
        Unit("model.embed_tokens", "Embedding", vocab_bytes, 0, calls=1, decode_calls=1),
        Unit("model.rotary_emb", "LlamaRotaryEmbedding", 0, 256, calls=1, decode_calls=1),
        *(layer(f"model.layers.{i}", param_bytes=layer_bytes, signature="layer") for i in range(layers)),
        Unit("model.norm", "LlamaRMSNorm", 32768, 0, calls=1, decode_calls=1),
        Unit("lm_head", "Linear", 0 if tied else vocab_bytes, 0, calls=1, decode_calls=1),
    ]
    hidden = (SEQ * HIDDEN * 2, HIDDEN * 2)
    edges = [
        Edge(INPUT, "model.embed_tokens", SEQ * 8, 8),
        Edge("model.embed_tokens", "model.rotary_emb", *hidden),
        Edge(INPUT, "model.rotary_emb", SEQ * 8, 8),
        Edge("model.embed_tokens", "model.layers.0", *hidden),
    ]
    for i in range(layers):
        edges.append(Edge("model.rotary_emb", f"model.layers.{i}", SEQ * 512, 512))
        edges.append(Edge(INPUT, f"model.layers.{i}", SEQ * 8, 8))
        if i:
            edges.append(Edge(f"model.layers.{i - 1}", f"model.layers.{i}", *hidden))
    edges += [
        Edge(f"model.layers.{layers - 1}", "model.norm", *hidden),
        Edge("model.norm", "lm_head", *hidden),
    ]
    ties = (("model.embed_tokens", "lm_head"),) if tied else ()
    return ModelGraph(
        "llama-405b-like", "LlamaForCausalLM", "bfloat16", "bench", tuple(units), tuple(edges), ties
    )


def profiles(graph: ModelGraph, speeds: dict[str, float]) -> list[UnitProfile]:
    """Prefill ~ 40 x weight bytes over a device's speed; decode ~ weight bytes (memory bound)."""
    rows = []
    for unit in graph.units:
        layer = unit.module_class == "LlamaDecoderLayer"
        weight = max(unit.param_bytes, MB)
        for device, speed in speeds.items():
            activation, cache = (512 * MB, SEQ * 4096) if layer else (64 * MB, 0)
            rows += [
                UnitProfile(
                    unit.name, device, Phase.PREFILL, weight * 40 / speed, activation, 0, cache_bytes=cache
                ),
                UnitProfile(unit.name, device, Phase.DECODE, weight / speed, MB, 0,
                            kv_bytes_per_token=4096 if layer else 0),
            ]  # fmt: skip
    return rows


def machine(gpus: list[tuple[int, float]], cpu_gb: float, disk_gb: float) -> HardwareProfile:
    """GPUs as (memory GB, speed), all pairs linked by NVLink; a cpu and a disk."""
    keys = [str(i) for i in range(len(gpus))]
    devices = [
        Device(k, "cuda", f"gpu{m}", m * GB, m * GB, runtime_overhead=GB)
        for k, (m, _) in zip(keys, gpus, strict=True)
    ]
    devices += [
        Device("cpu", "cpu", "host", int(cpu_gb * GB), int(cpu_gb * GB)),
        Device("disk", "disk", "/nvme", int(disk_gb * GB), int(disk_gb * GB)),
    ]
    links = [Link("disk", "cpu", 100e-6, 3 * GB)]
    for k in keys:
        links += [Link("cpu", k, 10e-6, 25 * GB), Link(k, "cpu", 10e-6, 25 * GB)]
        links += [Link(k, j, 5e-6, 300 * GB) for j in keys if j != k]
    return HardwareProfile(tuple(devices), tuple(links), source="spec", host="bench")


def scenarios(layers: int) -> list[tuple[str, CostModel, dict[str, object]]]:
    workload = Workload(batch=1, seq=SEQ, new_tokens=NEW_TOKENS, dtype="bfloat16")
    found = []

    def add(name: str, scale: float, gpus: list[tuple[int, float]], cpu_gb: float = 2000, *,
            tied: bool = False, **options: object) -> None:  # fmt: skip
        graph = llama(layers, scale, tied)
        speeds = {str(i): speed for i, (_, speed) in enumerate(gpus)}
        model = CostModel(graph, profiles(graph, speeds), machine(gpus, cpu_gb, 4000), workload)
        found.append((name, model, options))

    add("8 x H100, 4-bit sizes: fits on the GPUs", 0.25, [H100] * 8)
    add("8 x H100, bf16: ~200 GB stream from the cpu", 1.0, [H100] * 8)
    add("8 x H100, bf16, 150 GB cpu: cpu and disk (knapsack)", 1.0, [H100] * 8, cpu_gb=150)
    add("8 x H100, bf16, tied embedding and head", 1.0, [H100] * 8, tied=True)
    add("8 x H100, bf16, GPUs in index order", 1.0, [H100] * 8, devices_in_order=True)
    add("4 x H100 + 4 x A100-40G, 8-bit sizes", 0.5, [H100] * 4 + [A100_40] * 4)
    add("8 different GPUs, 8-bit sizes: fits", 0.5, MIXED)
    add("8 different GPUs, 8-bit sizes, in index order", 0.5, MIXED, devices_in_order=True)
    add("8 different GPUs, bf16, in index order", 1.0, MIXED, devices_in_order=True)
    add("8 different GPUs, bf16: streams from the cpu", 1.0, MIXED)
    if layers >= 80:
        # 80 layers of a 70B model's size (1.7 GB in bf16), 1000 alike GPUs: a handful are used
        graph = llama(80, 1.7 / 6.4, tied=False)
        gpus = [H100] * 1000
        speeds = {str(i): speed for i, (_, speed) in enumerate(gpus)}
        model = CostModel(graph, profiles(graph, speeds), machine(gpus, 2000, 4000), workload)
        found.append(("1000 x H100, a 70B-sized model (classes of alike GPUs)", model, {}))
    return found


def describe(counts: Counter[str]) -> str:
    gpus = sum(1 for place in counts if place.isdigit())
    offloaded = ", ".join(f"{counts[place]} on {place}" for place in ("cpu", "disk") if place in counts)
    return f"{gpus} GPUs" + (f", {offloaded}" if offloaded else "")


@dataclass
class Timings:
    """What the rounds measured of one scenario."""

    exact_s: list[float] = field(default_factory=list)
    anytime_s: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    optimum: Solution | None = None
    anytime: Solution | None = None


def timed(model: CostModel, options: dict[str, object], limit: float | None) -> tuple[float, Solution | None]:
    begin = time.perf_counter()
    solution = solve(model, time_limit=limit, **options)  # type: ignore[arg-type]
    return time.perf_counter() - begin, solution


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=126)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=1.0, help="the anytime answer's time limit (s)")
    parser.add_argument("--only", help="comma-separated scenario numbers")
    parser.add_argument(
        "--max-load", type=float, default=float(os.cpu_count() or 1),
        help="mark timings taken above this load (default: the cores; above, processes waited for one)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args()
    chosen = scenarios(args.layers)
    wanted = sorted({int(i) for i in args.only.split(",")} if args.only else set(range(len(chosen))))
    found = {number: Timings() for number in wanted}
    for _ in range(args.repeats):  # interleaved: every scenario once per round
        for number in wanted:
            _, model, options = chosen[number]
            timings = found[number]
            timings.loads.append(os.getloadavg()[0])
            seconds, timings.optimum = timed(model, options, None)
            timings.exact_s.append(seconds)
            timings.loads.append(os.getloadavg()[0])
            seconds, timings.anytime = timed(model, options, args.limit)
            timings.anytime_s.append(seconds)
            print(f"  #{number}: {timings.exact_s[-1]:.2f} s to the optimum, load {timings.loads[-1]:.1f}",
                  file=sys.stderr, flush=True)  # fmt: skip
    units = len(chosen[0][1].graph.units)
    processor = platform.processor() or platform.machine()
    lines = [
        f"# Exact solver: {units} units, 8 GPUs + cpu + disk",
        "",
        f"{processor}, {os.cpu_count()} cores; median of {args.repeats} interleaved rounds; anytime limit "
        f"{args.limit:g} s. *: a timing taken while the 1-minute load was above {args.max_load:g}.",
        "",
        "| # | scenario | to the optimum (s) | optimum (s per call) | in the limit (s) | found / optimum "
        "| proven gap | load | map |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for number in wanted:
        name = chosen[number][0]
        timings = found[number]
        loaded = "*" if max(timings.loads) > args.max_load else ""
        optimum, anytime = timings.optimum, timings.anytime
        if optimum is None or anytime is None:
            cells = ["-", "-", "-", "-", "no map fits"]
        else:
            ratio = anytime.latency_s / optimum.latency_s
            proven = "optimal" if anytime.optimal else f"{anytime.gap:.2%}"
            layout = describe(Counter(place for _, place in optimum.device_map.placements))
            cells = [f"{optimum.latency_s:.2f}", f"{statistics.median(timings.anytime_s):.2f}",
                     f"{ratio:.4f}", proven, layout]  # fmt: skip
        exact = f"{statistics.median(timings.exact_s):.2f}{loaded}"
        load = f"{max(timings.loads):.1f}"
        lines.append(f"| {number} | {name} | {exact} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} "
                     f"| {load} | {cells[4]} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()

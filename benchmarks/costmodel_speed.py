"""Cost model throughput: device maps of a 32-layer Llama priced per second (target >= 20,000).

The profile is measured once on this CPU and reused as the compute time of four GPUs of a
described machine (the figures only need to be realistic in shape; throughput does not depend on
them). Maps are random contiguous splits over the GPUs with random cpu/disk offloads.

    python -m benchmarks.costmodel_speed [--maps 20000]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import torch

from benchmarks.common import llama_folder
from benchmarks.common import machine
from benchmarks.common import write_result
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import Workload
from tuner.plan.costmodel import CostModel

GiB = 1 << 30


def four_gpus() -> HardwareProfile:
    gpus = [Device(str(i), "cuda", "L4", 24 * GiB, 23 * GiB, runtime_overhead=GiB // 2) for i in range(4)]
    links = [Link("cpu", str(i), 10e-6, 20e9) for i in range(4)] + [
        Link(str(i), "cpu", 10e-6, 20e9) for i in range(4)
    ]
    links.append(Link("disk", "cpu", 100e-6, 3e9))
    devices = (
        *gpus,
        Device("cpu", "cpu", "host", 128 * GiB, 120 * GiB),
        Device("disk", "disk", "/nvme", 2 << 40, 1 << 40),
    )
    return HardwareProfile(devices=devices, links=tuple(links), source="spec")


def random_map(names: tuple[str, ...], rng: random.Random) -> DeviceMap:
    cuts = sorted(rng.sample(range(1, len(names)), 3))
    bounds = [0, *cuts, len(names)]
    placements = []
    for gpu in range(4):
        for name in names[bounds[gpu] : bounds[gpu + 1]]:
            roll = rng.random()
            placements.append((name, "cpu" if roll < 0.1 else "disk" if roll < 0.15 else str(gpu)))
    return DeviceMap(tuple(placements))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--maps", type=int, default=20000)
    args = parser.parse_args()
    workload = Workload(batch=1, seq=128, new_tokens=32)
    meta = build_meta_model(resolve_source(str(llama_folder(num_hidden_layers=32))), "float32")
    graph = trace_graph(meta, workload)
    measured = profile_units(meta, graph, workload, torch.device("cpu"), repeats=1)
    profiles = [replace(p, device=str(i)) for p in measured for i in range(4)]
    model = CostModel(graph, profiles, four_gpus(), workload)
    rng = random.Random(0)
    maps = [random_map(graph.unit_names, rng) for _ in range(args.maps)]
    begin = time.perf_counter()
    feasible = sum(model.predict(dmap).feasible for dmap in maps)
    seconds = time.perf_counter() - begin
    lines = [
        "# Cost model throughput",
        "",
        f"32-layer hidden-1024 Llama ({len(graph.units)} units, {len(graph.edges)} edges), "
        "4 GPUs + cpu + disk,"
        f" prefill + decode; {machine()}.",
        "",
        "| maps | seconds | maps per second | feasible |",
        "|---:|---:|---:|---:|",
        f"| {args.maps} | {seconds:.2f} | {args.maps / seconds:,.0f} | {feasible} |",
    ]
    print("\n".join(lines))
    print(f"written to {write_result('costmodel_speed', lines)}")


if __name__ == "__main__":
    main()

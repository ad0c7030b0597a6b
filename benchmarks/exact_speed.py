"""Exact solver speed: a 130-unit Llama (126 identical decoder layers) on 8 GPUs + cpu + disk.

The model is shaped like Llama-3.1-405B in bf16 (126 layers of 6.4 GB, a 4.2 GB embedding and
head) with the edges a real trace gives (inputs feed every layer, ``rotary_emb`` feeds every
layer, each layer feeds the next). Times are synthetic (proportional to bytes over a device's
speed): the solver's work does not depend on their realism. Each scenario is solved in this
process and timed; the figures are printed, never asserted.

    python -m benchmarks.exact_speed [--layers 126] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

from tuner.costmodel import CostModel
from tuner.domain import INPUT
from tuner.domain import Device
from tuner.domain import Edge
from tuner.domain import HardwareProfile
from tuner.domain import Link
from tuner.domain import ModelGraph
from tuner.domain import Phase
from tuner.domain import Unit
from tuner.domain import UnitProfile
from tuner.domain import Workload
from tuner.exact import solve

GB = 10**9
MB = 10**6
SEQ, NEW_TOKENS = 2048, 256


def llama(layers: int, scale: float, tied: bool) -> ModelGraph:
    """Units and edges as `trace_graph` records them for a Llama, sizes of the 405B model."""
    layer = Unit("", "LlamaDecoderLayer", int(6.4 * GB * scale), 0, calls=1, decode_calls=1, signature="layer")
    units = [
        Unit("model.embed_tokens", "Embedding", int(4.2 * GB * scale), 0, calls=1, decode_calls=1),
        Unit("model.rotary_emb", "LlamaRotaryEmbedding", 0, 256, calls=1, decode_calls=1),
        *(Unit(f"model.layers.{i}", layer.module_class, layer.param_bytes, 0, 1, 1, 1, "layer") for i in range(layers)),
        Unit("model.norm", "LlamaRMSNorm", 32768, 0, calls=1, decode_calls=1),
        Unit("lm_head", "Linear", 0 if tied else int(4.2 * GB * scale), 0, calls=1, decode_calls=1),
    ]
    hidden = (SEQ * 16384 * 2, 16384 * 2)
    edges = [
        Edge(INPUT, "model.embed_tokens", SEQ * 8, 8),
        Edge("model.embed_tokens", "model.rotary_emb", *hidden),
        Edge(INPUT, "model.rotary_emb", SEQ * 8, 8),
        Edge("model.embed_tokens", "model.layers.0", *hidden),
    ]
    for i in range(layers):
        edges += [Edge("model.rotary_emb", f"model.layers.{i}", SEQ * 512, 512), Edge(INPUT, f"model.layers.{i}", SEQ * 8, 8)]
        if i:
            edges.append(Edge(f"model.layers.{i - 1}", f"model.layers.{i}", *hidden))
    edges += [Edge(f"model.layers.{layers - 1}", "model.norm", *hidden), Edge("model.norm", "lm_head", *hidden)]
    ties = (("model.embed_tokens", "lm_head"),) if tied else ()
    return ModelGraph("llama-405b-like", "LlamaForCausalLM", "bfloat16", "bench", tuple(units), tuple(edges), ties)


def profiles(graph: ModelGraph, speeds: dict[str, float]) -> list[UnitProfile]:
    """Prefill time ~ weight bytes over a device's speed (bytes/s); decode is memory bound."""
    rows = []
    for unit in graph.units:
        layer = unit.module_class == "LlamaDecoderLayer"
        for device, speed in speeds.items():
            prefill = max(unit.param_bytes, 1e6) * 40 / speed
            decode = max(unit.param_bytes, 1e6) / speed
            rows.append(UnitProfile(unit.name, device, Phase.PREFILL, prefill, 512 * MB if layer else 64 * MB, 0,
                                    cache_bytes=SEQ * 4096 if layer else 0))  # fmt: skip
            rows.append(UnitProfile(unit.name, device, Phase.DECODE, decode, 1 * MB, 0,
                                    kv_bytes_per_token=4096 if layer else 0))  # fmt: skip
    return rows


def machine(gpus: list[tuple[int, float]], cpu_gb: float, disk_gb: float) -> HardwareProfile:
    """GPUs as (memory GB, speed bytes/s), fully connected by NVLink; cpu and disk."""
    keys = [str(i) for i in range(len(gpus))]
    devices = [Device(k, "cuda", f"gpu{int(s / 1e12)}", m * GB, m * GB, runtime_overhead=GB) for k, (m, s) in zip(keys, gpus)]
    devices += [Device("cpu", "cpu", "host", int(cpu_gb * GB), int(cpu_gb * GB)),
                Device("disk", "disk", "/nvme", int(disk_gb * GB), int(disk_gb * GB))]  # fmt: skip
    links = [Link("disk", "cpu", 100e-6, 3 * GB)]
    for k in keys:
        links += [Link("cpu", k, 10e-6, 25 * GB), Link(k, "cpu", 10e-6, 25 * GB)]
        links += [Link(k, j, 5e-6, 300 * GB) for j in keys if j != k]
    return HardwareProfile(tuple(devices), tuple(links), source="spec", host="bench")


def scenarios(layers: int) -> list[tuple[str, CostModel, dict[str, object]]]:
    workload = Workload(batch=1, seq=SEQ, new_tokens=NEW_TOKENS, dtype="bfloat16")
    h100 = (80, 3.0e12)
    found = []

    def add(name: str, scale: float, gpus: list[tuple[int, float]], cpu_gb: float = 2000, disk_gb: float = 4000,
            tied: bool = False, **options: object) -> None:  # fmt: skip
        graph = llama(layers, scale, tied)
        hardware = machine(gpus, cpu_gb, disk_gb)
        speeds = {str(i): s for i, (_, s) in enumerate(gpus)}
        model = CostModel(graph, profiles(graph, speeds), hardware, workload)
        found.append((name, model, options))

    add("8 x H100, 4-bit sizes: fits on GPUs", 0.25, [h100] * 8)
    add("8 x H100, bf16: ~190 GB streamed from cpu", 1.0, [h100] * 8)
    add("8 x H100, bf16, 150 GB cpu: cpu + disk", 1.0, [h100] * 8, cpu_gb=150)
    add("8 x H100, bf16, tied embedding", 1.0, [h100] * 8, tied=True)
    add("8 x H100, bf16, GPUs in index order", 1.0, [h100] * 8, devices_in_order=True)
    add("4 x H100 + 4 x A100-40G, 8-bit sizes", 0.5, [h100] * 4 + [(40, 1.0e12)] * 4)
    add("8 different GPUs (no symmetry), 8-bit sizes", 0.5, [(40 + 8 * i, (1.0 + 0.25 * i) * 1e12) for i in range(8)])
    add("8 different GPUs (no symmetry), bf16", 1.0, [(40 + 8 * i, (1.0 + 0.25 * i) * 1e12) for i in range(8)])
    add("8 different GPUs, bf16, in index order", 1.0, [(40 + 8 * i, (1.0 + 0.25 * i) * 1e12) for i in range(8)],
        devices_in_order=True)  # fmt: skip
    return found


def summary(model: CostModel, dmap_devices: dict[str, int]) -> str:
    gpus = sum(1 for d in dmap_devices if d.isdigit())
    off = ", ".join(f"{d} {n}" for d, n in dmap_devices.items() if not d.isdigit())
    return f"{gpus} GPUs" + (f"; {off}" if off else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=126)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, model, options in scenarios(args.layers):
        times = []
        solution = None
        for _ in range(args.repeats):
            begin = time.perf_counter()
            solution = solve(model, **options)  # type: ignore[arg-type]
            times.append(time.perf_counter() - begin)
        if solution is None:
            result = "no map fits"
        else:
            counts: dict[str, int] = {}
            for _, place in solution.device_map.placements:
                counts[place] = counts.get(place, 0) + 1
            result = f"{solution.prediction.latency_s:.2f} s/call, {summary(model, counts)}"
        rows.append(f"| {name} | {statistics.median(times):.3f} | {result} |")
    units = len(scenarios(args.layers)[0][1].graph.units)
    print(f"# Exact solver speed: {units} units, 8 GPUs + cpu + disk ({platform.processor() or platform.machine()})")
    print()
    print("| scenario | seconds (median) | optimum |")
    print("|---|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

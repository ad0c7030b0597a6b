"""Depth scaling: profiling time of the same Llama at 8 and at 32 layers.

Identical layers are measured once, so four times the depth should cost little more
(target: at most 1.5x). Both depths are profiled in this process, interleaved.

    python -m benchmarks.depth_scaling
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import llama_folder
from benchmarks.common import machine
from benchmarks.common import write_result
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tuner.core.domain import Workload


def profiling_seconds(layers: int, workload: Workload) -> float:
    folder = llama_folder(num_hidden_layers=layers)
    begin = time.perf_counter()
    meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
    graph = trace_graph(meta, workload)
    profile_units(meta, graph, workload, torch.device("cpu"), repeats=5)
    return time.perf_counter() - begin


def main() -> None:
    workload = Workload(batch=1, seq=128, new_tokens=32, dtype="float32")
    rows = []
    for _ in range(2):
        shallow = profiling_seconds(8, workload)
        deep = profiling_seconds(32, workload)
        rows.append((shallow, deep))
    lines = [
        "# Depth scaling: profiling time at 8 and 32 layers",
        "",
        f"hidden-1024 Llama, fp32, batch 1, seq 128, 32 new tokens (prefill + one decode step); {machine()}.",
        "",
        "| run | 8 layers (s) | 32 layers (s) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {i + 1} | {s:.2f} | {d:.2f} | {d / s:.2f} |" for i, (s, d) in enumerate(rows)]
    print("\n".join(lines))
    print(f"written to {write_result('depth_scaling', lines)}")


if __name__ == "__main__":
    main()

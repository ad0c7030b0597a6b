"""Profile accuracy: the sum of per-unit prefill times against one whole-model forward.

Both are timed in this process on the same machine, for the 8-layer hidden-1024 Llama at batch 1,
seq 128. A ratio near 1 means the per-unit figures add up to what the model really costs
(the rest is glue code between units: masks, position ids). Target 0.9-1.1.

    python -m benchmarks.profile_accuracy [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from transformers import AutoConfig
from transformers import AutoModelForCausalLM

from benchmarks.common import llama_folder
from benchmarks.common import machine
from benchmarks.common import median_seconds
from benchmarks.common import write_result
from profiler.layers import profile_units
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tuner.core.domain import Phase
from tuner.core.domain import Workload


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both measurements")
    args = parser.parse_args()

    folder = llama_folder()
    workload = Workload(batch=1, seq=128, new_tokens=0, dtype="float32")
    meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
    graph = trace_graph(meta, workload)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    ids = torch.zeros(1, 128, dtype=torch.long)

    def whole() -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=True)

    rows = []
    for round_ in range(args.rounds):
        profiles = profile_units(meta, graph, workload, torch.device("cpu"), repeats=args.repeats)
        units = sum(p.time_s for p in profiles if p.phase is Phase.PREFILL)
        forward = median_seconds(whole, args.repeats)
        rows.append((round_ + 1, units, forward, units / forward))

    lines = [
        "# Profile accuracy: sum of unit times / whole forward",
        "",
        f"8-layer hidden-1024 Llama, fp32, batch 1, seq 128; {machine()}; median of {args.repeats} runs.",
        "",
        "| round | sum of units (ms) | whole forward (ms) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r} | {u * 1e3:.1f} | {f * 1e3:.1f} | {ratio:.3f} |" for r, u, f, ratio in rows]
    lines += ["", f"median ratio {statistics.median(r[3] for r in rows):.3f} (target 0.9-1.1)"]
    print("\n".join(lines))
    print(f"written to {write_result('profile_accuracy', lines)}")


if __name__ == "__main__":
    main()

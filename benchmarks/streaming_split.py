"""Where a streamed map's prediction error lies: a decode step split into its terms, each measured
against the cost model's figure for it, all in one process within a minute or two.

For a model of `benchmarks.real_cpu` and accelerate's ``auto`` map under half the model's bytes
(most layers on ``disk``), `tuner hardware` measures this machine, the map is priced, and three
loadings of the model are timed interleaved (each side's best of several rounds):

- ``plain``: all on the cpu, no hooks: the decode step's compute (priced: compute, the forward's
  own Python and generate's step);
- ``hooked``: all on the cpu with accelerate's hooks on every unit of the map (``force_hooks``):
  less ``plain``, the hooks (priced: hooked calls x the cost per call);
- ``streamed``: the ``auto`` map: less ``hooked``, the weights read from disk (priced: the
  stream term, reads x (alpha + header entries x the cost per entry) + bytes / beta).

The host's speed moves between runs here, so each term is read as measured / predicted from the
same run; the timing and the measurement of this machine are a minute apart.

    python -m benchmarks.streaming_split [--model narrow] [--rounds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import dispatch_model

import tuner
from benchmarks.real_cpu import FIXED_COST_WORKLOAD
from benchmarks.real_cpu import cpu_and_disk
from benchmarks.real_cpu import model_folder
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from tuner.plan.baselines import accelerate_maps


def decode_step_seconds(models: dict[str, Any], ids: torch.Tensor, rounds: int) -> dict[str, float]:
    """Each model's decode step: (generate of 4 tokens - generate of 1) / 3, best of `rounds`,
    the models interleaved so that a slow spell touches all."""

    def generate(model: Any, tokens: int) -> float:
        begin = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - begin

    best = dict.fromkeys(models, float("inf"))
    with torch.no_grad():
        for model in models.values():
            generate(model, 2)  # warm up
        for _ in range(rounds):
            for name, model in models.items():
                one = generate(model, 1)
                best[name] = min(best[name], (generate(model, 4) - one) / 3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="narrow", help="a model of benchmarks.real_cpu")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    workload = FIXED_COST_WORKLOAD
    with tempfile.TemporaryDirectory(prefix="tuner-split-") as tmp:
        root = Path(tmp)
        folder = model_folder(args.model, root)
        meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
        graph = trace_graph(meta, workload)
        cap = int(0.5 * graph.total_bytes)
        maps = {
            c.name: c.device_map for c in accelerate_maps(meta.model, graph.unit_names, cpu_and_disk(cap))
        }
        auto = maps["auto"].to_hf()
        db = f"sqlite:///{root / 'tuner.db'}"
        hardware = tuner.measure_hardware(db=db)
        priced = tuner.price(str(folder), auto, db=db, seq=workload.seq, new_tokens=workload.new_tokens)
        load = transformers.AutoModelForCausalLM.from_pretrained
        hooked = dispatch_model(
            load(folder, device_map={"": "cpu"}, dtype=torch.float32),
            device_map=dict.fromkeys(auto, "cpu"),
            force_hooks=True,
        )
        models = {
            "plain": load(folder, device_map={"": "cpu"}, dtype=torch.float32),
            "hooked": hooked,
            "streamed": load(
                folder, device_map=auto, offload_folder=str(root / "offload"), dtype=torch.float32
            ),
        }
        ids = torch.randint(0, 100, (1, workload.seq))
        step = decode_step_seconds(models, ids, args.rounds)
    decode = priced.decode
    fixed = hardware.forward_call_s + hardware.generate_step_s
    terms = [
        ("compute (plain)", step["plain"], decode.compute_s + fixed),
        ("hooks (hooked - plain)", step["hooked"] - step["plain"], decode.overhead_s - fixed),
        ("streaming (streamed - hooked)", step["streamed"] - step["hooked"], decode.stream_s),
        ("decode step (streamed)", step["streamed"], decode.total_s),
    ]
    alpha = hardware.page_cache.alpha_s if hardware.page_cache is not None else 0.0
    print(
        f"{args.model}, auto map under {cap / 2**20:.0f} MiB; this machine: "
        f"{hardware.safetensors_entry_s * 1e6:.2f} us per header entry, page cache {alpha * 1e6:.0f} us "
        f"per tensor, {hardware.hook_call_s * 1e6:.0f} us per hooked call"
    )
    print("| term | measured ms | predicted ms | measured / predicted |")
    print("|---|---:|---:|---:|")
    for name, measured, predicted in terms:
        print(f"| {name} | {measured * 1e3:.0f} | {predicted * 1e3:.0f} | {measured / predicted:.2f} |")


if __name__ == "__main__":
    main()

"""Real CPU: accelerate's ``auto`` map against the tuned maps, all loaded and timed here.

For an 8-layer hidden-1024 Llama (examples/llama-8x1024), a GPT-2 and a T5 of similar size
(random weights written with ``save_pretrained``, then dropped from the page cache so that they
come back by being read, as a checkpoint on disk does), at a forward workload (batch 1, seq 128)
and a generate workload (batch 1, seq 32, 32 new tokens), with ``max_memory={"cpu": cap}``
caps that force part of the model to disk. Two models where fixed costs rather than bytes
decide, at a short generate only (batch 1, seq 32, 8 new tokens; no ``--measure``): a 200-layer
tiny Llama (hidden 64) streaming half its layers from disk (thousands of small tensors, hooked
calls and kernels per token), and a tiny-hidden Llama (hidden 32, 64 layers, a 4096-token
vocabulary: the embedding and head are a quarter of its bytes each).

- ``auto``: accelerate's own plan for that cap (``tuner.plan.baselines.accelerate_maps`` on the meta
  model, for a cpu + disk machine whose free cpu memory is the cap; the same plan
  ``from_pretrained(device_map="auto", max_memory=...)`` makes; the run's ``auto`` candidate
  is checked to be that map);
- ``tuned``: the modelled winner of ``tuner.optimize(..., max_memory={"cpu": cap})``, which
  profiles the model on this CPU, measures this machine and searches, into a temporary
  database;
- ``measured``: the winner after ``optimize(..., measure=K)`` on the same run (the K best
  modelled maps and every accelerate strategy loaded and timed interleaved, the fastest kept);
- ``auto fitted``, where ``auto`` overruns the cap once its KV cache and working set count (the
  tuner keeps no such map): accelerate's ``auto`` for a cap lowered until its map fits, what a
  user has to ask ``from_pretrained`` for to stay within the cap.

auto, tuned, measured (and auto fitted) are then loaded and timed interleaved in one process
(`profiler.validate.measure_interleaved`), a measurement separate from the one that picked
``measured`` (a pick favours a map that was lucky in its own timing). Printed per case:
measured latency of each, tuned/auto and measured/auto, and the prediction error of auto and
tuned (the run's predicted latency against the measurement).

The host's speed drifts here by tens of percent within minutes, and a run's prices come from
this machine measured once, at the first case, its figures each the best of several samples. So
the error is also printed three more ways, side by side from the same timings: against the best
round (as the figures are bests), and against the maps priced again with this machine measured
just before and just after they are timed (the mean of the two prices; their ratio, after /
before, shows how far the host moved meanwhile).

    python -m benchmarks.real_cpu [--rounds 5] [--trials 150] [--measure 3] [--threads 1] [--caps 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig
from transformers import GPT2Config
from transformers import LlamaConfig
from transformers import PretrainedConfig
from transformers import T5Config

import tuner
from benchmarks.common import EXAMPLE
from benchmarks.common import machine
from benchmarks.common import write_result
from profiler.hardware import describe_hardware
from profiler.hardware import drop_from_page_cache
from profiler.hardware.load import reference_timings
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from profiler.validate import Validation
from profiler.validate import measure_interleaved
from storage import Store
from tuner.api import optimize
from tuner.core.devices import OFFLOAD
from tuner.core.domain import FITTED_AUTO
from tuner.core.domain import Device
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import ModelGraph
from tuner.core.domain import Prediction
from tuner.core.domain import Workload
from tuner.plan.baselines import accelerate_maps

MODELS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": lambda: AutoConfig.from_pretrained(EXAMPLE.parent),
    "gpt2": lambda: GPT2Config(
        n_embd=1024,
        n_layer=8,
        n_head=16,
        vocab_size=50257,
        n_positions=1024,
        architectures=["GPT2LMHeadModel"],
    ),
    "llama200": lambda: LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=200,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        architectures=["LlamaForCausalLM"],
    ),
    "narrow": lambda: LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=4096,
        architectures=["LlamaForCausalLM"],
    ),
    "t5": lambda: T5Config(  # type: ignore[call-arg]  # T5Config takes PretrainedConfig's kwargs
        d_model=1024,
        d_ff=2816,
        num_layers=4,
        num_decoder_layers=4,
        num_heads=16,
        d_kv=64,
        vocab_size=32128,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        architectures=["T5ForConditionalGeneration"],
    ),
}

WORKLOADS = {
    "forward": Workload(batch=1, seq=128, new_tokens=0),
    "generate": Workload(batch=1, seq=32, new_tokens=32),
}

#: The models whose fixed costs the targets are about: timed at a short generate only (8 new
#: tokens: a 200-layer model reading half its layers from disk takes seconds a token), and
#: without ``--measure`` (their ``measured`` column is the tuned map).
FIXED_COST_MODELS = ("llama200", "narrow")
FIXED_COST_WORKLOAD = Workload(batch=1, seq=32, new_tokens=8)
#: The original cases, whose tuned maps must stay at most as slow as auto.
ORIGINAL_MODELS = ("llama", "gpt2", "t5")


MAPS = ("auto", "tuned", "measured")
#: accelerate's ``auto`` planned for a cap lowered until the map fits the case's cap with its KV
#: cache and working set: timed beside the others when the plain ``auto`` does not fit.
AUTO_FITTED = "auto fitted"


@dataclass(frozen=True)
class Case:
    model: str
    workload: str
    cap: int
    total: int
    maps: dict[str, DeviceMap]
    names: dict[str, str]
    predicted: dict[str, Prediction]
    measured: dict[str, Validation]
    streamed: dict[str, int]
    on_disk: dict[str, int]
    page_cache: Link | None
    search_s: float
    measure_s: float
    #: each map's latency priced with this machine measured just before and just after the timing
    repriced: dict[str, tuple[float, float]]
    #: the reference computation's mean over its fastest, sampled just before and after the timing
    host_duty: float
    #: bytes by which ``auto`` overruns the cap on cpu once its KV cache and working set count
    auto_over_cap: int

    def ratio(self, name: str) -> float | None:
        auto, other = self.measured["auto"].latency_s, self.measured[name].latency_s
        return other / auto if auto and other else None

    def error(
        self, name: str, *, best: bool = False, repriced: bool = False, duty: bool = False
    ) -> float | None:
        """|predicted - measured| / measured: the run's price or the mean of the two taken at
        the timing, optionally times the host's duty, against the median round or the best."""
        result = self.measured[name]
        measured = min(result.samples_s, default=None) if best else result.latency_s
        predicted = statistics.mean(self.repriced[name]) if repriced else self.predicted[name].latency_s
        if duty:
            predicted *= self.host_duty
        return abs(predicted - measured) / measured if measured else None

    def drift(self) -> float:
        """How much dearer this machine priced the maps after the timing than before it."""
        return statistics.mean(after / before for before, after in self.repriced.values())


#: The ways `Case.error` is read: (column title, best round, prices taken at the timing, times
#: the host's duty).
ERROR_WAYS = (
    ("run's prices, median round", False, False, False),
    ("run's prices, best round", True, False, False),
    ("priced at the timing, median round", False, True, False),
    ("priced at the timing, best round", True, True, False),
    ("run's prices x host duty, median round", False, False, True),
)
#: Seconds of reference timings sampled on each side of a case's timing for its host duty.
DUTY_WINDOW_S = 2.0


def model_folder(name: str, root: Path) -> Path:
    """Random weights of the benchmark model, written once as safetensors."""
    folder = root / name
    if not (folder / "config.json").exists():
        config = MODELS[name]()
        torch.manual_seed(0)
        model = getattr(transformers, (config.architectures or [""])[0])(config)
        model.save_pretrained(folder)
        del model
    # As a checkpoint that has been on disk for a while: its pages come into the cache by being
    # read (as from_pretrained reads them), not left there by writing it, which maps faster.
    for file in folder.glob("*.safetensors"):
        drop_from_page_cache(file)
    return folder


def cpu_and_disk(cap: int) -> HardwareProfile:
    """This machine as accelerate sees it under ``max_memory={"cpu": cap}``."""
    cpu = describe_hardware().device("cpu")
    return HardwareProfile(
        devices=(
            Device("cpu", "cpu", cpu.name, cpu.total_memory, cap),
            Device("disk", "disk", "disk", 1 << 40, 1 << 40),
        ),
        source="spec",
    )


def streamed_bytes(graph: ModelGraph, dmap: DeviceMap, workload: Workload) -> int:
    """Bytes a whole call maps from disk: each disk unit's weights (tied ones included), on every
    call of it; an embedding table reads only the rows it looks up, a few KiB, left out here."""
    total = 0
    for unit in graph.units:
        if (
            dmap.placement(unit.name) in OFFLOAD
            and dmap.placement(unit.name) != dmap.main_device
            and not unit.lookup
        ):
            total += unit.loaded_bytes * (unit.calls + workload.decode_steps * unit.decode_calls)
    return total


def run_case(
    store: Store, folder: Path, model: str, workload_name: str, fraction: float, args: argparse.Namespace
) -> Case:
    fixed_cost = model in FIXED_COST_MODELS
    workload = FIXED_COST_WORKLOAD if fixed_cost else WORKLOADS[workload_name]
    meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
    graph = trace_graph(meta, workload)
    cap = int(fraction * graph.total_bytes)
    settings = {
        "max_memory": {"cpu": cap},
        "batch": workload.batch,
        "seq": workload.seq,
        "new_tokens": workload.new_tokens,
        "dtype": workload.dtype,
        "trials": args.trials,
        "random_seed": 0,
    }
    started = time.perf_counter()
    modelled = optimize(str(folder), db=store.url, **settings)
    search_s = time.perf_counter() - started
    started = time.perf_counter()
    picked = (
        modelled
        if fixed_cost
        else optimize(str(folder), db=store.url, measure=args.measure, measure_rounds=args.rounds, **settings)
    )
    measure_s = time.perf_counter() - started
    if modelled.winner is None or modelled.winner.prediction is None or picked.winner is None:
        raise SystemExit(f"{model} {workload_name}: the tuner found no feasible map for cap {cap}")
    planned = {c.name: c.device_map for c in accelerate_maps(meta.model, graph.unit_names, cpu_and_disk(cap))}
    run_auto = modelled.baseline("auto")
    if run_auto.device_map != planned["auto"] or run_auto.prediction is None:
        raise SystemExit(f"{model} {workload_name}: the run's auto map is not accelerate's plan (cap {cap})")
    candidates = {"auto": run_auto, "tuned": modelled.winner, "measured": picked.winner}
    maps = {name: c.device_map for name, c in candidates.items()}
    pricing = {key: settings[key] for key in ("max_memory", "batch", "seq", "new_tokens", "dtype")}
    predicted = {name: c.prediction for name, c in candidates.items() if c.prediction is not None}
    # the run's own `auto` planned under the cap lowered until it fits (`tuner.plan.baselines.fitted_auto`)
    fitted = next((c for c in modelled.baselines if c.name.startswith(FITTED_AUTO)), None)
    if fitted is not None and fitted.prediction is not None:
        maps[AUTO_FITTED], predicted[AUTO_FITTED] = fitted.device_map, fitted.prediction

    def priced_now() -> dict[str, float]:
        tuner.measure_hardware(db=store.url)  # the latest profile of this machine prices
        return {
            name: tuner.price(str(folder), dmap.to_hf(), db=store.url, **pricing).latency_s
            for name, dmap in maps.items()
        }

    before = priced_now()
    around = host_reference(DUTY_WINDOW_S)
    measured = measure_interleaved(str(folder), maps, workload, rounds=args.rounds)
    around += host_reference(DUTY_WINDOW_S)
    after = priced_now()
    for name, result in measured.items():
        if not result.ok:
            raise SystemExit(f"{model} {workload_name} {name}: {result.reason}")
    hardware = store.find_hardware(modelled.hardware_fingerprint)
    return Case(
        model=model,
        workload=workload_name,
        cap=cap,
        total=graph.total_bytes,
        maps=maps,
        names={name: c.name for name, c in candidates.items()}
        | ({AUTO_FITTED: fitted.name} if fitted is not None else {}),
        predicted=predicted,
        measured=measured,
        streamed={name: streamed_bytes(graph, dmap, workload) for name, dmap in maps.items()},
        on_disk={
            name: sum(u.param_bytes for u in graph.units if dmap.placement(u.name) == "disk")
            for name, dmap in maps.items()
        },
        page_cache=hardware.page_cache if hardware is not None else None,
        search_s=search_s,
        measure_s=measure_s,
        repriced={name: (before[name], after[name]) for name in maps},
        host_duty=statistics.mean(around) / min(around),
        auto_over_cap=max((device.over_by for device in run_auto.prediction.shortfalls), default=0),
    )


def host_reference(seconds: float) -> list[float]:
    """Timings of the reference computation, one loop each, for about `seconds`."""
    timings: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        timings += reference_timings(10)
    return timings


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f}"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(cases: list[Case], args: argparse.Namespace, seconds: float, load_before: str) -> list[str]:
    link = next((c.page_cache for c in cases if c.page_cache is not None), None)
    streaming = (
        f"disk reads priced from the page cache at {link.alpha_s * 1e3:.2f} ms per tensor + "
        f"{link.beta_bytes_per_s / 1e9:.1f} GB/s (`tuner hardware`)"
        if link is not None
        else "no page cache link"
    )
    lines = [
        "# Real CPU: accelerate's auto map vs the tuned maps, loaded and measured",
        "",
        f"{machine()}; load average {load_before} before, {os.getloadavg()[0]:.2f} after; fp32; "
        f"{args.rounds} interleaved rounds per case (median); {streaming}; "
        f"{args.trials} search trials; `--measure {args.measure}`; {seconds / 60:.1f} min in all. "
        "Written by `python -m benchmarks.real_cpu`.",
        "",
        "Models: Llama 8x1024 (examples/llama-8x1024), GPT-2 8x1024 (vocab 50257, tied head), "
        "T5 4+4 x 1024 (d_ff 2816, untied head); llama200: 200 layers of hidden 64 (vocab 1024); "
        "narrow: 64 layers of hidden 32, vocab 4096; random weights, safetensors, dropped from the page "
        "cache after writing. Workloads: forward = batch 1, seq 128; generate = batch 1, seq 32, 32 "
        "new tokens (llama200 and narrow: 8 new tokens, tuned = measured, no `--measure`). "
        "Cap: `max_memory={'cpu': cap}`. auto: accelerate's plan for the cap; tuned: the "
        "modelled winner of `tuner.optimize(..., max_memory={'cpu': cap})`; measured: the winner "
        f"after `optimize(..., measure={args.measure})` on the same run. The three (and "
        f"`{AUTO_FITTED}` where `auto` overruns the cap) are then timed together, interleaved, apart "
        "from the timing that picked `measured`. Predicted: the run's "
        "own prices.",
        "",
        "| model | workload | cap MiB (model) | on disk MiB auto / tuned / measured "
        "| read from disk per call MiB auto / tuned (embedding lookups aside) "
        "| measured ms auto / tuned / measured "
        "| tuned/auto measured (predicted) | measured/auto | predicted ms auto / tuned "
        "| prediction error auto / tuned |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        predicted_ratio = case.predicted["tuned"].latency_s / case.predicted["auto"].latency_s
        lines.append(
            f"| {case.model} | {case.workload} | {mib(case.cap)} ({mib(case.total)}) "
            f"| {' / '.join(mib(case.on_disk[name]) for name in MAPS)} "
            f"| {mib(case.streamed['auto'])} / {mib(case.streamed['tuned'])} "
            f"| {' / '.join(ms(case.measured[name].latency_s) for name in MAPS)} "
            f"| {ratio(case.ratio('tuned'))} ({predicted_ratio:.2f}) | {ratio(case.ratio('measured'))} "
            f"| {ms(case.predicted['auto'].latency_s)} / {ms(case.predicted['tuned'].latency_s)} "
            f"| {pct(case.error('auto'))} / {pct(case.error('tuned'))} |"
        )
    errors = [e for case in cases for e in (case.error("auto"), case.error("tuned")) if e is not None]
    generate = [(c, c.ratio("tuned"), c.ratio("measured")) for c in cases if c.workload == "generate"]
    tuned = [r for c in cases if (r := c.ratio("tuned")) is not None]
    picked = [r for c in cases if (r := c.ratio("measured")) is not None]
    original = [c for c in cases if c.model in ORIGINAL_MODELS]
    lines += [
        "",
        "- generate, tuned/auto (measured/auto): "
        + ", ".join(f"{c.model} {ratio(t)} ({ratio(m)})" for c, t, m in generate)
        + " (target <= 0.85 where auto streams more than it must).",
        f"- worst of all cases: tuned/auto {max(tuned):.2f}, measured/auto {max(picked):.2f} "
        "(target <= 1.05).",
        "- original cases, tuned/auto priced / measured (target <= 1.0 both): "
        + ", ".join(
            f"{c.model} {c.workload} {c.predicted['tuned'].latency_s / c.predicted['auto'].latency_s:.2f} / "
            f"{ratio(c.ratio('tuned'))}"
            for c in original
        )
        + ".",
        f"- prediction error: median {pct(statistics.median(errors))}, worst {pct(max(errors))} "
        "(target: median <= 10%, worst <= 20%); by model: "
        + ", ".join(
            f"{c.model} {c.workload} {pct(c.error('auto'))} / {pct(c.error('tuned'))}"
            for c in cases
            if c.model in FIXED_COST_MODELS
        )
        + " (auto / tuned).",
        "",
        "## Prediction error, four ways (auto / tuned)",
        "",
        "The run's prices come from this machine measured at the first case, each figure the best "
        "of several samples; the timing's median round includes the host's slow spells. Priced at "
        "the timing: the mean of the maps' prices with this machine measured just before and just "
        "after the timing; drift: the after / before ratio of those prices. Host duty: the mean over "
        "the fastest of single timings of `tuner hardware`'s reference computation, sampled for "
        f"{DUTY_WINDOW_S:.0f} s just before and after the timing: how much slower than its fast "
        "spells the host ran on average, which a price made of bests leaves out.",
        "",
        "| model | workload | " + " | ".join(title for title, *_ in ERROR_WAYS) + " | drift | host duty |",
        "|---|---|" + "---:|" * (len(ERROR_WAYS) + 2),
    ]
    for case in cases:
        cells = [
            f"{pct(case.error('auto', best=best, repriced=again, duty=duty))} / "
            f"{pct(case.error('tuned', best=best, repriced=again, duty=duty))}"
            for _, best, again, duty in ERROR_WAYS
        ]
        lines.append(
            f"| {case.model} | {case.workload} | {' | '.join(cells)} "
            f"| {case.drift():.2f} | {case.host_duty:.2f} |"
        )
    lines.append("")
    for title, best, again, duty in ERROR_WAYS:
        way = [
            e
            for c in cases
            for n in ("auto", "tuned")
            if (e := c.error(n, best=best, repriced=again, duty=duty)) is not None
        ]
        lines.append(f"- {title}: median {pct(statistics.median(way))}, worst {pct(max(way))}.")
    lines += [
        "",
        "## accelerate's auto against the cap",
        "",
        "accelerate plans `auto` from weight bytes alone; the tuner counts the KV cache and working "
        "set too, and keeps no map that overruns the cap once they are counted. Where `auto` does, "
        f"`{AUTO_FITTED}` is accelerate's `auto` for a cap lowered until its map fits the case's cap "
        "(what `from_pretrained` has to be asked for to stay within it), timed beside the others.",
        "",
        "| model | workload | auto over the cap, MiB | auto fitted | measured ms auto fitted / tuned "
        "| tuned/auto fitted measured (predicted) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        if AUTO_FITTED not in case.measured:
            lines.append(f"| {case.model} | {case.workload} | fits | - | - | - |")
            continue
        fitted_s, tuned_s = case.measured[AUTO_FITTED].latency_s, case.measured["tuned"].latency_s
        predicted_ratio = case.predicted["tuned"].latency_s / case.predicted[AUTO_FITTED].latency_s
        lines.append(
            f"| {case.model} | {case.workload} | {mib(case.auto_over_cap)} | {case.names[AUTO_FITTED]} "
            f"| {ms(fitted_s)} / {ms(tuned_s)} "
            f"| {ratio(tuned_s / fitted_s if fitted_s and tuned_s else None)} ({predicted_ratio:.2f}) |"
        )
    lines += [
        "",
        "## Phases, measured (predicted), ms",
        "",
        "| model | workload | map | prefill | decode per token | rounds min-max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for case in cases:
        for name in ("auto", AUTO_FITTED, "tuned"):
            if name not in case.measured:
                continue
            result, predicted = case.measured[name], case.predicted[name]
            decode = (
                f"{ms(result.decode_s)} ({ms(predicted.decode.total_s)})"
                if case.workload == "generate"
                else "-"
            )
            lines.append(
                f"| {case.model} | {case.workload} | {name} ({case.names[name]}) "
                f"| {ms(result.prefill_s)} ({ms(predicted.prefill.total_s)}) "
                f"| {decode} | {ms(min(result.samples_s))}-{ms(max(result.samples_s))} |"
            )
    lines += ["", "## Units on disk", ""]
    for case in cases:
        for name in case.maps:
            disk_units = [unit for unit, place in case.maps[name].placements if place == "disk"]
            lines.append(
                f"- {case.model} {case.workload} {name} ({case.names[name]}): "
                + (", ".join(disk_units) or "none")
            )
    lines += [
        "",
        "Seconds per case, optimize / optimize --measure: "
        + ", ".join(f"{c.model} {c.workload} {c.search_s:.0f} / {c.measure_s:.0f}" for c in cases)
        + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for profiling and runs alike (1: steadiest on a shared box)",
    )
    parser.add_argument("--caps", default="0.5", help="cpu caps, shares of the model's bytes: 0.5,0.75")
    parser.add_argument("--models", default="llama,gpt2,t5,llama200,narrow")
    parser.add_argument("--workloads", default="forward,generate")
    parser.add_argument("--measure", type=int, default=3, metavar="K", help="optimize --measure K")
    parser.add_argument("--name", default="real_cpu", help="result file name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    load_before = f"{os.getloadavg()[0]:.2f}"
    print(f"load average {load_before} on {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="tuner-real-cpu-") as tmp:
        root = Path(tmp)
        store = Store(f"sqlite:///{root / 'tuner.db'}")
        for model in args.models.split(","):
            folder = model_folder(model, root)
            for workload in args.workloads.split(","):
                if model in FIXED_COST_MODELS and workload != "generate":
                    continue
                for fraction in (float(f) for f in args.caps.split(",")):
                    case = run_case(store, folder, model, workload, fraction, args)
                    cases.append(case)
                    print(
                        f"{model:6} {workload:8} cap {mib(case.cap)} MiB: "
                        + ", ".join(f"{name} {ms(case.measured[name].latency_s)} ms" for name in MAPS)
                        + f"; tuned/auto {ratio(case.ratio('tuned'))}, "
                        + f"measured/auto {ratio(case.ratio('measured'))}; "
                        f"predicted auto {ms(case.predicted['auto'].latency_s)} ms, "
                        f"tuned {ms(case.predicted['tuned'].latency_s)} ms",
                        flush=True,
                    )
        store.close()
    lines = report(cases, args, time.perf_counter() - started, load_before)
    print("\n".join(lines))
    print(f"written to {write_result(args.name, lines)}")


if __name__ == "__main__":
    main()

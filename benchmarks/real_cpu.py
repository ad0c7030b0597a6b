"""Real CPU: accelerate's ``auto`` map against the tuned map, both loaded and timed here.

For an 8-layer hidden-1024 Llama (examples/llama-8x1024), a GPT-2 and a T5 of similar size
(random weights written with ``save_pretrained``), at a forward workload (batch 1, seq 128) and
a generate workload (batch 1, seq 32, 32 new tokens), with ``max_memory={"cpu": cap}`` caps that
force part of the model to disk:

- ``auto``: accelerate's own plan for that cap (``tuner.baselines.accelerate_maps`` on the meta
  model, for a cpu + disk machine whose free cpu memory is the cap; the same plan
  ``from_pretrained(device_map="auto", max_memory=...)`` makes);
- ``tuned``: the winner of ``tuner.api.optimize(..., max_memory="cpu=<cap>")``, which profiles
  the model on this CPU, measures this machine and searches, all into a temporary database.

Both maps are loaded once and timed interleaved in one process (`tuner.validate.
measure_interleaved`), so drift on a shared machine hits both alike. Printed per case: measured
latency of each, tuned/auto, and each map's prediction error (the run's predicted latency
against the measurement).

``--cold`` drops each checkpoint read from the page cache right after it is read, emulating a
machine whose RAM cannot also cache the offloaded weights (what the cost model's disk link,
measured with the page cache dropped, assumes). Without it, the artificial cap leaves the whole
checkpoint in the page cache, and ``disk`` units stream at memory speed.

    python -m benchmarks.real_cpu [--rounds 5] [--trials 150] [--threads 1] [--caps 0.5] [--cold]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig
from transformers import GPT2Config
from transformers import PretrainedConfig
from transformers import T5Config

from benchmarks.common import EXAMPLE
from benchmarks.common import machine
from benchmarks.common import write_result
from profiler.hardware import describe_hardware
from profiler.model import build_meta_model
from profiler.model import trace_graph
from profiler.source import resolve_source
from storage import Store
from tuner.api import optimize
from tuner.baselines import accelerate_maps
from tuner.costmodel import CostModel
from tuner.domain import OFFLOAD
from tuner.domain import Device
from tuner.domain import DeviceMap
from tuner.domain import HardwareProfile
from tuner.domain import Link
from tuner.domain import ModelGraph
from tuner.domain import Prediction
from tuner.domain import Run
from tuner.domain import Workload
from tuner.validate import Validation
from tuner.validate import measure_interleaved

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


@dataclass(frozen=True)
class Pick:
    """What ``tuner optimize --measure K`` would keep, emulated: the map, how many maps were
    timed, and its latency over auto's in a second interleaved measurement of just the two."""

    name: str
    contenders: int
    ratio: float


@dataclass(frozen=True)
class Case:
    model: str
    workload: str
    cap: int
    total: int
    auto: DeviceMap
    tuned: DeviceMap
    tuned_name: str
    predicted: dict[str, Prediction]
    repriced: dict[str, tuple[float, float]]
    disk_link: Link
    read_s: dict[str, float]
    layer_bytes: tuple[tuple[str, int], ...]
    measured: dict[str, Validation]
    streamed: dict[str, int]
    on_disk: dict[str, int]
    search_s: float
    pick: Pick | None = None

    def ratio(self) -> float | None:
        auto, tuned = self.measured["auto"].latency_s, self.measured["tuned"].latency_s
        return tuned / auto if auto and tuned else None

    def repriced_latency(self, name: str) -> float:
        prefill, decode = self.repriced[name]
        return prefill + WORKLOADS[self.workload].new_tokens * decode

    def error(self, name: str, repriced: bool = False) -> float | None:
        measured = self.measured[name].latency_s
        predicted = self.repriced_latency(name) if repriced else self.predicted[name].latency_s
        return abs(predicted - measured) / measured if measured else None


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
        _drop(str(file))
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
    """Bytes a whole call reads from disk: each disk unit's parameters, on every call of it."""
    total = 0
    for unit in graph.units:
        if dmap.placement(unit.name) in OFFLOAD and dmap.placement(unit.name) != dmap.main_device:
            total += unit.param_bytes * (unit.calls + workload.new_tokens * unit.decode_calls)
    return total


def run_case(
    store: Store, folder: Path, model: str, workload_name: str, fraction: float, args: argparse.Namespace
) -> Case:
    workload = WORKLOADS[workload_name]
    meta = build_meta_model(resolve_source(str(folder)), workload.dtype)
    graph = trace_graph(meta, workload)
    cap = int(fraction * graph.total_bytes)
    started = time.perf_counter()
    run: Run = optimize(
        str(folder),
        store,
        max_memory=f"cpu={cap}",
        batch=workload.batch,
        seq=workload.seq,
        new_tokens=workload.new_tokens,
        dtype=workload.dtype,
        trials=args.trials,
        random_seed=0,
    ).run
    search_s = time.perf_counter() - started
    if run.winner is None or run.winner.prediction is None:
        raise SystemExit(f"{model} {workload_name}: the tuner found no feasible map for cap {cap}")
    planned = {c.name: c.device_map for c in accelerate_maps(meta.model, graph.unit_names, cpu_and_disk(cap))}
    auto = planned["auto"]
    run_auto = run.baseline("auto")
    if run_auto.device_map != auto or run_auto.prediction is None:
        raise SystemExit(f"{model} {workload_name}: the run's auto map is not accelerate's plan (cap {cap})")
    maps = {"auto": auto, "tuned": run.winner.device_map}
    with page_cache(args.cold):
        measured = measure_interleaved(str(folder), maps, workload, rounds=args.rounds)
    parameters = {name for name, _ in meta.model.named_parameters()}
    read_s = unit_read_seconds(folder, graph, parameters, cold=args.cold)
    hardware = store.find_hardware(run.hardware_fingerprint)
    profile = store.find_profile(meta.fingerprint(), run.hardware_fingerprint, workload)
    assert hardware is not None and profile is not None  # optimize stored both
    disk_link = hardware.link("disk", "cpu")
    free = Link("disk", "cpu", 0.0, 1e18)
    others = tuple(x for x in hardware.links if (x.src, x.dst) != ("disk", "cpu"))
    no_stream = replace(hardware, links=(*others, free))
    repricer = CostModel(profile.graph, profile.units, no_stream, workload, max_memory=run.max_memory)
    layer_classes = set(graph.no_split_classes)
    for name, result in measured.items():
        if not result.ok:
            raise SystemExit(f"{model} {workload_name} {name}: {result.reason}")
    return Case(
        model=model,
        workload=workload_name,
        cap=cap,
        total=graph.total_bytes,
        auto=auto,
        tuned=run.winner.device_map,
        tuned_name=run.winner.name,
        predicted={"auto": run_auto.prediction, "tuned": run.winner.prediction},
        repriced={name: reprice(repricer, dmap, graph, read_s) for name, dmap in maps.items()},
        disk_link=disk_link,
        read_s=read_s,
        layer_bytes=tuple((u.name, u.param_bytes) for u in graph.units if u.module_class in layer_classes),
        measured=measured,
        streamed={name: streamed_bytes(graph, dmap, workload) for name, dmap in maps.items()},
        on_disk={
            name: sum(u.param_bytes for u in graph.units if dmap.placement(u.name) == "disk")
            for name, dmap in maps.items()
        },
        search_s=search_s,
        pick=measured_pick(store, run, folder, workload, auto, args) if args.measure else None,
    )


def measured_pick(
    store: Store, run: Run, folder: Path, workload: Workload, auto: DeviceMap, args: argparse.Namespace
) -> Pick:
    """The K best modelled maps of the run (distinct, feasible) and auto, timed interleaved; the
    fastest is then timed against auto alone, since the selecting timings favour a lucky map."""
    ranked = sorted(
        (c for c in store.list_candidates(run.id) if c.prediction is not None and c.prediction.feasible),
        key=lambda c: c.prediction.latency_s if c.prediction else 0.0,
    )
    contenders = {"auto": auto}
    for candidate in ranked:
        if len(contenders) > args.measure:
            break
        if candidate.device_map not in contenders.values():
            contenders[candidate.name] = candidate.device_map
    with page_cache(args.cold):
        first = measure_interleaved(str(folder), contenders, workload, rounds=args.rounds)
    timed = {name: result.latency_s for name, result in first.items() if result.ok and result.latency_s}
    best = min(timed, key=lambda name: timed[name])
    if best == "auto":
        return Pick("auto", len(contenders), 1.0)
    with page_cache(args.cold):
        pair = {"auto": auto, best: contenders[best]}
        second = measure_interleaved(str(folder), pair, workload, rounds=args.rounds)
    auto_s, best_s = second["auto"].latency_s, second[best].latency_s
    return Pick(best, len(contenders), best_s / auto_s if auto_s and best_s else float("nan"))


def unit_read_seconds(
    folder: Path, graph: ModelGraph, parameters: set[str], *, cold: bool
) -> dict[str, float]:
    """Seconds one call of each unit spends having its weights read as accelerate reads them.

    For a ``disk`` unit accelerate's hook takes every parameter from the checkpoint through
    ``OffloadedWeightsLoader`` (``safe_open`` + ``get_tensor``) before each forward. The tensor
    maps the file, so its bytes arrive as page faults when the forward first touches them: per
    parameter this times the read plus one pass over the tensor, less the same pass over a
    resident copy (the compute reads the weight either way); median of three, summed per unit.
    """
    from accelerate.utils.offload import OffloadedWeightsLoader
    from safetensors import safe_open

    from profiler.model import tensor_owner

    units = set(graph.unit_names)
    seconds = dict.fromkeys(graph.unit_names, 0.0)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            names = [name for name in handle.keys() if name in parameters]
        index = {name: {"safetensors_file": str(file), "weight_name": name} for name in names}
        loader = OffloadedWeightsLoader(index=index)
        for name in names:
            extra = []
            for attempt in range(4):
                if cold:
                    _drop(str(file))
                begin = time.perf_counter()
                tensor = loader[name]
                tensor.sum()
                read = time.perf_counter() - begin
                resident = tensor.clone()
                begin = time.perf_counter()
                resident.sum()
                touched = time.perf_counter() - begin
                del tensor, resident
                if attempt or cold:  # warm: the first read fills the page cache
                    extra.append(max(0.0, read - touched))
            seconds[tensor_owner(units, name)] += statistics.median(extra)
    return seconds


def reprice(
    model: CostModel, dmap: DeviceMap, graph: ModelGraph, read_s: dict[str, float]
) -> tuple[float, float]:
    """(prefill, decode step) seconds of `dmap` by the cost model's own formula, with each disk
    unit's stream time taken from `read_s` instead of ``alpha + bytes / beta``."""
    base = model.predict(dmap)
    prefill, decode = base.prefill.total_s, base.decode.total_s
    for unit in graph.units:
        if dmap.placement(unit.name) == "disk":
            prefill += unit.calls * read_s[unit.name]
            decode += unit.decode_calls * read_s[unit.name]
    return prefill, decode


def _drop(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def page_cache(cold: bool) -> Iterator[None]:
    """With `cold`, every offloaded weight read is dropped from the page cache right after it is
    read, so the next forward reads it from the device again (benchmark-only emulation)."""
    if not cold:
        yield
        return
    from accelerate.utils import offload

    original = offload.OffloadedWeightsLoader.__getitem__

    def read_then_drop(self: offload.OffloadedWeightsLoader, key: str) -> torch.Tensor:
        tensor = original(self, key)
        info = self.index.get(key, {}) if key not in self.state_dict else {}
        path = info.get("safetensors_file")
        if info and not path:
            path = os.path.join(self.save_folder, f"{key}.dat")
        if path:
            _drop(path)
        return tensor

    offload.OffloadedWeightsLoader.__getitem__ = read_then_drop  # type: ignore[method-assign]
    try:
        yield
    finally:
        offload.OffloadedWeightsLoader.__getitem__ = original  # type: ignore[method-assign]


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f}"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def report(cases: list[Case], args: argparse.Namespace, seconds: float) -> list[str]:
    mode = "cold (each offloaded read dropped from the page cache)" if args.cold else "warm page cache"
    lines = [
        "# Real CPU: accelerate's auto map vs the tuned map, loaded and measured",
        "",
        f"{machine()}; fp32; {args.rounds} interleaved rounds per case (median); disk reads: {mode}; "
        f"{args.trials} search trials; {seconds / 60:.1f} min in all. "
        "Written by `python -m benchmarks.real_cpu`.",
        "",
        "Models: Llama 8x1024 (examples/llama-8x1024), GPT-2 8x1024 (vocab 50257, tied head), "
        "T5 4+4 x 1024 (d_ff 2816, untied head); random weights, safetensors. "
        "Workloads: forward = batch 1, seq 128; generate = batch 1, seq 32, 32 new tokens. "
        "Cap: `max_memory={'cpu': cap}`. auto: accelerate's plan for the cap; tuned: the winner of "
        "`tuner.api.optimize(..., max_memory='cpu=<cap>')`. Predicted: the run's own prices.",
        "",
        "| model | workload | cap MiB (model) | on disk MiB auto / tuned | read from disk per call MiB "
        "auto / tuned | measured ms auto / tuned | tuned/auto measured (predicted) "
        "| predicted ms auto / tuned | prediction error auto / tuned | cpu peak MiB auto / tuned |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        auto, tuned = case.measured["auto"], case.measured["tuned"]
        predicted_ratio = case.predicted["tuned"].latency_s / case.predicted["auto"].latency_s
        ratio = case.ratio()
        lines.append(
            f"| {case.model} | {case.workload} | {mib(case.cap)} ({mib(case.total)}) "
            f"| {mib(case.on_disk['auto'])} / {mib(case.on_disk['tuned'])} "
            f"| {mib(case.streamed['auto'])} / {mib(case.streamed['tuned'])} "
            f"| {ms(auto.latency_s)} / {ms(tuned.latency_s)} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} ({predicted_ratio:.2f}) "
            f"| {ms(case.predicted['auto'].latency_s)} / {ms(case.predicted['tuned'].latency_s)} "
            f"| {pct(case.error('auto'))} / {pct(case.error('tuned'))} "
            f"| {mib(auto.peak_memory.get('cpu', 0))} / {mib(tuned.peak_memory.get('cpu', 0))} |"
        )
    errors = [e for case in cases for e in (case.error("auto"), case.error("tuned")) if e is not None]
    repriced = [
        e for case in cases for e in (case.error("auto", True), case.error("tuned", True)) if e is not None
    ]
    generate = [r for c in cases if c.workload == "generate" and (r := c.ratio()) is not None]
    ratios = [r for c in cases if (r := c.ratio()) is not None]
    picked = [(c, c.pick) for c in cases if c.pick is not None]
    lines += [
        "",
        f"- tuned/auto, generate: {', '.join(f'{r:.2f}' for r in generate) or '-'} "
        "(target <= 0.85 where auto streams more than it must); "
        f"worst of all cases {max(ratios):.2f} (target <= 1.05).",
        *(
            [
                f"- `--measure {args.measure}` emulated (the {args.measure} best modelled maps and auto "
                "timed interleaved, the fastest kept, then timed against auto alone): picked/auto "
                + ", ".join(f"{c.model} {c.workload} {pick.ratio:.2f} ({pick.name})" for c, pick in picked)
                + "."
            ]
            if args.measure
            else []
        ),
        f"- prediction error, the run's prices: median {pct(statistics.median(errors))}, "
        f"largest {pct(max(errors))} (target <= 15%).",
        f"- prediction error, re-priced (the same cost model and profile, each disk unit's stream time "
        f"measured on accelerate's own read path instead of the tuner's disk link): median "
        f"{pct(statistics.median(repriced))}, largest {pct(max(repriced))}.",
        "",
        "## Streaming from disk: the tuner's link vs accelerate's read path",
        "",
        "The run prices a disk unit at `alpha + bytes / beta` of the disk->cpu link `tuner hardware` "
        "measures (page cache dropped, large reads). Re-priced: each unit's measured read time per call "
        "(`OffloadedWeightsLoader` read + first touch, less a resident touch, summed over its tensors).",
        "",
        "| model | workload | tuner's link: alpha ms, GB/s | one layer: link ms / read path ms "
        "| re-priced ms auto / tuned | error auto / tuned | tuned/auto re-priced |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        link = case.disk_link
        layer = max(case.layer_bytes, key=lambda item: item[1])
        lines.append(
            f"| {case.model} | {case.workload} | {link.alpha_s * 1e3:.2f}, {link.beta_bytes_per_s / 1e9:.2f} "
            f"| {ms(link.seconds(layer[1]))} / {case.read_s[layer[0]] * 1e3:.1f} "
            f"| {ms(case.repriced_latency('auto'))} / {ms(case.repriced_latency('tuned'))} "
            f"| {pct(case.error('auto', True))} / {pct(case.error('tuned', True))} "
            f"| {case.repriced_latency('tuned') / case.repriced_latency('auto'):.2f} |"
        )
    lines += [
        "",
        "## Phases, measured (predicted; re-priced), ms",
        "",
        "| model | workload | map | prefill | decode per token | rounds min-max |",
        "|---|---|---|---:|---:|---:|",
    ]
    for case in cases:
        for name in ("auto", "tuned"):
            result, predicted, again = case.measured[name], case.predicted[name], case.repriced[name]
            decode = (
                f"{ms(result.decode_s)} ({ms(predicted.decode.total_s)}; {ms(again[1])})"
                if case.workload == "generate"
                else "-"
            )
            label = name if name == "auto" else f"tuned ({case.tuned_name})"
            lines.append(
                f"| {case.model} | {case.workload} | {label} "
                f"| {ms(result.prefill_s)} ({ms(predicted.prefill.total_s)}; {ms(again[0])}) "
                f"| {decode} | {ms(min(result.samples_s))}-{ms(max(result.samples_s))} |"
            )
    lines += ["", "## Units on disk", ""]
    for case in cases:
        for name, dmap in (("auto", case.auto), ("tuned", case.tuned)):
            disk_units = [unit for unit, place in dmap.placements if place == "disk"]
            lines.append(f"- {case.model} {case.workload} {name}: {', '.join(disk_units) or 'none'}")
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
    parser.add_argument("--models", default="llama,gpt2,t5")
    parser.add_argument("--workloads", default="forward,generate")
    parser.add_argument("--cold", action="store_true", help="drop offloaded reads from the page cache")
    parser.add_argument(
        "--measure", type=int, default=3, metavar="K", help="also emulate `optimize --measure K` (0: skip)"
    )
    parser.add_argument("--name", default="real_cpu", help="result file name under benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    started = time.perf_counter()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="tuner-real-cpu-") as tmp:
        root = Path(tmp)
        store = Store(f"sqlite:///{root / 'tuner.db'}")
        for model in args.models.split(","):
            folder = model_folder(model, root)
            for workload in args.workloads.split(","):
                for fraction in (float(f) for f in args.caps.split(",")):
                    case = run_case(store, folder, model, workload, fraction, args)
                    cases.append(case)
                    print(
                        f"{model:6} {workload:8} cap {mib(case.cap)} MiB: "
                        f"auto {ms(case.measured['auto'].latency_s)} ms, "
                        f"tuned {ms(case.measured['tuned'].latency_s)} ms ({case.tuned_name}), "
                        f"tuned/auto {case.ratio():.2f}; predicted {ms(case.predicted['auto'].latency_s)} / "
                        f"{ms(case.predicted['tuned'].latency_s)} ms; tuning took {case.search_s:.0f} s",
                        flush=True,
                    )
        store.close()
    lines = report(cases, args, time.perf_counter() - started)
    print("\n".join(lines))
    print(f"written to {write_result(args.name, lines)}")


if __name__ == "__main__":
    main()

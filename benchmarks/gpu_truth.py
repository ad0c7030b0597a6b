"""GPU truth: what the tool predicts on a GPU against what the GPU does, in one command.

On one CUDA GPU (about 4 minutes on an H200), into ``benchmarks/results/gpu_truth.md``:

1. **links**: this machine measured as ``tuner hardware`` does: host <-> GPU copies through pinned
   memory and through pageable memory as accelerate's hooks make them, each ``alpha`` and ``beta``;
   and whether the measurement was taken on a busy machine.
2. **per unit vs whole model**: a 7B-shaped Llama (Llama-2-7B's config: hidden 4096, 32 layers,
   vocabulary 32000) in bfloat16 with random weights, built on the GPU from its config (nothing
   downloaded): the prefill and a decode step the tool predicts from its per-unit profile, against
   the whole model's ``generate`` timed on the GPU.
3. **offloaded**: the same model with a GPU cap (``max_memory``) that forces part of it to the cpu:
   accelerate's own ``auto`` map and the tool's tuned map (``tuner.optimize``), each predicted
   and measured (``dispatch_model`` with the map, as ``from_pretrained`` dispatches it, and
   ``generate`` timed in interleaved rounds), with the prediction error and tuned over auto.

``--device cpu --small`` runs the same steps on the cpu with a tiny Llama in float32 and a cpu cap
that sends part of it to disk: a dry run of the logic in seconds, which the tests run; its output
goes where ``--output`` says (nowhere by default), never over the GPU's results.

    python -m benchmarks.gpu_truth                                   # on a CUDA machine
    python -m benchmarks.gpu_truth --device cpu --small --output /tmp/gpu_truth.md

``benchmarks/gpu_check.sh`` runs it after ``pytest -m gpu``, on a GPU machine that lacks part of the
tuner's stack too (it says how).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers import LlamaConfig
from transformers import LogitsProcessor
from transformers import LogitsProcessorList

import tuner
from benchmarks.common import RESULTS
from benchmarks.common import machine
from profiler.hardware import measure_hardware
from storage import Store
from tuner.core.domain import Candidate
from tuner.core.domain import HardwareProfile
from tuner.core.domain import Link
from tuner.core.domain import Prediction
from tuner.core.sizes import format_bytes
from tuner.workflows import OptimizeListener

MiB = 1 << 20
KiB = 1 << 10

#: Llama-2-7B's shape (its config.json), random weights: 6.74e9 parameters, 12.6 GiB in bfloat16.
SEVEN_B: dict[str, Any] = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
#: The dry run's model: the same family, small enough to build, profile and time in seconds.
SMALL: dict[str, Any] = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=1024,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class Settings:
    """What one invocation measures."""

    device: str  # "cuda" or "cpu"
    small: bool
    seq: int
    new_tokens: int
    rounds: int
    trials: int
    cap: float  # share of the weights the main device may hold
    output: Path | None

    @property
    def main(self) -> str:
        """The main device as a placement key."""
        return "0" if self.device == "cuda" else "cpu"

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.device == "cuda" else "float32"


@dataclass
class Timed:
    """Medians of the timed ``generate`` calls of one map."""

    prefill_s: float
    decode_s: float | None
    total_s: float
    peak_bytes: int | None = None
    samples: list[float] = field(default_factory=list)


class Notes(OptimizeListener):
    """Keeps what the tool says about its measurements (a busy machine, a calibration)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


class _Stamps(LogitsProcessor):
    """The end of every forward of a ``generate`` call, after the device finished it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _sync(self.device)
        self.marks.append(time.perf_counter())
        return scores


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_folder(settings: Settings, root: Path) -> Path:
    """A folder holding only the config.json: the tool profiles and plans from it."""
    folder = root / ("llama-small" if settings.small else "llama-7b-shape")
    config = LlamaConfig(**(SMALL if settings.small else SEVEN_B), architectures=["LlamaForCausalLM"])
    config.dtype = settings.dtype
    config.save_pretrained(folder)
    return folder


def build(folder: Path, settings: Settings, hf_map: dict[str, int | str], offload: Path) -> torch.nn.Module:
    """The model with random weights, dispatched with `hf_map` as ``from_pretrained`` dispatches a
    map: built on the main device (random initialisation is fast there), the ``cpu`` units' weights
    moved to pageable cpu memory and streamed by accelerate's hooks, ``disk`` units' written to
    `offload` and read back on every call."""
    from accelerate import dispatch_model

    config = LlamaConfig.from_pretrained(folder)
    main = torch.device("cuda", 0) if settings.device == "cuda" else torch.device("cpu")
    with torch.device(main):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings.dtype)).eval()
    places = set(hf_map.values())
    if places == {0 if settings.device == "cuda" else "cpu"}:
        return model
    state_dict = None
    cpu_units = [name for name, place in hf_map.items() if place == "cpu"]
    if settings.device == "cuda" and cpu_units:
        # as a checkpoint loads: the offloaded units' weights in pageable host memory
        state_dict = {
            key: tensor.to("cpu")
            for key, tensor in model.state_dict().items()
            if any(key == unit or key.startswith(unit + ".") for unit in cpu_units)
        }
    main_key: int | str = 0 if settings.device == "cuda" else "cpu"
    return dispatch_model(
        model,
        device_map=hf_map,
        main_device=main_key,
        state_dict=state_dict,
        offload_dir=str(offload) if "disk" in places else None,
    )


def time_maps(models: dict[str, torch.nn.Module], settings: Settings, vocab: int) -> dict[str, Timed]:
    """Each model's ``generate`` of `settings.new_tokens` greedy tokens, one warm-up call each, then
    `settings.rounds` rounds that call every model once, so drift hits all alike."""
    main = torch.device("cuda", 0) if settings.device == "cuda" else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, settings.seq), generator=generator).to(main)
    samples: dict[str, list[tuple[float, float, float | None]]] = {name: [] for name in models}
    peaks: dict[str, int | None] = {}

    def call(model: torch.nn.Module) -> tuple[float, float, float | None]:
        stamps = _Stamps(main)
        _sync(main)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=settings.new_tokens,
                min_new_tokens=settings.new_tokens,
                do_sample=False,
                pad_token_id=0,
                logits_processor=LogitsProcessorList([stamps]),
            )
        _sync(main)
        total = time.perf_counter() - start
        steps = len(stamps.marks) - 1
        decode = (stamps.marks[-1] - stamps.marks[0]) / steps if steps > 0 else None
        return total, stamps.marks[0] - start, decode

    for name, model in models.items():
        peaks[name] = None
        if main.type == "cuda":
            # this model's own: its resident tensors plus what its call allocates, not the others'
            resident = sum(
                t.numel() * t.element_size()
                for t in [*model.parameters(), *model.buffers()]
                if t.device.type == "cuda"
            )
            before = torch.cuda.memory_allocated(main)
            torch.cuda.reset_peak_memory_stats(main)
        call(model)
        if main.type == "cuda":
            peaks[name] = resident + torch.cuda.max_memory_allocated(main) - before
    for _ in range(settings.rounds):
        for name, model in models.items():
            samples[name].append(call(model))
    timed = {}
    for name, rows in samples.items():
        decodes = [row[2] for row in rows if row[2] is not None]
        timed[name] = Timed(
            prefill_s=statistics.median(row[1] for row in rows),
            decode_s=statistics.median(decodes) if decodes else None,
            total_s=statistics.median(row[0] for row in rows),
            peak_bytes=peaks[name],
            samples=[row[0] for row in rows],
        )
    return timed


def streamed_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights accelerate's hooks copy in for every forward: those it left on the meta
    device, read from the cpu or the disk at their module's call."""
    return sum(t.numel() * t.element_size() for t in model.parameters() if t.device.type == "meta")


def host_links(hardware: HardwareProfile) -> list[tuple[str, Link]]:
    """The links between the host and the GPUs, pinned and pageable, and the disk's."""
    gpus = {device.key for device in hardware.devices if device.kind == "cuda"}
    rows = [
        ("pinned", link)
        for link in hardware.links
        if {link.src, link.dst} & gpus and "cpu" in (link.src, link.dst)
    ]
    rows += [("pageable", link) for link in hardware.pageable]
    rows += [("storage", link) for link in hardware.links if link.src == "disk"]
    if hardware.page_cache is not None:
        rows.append(("page cache", hardware.page_cache))
    return rows


def unit_runs(units: list[str]) -> str:
    """`units` in order, runs of consecutive numbered siblings joined: ``model.embed_tokens,
    model.layers.17-31, lm_head``."""
    parts: list[tuple[str, int, int] | str] = []
    for unit in units:
        prefix, _, number = unit.rpartition(".")
        last = parts[-1] if parts else None
        if number.isdigit() and isinstance(last, tuple) and last[0] == prefix and last[2] + 1 == int(number):
            parts[-1] = (prefix, last[1], int(number))
        elif number.isdigit():
            parts.append((prefix, int(number), int(number)))
        else:
            parts.append(unit)
    return ", ".join(
        part
        if isinstance(part, str)
        else f"{part[0]}.{part[1]}" + (f"-{part[2]}" if part[2] > part[1] else "")
        for part in parts
    )


def error(predicted: float | None, measured: float | None) -> str:
    """(predicted - measured) / measured, signed: positive is a prediction too slow."""
    if predicted is None or measured is None or measured <= 0:
        return "-"
    return f"{(predicted - measured) / measured:+.0%}"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def size(nbytes: int | None) -> str:
    return "-" if nbytes is None else format_bytes(nbytes)


@contextlib.contextmanager
def stage(name: str, seconds: dict[str, float]) -> Iterator[None]:
    print(f"... {name}", flush=True)
    begin = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - begin
    print(f"    {name}: {seconds[name]:.1f} s", flush=True)


def run(settings: Settings) -> list[str]:
    """Every step, then the report's lines."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    seconds: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="tuner-gpu-truth-"))
    db = f"sqlite:///{root / 'tuner.db'}"
    folder = model_folder(settings, root)
    options: dict[str, Any] = dict(
        seq=settings.seq, new_tokens=settings.new_tokens, dtype=settings.dtype, db=db
    )
    notes = Notes()

    with stage("measuring this machine", seconds):
        small = dict(sizes=(256 * KiB, 1 * MiB, 4 * MiB), repeats=1) if settings.small else {}
        hardware = measure_hardware(**small)  # type: ignore[arg-type]
        with Store(db) as store:
            store.save_hardware(hardware)

    with stage("whole model on the main device: predicted", seconds):
        whole = tuner.price(str(folder), {"": settings.main}, listener=notes, **options)
    weights = sum(memory.weights for memory in whole.memory)
    cap = int(weights * settings.cap)
    with stage("tuned and auto under the cap", seconds):
        found = tuner.optimize(
            str(folder),
            max_memory={settings.main: cap},
            trials=settings.trials,
            random_seed=0,
            listener=notes,
            **options,
        )
    assert found.winner is not None  # optimize raises when no map fits
    maps: dict[str, Candidate] = {"tuned": found.winner, "auto": found.baseline("auto")}

    with stage("whole model: measured", seconds):
        vocab = LlamaConfig.from_pretrained(folder).vocab_size
        whole_model = build(
            folder, settings, {"": 0 if settings.device == "cuda" else "cpu"}, root / "unused"
        )
        whole_timed = time_maps({"whole": whole_model}, settings, vocab)["whole"]
        del whole_model
        if settings.device == "cuda":
            torch.cuda.empty_cache()

    with stage("tuned and auto: measured", seconds):
        models = {
            name: build(folder, settings, candidate.device_map.to_hf(), root / f"offload-{name}")
            for name, candidate in maps.items()
        }
        timed = time_maps(models, settings, vocab)
        streams = {name: streamed_bytes(model) for name, model in models.items()}
        del models

    return report(
        settings,
        hardware=hardware,
        whole=whole,
        whole_timed=whole_timed,
        maps=maps,
        timed=timed,
        streams=streams,
        cap=cap,
        weights=weights,
        notes=notes.notes,
        seconds=seconds,
        load=(load_before, os.getloadavg()[0]),
        total=time.perf_counter() - started,
    )


def report(
    settings: Settings,
    *,
    hardware: HardwareProfile,
    whole: Prediction,
    whole_timed: Timed,
    maps: dict[str, Candidate],
    timed: dict[str, Timed],
    streams: dict[str, int],
    cap: int,
    weights: int,
    notes: list[str],
    seconds: dict[str, float],
    load: tuple[float, float],
    total: float,
) -> list[str]:
    shape = (
        "small Llama (hidden 256, 4 layers)" if settings.small else "7B-shaped Llama (Llama-2-7B's config)"
    )
    device = torch.cuda.get_device_name(0) if settings.device == "cuda" else "cpu (dry run)"
    quiet = f"while busy: {hardware.busy}" if hardware.busy else "on a quiet machine"
    lines = [
        "# GPU truth: predicted against measured on a GPU",
        "",
        f"`python -m benchmarks.gpu_truth{' --device cpu' if settings.device == 'cpu' else ''}"
        f"{' --small' if settings.small else ''}`: {shape}, {settings.dtype}, random weights built on the "
        f"device from its config; batch 1, seq {settings.seq}, {settings.new_tokens} new tokens; "
        f"{settings.rounds} interleaved rounds per map, medians.",
        f"Device: {device}. Host: {machine()}, {os.cpu_count()} cpus. Load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after; hardware measured {quiet}.",
        f"Took {total:.0f} s: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items()) + ".",
        "",
        "## Links (alpha per copy, beta)",
        "",
        "| link | path | alpha | beta |",
        "|---|---|---|---|",
    ]
    for kind, link in host_links(hardware):
        alpha, beta = f"{link.alpha_s * 1e6:.1f} us", f"{link.beta_bytes_per_s / 1e9:.2f} GB/s"
        lines.append(row(f"{link.src} -> {link.dst}", kind, alpha, beta))
    lines += [
        "",
        "## Per unit predicted vs the whole model measured",
        "",
        f"Every unit on {settings.main}: the prediction is the sum of the per-unit profile "
        "(compute) plus the transfers between units; the measurement one `generate` of the whole model.",
        "",
        "| phase | predicted | of which compute | measured | error |",
        "|---|---|---|---|---|",
        row(
            "prefill",
            ms(whole.prefill.total_s),
            ms(whole.prefill.compute_s),
            ms(whole_timed.prefill_s),
            error(whole.prefill.total_s, whole_timed.prefill_s),
        ),
        row(
            "decode step",
            ms(whole.decode.total_s),
            ms(whole.decode.compute_s),
            ms(whole_timed.decode_s),
            error(whole.decode.total_s, whole_timed.decode_s),
        ),
        row(
            "generate",
            ms(whole.latency_s),
            "",
            ms(whole_timed.total_s),
            error(whole.latency_s, whole_timed.total_s),
        ),
        "",
        f"## Offloaded: {settings.main} capped at {size(cap)} of {size(weights)} of weights",
        "",
        "| map | units offloaded | predicted generate | measured | error | predicted prefill / step "
        "| measured prefill / step | peak on the main device: predicted / measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, candidate in maps.items():
        prediction = candidate.prediction
        assert prediction is not None
        measured = timed[name]
        offloaded = sum(
            1 for _, place in candidate.device_map.placements if place in {"cpu", "disk"} - {settings.main}
        )
        main_memory = next((m.total for m in prediction.memory if m.device == settings.main), None)
        lines.append(
            row(
                name,
                f"{offloaded} of {len(candidate.device_map.placements)}",
                ms(prediction.latency_s),
                ms(measured.total_s),
                error(prediction.latency_s, measured.total_s),
                f"{ms(prediction.prefill.total_s)} / {ms(prediction.decode.total_s)}",
                f"{ms(measured.prefill_s)} / {ms(measured.decode_s)}",
                f"{size(main_memory)} / {size(measured.peak_bytes)}",
            )
        )
    lines.append("")
    for name, candidate in maps.items():
        away = [unit for unit, place in candidate.device_map.placements if place != settings.main]
        decode_s = timed[name].decode_s
        rate = f", {streams[name] / decode_s / 1e9:.2f} GB/s in its measured decode step" if decode_s else ""
        lines.append(f"- {name} offloads {unit_runs(away)}: streams {size(streams[name])} per forward{rate}")
    tuned, auto = maps["tuned"].prediction, maps["auto"].prediction
    assert tuned is not None and auto is not None
    lines += [
        "",
        f"tuned over auto: predicted {tuned.latency_s / auto.latency_s:.2f}x, measured "
        f"{timed['tuned'].total_s / timed['auto'].total_s:.2f}x "
        f"({'the same map' if maps['tuned'].device_map == maps['auto'].device_map else 'different maps'}).",
    ]
    if notes:
        lines += [
            "",
            "What the tool said while it measured:",
            "",
            *(f"- {note}" for note in dict.fromkeys(notes)),
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--small", action="store_true", help="A tiny Llama instead of the 7B shape.")
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument(
        "--cap", type=float, default=0.6, help="Share of the weights the main device may hold."
    )
    parser.add_argument("--output", type=Path, default=None, help="Where the report goes.")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device here: run it on a GPU, or --device cpu --small for a dry run\n")
    output = args.output
    if output is None and args.device == "cuda" and not args.small:
        output = RESULTS / "gpu_truth.md"
    settings = Settings(
        device=args.device,
        small=args.small,
        seq=args.seq or (16 if args.small else 128),
        new_tokens=args.new_tokens or (4 if args.small else 8),
        rounds=args.rounds,
        trials=args.trials or (20 if args.small else 100),
        cap=args.cap,
        output=output,
    )
    lines = run(settings)
    print("\n".join(lines))
    if settings.output is not None:
        settings.output.parent.mkdir(parents=True, exist_ok=True)
        settings.output.write_text("\n".join(lines) + "\n")
        print(f"written to {settings.output}")


if __name__ == "__main__":
    main()

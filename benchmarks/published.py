"""Published GPU measurements of transformers + accelerate against the cost model's prediction.

No GPU is needed: each row is a latency someone measured with Hugging Face transformers (and
accelerate's ``device_map="auto"``, offloading to the cpu where the GPU is too small), and the
same model shape, dtype, GPU and workload priced the way `benchmarks.scenarios` prices a spec
plan: traced, sized and counted on the meta device, accelerate's own ``auto`` map for that GPU's
memory (`tuner.plan.baselines`), priced by `tuner.plan.costmodel.CostModel`. Each row prints the
published ms per token, the predicted one, and published / predicted (above 1: we are optimistic),
then the median ratio of the rows with the whole model on the GPU and of the offloaded rows.

    python -m benchmarks.published [--only SUBSTRING]

Writes benchmarks/results/published.md. The workload behind each source (prompt lengths, new
tokens, GPU memory caps) is read from the scripts that produced it; where a source is silent the
assumption is written next to the row (`Row.assumed`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import write_result
from benchmarks.scenarios import Scenario
from benchmarks.scenarios import prepare
from profiler.model import MetaModel
from profiler.spec import DEFAULT_KERNEL_S
from tuner.core.devices import OFFLOAD
from tuner.core.domain import DeviceMap
from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import Prediction

#: Hugging Face's assisted-generation benchmark (blog 'Assisted Generation: a new direction toward
#: low-latency text generation', 2023): ms per token of greedy ``generate``, batch 1, columns gpu,
#: task, model_name, dtype, offload, Greedy, Assisted. Only the Greedy column is used.
HF_CSV = "https://huggingface.co/spaces/joaogante/assisted_generation_benchmarks/blob/main/data.csv"
#: The scripts behind it: prompt, new tokens and ``max_memory`` of each task.
HF_SCRIPTS = "https://github.com/gante/huggingface-demos/tree/main/experiments/faster_generation"
LMDEPLOY = "https://github.com/InternLM/lmdeploy/issues/210"

# Workloads of the assisted-generation tasks (benchmark_opt_open.py, benchmark_opt_summ.py,
# benchmark_codegen_python.py, benchmark_flant5_summ.py at the time of the blog):
#   OPT open: the first 128 characters of a C4 validation text, max_new_tokens=128.
#   OPT summarization: "Article: " + a CNN/DailyMail validation article + " Summary:", 128 new.
#   CodeGen: a python file of The Stack truncated to 256 tokens, 128 new.
#   Flan-T5: "Summarize: " + a CNN/DailyMail article into the encoder, max_length=128.
# The OPT and CodeGen scripts offload with max_memory={0: "20GiB", "cpu": "50GiB"}; the Flan-T5
# one takes the GPU's cap from a flag whose value the source does not give.
OPEN_PROMPT = 32  # ASSUMED: 128 characters of English at ~4 characters per BPE token, plus BOS
ARTICLE = 900  # ASSUMED: a CNN/DailyMail article is ~780 words on average, ~900 BPE tokens
CODE_PROMPT = 256  # the script's truncation; a python file of The Stack is longer than that
NEW = 128
CAP_3090 = "0=20GiB"  # the scripts' max_memory for the GPU when they offload


@dataclass(frozen=True)
class Row:
    """One published measurement and what it takes to price it."""

    label: str  # the source's own name for the case
    model: str  # a config under benchmarks/configs
    dtype: str
    hardware: str  # a shipped spec
    seq: int
    new_tokens: int
    published_ms: float  # ms per generated token, as published
    offloaded: bool  # as published: part of the model on the cpu
    url: str
    max_memory: str = ""
    assumed: str = ""  # what this row assumes where its source is silent


def _hf(gpu: str, task: str, model: str, dtype: str, offload: int, greedy_ms: float) -> Row:
    hardware = {"3090": "1xRTX3090-24GB", "T4": "1xT4-16GB"}[gpu]
    kind, size = model.split(":")
    config = {"opt": f"opt-{size}", "codegen": f"codegen-{size}", "t5": f"flan-t5-{size}"}[kind]
    seq = {"open": OPEN_PROMPT, "summ": ARTICLE, "code": CODE_PROMPT}[task]
    assumed = []
    if task == "open":
        assumed.append(f"prompt {OPEN_PROMPT} tokens")
    if task == "summ":
        assumed.append(f"article {ARTICLE} tokens")
    if kind == "t5":
        assumed.append("all 128 tokens generated (a summary may stop earlier at EOS)")
    max_memory = ""
    if offload and gpu == "3090" and kind != "t5":
        max_memory = CAP_3090
    elif offload:
        # the T4 runs and the Flan-T5 script (utils.py: --max-gpu-memory) give no cap in the source
        assumed.append("GPU cap unknown: accelerate's default (the whole GPU)")
    return Row(
        label=f"{gpu} {task} {config} {dtype}",
        model=config,
        dtype=dtype,
        hardware=hardware,
        seq=seq,
        new_tokens=NEW,
        published_ms=greedy_ms,
        offloaded=bool(offload),
        url=HF_CSV,
        max_memory=max_memory,
        assumed="; ".join(assumed),
    )


F32, F16 = "float32", "float16"
ROWS: tuple[Row, ...] = (
    # (gpu, task, model, dtype, offload flag, Greedy ms per token) from data.csv; INT8 rows
    # (bitsandbytes kernels), Whisper (audio encoder) and UL2 are left out.
    _hf("3090", "open", "opt:1.3b", F32, 0, 11.64),
    _hf("3090", "open", "opt:6.7b", F32, 1, 428.47),
    _hf("3090", "open", "opt:6.7b", F16, 0, 19.62),
    _hf("3090", "open", "opt:30b", F16, 1, 2616.0),
    _hf("3090", "summ", "opt:1.3b", F32, 0, 13.16),
    _hf("3090", "summ", "opt:6.7b", F32, 1, 587.8),
    _hf("3090", "summ", "opt:6.7b", F16, 0, 25.14),
    _hf("3090", "summ", "opt:30b", F16, 1, 2732.0),
    _hf("3090", "code", "codegen:2b", F32, 0, 28.90),
    _hf("3090", "code", "codegen:6b", F32, 1, 544.11),
    _hf("3090", "code", "codegen:6b", F16, 0, 34.36),
    _hf("3090", "code", "codegen:16b", F16, 1, 808.69),
    _hf("3090", "summ", "t5:large", F32, 0, 21.27),
    _hf("3090", "summ", "t5:xl", F32, 0, 25.60),
    _hf("3090", "summ", "t5:xxl", F32, 1, 1326.22),
    _hf("3090", "summ", "t5:xxl", F16, 1, 52.52),
    _hf("T4", "open", "opt:1.3b", F32, 0, 24.74),
    _hf("T4", "open", "opt:6.7b", F32, 1, 2863.57),
    _hf("T4", "open", "opt:6.7b", F16, 0, 62.04),
    # lmdeploy issue 210: "LLAMA2-7B with Hugging Face in Single A10, the performance is about
    # 34ms per token"; its script's prompt is 20 tokens and 267 are generated.
    Row(
        label="A10 llama-2-7b float16",
        model="llama-2-7b",
        dtype=F16,
        hardware="1xA10G-24GB",
        seq=20,
        new_tokens=267,
        published_ms=34.0,
        offloaded=False,
        url=LMDEPLOY,
        assumed="float16; an A10G spec for the A10 (same 600 GB/s; decode at batch 1 is bandwidth-bound)",
    ),
)


@dataclass(frozen=True)
class Priced:
    row: Row
    prediction: Prediction
    auto: DeviceMap
    graph: ModelGraph
    hardware: HardwareProfile
    decode_kernels: int

    @property
    def predicted_ms(self) -> float:
        return self.prediction.latency_s / self.row.new_tokens * 1e3

    @property
    def ratio(self) -> float:
        return self.row.published_ms / self.predicted_ms

    @property
    def offloaded_units(self) -> int:
        return sum(1 for _, device in self.auto.placements if device in OFFLOAD)

    @property
    def implied_rate(self) -> float | None:
        """For an offloaded row: the cpu -> GPU rate (bytes/s) its streamed weights would need for
        the prediction to equal the published figure, were the gap all in that term."""
        steps = self.prediction.new_tokens
        stream_s = self.prediction.prefill.stream_s + (steps - 1) * self.prediction.decode.stream_s
        stream_ms = stream_s / steps * 1e3
        needed_ms = self.row.published_ms - (self.predicted_ms - stream_ms)
        if not self.offloaded_units or stream_ms <= 0 or needed_ms <= 0:
            return None
        return self.hardware.host_copy("cpu", "0")[0].beta_bytes_per_s * stream_ms / needed_ms

    @property
    def implied_kernel_s(self) -> float | None:
        """For a whole-GPU row: the seconds per kernel that would close the gap, were it all in
        that term (the gap per token over the kernels of one decode step)."""
        if self.offloaded_units or not self.decode_kernels:
            return None
        excess_s = (self.row.published_ms - self.predicted_ms) / 1e3
        return self.hardware.device("0").kernel_s + excess_s / self.decode_kernels

    @property
    def implied(self) -> str:
        rate, kernel_s = self.implied_rate, self.implied_kernel_s
        if rate is not None:
            spec = self.hardware.host_copy("cpu", "0")[0].beta_bytes_per_s
            return f"{rate / 1e9:.1f} GB/s cpu->0 (spec {spec / 1e9:.1f})"
        if kernel_s is not None:
            return f"{kernel_s * 1e6:.1f} us/kernel (spec {self.hardware.device('0').kernel_s * 1e6:.0f})"
        return "-"


def price(row: Row, metas: dict[tuple[str, str], MetaModel], work: Path) -> Priced:
    """Accelerate's ``auto`` map for the row's GPU, priced by the cost model."""
    scenario = Scenario(row.model, row.dtype, row.hardware, 1, row.seq, row.new_tokens, row.max_memory)
    prepared = prepare(scenario, metas, work)
    auto = prepared.strategies["auto"]
    model = prepared.model
    return Priced(row, model.predict(auto), auto, model.graph, model.hardware, prepared.decode_kernels)


def split_ms(prediction: Prediction) -> str:
    """One decode step's milliseconds by what they are spent on."""
    step = prediction.decode
    parts = (step.compute_s, step.stream_s, step.transfer_s, step.overhead_s)
    return " / ".join(f"{seconds * 1e3:.1f}" for seconds in parts)


def median_line(name: str, ratios: list[float]) -> str:
    if not ratios:
        return f"- {name}: no rows"
    return (
        f"- {name}: median published / predicted {statistics.median(ratios):.2f} "
        f"over {len(ratios)} rows (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="price the rows whose label contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tuner-published-"))
    metas: dict[tuple[str, str], MetaModel] = {}
    header = ["#", "published case", "spec", "prompt + new", "max_memory", "published offload",
              "auto map: units on cpu", "published ms/token", "predicted ms/token",
              "published / predicted", "decode step ms: compute / stream / transfer / overhead",
              "the gap as one term", "assumed", "source"]  # fmt: skip
    load = os.getloadavg()[0]
    lines = [
        "# Published GPU measurements of transformers + accelerate vs the cost model",
        "",
        "Each row: a published ms per generated token (greedy `generate`, batch 1) and the cost",
        "model's prediction for the same model shape, dtype, GPU spec and workload, with accelerate's",
        "own `auto` map for that GPU's memory, priced on the meta device (no weights, no GPU).",
        "Ratio above 1: the prediction is optimistic. Specs: `profiler/specs`; model shapes:",
        f"`benchmarks/configs`; workloads from the scripts behind each source ({HF_SCRIPTS}).",
        "'The gap as one term': what would close the row's gap were it all in one term: for an",
        "offloaded row the cpu -> GPU rate of its streamed weights, for a whole-GPU row the cost per kernel.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    begin = time.perf_counter()
    priced: list[Priced] = []
    for index, row in enumerate(ROWS, start=1):
        if args.only and args.only not in row.label:
            continue
        result = price(row, metas, work)
        priced.append(result)
        cells = [
            str(index), row.label, row.hardware, f"{row.seq} + {row.new_tokens}", row.max_memory or "free",
            "yes" if row.offloaded else "no", f"{result.offloaded_units} of {len(result.auto.placements)}",
            f"{row.published_ms:.2f}", f"{result.predicted_ms:.2f}", f"{result.ratio:.2f}",
            split_ms(result.prediction), result.implied, row.assumed or "-", row.url,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        print(
            f"{row.label:32} published {row.published_ms:8.2f} ms  predicted {result.predicted_ms:8.2f} ms"
            f"  ratio {result.ratio:5.2f}  (auto: {result.offloaded_units} units on cpu)",
            flush=True,
        )
    whole = [p.ratio for p in priced if not p.row.offloaded]
    offloaded = [p.ratio for p in priced if p.row.offloaded]
    summary = [median_line("whole model on the GPU", whole), median_line("offloaded to the cpu", offloaded)]
    kernels = [p.implied_kernel_s * 1e6 for p in priced if p.implied_kernel_s is not None]
    rates = [
        p.implied_rate / 1e9
        for p in priced
        if p.implied_rate is not None and p.row.hardware == "1xRTX3090-24GB"
    ]
    if kernels:
        defaults = ", ".join(f"{seconds * 1e6:g} us {name}" for name, _, seconds, _ in DEFAULT_KERNEL_S)
        summary.append(
            f"- the whole-GPU gap as a per-kernel cost: median {statistics.median(kernels):.1f} us "
            f"per kernel (min {min(kernels):.1f}, max {max(kernels):.1f}; the specs' defaults: {defaults})"
        )
    if rates:
        summary.append(
            f"- the 3090's offloaded gap as its cpu -> GPU rate: median {statistics.median(rates):.1f} GB/s "
            f"over {len(rates)} rows (min {min(rates):.1f}, max {max(rates):.1f})"
        )
    lines += ["", *summary, "", f"Priced in {time.perf_counter() - begin:.1f} s (1-min load {load:.2f})."]
    print("\n".join(summary))
    print(f"written to {write_result('published', lines)}")


if __name__ == "__main__":
    main()

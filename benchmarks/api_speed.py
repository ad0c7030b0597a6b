"""Speed of the Python API where a user waits on it: `import tuner`, a `device_map` answered from the
database, and a bad argument refused, each in a fresh process, beside `import transformers` timed in
the same rounds (interleaved, so a busy machine slows all alike).

Targets (issue 9): a cache hit in under 1 s including the import; a bad argument refused in under
2 s on a model of any size (here a Llama-2-70B config, 129 GiB of weights in bf16, planned for a
spec machine, and a tiny Llama on this machine).

    python -m benchmarks.api_speed [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import tuner
from benchmarks.common import machine
from benchmarks.common import write_result

CONFIGS = Path(__file__).with_name("configs")

#: The tiny model's request: a generate workload with part of the weights on disk.
TINY_OPTIONS = dict(seq=64, new_tokens=8, max_memory={"cpu": "6MiB"}, trials=50)


def tiny_llama(folder: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def seconds_of(code: str) -> float:
    """Wall seconds of a fresh Python running `code`, interpreter start included."""
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuner-api-speed-"))
    tiny = work / "tiny-llama"
    tiny_llama(tiny)
    big = work / "llama-2-70b"
    big.mkdir()
    (big / "config.json").write_text((CONFIGS / "llama-2-70b.json").read_text())
    db = f"sqlite:///{work / 'tuner.db'}"
    begin = time.perf_counter()
    dmap = tuner.device_map(str(tiny), db=db, **TINY_OPTIONS)  # type: ignore[arg-type]
    tuning_s = time.perf_counter() - begin

    hit = f"import tuner; tuner.device_map({str(tiny)!r}, db={db!r}, **{TINY_OPTIONS!r})"
    refusal = (
        "import tuner\ntry:\n"
        "    tuner.optimize({model!r}, pins={{'model.layers.99': 'cpu'}}, {extra}db={db!r})\n"
        "except tuner.ConstraintError:\n    pass\nelse:\n    raise SystemExit('not refused')"
    )
    cases = {
        "python -c pass": "pass",
        "import transformers": "import transformers",
        "import tuner": "import tuner",
        "device_map, stored (import included)": hit,
        "bad pin, 70B config on 8xH100 spec, bf16": refusal.format(
            model=str(big), extra="hardware='8xH100-80GB-nvlink', dtype='bfloat16', ", db=db
        ),
        "bad pin, tiny Llama on this machine": refusal.format(model=str(tiny), extra="", db=db),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, code in cases.items():
            samples[name].append(seconds_of(code))
    runs_after = len(tuner.list_runs(db=db))
    # In a process that has torch and transformers loaded already, as any caller of from_pretrained
    # has: what the check itself costs, after one call that loads the model's module.
    warm: dict[str, list[float]] = {}
    for name, model, extra in (
        (
            "bad pin, 70B config on 8xH100 spec, bf16",
            big,
            dict(hardware="8xH100-80GB-nvlink", dtype="bfloat16"),
        ),
        ("bad pin, tiny Llama on this machine", tiny, {}),
    ):
        warm[name] = []
        for _ in range(args.rounds + 1):
            begin = time.perf_counter()
            try:
                tuner.optimize(str(model), pins={"model.layers.99": "cpu"}, db=db, **extra)  # type: ignore[arg-type]
            except tuner.ConstraintError:
                warm[name].append(time.perf_counter() - begin)
        del warm[name][0]

    transformers_s = statistics.median(samples["import transformers"])
    lines = [
        "# Python API speed: import, a stored device_map, a refused argument",
        "",
        f"Each case a fresh `python -c`, {args.rounds} interleaved rounds, median seconds (min-max); "
        "ratio = median / median of `import transformers` in the same rounds.",
        f"Machine: {machine()}. Tiny Llama 4x256 (12 MiB), request {json.dumps(TINY_OPTIONS)}; "
        f"tuned once first in {tuning_s:.1f} s ({len(dmap)} units). Runs stored after all rounds: "
        f"{runs_after} (the refusals stored nothing).",
        "",
        "| case | median s | min-max s | vs import transformers |",
        "|---|---|---|---|",
    ]
    for name, times in samples.items():
        median = statistics.median(times)
        lines.append(
            f"| {name} | {median:.2f} | {min(times):.2f}-{max(times):.2f} | {median / transformers_s:.2f}x |"
        )
    lines += [
        "",
        "The same refusals inside one process that has imported torch and transformers (median of "
        f"{args.rounds} after a first call that loads the model's module): what the check costs once the "
        "imports are paid.",
        "",
        "| case | median s | min-max s |",
        "|---|---|---|",
    ]
    for name, times in warm.items():
        lines.append(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f}-{max(times):.3f} |")
    path = write_result("api_speed", lines)
    print("\n".join(lines))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

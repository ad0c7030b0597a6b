"""Scale: `tuner profile` of a Llama-2-70B-shaped config.json in bf16, batch 1, seq 32.

Runs the real command in a child process and reports its wall time and peak RSS
(target: completes, peak RSS under 8 GiB). Weights are never allocated all at once: one unit
is materialised at a time.

    python -m benchmarks.scale_70b
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from benchmarks.common import write_result

LLAMA_2_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tuner-70b-"))
    (work / "llama-2-70b").mkdir()
    (work / "llama-2-70b" / "config.json").write_text(json.dumps(LLAMA_2_70B))
    command = [
        sys.executable, "-m", "tuner", "profile", str(work / "llama-2-70b"),
        "--dtype", "bfloat16", "--batch", "1", "--seq", "32", "--new-tokens", "8", "--repeats", "3",
        "--json", "--db", f"sqlite:///{work / 'tuner.db'}",
    ]  # fmt: skip
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - begin
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(done.returncode)
    profile = json.loads(done.stdout)
    units = profile["graph"]["units"]
    shared = sum(1 for p in profile["units"] if p["measured_as"] != p["unit"])
    total = sum(u["param_bytes"] + u["buffer_bytes"] for u in units)
    lines = [
        "# Scale: tuner profile of a Llama-2-70B-shaped config",
        "",
        f"bf16, batch 1, seq 32, 8 new tokens, 3 repeats; {machine()}.",
        "",
        "| units | model bytes | unit x phase profiles shared | wall (s) | peak RSS (GiB) |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(units)} | {total / 2**30:.1f} GiB | {shared} | {wall:.1f} | {peak_rss / 2**30:.2f} |",
    ]
    print("\n".join(lines))
    print(f"written to {write_result('scale_70b', lines)}")


if __name__ == "__main__":
    main()

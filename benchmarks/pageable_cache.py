"""Pageable copies from a reused buffer against copies that read memory the cache does not hold.

`tuner hardware` times accelerate's pageable copies with `time_pageable_copies`. From a source no
larger than the biggest copy, every copy reads bytes the last one left in the processor's cache;
from a pool far larger than the cache (`COLD_POOL_BYTES`), each reads memory, as a streamed weight
is read a forward after it was last touched. This times both here, cpu to cpu (the host's half of
a copy into a GPU), in interleaved rounds, and prints the medians side by side.

    python -m benchmarks.pageable_cache [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import machine
from benchmarks.common import write_result
from profiler.hardware.compute import MiB
from profiler.hardware.links import COLD_POOL_BYTES
from profiler.hardware.links import time_pageable_copies

SIZES = [4 * MiB, 16 * MiB, 64 * MiB]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    sources = {
        "reused": torch.ones(SIZES[-1], dtype=torch.uint8),
        "cold": torch.ones(COLD_POOL_BYTES, dtype=torch.uint8),
    }
    seconds: dict[str, dict[int, list[float]]] = {name: {size: [] for size in SIZES} for name in sources}
    for _ in range(args.rounds):  # interleaved: a slow spell of the host touches both
        for name, source in sources.items():
            sizes, times = time_pageable_copies(source, cpu, SIZES, repeats=3, settle=lambda: None)
            for size, taken in zip(sizes, times, strict=True):
                seconds[name][size].append(taken)
    lines = [
        "# Pageable copies: a reused buffer against a pool larger than the cache",
        "",
        f"`python -m benchmarks.pageable_cache --rounds {args.rounds}` on {machine()}: cpu to cpu, "
        f"medians of {3 * args.rounds} copies each.",
        "",
        "| size | reused | cold | reused over cold |",
        "|---|---|---|---|",
    ]
    for size in SIZES:
        reused, cold = (statistics.median(seconds[name][size]) for name in ("reused", "cold"))
        lines.append(
            f"| {size // MiB} MiB | {size / reused / 1e9:.2f} GB/s | {size / cold / 1e9:.2f} GB/s "
            f"| {cold / reused:.2f}x |"
        )
    print("\n".join(lines))
    print(f"written to {write_result('pageable_cache', lines)}")


if __name__ == "__main__":
    main()

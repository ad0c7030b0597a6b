"""Helpers shared by the benchmarks: model folders from configs, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("results")
EXAMPLE = Path(__file__).parents[1] / "examples" / "llama-8x1024" / "config.json"


def llama_folder(**overrides: Any) -> Path:
    """A config-only folder of the example Llama with some fields changed."""
    config = json.loads(EXAMPLE.read_text())
    config.update(overrides)
    folder = Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def machine() -> str:
    processor = platform.processor() or platform.machine()
    return f"{processor}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_result(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""benchmarks/gpu_truth.py: its dry run on the cpu, through benchmarks/gpu_check.sh as a GPU machine
runs both, exercises every step here; on a machine with a GPU, ``pytest -m gpu`` runs it small on
CUDA and checks the measured host links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_truth import unit_runs
from profiler.hardware import measure_hardware

KiB = 1 << 10
MiB = 1 << 20
ROOT = Path(__file__).parents[1]


def gpu_truth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_truth", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_report(text: str, main: str) -> None:
    for section in (
        "## Links (alpha per copy, beta)",
        "## Per unit predicted vs the whole model measured",
        f"## Offloaded: {main} capped at",
    ):
        assert section in text
    for phase in ("prefill", "decode step", "generate"):
        assert re.search(rf"\| {phase} \| [\d.]+ ms \|.*\| [\d.]+ ms \| [+-]\d+% \|", text), phase
    for name in ("tuned", "auto"):
        # the cap sends at least one unit off the main device, and both are predicted and measured
        offloaded = rf"\| {name} \| [1-9]\d* of \d+ \| [\d.]+ ms \| [\d.]+ ms \| [+-]\d+% \|"
        assert re.search(offloaded, text), name
        assert re.search(
            rf"^- {name} offloads \S.*: streams [1-9][\d.]* [KMG]iB per forward, [\d.]+ GB/s",
            text,
            re.MULTILINE,
        ), name
    assert re.search(r"tuned over auto: predicted [\d.]+x, measured [\d.]+x", text)


def test_unit_runs_join_consecutive_numbered_siblings() -> None:
    units = ["model.embed_tokens", "model.layers.3", "model.layers.4", "model.layers.5", "model.layers.7"]
    assert unit_runs([*units, "model.norm", "lm_head"]) == (
        "model.embed_tokens, model.layers.3-5, model.layers.7, model.norm, lm_head"
    )
    assert unit_runs(["encoder.block.1", "decoder.block.2"]) == "encoder.block.1, decoder.block.2"
    assert unit_runs([]) == ""


@pytest.mark.slow
def test_the_gpu_check_s_dry_run_on_the_cpu_goes_through_every_step(tmp_path: Path) -> None:
    environment = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "dry-run"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert f"torch {torch.__version__}" in (tmp_path / "environment.txt").read_text()
    # the GPU tests were collected, and skipped here for want of CUDA
    assert re.search(r"\b[1-9]\d* skipped", (tmp_path / "pytest_gpu.log").read_text())
    text = (tmp_path / "gpu_truth.md").read_text()
    check_report(text, "cpu")
    assert "| disk -> cpu | storage |" in text  # the cpu's offload goes to disk, measured here
    assert "written to" in (tmp_path / "gpu_truth.log").read_text()


def test_the_gpu_check_names_its_modes() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "everything"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "usage: benchmarks/gpu_check.sh [fetch | dry-run]"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_full_run_says_so_in_one_line(tmp_path: Path) -> None:
    done = gpu_truth("--output", str(tmp_path / "gpu_truth.md"))
    assert done.returncode == 2
    refusal = "no CUDA device here: run it on a GPU, or --device cpu --small for a dry run"
    assert done.stderr.strip() == refusal
    assert not (tmp_path / "gpu_truth.md").exists()


@pytest.mark.gpu
def test_host_links_are_measured_pinned_and_pageable_both_ways() -> None:
    hardware = measure_hardware(sizes=(256 * KiB, 1 * MiB, 4 * MiB), repeats=1)
    pinned = {(link.src, link.dst) for link in hardware.links}
    pageable = {(link.src, link.dst): link for link in hardware.pageable}
    assert {("cpu", "0"), ("0", "cpu")} <= pinned and {("cpu", "0"), ("0", "cpu")} <= set(pageable)
    # staging through a bounce buffer costs: pageable is not faster than pinned into the GPU
    assert pageable["cpu", "0"].beta_bytes_per_s <= 1.1 * hardware.link("cpu", "0").beta_bytes_per_s


@pytest.mark.gpu
@pytest.mark.slow
def test_the_small_run_on_cuda_goes_through_every_step(tmp_path: Path) -> None:
    output = tmp_path / "gpu_truth.md"
    done = gpu_truth("--small", "--rounds", "1", "--output", str(output))
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    check_report(text, "0")
    assert "| cpu -> 0 | pinned |" in text and "| cpu -> 0 | pageable |" in text

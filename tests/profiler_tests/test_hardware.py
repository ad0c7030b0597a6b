"""Tests of profiler.hardware: the pure alpha-beta fit, the torch-free machine identity, and real
measurements of this machine."""

from __future__ import annotations

import logging
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import profiler.hardware.host as host_module
from profiler.hardware import MEASURING_METHOD
from profiler.hardware import describe_hardware
from profiler.hardware import fit_link
from profiler.hardware import machine_identity
from profiler.hardware import measure_hardware
from profiler.hardware.links import cold_offsets
from profiler.hardware.links import time_pageable_copies
from tuner.core.domain import HardwareProfile
from tuner.core.exceptions import ProfilingError

KiB = 1 << 10
MiB = 1 << 20

#: Small transfers keep a full measurement to about a second while still spanning a 16x range.
SMALL_SIZES = (256 * KiB, 1 * MiB, 4 * MiB)

needs_cuda = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
needs_two_gpus = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs two CUDA devices"
)


# ---- fit_link: exact answers on tiny inputs -------------------------------------------------


def test_fit_link_tiny_exact() -> None:
    alpha, beta = fit_link([1_000, 2_000, 3_000], [0.002, 0.003, 0.004])
    assert alpha == pytest.approx(0.001)
    assert beta == pytest.approx(1e6)


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [(1e-5, 12e9), (2e-3, 1.5e9), (0.0, 25e9)],
    ids=["pcie", "disk", "no-latency"],
)
def test_fit_link_recovers_exact_parameters(alpha: float, beta: float) -> None:
    sizes = [1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB]
    seconds = [alpha + n / beta for n in sizes]
    got_alpha, got_beta = fit_link(sizes, seconds)
    assert got_alpha == pytest.approx(alpha, abs=1e-12)
    assert got_beta == pytest.approx(beta, rel=1e-9)


def test_fit_link_uses_the_median_per_size() -> None:
    # One wild sample per size (a page fault, a preemption) must not move the fit.
    alpha, beta = 1e-3, 1e9
    sizes: list[int] = []
    seconds: list[float] = []
    for n in (1 * MiB, 8 * MiB, 64 * MiB):
        exact = alpha + n / beta
        sizes += [n, n, n]
        seconds += [exact, exact, exact * 50]
    got_alpha, got_beta = fit_link(sizes, seconds)
    assert got_alpha == pytest.approx(alpha, rel=1e-9)
    assert got_beta == pytest.approx(beta, rel=1e-9)


def test_fit_link_noisy_data_within_tolerance() -> None:
    rng = random.Random(20240611)
    alpha, beta = 5e-4, 2e9
    sizes: list[int] = []
    seconds: list[float] = []
    for n in (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB):
        for _ in range(7):
            sizes.append(n)
            # 3% multiplicative jitter plus 20 us of additive jitter, like a loaded machine.
            seconds.append((alpha + n / beta) * (1 + rng.gauss(0, 0.03)) + abs(rng.gauss(0, 2e-5)))
    got_alpha, got_beta = fit_link(sizes, seconds)
    assert got_beta == pytest.approx(beta, rel=0.05)
    assert got_alpha == pytest.approx(alpha, abs=3e-4)
    assert got_alpha >= 0


def test_fit_link_clamps_negative_latency_to_zero() -> None:
    # Time that grows faster than linearly gives a negative intercept: no such latency exists.
    sizes = [1_000, 2_000, 4_000]
    seconds = [0.0005, 0.0015, 0.0035]
    alpha, beta = fit_link(sizes, seconds)
    assert alpha == 0.0
    # The constrained refit is the least-squares line through the origin.
    slope = sum(x * y for x, y in zip(sizes, seconds, strict=True)) / sum(x * x for x in sizes)
    assert beta == pytest.approx(1 / slope)


def test_fit_link_accepts_sizes_in_any_order() -> None:
    sizes = [64 * MiB, 1 * MiB, 16 * MiB, 4 * MiB]
    seconds = [1e-4 + n / 3e9 for n in sizes]
    alpha, beta = fit_link(sizes, seconds)
    assert alpha == pytest.approx(1e-4)
    assert beta == pytest.approx(3e9)


@pytest.mark.parametrize(
    ("sizes", "seconds", "message"),
    [
        ([], [], "at least 2 distinct sizes"),
        ([MiB], [0.001], "at least 2 distinct sizes"),
        ([MiB, MiB, MiB], [0.001, 0.002, 0.003], "at least 2 distinct sizes"),
        ([MiB, 2 * MiB], [0.001], "differ in length"),
        ([MiB, 2 * MiB], [0.002, 0.001], "does not grow with size"),
        ([MiB, 2 * MiB, 4 * MiB], [0.001, 0.001, 0.001], "does not grow with size"),
        ([MiB, 2 * MiB], [0.001, -0.002], "non-negative"),
        ([MiB, 2 * MiB], [0.001, float("nan")], "finite"),
        ([-MiB, 2 * MiB], [0.001, 0.002], "non-negative"),
    ],
    ids=[
        "empty",
        "one",
        "one-distinct",
        "lengths",
        "decreasing",
        "flat",
        "negative-time",
        "nan",
        "negative-size",
    ],
)
def test_fit_link_errors(sizes: list[int], seconds: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_link(sizes, seconds)


# ---- machine_identity: who this machine is, without torch ---------------------------------------


def test_the_host_module_imports_without_torch() -> None:
    # A subprocess: this test process imported torch long ago.
    code = "import sys, profiler.hardware.host; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_machine_identity_is_stable() -> None:
    first = machine_identity()
    assert first == machine_identity()
    assert len(first) == 16 and int(first, 16) >= 0


def test_machine_identity_changes_with_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    only_first = machine_identity()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert machine_identity() != only_first
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert machine_identity() != only_first


def test_machine_identity_changes_when_a_gpu_appears(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(host_module, "_NVIDIA_GPUS", tmp_path)
    without = machine_identity()

    def add_gpu(bus: str, model: str) -> None:
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 42\n")

    add_gpu("0000:01:00.0", "NVIDIA H100 80GB HBM3")
    one = machine_identity()
    add_gpu("0000:02:00.0", "NVIDIA GeForce RTX 3060")
    two = machine_identity()
    assert len({without, one, two}) == 3
    assert host_module._nvidia_gpu_models() == ["NVIDIA GeForce RTX 3060", "NVIDIA H100 80GB HBM3"]


# ---- measure_hardware on this machine ---------------------------------------------------------


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("offload")


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def accelerate_warnings() -> Iterator[list[str]]:
    """What accelerate logs at WARNING or above while the module's measurement runs."""
    kept = _Kept()
    logging.getLogger("accelerate").addHandler(kept)
    try:
        yield kept.messages
    finally:
        logging.getLogger("accelerate").removeHandler(kept)


@pytest.fixture(scope="module")
def measured(disk_dir: Path, accelerate_warnings: list[str]) -> tuple[HardwareProfile, list[str]]:
    steps: list[str] = []
    profile = measure_hardware(disk_dir=disk_dir, sizes=SMALL_SIZES, repeats=2, on_step=steps.append)
    return profile, steps


def test_measuring_prints_no_accelerate_warning(
    measured: tuple[HardwareProfile, list[str]], accelerate_warnings: list[str]
) -> None:
    """The measurements dispatch their own tiny models to cpu and disk on purpose."""
    assert accelerate_warnings == []


def test_cpu_device_is_measured(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, _ = measured
    cpu = profile.device("cpu")
    assert cpu.kind == "cpu"
    assert cpu.name
    assert cpu.total_memory > 0
    assert 0 < cpu.free_memory <= cpu.total_memory
    assert cpu.peak_flops["float32"] > 0
    assert cpu.peak_flops["bfloat16"] > 0
    assert all(value > 0 for value in cpu.peak_flops.values())
    assert cpu.memory_bandwidth > 0
    assert profile.source == "measured"
    assert profile.devices[0].key == "cpu"


def test_disk_device_and_link(measured: tuple[HardwareProfile, list[str]], disk_dir: Path) -> None:
    profile, _ = measured
    disk = profile.device("disk")
    assert disk.kind == "disk"
    assert disk.name == str(disk_dir.resolve())
    assert 0 < disk.free_memory <= disk.total_memory
    link = profile.link("disk", "cpu")
    assert link.alpha_s >= 0
    assert link.beta_bytes_per_s > 0
    assert link.seconds(4 * MiB) > link.seconds(256 * KiB)
    cached = profile.page_cache
    assert cached is not None and (cached.src, cached.dst) == ("disk", "cpu")
    assert cached.alpha_s >= 0 and cached.beta_bytes_per_s > 0


def test_fixed_costs_are_measured(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, steps = measured
    assert all(device.kernel_s > 0 for device in profile.compute_devices)
    assert (
        min(profile.generate_step_s, profile.hook_call_s, profile.safetensors_entry_s, profile.forward_call_s)
        >= 0
    )
    assert profile.safetensors_entry_s > 0  # 2048 more entries parsed on each of 27 reads
    assert profile.method == MEASURING_METHOD
    assert "cost per kernel and per forward" in steps and "safetensors headers" in steps
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(profile.pageable) == 2 * gpus


def test_a_streamed_tiny_llama_reads_its_layers_from_disk_and_computes_as_resident(tmp_path: Path) -> None:
    from profiler.hardware.disk import _streamed_from
    from profiler.hardware.disk import _tiny_llama_layout

    padding = {"padding.model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}
    model = _streamed_from(tmp_path / "model.safetensors", lambda: _tiny_llama_layout(3), padding)
    assert model.tensors == 2 * 9  # layers 1 and 2 stream their 9 weights each
    assert model.entries == 3 * 9 + 3 + 1  # the layers, the embedding, norm and head, the padding
    assert model.nbytes == sum(
        tensor.numel() * 4
        for name, tensor in model.resident.state_dict().items()
        if ".layers.0." not in name and ".layers." in name
    )
    assert model.hooks > model.tensors  # every module of the map is hooked, the model too
    with torch.no_grad():
        streamed, resident = model.run(model.streamed), model.run(model.resident)
    assert torch.equal(streamed.logits, resident.logits)  # type: ignore[attr-defined]
    # read for the call and put back: nothing of a streamed layer stays in memory
    assert model.streamed.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # type: ignore[union-attr]


def test_pageable_copies_are_timed_one_fresh_copy_at_a_time() -> None:
    source = torch.ones(4 * MiB, dtype=torch.uint8)
    settled: list[int] = []
    sizes, seconds = time_pageable_copies(
        source, torch.device("cpu"), [MiB, 4 * MiB], repeats=3, settle=lambda: settled.append(1)
    )
    assert sizes == [MiB, 4 * MiB] * 3
    assert len(settled) == 1 + len(seconds)  # after the warm-up copy, and after every timed one
    assert all(value > 0 for value in seconds)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=30),
    pool=st.integers(min_value=64, max_value=512),
)
def test_cold_offsets_read_no_byte_twice_before_the_pool_is_read_through(sizes: list[int], pool: int) -> None:
    offsets = cold_offsets(sizes, pool)
    assert len(offsets) == len(sizes)
    read: set[int] = set()
    for start, size in zip(offsets, sizes, strict=True):
        assert 0 <= start and start + size <= pool
        if start == 0:  # the pool starts over: only then may bytes be read again
            read = set()
        span = set(range(start, start + size))
        assert not span & read
        read |= span


def test_cold_offsets_refuse_a_copy_larger_than_the_pool() -> None:
    assert cold_offsets([4, 4], pool=4) == [0, 0]
    with pytest.raises(ValueError, match="does not fit a pool of 4"):
        cold_offsets([5], pool=4)


def test_scratch_files_are_removed(measured: tuple[HardwareProfile, list[str]], disk_dir: Path) -> None:
    assert list(disk_dir.iterdir()) == []


def test_on_step_reports_each_measurement(measured: tuple[HardwareProfile, list[str]]) -> None:
    _, steps = measured
    assert "cpu: float32 matmul" in steps
    assert "cpu: memory bandwidth" in steps
    assert any(step.startswith("link disk -> cpu") for step in steps)


def test_every_link_names_known_devices(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, _ = measured
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # disk -> cpu, cpu <-> each GPU, and every ordered GPU pair.
    assert len(profile.links) == 1 + 2 * gpus + gpus * (gpus - 1)
    assert {d.key for d in profile.devices} == {"cpu", "disk"} | {str(i) for i in range(gpus)}


def test_fingerprint_is_stable_across_measurements(
    measured: tuple[HardwareProfile, list[str]], this_machine: HardwareProfile
) -> None:
    first, _ = measured
    # Another measurement, with the default disk folder: the disk is where offloaded weights go,
    # not what the machine is.
    assert this_machine.device("disk").name != first.device("disk").name
    assert this_machine.host == first.host
    assert this_machine.fingerprint == first.fingerprint


def test_host_does_not_use_the_hostname(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, _ = measured
    assert profile.host
    hostname = socket.gethostname()
    if len(hostname) >= 4:  # a very short name could appear inside a CPU model by chance
        assert hostname not in profile.host


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": (MiB,)}, "at least 2 distinct positive"),
        ({"sizes": (MiB, MiB)}, "at least 2 distinct positive"),
        ({"sizes": (0, MiB)}, "at least 2 distinct positive"),
        ({"repeats": 0}, "repeats must be at least 1"),
    ],
    ids=["one-size", "same-size", "zero-size", "no-repeats"],
)
def test_measure_hardware_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        measure_hardware(**kwargs)  # type: ignore[arg-type]


def test_unusable_disk_folder_raises_profiling_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ProfilingError, match="disk device"):
        measure_hardware(disk_dir=not_a_folder, sizes=SMALL_SIZES, repeats=1)


# ---- CUDA -------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_device_per_gpu(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, steps = measured
    for index in range(torch.cuda.device_count()):
        device = profile.device(str(index))
        properties = torch.cuda.get_device_properties(index)
        assert device.kind == "cuda"
        assert device.name == properties.name
        assert device.total_memory == properties.total_memory
        assert 0 < device.free_memory <= device.total_memory
        assert device.peak_flops["float32"] > 0
        assert device.peak_flops["float16"] > 0
        assert device.memory_bandwidth > 0
        assert f"cuda {index}: float32 matmul" in steps
    # A GPU device keyed as device maps spell it, after the cpu.
    assert [d.key for d in profile.compute_devices] == ["cpu"] + [
        str(i) for i in range(torch.cuda.device_count())
    ]


@pytest.mark.gpu
@needs_cuda
def test_cpu_gpu_links_both_ways(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, _ = measured
    for index in range(torch.cuda.device_count()):
        for src, dst in (("cpu", str(index)), (str(index), "cpu")):
            link = profile.link(src, dst)
            assert link.alpha_s >= 0
            assert link.beta_bytes_per_s > 0
        # Device memory moves bytes faster than any bus to the host.
        assert profile.device(str(index)).memory_bandwidth > profile.link("cpu", str(index)).beta_bytes_per_s


@pytest.mark.gpu
@needs_cuda
def test_pageable_host_links_are_slower_than_pinned(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, steps = measured
    for index in range(torch.cuda.device_count()):
        for src, dst in (("cpu", str(index)), (str(index), "cpu")):
            pageable, is_pageable = profile.host_copy(src, dst)
            assert is_pageable
            assert pageable.beta_bytes_per_s < profile.link(src, dst).beta_bytes_per_s
        assert f"link cpu -> {index} (pageable, as accelerate copies)" in steps


@pytest.mark.gpu
@needs_cuda
@needs_two_gpus
def test_gpu_gpu_links_for_every_pair(measured: tuple[HardwareProfile, list[str]]) -> None:
    profile, steps = measured
    count = torch.cuda.device_count()
    for src in range(count):
        for dst in range(count):
            if src == dst:
                continue
            link = profile.link(str(src), str(dst))
            assert link.beta_bytes_per_s > 0
            assert link.alpha_s >= 0
            path = "peer to peer" if torch.cuda.can_device_access_peer(src, dst) else "through host"
            assert f"link {src} -> {dst} ({path})" in steps


def test_described_hardware_has_the_measured_fingerprint(this_machine: HardwareProfile) -> None:
    described = describe_hardware()
    assert described.fingerprint == this_machine.fingerprint
    assert described.links == ()
    assert [d.key for d in described.compute_devices] == [d.key for d in this_machine.compute_devices]

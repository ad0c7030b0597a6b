"""benchmarks/published.py: one published row priced end to end on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.published import ROWS
from benchmarks.published import price
from profiler.model import MetaModel
from profiler.spec import default_kernel_s
from profiler.spec import load_spec


def test_a_whole_gpu_row_is_priced_with_accelerates_map_and_reads_every_weight(tmp_path: Path) -> None:
    row = next(r for r in ROWS if r.label == "T4 open opt-1.3b float32")
    metas: dict[tuple[str, str], MetaModel] = {}
    priced = price(row, metas, tmp_path)
    assert priced.prediction.feasible
    assert priced.offloaded_units == 0  # 5 GB of float32 weights fit the T4: nothing on the cpu
    # A decode step reads every weight once: the prediction per token is at least the weights'
    # bytes over the T4's memory bandwidth, and the published figure is compared against it.
    weights = sum(unit.param_bytes for unit in priced.graph.units)
    bound_ms = weights / load_spec(row.hardware).device("0").memory_bandwidth * 1e3
    assert 1.3e9 * 4 < weights < 1.4e9 * 4
    assert priced.predicted_ms > bound_ms
    assert priced.ratio == row.published_ms / priced.predicted_ms
    # the gap read as one term: a whole-GPU row's per-kernel cost, no host link rate
    assert priced.decode_kernels > 0 and priced.implied_rate is None
    gap_s = (row.published_ms - priced.predicted_ms) / 1e3
    turing = default_kernel_s("Tesla T4")[0]
    assert priced.implied_kernel_s == pytest.approx(turing + gap_s / priced.decode_kernels)


def test_offloaded_rows_of_the_3090_carry_the_scripts_gpu_cap() -> None:
    for row in ROWS:
        if row.offloaded and row.hardware == "1xRTX3090-24GB" and "flan-t5" not in row.model:
            assert row.max_memory == "0=20GiB", row.label
        if row.offloaded and not row.max_memory:
            assert "GPU cap unknown" in row.assumed, row.label
        assert row.url.startswith("https://")

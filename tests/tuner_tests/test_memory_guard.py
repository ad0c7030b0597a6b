"""The memory guard: a workload whose predicted peak exceeds this machine's available RAM is
refused in one line before a profile, `validate` or `--measure` allocates it, and nothing is stored.

The huge batch is real (a million prompts of the tiny Llama need hundreds of GiB); a small
machine is the guard's own reading of the RAM available, lowered for the policy tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from profiler.hardware import host
from profiler.model import build_meta_model
from profiler.source import resolve_source
from tests.tuner_tests.conftest import run
from tests.tuner_tests.conftest import table_rows
from tests.tuner_tests.conftest import tuned
from tuner.core.domain import Workload
from tuner.core.exceptions import WorkloadError
from tuner.workflows.guard import available_ram
from tuner.workflows.guard import host_peaks
from tuner.workflows.guard import streamed

pytestmark = pytest.mark.usefixtures("one_thread")


def small_machine(monkeypatch: pytest.MonkeyPatch, available: int) -> None:
    """This machine as the guard reads it, with only `available` bytes of RAM available."""
    machine, total, _ = host.host_memory()
    monkeypatch.setattr(host, "host_memory", lambda: (machine, total, available))


HUGE = ["--batch", "1000000", "--seq", "128", "--new-tokens", "32"]


def test_a_huge_batch_is_refused_before_anything_is_allocated(
    config_folder: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = config_folder("llama")
    db_file = tmp_path / "tuner.db"
    command = [sys.executable, "-m", "tuner", "profile", str(folder), *HUGE, "--db", f"sqlite:///{db_file}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    assert process.stderr is not None and process.stdout is not None
    err, out = process.stderr.read(), process.stdout.read()
    assert os.waitstatus_to_exitcode(status) == 1 and out == ""
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: profiling batch 1000000 x seq 128 with 32 new tokens needs at least ")
    assert "of RAM" in lines[0] and "available: choose a smaller batch" in lines[0]
    assert "or less fits" in lines[0]
    # the process never held more than torch and the tiny model: ru_maxrss is in KiB on Linux
    assert usage.ru_maxrss * 1024 < 3 * 2**30
    assert not any(table_rows(db_file).get(table) for table in ("hardware", "profiles", "runs", "candidates"))


def test_optimize_with_a_huge_batch_stores_nothing(
    weights_folder: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_file = tmp_path / "tuner.db"
    folder = weights_folder("llama")
    capsys.readouterr()  # what writing the weights printed
    code, out, err = run(["optimize", str(folder), *HUGE, "--db", f"sqlite:///{db_file}"], capsys)
    assert code == 1 and out == ""
    assert (
        err.startswith("error: profiling batch 1000000 x seq 128") and err.count("\n") == 1
    )  # no note either
    written = {
        table: count for table, count in table_rows(db_file).items() if not table.endswith("alembic_version")
    }
    assert not any(written.values())  # not even this machine's measured hardware


def test_validate_with_a_huge_batch_leaves_the_run_as_it_was(
    weights_folder: Callable[[str], Path], measured_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = weights_folder("llama")
    db_file = Path(measured_db_url.removeprefix("sqlite:///"))
    tuned(folder, measured_db_url, seq=8, new_tokens=2, repeats=1, trials=3)
    before = table_rows(db_file)
    capsys.readouterr()
    code, out, err = run(
        ["validate", "latest", str(folder), "--batch", "10000000", "--db", measured_db_url], capsys
    )
    assert code == 1 and out == ""
    assert err.startswith(
        "error: validating the map with batch 10000000 x seq 8 with 2 new tokens needs at least "
    )
    assert err.count("\n") == 1
    assert table_rows(db_file) == before


def test_the_exact_figure_is_named_when_the_meta_pass_runs_the_batch(
    config_folder: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = config_folder("llama")
    meta = build_meta_model(resolve_source(str(folder)), "auto")
    workload = Workload(batch=4, seq=16, new_tokens=2, dtype=meta.dtype)
    [peak] = host_peaks(meta, workload, streamed, budget=available_ram())
    assert not peak.at_least and peak.nbytes > 0
    small_machine(monkeypatch, peak.nbytes - 1)
    db_file = tmp_path / "tuner.db"
    args = [
        "profile",
        str(folder),
        "--batch",
        "4",
        "--seq",
        "16",
        "--new-tokens",
        "2",
        "--db",
        f"sqlite:///{db_file}",
    ]
    code, out, err = run(args, capsys)
    assert code == 1 and out == ""
    from tuner.core.sizes import format_bytes

    assert f"needs {format_bytes(peak.nbytes)} of RAM" in err
    assert f"has {format_bytes(peak.nbytes - 1)} available" in err
    assert table_rows(db_file)["profiles"] == 0
    # one byte more and the same profile runs and is stored
    small_machine(monkeypatch, peak.nbytes)
    code, _, err = run([*args, "--repeats", "1", "--json"], capsys)
    assert code == 0, err
    assert table_rows(db_file)["profiles"] == 1


def test_the_line_through_two_batches_never_overstates_a_larger_one(
    config_folder: Callable[[str], Path],
) -> None:
    """What the guard says of a batch the meta pass cannot run: a lower bound, here checked
    against batches the meta pass does run."""
    meta = build_meta_model(resolve_source(str(config_folder("gpt2"))), "auto")
    workload = Workload(batch=1, seq=16, new_tokens=2, dtype=meta.dtype)
    peak = {
        batch: host_peaks(meta, replace(workload, batch=batch), streamed, budget=0)[0].nbytes
        for batch in (2, 4, 64)
    }
    bound = peak[4] + (64 - 4) * (peak[4] - peak[2]) / 2
    assert peak[2] < peak[4] and bound <= peak[64]
    assert bound >= 0.9 * peak[64]  # and close: nearly every tensor grows with the batch


def test_measure_leaves_out_the_maps_that_do_not_fit(
    weights_folder: Callable[[str], Path], measured_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = weights_folder("llama")
    db = measured_db_url
    half = sum(f.stat().st_size for f in folder.glob("*.safetensors")) // 2
    options: dict[str, Any] = dict(
        seq=8, new_tokens=2, repeats=1, trials=6, random_seed=1, max_memory={"cpu": half}
    )
    modelled = tuned(folder, db, **options).run
    meta = build_meta_model(resolve_source(str(folder)), modelled.workload.dtype)
    maps = [c.device_map for c in modelled.baselines]
    peaks = sorted({p.nbytes for p in host_peaks(meta, modelled.workload, lambda _: maps, budget=0)})
    assert len(peaks) > 1  # maps holding more weights in RAM need more of it

    # RAM for the lightest map only: the others are stored as failed, with both figures
    small_machine(monkeypatch, peaks[0])
    measured = tuned(folder, db, measure=2, measure_rounds=1, **options).run
    errors = [c.measure_error for c in [*measured.baselines] if c.measure_error]
    assert errors and all(
        e.startswith("not loaded: batch 1 x seq 8 with 2 new tokens needs ") for e in errors
    )
    assert measured.measured

    # no RAM for any map: refused in one line, and the run keeps its modelled winner
    small_machine(monkeypatch, peaks[0] - 1)
    again = tuned(folder, db, force=True, **options).run
    with pytest.raises(WorkloadError, match=rf"^measuring run {again.id}: its lightest map at batch 1"):
        tuned(folder, db, measure=2, measure_rounds=1, **options)
    import tuner

    assert not tuner.get_run(again.id, db=db).measured

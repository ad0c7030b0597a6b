"""What `tuner show` prints of a run beyond its maps: why it failed, and which maps break its pins."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from reports.html.verdict import verdict
from reports.terminal import format_ratios
from reports.terminal import history_table
from reports.terminal import price_table
from reports.terminal import run_tables
from tuner.core.devices import device_order
from tuner.core.domain import DeviceMemory
from tuner.core.domain import Run
from tuner.core.domain import RunStatus


def shown(run: Run) -> str:
    console = Console(width=250, record=True)
    console.print(*run_tables(run))
    return console.export_text()


def test_a_failed_run_says_why(run: Run) -> None:
    failed = dataclasses.replace(
        run, status=RunStatus.FAILED, winner=None, baselines=(), error="no such model folder: ./nope"
    )
    assert "failed: no such model folder: ./nope" in shown(failed)
    assert "failed:" not in shown(run)


def test_a_map_that_breaks_the_pins_is_shown_without_a_ratio_to_the_winner(run: Run) -> None:
    auto = run.baseline("auto")
    broken = dataclasses.replace(auto, breaks="pin lm_head=disk")
    others = tuple(c for c in run.baselines if c.name != "auto")
    winner = dataclasses.replace(auto, name="trial 3")  # as fast: auto would show 1.00x
    pinned = dataclasses.replace(run, baselines=(broken, *others), winner=winner)
    unpinned = dataclasses.replace(pinned, baselines=(auto, *others))
    assert "1.00x" in next(line for line in shown(unpinned).splitlines() if line.startswith("│ auto "))
    row = next(line for line in shown(pinned).splitlines() if "auto (breaks pin lm_head=disk)" in line)
    assert "1.00x" not in row
    assert "but it breaks pin lm_head=disk" in verdict(pinned)


def test_a_forward_only_run_heads_its_latency_forward(run: Run) -> None:
    header = next(line for line in shown(run).splitlines() if "prefill" in line)
    assert "generate" in header and "per token" in header
    forward = dataclasses.replace(run, workload=dataclasses.replace(run.workload, new_tokens=0))
    header = next(line for line in shown(forward).splitlines() if "forward" in line)
    assert "generate" not in header and "prefill" not in header and "per token" not in header


def test_devices_are_listed_in_their_order_whatever_the_map_uses_first(run: Run) -> None:
    auto = run.baseline("auto")
    assert auto.prediction is not None and len(auto.prediction.memory) > 1
    turned = dataclasses.replace(auto.prediction, memory=tuple(reversed(auto.prediction.memory)))
    turned_run = dataclasses.replace(run, baselines=(dataclasses.replace(auto, prediction=turned),))
    row = next(line for line in shown(turned_run).splitlines() if line.startswith("│ auto "))
    listed = [memory.device for memory in auto.prediction.memory]
    ordered = sorted(listed, key=device_order)
    positions = [row.index(f"{device}: ") for device in ordered]
    assert positions == sorted(positions), row


def test_the_history_tells_apart_runs_asked_for_other_limits_pins_and_devices(run: Run) -> None:
    asked = dataclasses.replace(
        run, max_memory={"0": 20 * 2**30, "cpu": 64 * 2**30}, pins=(("lm_head", "0"),), exclude=("disk",)
    )
    console = Console(width=300, record=True)
    console.print(history_table([asked, dataclasses.replace(run, max_memory={}, pins=(), exclude=())]))
    lines = console.export_text().splitlines()
    assert lines[2].split("┃")[2].strip() == "when (UTC)"  # stored in UTC, as the runs page says
    assert "0 20.0 GiB, cpu 64.0 GiB; pin lm_head=0; no disk" in lines[4]
    assert lines[5].split("│")[6].strip() == "-"  # nothing asked beyond the workload


def test_a_vision_or_speech_run_is_described_by_what_it_takes_not_by_seq(run: Run) -> None:
    vision = dataclasses.replace(
        run, inputs="vision", workload=dataclasses.replace(run.workload, new_tokens=0)
    )
    speech = dataclasses.replace(run, inputs="speech")
    assert f"batch {run.workload.batch}, one image each, 0 new tokens" in shown(vision)
    assert f"batch {run.workload.batch}, one audio clip each, {run.workload.new_tokens} new tokens" in shown(
        speech
    )
    assert f"seq {run.workload.seq}" in shown(run) and f"seq {run.workload.seq}" not in shown(speech)
    console = Console(width=300, record=True)
    console.print(history_table([vision, speech, run]))
    shapes = [line.split("│")[5].strip() for line in console.export_text().splitlines()[4:7]]
    workload = run.workload
    assert shapes == [
        f"{workload.batch}ximage+0 {workload.dtype}",
        f"{workload.batch}xaudio+{workload.new_tokens} {workload.dtype}",
        f"{workload.batch}x{workload.seq}+{workload.new_tokens} {workload.dtype}",
    ]


def test_the_history_says_why_a_run_failed_shortened(run: Run) -> None:
    why = "no such model folder: /models/" + "x" * 200
    failed = dataclasses.replace(run, status=RunStatus.FAILED, error=why)
    console = Console(width=300, record=True)
    console.print(history_table([failed, run]))
    text = console.export_text()
    assert "failed: no such model folder: ..." in text and "x" * 100 not in text
    assert "running:" not in text


def test_measured_over_predicted_names_the_forward_of_a_run_without_decode_steps() -> None:
    assert format_ratios((1.31, 2.05)) == "prefill 1.31x, step 2.05x"
    assert format_ratios((0.76, None)) == "forward 0.76x"  # a ViT classifier's: its one forward
    assert format_ratios((None, None)) == "forward -"


def test_a_narrow_terminal_gets_the_history_in_whole_cells_and_is_told_what_was_left_out(run: Run) -> None:
    run = dataclasses.replace(run, created_at="2026-12-04T08:37:12.5+00:00")
    long_path = dataclasses.replace(run, model_name="/models/" + "llama-" * 6 + "8b")
    console = Console(width=80, record=True)
    console.print(history_table([long_path, run], width=console.width))
    text = console.export_text()
    lines = text.splitlines()
    assert [cell.strip() for cell in lines[2].split("┃")[1:-1]] == [
        "run",
        "when (UTC)",
        "model",
        "workload",
        "status",
        "winner",
    ]
    assert all(len(line) <= 80 for line in lines) and "…" not in text
    assert run.created_at.replace("T", " ")[:16] in text  # never cut
    models = "".join(line.split("│")[3].strip() for line in lines if line.startswith("│"))
    assert "llama-" * 6 in models  # folded, whole
    assert lines[-1].strip() == "hardware, limits, trials, measured: tuner show RUN, or a wider terminal"
    wide = Console(width=200, record=True)
    wide.print(history_table([run], width=wide.width))
    assert "hardware" in wide.export_text().splitlines()[2] and "tuner show RUN" not in wide.export_text()


def test_auto_over_its_limit_is_explained_by_what_accelerate_leaves_out(run: Run) -> None:
    auto = run.baseline("auto")
    assert auto.prediction is not None and auto.prediction.feasible
    assert "accelerate plans from weight bytes alone" not in shown(run)

    mib = 2**20
    # weights that fit the limit alone, and the KV cache and working set that push it over
    over = DeviceMemory("cpu", 14 * mib, 0, 2 * mib, mib // 4, 0, 15 * mib)
    overrun = dataclasses.replace(auto, prediction=dataclasses.replace(auto.prediction, memory=(over,)))
    others = tuple(c for c in run.baselines if c.name != "auto")
    why = (
        "auto: accelerate plans from weight bytes alone; cpu needs 16.2 MiB (weights 14.0 MiB, "
        "KV cache 2.0 MiB, working set 256.0 KiB), 1.2 MiB over its 15.0 MiB limit"
    )
    assert why in " ".join(shown(dataclasses.replace(run, baselines=(overrun, *others))).split())
    # tuner price: the same line under your map beside accelerate's
    console = Console(width=250, record=True)
    console.print(price_table(others[0], [overrun, *others], model="toy", workload="w"))
    assert why in " ".join(console.export_text().split())

    # with accelerate's auto planned under the limit it takes to fit, the line names it
    fitted = dataclasses.replace(auto, name="auto at cpu=12.4MiB")
    text = " ".join(shown(dataclasses.replace(run, baselines=(overrun, fitted, *others))).split())
    assert f"{why}; auto at cpu=12.4MiB: its plan under limits lowered until it fits" in text


def test_the_report_s_verdict_says_how_auto_planned_to_fit_fares_against_the_winner(run: Run) -> None:
    auto = run.baseline("auto")
    assert auto.prediction is not None
    mib = 2**20
    over = DeviceMemory("cpu", 14 * mib, 0, 2 * mib, mib // 4, 0, 15 * mib)
    overrun = dataclasses.replace(auto, prediction=dataclasses.replace(auto.prediction, memory=(over,)))
    doubled = dataclasses.replace(
        auto.prediction,
        prefill=auto.prediction.prefill.scaled(2.0),
        decode=auto.prediction.decode.scaled(2.0),
    )
    fitted = dataclasses.replace(auto, name="auto at cpu=12.4MiB", prediction=doubled)
    winner = dataclasses.replace(auto, name="trial 3")
    said = verdict(dataclasses.replace(run, winner=winner, baselines=(overrun, fitted)))
    assert "<code>auto</code> runs out of memory: accelerate plans from weight bytes alone" in said
    assert "planned under limits lowered until it fits, <code>auto at cpu=12.4MiB</code>" in said
    assert "2.00× slower" in said
    assert "lowered until it fits" not in verdict(
        dataclasses.replace(run, winner=winner, baselines=(overrun,))
    )

"""A measurement taken while other processes load the machine is flagged: the pure decision on
hand-computed figures, and real profiles taken under a load this test makes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tuner
from profiler.hardware import LoadWatch
from profiler.hardware.load import BUSY_SHARE
from profiler.hardware.load import HOST_SLOWDOWN
from profiler.hardware.load import busy_reason
from profiler.hardware.load import host_slowdown_reason
from profiler.hardware.load import reference_timings
from storage import Store
from tuner.workflows import ProfileListener

pytestmark = pytest.mark.usefixtures("one_thread")


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@contextmanager
def busy_machine(per_cpu: int = 1) -> Iterator[None]:
    """`per_cpu` processes spinning per CPU, stopped and waited for on the way out (then their CPU
    time is this process's own in ``os.times``)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(per_cpu * (os.cpu_count() or 1))
    ]
    try:
        # the interpreters get going; spinning, not sleeping, since a thread that wakes from a sleep
        # is let run ahead of the others for a while (a contended tick took 1.0-2x, not 4-12x)
        spin(0.5)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


class Notes(ProfileListener):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


# ---- busy_reason: hand-computed figures -------------------------------------------------------


def test_others_taking_more_than_a_quarter_of_the_cpus_flag_the_measurement() -> None:
    # 12 CPU seconds of others in 10 s on 2 cpus: 0.6 of the machine, 1.2 cpus on average
    assert busy_reason(cpus=2, wall_s=10.0, others_s=12.0, load_before=2.14, load_after=2.86) == (
        "other processes used 1.2 of 2 cpus (60%) while measuring; load average 2.1 before, 2.9 after"
    )


@pytest.mark.parametrize(("others_s", "flagged"), [(5.0, False), (5.01, True), (0.0, False)])
def test_the_quarter_is_the_line(others_s: float, flagged: bool) -> None:
    # 5 s of 20 cpu-seconds is exactly BUSY_SHARE: not yet busy
    assert BUSY_SHARE == 0.25
    reason = busy_reason(cpus=2, wall_s=10.0, others_s=others_s, load_before=None, load_after=None)
    assert bool(reason) is flagged


def test_a_high_load_average_does_not_flag_what_others_left_alone() -> None:
    # the load average lags by a minute; the CPU accounting of the measurement itself decides
    assert busy_reason(cpus=2, wall_s=4.0, others_s=0.4, load_before=3.0, load_after=2.5) == ""


@pytest.mark.parametrize(("load", "flagged"), [(2.0, True), (1.9, False)])
def test_without_cpu_accounting_the_load_average_before_decides(load: float, flagged: bool) -> None:
    reason = busy_reason(cpus=2, wall_s=4.0, others_s=None, load_before=load, load_after=load)
    assert bool(reason) is flagged
    if flagged:
        assert reason.startswith(f"load average {load:.1f} on 2 cpus when measuring began")


def test_a_machine_without_cpus_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one cpu"):
        busy_reason(cpus=0, wall_s=1.0, others_s=0.0, load_before=None, load_after=None)


# ---- host_slowdown_reason: hand-computed figures ----------------------------------------------


@pytest.mark.parametrize(
    ("timings", "flagged"),
    [([0.010, 0.015], False), ([0.010, 0.01501], True), ([0.02, 0.01, 0.012], True), ([0.01], False)],
)
def test_a_reference_more_than_half_again_its_fastest_flags_the_measurement(
    timings: list[float], flagged: bool
) -> None:
    # 0.015 / 0.010 is exactly HOST_SLOWDOWN: not yet flagged; one timing has nothing to compare
    assert HOST_SLOWDOWN == 1.5
    assert bool(host_slowdown_reason(timings)) is flagged


def test_the_slowdown_is_named_against_the_fastest_timing_wherever_it_came() -> None:
    assert host_slowdown_reason([0.030, 0.010, 0.012]) == (
        "the host slowed down while measuring: a reference computation took 3.0x its fastest time "
        "(runs may take up to 3.0x the predicted time while it does)"
    )


def test_the_slowdown_names_where_its_slowest_and_fastest_timings_were_taken() -> None:
    labels = ["at the start", "before 'cpu: float32 matmul'", "at the end"]
    assert host_slowdown_reason([0.010, 0.030, 0.012], labels).endswith(
        "(runs may take up to 3.0x the predicted time while it does); "
        "slowest before 'cpu: float32 matmul', fastest at the start"
    )
    assert "slowest" not in host_slowdown_reason([0.010, 0.030, 0.012], labels[:2])  # not one each


def test_a_reference_timing_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        host_slowdown_reason([0.01, 0.0])


def test_the_reference_is_timed_once_per_loop_as_many_times_as_asked() -> None:
    timings = reference_timings(4)
    assert len(timings) == 4 and all(seconds > 0 for seconds in timings)
    assert reference_timings(0) == []


# ---- real measurements under a load made here ----------------------------------------------


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_a_watch_sees_spinning_processes() -> None:
    with busy_machine(), LoadWatch() as watch:
        spin(1.0)
    assert watch.busy.startswith("other processes used")


def test_a_watch_sees_its_own_machine_slow_down_where_cpu_accounting_cannot() -> None:
    """Child processes spinning from the second tick on take the reference's turns on the CPUs, as
    a busy host takes this machine's: waited for, their CPU time is this process's own in the
    accounting, the reference computation is slowed all the same. (Threads of this process spinning
    in the interpreter slowed it by 1.0-8x, too unevenly to test with.)"""
    with LoadWatch() as watch:
        watch.tick("idle")
        with busy_machine(per_cpu=8):  # the reference gets about a ninth of a CPU: 4-12x here
            watch.tick("spun")
    assert len(watch.reference_s) == 4 and watch.labels == ["at the start", "idle", "spun", "at the end"]
    assert "the host slowed down while measuring: a reference computation took" in watch.busy
    assert "; slowest spun, fastest " in watch.busy


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_a_profile_taken_under_load_is_flagged_stored_flagged_and_never_reused_silently(
    config_folder: Callable[[str], Path], db_url: str
) -> None:
    model = str(config_folder("llama"))
    measuring = Notes()
    with busy_machine():
        outcome = tuner.profile(model, seq=8, new_tokens=2, repeats=3, db=db_url, listener=measuring)
    assert not outcome.reused
    assert outcome.profile.busy.startswith("other processes used")
    assert measuring.notes == [
        f"profile {outcome.profile_id} was just measured while the machine was busy "
        f"({outcome.profile.busy}): its times may be many times this machine's; --force measures again"
    ]
    with Store(db_url) as store:
        stored = store.find_profile(outcome.profile.graph.fingerprint, outcome.profile.hardware_fingerprint,
                                    outcome.profile.workload)  # fmt: skip
    assert stored is not None and stored.busy == outcome.profile.busy

    reusing = Notes()
    again = tuner.profile(model, seq=8, new_tokens=2, repeats=3, db=db_url, listener=reusing)
    assert again.reused and again.profile_id == outcome.profile_id
    assert len(reusing.notes) == 1
    assert reusing.notes[0].startswith(f"profile {outcome.profile_id} was measured while the machine")

"""Whether other processes loaded the machine while something was measured.

A timing taken while another process competes for the CPUs can be 4-100x off (a 2-thread matmul
whose second thread waits for a busy core spins at the OpenMP barrier), and nothing in the timing
itself says so. `LoadWatch` brackets a measurement and reads how much CPU time the whole machine
spent (``/proc/stat``: user, nice, system, irq, softirq and steal, the last being time the
hypervisor gave this VM's CPUs to another) against what this process spent (``os.times``, its
children included); the difference is what others took. The load averages before and after are
kept to show. `busy_reason` is the pure decision.

Neither sees a virtual machine's host lending this machine's CPUs to other guests when it does not
report it as steal time: every figure then comes out slower, by however much the host is busy at
that moment. So `LoadWatch` also times a fixed reference computation (`reference_seconds`) when it
begins, at every `LoadWatch.tick` (`tuner hardware` ticks before each of its measurements) and when
it ends; when the slowest of those timings is more than `HOST_SLOWDOWN` times the fastest, the
machine's own speed changed while measuring (`host_slowdown_reason`, pure), and the measurement is
flagged too. A host that stays equally busy throughout slows every figure alike and goes unseen.

Where ``/proc/stat`` does not exist (macOS, Windows), the 1-minute load average before the
measurement stands in: it cannot tell this process from others, so it only flags a machine that
was already saturated when the measurement began.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "BUSY_SHARE",
    "HOST_SLOWDOWN",
    "LoadWatch",
    "busy_reason",
    "host_slowdown_reason",
    "reference_seconds",
    "reference_timings",
]

#: Share of the machine's CPU time that other processes may take during a measurement before it
#: is flagged: one busy process on a 2-core machine takes half, which slows a 2-thread matmul
#: 2-100x; system daemons take a few percent.
BUSY_SHARE = 0.25

#: How much slower the slowest timing of the reference computation may be than the fastest within
#: one measurement before it is flagged. Eight timings in a row agreed within 7% here (10.7-11.4 ms)
#: while the host held its speed; a host that did not switched between about 11 and 20 ms within
#: one `tuner hardware` run (benchmarks/results/hardware_spread_host_slowdown.md).
HOST_SLOWDOWN = 1.5

_PROC_STAT = Path("/proc/stat")
#: Iterations of the reference computation: 11-20 ms of interpreter work on a 2-core EPYC, longer
#: than the interpreter's 5 ms thread switch interval, so no timing fits between switches.
_REFERENCE_LOOP = 200_000


def busy_reason(
    *,
    cpus: int,
    wall_s: float,
    others_s: float | None,
    load_before: float | None,
    load_after: float | None,
) -> str:
    """Why a measurement is not to be trusted as this machine's, in one line; empty when it is.

    Args:
        cpus: the machine's logical CPUs.
        wall_s: how long the measurement took.
        others_s: CPU seconds other processes spent meanwhile, all CPUs together; None when the
            system does not say (then the load average decides).
        load_before, load_after: the 1-minute load average around the measurement, if known.

    Example:
        >>> busy_reason(cpus=2, wall_s=10.0, others_s=12.0, load_before=2.1, load_after=2.9)
        'other processes used 1.2 of 2 cpus (60%) while measuring; load average 2.1 before, 2.9 after'
        >>> busy_reason(cpus=2, wall_s=10.0, others_s=0.5, load_before=0.2, load_after=1.1)
        ''
    """
    if cpus < 1 or wall_s < 0:
        raise ValueError(f"need at least one cpu and a non-negative duration (got {cpus}, {wall_s})")
    loads = ""
    if load_before is not None and load_after is not None:
        loads = f"; load average {load_before:.1f} before, {load_after:.1f} after"
    if others_s is not None:
        share = others_s / (wall_s * cpus) if wall_s > 0 else 0.0
        if share <= BUSY_SHARE:
            return ""
        used = others_s / wall_s
        return f"other processes used {used:.1f} of {cpus} cpus ({share:.0%}) while measuring{loads}"
    if load_before is not None and load_before >= cpus:
        return f"load average {load_before:.1f} on {cpus} cpus when measuring began{loads}"
    return ""


def host_slowdown_reason(reference_s: Sequence[float], labels: Sequence[str] = ()) -> str:
    """Why a measurement is not to be trusted when the reference computation, timed through it,
    got slower than `HOST_SLOWDOWN` times its fastest; empty when it did not.

    The figures are each the best of several samples, so they are the host's fast spells: a run
    that meets its slow ones takes longer than predicted, by up to the slowdown, which the reason
    says.

    Example:
        >>> print(host_slowdown_reason([0.010, 0.011, 0.024]))  # doctest: +NORMALIZE_WHITESPACE
        the host slowed down while measuring: a reference computation took 2.4x its fastest time
        (runs may take up to 2.4x the predicted time while it does)
        >>> host_slowdown_reason([0.010, 0.014])
        ''
    """
    if any(seconds <= 0 for seconds in reference_s):
        raise ValueError(f"reference timings must be positive (got {list(reference_s)})")
    if len(reference_s) < 2:
        return ""
    slowdown = max(reference_s) / min(reference_s)
    if slowdown <= HOST_SLOWDOWN:
        return ""
    where = ""
    if len(labels) == len(reference_s):  # which steps it ran before: what slowed the host
        slowest, fastest = reference_s.index(max(reference_s)), reference_s.index(min(reference_s))
        where = f"; slowest {labels[slowest]}, fastest {labels[fastest]}"
    return (
        f"the host slowed down while measuring: a reference computation took {slowdown:.1f}x its "
        f"fastest time (runs may take up to {slowdown:.1f}x the predicted time while it does){where}"
    )


def reference_seconds() -> float:
    """Seconds of a fixed computation on one CPU (a loop of integer arithmetic in the interpreter,
    which every figure of the tuner's measurements also pays): the best of three."""
    return min(reference_timings(3))


def reference_timings(count: int) -> list[float]:
    """`count` timings of the reference computation one after another, each of one loop: where
    the host switches between speeds every tenth of a second or so, their fastest is its fast
    spells and their mean what a run of seconds gets."""
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        total = 0
        for value in range(_REFERENCE_LOOP):
            total += value * value
        timings.append(time.perf_counter() - started)
    return timings


@dataclass(frozen=True)
class _Reading:
    wall: float
    machine_busy: float | None  # CPU seconds of the whole machine since boot
    own: float  # CPU seconds of this process and its waited-for children
    load: float | None


class LoadWatch:
    """Brackets a measurement: ``with LoadWatch() as watch: ...``, then `watch.busy` is the reason
    the measurement is flagged, or empty.

    Example:
        >>> with LoadWatch() as watch:
        ...     pass
        >>> isinstance(watch.busy, str)
        True
    """

    _cpus: int
    _before: _Reading

    def __init__(self) -> None:
        self.busy = ""
        self.reference_s: list[float] = []
        #: Where each timing was taken (``at the start``, ``before <step>``, ``at the end``).
        self.labels: list[str] = []

    def __enter__(self) -> LoadWatch:
        self._cpus = _machine_cpus()
        self.tick("at the start")
        self._before = _read()
        return self

    def tick(self, label: str = "between steps") -> None:
        """Time the reference computation once more (a few tens of milliseconds); `label` says
        where, for the reason a slowdown is flagged with."""
        self.reference_s.append(reference_seconds())
        self.labels.append(label)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        after = _read()
        before = self._before
        others = None
        if before.machine_busy is not None and after.machine_busy is not None:
            others = max(0.0, (after.machine_busy - before.machine_busy) - (after.own - before.own))
        self.tick("at the end")
        reasons = (
            busy_reason(
                cpus=self._cpus,
                wall_s=after.wall - before.wall,
                others_s=others,
                load_before=before.load,
                load_after=after.load,
            ),
            host_slowdown_reason(self.reference_s, self.labels),
        )
        self.busy = "; ".join(reason for reason in reasons if reason)


def _read() -> _Reading:
    own = os.times()
    return _Reading(
        wall=time.perf_counter(),
        machine_busy=_machine_busy_seconds(),
        own=own.user + own.system + own.children_user + own.children_system,
        load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )


def _machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (steal included), from ``/proc/stat``."""
    try:
        first = _PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    # counted in user, and iowait is idle time.
    ticks = [int(value) for value in first[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _machine_cpus() -> int:
    """The CPUs ``/proc/stat`` counts (a container sees the host's), else ``os.cpu_count``."""
    try:
        lines = _PROC_STAT.read_text().splitlines()
    except OSError:
        return os.cpu_count() or 1
    count = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return count or os.cpu_count() or 1

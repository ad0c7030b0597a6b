"""Ctrl-C and SIGTERM while a command runs (`tuner.cli.interrupts`): an interrupt is remembered,
the search defers it to a trial boundary and counts one that was lost before it, and nothing of it
outlives the command."""

from __future__ import annotations

import signal
import time

import pytest

from tuner.cli.interrupts import handled
from tuner.workflows.tuning import _Interrupts


def wait(seconds: float) -> None:
    """Python code running for `seconds`, where a signal handler may raise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_is_remembered_and_none_outlives_the_command(number: signal.Signals) -> None:
    before = signal.getsignal(number)
    with handled() as interrupt:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(number)
            wait(1.0)
        assert interrupt.received == number
    assert signal.getsignal(number) is before
    wait(0.5)  # settled: nothing is left to raise here


def test_the_search_defers_it_and_counts_one_that_was_lost_before() -> None:
    with handled():
        with _Interrupts() as interrupts:
            signal.raise_signal(signal.SIGINT)  # deferred: no KeyboardInterrupt
            assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            wait(1.0)
        # that KeyboardInterrupt was caught (as if swallowed): a search that starts now stops at once
        with _Interrupts() as interrupts:
            assert interrupts.requested()

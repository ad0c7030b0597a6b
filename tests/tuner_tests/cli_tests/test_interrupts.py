"""Ctrl-C and SIGTERM while a command runs (`tuner.cli.interrupts`): an interrupt is remembered,
the search defers it to a trial boundary and counts one that was lost before it, and nothing of it
outlives the command."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

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


class RaisesInFinalizer:
    """An object whose finalizer runs Python code when the signal `number` comes: the handler's
    KeyboardInterrupt escapes ``__del__``, where Python can only report it (`sys.unraisablehook`)."""

    def __init__(self, number: signal.Signals) -> None:
        self.number = number

    def __del__(self) -> None:
        signal.raise_signal(self.number)


def test_an_interrupt_raised_in_a_finalizer_is_remembered_without_a_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with handled() as interrupt:
        RaisesInFinalizer(signal.SIGTERM)  # collected at once
        assert interrupt.received == signal.SIGTERM
        assert reported == []  # Python prints one with its traceback: the command says it in one line

        class Failing:
            def __del__(self) -> None:
                raise RuntimeError("a finalizer's own error")

        Failing()
        assert [type(one.exc_value) for one in reported] == [RuntimeError]  # anything else is reported
    assert sys.unraisablehook == reported.append

"""Ctrl-C and SIGTERM for the whole of a command, from before its first heavy import to its exit.

Only the standard library here: `tuner.cli.main` installs the handler before it imports the
commands (click, and through them torch), so an interrupt that comes while they load ends the
command as one that comes later does, with one line and the exit status 130 (143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["STOPPED_STATUSES", "Interrupt", "exit_status", "handled"]


def exit_status(number: int | None) -> int:
    """The exit status of a command stopped by the signal `number`, as shells report a process
    that signal ended: 130 for Ctrl-C (and when the signal is not known), 143 for SIGTERM."""
    return 128 + (number or signal.SIGINT)


#: The exit statuses of a command that Ctrl-C or SIGTERM stopped.
STOPPED_STATUSES = frozenset({exit_status(signal.SIGINT), exit_status(signal.SIGTERM)})


class Interrupt:
    """The handler of SIGINT and SIGTERM while a command runs: as Python's own for Ctrl-C, it
    raises KeyboardInterrupt; and it remembers the signal (`received`).

    Library code may turn that KeyboardInterrupt into another error (transformers' lazy modules
    make it a ModuleNotFoundError) or swallow it (an import that catches everything), and Python
    drops one raised while a finalizer (``__del__``, a weakref callback) runs: the command line
    reports an error that follows it as the interrupt it was, and `tuner.workflows.tuning`, which
    defers it within a search as it does Python's own handler, stops a search that starts after
    one was lost.
    """

    #: What `tuner.workflows.tuning` looks for in a handler it may defer.
    raises_keyboard_interrupt = True

    def __init__(self) -> None:
        self.received: int | None = None
        self._settled = False

    def __call__(self, number: int, frame: FrameType | None) -> None:
        if self._settled:
            return  # the command has ended: its exit is under way
        if self.received is None:
            self.received = number
        raise KeyboardInterrupt

    def unraisable_hook(self, previous: Callable[[Any], object]) -> Callable[[Any], object]:
        """A `sys.unraisablehook` that keeps quiet about the KeyboardInterrupt this handler raised
        in a finalizer, which Python would print with its traceback (the interrupt is remembered,
        and the command reports it in one line), and passes anything else to `previous`."""

        def hook(unraisable: Any) -> None:
            if self.received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
                return
            previous(unraisable)

        return hook

    def settle(self) -> None:
        """The command has ended: no KeyboardInterrupt from now on (a signal still pending finds
        the handler settled and does nothing)."""
        self._settled = True
        _run_pending_handlers()
        if self.received is not None:
            _forget_unhandled_interrupt()


@contextlib.contextmanager
def handled() -> Iterator[Interrupt]:
    """An `Interrupt` handles SIGINT and SIGTERM for the block (in the main thread: elsewhere
    Python runs no signal handler); on the way out it is settled and the previous handlers are
    put back."""
    interrupt = Interrupt()
    previous = {}
    previous_unraisable_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
        sys.unraisablehook = interrupt.unraisable_hook(previous_unraisable_hook)
    try:
        yield interrupt
    finally:
        interrupt.settle()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if previous:
            sys.unraisablehook = previous_unraisable_hook


def _run_pending_handlers() -> None:
    """Nothing: calling a Python function lets the interpreter run the signal handlers whose
    signals are pending, here the settled one, before a previous handler is put back (a pending
    delivery would otherwise raise KeyboardInterrupt in it, after the command's exit began)."""


def _forget_unhandled_interrupt() -> None:
    """Clear CPython's note that a KeyboardInterrupt went unhandled, which the command handled.

    CPython notes a KeyboardInterrupt that escapes code run through ``PyRun_String`` (pybind11
    runs Python so while torch's extensions load) as unhandled, even when Python code catches it
    later, and at exit then kills the process with SIGINT: the exit status is -2, not the 130 of
    an interrupt handled. Running code through ``PyRun_String`` again clears the note first.
    """
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except (ImportError, AttributeError):  # not CPython: no such note
        pass

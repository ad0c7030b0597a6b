"""accelerate's ``dispatch_model`` for the measurements' own tiny models, without its warning.

A measurement dispatches small models with units on ``cpu`` or ``disk`` on purpose, and
accelerate then logs "Some parameters are on the meta device because they were offloaded" on
every call: a line the user of `tuner hardware` can do nothing about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner.core.logs import quieted

__all__ = ["dispatch_quietly", "hooked_calls"]


def dispatch_quietly(model: Any, device_map: dict[str, Any], **options: Any) -> Any:
    """``accelerate.dispatch_model(model, device_map, **options)``, its warnings held back."""
    from accelerate import dispatch_model

    with quieted("accelerate.big_modeling"):
        return dispatch_model(model, device_map=device_map, **options)


def hooked_calls(model: Any, run: Callable[[], object]) -> int:
    """How many calls accelerate's hooks get in `run`: counted once, with counters removed after."""
    calls = [0]

    def count(module: Any, args: Any) -> None:
        calls[0] += 1

    handles = [m.register_forward_pre_hook(count) for m in model.modules() if hasattr(m, "_hf_hook")]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return max(calls[0], 1)

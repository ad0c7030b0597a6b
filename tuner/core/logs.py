"""Library loggers held back for a block: torch's stack warns of what the tuner reports itself
(a spec's GPU "not available", buffers of offloaded layers, parameters left on meta on purpose)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quieted"]


@contextlib.contextmanager
def quieted(*names: str) -> Iterator[None]:
    """The loggers `names` pass errors alone inside the block; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

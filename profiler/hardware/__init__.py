"""Measure the devices of this machine and the links between them.

``host`` identifies the machine and its memory without torch; ``compute`` times matmuls and
copies on one device; ``links`` fits and measures the alpha-beta links; ``disk`` measures the
offload folder; ``load`` tells whether other processes loaded the machine meanwhile;
``machine`` composes them into a `HardwareProfile`.
"""

from __future__ import annotations

from profiler.hardware.disk import drop_from_page_cache
from profiler.hardware.host import machine_identity
from profiler.hardware.links import DEFAULT_SIZES
from profiler.hardware.links import fit_link
from profiler.hardware.load import LoadWatch
from profiler.hardware.machine import MEASURING_METHOD
from profiler.hardware.machine import describe_hardware
from profiler.hardware.machine import measure_hardware

__all__ = [
    "DEFAULT_SIZES",
    "MEASURING_METHOD",
    "LoadWatch",
    "describe_hardware",
    "drop_from_page_cache",
    "fit_link",
    "machine_identity",
    "measure_hardware",
]

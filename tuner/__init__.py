"""Find where each part of a large model should live so that it runs fastest while it fits.

Importing this package loads no torch: `tuner history` stays fast.
"""

from __future__ import annotations

from tuner.core.domain import HardwareProfile
from tuner.core.domain import ModelGraph
from tuner.core.domain import ModelProfile
from tuner.core.domain import UnitProfile
from tuner.core.domain import Workload
from tuner.core.exceptions import TunerError

__version__ = "0.1.0"

__all__ = [
    "HardwareProfile",
    "ModelGraph",
    "ModelProfile",
    "TunerError",
    "UnitProfile",
    "Workload",
    "__version__",
]

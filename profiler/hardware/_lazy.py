"""A module that is imported on first use, as Optuna's ``_LazyImport``.

`profiler.hardware` re-exports functions that measure with torch, yet `profiler.hardware.host`
must be importable without torch (seconds to import), and importing a submodule runs the
package's ``__init__`` first. So the modules that measure import torch through this proxy,
written under ``if TYPE_CHECKING`` beside the real import so type checkers see torch itself.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

__all__ = ["LazyModule"]


class LazyModule(types.ModuleType):
    """Stands for the module `name`, importing it when one of its attributes is first read.

    Example:
        >>> json = LazyModule("json")
        >>> json.dumps([1])
        '[1]'
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._module: types.ModuleType | None = None

    def __getattr__(self, item: str) -> Any:
        # Only called for names the proxy itself lacks; the real module is looked up each time
        # rather than copied, so attributes it gains later (lazy submodules) are seen too.
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return getattr(self._module, item)

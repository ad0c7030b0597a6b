"""Every example in a docstring of the packages runs and shows what it says (``>>>`` lines)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import profiler
import reports
import storage
import tuner


def _modules() -> list[str]:
    names = []
    for package in (tuner, profiler, reports, storage):
        for found in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if ".migrations" not in found.name and not found.name.endswith("__main__"):
                names.append(found.name)
    return names


def test_docstring_examples_run() -> None:
    attempted, failed = 0, {}
    for name in _modules():
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        attempted += result.attempted
        if result.failed:
            failed[name] = result.failed
    assert not failed
    assert attempted >= 20

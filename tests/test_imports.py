"""Every name the tool imports from its libraries exists in the installed versions.

Many imports sit inside the functions that need them (CUDA-only paths among them), so a name a
library moved fails only where that path runs: ``clear_device_cache``, imported from
``accelerate.utils`` on the GPU's pageable-copy path, is not exported there in accelerate 1.15 and
broke ``tuner hardware`` on every CUDA machine while the cpu-only suite stayed green.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "profiler", "storage", "reports", "benchmarks")
LIBRARIES = ("torch", "transformers", "accelerate", "optuna", "sqlalchemy", "alembic", "click", "rich")


def library_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) of each ``from <library>... import name`` in the packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    if node.module.split(".")[0] in LIBRARIES:
                        relative = str(path.relative_to(ROOT))
                        found += [(relative, node.lineno, node.module, alias.name) for alias in node.names]
    return found


IMPORTS = library_imports()


def test_the_packages_import_from_their_libraries() -> None:
    modules = {module.split(".")[0] for _, _, module, _ in IMPORTS}
    assert {"torch", "transformers", "accelerate", "optuna", "sqlalchemy"} <= modules


@pytest.mark.parametrize(("path", "line", "module", "name"), IMPORTS, ids=lambda value: str(value))
def test_each_imported_name_exists(path: str, line: int, module: str, name: str) -> None:
    imported = importlib.import_module(module)
    if name == "*" or hasattr(imported, name):
        return
    importlib.import_module(f"{module}.{name}")  # a submodule is imported by name, not found as one

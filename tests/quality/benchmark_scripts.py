"""Load a script of benchmarks/quality/ as a module, for its tests (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_benchmark_script(name: str) -> ModuleType:
    """`benchmarks/quality/<name>.py` as a module."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""`kernels/tune.py --pool-smoke`: the serving-decode benchmark's code path on tiny shapes, every launch checked
against the float32 reference (the GPU sweep itself is a benchmark, not a test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from .conftest import HAS_CUDA

import pytest

TUNE = Path(__file__).resolve().parents[2] / "kernels" / "tune.py"


@pytest.mark.skipif(HAS_CUDA, reason="the smoke runs under the Triton interpreter (CPU)")
def test_pool_decode_smoke_checks_every_launch(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("kernels_tune", TUNE)
    tune = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernels_tune", tune)  # its dataclasses look their module up there
    spec.loader.exec_module(tune)
    tune.smoke_pool_decode()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    launches = [row for row in rows if row.get("kernel") == "pool_decode"]
    assert launches and all(row["correct"] for row in launches)
    assert {row["case"] for row in launches} == {"uncompressed", "compressed"}
    assert rows[-1] == {"smoke_check": "ok", "atol": 1e-4}

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


@pytest.mark.skipif(HAS_CUDA, reason="the smoke runs under the Triton interpreter (CPU)")
def test_event_smoke_runs_every_row(capsys, monkeypatch):
    """`kernels/tune.py --event`'s code path (`bench_event`) on tiny shapes: every row is printed and the fused
    scores agree with the torch oracle's."""
    spec = importlib.util.spec_from_file_location("kernels_tune", TUNE)
    tune = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernels_tune", tune)
    spec.loader.exec_module(tune)
    tune.smoke_event()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    layers = [row for row in rows if row["kernel"] == "event_layer"]
    assert {row["scorer"] for row in layers} == {"torch", "fused"}
    assert all(float(row["relative_error"]) < 1e-5 for row in layers)
    [event] = [row for row in rows if row["kernel"] == "event_all_layers"]
    assert {"one_pass_ms", "slot_scores_ms", "slot_scores_given_lse_ms", "plan_ms", "sort_plan_ms"} <= set(event)

"""Shared fixtures: NaN-poisoned allocations, seeded generators, and structured attention inputs."""

from __future__ import annotations

import math
import os

import pytest
import torch

# Triton decides between compiling and interpreting when a kernel is defined: without CUDA, every Triton kernel
# in the suite runs under the interpreter, so the switch must be set before any test module imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poison(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        tensor.fill_(math.nan)
    elif tensor.dtype in (torch.int32, torch.int64):
        tensor.fill_(-(2**30))
    return tensor


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Every `torch.empty`/`empty_like` made by our code starts as NaN (or a huge negative int), so an output
    element that is never written shows up as a failure instead of passing by luck."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_real_empty_like(*a, **k)))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)

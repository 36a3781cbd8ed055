"""Shared fixtures: NaN-poisoned allocations, seeded generators, and structured attention inputs."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The team's workspace keeps material in a `shared/` folder beside the repository; a user's clone has none.
WORKSPACE_SHARED = REPO_ROOT.parent / "shared"


def _refuse_workspace_reads(event: str, args: tuple) -> None:
    """Audit hook: opening anything under the workspace's `shared/` folder fails the test that did it, so the
    suite keeps passing in a clone with nothing beside it (tests/test_standalone.py checks the hook works)."""
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    if path.startswith(str(WORKSPACE_SHARED) + os.sep) or os.path.abspath(path).startswith(
            str(WORKSPACE_SHARED) + os.sep):
        raise PermissionError(f"a test read {path}, outside the repository: keep such data in the repository "
                              "(e.g. tests/data/)")


sys.addaudithook(_refuse_workspace_reads)

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

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


def structured_qk(seq_len: int, num_q_heads: int, num_kv_heads: int, head_dim: int, *, generator: torch.Generator,
                  rigid_kv_heads: tuple[int, ...] = (0,), spike: float = 40.0):
    """Random q/k where the listed kv heads put (numerically) all block mass on block 0, so they type as rigid.

    Key 0 of those heads gets a large component along one axis and every query of the group shares that
    axis, so block 0 wins every segment's block distribution by hundreds of nats.
    """
    q = torch.randn(seq_len, num_q_heads, head_dim, generator=generator)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    group = num_q_heads // num_kv_heads
    for h in rigid_kv_heads:
        k[0, h, 0] = spike
        q[:, h * group:(h + 1) * group, 0] = spike
    return q.contiguous(), k.contiguous()

"""Structured attention inputs shared by the tests (a plain module: conftest.py files of several folders would
shadow each other under the name `conftest`)."""

from __future__ import annotations

import torch


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

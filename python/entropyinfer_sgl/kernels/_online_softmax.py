"""Pieces shared by the attention kernels: masked row loads and the online-softmax update (base 2, float32)."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are scaled by scale * log2(e) so that exp2 gives exp
LN2 = tl.constexpr(0.6931471805599453)  # base-2 LSE * ln(2) = natural-log LSE (a constexpr: read in kernels)


@triton.jit
def attend_tile(acc, l_i, m_i, q, k, v, valid, qk_scale, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold one key tile into the running (acc, l_i, m_i) state.

    q [M, D] and k, v [N, D] in the input dtype; valid [M, N] or [1, N] bool (read only if MASKED); qk_scale is
    scale * log2(e). Every row must have at least one valid key in the first tile it sees, so that m_i is finite
    from then on (the callers guarantee it).
    """
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def load_rows(base, rows, stride_row, offs_d, row_ok, d_ok, ROW_MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """Load [len(rows), BLOCK_D] from base + rows * stride_row + d, zero where masked."""
    ptrs = base + rows[:, None] * stride_row + offs_d[None, :]
    if ROW_MASK:
        if EVEN_D:
            tile = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            tile = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return tile

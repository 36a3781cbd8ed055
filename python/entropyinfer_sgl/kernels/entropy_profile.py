"""Fused prefill profiling (Triton): block scores -> block-causal softmax -> attention entropy, per kv head.

One launch per layer, one program per (segment, kv head). Each program scores the segment's representative
against every visible key block (max(m . kmax, m . kmin), no 1/sqrt(d), mean over the kv group), twice: a first
pass for the softmax maximum and normaliser, a second that writes the block distribution p in the input dtype
and sums the entropy of the rounded p. Nothing of size [Hq, nseg, num_blocks] is ever materialised: the only
large output is p itself, [Hkv, nseg, num_blocks] in the input dtype (64 MiB at 128k tokens, 8 kv heads, bf16),
which top-k selection consumes.

Differences from `profile.block_scores` (the float32 oracle): the representative is m = (qmax + qmin) / 2 in
float32 (the prototype averages the two dot products; equal up to rounding), and products accumulate in float32
(the prototype rounds them to the model dtype). Segment 0 sees no block and gets the uniform distribution, as
the prototype's mask gives it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..config import EntropyInferConfig
from ..profile import block_representatives, segment_representatives
from ..validation import check_attention_inputs, require


@triton.jit
def _block_entropy_kernel(
    m_ptr, kmax_ptr, kmin_ptr, p_ptr, entropy_ptr,
    num_blocks, blocks_per_segment,
    stride_ms, stride_mh,
    stride_kb, stride_kh,
    stride_ph, stride_ps,
    stride_eh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_J: tl.constexpr,
    IEEE_DOT: tl.constexpr,
):
    segment = tl.program_id(0)
    kv_head = tl.program_id(1)
    rows = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < GROUP
    m = tl.load(m_ptr + segment * stride_ms + (kv_head * GROUP + rows)[:, None] * stride_mh + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    m = m.to(kmax_ptr.dtype.element_ty)
    visible = segment * blocks_per_segment
    k_base = kv_head * stride_kh + dims[None, :]

    # Pass 1: softmax maximum and normaliser over the visible blocks.
    running_max = -float("inf")
    running_sum = 0.0
    for start in range(0, visible, BLOCK_J):
        blocks = start + tl.arange(0, BLOCK_J)
        ok = blocks < visible
        score = _group_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, ok, stride_kb, row_ok, GROUP, IEEE_DOT)
        new_max = tl.maximum(running_max, tl.max(score, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(score - new_max), axis=0)
        running_max = new_max

    # Pass 2: write p (rounded to the output dtype) and sum the entropy of the rounded values.
    entropy = 0.0
    uniform = 1.0 / num_blocks
    for start in range(0, num_blocks, BLOCK_J):
        blocks = start + tl.arange(0, BLOCK_J)
        in_range = blocks < num_blocks
        ok = blocks < visible
        if visible > 0:
            score = _group_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, ok, stride_kb, row_ok, GROUP, IEEE_DOT)
            p = tl.where(ok, tl.exp(score - running_max) / running_sum, 0.0)
        else:
            p = tl.where(in_range, uniform, 0.0)
        p_out = p.to(p_ptr.dtype.element_ty)
        tl.store(p_ptr + kv_head * stride_ph + segment * stride_ps + blocks, p_out, mask=in_range)
        p_rounded = p_out.to(tl.float32)
        entropy -= tl.sum(tl.where(in_range, p_rounded * tl.log(p_rounded + 1e-9), 0.0), axis=0)
    tl.store(entropy_ptr + kv_head * stride_eh + segment, entropy)


@triton.jit
def _group_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, ok, stride_kb, row_ok, GROUP: tl.constexpr,
                  IEEE_DOT: tl.constexpr):
    """max(m . kmax, m . kmin) averaged over the kv group's query heads: [BLOCK_J] float32 (-inf where not ok)."""
    offsets = blocks[:, None] * stride_kb + k_base
    k_max = tl.load(kmax_ptr + offsets, mask=ok[:, None], other=0.0)
    k_min = tl.load(kmin_ptr + offsets, mask=ok[:, None], other=0.0)
    if IEEE_DOT:
        s_max = tl.dot(m, tl.trans(k_max), input_precision="ieee")
        s_min = tl.dot(m, tl.trans(k_min), input_precision="ieee")
    else:
        s_max = tl.dot(m, tl.trans(k_max))
        s_min = tl.dot(m, tl.trans(k_min))
    score = tl.sum(tl.where(row_ok[:, None], tl.maximum(s_max, s_min), 0.0), axis=0) / GROUP
    return tl.where(ok, score, -float("inf"))


def block_scores_and_entropy(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, *,
                             block_j: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused profiling of one layer of one sequence.

    q: [L, Hq, D], k: [L, Hkv, D] (CUDA, or CPU under TRITON_INTERPRET=1). Returns the block distribution
    p [Hkv, nseg, num_blocks] in q's dtype and the entropy float32 [Hkv, nseg].
    """
    seq_len, num_q_heads, num_kv_heads, head_dim = check_attention_inputs(q, k)
    require(seq_len > config.segment_size_tokens,
            f"profiling needs more than one segment: seq_len={seq_len} <= {config.segment_size_tokens}")
    require(head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim={head_dim} must be a power of two >= 16")
    segment, block = config.segment_size_tokens, config.block_size_tokens
    num_segments = -(-seq_len // segment)
    blocks_per_segment = segment // block
    num_blocks = (num_segments - 1) * blocks_per_segment
    group = num_q_heads // num_kv_heads

    q_max, q_min = segment_representatives(q, segment)
    m = ((q_max.float() + q_min.float()) * 0.5).contiguous()  # [nseg, Hq, D]
    k_max, k_min = (t.contiguous() for t in block_representatives(k, num_blocks, block))  # [NB, Hkv, D]
    p = torch.empty(num_kv_heads, num_segments, num_blocks, dtype=q.dtype, device=q.device)
    entropy = torch.empty(num_kv_heads, num_segments, dtype=torch.float32, device=q.device)
    _block_entropy_kernel[(num_segments, num_kv_heads)](
        m, k_max, k_min, p, entropy,
        num_blocks, blocks_per_segment,
        m.stride(0), m.stride(1),
        k_max.stride(0), k_max.stride(1),
        p.stride(0), p.stride(1),
        entropy.stride(0),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_J=block_j,
        IEEE_DOT=q.dtype == torch.float32,
    )
    return p, entropy

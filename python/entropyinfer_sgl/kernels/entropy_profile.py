"""Fused prefill profiling (Triton): block scores -> block-causal softmax -> attention entropy, per kv head.

One launch per layer; a program takes several consecutive segments of one kv head (rows = segment x query head
of the group, 64 rows by default), so every key-block tile it loads serves all of them. It scores each segment's
representative against every visible key block (max(m . kmax, m . kmin), no 1/sqrt(d), mean over the kv group)
twice: a first pass for the softmax maximum and normaliser, a second that writes the block distribution p in the
dtype of `profile.block_score_dtype` (bf16 for bf16 inputs, float32 otherwise) and sums the entropy of the rounded p.
Nothing of size [Hq, nseg, num_blocks] is ever materialised: the only large output is p itself,
[Hkv, nseg, num_blocks] (64 MiB at 128k tokens, 8 kv heads, bf16), which top-k selection consumes.

Differences from `profile.block_scores` (the float32 oracle): the representative is m = (qmax + qmin) / 2 in
float32 (the prototype averages the two dot products; equal up to rounding), and products accumulate in float32
(the prototype rounds them to the model dtype). Segment 0 sees no block and gets the uniform distribution, as
the prototype's mask gives it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.config import EntropyInferConfig
from ..core.profile import block_representatives, block_score_dtype, segment_representatives
from ..core.validation import check_attention_inputs, require


# Lengths and offsets are not specialized on (Triton's default: == 1 and % 16): a server sees every value, and
# each new specialization is a compile of seconds that stalls the scheduler mid-request.
@triton.jit(do_not_specialize=["num_segments", "num_blocks"])
def _block_entropy_kernel(
    m_ptr, kmax_ptr, kmin_ptr, p_ptr, entropy_ptr,
    num_segments, num_blocks, blocks_per_segment,
    stride_ms, stride_mh,
    stride_kb, stride_kh,
    stride_ph, stride_ps,
    stride_eh,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, SEGMENTS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_J: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    """One program: SEGMENTS consecutive segments x one kv head; rows = (segment, query head of the group)."""
    first = tl.program_id(0) * SEGMENTS
    kv_head = tl.program_id(1)
    ROWS: tl.constexpr = SEGMENTS * GROUP_P2
    rows = tl.arange(0, ROWS)
    row_segment = first + rows // GROUP_P2
    row_head = rows % GROUP_P2
    row_ok = (row_head < GROUP) & (row_segment < num_segments)
    dims = tl.arange(0, HEAD_DIM)
    m = tl.load(m_ptr + row_segment[:, None] * stride_ms + (kv_head * GROUP + row_head)[:, None] * stride_mh
                + dims[None, :], mask=row_ok[:, None], other=0.0)
    if not IEEE_DOT:  # 16-bit products on the tensor cores; else float32 (`float32_block_scores`, float32 inputs)
        m = m.to(kmax_ptr.dtype.element_ty)
    segments = first + tl.arange(0, SEGMENTS)
    segment_ok = segments < num_segments
    visible = tl.where(segment_ok, segments * blocks_per_segment, 0)  # [SEGMENTS]
    last_visible = tl.max(visible, axis=0)
    k_base = kv_head * stride_kh + dims[None, :]

    # Pass 1: per segment, softmax maximum and normaliser over its visible blocks (one k tile serves all rows).
    running_max = tl.full([SEGMENTS], -float("inf"), tl.float32)
    running_sum = tl.zeros([SEGMENTS], tl.float32)
    for start in range(0, last_visible, BLOCK_J):
        blocks = start + tl.arange(0, BLOCK_J)
        score = _segment_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, visible, stride_kb, row_ok,
                                GROUP, SEGMENTS, GROUP_P2, BLOCK_J, IEEE_DOT)
        new_max = tl.maximum(running_max, tl.max(score, axis=1))
        safe_max = tl.where(new_max == -float("inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.sum(tl.exp(score - safe_max[:, None]), 1)
        running_max = new_max

    # Pass 2: write p (rounded to the output dtype) and sum the entropy of the rounded values.
    entropy = tl.zeros([SEGMENTS], tl.float32)
    uniform = 1.0 / num_blocks
    out_rows = kv_head * stride_ph + segments[:, None] * stride_ps
    for start in range(0, num_blocks, BLOCK_J):
        blocks = start + tl.arange(0, BLOCK_J)
        in_range = segment_ok[:, None] & (blocks < num_blocks)[None, :]
        if start < last_visible:
            score = _segment_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, visible, stride_kb, row_ok,
                                    GROUP, SEGMENTS, GROUP_P2, BLOCK_J, IEEE_DOT)
            seen = blocks[None, :] < visible[:, None]
            shift = tl.where(running_max == -float("inf"), 0.0, running_max)
            p = tl.where(seen, tl.exp(score - shift[:, None]) / tl.maximum(running_sum, 1e-30)[:, None], 0.0)
        else:
            p = tl.zeros([SEGMENTS, BLOCK_J], tl.float32)
        p = tl.where((visible == 0)[:, None], uniform, p)  # segment 0 sees nothing: the prototype's uniform row
        p_out = p.to(p_ptr.dtype.element_ty)
        tl.store(p_ptr + out_rows + blocks[None, :], p_out, mask=in_range)
        p_rounded = p_out.to(tl.float32)
        entropy -= tl.sum(tl.where(in_range, p_rounded * tl.log(p_rounded + 1e-9), 0.0), axis=1)
    tl.store(entropy_ptr + kv_head * stride_eh + segments, entropy, mask=segment_ok)


@triton.jit
def _segment_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, visible, stride_kb, row_ok, GROUP: tl.constexpr,
                    SEGMENTS: tl.constexpr, GROUP_P2: tl.constexpr, BLOCK_J: tl.constexpr, IEEE_DOT: tl.constexpr):
    """max(m . kmax, m . kmin) averaged over each segment's query heads: [SEGMENTS, BLOCK_J] float32, -inf where
    the block is not visible to the segment."""
    loadable = blocks < tl.max(visible, axis=0)
    offsets = blocks[:, None] * stride_kb + k_base
    k_max = tl.load(kmax_ptr + offsets, mask=loadable[:, None], other=0.0)
    k_min = tl.load(kmin_ptr + offsets, mask=loadable[:, None], other=0.0)
    if IEEE_DOT:
        s_max = tl.dot(m, tl.trans(k_max.to(tl.float32)), input_precision="ieee")
        s_min = tl.dot(m, tl.trans(k_min.to(tl.float32)), input_precision="ieee")
    else:
        s_max = tl.dot(m, tl.trans(k_max))
        s_min = tl.dot(m, tl.trans(k_min))
    per_row = tl.where(row_ok[:, None], tl.maximum(s_max, s_min), 0.0)  # [SEGMENTS * GROUP_P2, BLOCK_J]
    score = tl.sum(tl.reshape(per_row, [SEGMENTS, GROUP_P2, BLOCK_J]), axis=1) / GROUP
    return tl.where(blocks[None, :] < visible[:, None], score, -float("inf"))


def block_scores_and_entropy(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, *,
                             block_j: int = 64, rows_per_program: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused profiling of one layer of one sequence.

    q: [L, Hq, D], k: [L, Hkv, D] (CUDA, or CPU under TRITON_INTERPRET=1); token rows may be strided (head
    slices of a fused QKV projection): only the representatives are read by the kernel. Returns the block distribution
    p [Hkv, nseg, num_blocks] in `profile.block_score_dtype` (float16 inputs: float32 p from their tensor-core
    products; `config.float32_block_scores`: float32 products too, not 16-bit tensor-core ones) and the entropy
    float32 [Hkv, nseg].
    """
    seq_len, num_q_heads, num_kv_heads, head_dim = check_attention_inputs(q, k, token_stride_ok=True)
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
    ieee_dot = q.dtype == torch.float32 or config.float32_block_scores
    p = torch.empty(num_kv_heads, num_segments, num_blocks, dtype=block_score_dtype(q.dtype, config), device=q.device)
    entropy = torch.empty(num_kv_heads, num_segments, dtype=torch.float32, device=q.device)
    group_p2 = triton.next_power_of_2(group)
    segments = max(1, rows_per_program // group_p2)  # rows = segments x padded group: one k tile serves them all
    _block_entropy_kernel[(triton.cdiv(num_segments, segments), num_kv_heads)](
        m, k_max, k_min, p, entropy,
        num_segments, num_blocks, blocks_per_segment,
        m.stride(0), m.stride(1),
        k_max.stride(0), k_max.stride(1),
        p.stride(0), p.stride(1),
        entropy.stride(0),
        GROUP=group, GROUP_P2=group_p2, SEGMENTS=segments, HEAD_DIM=head_dim, BLOCK_J=block_j,
        IEEE_DOT=ieee_dot,
    )
    return p, entropy

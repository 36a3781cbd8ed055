"""Fused prefill profiling (Triton): block scores -> block-causal softmax -> attention entropy, per kv head.

Two launches per layer over the same programs; a program takes several consecutive segments of one kv head (rows =
segment x query head of the group, 64 rows by default), so every key-block tile it loads serves all of them, and one
split of the key blocks (`split_size_blocks`: a long prompt's last segments see every block, and one program per
segment group would be one long serial loop). Each scores its segments' representatives against the visible key
blocks of its split (max(m . kmax, m . kmin), no 1/sqrt(d), mean over the kv group): the first launch writes each
split's softmax maximum and normaliser; the second merges them, writes the block distribution p in the dtype of
`profile.block_score_dtype` (bf16 for bf16 inputs, float32 otherwise) and each split's entropy of the rounded p,
which are summed over splits in a fixed order. Nothing of size [Hq, nseg, num_blocks] is ever materialised: the
only large output is p itself, [Hkv, nseg, num_blocks] (64 MiB at 128k tokens, 8 kv heads, bf16), which top-k
selection consumes.

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
@triton.jit(do_not_specialize=["num_segments", "num_blocks", "num_splits"])
def _softmax_partials_kernel(
    m_ptr, kmax_ptr, kmin_ptr, max_ptr, sum_ptr,
    num_segments, num_blocks, blocks_per_segment, num_splits, split_blocks,
    stride_ms, stride_mh,
    stride_kb, stride_kh,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, SEGMENTS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_J: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    """Pass 1. One program: SEGMENTS consecutive segments x one kv head x one split of the key blocks; writes each
    segment's softmax maximum and normaliser over the visible blocks of its split ([Hkv, nseg, splits])."""
    m, segments, segment_ok, visible, k_base, row_ok = _program_rows(
        m_ptr, num_segments, blocks_per_segment, stride_ms, stride_mh, stride_kh, kmax_ptr,
        GROUP, GROUP_P2, SEGMENTS, HEAD_DIM, IEEE_DOT)
    split = tl.program_id(2)
    start_block = split * split_blocks
    end_block = tl.minimum(start_block + split_blocks, tl.max(visible, axis=0))
    running_max = tl.full([SEGMENTS], -float("inf"), tl.float32)
    running_sum = tl.zeros([SEGMENTS], tl.float32)
    for start in range(start_block, end_block, BLOCK_J):
        blocks = start + tl.arange(0, BLOCK_J)
        score = _segment_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, visible, stride_kb, row_ok,
                                GROUP, SEGMENTS, GROUP_P2, BLOCK_J, IEEE_DOT)
        new_max = tl.maximum(running_max, tl.max(score, axis=1))
        safe_max = tl.where(new_max == -float("inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + tl.sum(tl.exp(score - safe_max[:, None]), 1)
        running_max = new_max
    out = (tl.program_id(1) * num_segments + segments) * num_splits + split
    tl.store(max_ptr + out, running_max, mask=segment_ok)
    tl.store(sum_ptr + out, running_sum, mask=segment_ok)


@triton.jit(do_not_specialize=["num_segments", "num_blocks", "num_splits"])
def _block_entropy_kernel(
    m_ptr, kmax_ptr, kmin_ptr, max_ptr, sum_ptr, p_ptr, entropy_ptr,
    num_segments, num_blocks, blocks_per_segment, num_splits, split_blocks,
    stride_ms, stride_mh,
    stride_kb, stride_kh,
    stride_ph, stride_ps,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, SEGMENTS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_J: tl.constexpr, IEEE_DOT: tl.constexpr,
):
    """Pass 2. Same programs as pass 1: merges every split's maximum and normaliser, then writes p (rounded to the
    output dtype) over its split's blocks and the entropy of those rounded values ([Hkv, nseg, splits], summed over
    splits by the caller: a fixed order, so the entropies do not depend on scheduling)."""
    m, segments, segment_ok, visible, k_base, row_ok = _program_rows(
        m_ptr, num_segments, blocks_per_segment, stride_ms, stride_mh, stride_kh, kmax_ptr,
        GROUP, GROUP_P2, SEGMENTS, HEAD_DIM, IEEE_DOT)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    rows_out = (kv_head * num_segments + segments) * num_splits
    running_max = tl.full([SEGMENTS], -float("inf"), tl.float32)
    running_sum = tl.zeros([SEGMENTS], tl.float32)
    for other in range(0, num_splits):
        part_max = tl.load(max_ptr + rows_out + other, mask=segment_ok, other=-float("inf"))
        part_sum = tl.load(sum_ptr + rows_out + other, mask=segment_ok, other=0.0)
        new_max = tl.maximum(running_max, part_max)
        safe_max = tl.where(new_max == -float("inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - safe_max) + part_sum * tl.exp(part_max - safe_max)
        running_max = new_max

    last_visible = tl.max(visible, axis=0)
    entropy = tl.zeros([SEGMENTS], tl.float32)
    out_rows = kv_head * stride_ph + segments[:, None] * stride_ps
    shift = tl.where(running_max == -float("inf"), 0.0, running_max)
    start_block = split * split_blocks
    end_block = tl.minimum(start_block + split_blocks, num_blocks)
    # Two loops, not one with a branch on visibility: Triton pipelines only loads outside conditionals, and the
    # first loop's key tiles are all its loads.
    for start in range(start_block, tl.minimum(end_block, last_visible), BLOCK_J):  # tiles some segment sees
        blocks = start + tl.arange(0, BLOCK_J)
        score = _segment_scores(m, kmax_ptr, kmin_ptr, k_base, blocks, visible, stride_kb, row_ok,
                                GROUP, SEGMENTS, GROUP_P2, BLOCK_J, IEEE_DOT)
        seen = blocks[None, :] < visible[:, None]
        p = tl.where(seen, tl.exp(score - shift[:, None]) / tl.maximum(running_sum, 1e-30)[:, None], 0.0)
        entropy += _store_p(p, p_ptr, out_rows, blocks, visible, segment_ok, num_blocks)
    past = tl.maximum(last_visible - start_block, 0)
    for start in range(start_block + (past + BLOCK_J - 1) // BLOCK_J * BLOCK_J, end_block, BLOCK_J):  # unseen
        blocks = start + tl.arange(0, BLOCK_J)
        entropy += _store_p(tl.zeros([SEGMENTS, BLOCK_J], tl.float32), p_ptr, out_rows, blocks, visible, segment_ok,
                            num_blocks)
    tl.store(entropy_ptr + rows_out + split, entropy, mask=segment_ok)


@triton.jit
def _store_p(p, p_ptr, out_rows, blocks, visible, segment_ok, num_blocks):
    """Store one tile of p rounded to the output dtype (segment 0, which sees no block, gets the prototype's uniform
    row) and return each segment's entropy of the rounded values over the tile: float32 [SEGMENTS]."""
    p = tl.where((visible == 0)[:, None], 1.0 / num_blocks, p)
    in_range = segment_ok[:, None] & (blocks < num_blocks)[None, :]
    p_out = p.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + out_rows + blocks[None, :], p_out, mask=in_range)
    p_rounded = p_out.to(tl.float32)
    return -tl.sum(tl.where(in_range, p_rounded * tl.log(p_rounded + 1e-9), 0.0), axis=1)


@triton.jit
def _program_rows(m_ptr, num_segments, blocks_per_segment, stride_ms, stride_mh, stride_kh, kmax_ptr,
                  GROUP: tl.constexpr, GROUP_P2: tl.constexpr, SEGMENTS: tl.constexpr, HEAD_DIM: tl.constexpr,
                  IEEE_DOT: tl.constexpr):
    """A program's rows (segment, query head of the group): their representatives m, the segments, which exist,
    how many blocks each sees, the kv head's offsets into the key representatives, and which rows are real."""
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
    k_base = kv_head * stride_kh + dims[None, :]
    return m, segments, segment_ok, visible, k_base, row_ok


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


# Key-block splits: the segments of a long prompt see up to all of its blocks, so without splitting the programs of
# its last segments are one long serial loop each (at 128k one wave of 128 programs, 2.1 ms a layer on an H200).
MAX_SPLITS = 16
MIN_SPLIT_BLOCKS = 256  # a split's work must outweigh its program's setup (representatives, the merge)


def split_size_blocks(num_blocks: int, block_j: int) -> int:
    """Key blocks per split: at most MAX_SPLITS splits of at least MIN_SPLIT_BLOCKS blocks, a multiple of block_j."""
    wanted = max(MIN_SPLIT_BLOCKS, -(-num_blocks // MAX_SPLITS))
    return -(-wanted // block_j) * block_j


def block_scores_and_entropy(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, *,
                             block_j: int = 64, rows_per_program: int = 64,
                             split_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused profiling of one layer of one sequence.

    q: [L, Hq, D], k: [L, Hkv, D] (CUDA, or CPU under TRITON_INTERPRET=1); token rows may be strided (head
    slices of a fused QKV projection): only the representatives are read by the kernel. Returns the block distribution
    p [Hkv, nseg, num_blocks] in `profile.block_score_dtype` (float16 inputs: float32 p from their tensor-core
    products; `config.float32_block_scores`: float32 products too, not 16-bit tensor-core ones) and the entropy
    float32 [Hkv, nseg].
    split_blocks: key blocks per program (a multiple of block_j); default `split_size_blocks`.
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
    if split_blocks is None:
        split_blocks = split_size_blocks(num_blocks, block_j)
    require(isinstance(split_blocks, int) and split_blocks > 0 and split_blocks % block_j == 0,
            f"split_blocks={split_blocks!r} must be a positive multiple of block_j={block_j}")
    num_splits = -(-num_blocks // split_blocks)

    q_max, q_min = segment_representatives(q, segment)
    m = ((q_max.float() + q_min.float()) * 0.5).contiguous()  # [nseg, Hq, D]
    k_max, k_min = (t.contiguous() for t in block_representatives(k, num_blocks, block))  # [NB, Hkv, D]
    ieee_dot = q.dtype == torch.float32 or config.float32_block_scores
    p = torch.empty(num_kv_heads, num_segments, num_blocks, dtype=block_score_dtype(q.dtype, config), device=q.device)
    partial_max, partial_sum, partial_entropy = torch.empty(3, num_kv_heads, num_segments, num_splits,
                                                            dtype=torch.float32, device=q.device)
    group_p2 = triton.next_power_of_2(group)
    segments = max(1, rows_per_program // group_p2)  # rows = segments x padded group: one k tile serves them all
    grid = (triton.cdiv(num_segments, segments), num_kv_heads, num_splits)
    sizes = (num_segments, num_blocks, blocks_per_segment, num_splits, split_blocks,
             m.stride(0), m.stride(1), k_max.stride(0), k_max.stride(1))
    shape = dict(GROUP=group, GROUP_P2=group_p2, SEGMENTS=segments, HEAD_DIM=head_dim, BLOCK_J=block_j,
                 IEEE_DOT=ieee_dot)
    _softmax_partials_kernel[grid](m, k_max, k_min, partial_max, partial_sum, *sizes, **shape)
    _block_entropy_kernel[grid](m, k_max, k_min, partial_max, partial_sum, p, partial_entropy, *sizes,
                                p.stride(0), p.stride(1), **shape)
    return p, partial_entropy.sum(dim=-1)

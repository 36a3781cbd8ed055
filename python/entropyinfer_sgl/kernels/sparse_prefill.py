"""Block-sparse causal prefill (EntropyInfer), one Triton launch per layer.

Queries are cut into tiles of `block_m` tokens inside one segment (so `block_m` divides `segment_size_tokens`);
program (q head h, tile t) reads its kv head's CSR row `h_kv * nseg + s` of the `PrefillPlan`:

1. the row's earlier blocks (every entry but the segment's own blocks, which close the row by the planner
   contract, docs/planner_spec.md §3) are gathered several at a time, `indices[j] * b + arange(b)`, so that the
   `tl.dot` tiles are at least 16 keys wide; no causal mask is needed there;
2. the segment's own keys before the tile are contiguous and fully visible;
3. the diagonal keys (the tile's own tokens) get the causal mask `key <= query`.

Scores accumulate in float32 with an online softmax; the output is in q's dtype and the LSE (natural log) in
float32, so partial results can be merged with other attention over disjoint keys.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import triton
import triton.language as tl

from ..core.plan import PrefillPlan
from ..core.transfer import host_to_device
from ._common import (
    LaunchConfig,
    check_dtype,
    check_kernel_device,
    dot_precision,
    interpret_mode,
    largest_power_of_two_divisor,
    needs_int64,
    next_power_of_two,
)
from ._online_softmax import LN2, LOG2E, attend_tile, load_rows


# Lengths and offsets are not specialized on (Triton's default: == 1 and % 16): a server sees every value, and
# each new specialization is a compile of seconds that stalls the scheduler mid-request.
@triton.jit(do_not_specialize=["seq_len", "num_segments", "num_tiles", "q_offset"])
def _sparse_prefill_kernel(
    Q, K, V, Out, Lse,
    Indptr, Indices,
    TileSeq, TileStart, CuSeqlens, RowBase,  # varlen tables (read only when VARLEN)
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lt, stride_lh,
    seq_len, num_segments, num_tiles, q_offset, qk_scale,
    GROUP: tl.constexpr, SEGMENT: tl.constexpr, BLOCK_TOKENS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_ROWS: tl.constexpr,
    VARLEN: tl.constexpr, INT64: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # HEAD_ROWS == 1: a program is (q head, BLOCK_M query tokens). HEAD_ROWS > 1 (packed GQA, the next power of two
    # of GROUP): a program is (kv head, BLOCK_M // HEAD_ROWS tokens) and its rows are (token, q head of the group),
    # so each K/V tile it loads serves the whole group (lanes of heads past GROUP are padding, never stored).
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    TILE_TOKENS: tl.constexpr = BLOCK_M // HEAD_ROWS
    HEADS: tl.constexpr = GROUP if HEAD_ROWS > 1 else 1
    program_head = tl.program_id(0)  # fastest-varying: programs of one kv head run together and share K/V in L2
    tile = tl.program_id(1)
    if VARLEN:
        seq = tl.load(TileSeq + tile)
        m0 = tl.load(TileStart + tile)
        tok0 = tl.load(CuSeqlens + seq)
        length = tl.load(CuSeqlens + seq + 1) - tok0
        nseg = (length + SEGMENT - 1) // SEGMENT
        row_base = tl.load(RowBase + seq)
    else:  # queries of positions q_offset .. seq_len - 1 (q row i is position q_offset + i)
        m0 = (q_offset // TILE_TOKENS + num_tiles - 1 - tile) * TILE_TOKENS  # last tiles (most keys) first
        tok0 = tile * 0
        length = seq_len
        nseg = num_segments
        row_base = 0

    if HEAD_ROWS > 1:
        kv_head = program_head
        head0 = program_head * GROUP
    else:
        kv_head = program_head // GROUP
        head0 = program_head
    seg = m0 // SEGMENT
    seg_start = seg * SEGMENT
    row = row_base + kv_head * nseg + seg
    row_begin = tl.load(Indptr + row)
    row_end = tl.load(Indptr + row + 1)
    seg_end = tl.minimum(seg_start + SEGMENT, length)
    own_blocks = (seg_end + BLOCK_TOKENS - 1) // BLOCK_TOKENS - seg_start // BLOCK_TOKENS
    n_earlier = row_end - row_begin - own_blocks

    # Scalar 64-bit bases; per-element offsets stay 32-bit (relative to the sequence, or to the key tile).
    tok0_64 = tok0.to(tl.int64)
    m0_64 = m0.to(tl.int64)
    seq_start_64 = seg_start.to(tl.int64)
    k_seq = K + tok0_64 * stride_kt + kv_head * stride_kh
    v_seq = V + tok0_64 * stride_vt + kv_head * stride_vh

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_token = offs_m // HEAD_ROWS  # row -> (token of the tile, q head of the group)
    row_head = offs_m % HEAD_ROWS
    query = m0 + row_token  # positions in the sequence
    # a first tile may start before q_offset (a chunk's prefix)
    row_ok = (query >= q_offset) & (query < length) & (row_head < HEADS)
    d_ok = offs_d < HEAD_DIM
    q_row0_64 = tok0_64 + m0_64 - q_offset  # q/out/lse row of position m0 (negative rows are masked off)
    q_rows = row_token * stride_qt + row_head * stride_qh  # element offsets from (position m0, head head0)
    q = load_rows(Q + q_row0_64 * stride_qt + head0 * stride_qh, q_rows, 1, offs_d, row_ok, d_ok, True, EVEN_D)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # 1) earlier blocks listed by the plan, BLOCKS_PER_STEP per step (gathered; all keys precede the segment).
    # Whole steps run without masks (the score mask alone costs a select per score); one masked step takes the
    # remainder.
    BLOCKS_PER_STEP: tl.constexpr = BLOCK_G // BLOCK_TOKENS
    FULL_LANES: tl.constexpr = BLOCKS_PER_STEP * BLOCK_TOKENS == BLOCK_G
    offs_g = tl.arange(0, BLOCK_G)
    lane_block = offs_g // BLOCK_TOKENS
    lane_token = offs_g % BLOCK_TOKENS
    lane_ok = offs_g < BLOCKS_PER_STEP * BLOCK_TOKENS
    whole_steps = n_earlier // BLOCKS_PER_STEP if FULL_LANES else 0
    indices_row = Indices + row_begin + lane_block
    for j in range(0, whole_steps):
        block = tl.load(indices_row + j * BLOCKS_PER_STEP)
        key = block * BLOCK_TOKENS + lane_token
        if INT64:
            key = key.to(tl.int64)
        k = load_rows(k_seq, key, stride_kt, offs_d, lane_ok, d_ok, False, EVEN_D)
        v = load_rows(v_seq, key, stride_vt, offs_d, lane_ok, d_ok, False, EVEN_D)
        acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k, v, None, qk_scale, False, DOT_PRECISION)
    for j in range(whole_steps * BLOCKS_PER_STEP, n_earlier, BLOCKS_PER_STEP):
        entry = j + lane_block
        ok = lane_ok & (entry < n_earlier)
        block = tl.load(Indices + row_begin + entry, mask=ok, other=0)
        key = block * BLOCK_TOKENS + lane_token
        if INT64:
            key = key.to(tl.int64)
        k = load_rows(k_seq, key, stride_kt, offs_d, ok, d_ok, True, EVEN_D)
        v = load_rows(v_seq, key, stride_vt, offs_d, ok, d_ok, True, EVEN_D)
        acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k, v, ok[None, :], qk_scale, True, DOT_PRECISION)

    # 2) the segment's own keys before this tile: contiguous and visible to every query of the tile
    offs_n = tl.arange(0, BLOCK_N)
    full_steps = (m0 - seg_start) // BLOCK_N
    for i in range(0, full_steps):
        start_64 = seq_start_64 + i * BLOCK_N
        k = load_rows(k_seq + start_64 * stride_kt, offs_n, stride_kt, offs_d, offs_n, d_ok, False, EVEN_D)
        v = load_rows(v_seq + start_64 * stride_vt, offs_n, stride_vt, offs_d, offs_n, d_ok, False, EVEN_D)
        acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k, v, None, qk_scale, False, DOT_PRECISION)

    # 3) the diagonal: the tile's own tokens (from the first key phase 2 left, which a packed tile narrower than
    # BLOCK_N may start before), causal
    diag_start = seg_start + full_steps * BLOCK_N
    for i in range(0, (tl.minimum(m0 + TILE_TOKENS, length) - diag_start + BLOCK_N - 1) // BLOCK_N):
        key = diag_start + i * BLOCK_N + offs_n
        key_ok = key < length
        start_64 = diag_start.to(tl.int64) + i * BLOCK_N
        k = load_rows(k_seq + start_64 * stride_kt, offs_n, stride_kt, offs_d, key_ok, d_ok, True, EVEN_D)
        v = load_rows(v_seq + start_64 * stride_vt, offs_n, stride_vt, offs_d, key_ok, d_ok, True, EVEN_D)
        valid = (key[None, :] <= query[:, None]) & key_ok[None, :]
        acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k, v, valid, qk_scale, True, DOT_PRECISION)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # every query sees itself: l_i > 0 on rows < length
    out = acc / l_safe[:, None]
    lse = (m_i + tl.log2(l_safe)) * LN2
    o_rows = row_token * stride_ot + row_head * stride_oh
    o_ptrs = Out + q_row0_64 * stride_ot + head0 * stride_oh + o_rows[:, None] + offs_d[None, :]
    if EVEN_D:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse_rows = row_token * stride_lt + row_head * stride_lh
    tl.store(Lse + q_row0_64 * stride_lt + head0 * stride_lh + lse_rows, lse, mask=row_ok)


_KERNELS = (_sparse_prefill_kernel, load_rows, attend_tile)


# ---------------------------------------------------------------------------------------------------------
def prefill_launch_config(segment_size_tokens: int, block_size_tokens: int, head_dim: int,
                          dtype: torch.dtype, group_size: int = 1) -> LaunchConfig:
    """The deterministic launch heuristic (no autotuning on the call path); group_size = Hq / Hkv.

    16-bit inputs on the GPU (measured on an H200, bf16, Hq 32 / Hkv 8, see kernels/README.md):
    head_dim <= 64: 128 queries x 64 keys, 8 warps, 3 stages; head_dim 128 with GQA (group_size >= 2): packed GQA,
    256 rows (the group's q heads of 256 / G tokens, G the group size's next power of two) x 64 keys, 8 warps,
    3 stages (128k sweep: 396-436 TFLOP/s at densities 1 to 0.05, 1.06-1.15x the per-head launch); head_dim 128
    otherwise: 128 x 32, 4 warps, 3 stages;
    head_dim 256: 64 x 32, 8 warps, 1 stage. block_m is capped by the largest power of two dividing the segment.
    float32 inputs (IEEE products, no tensor cores: a testing path) use small tiles. Interpreter: mid-size tiles
    (fewer simulated programs).
    """
    block_m = largest_power_of_two_divisor(segment_size_tokens)
    block_d = max(16, next_power_of_two(head_dim))
    if interpret_mode():
        block_m = max(16, min(block_m, 64))
        return LaunchConfig(block_m=block_m, block_n=min(block_m, 32), num_warps=4, num_stages=1)
    if dtype == torch.float32:
        block_m, block_n, warps, stages = min(block_m, 32), 32 if block_d <= 64 else 16, 4, 2
    elif block_d <= 64:
        block_m, block_n, warps, stages = min(block_m, 128), 64, 8, 3
    elif block_d <= 128:
        packed_tokens = 256 // next_power_of_two(group_size)
        if group_size >= 2 and block_m >= packed_tokens:
            return LaunchConfig(block_m=256, block_n=64, num_warps=8, num_stages=3, pack_gqa=True)
        block_m, block_n, warps, stages = min(block_m, 128), 32, 4, 3
    else:
        block_m, block_n, warps, stages = min(block_m, 64), 32, 8, 1
    block_m = max(block_m, 16)
    return LaunchConfig(block_m=block_m, block_n=min(block_n, block_m), num_warps=warps, num_stages=stages)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int = 0) -> tuple[int, int, int, int]:
    """(key tokens, Hq, Hkv, D) of q [L - prefix_len, Hq, D] and k, v [L, Hkv, D]."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 3:
            raise ValueError(f"{name} must be [tokens, heads, head_dim], got shape {tuple(tensor.shape)}")
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got {tensor.stride()}")
        check_dtype(name, tensor)
    if not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"prefix_len must be a non-negative int, got {prefix_len!r}")
    tokens, num_q_heads, head_dim = q.shape
    tokens += prefix_len
    if k.shape != v.shape or k.shape[0] != tokens or k.shape[2] != head_dim:
        raise ValueError(f"k and v must be [{tokens}, num_kv_heads, {head_dim}], got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    num_kv_heads = k.shape[1]
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if head_dim < 1 or head_dim > 256:
        raise ValueError(f"head_dim={head_dim} is not supported (1..256)")
    return tokens, num_q_heads, num_kv_heads, head_dim


def _check_plan(plan: PrefillPlan, seq_len: int, num_kv_heads: int, device: torch.device) -> None:
    if plan.seq_len_tokens != seq_len:
        raise ValueError(f"plan is for {plan.seq_len_tokens} tokens, q has {seq_len}")
    if plan.num_kv_heads != num_kv_heads:
        raise ValueError(f"plan has {plan.num_kv_heads} kv heads, k has {num_kv_heads}")
    rows = plan.num_kv_heads * plan.num_segments
    if plan.indptr.shape != (rows + 1,):
        raise ValueError(f"plan.indptr must be [{rows + 1}] (num_kv_heads * num_segments + 1), "
                         f"got {tuple(plan.indptr.shape)}")
    for name in ("indptr", "indices"):
        tensor = getattr(plan, name)
        if tensor.dtype != torch.int32:
            raise ValueError(f"plan.{name} must be int32, got {tensor.dtype}")
        if tensor.device != device:
            raise ValueError(f"plan.{name} is on {tensor.device} but q is on {device} (call plan.to(device) once "
                             "per forward, not per layer)")
        if not tensor.is_contiguous():
            raise ValueError(f"plan.{name} must be contiguous")


def _check_geometry(segment: int, block_tokens: int, config: LaunchConfig, num_q_heads: int,
                    num_kv_heads: int) -> int:
    """The launch's query tokens per program, after checking that its tiles stay inside one segment."""
    if segment % 16:
        raise ValueError(f"segment_size_tokens={segment} must be a multiple of 16 (tl.dot needs >= 16-row "
                         "query tiles that stay inside one segment)")
    if block_tokens < 1 or segment % block_tokens:
        raise ValueError(f"block_size_tokens={block_tokens} must divide segment_size_tokens={segment}")
    tokens = tile_tokens(config, num_q_heads, num_kv_heads)
    if segment % tokens:
        raise ValueError(f"LaunchConfig.block_m={config.block_m} ({tokens} tokens per program) must divide "
                         f"segment_size_tokens={segment}")
    if not config.pack_gqa and config.block_m % config.block_n:
        raise ValueError(f"LaunchConfig.block_n={config.block_n} must divide block_m={config.block_m}")
    return tokens


def head_rows(config: LaunchConfig, num_q_heads: int, num_kv_heads: int) -> int:
    """Rows per query token of a program: 1, or the group size's next power of two with `pack_gqa`."""
    return next_power_of_two(num_q_heads // num_kv_heads) if config.pack_gqa else 1


def tile_tokens(config: LaunchConfig, num_q_heads: int, num_kv_heads: int) -> int:
    """Query tokens per program (a power of two that divides block_m, hence the segment)."""
    rows = head_rows(config, num_q_heads, num_kv_heads)
    if rows > config.block_m:
        raise ValueError(f"LaunchConfig.block_m={config.block_m} cannot hold one token of a packed group of "
                         f"{num_q_heads // num_kv_heads} heads ({rows} rows)")
    return config.block_m // rows


def _launch(q, k, v, out, lse, indptr, indices, tables, *, seq_len, num_segments, num_tiles, segment, block_tokens,
            scale, config: LaunchConfig, varlen: bool, q_offset: int = 0) -> None:
    _, num_q_heads, num_kv_heads, head_dim = q.shape[0], q.shape[1], k.shape[1], q.shape[2]
    block_d = max(16, next_power_of_two(head_dim))
    block_g = max(config.block_n, next_power_of_two(block_tokens))
    tile_seq, tile_start, cu_seqlens, row_base = tables
    rows = head_rows(config, num_q_heads, num_kv_heads)
    grid = (num_kv_heads if rows > 1 else num_q_heads, num_tiles)
    _sparse_prefill_kernel[grid](
        q, k, v, out, lse, indptr, indices, tile_seq, tile_start, cu_seqlens, row_base,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
        seq_len, num_segments, num_tiles, q_offset, scale * LOG2E,
        GROUP=num_q_heads // num_kv_heads, SEGMENT=segment, BLOCK_TOKENS=block_tokens,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_G=block_g,
        HEAD_ROWS=rows, VARLEN=varlen, INT64=needs_int64(k, v), DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def sparse_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan, *,
                   prefix_len: int = 0, scale: float | None = None, config: LaunchConfig | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal attention of one sequence, as the plan says (one launch, no host sync).

    Parameters
    ----------
    q: [L - prefix_len, Hq, D] the queries of positions prefix_len .. L - 1 (a chunked-prefill chunk after a
        cached prefix; prefix_len = 0: the whole sequence); k, v: [L, Hkv, D] every position's keys/values
        (post-RoPE), one dtype among float32/float16/bfloat16, last dim contiguous, on CUDA (or CPU under
        TRITON_INTERPRET=1). Query head h uses kv head h // (Hq / Hkv).
    plan: `PrefillPlan` of this layer, on q's device (int32 CSR; rows follow docs/planner_spec.md §3: the
        segment's own blocks close every row).
    scale: softmax scale, default 1/sqrt(D).
    config: launch override (tests, offline tuning); default `prefill_launch_config(...)`.

    Returns
    -------
    out [L - prefix_len, Hq, D] in q's dtype; lse float32 [L - prefix_len, Hq], natural log of the sum of
    exp(scale * q.k) over the keys each query sees. Match the rows prefix_len.. of
    `entropyinfer_sgl.core.reference.sparse_prefill_reference`.
    """
    seq_len, num_q_heads, num_kv_heads, head_dim = _check_qkv(q, k, v, prefix_len)
    device = check_kernel_device(q, k, v, kernels=_KERNELS)
    _check_plan(plan, seq_len, num_kv_heads, device)
    segment, block_tokens = plan.segment_size_tokens, plan.block_size_tokens
    config = config or prefill_launch_config(segment, block_tokens, head_dim, q.dtype,
                                             num_q_heads // num_kv_heads)
    tokens = _check_geometry(segment, block_tokens, config, num_q_heads, num_kv_heads)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(q.shape[0], num_q_heads, dtype=torch.float32, device=device)
    if q.shape[0] == 0:
        return out, lse
    num_tiles = -(-seq_len // tokens) - prefix_len // tokens
    dummy = plan.indptr  # never read when VARLEN is off
    _launch(q, k, v, out, lse, plan.indptr, plan.indices, (dummy, dummy, dummy, dummy), seq_len=seq_len,
            num_segments=plan.num_segments, num_tiles=num_tiles, segment=segment, block_tokens=block_tokens,
            scale=scale, config=config, varlen=False, q_offset=prefix_len)
    return out, lse


def sparse_prefill_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: Sequence[PrefillPlan], *,
                          scale: float | None = None, config: LaunchConfig | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal prefill of several sequences packed end to end, in one launch.

    q: [T, Hq, D]; k, v: [T, Hkv, D] with T = sum of the plans' `seq_len_tokens`; sequence i occupies tokens
    `cu_seqlens[i] .. cu_seqlens[i + 1]` in plan order (each sequence starts at its own position 0: no prefix).
    plans: one `PrefillPlan` per sequence, same kv heads, segment and block sizes, on q's device.
    Returns out [T, Hq, D] (q's dtype) and lse float32 [T, Hq], equal to `sparse_prefill` run per sequence.

    The CSRs are concatenated on the device (no sync: sizes are Python ints); a small tile table built on the host
    from the plans' lengths is copied to the device (heaviest tiles first).
    """
    if len(plans) == 0:
        raise ValueError("plans must hold at least one PrefillPlan")
    tokens, num_q_heads, num_kv_heads, head_dim = _check_qkv(q, k, v)
    device = check_kernel_device(q, k, v, kernels=_KERNELS)
    segment, block_tokens = plans[0].segment_size_tokens, plans[0].block_size_tokens
    for i, plan in enumerate(plans):
        if (plan.segment_size_tokens, plan.block_size_tokens) != (segment, block_tokens):
            raise ValueError(f"plans[{i}] has other segment/block sizes than plans[0]")
        _check_plan(plan, plan.seq_len_tokens, num_kv_heads, device)
    lengths = [plan.seq_len_tokens for plan in plans]
    if sum(lengths) != tokens:
        raise ValueError(f"the plans cover {sum(lengths)} tokens, q has {tokens}")
    config = config or prefill_launch_config(segment, block_tokens, head_dim, q.dtype,
                                             num_q_heads // num_kv_heads)
    step = _check_geometry(segment, block_tokens, config, num_q_heads, num_kv_heads)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(tokens, num_q_heads, dtype=torch.float32, device=device)
    if tokens == 0:
        return out, lse

    cu_seqlens, row_base, indptr_parts, tiles = [0], [], [], []
    nnz = rows = 0
    for i, plan in enumerate(plans):
        cu_seqlens.append(cu_seqlens[-1] + plan.seq_len_tokens)
        row_base.append(rows)
        rows += plan.num_kv_heads * plan.num_segments
        indptr_parts.append(plan.indptr[:-1] + nnz)
        nnz += plan.indices.numel()
        tiles.extend((m0, i) for m0 in range(0, plan.seq_len_tokens, step))
    tiles.sort(key=lambda t: -t[0])  # the latest tiles of every sequence see the most keys: schedule them first
    indptr = torch.cat(indptr_parts + [torch.full((1,), nnz, dtype=torch.int32, device=device)])
    indices = torch.cat([plan.indices for plan in plans])
    host = [i for _, i in tiles] + [m0 for m0, _ in tiles] + cu_seqlens + row_base
    meta = host_to_device(torch.tensor(host, dtype=torch.int32), device)
    n = len(tiles)
    tables = (meta[:n], meta[n:2 * n], meta[2 * n:2 * n + len(cu_seqlens)], meta[2 * n + len(cu_seqlens):])
    _launch(q, k, v, out, lse, indptr, indices, tables, seq_len=0, num_segments=0, num_tiles=n, segment=segment,
            block_tokens=block_tokens, scale=scale, config=config, varlen=True)
    return out, lse

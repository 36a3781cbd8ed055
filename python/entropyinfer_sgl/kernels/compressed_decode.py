"""Decode attention over a compressed cache: each kv head attends only to the cache slots it kept.

Split-K (flash-decoding): program (request b, kv head h, split s) walks the s-th of `num_splits` equal chunks of
what that head attends (sized in the kernel from the head's own length, so a compressed head's few entries and an
uncompressed row's whole length are both spread over every split) and writes a partial output and LSE for all the
q heads of the group (each kept K/V row is loaded once per group); a second kernel merges the splits. With one
split the first kernel writes the result directly.

The grid depends only on tensor shapes (B, Hkv, max_kept; `PoolRows`: + max_context) and never on `kept_lengths` values, so a launch can be
captured in a CUDA graph and replayed with new indices and lengths in the same buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    LaunchConfig,
    check_dtype,
    check_kernel_device,
    device_parallelism,
    dot_precision,
    interpret_mode,
    needs_int64,
    next_power_of_two,
)
from ._online_softmax import LN2, LOG2E, attend_tile, load_rows

MAX_SPLITS = 128


@dataclass(frozen=True)
class PoolRows:
    """Serving mode: every request of the batch is read through SGLang's request-to-slot rows and the per-request
    tables of a table arena, so one launch serves a batch that mixes compressed and uncompressed requests and
    nothing is restacked per step (CUDA-graph safe: every shape is static; the values change in place).

    A request (kv head h) attends to `kept[t, h, :kept_lengths[t, h]]` followed by the row's positions
    `tail_starts[t] .. seq_len-1`, where t = table_of_row[row]; a row without a table (t = -1) attends to its whole
    row (positions 0 .. seq_len-1). `kept_indices` / `kept_lengths` are then indexed by table, not by request.

    req_to_token: int32 `[rows, max_context]` slot of each position of each request row;
    row_indices: int `[B]` each request's row; seq_lens: int `[B]` positions in its cache (incl. the new token);
    table_of_row: int32 `[rows]` the row's table or -1; tail_starts: int32 `[tables]` (any stride) first position
    read from the row after the kept entries (the compression event's cache length).
    """

    req_to_token: torch.Tensor
    row_indices: torch.Tensor
    seq_lens: torch.Tensor
    table_of_row: torch.Tensor
    tail_starts: torch.Tensor


# Lengths and offsets are not specialized on (Triton's default: == 1 and % 16): a server sees every value, and
# each new specialization is a compile of seconds that stalls the scheduler mid-request.
@triton.jit(do_not_specialize=["max_kept", "max_entries", "num_splits"])
def _compressed_decode_split_kernel(
    Q, K, V, KeptIdx, KeptLen, PartOut, PartLse, Out, Lse,
    RowTable, RowIdx, SeqLen, TableOfRow, TailStart,  # POOL_ROWS only (`PoolRows`)
    LseTable, LseRows,  # LSE_ROWS only: lse also to LseTable[LseRows[b], q head]
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ib, stride_ih, stride_nb, stride_nh,
    stride_ob, stride_oh, stride_lb, stride_lh, stride_rt, stride_tail, stride_lt,
    num_kv_heads, num_q_heads, max_kept, max_entries, num_splits, qk_scale,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, INT64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    POOL_ROWS: tl.constexpr, LSE_ROWS: tl.constexpr,
):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // num_kv_heads
    h = pid % num_kv_heads
    if POOL_ROWS:  # kept entries of the row's table (none without one), then the row from the table's tail on
        row = tl.load(RowIdx + b).to(tl.int64)
        table = tl.load(TableOfRow + row)
        has_table = table >= 0
        t = tl.maximum(table, 0).to(tl.int64)
        n_kept = tl.where(has_table, tl.load(KeptLen + t * stride_nb + h * stride_nh).to(tl.int32), 0)
        tail = tl.where(has_table, tl.load(TailStart + t * stride_tail).to(tl.int32), 0)
        n_kept = tl.minimum(tl.maximum(n_kept, 0), max_kept)
        n = n_kept + tl.maximum(tl.load(SeqLen + b).to(tl.int32) - tail, 0)
        idx_base = KeptIdx + t * stride_ib + h * stride_ih
        row_base = RowTable + row * stride_rt + (tail - n_kept)  # row_base + pos: position tail + (pos - n_kept)
    else:
        n = tl.load(KeptLen + b.to(tl.int64) * stride_nb + h * stride_nh).to(tl.int32)
        n_kept = n
        idx_base = KeptIdx + b.to(tl.int64) * stride_ib + h * stride_ih
        row_base = idx_base
    n = tl.minimum(tl.maximum(n, 0), max_entries)
    chunk = tl.cdiv(tl.cdiv(n, num_splits), BLOCK_N) * BLOCK_N  # whole key tiles; the last splits may be empty
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    h_ok = offs_h < GROUP
    d_ok = offs_d < HEAD_DIM
    q_head = h * GROUP + offs_h
    q = tl.load(Q + b.to(tl.int64) * stride_qb + q_head[:, None] * stride_qh + offs_d[None, :],
                mask=h_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    k_base = K + h * stride_kh
    v_base = V + h * stride_vh
    for start in range(lo, hi, BLOCK_N):
        pos = start + offs_n
        ok = pos < hi
        if POOL_ROWS:
            in_kept = pos < n_kept
            slot = tl.where(in_kept, tl.load(idx_base + pos, mask=ok & in_kept, other=0),
                            tl.load(row_base + pos, mask=ok & (pos >= n_kept), other=0))
        else:
            slot = tl.load(idx_base + pos, mask=ok, other=0)
        if INT64:
            slot = slot.to(tl.int64)
        else:
            slot = slot.to(tl.int32)
        k = load_rows(k_base, slot, stride_kt, offs_d, ok, d_ok, True, EVEN_D)
        v = load_rows(v_base, slot, stride_vt, offs_d, ok, d_ok, True, EVEN_D)
        acc, l_i, m_i = attend_tile(acc, l_i, m_i, q, k, v, ok[None, :], qk_scale, True, DOT_PRECISION)

    seen = l_i > 0.0  # false for an empty split (or a head that keeps nothing)
    l_safe = tl.where(seen, l_i, 1.0)
    out = tl.where(seen[:, None], acc / l_safe[:, None], 0.0)
    lse2 = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
    if DIRECT:
        o_ptrs = Out + b.to(tl.int64) * stride_ob + q_head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=h_ok[:, None] & d_ok[None, :])
        tl.store(Lse + b.to(tl.int64) * stride_lb + q_head * stride_lh, lse2 * LN2, mask=h_ok)
        if LSE_ROWS:
            tl.store(LseTable + tl.load(LseRows + b).to(tl.int64) * stride_lt + q_head, lse2 * LN2, mask=h_ok)
    else:
        part = (b.to(tl.int64) * num_q_heads + q_head) * num_splits + split  # PartLse [B, Hq, splits]
        tl.store(PartOut + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=h_ok[:, None] & d_ok[None, :])
        tl.store(PartLse + part, lse2, mask=h_ok)


# num_splits is not specialized on: see the split kernel.
@triton.jit(do_not_specialize=["num_splits"])
def _compressed_decode_reduce_kernel(
    PartOut, PartLse, Out, Lse, LseTable, LseRows,
    stride_ob, stride_oh, stride_lb, stride_lh, stride_lt,
    num_q_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, LSE_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // num_q_heads
    hq = pid % num_q_heads
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < num_splits
    d_ok = offs_d < HEAD_DIM
    part = pid.to(tl.int64) * num_splits + offs_s
    lse2 = tl.load(PartLse + part, mask=s_ok, other=float("-inf"))
    m = tl.max(lse2, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse2 - m_safe)  # 0 for empty splits
    denom = tl.sum(w, 0)
    o = tl.load(PartOut + part[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    seen = denom > 0.0
    d_safe = tl.where(seen, denom, 1.0)
    out = tl.sum(o * w[:, None], 0) / d_safe
    lse = tl.where(seen, (m_safe + tl.log2(d_safe)) * LN2, float("-inf"))
    tl.store(Out + b.to(tl.int64) * stride_ob + hq * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=d_ok)
    tl.store(Lse + b.to(tl.int64) * stride_lb + hq * stride_lh, lse)
    if LSE_ROWS:
        tl.store(LseTable + tl.load(LseRows + b).to(tl.int64) * stride_lt + hq, lse)


_KERNELS = (_compressed_decode_split_kernel, _compressed_decode_reduce_kernel, load_rows, attend_tile)


# ---------------------------------------------------------------------------------------------------------
def decode_launch_config(head_dim: int, dtype: torch.dtype) -> LaunchConfig:
    """Deterministic launch heuristic: 128 entries per step in 16-bit (32 for float32 or head_dim 256), 4 warps, 2
    stages: the fastest of `kernels/tune.py --pool-decode --pool-quick` on an H100 (batch 1, 100k and 128k tokens,
    before and after compression; benchmarks/RESULTS.md)."""
    block_d = max(16, next_power_of_two(head_dim))
    if interpret_mode():
        return LaunchConfig(block_m=16, block_n=32, num_warps=4, num_stages=1)
    block_n = 32 if dtype == torch.float32 or block_d > 128 else 128
    return LaunchConfig(block_m=16, block_n=block_n, num_warps=4, num_stages=2)


def decode_num_splits(batch: int, num_kv_heads: int, max_kept: int, *, block_n: int,
                      device: torch.device | str = "cuda") -> int:
    """Splits per (request, kv head): enough programs for about two waves of the GPU's multiprocessors, each
    split walking at least two key tiles. Depends only on shapes (CUDA-graph safe)."""
    tiles = -(-max_kept // block_n)
    if tiles <= 2:
        return 1
    programs = max(1, batch * num_kv_heads)
    want = -(-2 * device_parallelism(torch.device(device)) // programs)
    splits = max(1, min(want, -(-tiles // 2), MAX_SPLITS))
    chunk_tiles = -(-tiles // splits)
    return -(-tiles // chunk_tiles)  # drop splits that would always be empty


def _check_inputs(q, k_cache, v_cache, kept_indices, kept_lengths, *, by_table: bool = False
                  ) -> tuple[int, int, int, int, int]:
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                         ("kept_indices", kept_indices), ("kept_lengths", kept_lengths)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if q.dim() != 3 or k_cache.dim() != 3:
        raise ValueError(f"q must be [B, Hq, D] and k_cache [slots, Hkv, D], got {tuple(q.shape)} and "
                         f"{tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}")
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_dtype(name, tensor)
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got {tensor.stride()}")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache must share one dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    batch, num_q_heads, head_dim = q.shape
    _, num_kv_heads, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"q head_dim {head_dim} != cache head_dim {cache_dim}")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if head_dim < 1 or head_dim > 256:
        raise ValueError(f"head_dim={head_dim} is not supported (1..256)")
    lead = kept_indices.shape[0] if by_table and kept_indices.dim() == 3 else batch  # by table: any count >= 1
    if kept_indices.dim() != 3 or kept_indices.shape[:2] != (lead, num_kv_heads) or (by_table and lead < 1):
        raise ValueError(f"kept_indices must be [{'tables' if by_table else batch}, {num_kv_heads}, max_kept], got "
                         f"{tuple(kept_indices.shape)}")
    if kept_lengths.shape != (lead, num_kv_heads):
        raise ValueError(f"kept_lengths must be [{lead}, {num_kv_heads}], got {tuple(kept_lengths.shape)}")
    for name, tensor in (("kept_indices", kept_indices), ("kept_lengths", kept_lengths)):
        if tensor.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (or int64), got {tensor.dtype}")
    if kept_indices.shape[2] > 0 and kept_indices.stride(-1) != 1:
        raise ValueError("kept_indices must have a contiguous last dimension")
    return batch, num_q_heads, num_kv_heads, head_dim, kept_indices.shape[2]


def compressed_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
                      kept_lengths: torch.Tensor, *, scale: float | None = None, num_splits: int | None = None,
                      config: LaunchConfig | None = None, pool_rows: PoolRows | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of B requests over a compressed, token-major cache.

    Parameters
    ----------
    q: [B, Hq, D] the new tokens' queries (post-RoPE); query head h uses kv head h // (Hq / Hkv).
    k_cache, v_cache: [slots, Hkv, D] token-major cache (SGLang's layout), same dtype as q.
    kept_indices: int32 [B, Hkv, max_kept] cache slot ids each (request, kv head) attends to; entries at and past
        `kept_lengths[b, h]` are never read (pad with -1). Slot ids below the length must lie in [0, slots):
        they are not checked (no host sync). With `pool_rows`: [tables, Hkv, max_kept], indexed by table.
    kept_lengths: int32 [B, Hkv] (with `pool_rows`: [tables, Hkv]), clamped to [0, max_kept]. A length of 0 gives
        out = 0 and lse = -inf for the group's q heads (an empty softmax; merging such a part with others is then a
        no-op).
    scale: softmax scale, default 1/sqrt(D).
    num_splits: split-K factor, default `decode_num_splits(...)` (a function of shapes only).
    config: launch override (block_n, num_warps, num_stages; block_m is ignored).
    pool_rows: the serving mode (`PoolRows`): kept entries of each request's table, then its row's tail; the grid
        then covers max_kept + req_to_token.shape[1] entries per (request, kv head).

    Returns
    -------
    out [B, Hq, D] in q's dtype; lse float32 [B, Hq], natural log. Matches
    `entropyinfer_sgl.core.reference.compressed_decode_reference` per request.
    """
    check_decode_inputs(q, k_cache, v_cache, kept_indices, kept_lengths, pool_rows=pool_rows)
    launch = DecodeLaunch(q, k_cache, v_cache, kept_indices, scale=scale, num_splits=num_splits, config=config,
                          pool_rows=pool_rows)
    return launch.run(q, k_cache, v_cache, kept_indices, kept_lengths, pool_rows=pool_rows)


def check_decode_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
                        kept_lengths: torch.Tensor, *, pool_rows: PoolRows | None = None) -> None:
    """`compressed_decode`'s input checks (shapes, dtypes, devices, the kernels' mode), for callers that plan a
    `DecodeLaunch` themselves."""
    _check_inputs(q, k_cache, v_cache, kept_indices, kept_lengths, by_table=pool_rows is not None)
    extra = () if pool_rows is None else _check_pool_rows(pool_rows, q.shape[0], kept_indices)
    check_kernel_device(q, k_cache, v_cache, kept_indices, kept_lengths, *extra, kernels=_KERNELS)


def _check_pool_rows(rows: PoolRows, batch: int, kept_indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not isinstance(rows, PoolRows):
        raise TypeError(f"pool_rows must be a PoolRows, got {type(rows).__name__}")
    table = rows.req_to_token
    if table.dim() != 2 or table.dtype != torch.int32 or table.stride(-1) != 1:
        raise ValueError(f"pool_rows.req_to_token must be int32 [rows, max_context] with contiguous rows, got "
                         f"{table.dtype} {tuple(table.shape)}")
    if kept_indices.dtype != torch.int32:
        raise ValueError(f"with pool_rows, kept_indices must be int32 like req_to_token, got {kept_indices.dtype}")
    for name in ("row_indices", "seq_lens"):
        tensor = getattr(rows, name)
        if tensor.shape != (batch,) or not tensor.is_contiguous():
            raise ValueError(f"pool_rows.{name} must be a contiguous [{batch}] tensor, got {tuple(tensor.shape)}")
    if rows.table_of_row.shape != (table.shape[0],) or rows.table_of_row.dtype != torch.int32 \
            or not rows.table_of_row.is_contiguous():
        raise ValueError(f"pool_rows.table_of_row must be a contiguous int32 [{table.shape[0]}] tensor, got "
                         f"{rows.table_of_row.dtype} {tuple(rows.table_of_row.shape)}")
    if rows.tail_starts.shape != (kept_indices.shape[0],) or rows.tail_starts.dtype != torch.int32:
        raise ValueError(f"pool_rows.tail_starts must be int32 [{kept_indices.shape[0]}] (one per table), got "
                         f"{rows.tail_starts.dtype} {tuple(rows.tail_starts.shape)}")
    return table, rows.row_indices, rows.seq_lens, rows.table_of_row, rows.tail_starts


def _check_lse_rows(lse_rows: tuple[torch.Tensor, torch.Tensor], batch: int, num_q_heads: int) -> None:
    table, rows = lse_rows
    if table.dim() != 2 or table.shape[1] != num_q_heads or table.dtype != torch.float32 or table.stride(1) != 1:
        raise ValueError(f"lse_rows' table must be float32 [rows, {num_q_heads}] with contiguous rows, got "
                         f"{table.dtype} {tuple(table.shape)}")
    if rows.shape != (batch,) or rows.dtype != torch.int64 or rows.device != table.device:
        raise ValueError(f"lse_rows' rows must be int64 [{batch}] on {table.device}, got {rows.dtype} "
                         f"{tuple(rows.shape)} on {rows.device}")


class DecodeLaunch:
    """A `compressed_decode` launch planned once for its shapes and run again for other tensors of the same
    shapes (the serving decode path: every layer of a step has the same batch, heads and table width).

    `__init__` does the heuristics and allocates the split buffers; `run` launches, validating only its optional
    `lse_rows` (a few shape checks; the caller ran `check_decode_inputs` on one set of tensors or builds the
    tensors itself). Runs on one CUDA
    stream reuse the split buffers safely (stream order).
    """

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor, *,
                 scale: float | None = None, num_splits: int | None = None, config: LaunchConfig | None = None,
                 pool_rows: PoolRows | None = None):
        batch, num_q_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[1]
        max_kept = kept_indices.shape[2]
        self.pool_rows = pool_rows is not None
        max_entries = max_kept + (pool_rows.req_to_token.shape[1] if self.pool_rows else 0)
        device = q.device
        config = config or decode_launch_config(head_dim, q.dtype)
        if num_splits is None:
            num_splits = decode_num_splits(batch, num_kv_heads, max_entries, block_n=config.block_n, device=device)
        if not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits={num_splits!r} must be an integer in [1, {MAX_SPLITS}]")
        self.shape = (batch, num_q_heads, head_dim)
        self.dtype, self.device = q.dtype, device
        self.num_kv_heads, self.max_kept, self.max_entries = num_kv_heads, max_kept, max_entries
        self.num_splits = num_splits
        self.qk_scale = (1.0 / math.sqrt(head_dim) if scale is None else float(scale)) * LOG2E
        self.direct = num_splits == 1
        if self.direct or batch == 0:
            self.part_out = self.part_lse = None
        else:
            self.part_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=device)
            self.part_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=device)
        block_d = max(16, next_power_of_two(head_dim))
        self.split_constants = dict(
            GROUP=num_q_heads // num_kv_heads, BLOCK_H=max(16, next_power_of_two(num_q_heads // num_kv_heads)),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=config.block_n, DIRECT=self.direct,
            INT64=needs_int64(k_cache, v_cache), DOT_PRECISION=dot_precision(q.dtype), POOL_ROWS=self.pool_rows,
            num_warps=config.num_warps, num_stages=config.num_stages)
        self.reduce_constants = dict(HEAD_DIM=head_dim, BLOCK_D=block_d,
                                     BLOCK_S=max(2, next_power_of_two(num_splits)),
                                     num_warps=8 if num_splits >= 64 else 4 if block_d >= 128 else 2)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
            kept_lengths: torch.Tensor, pool_rows: PoolRows | None = None,
            lse_rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """out [B, Hq, D] in q's dtype, lse float32 [B, Hq] (see `compressed_decode`). lse_rows: (table float32
        `[rows, Hq]` with contiguous rows, int64 `[B]` row of each request): each request's lse is written to its
        row of the table too, by the kernel (the observation window arena's: no launch of its own)."""
        if (pool_rows is not None) != self.pool_rows:
            raise ValueError("pool_rows must be given exactly when the launch was planned with them")
        if lse_rows is not None:
            _check_lse_rows(lse_rows, *self.shape[:2])
        batch, num_q_heads, head_dim = self.shape
        out = torch.empty(batch, num_q_heads, head_dim, dtype=self.dtype, device=self.device)
        lse = torch.empty(batch, num_q_heads, dtype=torch.float32, device=self.device)
        if batch == 0 or num_q_heads == 0:
            return out, lse
        part_out = out if self.direct else self.part_out  # never touched when direct
        part_lse = out if self.direct else self.part_lse
        if pool_rows is None:
            rows, row_stride, tail_stride = (kept_lengths,) * 5, 0, 0  # never read without POOL_ROWS
        else:
            rows = (pool_rows.req_to_token, pool_rows.row_indices, pool_rows.seq_lens, pool_rows.table_of_row,
                    pool_rows.tail_starts)
            row_stride, tail_stride = pool_rows.req_to_token.stride(0), pool_rows.tail_starts.stride(0)
        lse_table, lse_row = (lse, lse) if lse_rows is None else lse_rows  # never read without LSE_ROWS
        _compressed_decode_split_kernel[(batch * self.num_kv_heads, self.num_splits)](
            q, k_cache, v_cache, kept_indices, kept_lengths, part_out, part_lse, out, lse, *rows, lse_table, lse_row,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
            kept_indices.stride(0), kept_indices.stride(1), kept_lengths.stride(0), kept_lengths.stride(1),
            out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), row_stride, tail_stride,
            lse_table.stride(0), self.num_kv_heads, num_q_heads, self.max_kept, self.max_entries, self.num_splits,
            self.qk_scale, LSE_ROWS=lse_rows is not None, **self.split_constants,
        )
        if not self.direct:
            _compressed_decode_reduce_kernel[(batch * num_q_heads,)](
                self.part_out, self.part_lse, out, lse, lse_table, lse_row,
                out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), lse_table.stride(0),
                num_q_heads, self.num_splits, LSE_ROWS=lse_rows is not None, **self.reduce_constants,
            )
        return out, lse

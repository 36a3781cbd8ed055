"""Decode attention over a compressed cache: each kv head attends only to the cache slots it kept.

Split-K (flash-decoding): program (request b, kv head h, split s) walks a fixed chunk of that head's kept list
and writes a partial output and LSE for all the q heads of the group (each kept K/V row is loaded once per
group); a second kernel merges the splits. With one split the first kernel writes the result directly.

The grid depends only on tensor shapes (B, Hkv, max_kept) and never on `kept_lengths` values, so a launch can be
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

MAX_SPLITS = 64


@dataclass(frozen=True)
class FullRows:
    """Requests of a decode batch that attend to their whole cache rather than to kept slots (not compressed yet),
    read through SGLang's request-to-slot table, so one launch serves a batch that mixes both (CUDA-graph safe:
    every shape is static, `use_kept` / `seq_lens` / `row_indices` change in place).

    req_to_token: int32 `[rows, max_context]` slot of each position of each request row;
    row_indices: int `[B]` each request's row; seq_lens: int `[B]` positions it attends to (0 .. seq_len-1);
    use_kept: bool/int `[B]` nonzero: the request reads its kept table (`kept_indices` / `kept_lengths`) instead.
    """

    req_to_token: torch.Tensor
    row_indices: torch.Tensor
    seq_lens: torch.Tensor
    use_kept: torch.Tensor


@triton.jit
def _compressed_decode_split_kernel(
    Q, K, V, KeptIdx, KeptLen, PartOut, PartLse, Out, Lse,
    RowTable, RowIdx, SeqLen, UseKept,  # MIXED only: the requests that read their whole req_to_token row
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ib, stride_ih, stride_nb, stride_nh,
    stride_ob, stride_oh, stride_lb, stride_lh, stride_rt,
    num_kv_heads, num_q_heads, max_kept, chunk, num_splits, qk_scale,
    GROUP: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, INT64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    MIXED: tl.constexpr,
):
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // num_kv_heads
    h = pid % num_kv_heads
    n = tl.load(KeptLen + b.to(tl.int64) * stride_nb + h * stride_nh).to(tl.int32)
    idx_base = KeptIdx + b.to(tl.int64) * stride_ib + h * stride_ih
    if MIXED:  # a request not compressed yet reads the slots of positions 0 .. seq_len-1 from its row
        use_kept = tl.load(UseKept + b) != 0
        row_base = RowTable + tl.load(RowIdx + b).to(tl.int64) * stride_rt
        n = tl.where(use_kept, n, tl.load(SeqLen + b).to(tl.int32))
        idx_base = tl.where(use_kept, idx_base, row_base)
    n = tl.minimum(tl.maximum(n, 0), max_kept)
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
    else:
        part = (b.to(tl.int64) * num_q_heads + q_head) * num_splits + split  # PartLse [B, Hq, splits]
        tl.store(PartOut + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=h_ok[:, None] & d_ok[None, :])
        tl.store(PartLse + part, lse2, mask=h_ok)


@triton.jit
def _compressed_decode_reduce_kernel(
    PartOut, PartLse, Out, Lse,
    stride_ob, stride_oh, stride_lb, stride_lh,
    num_q_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
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


_KERNELS = (_compressed_decode_split_kernel, _compressed_decode_reduce_kernel, load_rows, attend_tile)


# ---------------------------------------------------------------------------------------------------------
def decode_launch_config(head_dim: int, dtype: torch.dtype) -> LaunchConfig:
    """Deterministic launch heuristic: 64 kept entries per step (32 for float32 or head_dim 256), 4 warps."""
    block_d = max(16, next_power_of_two(head_dim))
    if interpret_mode():
        return LaunchConfig(block_m=16, block_n=32, num_warps=4, num_stages=1)
    block_n = 32 if dtype == torch.float32 or block_d > 128 else 64
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


def _check_inputs(q, k_cache, v_cache, kept_indices, kept_lengths) -> tuple[int, int, int, int, int]:
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
    if kept_indices.dim() != 3 or kept_indices.shape[:2] != (batch, num_kv_heads):
        raise ValueError(f"kept_indices must be [{batch}, {num_kv_heads}, max_kept], got {tuple(kept_indices.shape)}")
    if kept_lengths.shape != (batch, num_kv_heads):
        raise ValueError(f"kept_lengths must be [{batch}, {num_kv_heads}], got {tuple(kept_lengths.shape)}")
    for name, tensor in (("kept_indices", kept_indices), ("kept_lengths", kept_lengths)):
        if tensor.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 (or int64), got {tensor.dtype}")
    if kept_indices.shape[2] > 0 and kept_indices.stride(-1) != 1:
        raise ValueError("kept_indices must have a contiguous last dimension")
    return batch, num_q_heads, num_kv_heads, head_dim, kept_indices.shape[2]


def compressed_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
                      kept_lengths: torch.Tensor, *, scale: float | None = None, num_splits: int | None = None,
                      config: LaunchConfig | None = None, full_rows: FullRows | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of B requests over a compressed, token-major cache.

    Parameters
    ----------
    q: [B, Hq, D] the new tokens' queries (post-RoPE); query head h uses kv head h // (Hq / Hkv).
    k_cache, v_cache: [slots, Hkv, D] token-major cache (SGLang's layout), same dtype as q.
    kept_indices: int32 [B, Hkv, max_kept] cache slot ids each (request, kv head) attends to; entries at and past
        `kept_lengths[b, h]` are never read (pad with -1). Slot ids below the length must lie in [0, slots):
        they are not checked (no host sync).
    kept_lengths: int32 [B, Hkv], clamped to [0, max_kept]. A length of 0 gives out = 0 and lse = -inf for the
        group's q heads (an empty softmax; merging such a part with others is then a no-op).
    scale: softmax scale, default 1/sqrt(D).
    num_splits: split-K factor, default `decode_num_splits(...)` (a function of shapes only).
    config: launch override (block_n, num_warps, num_stages; block_m is ignored).
    full_rows: requests that attend to their whole cache (`FullRows`); the grid then covers
        max(max_kept, req_to_token.shape[1]) entries per (request, kv head).

    Returns
    -------
    out [B, Hq, D] in q's dtype; lse float32 [B, Hq], natural log. Matches
    `entropyinfer_sgl.reference.compressed_decode_reference` per request.
    """
    check_decode_inputs(q, k_cache, v_cache, kept_indices, kept_lengths, full_rows=full_rows)
    launch = DecodeLaunch(q, k_cache, v_cache, kept_indices, scale=scale, num_splits=num_splits, config=config,
                          full_rows=full_rows)
    return launch.run(q, k_cache, v_cache, kept_indices, kept_lengths, full_rows=full_rows)


def check_decode_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
                        kept_lengths: torch.Tensor, *, full_rows: FullRows | None = None) -> None:
    """`compressed_decode`'s input checks (shapes, dtypes, devices, the kernels' mode), for callers that plan a
    `DecodeLaunch` themselves."""
    _check_inputs(q, k_cache, v_cache, kept_indices, kept_lengths)
    extra = () if full_rows is None else _check_full_rows(full_rows, q.shape[0], kept_indices)
    check_kernel_device(q, k_cache, v_cache, kept_indices, kept_lengths, *extra, kernels=_KERNELS)


def _check_full_rows(rows: FullRows, batch: int, kept_indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not isinstance(rows, FullRows):
        raise TypeError(f"full_rows must be a FullRows, got {type(rows).__name__}")
    table = rows.req_to_token
    if table.dim() != 2 or table.dtype != torch.int32 or table.stride(-1) != 1:
        raise ValueError(f"full_rows.req_to_token must be int32 [rows, max_context] with contiguous rows, got "
                         f"{table.dtype} {tuple(table.shape)}")
    if kept_indices.dtype != torch.int32:
        raise ValueError(f"with full_rows, kept_indices must be int32 like req_to_token, got {kept_indices.dtype}")
    for name in ("row_indices", "seq_lens", "use_kept"):
        tensor = getattr(rows, name)
        if tensor.shape != (batch,) or not tensor.is_contiguous():
            raise ValueError(f"full_rows.{name} must be a contiguous [{batch}] tensor, got {tuple(tensor.shape)}")
    return table, rows.row_indices, rows.seq_lens, rows.use_kept


class DecodeLaunch:
    """A `compressed_decode` launch planned once for its shapes and run again for other tensors of the same
    shapes (the serving decode path: every layer of a step has the same batch, heads and table width).

    `__init__` does the heuristics and allocates the split buffers; `run` only launches (no validation: the
    caller ran `check_decode_inputs` on one set of tensors or builds the tensors itself). Runs on one CUDA
    stream reuse the split buffers safely (stream order).
    """

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor, *,
                 scale: float | None = None, num_splits: int | None = None, config: LaunchConfig | None = None,
                 full_rows: FullRows | None = None):
        batch, num_q_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[1]
        max_kept = kept_indices.shape[2]
        self.mixed = full_rows is not None
        if self.mixed:
            max_kept = max(max_kept, full_rows.req_to_token.shape[1])
        device = q.device
        config = config or decode_launch_config(head_dim, q.dtype)
        if num_splits is None:
            num_splits = decode_num_splits(batch, num_kv_heads, max_kept, block_n=config.block_n, device=device)
        if not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits={num_splits!r} must be an integer in [1, {MAX_SPLITS}]")
        self.shape = (batch, num_q_heads, head_dim)
        self.dtype, self.device = q.dtype, device
        self.num_kv_heads, self.max_kept, self.num_splits = num_kv_heads, max_kept, num_splits
        self.qk_scale = (1.0 / math.sqrt(head_dim) if scale is None else float(scale)) * LOG2E
        chunk = max(1, -(-max_kept // num_splits))
        self.chunk = -(-chunk // config.block_n) * config.block_n  # whole key tiles per split
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
            INT64=needs_int64(k_cache, v_cache), DOT_PRECISION=dot_precision(q.dtype), MIXED=self.mixed,
            num_warps=config.num_warps, num_stages=config.num_stages)
        self.reduce_constants = dict(HEAD_DIM=head_dim, BLOCK_D=block_d,
                                     BLOCK_S=max(2, next_power_of_two(num_splits)),
                                     num_warps=4 if block_d >= 128 else 2)

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kept_indices: torch.Tensor,
            kept_lengths: torch.Tensor, full_rows: FullRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """out [B, Hq, D] in q's dtype, lse float32 [B, Hq] (see `compressed_decode`)."""
        if (full_rows is not None) != self.mixed:
            raise ValueError("full_rows must be given exactly when the launch was planned with them")
        batch, num_q_heads, head_dim = self.shape
        out = torch.empty(batch, num_q_heads, head_dim, dtype=self.dtype, device=self.device)
        lse = torch.empty(batch, num_q_heads, dtype=torch.float32, device=self.device)
        if batch == 0 or num_q_heads == 0:
            return out, lse
        part_out = out if self.direct else self.part_out  # never touched when direct
        part_lse = out if self.direct else self.part_lse
        rows = (kept_lengths,) * 4 if full_rows is None else (  # never read when not MIXED
            full_rows.req_to_token, full_rows.row_indices, full_rows.seq_lens, full_rows.use_kept)
        row_stride = 0 if full_rows is None else full_rows.req_to_token.stride(0)
        _compressed_decode_split_kernel[(batch * self.num_kv_heads, self.num_splits)](
            q, k_cache, v_cache, kept_indices, kept_lengths, part_out, part_lse, out, lse, *rows,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
            kept_indices.stride(0), kept_indices.stride(1), kept_lengths.stride(0), kept_lengths.stride(1),
            out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), row_stride,
            self.num_kv_heads, num_q_heads, self.max_kept, self.chunk, self.num_splits, self.qk_scale,
            **self.split_constants,
        )
        if not self.direct:
            _compressed_decode_reduce_kernel[(batch * num_q_heads,)](
                self.part_out, self.part_lse, out, lse,
                out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
                num_q_heads, self.num_splits, **self.reduce_constants,
            )
        return out, lse

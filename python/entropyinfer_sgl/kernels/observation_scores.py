"""The observation window's attention to the cache at a decode compression event, in two passes over the keys.

`core.decode.window_attention` (the float32 torch oracle) materializes the probabilities `[Hkv, G, W, T]` in
float32: at 100k cache entries that is ~400 MB per layer, written and read by several element-wise kernels, and
the 32 layers of an event then take ~150 ms on an H100. Here nothing of that size exists:

- pass 1, program (kv head, split): walks its chunk of keys for the window's G x W query rows of the kv head (one
  dot per key tile) and keeps each row's running max and sum (base 2): a partial log-sum-exp per split;
- pass 2, program (kv head, split): merges the partials into each row's log-sum-exp, walks the same keys again,
  turns the logits into probabilities, sums them over the window per q head (one more dot: a 0/1 selector of each
  q head's rows times the probabilities, in "tf32x3", float32-accurate, on the tensor cores instead of one masked
  cross-row reduction per q head on the CUDA cores) and reduces over the group (mean or max): float32 `[Hkv, T]`.

A caller that knows each window query's log-sum-exp already (`row_lse`: the decode step that computed the query
attended to the same keys) skips pass 1: pass 2 reads each row's log-sum-exp from it, and the event reads the keys
once.

Keys are read contiguously (`keys [T, Hkv, D]`) or through `slots` (`keys` is then the whole pool and `slots[t]`
the row of entry t: SGLang's req_to_token row, so the event gathers nothing). Window query w sits at position
T - W + w and sees keys 0 .. T - W + w (causal). The grid depends on shapes only; there is no host sync.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..core.config import GQA_REDUCTIONS
from ._common import (
    check_dtype,
    check_kernel_device,
    device_parallelism,
    dot_precision,
    interpret_mode,
    needs_int64,
    next_power_of_two,
)
from ._online_softmax import LOG2E, load_rows

LOG2E_K = tl.constexpr(LOG2E)  # read inside kernels


@triton.jit
def _window_logits(q, K, Slots, start, hi, query_pos, stride_kt, qk_scale, HEAD_DIM: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, USE_SLOTS: tl.constexpr, INT64: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """Base-2 scaled logits `[R, BLOCK_N]` of the window rows against keys start .. start + BLOCK_N - 1 (those at
    or past `hi`, and those after a row's own position, are -inf) and the tile's key positions."""
    offs_d = tl.arange(0, BLOCK_D)
    pos = start + tl.arange(0, BLOCK_N)
    ok = pos < hi
    if USE_SLOTS:
        rows = tl.load(Slots + pos, mask=ok, other=0)
    else:
        rows = pos
    rows = rows.to(tl.int64) if INT64 else rows.to(tl.int32)
    k = load_rows(K, rows, stride_kt, offs_d, ok, offs_d < HEAD_DIM, True, HEAD_DIM == BLOCK_D)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    visible = ok[None, :] & (pos[None, :] <= query_pos[:, None])
    return tl.where(visible, qk, float("-inf")), pos


@triton.jit
def _window_rows(Q, h, stride_qw, stride_qh, num_tokens, num_window, GROUP: tl.constexpr, BLOCK_R: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """The window's query rows of kv head h, row r = g * W + w (q head h * GROUP + g, window query w at position
    T - W + w): q `[BLOCK_R, BLOCK_D]`, each row's q head within the group, position, validity and index."""
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    g = offs_r // num_window
    w = offs_r % num_window
    r_ok = offs_r < GROUP * num_window
    q = tl.load(Q + w[:, None].to(tl.int64) * stride_qw + (h * GROUP + g)[:, None] * stride_qh + offs_d[None, :],
                mask=r_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    return q, g, num_tokens - num_window + w, r_ok, offs_r


# Lengths are not specialized on (Triton's default: == 1 and % 16): every event has another cache length.
@triton.jit(do_not_specialize=["num_tokens", "num_window", "chunk"])
def _window_lse_kernel(
    Q, K, Slots, PartM, PartL,
    stride_qw, stride_qh, stride_kt, stride_kh,
    num_tokens, num_window, chunk, num_splits, qk_scale,
    GROUP: tl.constexpr, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, USE_SLOTS: tl.constexpr, INT64: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    h = tl.program_id(0)
    split = tl.program_id(1)
    q, g, query_pos, r_ok, offs_r = _window_rows(Q, h, stride_qw, stride_qh, num_tokens, num_window, GROUP, BLOCK_R,
                                                 HEAD_DIM, BLOCK_D)
    k_base = K + h * stride_kh
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, num_tokens)
    for start in range(lo, hi, BLOCK_N):
        qk, _ = _window_logits(q, k_base, Slots, start, hi, query_pos, stride_kt, qk_scale, HEAD_DIM, BLOCK_D,
                               BLOCK_N, USE_SLOTS, INT64, DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no visible key yet keeps l = 0
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(qk - m_safe[:, None]), 1)
        m_i = m_new
    part = (h * BLOCK_R + offs_r) * num_splits + split  # [Hkv, BLOCK_R, splits]
    tl.store(PartM + part, m_i)
    tl.store(PartL + part, l_i)


@triton.jit(do_not_specialize=["num_tokens", "num_window", "chunk"])
def _window_scores_kernel(
    Q, K, Slots, PartM, PartL, RowLse, Out,
    stride_qw, stride_qh, stride_kt, stride_kh, stride_oh, stride_lw,
    num_tokens, num_window, chunk, num_splits, qk_scale,
    GROUP: tl.constexpr, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, REDUCE_MAX: tl.constexpr,
    USE_SLOTS: tl.constexpr, INT64: tl.constexpr, DOT_PRECISION: tl.constexpr, GIVEN_LSE: tl.constexpr,
):
    h = tl.program_id(0)
    split = tl.program_id(1)
    q, g, query_pos, r_ok, offs_r = _window_rows(Q, h, stride_qw, stride_qh, num_tokens, num_window, GROUP, BLOCK_R,
                                                 HEAD_DIM, BLOCK_D)
    if GIVEN_LSE:  # each row's natural log-sum-exp, given: row g * W + w is window query w of q head h * G + g
        w = offs_r % num_window
        given = tl.load(RowLse + w.to(tl.int64) * stride_lw + h * GROUP + g, mask=r_ok, other=float("inf"))
        lse = tl.where(r_ok, given * LOG2E_K, float("inf"))  # base 2, as the logits
    else:  # every split's partial (max, sum) of these rows -> each row's log-sum-exp (base 2) over all its keys
        offs_s = tl.arange(0, BLOCK_S)
        part = (h * BLOCK_R + offs_r)[:, None] * num_splits + offs_s[None, :]
        s_ok = offs_s[None, :] < num_splits
        part_m = tl.load(PartM + part, mask=s_ok, other=float("-inf"))
        part_l = tl.load(PartL + part, mask=s_ok, other=0.0)
        m = tl.max(part_m, 1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        total = tl.sum(part_l * tl.exp2(part_m - m_safe[:, None]), 1)
        lse = tl.where(r_ok & (total > 0.0), m_safe + tl.log2(tl.where(total > 0.0, total, 1.0)), float("inf"))
    # selector [BLOCK_G, BLOCK_R]: row j sums the window rows of q head j of the group (rows past GROUP: none)
    select = ((g[None, :] == tl.arange(0, BLOCK_G)[:, None]) & r_ok[None, :]).to(tl.float32)
    k_base = K + h * stride_kh
    lo = split * chunk
    hi = tl.minimum(lo + chunk, num_tokens)
    for start in range(lo, hi, BLOCK_N):
        qk, pos = _window_logits(q, k_base, Slots, start, hi, query_pos, stride_kt, qk_scale, HEAD_DIM, BLOCK_D,
                                 BLOCK_N, USE_SLOTS, INT64, DOT_PRECISION)
        probs = tl.exp2(qk - lse[:, None])  # 0 where masked (-inf) and for padding rows (lse = +inf)
        per_head = tl.dot(select, probs, input_precision="tf32x3") / num_window  # [BLOCK_G, BLOCK_N]: means
        if REDUCE_MAX:  # probabilities are >= 0: the selector's empty rows (0) never win
            score = tl.max(per_head, 0)
        else:
            score = tl.sum(per_head, 0) / GROUP
        tl.store(Out + h * stride_oh + pos, score, mask=pos < hi)


_KERNELS = (_window_lse_kernel, _window_scores_kernel, _window_logits, _window_rows, load_rows)


def window_attention(window_q: torch.Tensor, keys: torch.Tensor, *, slots: torch.Tensor | None = None,
                     row_lse: torch.Tensor | None = None, reduction: str = "mean", scale: float | None = None,
                     block_n: int | None = None, num_splits: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None) -> torch.Tensor:
    """The window's softmax attention to each entry, averaged over the window, reduced over each kv head's q
    heads: float32 `[Hkv, T]` (`core.decode.window_attention` is the oracle).

    window_q: `[W, Hq, D]` the newest W queries (positions T-W .. T-1); keys: `[T, Hkv, D]`, or with `slots`
    (int32/int64 `[T]`, the pool row of each entry) the pool `[rows, Hkv, D]`; same dtype as window_q.
    row_lse: float32 `[W, Hq]`, each window query's natural log-sum-exp over the keys it sees (with this `scale`),
    e.g. from the decode step that computed it: pass 1 is skipped. Not checked (no host sync): a wrong one scales
    that row's probabilities.
    reduction: over the q heads of a kv head, "mean" or "max". block_n / num_splits / num_warps / num_stages:
    launch overrides (tests, sweeps: `kernels/tune.py --event`); the defaults depend on shapes only.
    """
    _check_inputs(window_q, keys, slots, row_lse, reduction)
    num_window, num_q_heads, head_dim = window_q.shape
    num_kv_heads = keys.shape[1]
    num_tokens = keys.shape[0] if slots is None else slots.shape[0]
    group = num_q_heads // num_kv_heads
    device = window_q.device
    check_kernel_device(window_q, keys, *(() if slots is None else (slots,)), kernels=_KERNELS)
    out = torch.empty(num_kv_heads, num_tokens, dtype=torch.float32, device=device)
    block_r, block_d, default_block_n = _tile_sizes(group * num_window, head_dim)
    block_n = block_n or default_block_n
    tiles = -(-num_tokens // block_n)
    if num_splits is None:
        num_splits = window_num_splits(num_kv_heads, tiles, device)
    if not 1 <= num_splits <= tiles:
        raise ValueError(f"num_splits={num_splits} must be in [1, {tiles}] (key tiles of {block_n})")
    chunk = -(-tiles // num_splits) * block_n
    qk_scale = _qk_scale(head_dim, scale)
    slot_arg = keys if slots is None else slots  # never read without USE_SLOTS
    common = _pass_constants(window_q, keys, slots, group, block_r, head_dim, block_d, block_n, num_warps)
    if num_stages is not None:
        common["num_stages"] = num_stages
    strides = (window_q.stride(0), window_q.stride(1), keys.stride(0), keys.stride(1))
    grid = (num_kv_heads, num_splits)
    if row_lse is None:
        part_m, part_l = _first_pass(window_q, keys, slot_arg, num_tokens, chunk, num_splits, qk_scale, common)
    else:
        part_m = part_l = row_lse  # never read with GIVEN_LSE
    lse_arg = out if row_lse is None else row_lse  # never read without GIVEN_LSE
    _window_scores_kernel[grid](window_q, keys, slot_arg, part_m, part_l, lse_arg, out, *strides, out.stride(0),
                                lse_arg.stride(0), num_tokens, num_window, chunk, num_splits, qk_scale,
                                BLOCK_S=max(2, next_power_of_two(num_splits)),
                                BLOCK_G=max(16, next_power_of_two(group)), REDUCE_MAX=reduction == "max",
                                GIVEN_LSE=row_lse is not None, **common)
    return out


def window_log_sum_exp(window_q: torch.Tensor, keys: torch.Tensor, *, slots: torch.Tensor | None = None,
                       scale: float | None = None) -> torch.Tensor:
    """Each window query's natural log-sum-exp over the keys it sees (query w at position T - W + w sees keys
    0 .. T - W + w): float32 `[W, Hq]`, pass 1 alone. What `window_attention(row_lse=...)` takes: a prompt's last
    chunk computes it for the queries it leaves in the observation window, so the event reads the keys once.
    Inputs as `window_attention`."""
    _check_inputs(window_q, keys, slots, None, "mean")
    num_window, num_q_heads, head_dim = window_q.shape
    num_kv_heads = keys.shape[1]
    num_tokens = keys.shape[0] if slots is None else slots.shape[0]
    group = num_q_heads // num_kv_heads
    check_kernel_device(window_q, keys, *(() if slots is None else (slots,)), kernels=_KERNELS)
    block_r, block_d, block_n = _tile_sizes(group * num_window, head_dim)
    tiles = -(-num_tokens // block_n)
    num_splits = window_num_splits(num_kv_heads, tiles, window_q.device)
    chunk = -(-tiles // num_splits) * block_n
    part_m, part_l = _first_pass(window_q, keys, keys if slots is None else slots, num_tokens, chunk, num_splits,
                                 _qk_scale(head_dim, scale),
                                 _pass_constants(window_q, keys, slots, group, block_r, head_dim, block_d, block_n,
                                                 None))
    # merge the splits (base 2), then natural log; rows r = g * W + w of kv head h are q head h * G + g
    rows = part_m[:, :group * num_window]
    lse = torch.logsumexp((rows + torch.log2(part_l[:, :group * num_window])) * math.log(2.0), dim=-1)
    return lse.reshape(num_kv_heads, group, num_window).reshape(num_q_heads, num_window).t().contiguous()


def _first_pass(window_q: torch.Tensor, keys: torch.Tensor, slot_arg: torch.Tensor, num_tokens: int, chunk: int,
                num_splits: int, qk_scale: float, common: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1: each split's partial (max, sum) of every window row, float32 `[Hkv, BLOCK_R, splits]` twice."""
    num_kv_heads = keys.shape[1]
    part_m = torch.empty(num_kv_heads, common["BLOCK_R"], num_splits, dtype=torch.float32, device=window_q.device)
    part_l = torch.empty_like(part_m)
    _window_lse_kernel[(num_kv_heads, num_splits)](
        window_q, keys, slot_arg, part_m, part_l, window_q.stride(0), window_q.stride(1), keys.stride(0),
        keys.stride(1), num_tokens, window_q.shape[0], chunk, num_splits, qk_scale, **common)
    return part_m, part_l


def _tile_sizes(rows: int, head_dim: int) -> tuple[int, int, int]:
    """Both passes' tiles: (BLOCK_R window rows, BLOCK_D, the default BLOCK_N keys)."""
    block_r = max(16, next_power_of_two(rows))
    block_d = max(16, next_power_of_two(head_dim))
    return block_r, block_d, 32 if interpret_mode() or block_r * block_d > 128 * 128 else 64


def _qk_scale(head_dim: int, scale: float | None) -> float:
    return (1.0 / math.sqrt(head_dim) if scale is None else float(scale)) * LOG2E


def _pass_constants(window_q: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor | None, group: int, block_r: int,
                    head_dim: int, block_d: int, block_n: int, num_warps: int | None) -> dict:
    """The constexprs and warps both passes are launched with."""
    return dict(GROUP=group, BLOCK_R=block_r, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=block_n,
                USE_SLOTS=slots is not None, INT64=needs_int64(keys), DOT_PRECISION=dot_precision(window_q.dtype),
                num_warps=num_warps or (8 if block_r >= 128 and not interpret_mode() else 4))


def window_num_splits(num_kv_heads: int, tiles: int, device: torch.device) -> int:
    """The default splits of each kv head's keys (`tiles` key tiles): about two waves of programs, each walking
    at least two key tiles. Shapes only (no host sync)."""
    return max(1, min(-(-2 * device_parallelism(device) // num_kv_heads), -(-tiles // 2)))


def _check_inputs(window_q: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor | None,
                  row_lse: torch.Tensor | None, reduction: str) -> None:
    if window_q.dim() != 3 or keys.dim() != 3:
        raise ValueError(f"window_q must be [W, Hq, D] and keys [T, Hkv, D], got {tuple(window_q.shape)} and "
                         f"{tuple(keys.shape)}")
    for name, tensor in (("window_q", window_q), ("keys", keys)):
        check_dtype(name, tensor)
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got {tensor.stride()}")
    if keys.dtype != window_q.dtype:
        raise ValueError(f"window_q and keys must share one dtype, got {window_q.dtype} and {keys.dtype}")
    num_window, num_q_heads, head_dim = window_q.shape
    if keys.shape[2] != head_dim or not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim must match (1..256): window_q {head_dim}, keys {keys.shape[2]}")
    if keys.shape[1] < 1 or num_q_heads % keys.shape[1]:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={keys.shape[1]}")
    if slots is not None and (slots.dim() != 1 or slots.dtype not in (torch.int32, torch.int64)
                              or not slots.is_contiguous()):
        raise ValueError(f"slots must be a contiguous int32/int64 [T] tensor, got {slots.dtype} {tuple(slots.shape)}")
    if row_lse is not None and (row_lse.shape != (num_window, num_q_heads) or row_lse.dtype != torch.float32
                                or row_lse.device != window_q.device or row_lse.stride(1) != 1):
        raise ValueError(f"row_lse must be float32 [{num_window}, {num_q_heads}] with contiguous rows on "
                         f"{window_q.device}, got {row_lse.dtype} {tuple(row_lse.shape)} on {row_lse.device}")
    num_tokens = keys.shape[0] if slots is None else slots.shape[0]
    if not 1 <= num_window <= num_tokens:
        raise ValueError(f"observation window of {num_window} queries over {num_tokens} entries")
    if reduction not in GQA_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GQA_REDUCTIONS}, got {reduction!r}")

"""Torch execution paths behind the HF front door: block-sparse prefill and masked decode, on SDPA.

Tensors here are head-major, as HF passes them to an attention function: q `[Hq, L, D]`, k/v `[Hkv, T, D]` (one
sequence; the batch dimension is handled by the caller). GQA is native: queries are viewed as `[Hkv, G, L, D]` and
each kv head's keys, values and mask broadcast over its `G = Hq / Hkv` query heads (never copied per query head).
"""

from __future__ import annotations

import importlib
import types

import torch
import torch.nn.functional as F

from ..gather import block_token_positions
from ..plan import PrefillPlan

KERNEL_MODULE = "entropyinfer_sgl.kernels"


def _grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                  scale: float) -> torch.Tensor:
    """q [Hq, L, D], k/v [Hkv, T, D], bool mask [Hkv, L, T] -> [Hq, L, D]; keys and mask broadcast over each group."""
    num_q_heads, seq_len, head_dim = q.shape
    num_kv_heads = k.shape[0]
    grouped = q.reshape(num_kv_heads, num_q_heads // num_kv_heads, seq_len, head_dim)
    out = F.scaled_dot_product_attention(grouped, k[:, None], v[:, None], attn_mask=mask[:, None], scale=scale)
    return out.reshape(num_q_heads, seq_len, head_dim)


def sparse_prefill_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan, *,
                        scale: float) -> torch.Tensor:
    """Block-sparse causal prefill of one sequence through SDPA, computing only the plan's blocks.

    q: [Hq, L, D]; k, v: [Hkv, L, D] (head-major, post-RoPE). Returns [Hq, L, D] in q's dtype.

    Segments before the first sparse one run as one dense causal SDPA call. Every later segment gathers, per kv
    head, the keys of its plan row (selected earlier blocks + its own blocks), padded to the longest row of the
    segment, and runs one SDPA call over all kv heads with a boolean mask (row padding and causality inside the
    segment). Work is proportional to the plan's density, unlike a dense L x L mask. Matches
    `sparse_prefill_reference` (tests/hf/test_attention.py).
    """
    num_q_heads, seq_len, head_dim = q.shape
    num_kv_heads = k.shape[0]
    group = num_q_heads // num_kv_heads
    segment, block = plan.segment_size_tokens, plan.block_size_tokens
    num_segments = plan.num_segments
    out = q.new_empty(num_q_heads, seq_len, head_dim)

    sparse = plan.sparse_segments.cpu()
    first_sparse = int(sparse.nonzero()[0, 0]) if bool(sparse.any()) else num_segments
    dense_end = min(first_sparse * segment, seq_len)
    if dense_end > 0:  # the dense prefix: queries and keys both start at 0, so top-left causal is right
        out[:, :dense_end] = F.scaled_dot_product_attention(
            q[None, :, :dense_end], k[None, :, :dense_end], v[None, :, :dense_end], is_causal=True, scale=scale,
            enable_gqa=group > 1)[0]

    indptr = plan.indptr.cpu().to(torch.int64).tolist()
    indices = plan.indices.to(device=q.device, dtype=torch.int64)
    heads = torch.arange(num_kv_heads, device=q.device)[:, None]
    for s in range(first_sparse, num_segments):
        q0, q1 = s * segment, min((s + 1) * segment, seq_len)
        rows = [h * num_segments + s for h in range(num_kv_heads)]
        blocks = [indices[indptr[r]: indptr[r + 1]] for r in rows]
        own_end_block = -(-q1 // block)
        query_pos = torch.arange(q0, q1, device=q.device)
        if all(b.numel() == own_end_block for b in blocks):  # a dense row for every head: contiguous keys
            keys, values = k[:, :q1], v[:, :q1]
            mask = (torch.arange(q1, device=q.device)[None, :] <= query_pos[:, None])[None].expand(num_kv_heads, -1, -1)
        else:
            token, present = block_token_positions(blocks, block_size_tokens=block, seq_len_tokens=seq_len,
                                                   device=q.device)
            keys, values = k[heads, token], v[heads, token]  # [Hkv, width, D]
            mask = present[:, None, :] & (token[:, None, :] <= query_pos[None, :, None])  # [Hkv, Sq, width]
        out[:, q0:q1] = _grouped_sdpa(q[:, q0:q1], keys, values, mask, scale=scale)
    return out


def masked_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, *,
                          scale: float) -> torch.Tensor:
    """Attention of the L newest tokens over a (possibly per-head compressed) cache, through SDPA.

    q: [Hq, L, D] the queries of the last L cache entries; k, v: [Hkv, T, D], the last L rows being those
    tokens; valid: bool [Hkv, T] the entries each kv head holds (None = all). Query i sees every valid entry
    before the new tokens, and new token j <= i. Returns [Hq, L, D].
    """
    num_q_heads, seq_len, _ = q.shape
    num_kv_heads, num_keys, _ = k.shape
    if valid is None and seq_len == 1:  # an uncompressed cache: every entry is visible, no mask needed
        return F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale,
                                              enable_gqa=num_q_heads != num_kv_heads)[0]
    past = num_keys - seq_len
    key_index = torch.arange(num_keys, device=q.device)
    causal = key_index[None, :] <= past + torch.arange(seq_len, device=q.device)[:, None]  # [L, T]
    mask = causal[None].expand(num_kv_heads, -1, -1)
    if valid is not None:
        mask = mask & valid[:, None, :]
    return _grouped_sdpa(q, k, v, mask, scale=scale)


def load_prefill_kernel():
    """The CUDA sparse prefill kernel `entropyinfer_sgl.kernels.sparse_prefill`, or None when it is unavailable.

    Called as `sparse_prefill(q [L, Hq, D], k, v [L, Hkv, D], plan, scale=...) -> (out [L, Hq, D], lse)`, the
    signature of `sparse_prefill_reference`. Imported lazily (only for CUDA tensors); any import failure falls
    back to `sparse_prefill_sdpa`.
    """
    try:
        module = importlib.import_module(KERNEL_MODULE)
    except Exception:  # noqa: BLE001 - missing triton, no GPU driver, not written yet: all mean "fall back"
        return None
    kernel = getattr(module, "sparse_prefill", None)
    if isinstance(kernel, types.ModuleType):  # the submodule rather than the function it defines
        kernel = getattr(kernel, "sparse_prefill", None)
    return kernel if callable(kernel) else None

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

from ..core.plan import PrefillPlan
from ..runtime.sparse_attention import sparse_chunk_attention

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
    """Block-sparse causal prefill of one sequence through SDPA: q [Hq, L, D]; k, v [Hkv, L, D] (head-major, as HF
    passes them) -> [Hq, L, D] in q's dtype. The runtime's `sparse_chunk_attention` (token-major, the same routine
    as the SGLang reference path) with no prefix; matches `sparse_prefill_reference` (tests/hf/test_hf_attention.py).
    """
    out = sparse_chunk_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), plan, prefix_len=0,
                                 scale=scale)
    return out.transpose(0, 1)


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


def sliding_window_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_tokens: int, *,
                                  scale: float, chunk_tokens: int = 1024) -> torch.Tensor:
    """Dense causal attention within a sliding window, as transformers' sliding-window layers compute it.

    q: [Hq, L, D] the queries of the last L of the T keys; k, v: [Hkv, T, D] contiguous newest tokens (a full
    prompt, or transformers' `DynamicSlidingWindowLayer` contents followed by the new tokens). Query i, at key index
    p = T - L + i, sees keys j with p - window_tokens < j <= p (transformers' `sliding_window_overlay`:
    kv_idx > q_idx - sliding_window, so a token and its window_tokens - 1 predecessors). Queries go in chunks of
    `chunk_tokens`, each over its own key span, so a long prompt never builds an [L, T] mask. Returns [Hq, L, D].
    """
    num_q_heads, seq_len, _ = q.shape
    num_keys = k.shape[1]
    past = num_keys - seq_len
    gqa = num_q_heads != k.shape[0]
    outs = []
    for start in range(0, seq_len, chunk_tokens):
        stop = min(start + chunk_tokens, seq_len)
        first = max(0, past + start - window_tokens + 1)
        last = past + stop
        query_pos = torch.arange(past + start, past + stop, device=q.device)[:, None]
        key_pos = torch.arange(first, last, device=q.device)[None, :]
        mask = (key_pos <= query_pos) & (key_pos > query_pos - window_tokens)
        outs.append(F.scaled_dot_product_attention(q[None, :, start:stop], k[None, :, first:last],
                                                   v[None, :, first:last], attn_mask=mask[None, None], scale=scale,
                                                   enable_gqa=gqa)[0])
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


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

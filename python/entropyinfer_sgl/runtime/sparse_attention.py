"""Block-sparse prefill attention through torch SDPA over gathered keys: the SGLang backend's reference path (a
chunk after a prefix) and `hf.enable`'s CPU path (a whole prompt) run this one routine.

No engine import: the tests run it against the float32 oracle `entropyinfer_sgl.core.reference.sparse_prefill_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.gather import block_token_positions
from ..core.plan import PrefillPlan


# ---------------------------------------------------------------------------------------------------------
def sparse_chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan, *,
                           prefix_len: int, scale: float) -> torch.Tensor:
    """Block-sparse causal attention of one chunk's queries through the plan, via SDPA.

    q: `[Lc, Hq, D]` queries of positions prefix_len .. T-1; k, v: `[T, Hkv, D]` keys/values of positions 0 .. T-1;
    plan: the plan of the whole sequence [0, T) (only the rows of the chunk's segments are read).
    Returns `[Lc, Hq, D]` in q's dtype. Equals the chunk's rows of `sparse_prefill_reference(q_all, k, v, plan)`.
    """
    seq_len, num_kv_heads, head_dim = k.shape
    chunk_len, num_q_heads, _ = q.shape
    group = num_q_heads // num_kv_heads
    segment, block = plan.segment_size_tokens, plan.block_size_tokens
    num_segments = plan.num_segments
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # head-major views
    out = q.new_empty(num_q_heads, chunk_len, head_dim)
    sparse = plan.sparse_segments.cpu()
    indptr = plan.indptr.cpu().to(torch.int64).tolist()
    indices = plan.indices.to(device=q.device, dtype=torch.int64)
    heads = torch.arange(num_kv_heads, device=q.device)[:, None]

    def dense_rows(q0: int, q1: int) -> None:  # queries q0..q1-1 over every earlier key: one SDPA call
        if q0 == 0:  # queries and keys both start at 0: top-left causal is exact (and needs no mask)
            mask, causal = None, True
        else:
            query_pos = torch.arange(q0, q1, device=q.device)
            mask, causal = torch.arange(q1, device=q.device)[None, :] <= query_pos[:, None], False
        out[:, q0 - prefix_len:q1 - prefix_len] = F.scaled_dot_product_attention(
            qh[None, :, q0 - prefix_len:q1 - prefix_len], kh[None, :, :q1], vh[None, :, :q1], attn_mask=mask,
            is_causal=causal, scale=scale, enable_gqa=group > 1)[0]

    s = prefix_len // segment
    run_start = None
    while s < num_segments:
        q0, q1 = max(s * segment, prefix_len), min((s + 1) * segment, seq_len)
        rows = [h * num_segments + s for h in range(num_kv_heads)]
        blocks = [indices[indptr[r]: indptr[r + 1]] for r in rows]
        own_end_block = -(-q1 // block)
        if not bool(sparse[s]) or all(b.numel() == own_end_block for b in blocks):
            run_start = q0 if run_start is None else run_start  # extend a run of dense segments
            s += 1
            continue
        if run_start is not None:
            dense_rows(run_start, q0)
            run_start = None
        token, present = block_token_positions(blocks, block_size_tokens=block, seq_len_tokens=seq_len,
                                               device=q.device)
        keys, values = kh[heads, token], vh[heads, token]  # [Hkv, width, D]
        query_pos = torch.arange(q0, q1, device=q.device)
        mask = present[:, None, :] & (token[:, None, :] <= query_pos[None, :, None])  # [Hkv, Sq, width]
        grouped = qh[:, q0 - prefix_len:q1 - prefix_len].reshape(num_kv_heads, group, q1 - q0, head_dim)
        out[:, q0 - prefix_len:q1 - prefix_len] = F.scaled_dot_product_attention(
            grouped, keys[:, None], values[:, None], attn_mask=mask[:, None], scale=scale,
        ).reshape(num_q_heads, q1 - q0, head_dim)
        s += 1
    if run_start is not None:
        dense_rows(run_start, seq_len)
    return out.transpose(0, 1)

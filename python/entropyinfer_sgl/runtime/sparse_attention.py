"""Sparse attention through torch SDPA over gathered keys. Prefill: the SGLang backend's reference path (a chunk
after a prefix) and `hf.enable`'s CPU path (a whole prompt) run `sparse_chunk_attention`. Decode over a compressed
cache's position tables: `compressed_decode_attention` (the SGLang backend's reference path).

No engine import: the tests run them against the float32 oracles of `entropyinfer_sgl.core.reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.plan import PrefillPlan

# Sparse segments attended in one SDPA call: few calls (on a busy CPU every small op pays thread start-up and
# Python overhead), bounded memory (the math path holds [Hkv, n, group, segment, width] scores).
SEGMENTS_PER_CALL = 8
# Rows packed into one gathered call are at least this fraction of its longest row (padding is computed, then
# masked away: at 2k tokens the rows of a chunk range 80-208 blocks, and one call padded them all to the longest)
PACK_FILL = 0.8


def sparse_chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan, *,
                           prefix_len: int, scale: float) -> torch.Tensor:
    """Block-sparse causal attention of one chunk's queries through the plan, via SDPA.

    q: `[Lc, Hq, D]` queries of positions prefix_len .. T-1; k, v: `[T, Hkv, D]` keys/values of positions 0 .. T-1;
    plan: the plan of the whole sequence [0, T) (only the rows of the chunk's segments are read).
    Returns `[Lc, Hq, D]` in q's dtype. Equals the chunk's rows of `sparse_prefill_reference(q_all, k, v, plan)`.

    Runs of segments whose rows list every visible block go through one causal SDPA call each; the other
    segments' rows (kv head x segment) are gathered, sorted by length and attended in calls of rows of similar
    length (`PACK_FILL`), at most `SEGMENTS_PER_CALL` segments' worth per call (a segment the chunk starts inside,
    or the sequence ends inside, alone: it has fewer queries).
    """
    seq_len, num_kv_heads, head_dim = k.shape
    chunk_len, num_q_heads, _ = q.shape
    group = num_q_heads // num_kv_heads
    segment, block = plan.segment_size_tokens, plan.block_size_tokens
    num_segments = plan.num_segments
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # head-major views
    out = q.new_empty(num_q_heads, chunk_len, head_dim)
    first = prefix_len // segment
    # host copies of the plan's row structure (small: one entry per kv head and segment)
    indptr = plan.indptr.cpu().to(torch.int64)
    row_start = indptr[:-1].view(num_kv_heads, num_segments)
    row_len = (indptr[1:] - indptr[:-1]).view(num_kv_heads, num_segments)
    seg = torch.arange(num_segments)
    own_end_block = torch.clamp(((seg + 1) * segment).clamp(max=seq_len) + block - 1, min=0) // block
    gathered = plan.sparse_segments.cpu() & ~(row_len == own_end_block[None, :]).all(dim=0)
    gathered[:first] = False
    indices = plan.indices.to(device=q.device, dtype=torch.int64)
    num_blocks_total = -(-seq_len // block)
    k_rows, v_rows, row_of = _flat_key_rows(k, v)

    def dense_rows(q0: int, q1: int) -> None:  # queries q0..q1-1 over every earlier key: one SDPA call
        if q0 == 0:  # queries and keys both start at 0: top-left causal is exact (and needs no mask)
            mask, causal = None, True
        else:
            query_pos = torch.arange(q0, q1, device=q.device)
            mask, causal = torch.arange(q1, device=q.device)[None, :] <= query_pos[:, None], False
        out[:, q0 - prefix_len:q1 - prefix_len] = F.scaled_dot_product_attention(
            qh[None, :, q0 - prefix_len:q1 - prefix_len], kh[None, :, :q1], vh[None, :, :q1], attn_mask=mask,
            is_causal=causal, scale=scale, enable_gqa=group > 1)[0]

    def gathered_rows(heads: torch.Tensor, segments: torch.Tensor) -> None:
        """Rows (kv head `heads[i]`, segment `segments[i]`), segments with the same query range within each."""
        q0 = max(int(segments[0]) * segment, prefix_len)
        q1 = min((int(segments[0]) + 1) * segment, seq_len)
        n, per_segment = len(segments), q1 - q0
        lengths, starts = row_len[heads, segments], row_start[heads, segments]  # [n]
        slot = torch.arange(int(lengths.max()))
        valid = slot < lengths[:, None]  # [n, width in blocks]
        where = torch.where(valid, starts[:, None] + slot, 0).to(q.device)
        blocks = torch.where(valid.to(q.device), indices[where], num_blocks_total)  # padding: a block past the end
        token = (blocks[..., None] * block + torch.arange(block, device=q.device)).flatten(-2)  # [n, width]
        query_pos = segments.to(q.device)[:, None] * segment + torch.arange(
            q0 - int(segments[0]) * segment, q1 - int(segments[0]) * segment, device=q.device)  # [n, Sq]
        # every query is before seq_len, so padding and positions past the end compare False: one pass
        mask = token[:, None, :] <= query_pos[:, :, None]  # [n, Sq, width]
        on_device = heads.to(q.device)
        flat_rows = row_of(token.clamp_(max=seq_len - 1), on_device[:, None]).flatten()
        width = token.shape[-1]
        keys = k_rows.index_select(0, flat_rows).view(n, 1, width, head_dim)
        values = v_rows.index_select(0, flat_rows).view(n, 1, width, head_dim)
        rows = query_pos - prefix_len  # [n, Sq] rows of the chunk
        grouped = q.unflatten(1, (num_kv_heads, group))[rows, on_device[:, None]]  # [n, Sq, G, D]
        # 4-d with (kv head, segment) as the batch: 5-d inputs take a slower SDPA path on CPU
        attended = F.scaled_dot_product_attention(grouped.transpose(1, 2).contiguous(), keys, values,
                                                  attn_mask=mask[:, None], scale=scale)  # [n, G, Sq, D]
        out.view(num_kv_heads, group, chunk_len, head_dim).permute(0, 2, 1, 3)[on_device[:, None], rows] = (
            attended.transpose(1, 2))

    def gathered_segments(segments: list[int]) -> None:
        """The rows of these segments (same query range within each), every kv head, packed by row length: one
        SDPA call pads every row to its longest and computes the padding before masking it away, so rows of
        similar lengths go together (`PACK_FILL`). The padding is masked: it changes a row's float32 result by
        rounding only (a wider call sums in other tiles), as the batch a row was padded in always did."""
        heads = torch.arange(num_kv_heads).repeat_interleave(len(segments))
        segs = torch.tensor(segments).repeat(num_kv_heads)
        order = torch.argsort(row_len[heads, segs], descending=True, stable=True)
        heads, segs = heads[order], segs[order]
        lengths = row_len[heads, segs].tolist()
        start = 0
        for end in range(1, len(lengths) + 1):
            if end == len(lengths) or lengths[end] < PACK_FILL * lengths[start] \
                    or end - start == num_kv_heads * SEGMENTS_PER_CALL:
                gathered_rows(heads[start:end], segs[start:end])
                start = end

    run_start = None  # start of a run of dense segments
    batch: list[int] = []
    for s in range(first, num_segments):
        q0 = max(s * segment, prefix_len)
        if not bool(gathered[s]):
            run_start = q0 if run_start is None else run_start
            continue
        if run_start is not None:
            dense_rows(run_start, q0)
            run_start = None
        if q0 > s * segment or (s + 1) * segment > seq_len:  # the chunk starts (or the sequence ends) inside this
            gathered_segments([s])  # segment: fewer queries, a call of its own
            continue
        batch.append(s)
    if batch:
        gathered_segments(batch)
    if run_start is not None:
        dense_rows(run_start, seq_len)
    return out.transpose(0, 1)


def _flat_key_rows(k: torch.Tensor, v: torch.Tensor):
    """k, v `[T, Hkv, D]` as `[T * Hkv, D]` rows and the row of (token, kv head), without a copy when both are
    token-major (the SGLang path) or both head-major (HF passes `[Hkv, T, D]` transposed) in memory, so that
    gathering a row set is contiguous row copies (`index_select`) instead of a strided gather; other layouts are
    copied once per call."""
    seq_len, num_kv_heads, head_dim = k.shape
    if all(not t.is_contiguous() and t.transpose(0, 1).is_contiguous() for t in (k, v)):
        return (k.transpose(0, 1).reshape(-1, head_dim), v.transpose(0, 1).reshape(-1, head_dim),
                lambda token, head: head * seq_len + token)
    return k.reshape(-1, head_dim), v.reshape(-1, head_dim), lambda token, head: token * num_kv_heads + head


def compressed_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                kept_indices: torch.Tensor, kept_lengths: torch.Tensor, *, scale: float) -> torch.Tensor:
    """One decode step over a compressed cache, every kv head in one SDPA call, in float32 (the SGLang backend's
    reference path; equals `core.reference.compressed_decode_reference`, which loops over kv heads).

    q: `[Hq, D]`; k_cache, v_cache: `[T, Hkv, D]` token-major; kept_indices: int `[Hkv, width]` cache rows per kv
    head (entries past `kept_lengths` are padding, any valid row); kept_lengths: `[Hkv]`. Returns float32 `[Hq, D]`.
    """
    num_q_heads, head_dim = q.shape
    num_kv_heads, width = kept_indices.shape
    heads = torch.arange(num_kv_heads, device=q.device)[:, None]
    rows = kept_indices.to(device=q.device, dtype=torch.int64)
    keys, values = k_cache[rows, heads].float(), v_cache[rows, heads].float()  # [Hkv, width, D]
    valid = torch.arange(width, device=q.device)[None, :] < kept_lengths.to(q.device)[:, None]  # [Hkv, width]
    grouped = q.float().view(num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=valid[:, None, :], scale=scale)
    return out.reshape(num_q_heads, head_dim)

"""Float32 torch references: the oracles every attention kernel is tested against.

Deliberately simple (dense masks, one kv group at a time): never change a reference to match a kernel.
LSE is the natural-log sum of exp of the scaled scores over the keys a query sees.
"""

from __future__ import annotations

import math

import torch

from .plan import PrefillPlan
from .validation import check_attention_inputs, require


def plan_block_mask(plan: PrefillPlan) -> torch.Tensor:
    """bool [Hkv, nseg, num_key_blocks]: the plan's CSR as a dense (segment, key block) mask."""
    nseg, nkb = plan.num_segments, plan.num_key_blocks
    rows = torch.repeat_interleave(torch.arange(plan.num_kv_heads * nseg),
                                   (plan.indptr[1:] - plan.indptr[:-1]).cpu().to(torch.int64))
    mask = torch.zeros(plan.num_kv_heads * nseg, nkb, dtype=torch.bool)
    nnz = int(plan.indptr[-1])  # indices may carry unused slack past nnz (device plans)
    mask[rows, plan.indices[:nnz].cpu().to(torch.int64)] = True
    return mask.view(plan.num_kv_heads, nseg, nkb)


def plan_token_mask(plan: PrefillPlan) -> torch.Tensor:
    """bool [Hkv, L, L]: query token i may see key token j through kv head h (plan rows and causality)."""
    seq = torch.arange(plan.seq_len_tokens)
    blocks = plan_block_mask(plan)
    mask = blocks[:, seq // plan.segment_size_tokens][:, :, seq // plan.block_size_tokens]
    return mask & (seq[None, :, None] >= seq[None, None, :])


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float):
    """q [L, G, D], k/v [L, D], mask [L, L] -> out [L, G, D] float32, lse [L, G] float32."""
    scores = torch.einsum("igd,jd->gij", q.float(), k.float()) * scale
    scores = scores.masked_fill(~mask[None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [G, L]
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("gij,jd->igd", probs, v.float())
    return out, lse.transpose(0, 1)


def sparse_prefill_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan, *,
                             scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal prefill of one sequence, computed densely with a mask, in float32.

    q: [L, Hq, D]; k, v: [L, Hkv, D]; query head h uses kv head h // (Hq / Hkv) and that kv head's plan rows.
    Returns out float32 [L, Hq, D] and lse float32 [L, Hq].
    """
    seq_len, num_q_heads, num_kv_heads, head_dim = check_attention_inputs(q, k, v)
    require(plan.seq_len_tokens == seq_len, f"plan is for {plan.seq_len_tokens} tokens, q has {seq_len}")
    require(plan.num_kv_heads == num_kv_heads, f"plan has {plan.num_kv_heads} kv heads, k has {num_kv_heads}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = num_q_heads // num_kv_heads
    token_mask = plan_token_mask(plan).to(q.device)
    out = torch.empty(seq_len, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(seq_len, num_q_heads, dtype=torch.float32, device=q.device)
    for h in range(num_kv_heads):
        heads = slice(h * group, (h + 1) * group)
        out[:, heads], lse[:, heads] = _masked_attention(q[:, heads], k[:, h], v[:, h], token_mask[h], scale)
    return out, lse


def dense_prefill_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention of one sequence in float32: out [L, Hq, D], lse [L, Hq]."""
    seq_len, num_q_heads, num_kv_heads, head_dim = check_attention_inputs(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = num_q_heads // num_kv_heads
    seq = torch.arange(seq_len, device=q.device)
    causal = seq[:, None] >= seq[None, :]
    out = torch.empty(seq_len, num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(seq_len, num_q_heads, dtype=torch.float32, device=q.device)
    for h in range(num_kv_heads):
        heads = slice(h * group, (h + 1) * group)
        out[:, heads], lse[:, heads] = _masked_attention(q[:, heads], k[:, h], v[:, h], causal, scale)
    return out, lse


def compressed_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                kept_indices: torch.Tensor, kept_lengths: torch.Tensor, *,
                                scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step over a compressed cache, per kv head, in float32.

    q: [Hq, D] the new token's queries; k_cache, v_cache: [T, Hkv, D] token-major cache (SGLang's layout);
    kept_indices: int [Hkv, max_kept] cache rows each kv head keeps (padding past `kept_lengths` is ignored);
    kept_lengths: int [Hkv]. Returns out float32 [Hq, D], lse float32 [Hq].
    """
    require(q.dim() == 2 and k_cache.dim() == 3 and v_cache.shape == k_cache.shape,
            "q must be [Hq, D] and k_cache/v_cache [T, Hkv, D]")
    num_q_heads, head_dim = q.shape
    num_tokens, num_kv_heads, _ = k_cache.shape
    require(num_q_heads % num_kv_heads == 0, f"num_q_heads={num_q_heads} is not a multiple of {num_kv_heads}")
    require(kept_indices.shape[0] == num_kv_heads and kept_lengths.shape == (num_kv_heads,),
            "kept_indices must be [Hkv, max_kept] and kept_lengths [Hkv]")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = num_q_heads // num_kv_heads
    out = torch.empty(num_q_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(num_q_heads, dtype=torch.float32, device=q.device)
    for h in range(num_kv_heads):
        n = int(kept_lengths[h])
        rows = kept_indices[h, :n].to(torch.int64)
        require(n == 0 or (int(rows.min()) >= 0 and int(rows.max()) < num_tokens), "kept index out of range")
        keys, values = k_cache[rows, h].float(), v_cache[rows, h].float()
        scores = q[h * group:(h + 1) * group].float() @ keys.T * scale  # [G, n]
        lse_h = torch.logsumexp(scores, dim=-1)
        out[h * group:(h + 1) * group] = torch.exp(scores - lse_h[:, None]) @ values
        lse[h * group:(h + 1) * group] = lse_h
    return out, lse

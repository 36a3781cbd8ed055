"""The prototype's prefill profiling, transcribed from SHA-4096/EntropyInfer@0bc08ff `entropy_infer/ops_cuda.py`
(`cache_profilling`, ent_based branch) with batch size 1 and `repeat_kv` inlined; the independent oracle for
`profile_prefill(config=paper())`. Kept deliberately close to the original, including its quirks."""

import torch
import torch.nn.functional as F


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def prototype_profile(query_states, key_states, block_size=8, segment_size=512, e_t=1e-5, delta_t=0.4,
                      alpha=0.5, base_budget=2048):
    query_states = query_states[None]
    key_states = key_states[None]
    bsz, seqlen, num_heads, head_dim = query_states.shape
    num_heads_k = key_states.size(-2)
    num_key_value_groups = num_heads // num_heads_k
    nrep = segment_size // block_size
    num_segments = (seqlen + segment_size - 1) // segment_size
    pool_len = (num_segments - 1) * segment_size
    num_blocks = pool_len // block_size
    num_segments_pooled = pool_len // segment_size
    num_segments_all = num_segments_pooled + 1
    last_query_states = query_states[:, pool_len:]
    query_states = query_states[:, :pool_len]
    key_states = key_states[:, :pool_len]
    query_states = query_states.transpose(1, 2).reshape(bsz, num_heads, pool_len // segment_size, segment_size, head_dim)
    last_query_states = last_query_states.transpose(1, 2).reshape(bsz, num_heads, 1, seqlen - pool_len, head_dim)
    key_states = key_states.transpose(1, 2)
    key_states = repeat_kv(key_states, num_key_value_groups)
    key_states = key_states.reshape(bsz, num_heads, pool_len // block_size, block_size, head_dim)
    layer_max_q = query_states.max(dim=-2).values
    layer_max_k = key_states.max(dim=-2).values
    layer_min_q = query_states.min(dim=-2).values
    layer_min_k = key_states.min(dim=-2).values
    last_max_q = last_query_states.max(dim=-2).values
    last_min_q = last_query_states.min(dim=-2).values
    layer_max_q = torch.cat([layer_max_q, last_max_q], dim=-2)
    layer_min_q = torch.cat([layer_min_q, last_min_q], dim=-2)
    q_block_len = layer_max_q.size(-2)
    k_block_len = layer_max_k.size(-2)
    qq = torch.cat([layer_max_q, layer_min_q], dim=-2)
    attn_weights_max = torch.matmul(qq, layer_max_k.transpose(2, 3)).view(bsz, num_heads, 2, q_block_len, k_block_len).mean(dim=2)
    attn_weights_min = torch.matmul(qq, layer_min_k.transpose(2, 3)).view(bsz, num_heads, 2, q_block_len, k_block_len).mean(dim=2)
    attn_weights = torch.max(attn_weights_max, attn_weights_min)
    attn_weights = attn_weights.view(bsz, num_heads_k, num_key_value_groups, num_segments_all, num_blocks).mean(dim=2)
    mask = torch.full((num_blocks + nrep, num_blocks + nrep), torch.finfo(attn_weights.dtype).min)
    mask_cond = torch.arange(mask.size(-1))
    mask.masked_fill_(mask_cond + nrep < (mask_cond + 1).view(mask.size(-1), 1), 0)
    mask = mask.view(num_segments_all, nrep, num_blocks + nrep)[:, -1, :]
    mask = mask[:, :num_blocks]
    attn_weights += mask[None, None, :, :]
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(key_states.dtype)

    attn_entropy = -torch.sum(attn_weights * torch.log(attn_weights + 1e-9), dim=-1)
    static_head_mask = (attn_entropy[:, :, 1:] < e_t).all(dim=-1)
    dynamic_head_mask = ~static_head_mask
    keep_budgets = torch.zeros_like(attn_entropy)
    keep_budgets[static_head_mask] = base_budget
    delta_entropy_ratio = torch.zeros_like(attn_entropy)
    delta_entropy_ratio[:, :, 1:] = (attn_entropy[:, :, 1:] - attn_entropy[:, :, :-1]) / (attn_entropy[:, :, :-1] + 1e-9)
    delta_entropy_ratio[:, :, 1] = delta_t
    delta_entropy_ratio = torch.clamp(delta_entropy_ratio, 0, 1 + delta_t)
    keep_budgets[:, :, 0][dynamic_head_mask] = base_budget
    for seg_idx in range(1, num_segments_all):
        keep_budgets[:, :, seg_idx][dynamic_head_mask] = keep_budgets[:, :, seg_idx - 1][dynamic_head_mask] + alpha * base_budget * (delta_entropy_ratio[:, :, seg_idx][dynamic_head_mask] - delta_t)
        keep_budgets[:, :, seg_idx][dynamic_head_mask] = torch.clamp(keep_budgets[:, :, seg_idx][dynamic_head_mask], min=base_budget, max=base_budget * 3)
    keep_counts = (keep_budgets / block_size).long()
    max_effective_blocks = num_blocks - (((seqlen % segment_size) // block_size) + 1)
    effective_blocks = torch.arange(num_segments_all) * nrep
    effective_blocks = torch.clamp(effective_blocks, max=max_effective_blocks)
    keep_counts = torch.minimum(keep_counts, effective_blocks.view(1, 1, -1))
    keep_counts[:, :, 0] = 0
    segment_topk = keep_counts.amax(dim=(0, 1))
    return {
        "block_scores": attn_weights[0],
        "entropy": attn_entropy[0],
        "rigid": static_head_mask[0],
        "budget_tokens": keep_budgets[0],
        "keep_blocks": keep_counts[0],
        "segment_topk": segment_topk,
    }

"""Profile and plan one layer on the device, with no host sync: the kernel path (`plan_prefill(backend="device")`
lands in `plan_from_scores_device`; `backend="torch"` is the oracle).

fused profiling kernel -> budget scan kernel -> keep counts -> top-k -> CSR, all as device work whose sizes are
known on the host from the config and the prompt length. Differences from the oracle path, by design:
- selection ranks blocks by (p, lower block id) through one `torch.topk` on a composite integer key, with k the
  largest budget any row can have (`max_budget_tokens / block_size_tokens`), instead of a sort per row;
- `plan.indices` is allocated at its upper bound (known on the host) and may end with unused slack;
  `plan.indptr` is exact and is what kernels read.
"""

from __future__ import annotations

import torch

from .budgets import HeadTypingState, keep_blocks
from .config import EntropyInferConfig
from .plan import PrefillPlan, plan_prefill, sparse_segment_mask
from .profile import HeadProfile
from .transfer import host_to_device


def _selection_keys(p: torch.Tensor, visible_blocks: torch.Tensor) -> torch.Tensor:
    """Integer keys ordering blocks by (p desc, block id asc); blocks a segment cannot see get -1."""
    num_blocks = p.shape[-1]
    block = torch.arange(num_blocks, device=p.device)
    if p.dtype in (torch.bfloat16, torch.float16) and num_blocks < (1 << 16):
        bits = p.view(torch.int16).to(torch.int32)  # p >= 0, so the bit pattern orders like the value
        keys = (bits << 16) | (0xFFFF - block).to(torch.int32)
    else:
        bits = p.float().view(torch.int32).to(torch.int64)
        keys = (bits << 32) | (0x7FFFFFFF - block).to(torch.int64)
    return keys.masked_fill(block[None, None, :] >= visible_blocks[None, :, None], -1)


def plan_prefill_device(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, *, layer_idx: int,
                        state: HeadTypingState | None = None,
                        prompt_len_tokens: int | None = None) -> tuple[HeadProfile, PrefillPlan]:
    """Profile and plan one layer of one sequence with kernels (CUDA, or CPU under TRITON_INTERPRET=1).

    q: [L, Hq, D], k: [L, Hkv, D] post-RoPE. `state` continues causal head typing from an earlier chunk.
    prompt_len_tokens: the whole prompt's length when this is its first chunk (`plan.sparse_segment_mask`).
    """
    from ..kernels.budget_scan import head_budgets_device
    from ..kernels.entropy_profile import block_scores_and_entropy

    seq_len = q.shape[0]
    segment, block = config.segment_size_tokens, config.block_size_tokens
    p, entropy = block_scores_and_entropy(q, k, config)
    rigid, budgets, new_state = head_budgets_device(entropy, config, state=state)
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=segment, block_size_tokens=block)
    per_head_keep = keep_blocks(budgets, **sizes, prompt_len_tokens=prompt_len_tokens)
    profile = HeadProfile(entropy=entropy, rigid=rigid, budget_tokens=budgets, keep_blocks=per_head_keep,
                          block_scores=p, typing_state=new_state, **sizes)
    return profile, plan_prefill(profile, config, layer_idx=layer_idx, backend="device",
                                 prompt_len_tokens=prompt_len_tokens)


def plan_from_scores_device(p: torch.Tensor, per_head_keep: torch.Tensor, config: EntropyInferConfig, *,
                            seq_len: int, layer_idx: int, first_segment: int = 0,
                            prompt_len_tokens: int | None = None) -> PrefillPlan:
    """The CSR plan from block scores `[H, rows, NB]` and keep counts `[H, rows]`, as device work (no host sync):
    `plan.plan_prefill`'s rules (per-head or max-over-heads keep, the length gate, own blocks causally).

    first_segment: the rows are the segments from it on; earlier segments get empty rows (a chunk after a prefix
    executes, scores and selects only its own segments); prompt_len_tokens: the whole prompt's length when
    `seq_len` is a chunk's end (`plan.sparse_segment_mask`).
    """
    segment, block = config.segment_size_tokens, config.block_size_tokens
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=segment, block_size_tokens=block)
    device = p.device
    num_heads, num_rows, num_blocks = p.shape
    num_segments = -(-seq_len // segment)
    if num_rows != num_segments - first_segment or tuple(per_head_keep.shape) != (num_heads, num_rows):
        raise ValueError(f"block scores {tuple(p.shape)} and keep counts {tuple(per_head_keep.shape)} must hold "
                         f"the {num_segments - first_segment} segments from {first_segment} on of a {seq_len}-token "
                         f"sequence")
    keep = per_head_keep if config.per_head_budgets else per_head_keep.amax(0, keepdim=True).expand_as(per_head_keep)
    sparse_host = sparse_segment_mask(seq_len, config, layer_idx=layer_idx, prompt_len_tokens=prompt_len_tokens)
    sparse = host_to_device(sparse_host, device)
    keep = torch.where(sparse[None, first_segment:], keep, torch.zeros_like(keep)).contiguous()

    blocks_per_segment = segment // block
    num_key_blocks = -(-seq_len // block)
    seg_host = torch.arange(first_segment, num_segments)
    visible_host = seg_host * blocks_per_segment
    own_host = torch.clamp((seg_host + 1) * blocks_per_segment, max=num_key_blocks) - visible_host
    max_keep = max(1, min(config.max_budget_tokens // block, num_blocks))
    row_bound = torch.where(sparse_host[first_segment:], torch.clamp(visible_host, max=max_keep),
                            visible_host) + own_host
    capacity = int(row_bound.sum()) * num_heads  # host arithmetic only

    visible, own = host_to_device(visible_host, device), host_to_device(own_host, device)
    top = torch.topk(_selection_keys(p, visible), max_keep, dim=-1).indices  # [H, rows, max_keep]
    rank = torch.arange(max_keep, device=device)
    chosen = torch.where(rank[None, None, :] < keep[..., None], top, torch.full_like(top, num_key_blocks))
    chosen = torch.sort(chosen, dim=-1).values  # selected blocks first, increasing

    dense_row = ~sparse[None, first_segment:] | (keep == 0)
    earlier = torch.where(dense_row, visible[None, :].to(keep.dtype), keep)  # [H, rows]
    row_len = torch.zeros(num_heads, num_segments, dtype=torch.int64, device=device)
    row_len[:, first_segment:] = earlier + own[None, :]
    indptr = torch.zeros(num_heads * num_segments + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(row_len.flatten(), dim=0)

    slot = torch.arange(capacity, device=device)
    row = torch.searchsorted(indptr[1:], slot, right=True).clamp(max=num_heads * num_segments - 1)
    offset = slot - indptr[row]
    seg_of_row = (row % num_segments - first_segment).clamp(min=0)  # every used slot is in an executed row
    scored_row = (row // num_segments) * num_rows + seg_of_row
    earlier_flat = earlier.flatten()[scored_row].to(torch.int64)
    picked = chosen.view(-1, max_keep)[scored_row, offset.clamp(max=max_keep - 1)]
    before_own = torch.where(dense_row.flatten()[scored_row], offset, picked)
    value = torch.where(offset < earlier_flat, before_own, visible[seg_of_row] + offset - earlier_flat)
    value = torch.where(slot < indptr[-1], value, torch.zeros_like(value))  # slack past nnz: a valid block id
    keep_all = torch.zeros(num_heads, num_segments, dtype=keep.dtype, device=device)
    keep_all[:, first_segment:] = keep
    return PrefillPlan(indptr=indptr.to(torch.int32), indices=value.to(torch.int32), keep_blocks=keep_all,
                       sparse_segments=sparse, num_kv_heads=num_heads, **sizes)


def dense_plan_device(seq_len: int, config: EntropyInferConfig, *, num_kv_heads: int,
                      device: torch.device | str, first_segment: int = 0) -> PrefillPlan:
    """Dense causal attention as a plan: every row of the segments from `first_segment` on lists every block it
    can see (earlier rows are empty). Sizes are host arithmetic; the indices are built on the device."""
    segment, block = config.segment_size_tokens, config.block_size_tokens
    num_segments = -(-seq_len // segment)
    num_key_blocks = -(-seq_len // block)
    seg = torch.arange(num_segments)
    row_len = torch.where(seg >= first_segment, torch.clamp((seg + 1) * (segment // block), max=num_key_blocks), 0)
    indptr_host = torch.zeros(num_kv_heads * num_segments + 1, dtype=torch.int64)
    indptr_host[1:] = torch.cumsum(row_len.repeat(num_kv_heads), dim=0)
    indptr = host_to_device(indptr_host, device)
    slot = torch.arange(int(indptr_host[-1]), device=device)
    row = torch.searchsorted(indptr[1:], slot, right=True)
    return PrefillPlan(indptr=indptr.to(torch.int32), indices=(slot - indptr[row]).to(torch.int32),
                       keep_blocks=torch.zeros(num_kv_heads, num_segments, dtype=torch.int32, device=device),
                       sparse_segments=torch.zeros(num_segments, dtype=torch.bool, device=device),
                       num_kv_heads=num_kv_heads, seq_len_tokens=seq_len, segment_size_tokens=segment,
                       block_size_tokens=block)

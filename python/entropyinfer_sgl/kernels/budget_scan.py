"""The budget recurrence as a Triton scan: one program per kv head walks the segments (docs/planner_spec.md §1).

The recurrence is sequential in the segment index with a clamp at every step, so it does not reduce to a
prefix sum; it is also tiny (Hkv x nseg scalars). A single launch replaces nseg small torch launches and keeps
planning on the device with no host sync. Divisions are correctly rounded (`div_rn`) like torch's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.budgets import ENTROPY_EPSILON, HeadTypingState
from ..core.config import EntropyInferConfig


# Lengths and offsets are not specialized on (Triton's default: == 1 and % 16): a server sees every value, and
# each new specialization is a compile of seconds that stalls the scheduler mid-request.
@triton.jit(do_not_specialize=["num_segments", "segments_seen"])
def _budget_scan_kernel(
    entropy_ptr, budget_ptr, rigid_ptr, state_rigid_ptr, state_entropy_ptr, state_budget_ptr,
    num_segments, segments_seen, stride_e, stride_b,
    rigid_threshold, growth_threshold, ratio_cap, step_gain, base, maximum, epsilon,
    CAUSAL: tl.constexpr,
):
    head = tl.program_id(0)
    rigid_so_far = tl.load(state_rigid_ptr + head) != 0
    entropy_prev = tl.load(state_entropy_ptr + head)
    budget_prev = tl.load(state_budget_ptr + head)
    for local in range(0, num_segments):
        segment = segments_seen + local
        current = tl.load(entropy_ptr + head * stride_e + local)
        if segment == 0:
            budget = base
            current = 0.0  # segment 0 sees no block: its entropy is never read
        else:
            if segment == 1:
                ratio = growth_threshold
            else:
                ratio = tl.math.div_rn(current - entropy_prev, entropy_prev + epsilon)
            ratio = tl.minimum(tl.maximum(ratio, 0.0), ratio_cap)
            step = step_gain * (ratio - growth_threshold)
            budget = tl.minimum(tl.maximum(budget_prev + step, base), maximum)
            rigid_so_far = rigid_so_far & (current < rigid_threshold)
        if CAUSAL:
            tl.store(budget_ptr + head * stride_b + local, tl.where(rigid_so_far, base, budget))
        else:
            tl.store(budget_ptr + head * stride_b + local, budget)
        budget_prev = budget
        entropy_prev = current
    if not CAUSAL:
        if rigid_so_far:
            for local in range(0, num_segments):
                tl.store(budget_ptr + head * stride_b + local, base)
    tl.store(rigid_ptr + head, rigid_so_far.to(tl.int8))
    tl.store(state_entropy_ptr + head, entropy_prev)
    tl.store(state_budget_ptr + head, budget_prev)


def head_budgets_device(entropy: torch.Tensor, config: EntropyInferConfig, *, causal: bool | None = None,
                        state: HeadTypingState | None = None):
    """`budgets.head_budgets` in one launch on the entropy's device (CUDA, or CPU under TRITON_INTERPRET=1).

    No validation here (it would need a host sync); callers pass entropies from `block_scores_and_entropy`.
    """
    causal = config.causal_head_typing if causal is None else causal
    if not causal and state is not None:
        raise ValueError("paper head typing looks at the whole prompt: it takes no chunk state")
    num_heads, num_segments = entropy.shape
    device = entropy.device
    start = state if state is not None else HeadTypingState.fresh(num_heads, config, device)
    values = entropy.float().contiguous()
    budgets = torch.empty(num_heads, num_segments, dtype=torch.float32, device=device)
    rigid = torch.empty(num_heads, dtype=torch.int8, device=device)
    state_rigid = start.rigid_so_far.to(device=device, dtype=torch.int8).contiguous()
    state_entropy = start.prev_entropy.to(device=device, dtype=torch.float32).clone()
    state_budget = start.prev_budget_tokens.to(device=device, dtype=torch.float32).clone()
    _budget_scan_kernel[(num_heads,)](
        values, budgets, rigid, state_rigid, state_entropy, state_budget,
        num_segments, start.segments_seen, values.stride(0), budgets.stride(0),
        _f32(config.rigid_entropy_threshold), _f32(config.entropy_growth_threshold),
        _f32(1.0 + config.entropy_growth_threshold), _f32(config.budget_growth_rate * config.base_budget_tokens),
        _f32(config.base_budget_tokens), _f32(config.max_budget_tokens), _f32(ENTROPY_EPSILON),
        CAUSAL=causal,
    )
    rigid = rigid.bool()
    new_state = HeadTypingState(rigid, state_entropy, state_budget, start.segments_seen + num_segments) if causal else None
    return rigid, budgets, new_state


def _f32(value: float) -> float:
    """Round a Python float to float32 the way torch does when it meets a float32 tensor."""
    return torch.tensor(value, dtype=torch.float32).item()

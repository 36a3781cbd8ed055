"""Head typing and the budget recurrence (torch planner, docs/planner_spec.md §1-§2).

The Rust planner (`entropyinfer_sgl._scheduler`) implements the same contract; tests hold the two to bit
equality in float32. Arithmetic is float32 throughout, with every constant rounded to float32 the way torch
rounds a Python float that meets a float32 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import EntropyInferConfig
from .validation import prompt_len_or_seq_len, require

ENTROPY_EPSILON = 1e-9  # the prototype's denominator guard in the relative entropy growth


@dataclass(frozen=True)
class HeadTypingState:
    """Causal head typing state carried from one prefill chunk to the next (one layer, all kv heads).

    `prev_budget_tokens` is the recurrence value, which keeps running while a head is still rigid so that a
    head turning dynamic gets exactly the budget the whole-prompt recurrence would give it.
    """

    rigid_so_far: torch.Tensor  # bool [H]
    prev_entropy: torch.Tensor  # float32 [H]
    prev_budget_tokens: torch.Tensor  # float32 [H]
    segments_seen: int

    @classmethod
    def fresh(cls, num_kv_heads: int, config: EntropyInferConfig, device: torch.device | str = "cpu"):
        return cls(
            rigid_so_far=torch.ones(num_kv_heads, dtype=torch.bool, device=device),
            prev_entropy=torch.zeros(num_kv_heads, dtype=torch.float32, device=device),
            prev_budget_tokens=torch.full((num_kv_heads,), float(config.base_budget_tokens),
                                          dtype=torch.float32, device=device),
            segments_seen=0,
        )


def _f32(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar on `device`, filled there (`torch.tensor(value, device=cuda)` would copy from the host and
    wait for the stream)."""
    return torch.full((), value, dtype=torch.float32, device=device)


def head_budgets(
    entropy: torch.Tensor,
    config: EntropyInferConfig,
    *,
    causal: bool | None = None,
    state: HeadTypingState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, HeadTypingState | None]:
    """Rigid/dynamic typing and per-segment budgets from attention entropies.

    Parameters
    ----------
    entropy: [H, n] per kv head and segment (segment `state.segments_seen` first), any float dtype.
    causal: "rigid so far" typing (default: `config.causal_head_typing`); paper typing needs the whole prompt.
    state: causal typing state from the previous chunk; None starts a fresh prompt.

    Returns
    -------
    rigid: bool [H]; budget_tokens: float32 [H, n]; the new state (causal) or None (paper).
    """
    causal = config.causal_head_typing if causal is None else causal
    require(entropy.dim() == 2, f"entropy must be [num_kv_heads, num_segments], got shape {tuple(entropy.shape)}")
    require(entropy.is_floating_point(), f"entropy must be floating point, got {entropy.dtype}")
    if not causal and state is not None:
        raise ValueError("paper head typing looks at the whole prompt: it takes no chunk state")
    num_heads, num_segments = entropy.shape
    device = entropy.device
    if state is None:
        state = HeadTypingState.fresh(num_heads, config, device)
    values = entropy.float()
    if state.segments_seen == 0 and num_segments:
        # Segment 0 sees no block: its entropy is never used (and is NaN when a float16 mask overflows).
        values = torch.cat([torch.zeros_like(values[:, :1]), values[:, 1:]], dim=1)
    require(bool(torch.isfinite(values).all()), "entropy contains NaN or inf")
    require(state.rigid_so_far.shape == (num_heads,), "typing state does not match the number of kv heads")

    base = _f32(float(config.base_budget_tokens), device)
    maximum = _f32(float(config.max_budget_tokens), device)
    growth_threshold = _f32(config.entropy_growth_threshold, device)
    ratio_cap = _f32(1.0 + config.entropy_growth_threshold, device)
    step_gain = _f32(config.budget_growth_rate * config.base_budget_tokens, device)
    epsilon = _f32(ENTROPY_EPSILON, device)
    rigid_threshold = _f32(config.rigid_entropy_threshold, device)
    zero = _f32(0.0, device)

    recurrence = torch.empty_like(values)
    budget_prev = state.prev_budget_tokens.to(device)
    entropy_prev = state.prev_entropy.to(device)
    for local in range(num_segments):  # a sequential scan over segments: the Triton planner fuses it
        segment = state.segments_seen + local
        current = values[:, local]
        if segment == 0:
            budget = base.expand(num_heads).clone()
        else:
            if segment == 1:
                ratio = growth_threshold.expand(num_heads)
            else:
                ratio = (current - entropy_prev) / (entropy_prev + epsilon)
            ratio = torch.minimum(torch.maximum(ratio, zero), ratio_cap)
            budget = budget_prev + step_gain * (ratio - growth_threshold)
            budget = torch.minimum(torch.maximum(budget, base), maximum)
        recurrence[:, local] = budget
        budget_prev, entropy_prev = budget, current

    first_global = state.segments_seen
    scored = torch.arange(first_global, first_global + num_segments, device=device) >= 1  # segment 0 ignored
    below = (values < rigid_threshold) | ~scored
    if causal:
        rigid_so_far = torch.cumprod(below.to(torch.int32), dim=1).bool() & state.rigid_so_far.to(device)[:, None]
        budgets = torch.where(rigid_so_far, base, recurrence)
        rigid = rigid_so_far[:, -1] if num_segments else state.rigid_so_far.to(device)
        new_state = HeadTypingState(rigid, entropy_prev.clone(), budget_prev.clone(),
                                    first_global + num_segments)
        return rigid, budgets, new_state
    rigid = below.all(dim=1)
    budgets = torch.where(rigid[:, None], base, recurrence)
    return rigid, budgets, None


def keep_blocks(budget_tokens: torch.Tensor, *, seq_len_tokens: int, segment_size_tokens: int,
                block_size_tokens: int, prompt_len_tokens: int | None = None) -> torch.Tensor:
    """Blocks each kv head keeps per segment (int32 [H, nseg]), with the prototype's caps (spec §2).

    prompt_len_tokens: the whole prompt's length when `seq_len_tokens` is a chunk's end; the cap of the prompt's
    last segment comes from it, so a chunk's segments keep what they would in the whole prompt."""
    require(budget_tokens.dim() == 2, "budget_tokens must be [num_kv_heads, num_segments]")
    require(segment_size_tokens % block_size_tokens == 0, "block_size_tokens must divide segment_size_tokens")
    require(seq_len_tokens > segment_size_tokens,
            f"seq_len_tokens={seq_len_tokens} must exceed one segment ({segment_size_tokens} tokens)")
    num_segments = -(-seq_len_tokens // segment_size_tokens)
    require(budget_tokens.shape[1] == num_segments,
            f"budget_tokens has {budget_tokens.shape[1]} segments, a {seq_len_tokens}-token prompt has {num_segments}")
    blocks_per_segment = segment_size_tokens // block_size_tokens
    prompt_len = prompt_len_or_seq_len(seq_len_tokens, prompt_len_tokens)
    prompt_blocks = (-(-prompt_len // segment_size_tokens) - 1) * blocks_per_segment
    max_effective_blocks = prompt_blocks - ((prompt_len % segment_size_tokens) // block_size_tokens + 1)
    device = budget_tokens.device
    keep = (budget_tokens.float() / _f32(float(block_size_tokens), device)).to(torch.int32)
    cap = (torch.arange(num_segments, device=device, dtype=torch.int32) * blocks_per_segment).clamp(
        max=max_effective_blocks)
    keep = torch.minimum(keep, cap[None, :])
    keep[:, 0] = 0
    return keep

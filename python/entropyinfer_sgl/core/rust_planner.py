"""The Rust planner (`entropyinfer_sgl._scheduler`) behind the torch planner's signatures.

It runs on the CPU on small summaries (entropies, block scores, pooled decode scores): the CPU engine plans every
prefill chunk and layer and every compression event with it (`plan.reference_path_planner`); on an accelerator the
device planner plans instead (no host round trip per layer inside a GPU loop). Inputs that already are contiguous
CPU tensors of the right dtype reach Rust as numpy views of their memory (no copy). Errors arrive as
`SchedulerError` subclasses of ValueError.

The Rust scheduler also does host bookkeeping of the serving path that runs every decode step: `visible_slots`
(`runtime/decode_table.DecodeTable.visible_slots`).
"""

from __future__ import annotations

import numpy as np
import torch

from .budgets import HeadTypingState
from .config import EntropyInferConfig


def _module():
    try:
        from .. import _scheduler
    except ImportError as err:  # pragma: no cover - only without a built extension
        raise ImportError("entropyinfer_sgl._scheduler is not built: run `pip install -e .` at the repository root"
                          ) from err
    return _scheduler


def _f32(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy view of a contiguous float32 CPU tensor (a copy only for other dtypes, devices or layouts)."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def head_budgets(entropy: torch.Tensor, config: EntropyInferConfig, *, causal: bool | None = None,
                 state: HeadTypingState | None = None):
    """Same contract as `budgets.head_budgets`, planned in Rust (CPU tensors out)."""
    causal = config.causal_head_typing if causal is None else causal
    raw_state = None
    if state is not None:
        raw_state = (state.rigid_so_far.cpu().numpy(), _f32(state.prev_entropy), _f32(state.prev_budget_tokens),
                     state.segments_seen)
    rigid, budgets, new_state = _module().head_budgets(
        _f32(entropy),
        rigid_entropy_threshold=config.rigid_entropy_threshold,
        entropy_growth_threshold=config.entropy_growth_threshold,
        budget_growth_rate=config.budget_growth_rate,
        base_budget_tokens=float(config.base_budget_tokens),
        max_budget_tokens=float(config.max_budget_tokens),
        causal=causal,
        state=raw_state,
    )
    typed_state = None
    if new_state is not None:
        rigid_so_far, prev_entropy, prev_budget, seen = new_state
        typed_state = HeadTypingState(torch.from_numpy(np.asarray(rigid_so_far)), torch.from_numpy(prev_entropy),
                                      torch.from_numpy(prev_budget), int(seen))
    return torch.from_numpy(np.asarray(rigid)), torch.from_numpy(budgets), typed_state


def keep_blocks(budget_tokens: torch.Tensor, *, seq_len_tokens: int, segment_size_tokens: int,
                block_size_tokens: int) -> torch.Tensor:
    return torch.from_numpy(_module().keep_blocks(
        _f32(budget_tokens), seq_len_tokens=seq_len_tokens, segment_size_tokens=segment_size_tokens,
        block_size_tokens=block_size_tokens))


def select_blocks(block_scores: torch.Tensor, keep: torch.Tensor, sparse_segments: torch.Tensor, *,
                  seq_len_tokens: int, segment_size_tokens: int, block_size_tokens: int):
    indptr, indices = _module().select_blocks(
        _f32(block_scores), np.ascontiguousarray(keep.cpu().to(torch.int32).numpy()),
        np.ascontiguousarray(sparse_segments.cpu().numpy().astype(bool)), seq_len_tokens=seq_len_tokens,
        segment_size_tokens=segment_size_tokens, block_size_tokens=block_size_tokens)
    return torch.from_numpy(indptr), torch.from_numpy(indices)


def adaptive_budgets(scores: torch.Tensor, *, budget_tokens: int, floor_fraction: float) -> torch.Tensor:
    return torch.from_numpy(_module().adaptive_budgets(_f32(scores), budget_tokens=budget_tokens,
                                                       floor_fraction=floor_fraction))


def eviction_order(scores: torch.Tensor, *, sink_tokens: int, local_window_tokens: int) -> torch.Tensor:
    return torch.from_numpy(_module().eviction_order(_f32(scores), sink_tokens=sink_tokens,
                                                     local_window_tokens=local_window_tokens))


def visible_slots(positions: torch.Tensor, lengths: torch.Tensor, row: torch.Tensor, *, base_len: int,
                  seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots int64 `[Hkv, width]`, lengths int64 `[Hkv]`) of `DecodeTable.visible_slots`; CPU tensors in
    (int64 positions and lengths, an int32 or int64 row), read in place when contiguous."""
    slots, visible = _module().visible_slots(positions.numpy(), lengths.numpy(), row.numpy(), base_len=base_len,
                                             seq_len=seq_len)
    return torch.from_numpy(slots), torch.from_numpy(visible)

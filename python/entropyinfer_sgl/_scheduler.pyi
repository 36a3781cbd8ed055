"""Type stubs for `entropyinfer_sgl._scheduler`, the Rust planner (rust/scheduler-py over rust/scheduler).

Contract: docs/planner_spec.md. Arrays must have exactly the dtype shown (no silent casts: a wrong dtype or a
non-array raises TypeError, a wrong rank raises ShapeError); any layout is accepted (inputs are copied).
Every function reads C-contiguous inputs in place (no copy; other layouts are copied) and computes with the GIL
released. `visible_slots` is serving bookkeeping (every decode step and layer of the reference path), not the spec.
"""

from typing import Optional

import numpy as np
import numpy.typing as npt

__version__: str

class SchedulerError(ValueError):
    """Base class of the planner's errors."""

class ShapeError(SchedulerError):
    """Array shapes that disagree with each other, with the sequence geometry, or with the expected rank."""

class ParameterError(SchedulerError):
    """A scalar parameter or an integer input outside its documented range."""

class NonFiniteError(SchedulerError):
    """NaN (or, for entropies and budgets, infinity) in a floating-point input."""

# (rigid_so_far bool[H], prev_entropy float32[H], prev_budget_tokens float32[H], segments_seen)
_HeadState = tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32], int]

def head_budgets(
    entropy: npt.NDArray[np.float32],
    *,
    rigid_entropy_threshold: float,
    entropy_growth_threshold: float,
    budget_growth_rate: float,
    base_budget_tokens: float,
    max_budget_tokens: float,
    causal: bool,
    state: Optional[_HeadState] = None,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], Optional[_HeadState]]:
    """Spec §1: (rigid bool[H], budget_tokens float32[H, nseg], state) from entropy float32[H, nseg].

    causal=False (paper typing): state must be None and None is returned. causal=True: pass the returned state
    to the next chunk (None starts fresh). Global segment 0's entropy is never read (it may be NaN).
    """

def keep_blocks(
    budget_tokens: npt.NDArray[np.float32],
    *,
    seq_len_tokens: int,
    segment_size_tokens: int,
    block_size_tokens: int,
) -> npt.NDArray[np.int32]:
    """Spec §2: int32[H, nseg] kept key blocks per head and segment, from budget_tokens float32[H, nseg]."""

def select_blocks(
    block_scores: npt.NDArray[np.float32],
    keep_blocks: npt.NDArray[np.int32],
    sparse_segments: npt.NDArray[np.bool_],
    *,
    seq_len_tokens: int,
    segment_size_tokens: int,
    block_size_tokens: int,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Spec §3: CSR (indptr int32[H * nseg + 1], indices int32[nnz]) of the key blocks each row attends to.

    block_scores float32[H, nseg, (nseg - 1) * S / b], keep_blocks int32[H, nseg], sparse_segments bool[nseg].
    """

def adaptive_budgets(
    scores: npt.NDArray[np.float32],
    *,
    budget_tokens: int,
    floor_fraction: float,
) -> npt.NDArray[np.int32]:
    """Spec §4: AdaKV budgets int32[H] over the candidates of scores float32[H, T]; they sum to H * min(budget, T)."""

def eviction_order(
    scores: npt.NDArray[np.float32],
    *,
    sink_tokens: int,
    local_window_tokens: int,
) -> npt.NDArray[np.int32]:
    """Spec §5: int32[H, T], per head a permutation of 0..T in ascending importance, protected entries last."""

def visible_slots(
    positions: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    row: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    *,
    base_len: int,
    seq_len: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(slots int64[Hkv, width], lengths int64[Hkv]): per kv head row[p] for its kept positions p (positions
    int64[Hkv, max_kept], first lengths[h] of row h, each < base_len), then row[base_len:seq_len], padded with
    row[0]. ParameterError for a position or length out of range or base_len > seq_len; ShapeError for a row
    shorter than seq_len."""

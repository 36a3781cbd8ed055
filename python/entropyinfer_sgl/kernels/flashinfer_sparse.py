"""A `PrefillPlan` run through FlashInfer's `VariableBlockSparseAttentionWrapper` (per-kv-head block masks).

The second implementation of block-sparse prefill and a second oracle for the Triton kernel. Rows of the mask are
segments (`block_row_sz` = segment sizes, the last one partial), columns are key blocks (`block_col_sz` = block
size, the last one partial); `causal=True` is bottom-right aligned per (kv head, segment), which is exactly "the
selected earlier blocks are fully visible, the segment's own keys are causal" because a row's own blocks are its
last columns. Limits (FlashInfer 0.6.15): one sequence per plan; `plan()` builds token-level indices on the host
side and calls `torch.cuda.synchronize()`, so it cannot run inside a CUDA graph or without a host sync; the first
call JIT-compiles with nvcc (minutes).
"""

from __future__ import annotations

import math

import torch

from ..core.plan import PrefillPlan

LN2 = math.log(2.0)


def plan_block_mask_device(plan: PrefillPlan) -> torch.Tensor:
    """bool [Hkv, nseg, num_key_blocks] on the plan's device (one host sync for the CSR length)."""
    nseg, nkb = plan.num_segments, plan.num_key_blocks
    rows = plan.num_kv_heads * nseg
    device = plan.indptr.device
    lengths = (plan.indptr[1:] - plan.indptr[:-1]).to(torch.int64)
    row_of = torch.repeat_interleave(torch.arange(rows, device=device), lengths)
    mask = torch.zeros(rows, nkb, dtype=torch.bool, device=device)
    mask[row_of, plan.indices[: row_of.numel()].to(torch.int64)] = True
    return mask.view(plan.num_kv_heads, nseg, nkb)


class FlashInferSparsePrefill:
    """`plan(prefill_plan, ...)` once per layer and sequence, then `run(q, k, v)`; same contract as `sparse_prefill`."""

    def __init__(self, device: torch.device | str = "cuda", *, workspace_bytes: int = 128 << 20,
                 backend: str = "auto") -> None:
        try:
            from flashinfer.sparse import VariableBlockSparseAttentionWrapper
        except ImportError as err:
            raise ImportError("FlashInfer is not installed: the FlashInfer sparse path needs flashinfer-python") from err
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
        self._wrapper = VariableBlockSparseAttentionWrapper(workspace, backend=backend)
        self._num_kv_heads = 0

    def plan(self, plan: PrefillPlan, *, num_qo_heads: int, head_dim: int, dtype: torch.dtype,
             scale: float | None = None) -> None:
        device = plan.indptr.device
        seg, blk, seq_len = plan.segment_size_tokens, plan.block_size_tokens, plan.seq_len_tokens
        rows = torch.full((plan.num_kv_heads, plan.num_segments), seg, dtype=torch.int32, device=device)
        rows[:, -1] = seq_len - (plan.num_segments - 1) * seg
        cols = torch.full((plan.num_kv_heads, plan.num_key_blocks), blk, dtype=torch.int32, device=device)
        cols[:, -1] = seq_len - (plan.num_key_blocks - 1) * blk
        self._wrapper.plan(plan_block_mask_device(plan), rows, cols, num_qo_heads, plan.num_kv_heads, head_dim,
                           causal=True, sm_scale=scale, q_data_type=dtype, kv_data_type=dtype)
        self._num_kv_heads = plan.num_kv_heads

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [L, Hq, D], k/v [L, Hkv, D] -> out [L, Hq, D] (q dtype), lse [L, Hq] float32 (natural log)."""
        out, lse_base2 = self._wrapper.run(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), return_lse=True)
        return out.transpose(0, 1), (lse_base2 * LN2).transpose(0, 1)

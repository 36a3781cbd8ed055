"""Helpers shared by the kernel tests: tolerances per dtype, comparisons, hand-made prefill plans."""

from __future__ import annotations

import torch

from entropyinfer_sgl.core.plan import PrefillPlan

# (atol, rtol) for outputs, atol for the LSE; float32 inputs use IEEE float32 products in the kernels.
TOLERANCE = {
    torch.float32: (1e-4, 1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2, 2e-2),
    torch.bfloat16: (3e-2, 3e-2, 3e-2),
}


def assert_attention_close(out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor, ref_lse: torch.Tensor,
                           dtype: torch.dtype) -> None:
    """Kernel (out in `dtype`, lse float32) against the float32 reference; rows with lse = -inf must agree."""
    atol, rtol, lse_atol = TOLERANCE[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert not bool(torch.isnan(out).any()), "output has NaN (an element was never written?)"
    assert not bool(torch.isnan(lse).any()), "lse has NaN (an element was never written?)"
    out, lse, ref_out, ref_lse = out.float().cpu(), lse.cpu(), ref_out.float().cpu(), ref_lse.float().cpu()
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    empty = torch.isinf(ref_lse)
    assert bool((torch.isinf(lse) == empty).all()) and bool((lse[empty] < 0).all())
    torch.testing.assert_close(lse[~empty], ref_lse[~empty], atol=lse_atol, rtol=0)


def make_plan(seq_len: int, num_kv_heads: int, segment: int, block: int, *, keep: str,
              generator: torch.Generator, device: torch.device | str = "cpu") -> PrefillPlan:
    """A plan that follows the CSR contract (docs/planner_spec.md §3) without profiling.

    keep: "empty" (only the segment's own blocks), "full" (every earlier block: dense causal), "random" (a
    random count in [0, visible] of random earlier blocks per kv head and segment, so rows differ per head), or
    "sparse" (random, at most a quarter of the visible blocks).
    """
    num_segments = -(-seq_len // segment)
    per_segment = segment // block
    num_key_blocks = -(-seq_len // block)
    indptr, indices = [0], []
    keep_blocks = torch.zeros(num_kv_heads, num_segments, dtype=torch.int32)
    for head in range(num_kv_heads):
        for seg in range(num_segments):
            visible = seg * per_segment
            if keep == "full":
                chosen = list(range(visible))
            elif keep == "empty" or visible == 0:
                chosen = []
            else:
                upper = visible if keep == "random" else max(1, visible // 4)
                count = int(torch.randint(0, upper + 1, (1,), generator=generator))
                chosen = sorted(torch.randperm(visible, generator=generator)[:count].tolist())
            own = list(range(visible, min((seg + 1) * per_segment, num_key_blocks)))
            keep_blocks[head, seg] = len(chosen) if keep != "full" else 0
            indices += chosen + own
            indptr.append(len(indices))
    return PrefillPlan(
        indptr=torch.tensor(indptr, dtype=torch.int32, device=device),
        indices=torch.tensor(indices, dtype=torch.int32, device=device),
        keep_blocks=keep_blocks.to(device),
        sparse_segments=torch.full((num_segments,), keep != "full", dtype=torch.bool, device=device),
        num_kv_heads=num_kv_heads, seq_len_tokens=seq_len, segment_size_tokens=segment, block_size_tokens=block)


def random_qkv(seq_len: int, num_q_heads: int, num_kv_heads: int, head_dim: int, *, generator: torch.Generator,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    q = torch.randn(seq_len, num_q_heads, head_dim, generator=generator)
    k = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))

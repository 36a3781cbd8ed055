"""The FlashInfer sparse path (`VariableBlockSparseAttentionWrapper`) against the float32 reference, same plans."""

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
from entropyinfer_sgl.core.reference import sparse_prefill_reference
from attention_inputs import structured_qk

from .kernel_testing import assert_attention_close, make_plan

flashinfer = pytest.importorskip("flashinfer", reason="the FlashInfer path needs flashinfer-python (GPU machines)")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("keep", ["random", "full", "empty"])
@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads", [(1000, 8, 2), (777, 4, 4)])
def test_flashinfer_sparse_matches_reference(keep, seq_len, num_q_heads, num_kv_heads, generator):
    from entropyinfer_sgl.kernels.flashinfer_sparse import FlashInferSparsePrefill

    plan = make_plan(seq_len, num_kv_heads, 64, 8, keep=keep, generator=generator).to("cuda")
    q = torch.randn(seq_len, num_q_heads, 128, generator=generator).to("cuda", torch.bfloat16)
    k = torch.randn(seq_len, num_kv_heads, 128, generator=generator).to("cuda", torch.bfloat16)
    v = torch.randn(seq_len, num_kv_heads, 128, generator=generator).to("cuda", torch.bfloat16)
    runner = FlashInferSparsePrefill("cuda")
    runner.plan(plan, num_qo_heads=num_q_heads, head_dim=128, dtype=torch.bfloat16)
    out, lse = runner.run(q, k, v)
    ref_out, ref_lse = sparse_prefill_reference(q.float(), k.float(), v.float(), plan.to("cpu"))
    assert_attention_close(out, lse, ref_out, ref_lse, torch.bfloat16)


def test_flashinfer_sparse_with_profiled_plan(generator):
    from entropyinfer_sgl.kernels.flashinfer_sparse import FlashInferSparsePrefill

    cfg = EntropyInferConfig().replace(segment_size_tokens=64, base_budget_tokens=64, max_budget_tokens=192,
                                       min_sparse_len_tokens=128)
    q, k = structured_qk(1500, 8, 2, 128, generator=generator, rigid_kv_heads=(1,))
    v = torch.randn(1500, 2, 128, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, cfg), cfg, layer_idx=2)
    assert plan.density() < 0.6
    runner = FlashInferSparsePrefill("cuda")
    runner.plan(plan.to("cuda"), num_qo_heads=8, head_dim=128, dtype=torch.bfloat16)
    out, lse = runner.run(*(t.to("cuda", torch.bfloat16) for t in (q, k, v)))
    ref_out, ref_lse = sparse_prefill_reference(*(t.to(torch.bfloat16).float() for t in (q, k, v)), plan)
    assert_attention_close(out, lse, ref_out, ref_lse, torch.bfloat16)

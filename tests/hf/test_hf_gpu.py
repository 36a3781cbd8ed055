"""CUDA: `hf.enable` plugs the Triton kernel `entropyinfer_sgl.kernels.sparse_prefill` into prefill.

Skipped without a CUDA device (`-m gpu` on the H200). The kernel path is compared with the SDPA path of the same
plans (the kernel import is disabled for the reference run).
"""

import pytest
import torch

from entropyinfer_sgl import hf
from entropyinfer_sgl.hf import integration
from hf_helpers import SPARSE, prompt, tiny_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (-m gpu on the H200)")]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_kernel_path_matches_sdpa_path(dtype, tol, monkeypatch):
    pytest.importorskip("triton")
    model = tiny_model().to(device="cuda", dtype=dtype)
    ids = prompt(203).cuda()
    with torch.no_grad(), hf.enable(model, SPARSE) as handle:
        kernel_logits = model(ids).logits.float()
        kernel_out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                                    do_sample=False)
    if handle.stats.layers[1].path != "kernel":
        pytest.fail("the CUDA kernel was not used: entropyinfer_sgl.kernels.sparse_prefill failed to import")
    monkeypatch.setattr(integration, "load_prefill_kernel", lambda: None)
    with torch.no_grad(), hf.enable(model, SPARSE) as handle:
        sdpa_logits = model(ids).logits.float()
    assert handle.stats.layers[1].path == "sparse-sdpa"
    torch.testing.assert_close(kernel_logits, sdpa_logits, rtol=tol, atol=tol)
    assert kernel_out.shape == (1, 203 + 12)

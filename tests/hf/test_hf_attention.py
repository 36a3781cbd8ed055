"""The SDPA execution paths behind `hf.enable` against the float32 references (reference.py)."""

import pytest
import torch

from entropyinfer_sgl import (EntropyInferConfig, compressed_decode_reference, plan_prefill, profile_prefill,
                              sparse_prefill_reference)
from entropyinfer_sgl.hf import masked_attention_sdpa, sparse_prefill_sdpa
from attention_inputs import structured_qk

CFG = EntropyInferConfig().replace(segment_size_tokens=32, block_size_tokens=8, min_sparse_len_tokens=64,
                                   base_budget_tokens=16, max_budget_tokens=64, num_dense_layers=0)

PREFILL_CASES = [
    pytest.param(301, 4, 2, 16, CFG, id="L301-Hq4-Hkv2-D16"),  # odd length: partial last block and segment
    pytest.param(256, 2, 2, 32, CFG, id="L256-MHA-D32"),
    pytest.param(200, 9, 3, 64, CFG.replace(per_head_budgets=False), id="L200-Hq9-Hkv3-D64-paper-exec"),
    pytest.param(333, 4, 1, 16, CFG.replace(min_sparse_len_tokens=0, base_budget_tokens=8), id="L333-MQA-gate0"),
]


@pytest.mark.parametrize("seq_len,num_q_heads,num_kv_heads,head_dim,cfg", PREFILL_CASES)
def test_sparse_prefill_sdpa_matches_reference(seq_len, num_q_heads, num_kv_heads, head_dim, cfg, generator):
    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, spike=4.0)
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, cfg), cfg, layer_idx=3)
    assert plan.density() < 0.9  # the case really is sparse
    expected, _ = sparse_prefill_reference(q, k, v, plan)
    out = sparse_prefill_sdpa(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), plan,
                              scale=head_dim ** -0.5)
    torch.testing.assert_close(out.transpose(0, 1), expected, rtol=1e-5, atol=1e-5)


def test_sparse_prefill_sdpa_dense_plan_is_dense_attention(generator):
    """A layer below `num_dense_layers` plans every block: the SDPA path is plain causal attention."""
    q, k = structured_qk(200, 4, 2, 16, generator=generator)
    v = torch.randn(200, 2, 16, generator=generator)
    cfg = CFG.replace(num_dense_layers=1)
    plan = plan_prefill(profile_prefill(q, k, cfg), cfg, layer_idx=0)
    assert plan.density() == 1.0
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)[0]
    out = sparse_prefill_sdpa(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), plan, scale=16 ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_masked_decode_matches_compressed_reference(generator):
    """One decode step over a per-head padded cache equals `compressed_decode_reference` over the kept rows."""
    num_entries, num_kv_heads, num_q_heads, head_dim = 50, 2, 6, 16
    k = torch.randn(num_entries, num_kv_heads, head_dim, generator=generator)
    v = torch.randn(num_entries, num_kv_heads, head_dim, generator=generator)
    valid = torch.rand(num_kv_heads, num_entries, generator=generator) < 0.6
    valid[:, -1] = True  # the new token is in every head
    valid[1, 10:20] = False  # heads differ
    q = torch.randn(num_q_heads, head_dim, generator=generator)
    lengths = valid.sum(dim=1)
    kept = torch.full((num_kv_heads, int(lengths.max())), -1, dtype=torch.int64)
    for h in range(num_kv_heads):
        kept[h, : lengths[h]] = valid[h].nonzero()[:, 0]
    expected, _ = compressed_decode_reference(q, k, v, kept, lengths)
    out = masked_attention_sdpa(q[:, None], k.transpose(0, 1), v.transpose(0, 1), valid, scale=head_dim ** -0.5)
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_masked_extend_is_causal_over_new_tokens(generator):
    """Several new tokens at once: each sees the valid past and the new tokens up to itself."""
    past, new, num_kv_heads, num_q_heads, head_dim = 20, 3, 2, 4, 8
    k = torch.randn(num_kv_heads, past + new, head_dim, generator=generator)
    v = torch.randn(num_kv_heads, past + new, head_dim, generator=generator)
    q = torch.randn(num_q_heads, new, head_dim, generator=generator)
    valid = torch.ones(num_kv_heads, past + new, dtype=torch.bool)
    valid[0, 5:9] = False
    out = masked_attention_sdpa(q, k, v, valid, scale=0.3)
    for h in range(num_q_heads):
        kv = h // 2
        for i in range(new):
            seen = valid[kv, : past + i + 1].nonzero()[:, 0]
            weights = torch.softmax(q[h, i] @ k[kv, seen].T * 0.3, dim=-1)
            torch.testing.assert_close(out[h, i], weights @ v[kv, seen], rtol=1e-5, atol=1e-5)

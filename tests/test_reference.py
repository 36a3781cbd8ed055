import math

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
from entropyinfer_sgl.core.reference import compressed_decode_reference, dense_prefill_reference, sparse_prefill_reference
from attention_inputs import structured_qk

CFG = EntropyInferConfig().replace(segment_size_tokens=32, block_size_tokens=8, base_budget_tokens=16,
                                   max_budget_tokens=48, min_sparse_len_tokens=64)


def per_query_oracle(q, k, v, plan):
    """Independent oracle: for every query token and head, gather the listed keys and softmax them."""
    seq_len, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[1]
    out = torch.zeros(seq_len, num_q_heads, head_dim, dtype=torch.float64)
    for h in range(num_q_heads):
        kv = h // group
        for i in range(seq_len):
            blocks = plan.row(kv, i // plan.segment_size_tokens).tolist()
            keys = [j for b in blocks for j in range(b * 8, min(b * 8 + 8, seq_len)) if j <= i]
            s = (k[keys, kv].double() @ q[i, h].double()) / math.sqrt(head_dim)
            out[i, h] = torch.softmax(s, 0) @ v[keys, kv].double()
    return out


@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads", [(150, 2, 2), (200, 8, 2), (131, 8, 1)])
def test_sparse_reference_matches_per_query_oracle(seq_len, num_q_heads, num_kv_heads, generator):
    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, 16, generator=generator)
    v = torch.randn(seq_len, num_kv_heads, 16, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=1)
    assert plan.density() < 1.0
    out, lse = sparse_prefill_reference(q, k, v, plan)
    assert not bool(torch.isnan(out).any()) and not bool(torch.isnan(lse).any())
    assert torch.allclose(out.double(), per_query_oracle(q, k, v, plan), atol=1e-5)


def test_dense_plan_equals_dense_attention(generator):
    q, k = structured_qk(150, 4, 2, 16, generator=generator)
    v = torch.randn(150, 2, 16, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=0)  # layer 0: dense
    out, lse = sparse_prefill_reference(q, k, v, plan)
    ref_out, ref_lse = dense_prefill_reference(q, k, v)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(lse, ref_lse, atol=1e-6)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1),
        is_causal=True).transpose(0, 1)
    assert torch.allclose(out, sdpa, atol=1e-5)


def test_lse_merges_partial_attention(generator):
    """out/lse of two disjoint key sets merge into attention over their union (what chunked prefill needs)."""
    q, k = structured_qk(96, 2, 1, 16, generator=generator)
    v = torch.randn(96, 1, 16, generator=generator)
    full_out, full_lse = dense_prefill_reference(q, k, v)
    last = 95
    qi = q[last]
    keys_a, keys_b = torch.arange(0, 40), torch.arange(40, 96)
    idx_a = torch.stack([keys_a]).to(torch.int32)
    o_a, l_a = compressed_decode_reference(qi, k, v, idx_a, torch.tensor([40], dtype=torch.int32))
    o_b, l_b = compressed_decode_reference(qi, k, v, keys_b[None].to(torch.int32), torch.tensor([56], dtype=torch.int32))
    lse = torch.logaddexp(l_a, l_b)
    merged = o_a * torch.exp(l_a - lse)[:, None] + o_b * torch.exp(l_b - lse)[:, None]
    assert torch.allclose(merged, full_out[last], atol=1e-5) and torch.allclose(lse, full_lse[last], atol=1e-5)


def test_compressed_decode_reference_per_head_lists(generator):
    k = torch.randn(50, 2, 8, generator=generator)
    v = torch.randn(50, 2, 8, generator=generator)
    q = torch.randn(4, 8, generator=generator)
    kept = torch.tensor([[0, 3, 7, 49, -1], [1, 2, 10, 20, 49]], dtype=torch.int32)
    lengths = torch.tensor([4, 5], dtype=torch.int32)
    out, lse = compressed_decode_reference(q, k, v, kept, lengths)
    for h in range(4):
        kv = h // 2
        rows = kept[kv, : lengths[kv]].long()
        s = k[rows, kv] @ q[h] / math.sqrt(8)
        assert torch.allclose(out[h], torch.softmax(s, 0) @ v[rows, kv], atol=1e-6)
        assert torch.allclose(lse[h], torch.logsumexp(s, 0), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        compressed_decode_reference(q, k, v, torch.tensor([[60], [0]], dtype=torch.int32), torch.tensor([1, 1]))


def test_reference_refuses_mismatched_plan(generator):
    q, k = structured_qk(150, 4, 2, 16, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=1)
    with pytest.raises(ValueError, match="plan is for"):
        sparse_prefill_reference(q[:140].contiguous(), k[:140].contiguous(), k[:140].contiguous(), plan)

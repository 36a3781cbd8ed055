import math

import pytest
import torch
import torch.nn.functional as F

from entropyinfer_sgl import (EntropyInferConfig, adaptive_budgets, compression_due, eviction_order,
                              observation_scores, plan_decode_compression)
from entropyinfer_sgl.core.decode import uniform_kept_entries

CFG = EntropyInferConfig().replace(decode_budget_tokens=40, observation_window_tokens=8, local_window_tokens=8,
                                   sink_tokens=2, pooling_kernel_tokens=3, decode_delay_steps=4)


def snapkv_oracle(window_q, k_cache, window, kernel, reduction):
    """SnapKV as the prototype writes it (keys expanded to every query head), reduced per kv group afterwards."""
    num_window, num_q_heads, head_dim = window_q.shape
    num_tokens, num_kv_heads, _ = k_cache.shape
    group = num_q_heads // num_kv_heads
    keys = k_cache.repeat_interleave(group, dim=1).permute(1, 0, 2)  # [Hq, T, D]
    attn = window_q.permute(1, 0, 2) @ keys.transpose(1, 2) / math.sqrt(head_dim)  # [Hq, W, T]
    for i in range(num_window):
        attn[:, i, num_tokens - num_window + i + 1:] = float("-inf")
    attn = torch.softmax(attn, dim=-1).mean(dim=1)  # [Hq, T]
    attn = attn.view(num_kv_heads, group, num_tokens)
    attn = attn.mean(1) if reduction == "mean" else attn.amax(1)
    scored = attn[:, : num_tokens - window]
    return F.avg_pool1d(scored[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


@pytest.mark.parametrize("reduction", ["mean", "max"])
@pytest.mark.parametrize("num_q_heads, num_kv_heads", [(2, 2), (8, 2), (8, 1)])
def test_observation_scores_match_snapkv(reduction, num_q_heads, num_kv_heads, generator):
    cfg = CFG.replace(decode_gqa_reduction=reduction)
    k_cache = torch.randn(70, num_kv_heads, 16, generator=generator)
    window_q = torch.randn(8, num_q_heads, 16, generator=generator)
    scores = observation_scores(window_q, k_cache, cfg)
    expected = snapkv_oracle(window_q, k_cache, 8, 3, reduction)
    assert scores.shape == (num_kv_heads, 70)
    assert torch.allclose(scores[:, :62], expected, atol=1e-6)
    assert torch.equal(scores[:, 62:], torch.zeros(num_kv_heads, 8))


def test_eviction_order_brute_force(generator):
    scores = torch.round(torch.rand(3, 30, generator=generator) * 5) / 5  # ties
    order = eviction_order(scores, sink_tokens=2, local_window_tokens=4)
    assert order.dtype == torch.int32
    for h in range(3):
        free = sorted(range(2, 26), key=lambda j: (float(scores[h, j]), -j))
        assert order[h].tolist() == free + [0, 1, 26, 27, 28, 29]
        assert sorted(order[h].tolist()) == list(range(30))


def test_adaptive_budgets_brute_force_and_conservation(generator):
    scores = torch.rand(4, 50, generator=generator) ** 3
    scores[1] *= 10  # one head with far more mass
    budgets = adaptive_budgets(scores, budget_tokens=10, floor_fraction=0.2)
    floor = 2
    ranked = [sorted(range(50), key=lambda j: (-float(scores[h, j]), j)) for h in range(4)]
    pool = [(-float(scores[h, j]), h, j) for h in range(4) for j in ranked[h][floor:]]
    picks = sorted(pool)[: 4 * (10 - floor)]
    expected = [floor + sum(1 for _, h, _ in picks if h == g) for g in range(4)]
    assert budgets.tolist() == expected
    assert int(budgets.sum()) == 40 and int(budgets.min()) >= floor and int(budgets[1]) == max(expected)
    assert adaptive_budgets(scores, budget_tokens=100, floor_fraction=0.5).tolist() == [50] * 4


def test_plan_keeps_protected_and_top_entries(generator):
    scores = torch.rand(2, 100, generator=generator)
    plan = plan_decode_compression(scores, CFG)
    assert plan.kept_lengths.tolist() == [40, 40]
    for h in range(2):
        kept = plan.kept_indices[h].tolist()
        assert kept == sorted(kept) and {0, 1, *range(92, 100)} <= set(kept)
        top = sorted(range(2, 92), key=lambda j: (-float(scores[h, j]), j))[:30]
        assert set(kept) - {0, 1, *range(92, 100)} == set(top)
    assert plan.kv_kept_fraction == pytest.approx(0.4) and plan.compression_ratio == pytest.approx(0.6)


@pytest.mark.parametrize("num_tokens, sink, local", [(100, 2, 8), (61, 0, 32), (41, 2, 8), (40, 2, 8), (300, 8, 0)])
@pytest.mark.parametrize("levels", [0, 3], ids=["distinct", "many-ties"])
def test_uniform_kept_entries_equal_the_plan(num_tokens, sink, local, levels, generator):
    """The threshold selection keeps what the eviction order keeps, ties to the lower position included."""
    config = CFG.replace(sink_tokens=sink, local_window_tokens=local, observation_window_tokens=min(8, local or 8))
    scores = torch.rand(3, num_tokens, generator=generator)
    if levels:
        scores = torch.floor(scores * levels) / levels  # a few values: most top-k boundaries fall inside a tie
    kept = uniform_kept_entries(scores, config)
    plan = plan_decode_compression(scores, config)
    assert kept.dtype == torch.int64 and kept.shape == plan.kept_indices.shape
    assert torch.equal(kept, plan.kept_indices.to(torch.int64))


def test_uniform_kept_entries_refuse_adaptive_budgets_and_nan():
    with pytest.raises(ValueError, match="uniform budgets"):
        uniform_kept_entries(torch.rand(2, 50), CFG.replace(adaptive_decode_budgets=True))
    with pytest.raises(ValueError, match="NaN"):
        uniform_kept_entries(torch.full((2, 50), float("nan")), CFG)


def test_adaptive_plan_has_per_head_lengths(generator):
    scores = torch.rand(3, 200, generator=generator) ** 4
    scores[0, 2:120] += 1.0  # head 0 spreads its attention widely
    plan = plan_decode_compression(scores, CFG.replace(adaptive_decode_budgets=True))
    lengths = plan.kept_lengths.tolist()
    assert sum(lengths) == 3 * 40 and lengths[0] > lengths[1] and lengths[0] > lengths[2]
    assert bool((plan.kept_indices[1, lengths[1]:] == -1).all())


def test_no_compression_below_budget(generator):
    plan = plan_decode_compression(torch.rand(2, 35, generator=generator), CFG)
    assert plan.kept_lengths.tolist() == [35, 35] and plan.kv_kept_fraction == 1.0
    assert plan.kept_indices[0].tolist() == list(range(35))


def test_compression_schedule():
    once = CFG
    assert [t for t in range(40) if compression_due(t, once)] == [4]
    repeated = CFG.replace(decode_evict_interval_steps=10)
    assert [t for t in range(40) if compression_due(t, repeated)] == [4, 14, 24, 34]
    immediate = CFG.replace(decode_delay_steps=0)
    assert compression_due(0, immediate)
    assert not any(compression_due(t, CFG.replace(decode_compression=False)) for t in range(40))


def test_decode_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        eviction_order(torch.tensor([[0.1, float("nan")]]), sink_tokens=0, local_window_tokens=0)
    with pytest.raises(ValueError, match="not a multiple"):
        observation_scores(torch.randn(4, 3, 8), torch.randn(20, 2, 8), CFG)
    with pytest.raises(ValueError, match="observation window"):
        observation_scores(torch.randn(30, 2, 8), torch.randn(20, 2, 8), CFG)
    with pytest.raises(ValueError, match="floor_fraction"):
        adaptive_budgets(torch.rand(2, 5), budget_tokens=3, floor_fraction=2.0)

"""The Rust planner (`entropyinfer_sgl._scheduler`) and the torch planner agree bit for bit (docs/planner_spec.md)."""

import numpy as np
import pytest
import torch

from entropyinfer_sgl import (EntropyInferConfig, adaptive_budgets, eviction_order, head_budgets, keep_blocks,
                              plan_decode_compression, plan_prefill, profile_prefill, select_blocks)
from entropyinfer_sgl import _scheduler
from entropyinfer_sgl.core import rust_planner
from attention_inputs import structured_qk

SEEDS = range(12)


def _entropies(gen, heads, segments):
    entropy = torch.rand(heads, segments, generator=gen) * 6
    entropy[0] = 1e-7  # rigid
    entropy[1, : segments // 2] = 1e-8  # rigid, then dynamic
    entropy[2] = torch.round(entropy[2])  # flat stretches: shrinking budgets
    return entropy


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("causal", [False, True])
def test_head_budgets_and_keep_blocks(seed, causal):
    gen = torch.Generator().manual_seed(seed)
    cfg = EntropyInferConfig(base_budget_tokens=int(torch.randint(64, 4096, (1,), generator=gen)),
                             budget_growth_rate=float(torch.rand(1, generator=gen)),
                             entropy_growth_threshold=float(torch.rand(1, generator=gen)))
    cfg = cfg.replace(max_budget_tokens=3 * cfg.base_budget_tokens)
    seq_len = int(torch.randint(1100, 9000, (1,), generator=gen))
    nseg = -(-seq_len // 512)
    entropy = _entropies(gen, 5, nseg)
    rigid_t, budgets_t, state_t = head_budgets(entropy, cfg, causal=causal)
    rigid_r, budgets_r, state_r = rust_planner.head_budgets(entropy, cfg, causal=causal)
    assert torch.equal(rigid_t, rigid_r) and torch.equal(budgets_t, budgets_r)
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=512, block_size_tokens=8)
    assert torch.equal(keep_blocks(budgets_t, **sizes), rust_planner.keep_blocks(budgets_r, **sizes))
    if causal:
        assert state_r.segments_seen == state_t.segments_seen
        assert torch.equal(state_r.prev_budget_tokens, state_t.prev_budget_tokens)
        assert torch.equal(state_r.rigid_so_far, state_t.rigid_so_far)
        # chunk by chunk through Rust equals the whole prompt through torch
        _, first, mid = rust_planner.head_budgets(entropy[:, :3], cfg, causal=True)
        _, rest, _ = rust_planner.head_budgets(entropy[:, 3:], cfg, causal=True, state=mid)
        assert torch.equal(torch.cat([first, rest], 1), budgets_t)


@pytest.mark.parametrize("seed", SEEDS)
def test_select_blocks(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    seq_len = int(torch.randint(300, 1500, (1,), generator=gen))
    nseg, nrep = -(-seq_len // 64), 8
    scores = torch.rand(3, nseg, (nseg - 1) * nrep, generator=gen)
    scores[1] = torch.round(scores[1] * 3) / 3  # ties
    keep = torch.minimum(torch.randint(0, 40, (3, nseg), generator=gen, dtype=torch.int32),
                         (torch.arange(nseg, dtype=torch.int32) * nrep)[None])
    sparse = torch.rand(nseg, generator=gen) < 0.8
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=64, block_size_tokens=8)
    indptr_t, indices_t = select_blocks(scores, keep, sparse, **sizes)
    indptr_r, indices_r = rust_planner.select_blocks(scores, keep, sparse, **sizes)
    assert torch.equal(indptr_t, indptr_r) and torch.equal(indices_t, indices_r)


def test_plan_prefill_backends_agree(generator):
    cfg = EntropyInferConfig().replace(segment_size_tokens=64, base_budget_tokens=64, max_budget_tokens=192,
                                       min_sparse_len_tokens=128)
    q, k = structured_qk(900, 8, 2, 32, generator=generator, rigid_kv_heads=(1,))
    profile = profile_prefill(q, k, cfg)
    for per_head in (True, False):
        c = cfg.replace(per_head_budgets=per_head)
        a, b = plan_prefill(profile, c, layer_idx=2), plan_prefill(profile, c, layer_idx=2, backend="rust")
        assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)


@pytest.mark.parametrize("seed", SEEDS)
def test_decode_planning(seed):
    gen = torch.Generator().manual_seed(200 + seed)
    scores = torch.rand(4, 300, generator=gen) ** 3
    scores[2] = torch.round(scores[2] * 5) / 5  # ties
    budget, floor = int(torch.randint(1, 200, (1,), generator=gen)), float(torch.rand(1, generator=gen))
    assert torch.equal(adaptive_budgets(scores, budget_tokens=budget, floor_fraction=floor),
                       rust_planner.adaptive_budgets(scores, budget_tokens=budget, floor_fraction=floor))
    assert torch.equal(eviction_order(scores, sink_tokens=4, local_window_tokens=16),
                       rust_planner.eviction_order(scores, sink_tokens=4, local_window_tokens=16))
    cfg = EntropyInferConfig(decode_budget_tokens=100, sink_tokens=4, local_window_tokens=16,
                             adaptive_decode_budgets=bool(seed % 2))
    a, b = plan_decode_compression(scores, cfg), plan_decode_compression(scores, cfg, backend="rust")
    assert torch.equal(a.kept_indices, b.kept_indices) and torch.equal(a.kept_lengths, b.kept_lengths)


def test_typed_errors():
    assert issubclass(_scheduler.ShapeError, _scheduler.SchedulerError)
    assert issubclass(_scheduler.SchedulerError, ValueError)
    with pytest.raises(_scheduler.NonFiniteError):
        _scheduler.eviction_order(np.array([[0.1, np.nan]], dtype=np.float32), sink_tokens=0, local_window_tokens=0)
    with pytest.raises(_scheduler.ShapeError):
        _scheduler.keep_blocks(np.ones((2, 3), dtype=np.float32), seq_len_tokens=5000, segment_size_tokens=512,
                               block_size_tokens=8)
    with pytest.raises(_scheduler.ParameterError):
        _scheduler.adaptive_budgets(np.ones((2, 3), dtype=np.float32), budget_tokens=2, floor_fraction=2.0)
    with pytest.raises(TypeError):
        _scheduler.eviction_order(np.ones((2, 3), dtype=np.float64), sink_tokens=0, local_window_tokens=0)
    with pytest.raises(_scheduler.SchedulerError):
        _scheduler.head_budgets(np.ones((1, 3), dtype=np.float32), rigid_entropy_threshold=1e-5,
                                entropy_growth_threshold=0.4, budget_growth_rate=0.5, base_budget_tokens=2048.0,
                                max_budget_tokens=1000.0, causal=False)


@pytest.mark.parametrize("ends", [[128, 256, 300], [100, 200, 300]], ids=["aligned", "unaligned"])
def test_chunk_planning_backends_agree(ends, generator):
    """The CPU engine's planner (Rust: typing and selection, chunk by chunk) gives the torch reference's plans and
    typing states, for chunks cut at and inside segments (rows before a chunk's first segment: not planned)."""
    from entropyinfer_sgl.runtime.chunk_plan import plan_chunk

    cfg = EntropyInferConfig().replace(segment_size_tokens=32, base_budget_tokens=16, max_budget_tokens=48,
                                       min_sparse_len_tokens=64)
    q, k = structured_qk(ends[-1], 8, 2, 32, generator=generator, rigid_kv_heads=(1,))
    typing = {"torch": None, "rust": None}
    prefix = 0
    for end in ends:
        got = {name: plan_chunk(q[prefix:end], k[:end], cfg, prefix_len=prefix, layer_idx=2, typing=typing[name],
                                planner=name, prompt_len_tokens=ends[-1]) for name in typing}
        a, b = got["torch"], got["rust"]
        assert a.sparse(prefix) and b.sparse(prefix), f"chunk {prefix}..{end} runs dense: the test cannot fail"
        assert torch.equal(a.plan.indptr, b.plan.indptr) and torch.equal(a.plan.indices, b.plan.indices)
        assert torch.equal(a.rigid, b.rigid)
        for name in ("rigid_so_far", "prev_entropy", "prev_budget_tokens"):
            assert torch.equal(getattr(a.typing.state, name), getattr(b.typing.state, name))
        typing = {name: got[name].typing for name in got}
        prefix = end


@pytest.mark.parametrize("adaptive", [True, False])
def test_decode_planning_with_padded_heads_agrees(adaptive):
    """Decode compression on the CPU plans through Rust (`decode_table.select_kept_entries`): kv heads that hold
    fewer entries than the widest one are padded with -inf scores there."""
    cfg = EntropyInferConfig.small().replace(adaptive_decode_budgets=adaptive)
    for seed in range(8):
        gen = torch.Generator().manual_seed(300 + seed)
        scores = torch.rand(3, 700, generator=gen) ** 3
        scores[1, 300:500] = float("-inf")
        scores[2, 10:20] = float("-inf")
        scores[0, 100:200] = torch.round(scores[0, 100:200] * 4) / 4  # ties
        a, b = plan_decode_compression(scores, cfg), plan_decode_compression(scores, cfg, backend="rust")
        assert int(a.kept_lengths.max()) < 700  # compression evicts something: the comparison can fail
        for name in ("kept_indices", "kept_lengths", "eviction_order", "budgets_tokens"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name

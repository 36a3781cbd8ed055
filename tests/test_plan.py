import dataclasses

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
from entropyinfer_sgl.core.plan import select_blocks, sparse_segment_mask
from attention_inputs import structured_qk

CFG = EntropyInferConfig().replace(segment_size_tokens=64, block_size_tokens=8, base_budget_tokens=64,
                                   max_budget_tokens=192, min_sparse_len_tokens=128)


def brute_force_rows(block_scores, keep, sparse, seq_len, segment, block):
    """Independent oracle: a Python loop over rows, ranking by (score desc, block asc)."""
    num_heads, nseg, _ = block_scores.shape
    nrep, nkb = segment // block, -(-seq_len // block)
    rows = []
    for h in range(num_heads):
        for s in range(nseg):
            own = list(range(s * nrep, min((s + 1) * nrep, nkb)))
            k = int(keep[h, s])
            if not bool(sparse[s]) or k == 0:
                rows.append(list(range(0, s * nrep)) + own)
                continue
            ranked = sorted(range(s * nrep), key=lambda j: (-float(block_scores[h, s, j]), j))
            rows.append(sorted(ranked[:k]) + own)
    return rows


def csr_rows(indptr, indices):
    return [indices[int(indptr[r]):int(indptr[r + 1])].tolist() for r in range(len(indptr) - 1)]


@pytest.mark.parametrize("seq_len", [300, 512, 777])
def test_selection_matches_brute_force(seq_len, generator):
    nseg, nrep = -(-seq_len // 64), 8
    nb = (nseg - 1) * nrep
    scores = torch.rand(3, nseg, nb, generator=generator)
    scores[0] = torch.round(scores[0] * 4) / 4  # many ties
    keep = torch.minimum(torch.randint(0, 30, (3, nseg), generator=generator, dtype=torch.int32),
                         (torch.arange(nseg, dtype=torch.int32) * nrep)[None])
    sparse = torch.rand(nseg, generator=generator) < 0.7
    indptr, indices = select_blocks(scores, keep, sparse, seq_len_tokens=seq_len, segment_size_tokens=64,
                                    block_size_tokens=8)
    assert indptr.dtype == torch.int32 and indices.dtype == torch.int32
    assert csr_rows(indptr, indices) == brute_force_rows(scores, keep, sparse, seq_len, 64, 8)


def test_plan_is_well_formed_and_causal(generator):
    q, k = structured_qk(1000, 8, 2, 32, generator=generator, rigid_kv_heads=(1,))
    prof = profile_prefill(q, k, CFG)
    plan = plan_prefill(prof, CFG, layer_idx=3)
    nseg, nrep = plan.num_segments, 8
    assert plan.indptr.shape == (2 * nseg + 1,) and int(plan.indptr[-1]) == plan.indices.numel()
    assert bool((plan.indptr[1:] >= plan.indptr[:-1]).all())
    for h in range(2):
        for s in range(nseg):
            row = plan.row(h, s)
            own = list(range(s * nrep, min((s + 1) * nrep, plan.num_key_blocks)))
            assert bool((row[1:] > row[:-1]).all())
            assert row[-len(own):].tolist() == own
            earlier = row[:-len(own)]
            assert bool((earlier < s * nrep).all())
            if bool(plan.sparse_segments[s]):
                assert earlier.numel() == int(prof.keep_blocks[h, s])
            else:
                assert earlier.tolist() == list(range(s * nrep))
    expected_sparse = [s * 64 >= 128 and (s + 1) * 64 < 1000 for s in range(nseg)]
    assert plan.sparse_segments.tolist() == expected_sparse
    assert 0.0 < plan.density() < 1.0


def test_per_head_budgets_off_uses_one_k_per_segment(generator):
    q, k = structured_qk(1000, 8, 4, 32, generator=generator, rigid_kv_heads=(0,))
    cfg = CFG.replace(per_head_budgets=False)
    prof = profile_prefill(q, k, cfg)
    keep = prof.keep_blocks.clone()
    keep[2, 4:] = torch.minimum(keep[2, 4:] + 5, torch.arange(4, keep.shape[1], dtype=torch.int32) * 8)
    prof = dataclasses.replace(prof, keep_blocks=keep)  # one head that wants more than the others
    plan = plan_prefill(prof, cfg, layer_idx=1)
    sparse = plan.sparse_segments
    assert torch.equal(plan.keep_blocks[:, sparse], prof.keep_blocks.amax(0, keepdim=True).expand(4, -1)[:, sparse])
    per_head = plan_prefill(prof, CFG, layer_idx=1)
    assert per_head.density() < plan.density()  # the rigid head keeps fewer blocks on its own


def test_dense_layers_and_length_gate(generator):
    q, k = structured_qk(1000, 4, 2, 32, generator=generator)
    prof = profile_prefill(q, k, CFG)
    assert plan_prefill(prof, CFG, layer_idx=0).density() == 1.0  # layer 0 is dense
    gated = CFG.replace(min_sparse_len_tokens=4096)
    assert plan_prefill(profile_prefill(q, k, gated), gated, layer_idx=5).density() == 1.0
    assert not bool(sparse_segment_mask(1000, gated, layer_idx=5).any())


def test_density_counts_causal_block_pairs():
    # 2 segments of 2 blocks, one kv head; segment 1 keeps 1 of its 2 earlier blocks.
    scores = torch.tensor([[[0.0, 0.0], [0.2, 0.8]]])
    keep = torch.tensor([[0, 1]], dtype=torch.int32)
    indptr, indices = select_blocks(scores, keep, torch.tensor([False, True]), seq_len_tokens=32,
                                    segment_size_tokens=16, block_size_tokens=8)
    assert csr_rows(indptr, indices) == [[0, 1], [1, 2, 3]]
    from entropyinfer_sgl.core.plan import PrefillPlan
    plan = PrefillPlan(indptr, indices, keep, torch.tensor([False, True]), 1, 32, 16, 8)
    # causal pairs: 1 + 2 + 3 + 4 = 10; computed: 1 + 2 + (1+1) + (1+2) = 8
    assert plan.density() == pytest.approx(0.8)


def test_selection_refuses_bad_input():
    scores = torch.rand(1, 2, 8)
    ok = dict(seq_len_tokens=100, segment_size_tokens=64, block_size_tokens=8)
    with pytest.raises(ValueError, match="keep_blocks"):
        select_blocks(scores, torch.tensor([[0, 9]], dtype=torch.int32), torch.tensor([False, True]), **ok)
    with pytest.raises(ValueError, match="NaN"):
        select_blocks(torch.full((1, 2, 8), float("nan")), torch.zeros(1, 2, dtype=torch.int32),
                      torch.tensor([False, True]), **ok)
    with pytest.raises(ValueError, match="keep shape"):
        select_blocks(scores, torch.zeros(2, 2, dtype=torch.int32), torch.tensor([False, True]), **ok)
    prof_cfg = CFG.replace(segment_size_tokens=128)
    q, k = torch.randn(300, 2, 16), torch.randn(300, 2, 16)
    with pytest.raises(ValueError, match="segment/block sizes"):
        plan_prefill(profile_prefill(q, k, prof_cfg), CFG, layer_idx=1)


@pytest.mark.parametrize("prompt_len", [1000, 1024, 1025])
def test_dense_tail_runs_every_segment_holding_a_tail_token_dense(prompt_len):
    """Segments (64 tokens, gate at 128) that hold one of the prompt's last `dense_tail_tokens` tokens run dense;
    0 keeps only the last segment dense, as the prototype."""
    def sparse_ends(config):
        mask = sparse_segment_mask(prompt_len, config, layer_idx=5)
        return [64 * (s + 1) for s in range(mask.numel()) if bool(mask[s])]

    base = sparse_ends(CFG)
    assert base[0] == 192 and base[-1] < prompt_len <= base[-1] + 64 + 63  # every segment but the last
    for tail in (1, 40, 64, 130):
        ends = sparse_ends(CFG.replace(dense_tail_tokens=tail))
        assert all(end <= prompt_len - tail for end in ends)  # no sparse segment holds a tail token
        assert ends == [end for end in base if end <= prompt_len - tail]  # and nothing else changed
    assert sparse_ends(CFG.replace(dense_tail_tokens=1)) == base


def test_dense_tail_is_the_same_for_a_chunk_given_the_prompt_length():
    tail = CFG.replace(dense_tail_tokens=100)
    whole = sparse_segment_mask(1000, tail, layer_idx=5)
    chunk = sparse_segment_mask(640, tail, layer_idx=5, prompt_len_tokens=1000)
    assert torch.equal(chunk, whole[:chunk.numel()])


def test_dense_tail_raises_density_and_is_validated(generator):
    q, k = structured_qk(1000, 8, 2, 32, generator=generator)
    plain = plan_prefill(profile_prefill(q, k, CFG), CFG, layer_idx=5).density()
    tail = CFG.replace(dense_tail_tokens=200)
    assert plan_prefill(profile_prefill(q, k, tail), tail, layer_idx=5).density() > plain
    with pytest.raises(ValueError, match="dense_tail_tokens"):
        CFG.replace(dense_tail_tokens=-1)


@pytest.mark.parametrize("sink, local", [(8, 0), (0, 64), (20, 100)])
def test_sink_and_neighbour_blocks_rank_first_inside_the_budget(sink, local, generator):
    """`prefill_sink_tokens` / `prefill_local_tokens`: every sparse row holds the sink blocks and the neighbour
    blocks just before its segment, even where they score lowest, and keeps its budget (same row lengths)."""
    q, k = structured_qk(1000, 8, 2, 32, generator=generator, rigid_kv_heads=(1,))
    profile = profile_prefill(q, k, CFG)
    low = profile.block_scores.clone()
    sink_blocks, local_blocks = -(-sink // 8), -(-local // 8)
    nseg, per_segment = low.shape[1], 64 // 8
    for s in range(nseg):
        visible = s * per_segment
        low[:, s, :sink_blocks] = -1.0  # the forced blocks score lowest of all: only the setting can pick them
        low[:, s, max(visible - local_blocks, 0):visible] = -1.0
    profile = dataclasses.replace(profile, block_scores=low)
    lever = CFG.replace(prefill_sink_tokens=sink, prefill_local_tokens=local)
    plain, plan = plan_prefill(profile, CFG, layer_idx=3), plan_prefill(profile, lever, layer_idx=3)
    assert torch.equal(plan.indptr, plain.indptr)  # the same number of blocks in every row: density unchanged
    checked = 0
    for h in range(2):
        for s in range(nseg):
            if not bool(plan.sparse_segments[s]):
                assert plan.row(h, s).tolist() == plain.row(h, s).tolist()
                continue
            visible = s * per_segment
            forced = set(range(min(sink_blocks, visible))) | set(range(max(visible - local_blocks, 0), visible))
            chosen = [b for b in plan.row(h, s).tolist() if b < visible]
            keep = int(plan.keep_blocks[h, s])
            if keep >= len(forced):
                assert forced <= set(chosen), (h, s)
            else:  # a budget below the forced blocks: the lowest ids (the sink first)
                assert chosen == sorted(forced)[:keep], (h, s)
            checked += 1
            if visible - len(forced) >= keep:  # without the setting, none of them is picked
                assert not {b for b in plain.row(h, s).tolist() if b < visible} & forced, (h, s)
    assert checked > 10
    assert torch.equal(profile.block_scores, low)  # the profile is not changed (layer fusion reads it again)
    rust = plan_prefill(profile, lever, layer_idx=3, backend="rust")
    assert torch.equal(rust.indptr, plan.indptr) and torch.equal(rust.indices, plan.indices)


def test_sink_and_neighbour_settings_are_validated():
    for name in ("prefill_sink_tokens", "prefill_local_tokens"):
        with pytest.raises(ValueError, match=name):
            CFG.replace(**{name: -8})
        with pytest.raises(ValueError, match=name):
            CFG.replace(**{name: 1.5})

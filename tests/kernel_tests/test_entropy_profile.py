"""Fused profiling kernel and the on-device planner against the float32 oracles (`profile_prefill`, `plan_prefill`)."""

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, head_budgets, plan_prefill, profile_prefill
from entropyinfer_sgl.core.profile import attention_entropy, block_scores
from attention_inputs import structured_qk

CFG = EntropyInferConfig().replace(segment_size_tokens=64, block_size_tokens=8, base_budget_tokens=64,
                                   max_budget_tokens=192, min_sparse_len_tokens=128)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.float16: (2e-3, 2e-2)}  # (p, entropy) absolute


@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads", [(300, 4, 4), (333, 8, 2), (129, 8, 1), (700, 9, 3)])
@pytest.mark.parametrize("dtype, rows_per_program, split_blocks", [
    (torch.float32, 64, None), (torch.float16, 64, None), (torch.float32, 16, None),
    (torch.float32, 64, 32), (torch.float16, 16, 32),  # key blocks split over programs (up to 3 splits here)
])
def test_block_scores_and_entropy_match_oracle(seq_len, num_q_heads, num_kv_heads, dtype, rows_per_program,
                                               split_blocks, generator):
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, 32, generator=generator, spike=6.0)
    q, k = q.to(DEVICE, dtype), k.to(DEVICE, dtype)
    p, entropy = block_scores_and_entropy(q, k, CFG, block_j=32, rows_per_program=rows_per_program,
                                          split_blocks=split_blocks)
    p_ref = block_scores(q.float(), k.float(), CFG)
    entropy_ref = attention_entropy(p_ref)
    tol_p, tol_e = TOLERANCE[dtype]
    assert p.dtype == torch.float32 and entropy.dtype == torch.float32  # float16 inputs: a float32 p
    assert not bool(torch.isnan(p).any()) and not bool(torch.isnan(entropy).any())
    assert torch.allclose(p.float().cpu(), p_ref.cpu(), atol=tol_p, rtol=0)
    assert torch.allclose(entropy[:, 1:].cpu(), entropy_ref[:, 1:].float().cpu(), atol=tol_e, rtol=tol_e)


def test_split_key_blocks_merge_exactly(generator):
    """Every split of the key blocks gives the same p as one program per segment group (the merge of the splits'
    maxima and normalisers is exact up to float32 rounding), and split sizes that are not whole BLOCK_J tiles are
    refused."""
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    q, k = structured_qk(1100, 8, 2, 32, generator=generator, spike=6.0)  # 17 segments, 128 key blocks
    q, k = q.to(DEVICE), k.to(DEVICE)
    whole, whole_entropy = block_scores_and_entropy(q, k, CFG, block_j=16, split_blocks=128)
    for split_blocks in (16, 48, 64):
        p, entropy = block_scores_and_entropy(q, k, CFG, block_j=16, split_blocks=split_blocks)
        assert torch.allclose(p, whole, atol=1e-6, rtol=1e-5), split_blocks
        assert torch.allclose(entropy, whole_entropy, atol=1e-5, rtol=1e-5), split_blocks
    for bad in (0, 24, -16, 16.0):
        with pytest.raises(ValueError, match="split_blocks"):
            block_scores_and_entropy(q, k, CFG, block_j=16, split_blocks=bad)


def test_split_size_blocks():
    from entropyinfer_sgl.kernels.entropy_profile import MAX_SPLITS, MIN_SPLIT_BLOCKS, split_size_blocks

    assert split_size_blocks(80, 32) == MIN_SPLIT_BLOCKS  # short prompts: one split
    assert split_size_blocks(16320, 64) == 1024  # 128k, default segments and blocks: 16 splits of 1024
    for num_blocks in (1, 300, 4097, 32704, 100000):
        size = split_size_blocks(num_blocks, 64)
        assert size % 64 == 0 and size >= MIN_SPLIT_BLOCKS and -(-num_blocks // size) <= MAX_SPLITS


def test_float32_block_scores_in_the_kernel(generator):
    """`float32_block_scores` with 16-bit inputs: float32 products and a float32 p, the float32 oracle's values on
    the same inputs, to a float32 tolerance that a 16-bit p cannot meet (bf16 only on a GPU: the default path's
    bf16 `tl.dot` is wrong in the CPU interpreter)."""
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    dtypes = [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]
    config = CFG.replace(float32_block_scores=True)
    for dtype in dtypes:
        q, k = structured_qk(333, 8, 2, 32, generator=generator, spike=6.0)
        q[:, 4:] *= 3.0
        q, k = q.to(DEVICE, dtype), k.to(DEVICE, dtype)
        p, entropy = block_scores_and_entropy(q, k, config, block_j=32)
        p_ref = block_scores(q.float(), k.float(), CFG)
        assert p.dtype == torch.float32 and not bool(torch.isnan(p).any())
        assert torch.allclose(p.cpu(), p_ref.cpu(), atol=2e-5, rtol=0)
        assert torch.allclose(entropy[:, 1:].cpu(), attention_entropy(p_ref)[:, 1:].cpu(), atol=1e-4, rtol=1e-4)


def test_float16_inputs_keep_what_float16_loses(generator):
    """float16 q/k (SGLang's default for a model whose config says float32): scores above float16's largest value
    stay finite and probabilities below its smallest (6e-8) stay above 0 in the float32 p, so top-k still ranks
    those blocks by score, not by block id."""
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    q, k = structured_qk(333, 8, 2, 32, generator=generator, spike=300.0)  # kv head 0: scores ~ 90000
    q[:, 4:], k[:, 1] = q[:, 4:] * 3.0, k[:, 1] * 3.0  # kv head 1: distributions spread over tens of nats
    q, k = q.to(DEVICE, torch.float16), k.to(DEVICE, torch.float16)
    p, entropy = block_scores_and_entropy(q, k, CFG, block_j=32)
    p_ref = block_scores(q.float(), k.float(), CFG)
    assert p.dtype == torch.float32 and bool(torch.isfinite(p).all()) and bool(torch.isfinite(entropy).all())
    tiny = (p_ref > 1e-30) & (p_ref < 6e-8)
    assert int(tiny.sum()) >= 10 and bool((p.cpu()[tiny.cpu()] > 0).all())
    assert torch.allclose(p.cpu(), p_ref.cpu(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_budget_scan_equals_torch_planner(causal, generator):
    from entropyinfer_sgl.kernels.budget_scan import head_budgets_device

    entropy = torch.rand(5, 23, generator=generator) * 3
    entropy[1] = 1e-7  # rigid
    entropy[2, :9] = 1e-8  # rigid, then dynamic
    entropy[3, 0] = float("nan")  # segment 0 is never read
    rigid, budgets, state = head_budgets_device(entropy.to(DEVICE), CFG, causal=causal)
    rigid_ref, budgets_ref, state_ref = head_budgets(entropy, CFG, causal=causal)
    assert torch.equal(rigid.cpu(), rigid_ref) and rigid.tolist()[:3] == [False, True, False]
    assert torch.equal(budgets.cpu(), budgets_ref)
    if causal:  # chunks continue exactly
        _, first, mid = head_budgets_device(entropy[:, :10].to(DEVICE), CFG, causal=True)
        _, second, _ = head_budgets_device(entropy[:, 10:].to(DEVICE), CFG, causal=True, state=mid)
        assert torch.equal(torch.cat([first, second], 1).cpu(), budgets_ref)
        assert state.segments_seen == 23 and torch.equal(state.prev_budget_tokens.cpu(), state_ref.prev_budget_tokens)


@pytest.mark.parametrize("config", [CFG, CFG.replace(per_head_budgets=False, causal_head_typing=False),
                                    CFG.replace(max_budget_tokens=2048),
                                    CFG.replace(prefill_sink_tokens=16, prefill_local_tokens=40)])
@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads", [(700, 4, 2), (333, 8, 1), (640, 2, 2)])
def test_device_plan_equals_oracle_plan(config, seq_len, num_q_heads, num_kv_heads, generator):
    from entropyinfer_sgl.core.device_plan import plan_prefill_device

    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, 32, generator=generator, rigid_kv_heads=(0,))
    profile, plan = plan_prefill_device(q.to(DEVICE), k.to(DEVICE), config, layer_idx=2)
    # Oracle plan from the kernel's own scores, so that rounding differences in p cannot change the selection.
    reference = plan_prefill(_cpu(profile), config, layer_idx=2)
    nnz = int(plan.indptr[-1])
    assert torch.equal(plan.indptr.cpu(), reference.indptr)
    assert torch.equal(plan.indices[:nnz].cpu(), reference.indices)
    assert plan.indices.numel() >= nnz
    assert plan.density() == pytest.approx(reference.density())
    oracle = profile_prefill(q, k, config)
    assert torch.equal(profile.rigid.cpu(), oracle.rigid)



@pytest.mark.parametrize("config", [CFG, CFG.replace(per_head_budgets=False)])
@pytest.mark.parametrize("first_segment", [1, 4, 10])
def test_device_plan_from_a_segment_on_equals_oracle_rows(config, first_segment, generator):
    """A chunk after a prefix scores and selects only its own segments: those rows equal the oracle plan's rows
    (same scores, same keep counts), every earlier row is empty."""
    from entropyinfer_sgl.core.device_plan import plan_from_scores_device

    seq_len, heads = 700, 2
    q, k = structured_qk(seq_len, 4, heads, 32, generator=generator, rigid_kv_heads=(0,))
    profile = profile_prefill(q, k, config)
    plan = plan_from_scores_device(profile.block_scores[:, first_segment:].to(DEVICE),
                                   profile.keep_blocks[:, first_segment:].to(DEVICE), config, seq_len=seq_len,
                                   layer_idx=2, first_segment=first_segment)
    reference = plan_prefill(profile, config, layer_idx=2)
    nseg = reference.num_segments
    indptr, ref_indptr = plan.indptr.cpu().long(), reference.indptr.long()
    for h in range(heads):
        for s in range(nseg):
            r = h * nseg + s
            got = plan.indices.cpu()[indptr[r]:indptr[r + 1]]
            if s < first_segment:
                assert got.numel() == 0, (h, s)
            else:
                assert torch.equal(got, reference.indices[ref_indptr[r]:ref_indptr[r + 1]]), (h, s)
    assert plan.indices.numel() >= int(indptr[-1])
    assert torch.equal(plan.keep_blocks.cpu()[:, first_segment:],
                       reference.keep_blocks[:, first_segment:].to(plan.keep_blocks.dtype))
    assert not plan.keep_blocks[:, :first_segment].any()
    with pytest.raises(ValueError, match="segments from 4 on"):
        plan_from_scores_device(profile.block_scores.to(DEVICE), profile.keep_blocks.to(DEVICE), config,
                                seq_len=seq_len, layer_idx=2, first_segment=4)

@pytest.mark.parametrize("first_segment", [0, 4, 10])
def test_device_plan_ranks_sink_and_neighbour_blocks_first_from_any_segment(first_segment, generator):
    """The sink/neighbour settings through `plan_prefill(backend="device")` for a chunk's rows: the oracle's rows."""
    import dataclasses

    config = CFG.replace(prefill_sink_tokens=16, prefill_local_tokens=40)
    q, k = structured_qk(700, 4, 2, 32, generator=generator, rigid_kv_heads=(0,))
    profile = profile_prefill(q, k, config)
    rows = dataclasses.replace(profile, block_scores=profile.block_scores[:, first_segment:].to(DEVICE),
                               keep_blocks=profile.keep_blocks[:, first_segment:].to(DEVICE))
    plan = plan_prefill(rows, config, layer_idx=2, backend="device", first_segment=first_segment)
    reference = plan_prefill(profile, config, layer_idx=2)
    assert not torch.equal(reference.indices, plan_prefill(profile, CFG, layer_idx=2).indices)  # the setting acts
    indptr, ref_indptr, nseg = plan.indptr.cpu().long(), reference.indptr.long(), reference.num_segments
    for r in range(2 * nseg):
        if r % nseg >= first_segment:
            got = plan.indices.cpu()[indptr[r]:indptr[r + 1]]
            assert torch.equal(got, reference.indices[ref_indptr[r]:ref_indptr[r + 1]]), r


def _cpu(profile):
    import dataclasses

    return dataclasses.replace(profile, entropy=profile.entropy.cpu(), rigid=profile.rigid.cpu(),
                               budget_tokens=profile.budget_tokens.cpu(), keep_blocks=profile.keep_blocks.cpu(),
                               block_scores=profile.block_scores.cpu(), typing_state=None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_plan_bf16_real_size(generator):
    from entropyinfer_sgl.core.device_plan import plan_prefill_device

    cfg = EntropyInferConfig()
    q = torch.randn(16384, 32, 128, generator=generator).to("cuda", torch.bfloat16)
    k = torch.randn(16384, 8, 128, generator=generator).to("cuda", torch.bfloat16)
    profile, plan = plan_prefill_device(q, k, cfg, layer_idx=3)
    reference = plan_prefill(_cpu(profile), cfg, layer_idx=3)
    nnz = int(plan.indptr[-1])
    assert torch.equal(plan.indptr.cpu(), reference.indptr)
    assert torch.equal(plan.indices[:nnz].cpu(), reference.indices)
    oracle = block_scores(q.float(), k.float(), cfg)
    assert torch.allclose(profile.block_scores.float(), oracle, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_entropy_kernel_bf16_types_like_float32(generator):
    """bfloat16 on a GPU, SmolLM2's geometry and `small()`: peaked and spread block distributions (not the near-uniform
    ones of plain randn, which any p passes), entropies and typing against the float32 oracle. Triton's CPU
    interpreter computes `tl.dot` of bfloat16 wrongly, so only a GPU can check the kernel's bfloat16."""
    from entropyinfer_sgl.core.device_plan import plan_prefill_device
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy

    config = EntropyInferConfig.small()
    q, k = structured_qk(4096, 9, 3, 64, generator=generator, rigid_kv_heads=(0,), spike=12.0)
    q[:, 3:6] *= 0.3  # kv head 1: spread distributions (high entropy); kv head 2 as drawn: peaked
    q, k = q.to("cuda", torch.bfloat16), k.to("cuda", torch.bfloat16)
    p, entropy = block_scores_and_entropy(q, k, config)
    p_ref = block_scores(q.float(), k.float(), config)
    entropy_ref = attention_entropy(p_ref)
    assert not bool(torch.isnan(p).any()) and not bool(torch.isnan(entropy).any())
    assert torch.allclose(p.float(), p_ref, atol=2e-2, rtol=0)
    assert torch.allclose(entropy[:, 1:], entropy_ref[:, 1:], atol=5e-2, rtol=2e-2)
    assert float(entropy_ref[1, 1:].min()) > 1.0 > float(entropy_ref[0, 1:].max())  # the inputs do spread and peak
    profile, _ = plan_prefill_device(q, k, config, layer_idx=3)
    assert torch.equal(profile.rigid.cpu(), profile_prefill(q.float(), k.float(), config).rigid.cpu())

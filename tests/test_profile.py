import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
from prototype_replica import prototype_profile
from attention_inputs import structured_qk

SMALL_PAPER = EntropyInferConfig.paper().replace(segment_size_tokens=128, base_budget_tokens=64,
                                                 max_budget_tokens=192, min_sparse_len_tokens=256)


def _replica(q, k, cfg):
    return prototype_profile(q, k, block_size=cfg.block_size_tokens, segment_size=cfg.segment_size_tokens,
                             e_t=cfg.rigid_entropy_threshold, delta_t=cfg.entropy_growth_threshold,
                             alpha=cfg.budget_growth_rate, base_budget=cfg.base_budget_tokens)


@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads", [
    (1000, 4, 4),    # GQA 1:1, last segment partial
    (1024, 8, 2),    # GQA 4:1, last segment full
    (1333, 16, 2),   # GQA 8:1, odd length (not a multiple of block)
    (129, 8, 1),     # two segments, the last one a single token
])
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_matches_prototype_to_the_element(seq_len, num_q_heads, num_kv_heads, scale, generator):
    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, 32, generator=generator)
    q, k = q * scale, k * scale
    prof = profile_prefill(q, k, SMALL_PAPER)
    ref = _replica(q, k, SMALL_PAPER)
    assert torch.equal(prof.block_scores, ref["block_scores"])
    assert torch.equal(prof.entropy, ref["entropy"])
    assert torch.equal(prof.rigid, ref["rigid"])
    assert torch.equal(prof.budget_tokens, ref["budget_tokens"])
    assert torch.equal(prof.keep_blocks, ref["keep_blocks"].to(torch.int32))
    nseg = -(-seq_len // 128)
    assert prof.entropy.shape == (num_kv_heads, nseg) and prof.block_scores.shape == (num_kv_heads, nseg, (nseg - 1) * 16)
    assert prof.typing_state is None


def test_paper_defaults_at_full_scale(generator):
    q, k = structured_qk(5000, 8, 2, 64, generator=generator, rigid_kv_heads=(1,))
    cfg = EntropyInferConfig.paper()
    prof = profile_prefill(q, k, cfg)
    ref = _replica(q, k, cfg)
    for name in ("block_scores", "entropy", "rigid", "budget_tokens"):
        assert torch.equal(getattr(prof, name), ref[name]), name
    assert prof.rigid.tolist() == [False, True]


def test_rigid_heads_found_and_budgeted(generator):
    q, k = structured_qk(1500, 8, 4, 32, generator=generator, rigid_kv_heads=(0, 2))
    prof = profile_prefill(q, k, SMALL_PAPER.replace(causal_head_typing=True))
    assert prof.rigid.tolist() == [True, False, True, False]
    assert float(prof.entropy[0, 1:].max()) < 1e-5
    assert torch.equal(prof.budget_tokens[0], torch.full((prof.num_segments,), 64.0))
    assert prof.typing_state is not None and prof.typing_state.segments_seen == prof.num_segments


def test_bfloat16_matches_prototype_scores(generator):
    q, k = structured_qk(700, 4, 2, 32, generator=generator)
    qh, kh = q.to(torch.bfloat16), k.to(torch.bfloat16)
    prof = profile_prefill(qh, kh, SMALL_PAPER)
    ref = _replica(qh, kh, SMALL_PAPER)
    assert prof.block_scores.dtype == torch.bfloat16 and prof.budget_tokens.dtype == torch.float32
    assert torch.equal(prof.block_scores, ref["block_scores"])
    assert torch.equal(prof.entropy, ref["entropy"])
    assert prof.rigid.tolist() == [True, False]


@pytest.mark.parametrize("case", ["beyond float16's range", "below float16's smallest probability"])
def test_float16_inputs_are_scored_in_float32(case, generator):
    """float16 q/k are scored as their float32 upcast (`block_score_dtype`), which keeps what float16 loses:
    unscaled scores above 65504 (SGLang's float16 SmolLM2 reaches them: inf, then NaN, refused by the planner)
    and probabilities below 6e-8 (flushed to 0, they tie and top-k picks by block id). The prototype's float16
    arithmetic fails both ways."""
    if case == "beyond float16's range":
        q, k = structured_qk(700, 4, 2, 32, generator=generator, spike=300.0)  # kv head 0: scores ~ 90000
        q, k = q * 0.1, k * 0.1
        q[:, :2, 0], k[0, 0, 0] = 300.0, 300.0
    else:  # scores spread over tens of nats: the tail of each distribution is below float16's smallest value
        q, k = structured_qk(700, 4, 2, 32, generator=generator)
        q, k = q * 3.0, k * 3.0
    qh, kh = q.to(torch.float16), k.to(torch.float16)
    prof = profile_prefill(qh, kh, SMALL_PAPER)
    upcast = profile_prefill(qh.float(), kh.float(), SMALL_PAPER)
    assert prof.block_scores.dtype == torch.float32 and bool(torch.isfinite(prof.entropy).all())
    for name in ("block_scores", "entropy", "rigid", "budget_tokens", "keep_blocks"):
        assert torch.equal(getattr(prof, name), getattr(upcast, name)), name
    cfg = SMALL_PAPER.replace(min_sparse_len_tokens=128)
    assert torch.equal(plan_prefill(prof, cfg, layer_idx=1).indices, plan_prefill(upcast, cfg, layer_idx=1).indices)
    ref = _replica(qh, kh, SMALL_PAPER)  # the prototype's float16 arithmetic
    visible = upcast.block_scores[:, 1:] > 0
    lost = ~torch.isfinite(ref["block_scores"][:, 1:]) | ((ref["block_scores"][:, 1:] == 0) & visible)
    assert bool(lost.any())


def test_float32_block_scores_score_16_bit_inputs_as_float32(generator):
    """`float32_block_scores`: bf16/fp16 q/k are scored, normalised and entropied exactly as their float32 upcast
    (without it, bf16 rounds every score to the model dtype, the prototype's arithmetic, and differs)."""
    q, k = structured_qk(700, 4, 2, 32, generator=generator)
    q[:, 2:] *= 4.0  # kv head 1: scores in the tens, where bf16 rounds to whole units
    switched = SMALL_PAPER.replace(float32_block_scores=True)
    for dtype in (torch.float16, torch.bfloat16):
        qh, kh = q.to(dtype), k.to(dtype)
        prof = profile_prefill(qh, kh, switched)
        upcast = profile_prefill(qh.float(), kh.float(), SMALL_PAPER)
        assert prof.block_scores.dtype == torch.float32
        assert torch.equal(prof.block_scores, upcast.block_scores)
        assert torch.equal(prof.entropy, upcast.entropy) and torch.equal(prof.budget_tokens, upcast.budget_tokens)
        default = profile_prefill(qh, kh, SMALL_PAPER)  # float16 is scored in float32 without the switch too
        assert torch.equal(default.block_scores.float(), upcast.block_scores) == (dtype == torch.float16)


def test_layer_fusion_mixes_previous_layer(generator):
    q, k = structured_qk(600, 4, 2, 32, generator=generator)
    cfg = SMALL_PAPER.replace(layer_fusion=True)
    first = profile_prefill(q, k, cfg)
    q2, k2 = structured_qk(600, 4, 2, 32, generator=generator)
    plain = profile_prefill(q2, k2, SMALL_PAPER)
    fused = profile_prefill(q2, k2, cfg, previous_block_scores=first.block_scores)
    assert torch.equal(fused.block_scores, first.block_scores * 0.25 + plain.block_scores * 0.75)


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(600, 4, 32), torch.randn(600, 4)), "seq_len, num_heads, head_dim"),
    (lambda: (torch.randn(600, 6, 32), torch.randn(600, 4, 32)), "not a multiple"),
    (lambda: (torch.randn(128, 4, 32), torch.randn(128, 2, 32)), "more than one segment"),
    (lambda: (torch.randn(600, 4, 32), torch.randn(599, 2, 32)), "tokens"),
    (lambda: (torch.randn(600, 4, 32), torch.randn(600, 2, 16)), "head_dim"),
    (lambda: (torch.randn(600, 4, 32).transpose(0, 1).contiguous().transpose(0, 1), torch.randn(600, 2, 32)),
     "contiguous"),
    (lambda: (torch.randn(600, 4, 32).double(), torch.randn(600, 2, 32).double()), "float32"),
    (lambda: (torch.randn(600, 4, 32), torch.randn(600, 2, 32).half()), "dtype"),
    (lambda: (torch.full((600, 4, 32), float("nan")), torch.randn(600, 2, 32)), "NaN"),
    (lambda: (torch.randn(600, 4, 32), torch.full((600, 2, 32), float("inf"))), "NaN or inf"),
])
def test_bad_input_is_refused(make, match):
    q, k = make()
    with pytest.raises(ValueError, match=match):
        profile_prefill(q, k, SMALL_PAPER)

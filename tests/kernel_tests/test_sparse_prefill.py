"""Triton block-sparse prefill against the float32 oracle `sparse_prefill_reference`.

CPU: the Triton interpreter (tests/kernel_tests/conftest.py sets TRITON_INTERPRET=1), float32/float16, tiny shapes.
GPU (`-m gpu`): bfloat16 and real sizes.
"""

from __future__ import annotations

import pytest
import torch

from attention_inputs import structured_qk
from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
from entropyinfer_sgl.core.reference import dense_prefill_reference, sparse_prefill_reference

from .conftest import DEVICE, HAS_CUDA, requires_cuda
from .kernel_testing import assert_attention_close, make_plan, random_qkv

from entropyinfer_sgl.kernels import LaunchConfig, interpret_mode, sparse_prefill, sparse_prefill_varlen  # noqa: E402

CPU_DTYPES = [torch.float32, torch.float16]

# (seq_len, num_q_heads, num_kv_heads, head_dim, segment, block, keep)
HANDMADE = [
    pytest.param(77, 2, 2, 16, 32, 8, "random", id="L77-odd-gqa1-random"),
    pytest.param(130, 8, 2, 32, 32, 8, "empty", id="L130-gqa4-empty"),
    pytest.param(96, 8, 1, 16, 32, 8, "full", id="L96-gqa8-full"),
    pytest.param(150, 4, 2, 32, 64, 8, "sparse", id="L150-S64-gqa2-sparse"),
    pytest.param(17, 2, 1, 16, 32, 8, "random", id="L17-segment0-only"),
    pytest.param(33, 4, 2, 16, 32, 8, "random", id="L33-one-token-last-segment"),
    pytest.param(101, 4, 1, 16, 32, 16, "random", id="L101-b16"),
    pytest.param(90, 2, 2, 16, 32, 4, "random", id="L90-b4"),
    pytest.param(101, 2, 1, 16, 48, 24, "random", id="L101-S48-b24-not-pow2"),
    pytest.param(70, 4, 4, 40, 32, 8, "random", id="L70-D40-padded"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads, head_dim, segment, block, keep", HANDMADE)
def test_handmade_plans_match_reference(seq_len, num_q_heads, num_kv_heads, head_dim, segment, block, keep, dtype,
                                        generator):
    plan = make_plan(seq_len, num_kv_heads, segment, block, keep=keep, generator=generator, device=DEVICE)
    q, k, v = random_qkv(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, dtype=dtype,
                         device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan)
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out, ref_lse, dtype)


PROFILED = [
    # (seq_len, Hq, Hkv, D, config changes, layer)
    pytest.param(200, 4, 2, 32, dict(segment_size_tokens=32, base_budget_tokens=16, max_budget_tokens=48,
                                     min_sparse_len_tokens=32), 1, id="L200-S32-per-head"),
    pytest.param(301, 8, 2, 16, dict(segment_size_tokens=64, base_budget_tokens=64, max_budget_tokens=192,
                                     min_sparse_len_tokens=128, per_head_budgets=False), 1, id="L301-S64-paper-k"),
    pytest.param(150, 8, 1, 16, dict(segment_size_tokens=32, base_budget_tokens=8, max_budget_tokens=24,
                                     min_sparse_len_tokens=0), 3, id="L150-S32-gqa8"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads, head_dim, changes, layer", PROFILED)
def test_profiled_plans_match_reference(seq_len, num_q_heads, num_kv_heads, head_dim, changes, layer, dtype,
                                        generator):
    config = EntropyInferConfig().replace(block_size_tokens=8, **changes)
    q, k = structured_qk(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, spike=6.0)
    v = torch.randn(seq_len, num_kv_heads, head_dim, generator=generator)
    plan = plan_prefill(profile_prefill(q, k, config), config, layer_idx=layer)
    assert plan.density() < 0.9, "the test plan should be really sparse"
    q, k, v = (t.to(DEVICE, dtype) for t in (q, k, v))
    plan = plan.to(DEVICE)
    out, lse = sparse_prefill(q, k, v, plan)
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("config", [LaunchConfig(block_m=16, block_n=16), LaunchConfig(block_m=32, block_n=16),
                                    LaunchConfig(block_m=64, block_n=32), LaunchConfig(block_m=64, block_n=64)],
                         ids=lambda c: f"M{c.block_m}-N{c.block_n}")
def test_launch_configs_agree(config, generator):
    plan = make_plan(141, 2, 64, 8, keep="random", generator=generator, device=DEVICE)
    q, k, v = random_qkv(141, 4, 2, 16, generator=generator, device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan, config=config)
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out, ref_lse, torch.float32)


PACKED = [  # (seq_len, Hq, Hkv, segment, block, keep, prefix_len, config)
    pytest.param(141, 4, 2, 32, 8, "random", 0, LaunchConfig(block_m=32, block_n=16, pack_gqa=True),
                 id="gqa2-8tokens"),
    pytest.param(130, 8, 2, 32, 8, "sparse", 0, LaunchConfig(block_m=64, block_n=32, pack_gqa=True),
                 id="gqa4-16tokens-narrower-than-N"),
    pytest.param(101, 9, 3, 32, 8, "random", 0, LaunchConfig(block_m=32, block_n=16, pack_gqa=True),
                 id="gqa3-padded-to-4"),
    pytest.param(96, 8, 1, 32, 8, "full", 0, LaunchConfig(block_m=16, block_n=16, pack_gqa=True),
                 id="gqa8-2tokens"),
    pytest.param(77, 2, 2, 32, 8, "random", 0, LaunchConfig(block_m=16, block_n=16, pack_gqa=True),
                 id="gqa1-unpacked-rows"),
    pytest.param(141, 12, 3, 32, 8, "random", 45, LaunchConfig(block_m=64, block_n=32, pack_gqa=True),
                 id="gqa4-after-prefix-45"),
    pytest.param(150, 8, 2, 64, 8, "random", 96, LaunchConfig(block_m=32, block_n=32, pack_gqa=True),
                 id="gqa4-after-prefix-96"),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("seq_len, num_q_heads, num_kv_heads, segment, block, keep, prefix_len, config", PACKED)
def test_packed_gqa_matches_reference(seq_len, num_q_heads, num_kv_heads, segment, block, keep, prefix_len, config,
                                      dtype, generator):
    """One program per (kv head, tile of block_m / next_pow2(group) tokens): every q head of the group in its
    rows, padding lanes when the group is not a power of two, tiles narrower than block_n, a chunk's prefix."""
    plan = make_plan(seq_len, num_kv_heads, segment, block, keep=keep, generator=generator, device=DEVICE)
    q, k, v = random_qkv(seq_len, num_q_heads, num_kv_heads, 16, generator=generator, dtype=dtype, device=DEVICE)
    out, lse = sparse_prefill(q[prefix_len:], k, v, plan, prefix_len=prefix_len, config=config)
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out[prefix_len:], ref_lse[prefix_len:], dtype)


def test_packed_gqa_strided_views_and_varlen(generator):
    """Packed rows read q and write out through both strides (head slices of a fused projection), and varlen
    tiles step by the packed tile's tokens."""
    config = LaunchConfig(block_m=32, block_n=16, pack_gqa=True)
    seq_len, num_q_heads, num_kv_heads = 75, 4, 2
    qkv = torch.randn(seq_len, num_q_heads + 2 * num_kv_heads, 16, generator=generator).to(DEVICE)
    q, k, v = qkv.split([num_q_heads, num_kv_heads, num_kv_heads], dim=1)
    plan = make_plan(seq_len, num_kv_heads, 32, 8, keep="random", generator=generator, device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan, config=config)
    ref = sparse_prefill_reference(q.contiguous(), k.contiguous(), v.contiguous(), plan)
    assert_attention_close(out, lse, *ref, torch.float32)
    lengths = [77, 33, 16]
    plans = [make_plan(n, num_kv_heads, 32, 8, keep="random", generator=generator, device=DEVICE) for n in lengths]
    q, k, v = random_qkv(sum(lengths), num_q_heads, num_kv_heads, 16, generator=generator, device=DEVICE)
    out, lse = sparse_prefill_varlen(q, k, v, plans, config=config)
    start = 0
    for n, plan in zip(lengths, plans):
        part = slice(start, start + n)
        assert_attention_close(out[part], lse[part], *sparse_prefill_reference(q[part], k[part], v[part], plan),
                               torch.float32)
        start += n
    with pytest.raises(ValueError, match="cannot hold one token"):
        sparse_prefill(*random_qkv(40, 32, 1, 16, generator=generator, device=DEVICE),
                       make_plan(40, 1, 32, 8, keep="random", generator=generator, device=DEVICE),
                       config=LaunchConfig(block_m=16, block_n=16, pack_gqa=True))


def test_gather_wider_than_key_step(generator):
    """Blocks of 32 tokens with 16-key steps: each gather step takes one whole block (32 lanes)."""
    plan = make_plan(100, 1, 64, 32, keep="random", generator=generator, device=DEVICE)
    q, k, v = random_qkv(100, 2, 1, 16, generator=generator, device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan, config=LaunchConfig(block_m=16, block_n=16))
    assert_attention_close(out, lse, *sparse_prefill_reference(q, k, v, plan), torch.float32)


def test_full_plan_is_dense_causal_and_scale(generator):
    plan = make_plan(64, 2, 32, 8, keep="full", generator=generator, device=DEVICE)
    q, k, v = random_qkv(64, 4, 2, 16, generator=generator, device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan, scale=0.3)
    assert_attention_close(out, lse, *dense_prefill_reference(q, k, v, scale=0.3), torch.float32)


def test_strided_views_of_packed_qkv(generator):
    """q, k, v as head slices of one packed [L, Hq + 2 Hkv, D] projection (token stride != heads * D)."""
    seq_len, num_q_heads, num_kv_heads, head_dim = 75, 4, 2, 16
    qkv = torch.randn(seq_len, num_q_heads + 2 * num_kv_heads, head_dim, generator=generator).to(DEVICE)
    q, k, v = qkv.split([num_q_heads, num_kv_heads, num_kv_heads], dim=1)
    plan = make_plan(seq_len, num_kv_heads, 32, 8, keep="random", generator=generator, device=DEVICE)
    out, lse = sparse_prefill(q, k, v, plan)
    ref_out, ref_lse = sparse_prefill_reference(q.contiguous(), k.contiguous(), v.contiguous(), plan)
    assert out.is_contiguous()
    assert_attention_close(out, lse, ref_out, ref_lse, torch.float32)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("prefix_len", [1, 32, 45, 96, 129, 140])
def test_chunk_after_a_prefix_matches_the_reference_rows(prefix_len, dtype, generator):
    """q holds only positions prefix_len.. (a chunked-prefill chunk); keys cover the whole sequence."""
    seq_len, num_q_heads, num_kv_heads, head_dim = 141, 4, 2, 16
    plan = make_plan(seq_len, num_kv_heads, 32, 8, keep="random", generator=generator, device=DEVICE)
    q, k, v = random_qkv(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, dtype=dtype,
                         device=DEVICE)
    out, lse = sparse_prefill(q[prefix_len:], k, v, plan, prefix_len=prefix_len)
    assert out.shape == (seq_len - prefix_len, num_q_heads, head_dim) and lse.shape == out.shape[:2]
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out[prefix_len:], ref_lse[prefix_len:], dtype)


def test_prefix_len_is_checked(generator):
    plan = make_plan(64, 2, 32, 8, keep="random", generator=generator, device=DEVICE)
    q, k, v = random_qkv(64, 4, 2, 16, generator=generator, device=DEVICE)
    with pytest.raises(ValueError, match="k and v must be"):
        sparse_prefill(q[10:], k, v, plan)  # rows missing but no prefix_len
    with pytest.raises(ValueError, match="prefix_len"):
        sparse_prefill(q, k, v, plan, prefix_len=-1)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=["fp32", "fp16"])
def test_varlen_matches_per_sequence(dtype, generator):
    lengths, keeps = [77, 130, 33, 16], ["random", "sparse", "full", "empty"]
    num_q_heads, num_kv_heads, head_dim = 4, 2, 16
    plans = [make_plan(n, num_kv_heads, 32, 8, keep=kp, generator=generator, device=DEVICE)
             for n, kp in zip(lengths, keeps)]
    q, k, v = random_qkv(sum(lengths), num_q_heads, num_kv_heads, head_dim, generator=generator, dtype=dtype,
                         device=DEVICE)
    out, lse = sparse_prefill_varlen(q, k, v, plans)
    start = 0
    for n, plan in zip(lengths, plans):
        part = slice(start, start + n)
        ref_out, ref_lse = sparse_prefill_reference(q[part], k[part], v[part], plan)
        assert_attention_close(out[part], lse[part], ref_out, ref_lse, dtype)
        start += n


# --- errors --------------------------------------------------------------------------------------------------
def test_cpu_tensors_without_interpreter_are_refused(monkeypatch, generator):
    plan = make_plan(40, 1, 32, 8, keep="random", generator=generator)
    q, k, v = random_qkv(40, 1, 1, 16, generator=generator)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        sparse_prefill(q, k, v, plan)


def test_kernels_defined_in_another_mode_are_refused(monkeypatch):
    import triton

    from entropyinfer_sgl.kernels._common import check_kernel_device

    with monkeypatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "0" if interpret_mode() else "1")

        @triton.jit
        def other_mode(x):
            pass

    with pytest.raises(RuntimeError, match="were defined"):
        check_kernel_device(torch.zeros(1, device=DEVICE), kernels=(other_mode,))


def test_bad_geometry_and_plans_are_refused(generator):
    q, k, v = random_qkv(48, 2, 1, 16, generator=generator, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of 16"):
        sparse_prefill(q, k, v, make_plan(48, 1, 24, 8, keep="random", generator=generator, device=DEVICE))
    with pytest.raises(ValueError, match="block_m"):
        sparse_prefill(q, k, v, make_plan(48, 1, 32, 8, keep="random", generator=generator, device=DEVICE),
                       config=LaunchConfig(block_m=64, block_n=32))
    with pytest.raises(ValueError, match="tokens"):
        sparse_prefill(q, k, v, make_plan(47, 1, 32, 8, keep="random", generator=generator, device=DEVICE))
    with pytest.raises(ValueError, match="kv heads"):
        sparse_prefill(q, k, v, make_plan(48, 2, 32, 8, keep="random", generator=generator, device=DEVICE))
    with pytest.raises(ValueError, match="multiple"):
        sparse_prefill(q[:, :1].expand(48, 3, 16), torch.cat([k, k], 1), torch.cat([v, v], 1),
                       make_plan(48, 2, 32, 8, keep="random", generator=generator, device=DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        LaunchConfig(block_m=48)
    with pytest.raises(ValueError, match="pack_gqa"):
        LaunchConfig(pack_gqa=1)


def test_gpu_launch_heuristic_packs_gqa_groups_at_head_dim_128(monkeypatch):
    import importlib

    from entropyinfer_sgl.kernels import prefill_launch_config

    # the heuristic for compiled kernels (not the interpreter's): no GPU needed to read it
    monkeypatch.setattr(importlib.import_module("entropyinfer_sgl.kernels.sparse_prefill"), "interpret_mode",
                        lambda: False)
    packed = prefill_launch_config(512, 8, 128, torch.bfloat16, group_size=4)
    assert (packed.block_m, packed.block_n, packed.pack_gqa) == (256, 64, True)
    assert prefill_launch_config(512, 8, 128, torch.float16, group_size=3).pack_gqa  # padded to 4 rows a token
    assert not prefill_launch_config(512, 8, 128, torch.bfloat16, group_size=1).pack_gqa
    assert not prefill_launch_config(512, 8, 64, torch.bfloat16, group_size=4).pack_gqa
    assert not prefill_launch_config(512, 8, 128, torch.float32, group_size=4).pack_gqa
    assert not prefill_launch_config(32, 8, 128, torch.bfloat16, group_size=4).pack_gqa  # 64-token tiles > segment


@pytest.mark.skipif(HAS_CUDA, reason="interpreter-only limitation")
def test_bfloat16_is_refused_under_the_interpreter(generator):
    assert interpret_mode()
    q, k, v = random_qkv(32, 1, 1, 16, generator=generator, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        sparse_prefill(q, k, v, make_plan(32, 1, 32, 8, keep="full", generator=generator))


# --- GPU: bf16 and real sizes ----------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("launch", [None, LaunchConfig(block_m=128, block_n=32, num_warps=4, num_stages=3)],
                         ids=["default", "per-head"])
@pytest.mark.parametrize("keep", ["profiled", "sparse"])
def test_gpu_bf16_real_size(keep, launch, generator):
    seq_len, num_q_heads, num_kv_heads, head_dim = 8192, 32, 8, 128
    config = EntropyInferConfig()  # segment 512, block 8, length gate 4096, budgets 2048..6144
    q, k, v = random_qkv(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, dtype=torch.bfloat16,
                         device="cuda")
    if keep == "profiled":
        plan = plan_prefill(profile_prefill(q, k, config), config, layer_idx=1)
    else:
        plan = make_plan(seq_len, num_kv_heads, 512, 8, keep="sparse", generator=generator, device="cuda")
    out, lse = sparse_prefill(q, k, v, plan, config=launch)
    ref_out, ref_lse = sparse_prefill_reference(q, k, v, plan)
    assert_attention_close(out, lse, ref_out, ref_lse, torch.bfloat16)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_gpu_dtypes_and_head_dims(dtype, head_dim, generator):
    seq_len, num_q_heads, num_kv_heads = 1500, 8, 2
    plan = make_plan(seq_len, num_kv_heads, 128, 8, keep="random", generator=generator, device="cuda")
    q, k, v = random_qkv(seq_len, num_q_heads, num_kv_heads, head_dim, generator=generator, dtype=dtype,
                         device="cuda")
    out, lse = sparse_prefill(q, k, v, plan)
    assert_attention_close(out, lse, *sparse_prefill_reference(q, k, v, plan), dtype)


@pytest.mark.gpu
@requires_cuda
def test_gpu_varlen_bf16(generator):
    lengths = [3000, 517, 4096, 100]
    plans = [make_plan(n, 8, 512, 8, keep="sparse", generator=generator, device="cuda") for n in lengths]
    q, k, v = random_qkv(sum(lengths), 32, 8, 128, generator=generator, dtype=torch.bfloat16, device="cuda")
    out, lse = sparse_prefill_varlen(q, k, v, plans)
    start = 0
    for n, plan in zip(lengths, plans):
        part = slice(start, start + n)
        assert_attention_close(out[part], lse[part], *sparse_prefill_reference(q[part], k[part], v[part], plan),
                               torch.bfloat16)
        start += n

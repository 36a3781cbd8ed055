"""The fused observation-window attention (`kernels.observation_scores.window_attention`) against its float32 torch
oracle (`core.decode.window_attention`), and the kernel path's compression event against the reference path's.

CPU: the Triton interpreter, float32/float16, tiny shapes (outputs NaN-poisoned by tests/conftest.py). GPU
(`-m gpu`): bfloat16 at a real cache length.
"""

from __future__ import annotations

import math

import pytest
import torch

from entropyinfer_sgl import EntropyInferConfig
from entropyinfer_sgl.core.decode import observation_scores, window_attention as reference_attention

from .conftest import DEVICE, requires_cuda

from entropyinfer_sgl.kernels.observation_scores import window_attention, window_log_sum_exp  # noqa: E402

TOLERANCE = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}  # relative to the largest score

CASES = [
    # (W, Hq, Hkv, D, T, block_n, num_splits)
    pytest.param(8, 4, 2, 16, 150, None, None, id="W8-gqa2-auto"),
    pytest.param(5, 6, 2, 40, 97, 32, 2, id="W5-gqa3-D40-two-splits"),
    pytest.param(16, 8, 1, 32, 70, 32, 3, id="W16-gqa8-splits-past-the-window"),
    pytest.param(3, 2, 2, 16, 3, 32, 1, id="window-is-the-whole-cache"),
    pytest.param(4, 4, 4, 16, 260, 32, 9, id="mha-nine-splits"),
]


def _random(shape, generator, dtype, scale=1.0):
    return (torch.randn(shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, tolerance: float | None = None) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isfinite(got).all(), "an entry was never written (NaN-poisoned output) or overflowed"
    err = (got - want.to(got.device)).abs().max().item()
    assert err <= (tolerance or TOLERANCE[dtype]) * want.abs().max().item(), f"max abs error {err:.3g}"


@pytest.mark.parametrize("reduction", ["mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n, num_splits", CASES)
def test_matches_the_oracle(num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n, num_splits, dtype,
                            reduction, generator):
    # logits of a few units: the softmax is peaked, so a wrong mask or a wrong log-sum-exp moves the result
    window_q = _random((num_window, num_q_heads, head_dim), generator, dtype, scale=2.0)
    keys = _random((num_tokens, num_kv_heads, head_dim), generator, dtype, scale=2.0)
    got = window_attention(window_q, keys, reduction=reduction, block_n=block_n, num_splits=num_splits)
    _assert_close(got, reference_attention(window_q.float().cpu(), keys.float().cpu(), reduction=reduction), dtype)


def test_reads_keys_through_slots(generator):
    """Keys scattered over a pool, read through each entry's slot: the same as the gathered keys."""
    num_tokens, pool_rows = 90, 300
    window_q = _random((6, 4, 16), generator, torch.float32)
    pool = _random((pool_rows, 2, 16), generator, torch.float32)
    for dtype in (torch.int32, torch.int64):
        slots = torch.randperm(pool_rows, generator=generator)[:num_tokens].to(device=DEVICE, dtype=dtype)
        got = window_attention(window_q, pool, slots=slots, block_n=32, num_splits=2)
        _assert_close(got, reference_attention(window_q.cpu(), pool[slots.long()].cpu()), torch.float32)


def test_scores_rank_like_the_reference_path(generator):
    """Pooled and local-window-zeroed like `observation_scores`: the kept entries of an event are the same."""
    config = EntropyInferConfig(decode_budget_tokens=32, sink_tokens=4, local_window_tokens=8,
                                observation_window_tokens=8)
    window_q = _random((8, 4, 16), generator, torch.float32, scale=2.0)
    keys = _random((200, 2, 16), generator, torch.float32, scale=2.0)
    from entropyinfer_sgl.core.decode import pooled_scores

    got = pooled_scores(window_attention(window_q, keys), config)
    want = observation_scores(window_q.cpu(), keys.cpu(), config)
    _assert_close(got, want, torch.float32)
    top = 20
    assert torch.equal(got.topk(top, dim=1).indices.sort().values.cpu(), want.topk(top, dim=1).indices.sort().values)


def _window_lse(window_q: torch.Tensor, keys: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Each window query's natural log-sum-exp over the keys it sees (query w at position T - W + w), float32
    `[W, Hq]`: what a decode step's attention returns for it."""
    num_window, num_q_heads, head_dim = window_q.shape
    num_tokens, num_kv_heads, _ = keys.shape
    k = keys.float().repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # [T, Hq, D]
    logits = torch.einsum("whd,thd->wht", window_q.float(), k) * (head_dim ** -0.5 if scale is None else scale)
    positions = torch.arange(num_tokens, device=keys.device)
    visible = positions[None, :] <= (num_tokens - num_window + torch.arange(num_window, device=keys.device))[:, None]
    return logits.masked_fill(~visible[:, None, :], float("-inf")).logsumexp(-1)


@pytest.mark.parametrize("reduction", ["mean", "max"])
@pytest.mark.parametrize("num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n, num_splits", CASES)
def test_given_log_sum_exps_skip_the_first_pass(num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n,
                                                num_splits, reduction, generator):
    """With each window query's log-sum-exp given (as the decode steps that computed the queries return it), one
    pass over the keys gives the oracle's scores; the given values are what normalizes them: each row's plus ln 2
    halves every probability, so the scores (means or maxima over non-negative values) halve."""
    window_q = _random((num_window, num_q_heads, head_dim), generator, torch.float32, scale=2.0)
    keys = _random((num_tokens, num_kv_heads, head_dim), generator, torch.float32, scale=2.0)
    row_lse = _window_lse(window_q, keys)
    want = reference_attention(window_q.cpu(), keys.cpu(), reduction=reduction)
    kwargs = dict(reduction=reduction, block_n=block_n, num_splits=num_splits)
    tolerance = 1e-5  # a given log-sum-exp is natural-log float32, turned base 2 in the kernel: a few ulps more
    _assert_close(window_attention(window_q, keys, row_lse=row_lse, **kwargs), want, torch.float32, tolerance)
    halved = window_attention(window_q, keys, row_lse=row_lse + math.log(2.0), **kwargs)
    _assert_close(halved, want / 2, torch.float32, tolerance)


@pytest.mark.parametrize("num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n, num_splits", CASES)
def test_log_sum_exps_alone(num_window, num_q_heads, num_kv_heads, head_dim, num_tokens, block_n, num_splits,
                            generator):
    """The first pass alone (what a prompt's last chunk records for its window rows): each query's log-sum-exp
    over the keys it sees, through slots too."""
    window_q = _random((num_window, num_q_heads, head_dim), generator, torch.float32, scale=2.0)
    keys = _random((num_tokens, num_kv_heads, head_dim), generator, torch.float32, scale=2.0)
    want = _window_lse(window_q, keys)
    got = window_log_sum_exp(window_q, keys)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    slots = torch.randperm(num_tokens + 7, generator=generator)[:num_tokens].to(DEVICE)
    pool = _random((num_tokens + 7, num_kv_heads, head_dim), generator, torch.float32)
    pool[slots] = keys
    assert torch.allclose(window_log_sum_exp(window_q, pool, slots=slots), got, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(reduction="sum"), "reduction"),
    (dict(window_q=(0, 4, 16)), "observation window"),
    (dict(keys=(50, 3, 16)), "multiple"),
    (dict(keys=(50, 2, 8)), "head_dim"),
    (dict(slots=torch.float32), "slots"),
    (dict(row_lse=(4, 2)), "row_lse"),
    (dict(row_lse=(3, 4)), "row_lse"),
])
def test_bad_input_is_refused(bad, match, generator):
    window_q = _random(bad.get("window_q", (4, 4, 16)), generator, torch.float32)
    keys = _random(bad.get("keys", (50, 2, 16)), generator, torch.float32)
    slots = None
    if "slots" in bad:
        slots = torch.arange(50, device=DEVICE, dtype=bad["slots"])
    row_lse = None if "row_lse" not in bad else torch.zeros(bad["row_lse"], device=DEVICE)
    with pytest.raises(ValueError, match=match):
        window_attention(window_q, keys, slots=slots, row_lse=row_lse, reduction=bad.get("reduction", "mean"))


@requires_cuda
@pytest.mark.gpu
def test_bfloat16_at_a_long_cache(generator):
    """bfloat16 at 32k entries, Llama-8B's geometry, keys through slots of a larger pool."""
    window_q = _random((32, 32, 128), generator, torch.bfloat16)
    pool = _random((40000, 8, 128), generator, torch.bfloat16)
    slots = torch.randperm(40000, generator=generator)[:32768].to(device=DEVICE, dtype=torch.int32)
    want = reference_attention(window_q.float(), pool[slots.long()].float())
    _assert_close(window_attention(window_q, pool, slots=slots), want, torch.bfloat16)
    row_lse = _window_lse(window_q, pool[slots.long()])  # one pass over the keys
    _assert_close(window_attention(window_q, pool, slots=slots, row_lse=row_lse), want, torch.bfloat16)
    assert (window_log_sum_exp(window_q, pool, slots=slots) - row_lse).abs().max().item() <= 1e-2

"""The method registry: names, equal budgets, what each baseline changes, prefill sharing, overrides, specs."""

from __future__ import annotations

import pytest

from entropyinfer_sgl import EntropyInferConfig
from entropyinfer_sgl.evaluation.methods import (BASE, BUDGETS, DENSE_GATE_TOKENS, METHOD_NAMES, all_methods, get_method,
                                      parse_method_spec, streaming_scores)

import torch

REQUIRED = ("full", "entropyinfer", "entropyinfer_paper", "entropyinfer_immediate", "critiprefill", "snapkv",
            "adakv", "streamingllm")


def test_registry_has_every_method():
    assert set(REQUIRED) <= set(METHOD_NAMES)
    assert get_method("full").config is None
    assert get_method("entropyinfer").config == EntropyInferConfig.small()
    with pytest.raises(ValueError, match="unknown method"):
        get_method("h2o")


def test_equal_budgets():
    assert BUDGETS["decode_budget_tokens"] == BASE.decode_budget_tokens == 256
    assert BUDGETS["prefill_base_budget_tokens"] == 512
    for method in all_methods():
        if method.compresses:
            assert method.config.decode_budget_tokens == BUDGETS["decode_budget_tokens"], method.name
            assert method.config.observation_window_tokens == BUDGETS["observation_window_tokens"]
        if method.config is not None:
            assert method.config.base_budget_tokens == BUDGETS["prefill_base_budget_tokens"]
            assert method.config.segment_size_tokens == BUDGETS["segment_size_tokens"]
    for name in ("entropyinfer", "entropyinfer_immediate", "snapkv", "adakv", "streamingllm"):
        assert get_method(name).config.decode_evict_interval_steps == BUDGETS["decode_evict_interval_steps"]


def test_what_each_method_changes():
    paper = get_method("entropyinfer_paper").config
    assert not paper.per_head_budgets and not paper.causal_head_typing and paper.decode_evict_interval_steps == 0
    assert get_method("entropyinfer_immediate").config.decode_delay_steps == 0
    # EntropyInfer's own levers are the default's (and the immediate ablation's), never a baseline's
    default = get_method("entropyinfer").config
    assert (default.dense_tail_tokens, default.decode_delay_steps) == (128, 64)
    assert get_method("entropyinfer_immediate").config.dense_tail_tokens == 128
    for name in ("entropyinfer_paper", "critiprefill", "snapkv", "adakv", "streamingllm"):
        config = get_method(name).config
        assert config.dense_tail_tokens == 0 and config.decode_delay_steps in (0, 16), name
    criti = get_method("critiprefill").config
    assert criti.max_budget_tokens == criti.base_budget_tokens and not criti.decode_compression
    snap, ada = get_method("snapkv"), get_method("adakv")
    assert snap.dense_prefill and snap.compresses_after_prompt and not snap.config.adaptive_decode_budgets
    assert ada.dense_prefill and ada.compresses_after_prompt and ada.config.adaptive_decode_budgets
    stream = get_method("streamingllm")
    assert stream.dense_prefill and stream.decode_scorer == "streaming"
    # sink 7 + 1 constant-score entry (position 7) + local 248 = StreamingLLM's sink 8 + newest 248
    assert stream.config.sink_tokens + 1 + stream.config.local_window_tokens == stream.config.decode_budget_tokens
    assert not get_method("entropyinfer").dense_prefill
    assert get_method("snapkv").config.min_sparse_len_tokens == DENSE_GATE_TOKENS


def test_prefill_sharing_groups():
    keys = {m.name: m.prefill_key() for m in all_methods()}
    assert keys["full"] == keys["snapkv"] == keys["adakv"] == keys["streamingllm"]
    assert keys["entropyinfer"] == keys["entropyinfer_immediate"]
    assert len({keys["entropyinfer"], keys["entropyinfer_paper"], keys["critiprefill"], keys["full"]}) == 4
    assert get_method("entropyinfer", beta=256).prefill_key() != keys["entropyinfer"]
    # a prefill lever never shares another method's prefill; a decode-only change does
    assert get_method("entropyinfer", dense_tail_tokens=0).prefill_key() != keys["entropyinfer"]
    assert get_method("entropyinfer", decode_budget_tokens=512).prefill_key() == keys["entropyinfer"]


def test_overrides_and_specs():
    m = get_method("entropyinfer", beta=256)
    assert (m.config.base_budget_tokens, m.config.max_budget_tokens) == (256, 768)
    assert m.name == "entropyinfer[beta=256]" and m.base == "entropyinfer"
    assert get_method("critiprefill", beta=1024).config.max_budget_tokens == 1024  # fixed budget stays fixed
    spec = parse_method_spec("snapkv[decode_budget_tokens=512,pooling_method=maxpool]")
    assert spec.config.decode_budget_tokens == 512 and spec.config.pooling_method == "maxpool"
    assert parse_method_spec(" adakv ").name == "adakv"
    with pytest.raises(ValueError):
        get_method("full", beta=256)
    with pytest.raises(ValueError):
        parse_method_spec("snapkv[decode_budget_tokens]")
    with pytest.raises(ValueError):  # validated like any config
        get_method("snapkv", decode_budget_tokens=10)


def test_method_json_round_trip():
    for method in all_methods():
        data = method.to_dict()
        if data["config"] is not None:
            assert EntropyInferConfig.from_dict(data["config"]) == method.config


def test_streaming_scores_are_constant():
    scores = streaming_scores(torch.randn(4, 6, 8), torch.randn(50, 2, 8), BASE)
    assert scores.shape == (2, 50) and bool((scores == 0).all())


def test_cli_method_specs_split_outside_brackets():
    from entropyinfer_sgl.cli import build_parser, split_specs

    assert split_specs("full, entropyinfer[beta=256,sink_tokens=4],snapkv,") == [
        "full", "entropyinfer[beta=256,sink_tokens=4]", "snapkv"]
    args = build_parser().parse_args(["eval", "--methods", "full,adakv", "--lengths", "2000,4000", "--samples", "2"])
    assert (args.methods, args.lengths, args.samples) == ("full,adakv", "2000,4000", 2)


def test_long32k_budgets_scale_every_method_alike():
    from entropyinfer_sgl.evaluation.methods import budget_base, budgets_of

    long = EntropyInferConfig.long32k()
    assert EntropyInferConfig.load("long32k") == long == budget_base("long32k")
    assert (long.segment_size_tokens, long.min_sparse_len_tokens, long.base_budget_tokens, long.max_budget_tokens,
            long.decode_budget_tokens) == (512, 4096, 2048, 6144, 1024)
    assert get_method("entropyinfer", budgets="long32k").config == long
    for name in METHOD_NAMES:
        method = get_method(name, budgets="long32k")
        if method.compresses:
            assert method.config.decode_budget_tokens == 1024, name
    snap = get_method("snapkv", budgets="long32k")
    assert snap.dense_prefill and snap.config.decode_delay_steps == 0
    assert budgets_of(long)["prefill_base_budget_tokens"] == 2048
    with pytest.raises(ValueError, match="unknown budgets"):
        get_method("entropyinfer", budgets="huge")

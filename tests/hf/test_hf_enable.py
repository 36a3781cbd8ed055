"""`hf.enable` on tiny random-weight HF models: sparse prefill, compressed decode cache, stats, restore, errors."""

import pytest
import torch
from transformers import AttentionInterface, DynamicCache

from entropyinfer_sgl import (compression_due, dense_prefill_reference, observation_scores, plan_decode_compression,
                              plan_prefill, profile_prefill, sparse_prefill_reference)
from entropyinfer_sgl import hf
from entropyinfer_sgl.hf import EntropyInferCacheLayer
from entropyinfer_sgl.hf.integration import _HANDLES
from hf_helpers import FULL_DENSITY, SPARSE, prompt, tiny_model

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]


def _reference_attention(config):
    """An independent attention function: profile + plan + `sparse_prefill_reference` (float32 oracle)."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
        if q.shape[0] > config.segment_size_tokens:
            plan = plan_prefill(profile_prefill(q, k, config), config, layer_idx=module.layer_idx)
            out, _ = sparse_prefill_reference(q, k, v, plan, scale=scaling)
        else:
            out, _ = dense_prefill_reference(q, k, v, scale=scaling)
        return out[None].to(query.dtype), None

    return attend


def _logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_prefill_matches_reference(family):
    model = tiny_model(family)
    ids = prompt(203)
    with hf.enable(model, SPARSE) as handle:
        logits = _logits(model, ids)
    stats = handle.stats
    assert 0.0 < stats.prefill_density < 0.9
    assert [r.path for r in stats.layers] == ["dense", "sparse-sdpa"]  # layer 0 is a dense layer

    AttentionInterface.register("entropyinfer_test_reference", _reference_attention(SPARSE))
    model.set_attn_implementation("entropyinfer_test_reference")
    expected = _logits(model, ids)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits - _logits(model, ids)).abs().max() > 1e-3  # and it is not dense attention


def test_full_density_plan_equals_sdpa_model():
    model = tiny_model()
    ids = prompt(203)
    expected = _logits(model, ids)
    with hf.enable(model, FULL_DENSITY) as handle:
        logits = _logits(model, ids)
    assert handle.stats.prefill_density == 1.0
    assert handle.stats.layers[1].path == "sparse-sdpa"  # planned (every block selected), not the dense shortcut
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_below_length_gate_is_plain_sdpa():
    model = tiny_model()
    ids = prompt(60)  # below min_sparse_len_tokens=64: every layer dense
    expected = _logits(model, ids)
    with hf.enable(model, SPARSE) as handle:
        logits = _logits(model, ids)
    assert handle.stats.prefill_density == 1.0
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)


def _generate(model, ids, new_tokens, **kwargs):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, **kwargs)


def test_decode_compression_shrinks_cache():
    model = tiny_model()
    ids = prompt(150)
    cache = DynamicCache(config=model.config)
    new_tokens = 20  # 19 decode steps append generated tokens: compression at 4, 10 and 16
    with hf.enable(model, SPARSE) as handle:
        out = _generate(model, ids, new_tokens, past_key_values=cache)
    assert out.shape == (1, 150 + new_tokens)
    steps = new_tokens - 1
    due = [g for g in range(1, steps + 1) if compression_due(g, SPARSE)]
    assert due == [4, 10, 16]
    stats = handle.stats
    assert stats.compression_events == 3
    assert len(stats.compressions) == 3 * 2  # every layer, every event
    for layer in cache.layers:
        assert isinstance(layer, EntropyInferCacheLayer)
        assert layer.get_seq_length() == 150 + steps  # logical length: positions keep counting
        # uniform budgets: no padding, 64 entries per kv head after the last event + 3 newer tokens
        assert layer.valid is None
        assert tuple(layer.keys.shape) == (1, 2, SPARSE.decode_budget_tokens + steps - due[-1], 16)
        assert tuple(layer.values.shape) == tuple(layer.keys.shape)
        positions = layer.positions
        assert torch.equal(positions[:, : SPARSE.sink_tokens], torch.arange(4).expand(2, -1))  # sinks kept
        assert torch.equal(positions[:, -(steps - due[-1]) - SPARSE.local_window_tokens:],
                           torch.arange(150 + steps - 11, 150 + steps).expand(2, -1))  # local window + newer
        assert bool((positions.diff(dim=1) > 0).all())  # position order
    first = stats.compressions[0]
    assert first.entries_before.tolist() == [154, 154] and first.entries_kept.tolist() == [64, 64]
    assert stats.kv_kept_fraction == pytest.approx((64 * 6) / (154 * 2 + 70 * 2 + 70 * 2))
    assert stats.cache_fraction == pytest.approx(67 / 169)


def test_first_compression_keeps_what_the_planner_says(monkeypatch):
    """The layer keeps exactly `plan_decode_compression(observation_scores(window, cache))` of the full cache."""
    seen = []
    original = EntropyInferCacheLayer.compress

    def spy(self, config, *, layer_idx):
        seen.append((layer_idx, self.keys[0].clone(), self.window_q.clone(), self.valid))
        record = original(self, config, layer_idx=layer_idx)
        seen[-1] += (self.positions.clone(),)
        return record

    monkeypatch.setattr(EntropyInferCacheLayer, "compress", spy)
    model = tiny_model()
    with hf.enable(model, SPARSE):
        _generate(model, prompt(150), SPARSE.decode_delay_steps + 1)
    assert [s[0] for s in seen] == [0, 1]
    for layer_idx, keys, window, valid, kept_positions in seen:
        assert valid is None and window.shape == (SPARSE.observation_window_tokens, 4, 16)
        plan = plan_decode_compression(observation_scores(window, keys.transpose(0, 1), SPARSE), SPARSE)
        assert torch.equal(kept_positions, plan.kept_indices.to(torch.int64))


def test_adaptive_budgets_pad_per_head():
    """AdaKV budgets differ per kv head: the cache pads to the longest head and masks the padding."""
    cfg = SPARSE.replace(adaptive_decode_budgets=True, head_budget_floor_fraction=0.1)
    model = tiny_model()
    cache = DynamicCache(config=model.config)
    with hf.enable(model, cfg) as handle:
        out = _generate(model, prompt(150), 20, past_key_values=cache)
    assert torch.isfinite(out.float()).all()
    padded = [layer for layer in cache.layers if layer.valid is not None]
    assert padded, "expected AdaKV to give the kv heads different lengths"
    for layer in padded:
        lengths = layer.valid.sum(dim=1)
        assert layer.keys.shape[2] == int(lengths.max())
        assert int(lengths.sum()) == 2 * 64 + 2 * 3  # budget conserved over heads, plus 3 newer tokens per head
    assert handle.stats.compression_events == 3


def test_stats_present():
    model = tiny_model()
    with hf.enable(model, SPARSE) as handle:
        _generate(model, prompt(150), 8)
    stats = handle.stats
    assert stats.rigid.shape == (2, 2) and stats.rigid.dtype == torch.bool
    assert stats.budget_tokens.shape == (2, 2) and torch.isfinite(stats.budget_tokens).all()
    assert bool((stats.budget_tokens >= SPARSE.base_budget_tokens).all())
    assert bool((stats.budget_tokens <= SPARSE.max_budget_tokens).all())
    assert torch.isfinite(stats.entropy).all() and torch.isfinite(stats.normalized_entropy).all()
    assert stats.layer_density[0] == 1.0 and stats.layer_density[1] < 1.0
    assert 0.0 < stats.prefill_density < 1.0 and stats.rigid_fraction is not None
    assert stats.compression_events == 1 and 0.0 < stats.kv_kept_fraction < 1.0
    assert "prefill_density=" in stats.summary()


def test_no_cache_forward_runs_sparse_prefill_only():
    model = tiny_model()
    with hf.enable(model, SPARSE.replace(decode_compression=False)) as handle:
        logits = _logits(model, prompt(150), use_cache=False)
    assert torch.isfinite(logits).all() and handle.stats.prefill_density < 1.0


def test_no_cache_with_decode_compression_is_refused():
    """Decode compression needs the cache: without one the method cannot run, and says so (no silent fallback)."""
    model = tiny_model()
    with hf.enable(model, SPARSE), pytest.raises(ValueError, match="no KV cache reached the attention"):
        _logits(model, prompt(150), use_cache=False)


@pytest.mark.parametrize("name", hf.integration.CACHE_KWARGS)
def test_the_cache_is_found_under_either_transformers_name(name):
    cache = object()
    assert hf.integration.cache_argument({name: cache, "use_cache": True}) is cache
    assert hf.integration.cache_argument({"cache": None, "past_key_values": None}) is None


def test_continued_prompt_uses_the_cache_densely():
    """A second multi-token forward on a cache (chunked / continued prompt) attends densely over the cache."""
    model = tiny_model()
    ids = prompt(160)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(ids[:, :150], past_key_values=cache)
        expected = model(ids[:, 150:], past_key_values=cache).logits
        with hf.enable(model, FULL_DENSITY):
            cache = DynamicCache(config=model.config)
            model(ids[:, :150], past_key_values=cache)
            logits = model(ids[:, 150:], past_key_values=cache).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_context_manager_restores_the_model():
    model = tiny_model()
    ids = prompt(150)
    before = _logits(model, ids)
    generated_before = _generate(model, ids, 6)
    modules = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    with pytest.raises(RuntimeError, match="boom"):
        with hf.enable(model, SPARSE):
            assert model.config._attn_implementation == "entropyinfer"
            assert all(m._forward_pre_hooks for m in modules)
            _generate(model, ids, 6)
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert not any(m._forward_pre_hooks for m in modules)
    assert not any(m in _HANDLES for m in modules)
    assert torch.equal(_logits(model, ids), before)
    assert torch.equal(_generate(model, ids, 6), generated_before)


def test_attention_function_outside_enable_is_an_error():
    model = tiny_model()
    with hf.enable(model, SPARSE):
        pass
    model.set_attn_implementation("entropyinfer")
    with pytest.raises(RuntimeError, match="only works inside"):
        _logits(model, prompt(20))


def test_batch_and_padding_are_rejected_with_what_to_do():
    model = tiny_model()
    with hf.enable(model, SPARSE):
        with pytest.raises(ValueError, match=r"batch size 1, got 2: run the prompts one at a time"):
            _logits(model, prompt(100, batch=2))
        mask = torch.ones(1, 100, dtype=torch.long)
        mask[0, :3] = 0
        with pytest.raises(ValueError, match=r"padding masks yet: give one prompt at a time \(batch size 1\), "
                                             r"unpadded"):
            _logits(model, prompt(100), attention_mask=mask)
        padded_batch = torch.ones(2, 100, dtype=torch.long)
        padded_batch[1, :7] = 0  # the usual left-padded batch of two prompts
        with pytest.raises(ValueError, match="padding masks yet: give one prompt at a time"):
            _logits(model, prompt(100, batch=2), attention_mask=padded_batch)
        assert _logits(model, prompt(100)).shape == (1, 100, 128)  # the refusals left the model usable


def test_what_is_not_a_model_or_a_config_is_refused_with_what_to_pass():
    with pytest.raises(TypeError, match=r"expects a transformers causal LM \(e\.g\. AutoModelForCausalLM"):
        with hf.enable("HuggingFaceTB/SmolLM2-135M-Instruct", SPARSE):
            pass
    model = tiny_model()
    with pytest.raises(TypeError, match=r"config must be an EntropyInferConfig \(e\.g\. EntropyInferConfig\.small\(\)"):
        with hf.enable(model, SPARSE.to_dict()):
            pass
    assert model.config._attn_implementation == "sdpa"


def test_nested_enable_is_rejected():
    model = tiny_model()
    with hf.enable(model, SPARSE):
        with pytest.raises(RuntimeError, match="already active"):
            with hf.enable(model, SPARSE):
                pass
        assert model.config._attn_implementation == "entropyinfer"
    assert model.config._attn_implementation == "sdpa"


def test_window_eviction_config_is_rejected():
    with pytest.raises(ValueError, match="observation_window_tokens"):
        with hf.enable(tiny_model(), SPARSE.replace(decode_evict_interval_steps=2, local_window_tokens=4,
                                                    observation_window_tokens=16)):
            pass


def _unsupported_models():
    import transformers

    tiny = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, head_dim=16)
    yield "sliding", lambda: tiny_model("mistral", sliding_window=16)
    yield "sliding", lambda: tiny_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0)
    yield "encoder-decoder", lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2))
    yield "latent attention", lambda: transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(
        **{**tiny, "num_key_value_heads": 2}, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
        first_k_dense_replace=2))
    yield "not supported", lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=1, n_head=2))


@pytest.mark.parametrize("match,make", list(_unsupported_models()),
                         ids=["mistral-sliding", "qwen2-sliding", "t5", "deepseek-v3-mla", "gpt2"])
def test_unsupported_models_raise(match, make):
    model = make()
    previous = model.config._attn_implementation
    with pytest.raises(ValueError, match=match) as refused:
        with hf.enable(model, SPARSE):
            pass
    assert model.config._attn_implementation == previous
    # what to do: run it without hf.enable or pick a supported family (mistral: turn its window off)
    assert ("run this model without hf.enable, or use one of those" in str(refused.value)
            or "set config.sliding_window=None" in str(refused.value)), refused.value


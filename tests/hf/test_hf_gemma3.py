"""Hybrid models in `hf.enable`: a tiny random Gemma-3 text model (6 layers, sliding-window layers 0, 1, 3, 4 with a
16-token window, global layers 2 and 5). EntropyInfer runs on the global layers only; the sliding-window layers
must compute exactly what the model's own attention computes, and their cache is never touched."""

import logging

import pytest
import torch

from entropyinfer_sgl import hf
from entropyinfer_sgl.hf import EntropyInferCacheLayer, sliding_window_attention_sdpa

from hf_helpers import FULL_DENSITY, SPARSE, VOCAB, prompt

WINDOW = 16
LAYER_TYPES = ["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2 + ["full_attention"]
GLOBAL, SLIDING = (2, 5), (0, 1, 3, 4)


def tiny_gemma3(*, seed: int = 0, **overrides):
    """Gemma-3 text model: hidden 64, 4 q / 2 kv heads, head_dim 16, q/k norms, query_pre_attn_scalar 24 (so the
    attention scale is 24^-0.5, not head_dim^-0.5), random weights, sdpa."""
    import transformers

    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                    sliding_window=WINDOW, layer_types=LAYER_TYPES, query_pre_attn_scalar=24, pad_token_id=None,
                    attn_implementation="sdpa")
    config = transformers.Gemma3TextConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    return transformers.Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gemma3():
    return tiny_gemma3()


def _generate(model, ids, new_tokens):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False)


def test_dense_config_gives_the_models_logits(gemma3, caplog):
    ids = prompt(200)  # 12 windows long: the sliding layers' window decides their outputs
    with torch.no_grad():
        plain = gemma3(ids).logits
        with caplog.at_level(logging.INFO, logger="entropyinfer_sgl.hf"), hf.enable(gemma3, FULL_DENSITY) as handle:
            ours = gemma3(ids).logits
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)
    stats = handle.stats
    assert stats.method_layers == GLOBAL and stats.sliding_layers == SLIDING
    assert stats.prefill_density == pytest.approx(1.0)
    assert [r.layer_idx for r in stats.layers] == list(GLOBAL)
    assert torch.isnan(stats.layer_density[list(SLIDING)]).all()
    assert "method_layers=2/6" in stats.summary()
    assert "full-attention layers [2, 5]" in caplog.text and "sliding-window layers [0, 1, 3, 4]" in caplog.text
    assert gemma3.config._attn_implementation == "sdpa"


def test_dense_config_generates_the_models_tokens(gemma3):
    ids = prompt(150, seed=3)
    plain = _generate(gemma3, ids, 12)
    with hf.enable(gemma3, FULL_DENSITY):
        ours = _generate(gemma3, ids, 12)
    assert torch.equal(ours, plain)


def test_a_window_wrong_by_one_would_change_the_logits(gemma3):
    """The equality above can fail: the same model with a 15-token window gives other logits."""
    ids = prompt(200)
    other = tiny_gemma3(sliding_window=WINDOW - 1)
    with torch.no_grad():
        assert not torch.allclose(other(ids).logits, gemma3(ids).logits, rtol=1e-4, atol=1e-4)


def test_sparse_method_leaves_the_sliding_layers_as_the_model_computes_them(gemma3):
    """With sparsity and decode compression on, every sliding-window layer's attention output equals the model's
    own attention (sdpa, its sliding-window mask) on the same inputs, and its cache stays the model's window."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer
    from transformers.masking_utils import create_sliding_window_causal_mask

    ids = prompt(256, seed=5)
    seen = {}

    def capture(module, args, kwargs, output):
        seen[module.layer_idx] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0],
                                  kwargs["position_embeddings"], output[0])

    attn = {i: gemma3.model.layers[i].self_attn for i in range(6)}
    hooks = [attn[i].register_forward_hook(capture, with_kwargs=True) for i in SLIDING]
    cache = DynamicCache(config=gemma3.config)
    try:
        with hf.enable(gemma3, SPARSE) as handle, torch.no_grad():
            gemma3(input_ids=ids, past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    stats = handle.stats
    assert all(stats.layer_density[i] < 0.9 for i in GLOBAL)  # the global layers really ran sparse
    assert stats.compression_events == 0  # the decode budget applies after decode_delay_steps
    for i in SLIDING:
        hidden, position_embeddings, output = seen[i]
        mask = create_sliding_window_causal_mask(config=gemma3.config, inputs_embeds=hidden, attention_mask=None,
                                                 past_key_values=None, position_ids=torch.arange(ids.shape[1])[None])
        with torch.no_grad():
            expected = attn[i](hidden, position_embeddings=position_embeddings, attention_mask=mask)[0]
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    for i in SLIDING:
        assert type(cache.layers[i]) is DynamicSlidingWindowLayer and cache.layers[i].keys.shape[-2] == WINDOW - 1
    for i in GLOBAL:
        assert isinstance(cache.layers[i], EntropyInferCacheLayer) and cache.layers[i].physical_length() == 256


def test_decode_compression_only_shrinks_the_global_layers(gemma3):
    from transformers import DynamicCache

    ids = prompt(200, seed=7)
    cache = DynamicCache()  # no config: hf.enable builds the sliding-window layers itself
    with hf.enable(gemma3, SPARSE) as handle, torch.no_grad():
        gemma3.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=8,
                        min_new_tokens=8, do_sample=False)
    stats = handle.stats
    assert stats.compression_events >= 1
    assert {c.layer_idx for c in stats.compressions} == set(GLOBAL)
    for i in SLIDING:
        assert cache.layers[i].keys.shape[-2] == WINDOW - 1 and not isinstance(cache.layers[i], EntropyInferCacheLayer)
    for i in GLOBAL:
        assert cache.layers[i].physical_length() < 200


def test_sliding_window_attention_matches_a_masked_softmax():
    torch.manual_seed(0)
    window, past, new = 7, 5, 23  # a cache holding 5 earlier tokens, then 23 new queries (3 chunks of 10)
    q = torch.randn(4, new, 8)
    k, v = torch.randn(2, past + new, 8), torch.randn(2, past + new, 8)
    out = sliding_window_attention_sdpa(q, k, v, window, scale=0.3, chunk_tokens=10)
    query_pos = torch.arange(past, past + new)[:, None]
    key_pos = torch.arange(past + new)[None]
    allowed = (key_pos <= query_pos) & (key_pos > query_pos - window)
    scores = torch.einsum("hld,htd->hlt", q, k.repeat_interleave(2, dim=0)) * 0.3
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    expected = torch.einsum("hlt,htd->hld", weights, v.repeat_interleave(2, dim=0))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    (dict(layer_types=["sliding_attention"] * 6), "every one of the 6 layers .* is sliding-window attention"),
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
], ids=["all-sliding", "softcapping", "bidirectional"])
def test_unsupported_gemma3_settings_are_refused(overrides, match):
    model = tiny_gemma3(**overrides)
    with pytest.raises(ValueError, match=match):
        with hf.enable(model, SPARSE):
            pass
    assert model.config._attn_implementation == "sdpa"

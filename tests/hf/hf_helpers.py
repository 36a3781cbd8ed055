"""Tiny random-weight HF models and configs for the `hf.enable` tests (CPU, float32, a few ms per forward)."""

from __future__ import annotations

import torch

from entropyinfer_sgl import EntropyInferConfig

VOCAB = 128

# Sparse from 64 tokens on: segments of 32, blocks of 8, budgets of 16..48 tokens (2..6 blocks), decode budget 64
# per kv head (4 sink + 8 local), compression after 4 generated tokens and every 6 after that.
SPARSE = EntropyInferConfig().replace(
    segment_size_tokens=32, block_size_tokens=8, min_sparse_len_tokens=64, num_dense_layers=1,
    base_budget_tokens=16, max_budget_tokens=48, decode_budget_tokens=64, decode_delay_steps=4,
    decode_evict_interval_steps=6, observation_window_tokens=8, local_window_tokens=8, sink_tokens=4,
    pooling_kernel_tokens=3)

# Budgets larger than any test prompt: every earlier block is selected, the plan is dense (density 1.0).
FULL_DENSITY = SPARSE.replace(base_budget_tokens=8192, max_budget_tokens=8192, decode_compression=False)


def tiny_model(family: str = "llama", *, seed: int = 0, **overrides):
    """2 layers, 4 query / 2 kv heads, head_dim 16, vocab 128, random weights (eval mode, sdpa attention)."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                  attn_implementation="sdpa")
    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    }
    config_name, model_name, extra = classes[family]
    config = getattr(transformers, config_name)(**{**common, **extra, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def prompt(length: int, *, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy_answer(model, tokenizer, input_ids: torch.Tensor, new_tokens: int) -> str:
    """Exactly `new_tokens` greedy tokens after `input_ids` (batch 1), decoded without special tokens."""
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

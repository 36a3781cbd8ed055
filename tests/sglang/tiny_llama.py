"""A tiny random Llama with a locally trained byte-level BPE tokenizer, for serving tests (no hub, no downloads).

2 layers, hidden 64, 4 query / 2 kv heads of dim 16 (GQA), a 12k vocabulary (SGLang's bench_one_batch draws
token ids below 10000). Weights are random with a large init scale so that attention is sharp and greedy outputs
depend on the whole prompt (with the default 0.02 every prompt decodes to one repeated token). Built in ~2 s.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB_SIZE = 12_000
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "shi", "va", "de", "zu", "gri", "fen", "bo", "qua", "xi",
             "ter", "mon", "ar", "el", "is", "om", "un", "by", "ch", "st", "pl", "wr", "th", "ng"]


def words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def prompt(num_words: int, seed: int) -> str:
    """A deterministic pseudo-text prompt (about 1.3 tokens per word with this tokenizer)."""
    return " ".join(words(num_words, seed=seed))


def build(out_dir: str | Path, *, seed: int = 0, init_scale: float = 0.3) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(words(40, seed=i)) for i in range(3000)]
    corpus += ["".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz0123456789 .,") for _ in range(400))
               for i in range(3000)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    vocab = max(len(fast), 10_240)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True, initializer_range=init_scale, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    (out / "README.md").write_text("tiny random Llama for entropyinfer_sgl's SGLang tests\n")
    return out


def sharegpt_file(path: str | Path, n: int = 16) -> Path:
    """A tiny local ShareGPT-format file (bench_offline_throughput's warmup always samples ShareGPT)."""
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": prompt(30 + i, seed=100 + i)},
                                              {"from": "gpt", "value": prompt(20, seed=200 + i)}]}
            for i in range(n)]
    Path(path).write_text(json.dumps(rows))
    return Path(path)


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1]))

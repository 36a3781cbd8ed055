"""Planned attention work of a chunked prompt, with and without the prompt's length (CPU, the torch planner).

One layer of chunked prefill as the SGLang backend plans it (`state.plan_chunk` per chunk, causal typing carried),
summing each chunk's computed and dense causal block pairs (`plan_pair_counts`):
- "chunk end": every chunk planned as if the prompt ended at its end (the segment ending a chunk runs dense);
- "prompt length": every chunk planned with the whole prompt's length, as SGLang's admission gives it;
- for scale, the whole prompt in one chunk.
Random inputs (8B attention shapes): budgets are whatever the random attention gives; compare the rows.

    python benchmarks/chunk_density.py --seq-len 65536 --chunk 8192
"""

from __future__ import annotations

import argparse

import torch

from entropyinfer_sgl import EntropyInferConfig
from entropyinfer_sgl.runtime.chunk_plan import plan_chunk, plan_pair_counts


def chunked_pairs(q: torch.Tensor, k: torch.Tensor, config: EntropyInferConfig, ends: list[int],
                  prompt_len: int | None) -> tuple[float, float]:
    """(computed, dense) causal block pairs over the chunks ending at `ends`."""
    computed = dense = 0.0
    typing, prefix = None, 0
    for end in ends:
        result = plan_chunk(q[prefix:end], k[:end], config, prefix_len=prefix, layer_idx=1, typing=typing,
                            prompt_len_tokens=prompt_len)
        if result.plan is None:
            raise SystemExit(f"chunk {prefix}..{end} was not planned: {result.reason}")
        pairs, full = plan_pair_counts(result.plan, prefix)
        computed, dense = computed + float(pairs), dense + full
        typing, prefix = result.typing, end
    return computed, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=65536)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = EntropyInferConfig()
    q = torch.randn(args.seq_len, 32, 128)
    k = torch.randn(args.seq_len, 8, 128)
    ends = list(range(args.chunk, args.seq_len, args.chunk)) + [args.seq_len]
    rows = {"whole prompt, one chunk": chunked_pairs(q, k, config, [args.seq_len], None),
            f"{args.chunk}-token chunks, chunk end": chunked_pairs(q, k, config, ends, None),
            f"{args.chunk}-token chunks, prompt length": chunked_pairs(q, k, config, ends, args.seq_len)}
    print(f"{args.seq_len} tokens, default config, one layer: causal block pairs computed (density)")
    for name, (computed, dense) in rows.items():
        print(f"{name:40s} {computed:14.0f} of {dense:14.0f} ({computed / dense:.4f})")


if __name__ == "__main__":
    main()

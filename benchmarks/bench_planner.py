"""Planner micro-benchmark: plan one long request (all layers) with the torch planner and the Rust planner.

Inputs are random summaries of the sizes profiling produces (entropies [Hkv, nseg] and block scores
[Hkv, nseg, num_blocks] per layer); the timed work is typing + budgets + keep counts + CSR selection.

    python benchmarks/bench_planner.py --seq-len 131072 --layers 32 --kv-heads 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import torch

from entropyinfer_sgl import EntropyInferConfig, head_budgets, keep_blocks, select_blocks
from entropyinfer_sgl.core import rust_planner
from entropyinfer_sgl.core.plan import sparse_segment_mask


def plan_layers(summaries, cfg, seq_len, backend):
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=cfg.segment_size_tokens,
                 block_size_tokens=cfg.block_size_tokens)
    if backend == "rust":
        typing, keeping, selecting = rust_planner.head_budgets, rust_planner.keep_blocks, rust_planner.select_blocks
    else:
        typing, keeping, selecting = head_budgets, keep_blocks, select_blocks
    for layer, (entropy, scores) in enumerate(summaries):
        _, budgets, _ = typing(entropy, cfg)
        keep = keeping(budgets, **sizes)
        sparse = sparse_segment_mask(seq_len, cfg, layer_idx=layer)
        keep = torch.where(sparse[None], keep, torch.zeros_like(keep))
        selecting(scores, keep, sparse, **sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=131072)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="rust,torch")
    parser.add_argument("--json", default=None, help="append the result rows to this JSON-lines file")
    args = parser.parse_args()
    cfg = EntropyInferConfig.paper()
    nseg = -(-args.seq_len // cfg.segment_size_tokens)
    nblk = (nseg - 1) * (cfg.segment_size_tokens // cfg.block_size_tokens)
    gen = torch.Generator().manual_seed(0)
    summaries = [(torch.rand(args.kv_heads, nseg, generator=gen) * 6,
                  torch.rand(args.kv_heads, nseg, nblk, generator=gen)) for _ in range(args.layers)]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for backend in args.backends.split(","):
        plan_layers(summaries[:1], cfg, args.seq_len, backend)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            plan_layers(summaries, cfg, args.seq_len, backend)
            times.append(time.perf_counter() - start)
        row = dict(benchmark="planner", backend=backend, seq_len_tokens=args.seq_len, layers=args.layers,
                   kv_heads=args.kv_heads, num_segments=nseg, num_blocks=nblk, ms_per_request=1e3 * min(times),
                   ms_per_layer=1e3 * min(times) / args.layers, torch_threads=torch.get_num_threads(),
                   device=platform.processor() or platform.machine(), git_sha=sha)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

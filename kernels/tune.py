"""Kernel tile sweeps and micro-benchmarks on a CUDA device: `python kernels/tune.py [--quick | --sweep | --decode-only]`.

Prints one JSON row per measurement (kernel, shape, density, median ms, effective TFLOP/s or GB/s) next to a
dense baseline at the same shape (torch SDPA, causal, GQA). Timing: `triton.testing.do_bench` (warm-up, median).
"""

from __future__ import annotations

import argparse
import json

import torch


def _plan(seq_len: int, num_kv_heads: int, keep_fraction: float, *, segment: int = 512, block: int = 8,
          device: str = "cuda"):
    """A random plan keeping `keep_fraction` of each segment's earlier blocks (1.0 = dense causal)."""
    from entropyinfer_sgl.core.plan import PrefillPlan, select_blocks

    nseg = -(-seq_len // segment)
    per_segment = segment // block
    num_blocks = max(1, (nseg - 1) * per_segment)
    scores = torch.rand(num_kv_heads, nseg, num_blocks, device=device)
    visible = torch.arange(nseg, device=device) * per_segment
    keep = (visible.float() * keep_fraction).floor().to(torch.int32)[None].expand(num_kv_heads, -1).contiguous()
    sparse = keep[0] > 0
    sizes = dict(seq_len_tokens=seq_len, segment_size_tokens=segment, block_size_tokens=block)
    indptr, indices = select_blocks(scores, keep, sparse, **sizes)
    return PrefillPlan(indptr=indptr, indices=indices, keep_blocks=keep, sparse_segments=sparse,
                       num_kv_heads=num_kv_heads, **sizes)


def _computed_pairs(plan) -> float:
    """(query, key) pairs the kernel computes, summed over kv heads (the causal diagonal counted exactly)."""
    return plan.density() * plan.num_kv_heads * plan.seq_len_tokens * (plan.seq_len_tokens + 1) / 2


def bench_prefill(seq_lens, *, num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16):
    from triton.testing import do_bench

    from entropyinfer_sgl import EntropyInferConfig, plan_prefill, profile_prefill
    from entropyinfer_sgl.kernels import sparse_prefill

    for seq_len in seq_lens:
        q = torch.randn(seq_len, num_q_heads, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(seq_len, num_kv_heads, head_dim, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        group = num_q_heads // num_kv_heads  # the baseline gets K/V expanded to every q head (flash backend)
        qt, kt, vt = (t.repeat_interleave(n, dim=1).transpose(0, 1).unsqueeze(0) for t, n in ((q, 1), (k, group),
                                                                                                (v, group)))
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)  # noqa: E731
        ms = do_bench(sdpa)
        flops = 4.0 * head_dim * num_q_heads * seq_len * (seq_len + 1) / 2
        _row("sdpa_causal_dense", seq_len, 1.0, ms, tflops=flops / ms / 1e9)
        for keep in (1.0, 0.5, 0.25, 0.1, "paper"):
            if keep == "paper":  # the paper's budgets (random data: every head dynamic, budgets near beta)
                config = EntropyInferConfig()
                plan = plan_prefill(profile_prefill(q, k, config), config, layer_idx=1)
            else:
                plan = _plan(seq_len, num_kv_heads, keep)
            ms = do_bench(lambda: sparse_prefill(q, k, v, plan))
            flops = 4.0 * head_dim * (num_q_heads // num_kv_heads) * _computed_pairs(plan)
            _row("sparse_prefill", seq_len, plan.density(), ms, tflops=flops / ms / 1e9, keep_fraction=keep)
        del q, k, v, qt, kt, vt


DEFAULT_SWEEP = ("128x32w4s3,128x64w8s3,64x32w4s3,"  # one q head per program
                 "256x64w8s3p,256x64w8s2p,128x32w4s3p,128x64w4s2p,256x32w8s3p")  # p: the q heads of a kv head


def sweep_prefill(configs: str = DEFAULT_SWEEP, seq_len=16384, head_dims=(128, 64), *, num_q_heads=32,
                  num_kv_heads=8, dtype=torch.bfloat16):
    """Launch configurations ("{block_m}x{block_n}w{warps}s{stages}", a trailing "p" for `pack_gqa`,
    comma-separated) of sparse_prefill at one shape: dense, a quarter and 5% of the earlier blocks (the 128k
    default config plans about 4%)."""
    import re

    from triton.testing import do_bench

    from entropyinfer_sgl.kernels import LaunchConfig, sparse_prefill

    parsed = [re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)(p?)", c.strip()).groups() for c in configs.split(",")]
    for head_dim in head_dims:
        q = torch.randn(seq_len, num_q_heads, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(seq_len, num_kv_heads, head_dim, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        for keep in (1.0, 0.25, 0.05):
            plan = _plan(seq_len, num_kv_heads, keep)
            flops = 4.0 * head_dim * (num_q_heads // num_kv_heads) * _computed_pairs(plan)
            for block_m, block_n, warps, stages, packed in parsed:
                name = f"{block_m}x{block_n}w{warps}s{stages}{packed}"
                config = LaunchConfig(block_m=int(block_m), block_n=int(block_n), num_warps=int(warps),
                                      num_stages=int(stages), pack_gqa=packed == "p")
                try:
                    ms = do_bench(lambda: sparse_prefill(q, k, v, plan, config=config))
                except Exception as err:  # out of resources etc.
                    _row("sparse_prefill_sweep", seq_len, plan.density(), float("nan"), head_dim=head_dim,
                         config=name, error=type(err).__name__)
                    continue
                _row("sparse_prefill_sweep", seq_len, plan.density(), ms, tflops=flops / ms / 1e9, head_dim=head_dim,
                     config=name)


def bench_decode(batches, kept, *, num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16,
                 slots=1 << 20):
    """GPU time inside a CUDA graph (as SGLang decodes) and, for reference, eager time with Python launches."""
    from triton.testing import do_bench, do_bench_cudagraph

    from entropyinfer_sgl.kernels import compressed_decode, decode_num_splits

    k_cache = torch.randn(slots, num_kv_heads, head_dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    for batch in batches:
        for max_kept in kept:
            q = torch.randn(batch, num_q_heads, head_dim, device="cuda", dtype=dtype)
            indices = torch.randint(0, slots, (batch, num_kv_heads, max_kept), device="cuda", dtype=torch.int32)
            indices = indices.sort(dim=-1).values
            lengths = torch.full((batch, num_kv_heads), max_kept, device="cuda", dtype=torch.int32)
            run = lambda: compressed_decode(q, k_cache, v_cache, indices, lengths)  # noqa: E731
            run()
            ms_graph = do_bench_cudagraph(run)
            ms_eager = do_bench(run)
            moved = batch * num_kv_heads * max_kept * (2 * head_dim * k_cache.element_size() + 4)
            splits = decode_num_splits(batch, num_kv_heads, max_kept, block_n=64, device="cuda")
            _row("compressed_decode", max_kept, 1.0, ms_graph, batch=batch, gbps=moved / ms_graph / 1e6,
                 eager_ms=ms_eager, num_splits=splits)


def _row(kernel, tokens, density, ms, **extra):
    row = dict(kernel=kernel, tokens=tokens, density=round(density, 4), ms=round(ms, 4),
               gpu=torch.cuda.get_device_name())
    row.update({key: (round(value, 2) if isinstance(value, float) else value) for key, value in extra.items()})
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--sweep", action="store_true", help="launch configurations of sparse_prefill only")
    parser.add_argument("--configs", default=DEFAULT_SWEEP, help="sweep: {block_m}x{block_n}w{warps}s{stages},...")
    parser.add_argument("--seq-len", type=int, default=16384, help="sweep: prompt length")
    parser.add_argument("--head-dims", default="128,64", help="sweep: head dims")
    parser.add_argument("--decode-only", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench needs a CUDA device")
    if args.sweep:
        sweep_prefill(args.configs, args.seq_len, [int(d) for d in args.head_dims.split(",")])
        return
    seq_lens = [8192] if args.quick else [8192, 16384, 32768]
    if not args.decode_only:
        bench_prefill(seq_lens)
    bench_decode([1, 8] if args.quick else [1, 8, 32, 128], [1024, 4096])


if __name__ == "__main__":
    main()

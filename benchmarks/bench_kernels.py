"""Kernel benchmarks on one GPU: sparse prefill (profiling + plan + attention) and compressed decode vs dense.

Everything runs in one process, so every sparse number sits next to a dense baseline measured on the same card
in the same run. Shapes default to Llama-3.1-8B attention (32 q / 8 kv heads, head_dim 128, bf16).

    python benchmarks/bench_kernels.py --seq-lens 16384,32768,65536,131072 --out rows.jsonl

Rows (JSON lines): git_sha, device, kind, method, seq_len_tokens, batch, density, ms, tflops (FLOPs actually
computed / time) and dense_equiv_tflops (dense causal FLOPs / time), speedup vs dense SDPA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from entropyinfer_sgl import EntropyInferConfig
from entropyinfer_sgl.core.device_plan import plan_prefill_device
from entropyinfer_sgl.kernels import compressed_decode, sparse_prefill


def bench(fn, *, graph: bool = False) -> float:
    """Median milliseconds of fn() (CUDA events, warm-up first); NaN (and the reason printed) if it fails."""
    import triton.testing as tt

    try:
        if graph:
            return tt.do_bench_cudagraph(fn, rep=200, return_mode="median")
        return tt.do_bench(fn, warmup=50, rep=300, return_mode="median")
    except Exception as err:  # noqa: BLE001 - one failing variant must not lose the rest of the run
        print(f"benchmark failed: {type(err).__name__}: {err}", flush=True)
        torch.cuda.synchronize()
        return float("nan")


def sdpa_gqa(q, k, v, **kwargs):
    """SDPA with grouped kv heads; repeats them when the backend has no native GQA."""
    try:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    except RuntimeError:
        group = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                              **kwargs)


def dense_causal_flops(seq_len: int, num_q_heads: int, head_dim: int) -> float:
    return 4.0 * num_q_heads * head_dim * seq_len * (seq_len + 1) / 2


def prefill_rows(seq_len, args, meta):
    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    shape_q, shape_kv = (seq_len, args.q_heads, args.head_dim), (seq_len, args.kv_heads, args.head_dim)
    q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16, generator=gen)
    flops = dense_causal_flops(seq_len, args.q_heads, args.head_dim)
    rows = []

    def row(kind, method, ms, density=1.0, **extra):
        r = dict(meta, kind=kind, method=method, seq_len_tokens=seq_len, batch=1, density=density, ms=ms,
                 tflops=flops * density / ms / 1e9, dense_equiv_tflops=flops / ms / 1e9, **extra)
        rows.append(r)
        print(json.dumps(r), flush=True)

    q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        gqa_ms = bench(lambda: sdpa_gqa(q4, k4, v4, is_causal=True))
        # The fastest dense layout: contiguous [1, H, L, D] with the kv heads repeated once, outside the timing.
        group = args.q_heads // args.kv_heads
        qc = q4.contiguous()
        kc, vc = (t.repeat_interleave(group, 1).contiguous() for t in (k4, v4))
        repeated_ms = bench(lambda: F.scaled_dot_product_attention(qc, kc, vc, is_causal=True))
        del qc, kc, vc
    row("prefill", "dense_sdpa_flash_enable_gqa", gqa_ms)
    row("prefill", "dense_sdpa_flash", repeated_ms)
    dense_ms = min(gqa_ms, repeated_ms)  # the baseline every speedup is measured against
    try:
        if not args.flashinfer:
            raise RuntimeError("--flashinfer not given")
        import flashinfer

        fi_ms = bench(lambda: flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True))
        row("prefill", "dense_flashinfer", fi_ms)
    except Exception as err:  # noqa: BLE001 - the baseline is optional; say why it is missing
        print(f"flashinfer dense skipped: {type(err).__name__}: {err}", flush=True)

    base = EntropyInferConfig()
    configs = {
        "entropyinfer": base,
        "entropyinfer_paper_one_k": EntropyInferConfig.paper(),
        "forced_beta": base.replace(base_budget_tokens=2048, max_budget_tokens=2048),
        "forced_3beta": base.replace(base_budget_tokens=6144, max_budget_tokens=6144),
    }
    for name, cfg in configs.items():
        if name not in args.configs.split(","):
            continue
        profile_ms = bench(lambda: plan_prefill_device(q, k, cfg, layer_idx=1))
        try:
            _, plan = plan_prefill_device(q, k, cfg, layer_idx=1)
        except Exception as err:  # noqa: BLE001
            print(f"{name}: planning failed: {type(err).__name__}: {err}", flush=True)
            continue
        density = plan.density()
        attn_ms = bench(lambda: sparse_prefill(q, k, v, plan))
        row("prefill", f"{name}:profile+plan", profile_ms, density=0.0, share_of_dense=profile_ms / dense_ms)
        row("prefill", f"{name}:triton_attention", attn_ms, density=density, speedup_vs_sdpa=dense_ms / attn_ms)
        total = profile_ms + attn_ms
        row("prefill", f"{name}:triton_total", total, density=density, speedup_vs_sdpa=dense_ms / total)
        try:
            if not args.flashinfer:
                raise RuntimeError("--flashinfer not given")
            from entropyinfer_sgl.kernels.flashinfer_sparse import FlashInferSparsePrefill

            runner = FlashInferSparsePrefill(q.device)
            runner.plan(plan, num_qo_heads=args.q_heads, head_dim=args.head_dim, dtype=q.dtype)
            fi_sparse_ms = bench(lambda: runner.run(q, k, v))
            row("prefill", f"{name}:flashinfer_attention", fi_sparse_ms, density=density,
                speedup_vs_sdpa=dense_ms / fi_sparse_ms)
        except Exception as err:  # noqa: BLE001
            print(f"flashinfer sparse skipped: {type(err).__name__}: {err}", flush=True)
    return rows


def profiling_breakdown_rows(seq_len, args, meta):
    """Where the profile+plan time goes: each stage of `plan_prefill_device` timed on its own."""
    from entropyinfer_sgl.core.budgets import keep_blocks
    from entropyinfer_sgl.kernels.budget_scan import head_budgets_device
    from entropyinfer_sgl.kernels.entropy_profile import block_scores_and_entropy
    from entropyinfer_sgl.core.profile import block_representatives, segment_representatives

    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    q = torch.randn(seq_len, args.q_heads, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(seq_len, args.kv_heads, args.head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    cfg = EntropyInferConfig()
    nseg = -(-seq_len // cfg.segment_size_tokens)
    nblk = (nseg - 1) * (cfg.segment_size_tokens // cfg.block_size_tokens)
    p, entropy = block_scores_and_entropy(q, k, cfg)
    _, budgets, _ = head_budgets_device(entropy, cfg)
    stages = {
        "segment_representatives": lambda: segment_representatives(q, cfg.segment_size_tokens),
        "block_representatives": lambda: block_representatives(k, nblk, cfg.block_size_tokens),
        "entropy_kernel_total": lambda: block_scores_and_entropy(q, k, cfg),
        # the key blocks in one split: each program loops over every block its segments see (before the splits)
        "entropy_kernel_one_split": lambda: block_scores_and_entropy(q, k, cfg, split_blocks=-(-nblk // 64) * 64),
        "budget_scan": lambda: head_budgets_device(entropy, cfg),
        "keep_blocks": lambda: keep_blocks(budgets, seq_len_tokens=seq_len, segment_size_tokens=512,
                                           block_size_tokens=8),
        "topk_768": lambda: torch.topk(p.view(torch.int16).to(torch.int32), 768, dim=-1),
        "plan_prefill_device": lambda: plan_prefill_device(q, k, cfg, layer_idx=1),
    }
    rows = []
    for name, fn in stages.items():
        r = dict(meta, kind="profiling_stage", method=name, seq_len_tokens=seq_len, batch=1, ms=bench(fn))
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def decode_rows(context, batch, budget, args, meta):
    gen = torch.Generator(device="cuda").manual_seed(batch)
    hq, hkv, d = args.q_heads, args.kv_heads, args.head_dim
    k_cache = torch.randn(batch * context, hkv, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v_cache = torch.randn(batch * context, hkv, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    start = (torch.arange(batch, device="cuda") * context)[:, None, None]
    full = (start + torch.arange(context, device="cuda")[None, None, :]).expand(batch, hkv, context)
    full = full.to(torch.int32).contiguous()
    full_len = torch.full((batch, hkv), context, dtype=torch.int32, device="cuda")
    kept = torch.sort(torch.rand(batch, hkv, context, device="cuda", generator=gen).argsort(-1)[..., :budget]).values
    kept = (kept + start).to(torch.int32).contiguous()
    kept_len = torch.full((batch, hkv), budget, dtype=torch.int32, device="cuda")
    rows = []

    def row(method, ms, kept_tokens):
        r = dict(meta, kind="decode", method=method, seq_len_tokens=context, batch=batch, kept_tokens=kept_tokens,
                 ms=ms, gbytes_per_s=2 * batch * hkv * kept_tokens * d * 2 / ms / 1e6)
        rows.append(r)
        print(json.dumps(r), flush=True)

    kq = k_cache.view(batch, context, hkv, d).transpose(1, 2)
    vq = v_cache.view(batch, context, hkv, d).transpose(1, 2)
    sdpa_ms = bench(lambda: sdpa_gqa(q[:, :, None], kq, vq), graph=True)
    row("dense_sdpa", sdpa_ms, context)
    dense_ms = bench(lambda: compressed_decode(q, k_cache, v_cache, full, full_len), graph=True)
    row("dense_triton_full_cache", dense_ms, context)
    sparse_ms = bench(lambda: compressed_decode(q, k_cache, v_cache, kept, kept_len), graph=True)
    row(f"compressed_triton_budget{budget}", sparse_ms, budget)
    rows[-1]["speedup_vs_dense_triton"] = dense_ms / sparse_ms
    rows[-1]["speedup_vs_sdpa"] = sdpa_ms / sparse_ms
    print(json.dumps({"decode_speedup": rows[-1]}), flush=True)
    del k_cache, v_cache
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", default="16384,32768,65536,131072")
    parser.add_argument("--decode-context", type=int, default=131072)
    parser.add_argument("--decode-batches", default="1,32")
    parser.add_argument("--decode-budget", type=int, default=2048)
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--flashinfer", action="store_true", help="also time FlashInfer dense and sparse (JIT: minutes)")
    parser.add_argument("--configs", default="entropyinfer,entropyinfer_paper_one_k,forced_beta,forced_3beta")
    parser.add_argument("--breakdown", action="store_true", help="also time each profiling stage at every length")
    parser.add_argument("--skip-prefill", action="store_true", help="no prefill rows (--breakdown still runs)")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels.py needs a CUDA device")
    sha = os.environ.get("GIT_SHA") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                      text=True).stdout.strip()
    meta = dict(git_sha=sha or "unknown", device=torch.cuda.get_device_name(), q_heads=args.q_heads,
                kv_heads=args.kv_heads, head_dim=args.head_dim, dtype="bfloat16")
    rows = []
    for seq_len in (int(x) for x in args.seq_lens.split(",")):
        if args.breakdown:
            rows += profiling_breakdown_rows(seq_len, args, meta)
        if not args.skip_prefill:
            rows += prefill_rows(seq_len, args, meta)
        torch.cuda.empty_cache()
    if not args.skip_decode:
        for batch in (int(x) for x in args.decode_batches.split(",")):
            rows += decode_rows(args.decode_context, batch, args.decode_budget, args, meta)
    if args.out:
        with open(args.out, "a") as out:
            for r in rows:
                out.write(json.dumps(r) + "\n")
    print("\nmethod | L | batch | density | ms | speedup")
    for r in rows:
        speed = r.get("speedup_vs_sdpa")
        density = r.get("density")
        print(f"{r['method']} | {r['seq_len_tokens']} | {r['batch']} | "
              f"{'' if density is None else f'{density:.4f}'} | {r['ms']:.3f} | "
              f"{'' if speed is None else f'{speed:.2f}x'}")


if __name__ == "__main__":
    main()

"""Where the SGLang kernel path's time goes in chunked prefill: one layer of one request, 8B attention shapes.

`prefill_chunk` for a chunk after a prefix (`state.plan_chunk` on the device: the chunk's own segments are scored
and planned, + `sparse_prefill` with prefix_len) against the same request's whole prompt in one chunk (fused device
planner), timed with CUDA events, plus the CPU and CUDA ops of one chunk from the torch profiler (launch count,
host syncs). For scale, dense attention of each chunk: torch SDPA (flash) of the chunk's queries over every key so
far without a mask, an upper bound of causal dense attention (it also computes the chunk's upper triangle).

Host time per chunk (issue 19): the host's time inside `prefill_chunk`, from an idle device to the call's return
(planning, launches and any host sync), beside the chunk's time on the device; host < device means the host work
hides behind the GPU's. `--host-only` prints just those rows. For before/after runs the script also imports the
code before the layout change (`entropyinfer_sgl.sglang.kernel_path`, same signature).

    python benchmarks/bench_chunk_path.py --seq-len 65536 --chunk 8192
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from entropyinfer_sgl import EntropyInferConfig

try:
    from entropyinfer_sgl.runtime.kernel_path import prefill_chunk
except ImportError:  # the code before the layout change (before/after runs)
    from entropyinfer_sgl.sglang.kernel_path import prefill_chunk


def timed(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def host_ms(fn, repeats: int = 5) -> float:
    """The host's time in `fn` (median), each call starting on an idle device."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=65536)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--host-only", action="store_true", help="only the host time per chunk (issue 19)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_chunk_path needs a CUDA device")
    torch.manual_seed(0)
    cfg = EntropyInferConfig()
    seq_len, chunk = args.seq_len, args.chunk
    q = torch.randn(seq_len, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(seq_len, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = 1 / math.sqrt(128)

    def run(prefix: int, end: int, typing):
        return prefill_chunk(q[prefix:end], k[:end], v[:end], cfg, prefix_len=prefix, layer_idx=3, typing=typing,
                             previous_block_scores=None, scale=scale, attend=True,
                             prompt_len_tokens=seq_len)  # as the server plans: the prompt's length is known

    def dense(prefix: int, end: int):
        qh, kh, vh = (x.transpose(0, 1)[None] for x in (q[prefix:end], k[:end], v[:end]))
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=True)

    typing, prefix, rows = None, 0, []
    for end in range(chunk, seq_len + 1, chunk):
        carried = typing
        result = run(prefix, end, carried)

        def call():
            return run(prefix, end, carried)

        dense_ms = None if args.host_only or not prefix else timed(lambda: dense(prefix, end), repeats=3)
        rows.append((prefix, end, host_ms(call), timed(call, repeats=3), dense_ms))
        typing, prefix = result.typing, end
    for prefix, end, host, device, _ in rows:
        print(f"host time, chunk {prefix}-{end}: {host:.2f} ms on the host, {device:.2f} ms on the device")
    if args.host_only:
        return
    print(f"whole prompt in one chunk (device planner): {timed(lambda: run(0, seq_len, None)):.2f} ms")
    later = [row for row in rows if row[0]]
    for _, end, _, ms, dense_ms in later:
        print(f"chunk ending at {end}: {ms:.2f} ms (dense SDPA, unmasked: {dense_ms:.2f} ms)")
    print(f"sum over chunks after the first: {sum(r[3] for r in later):.2f} ms "
          f"(dense SDPA, unmasked: {sum(r[4] for r in later):.2f} ms)")

    from torch.profiler import ProfilerActivity, profile

    last_prefix = seq_len - chunk
    first = run(0, last_prefix, None)  # a typing state that ends at last_prefix
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(last_prefix, seq_len, first.typing)
        torch.cuda.synchronize()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                      "cudaMemcpyAsync"))
    print(f"last chunk: {launches} kernel launches, {syncs} memcpy/sync calls")
    print(events.table(sort_by="self_cpu_time_total", row_limit=20))
    print(events.table(sort_by="self_cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()

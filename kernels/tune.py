"""Kernel tile sweeps and micro-benchmarks on a CUDA device:
`python kernels/tune.py [--quick | --sweep | --decode-only | --pool-decode [--pool-quick | --pool-smoke] |
--event [--event-sweep]]`.

Prints one JSON row per measurement (kernel, shape, density, median ms, effective TFLOP/s or GB/s) next to a
dense baseline at the same shape (torch SDPA, causal, GQA). Timing: `triton.testing.do_bench` (warm-up, median).
`--pool-decode`: the serving-mode decode (`PoolRows`) against FlashInfer's paged decode, timed inside CUDA graphs;
`--pool-smoke` runs it on the CPU under the Triton interpreter (the caller sets TRITON_INTERPRET=1).
`--event [--event-sweep]`: a decode compression event, per layer (the torch oracle's scores against the fused
kernel's) and over all layers as the server runs it; `--event-sweep` adds the scoring kernel's launches at 100k.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

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

    from entropyinfer_sgl.kernels import compressed_decode, decode_launch_config, decode_num_splits

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
            block_n = decode_launch_config(head_dim, dtype).block_n  # the splits the default launch takes
            splits = decode_num_splits(batch, num_kv_heads, max_kept, block_n=block_n, device="cuda")
            _row("compressed_decode", max_kept, 1.0, ms_graph, batch=batch, gbps=moved / ms_graph / 1e6,
                 eager_ms=ms_eager, num_splits=splits)


# ---------------------------------------------------------------------------------------------------------
# Serving-mode decode (`--pool-decode`): our kernel reading each request through SGLang's req_to_token row and a
# table arena (`PoolRows`), as the server runs it, against FlashInfer's dense paged decode at the same shapes.

@dataclass(frozen=True)
class PoolSetup:
    """Geometry, arena sizes and timing of a pool-decode run; the defaults are Llama-3.1-8B served on a GPU."""

    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16
    device: str = "cuda"
    width: int = 131328  # req_to_token columns: SGLang's context length in our runs (sizes the kernel's grid)
    max_kept: int = 2048  # kept entries per (table, kv head) after a compression event
    recent: int = 16  # compressed case: positions read from the row after the event (tail_starts = seq_len - 16)
    atol: float = 2e-2  # bfloat16 outputs against the float32 reference
    timing: str = "cudagraph"  # or "wall": a host loop, for the interpreter
    strict: bool = False  # raise on a failed or wrong measurement instead of printing an error row (smoke)


SMOKE_SETUP = PoolSetup(num_q_heads=4, num_kv_heads=2, head_dim=32, dtype=torch.float32, device="cpu", width=512,
                        max_kept=64, atol=1e-4, timing="wall", strict=True)
SMOKE_SEQ_LEN, SMOKE_BATCHES = 300, (1, 2)
SLOT_SLACK = 1024  # spare cache slots past the last request's, as a pool always has
WALL_RUNS = 2


@dataclass
class PoolCache:
    """K/V and request rows shared by both cases of one (seq_len, batch)."""

    q: torch.Tensor  # [batch, Hq, D]
    k_cache: torch.Tensor  # [slots, Hkv, D]
    v_cache: torch.Tensor
    req_to_token: torch.Tensor  # int32 [batch, width]
    row_slots: torch.Tensor  # int32 [batch, seq_len]: slot of each position of each request


@dataclass
class PoolCase:
    """One table-arena state over a `PoolCache`, the float32 reference output and the entries each head reads."""

    name: str  # "uncompressed" (no table: the whole row) or "compressed" (a table per request)
    cache: PoolCache
    kept_indices: torch.Tensor
    kept_lengths: torch.Tensor
    pool_rows: object  # entropyinfer_sgl.kernels.PoolRows
    attended: int
    reference: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def seq_len(self) -> int:
        return self.cache.row_slots.shape[1]

    @property
    def batch(self) -> int:
        return self.cache.row_slots.shape[0]


def _pool_cache(setup: PoolSetup, seq_len: int, batch: int) -> PoolCache:
    """Rows filled with sequential slots, as a fresh SGLang pool allocates them."""
    if seq_len > setup.width:
        raise ValueError(f"seq_len {seq_len} does not fit req_to_token rows of width {setup.width}")
    values = {"dtype": setup.dtype, "device": setup.device}
    k_cache = torch.randn(batch * seq_len + SLOT_SLACK, setup.num_kv_heads, setup.head_dim, **values)
    q = torch.randn(batch, setup.num_q_heads, setup.head_dim, **values)
    positions = torch.arange(seq_len, dtype=torch.int32, device=setup.device)
    row_slots = torch.arange(batch, dtype=torch.int32, device=setup.device)[:, None] * seq_len + positions
    req_to_token = torch.zeros(batch, setup.width, dtype=torch.int32, device=setup.device)
    req_to_token[:, :seq_len] = row_slots
    return PoolCache(q, k_cache, torch.randn_like(k_cache), req_to_token, row_slots)


def _pool_case(setup: PoolSetup, cache: PoolCache, *, compressed: bool) -> PoolCase:
    """The table arena before any compression event (`compressed=False`: every row reads itself whole) or after
    one event per request (a table each: `max_kept` random earlier slots per kv head, then the last `recent`)."""
    from entropyinfer_sgl.kernels import PoolRows
    from entropyinfer_sgl.kernels.compressed_decode import check_decode_inputs

    batch, seq_len = cache.row_slots.shape
    heads, max_kept = setup.num_kv_heads, setup.max_kept
    ints = {"dtype": torch.int32, "device": setup.device}
    if compressed:
        tail = seq_len - setup.recent
        if not 0 < max_kept <= tail:
            raise ValueError(f"compressed case needs 0 < max_kept={max_kept} <= seq_len - recent = {tail}")
        positions = torch.rand(batch, heads, tail, device=setup.device).argsort(-1)[..., :max_kept].sort(-1).values
        kept_indices = cache.row_slots[:, None].expand(-1, heads, -1).gather(2, positions).contiguous()
        kept_lengths = torch.full((batch, heads), max_kept, **ints)
        table_of_row, tail_starts = torch.arange(batch, **ints), torch.full((batch,), tail, **ints)
        name, attended = "compressed", max_kept + setup.recent
    else:  # the arena still holds one (unused) table: its tensors keep their serving shapes
        kept_indices = torch.full((1, heads, max_kept), -1, **ints)
        kept_lengths = torch.zeros(1, heads, **ints)
        table_of_row, tail_starts = torch.full((batch,), -1, **ints), torch.zeros(1, **ints)
        name, attended = "uncompressed", seq_len
    row_indices = torch.arange(batch, dtype=torch.int64, device=setup.device)  # SGLang's req_pool_indices: int64
    seq_lens = torch.full((batch,), seq_len, **ints)
    pool_rows = PoolRows(cache.req_to_token, row_indices, seq_lens, table_of_row, tail_starts)
    check_decode_inputs(cache.q, cache.k_cache, cache.v_cache, kept_indices, kept_lengths, pool_rows=pool_rows)
    case = PoolCase(name, cache, kept_indices, kept_lengths, pool_rows, attended)
    case.reference = _pool_reference(case)
    return case


def _pool_reference(case: PoolCase) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 out [B, Hq, D] and lse [B, Hq]: each request over the slots its kv heads attend (kept entries of its
    table, then its row from the table's tail; the whole row without a table)."""
    from entropyinfer_sgl.core.reference import compressed_decode_reference

    rows = case.pool_rows
    outs, lses = [], []
    for b in range(case.batch):
        table = int(rows.table_of_row[int(rows.row_indices[b])])
        if table >= 0:  # every head of a table keeps max_kept entries here
            kept, tail = case.kept_indices[table], int(rows.tail_starts[table])
        else:
            kept, tail = case.kept_indices[0, :, :0], 0
        row = case.cache.row_slots[b, tail:].expand(kept.shape[0], -1)
        slots = torch.cat([kept, row], dim=1)
        lengths = torch.full((slots.shape[0],), slots.shape[1], dtype=torch.int32, device=slots.device)
        out, lse = compressed_decode_reference(case.cache.q[b], case.cache.k_cache, case.cache.v_cache, slots, lengths)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def _max_error(result, reference: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest absolute deviation of out (and lse, where the kernel returns it) from the reference."""
    pairs = zip(result, reference) if isinstance(result, tuple) else [(result, reference[0])]
    return max(float((got.float() - want).abs().max()) for got, want in pairs)


def _time_ms(run: Callable, timing: str) -> tuple[float, str]:
    """Milliseconds per call and how they were taken. "cudagraph": replays of a captured graph, as SGLang decodes
    (no launch overhead), falling back to eager `do_bench` when capture fails; "wall": a host loop (interpreter)."""
    if timing == "wall":
        run()  # compile outside the timed loop
        start = time.perf_counter()
        for _ in range(WALL_RUNS):
            run()
        return (time.perf_counter() - start) * 1e3 / WALL_RUNS, "wall"
    from triton.testing import do_bench, do_bench_cudagraph

    try:
        return do_bench_cudagraph(run), "cudagraph"
    except Exception as err:  # noqa: BLE001 - e.g. a host sync inside the call
        torch.cuda.synchronize()
        return do_bench(run), f"eager (graph capture failed: {type(err).__name__})"


def _measure(setup: PoolSetup, case: PoolCase, kernel: str, plan: Callable, **fields) -> dict | None:
    """Plan a launch (`plan() -> (run, extra row fields)`), check one run against the reference, time it and
    print its row. Returns the row, or None after printing an error row (raises instead when `setup.strict`)."""
    density = case.attended / case.seq_len
    try:
        run, extra = plan()
        error = _max_error(run(), case.reference)
        ms, timing = _time_ms(run, setup.timing)
    except Exception as err:  # out of resources, a missing library, ...
        if setup.strict:
            raise
        _row(kernel, case.seq_len, density, float("nan"), batch=case.batch, case=case.name, **fields,
             error=f"{type(err).__name__}: {str(err)[:300]}")
        return None
    if error > setup.atol and setup.strict:
        raise AssertionError(f"{kernel} {case.name} {fields}: max error {error:.2e} > atol {setup.atol}")
    kv_bytes = case.batch * setup.num_kv_heads * case.attended * 2 * setup.head_dim * case.cache.k_cache.element_size()
    row = dict(batch=case.batch, case=case.name, **fields, **extra, gbps=kv_bytes / ms / 1e6, timing=timing,
               max_err=f"{error:.1e}", correct=error <= setup.atol)  # a string: _row rounds floats to 2 places
    _row(kernel, case.seq_len, density, ms, **row)
    return dict(row, ms=ms)


def _config_name(config) -> str:
    return f"{config.block_n}w{config.num_warps}s{config.num_stages}"


def _pool_sweep(setup: PoolSetup, *, quick: bool) -> list[tuple[object, int | None]]:
    """(LaunchConfig or None, num_splits or None) pairs; (None, None) is the shipped default launch."""
    from entropyinfer_sgl.kernels import LaunchConfig

    if setup.timing == "wall":  # smoke: one direct launch (a single split) and one with the reduce kernel
        return [(None, None), (LaunchConfig(block_m=16, block_n=16, num_stages=1), 1),
                (LaunchConfig(block_m=16, block_n=32, num_stages=1), 4)]
    if quick:
        block_ns, warps, stages, splits = (64, 128), (4, 8), (2, 3), (None, 32, 64, 128)
    else:
        block_ns, warps, stages, splits = (32, 64, 128), (4, 8), (2, 3, 4), (None, 16, 32, 64, 96, 128)
    # read at run time: the kernel's limit may be raised
    max_splits = importlib.import_module("entropyinfer_sgl.kernels.compressed_decode").MAX_SPLITS
    sweep = [(LaunchConfig(block_m=16, block_n=n, num_warps=w, num_stages=s), split)
             for n, w, s, split in itertools.product(block_ns, warps, stages, splits)
             if split is None or split <= max_splits]
    return [(None, None)] + sweep


def _sweep_pool_case(setup: PoolSetup, case: PoolCase, sweep) -> list[dict]:
    """Our kernel over the sweep, each launch planned once and replayed as SGLang does (`DecodeLaunch.run`)."""
    from entropyinfer_sgl.kernels import DecodeLaunch, decode_launch_config

    cache = case.cache

    def planner(config, num_splits):
        def plan():
            launch = DecodeLaunch(cache.q, cache.k_cache, cache.v_cache, case.kept_indices, config=config,
                                  num_splits=num_splits, pool_rows=case.pool_rows)
            def run():
                return launch.run(cache.q, cache.k_cache, cache.v_cache, case.kept_indices, case.kept_lengths,
                                  pool_rows=case.pool_rows)
            return run, {"num_splits": launch.num_splits}
        return plan

    default_name = f"default({_config_name(decode_launch_config(setup.head_dim, setup.dtype))})"
    rows = []
    for config, num_splits in sweep:
        name = default_name if config is None else _config_name(config)
        row = _measure(setup, case, "pool_decode", planner(config, num_splits), config=name,
                       split_arg="auto" if num_splits is None else num_splits)
        rows.append(row)
    return [row for row in rows if row is not None]


def _bench_flashinfer(setup: PoolSetup, case: PoolCase) -> dict[str, float]:
    """FlashInfer's dense paged decode (page size 1) over the same rows, without and with tensor cores (SGLang
    takes tensor cores for GQA groups >= 4 in bfloat16). Returns {variant: ms} of the variants that ran."""
    if setup.timing == "wall":
        _row("flashinfer_decode", case.seq_len, 1.0, float("nan"), batch=case.batch, case="dense",
             skipped="smoke: FlashInfer needs CUDA")
        return {}
    cache = case.cache
    slots = cache.k_cache.shape[0]
    paged = tuple(t.view(slots, 1, setup.num_kv_heads, setup.head_dim) for t in (cache.k_cache, cache.v_cache))

    def planner(use_tensor_cores: bool):
        def plan():
            import flashinfer

            workspace = torch.empty(128 << 20, dtype=torch.uint8, device=setup.device)
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD",
                                                                    use_tensor_cores=use_tensor_cores)
            ints = {"dtype": torch.int32, "device": setup.device}
            args = {"indptr": torch.arange(case.batch + 1, **ints) * case.seq_len,
                    "indices": cache.row_slots.flatten(), "last_page_len": torch.ones(case.batch, **ints),
                    "num_qo_heads": setup.num_q_heads, "num_kv_heads": setup.num_kv_heads,
                    "head_dim": setup.head_dim, "page_size": 1, "pos_encoding_mode": "NONE",
                    "q_data_type": setup.dtype}
            try:
                wrapper.plan(**args, kv_data_type=setup.dtype)
            except TypeError as err:  # releases before kv_data_type took `data_type`
                if "kv_data_type" not in str(err):
                    raise
                wrapper.plan(**args, data_type=setup.dtype)
            return lambda: wrapper.run(cache.q, paged), {"version": getattr(flashinfer, "__version__", "?")}
        return plan

    dense = replace(case, name="dense", attended=case.seq_len)
    timings = {}
    for use_tensor_cores in (False, True):
        variant = f"tensor_cores={use_tensor_cores}"
        row = _measure(setup, dense, "flashinfer_decode", planner(use_tensor_cores), config=variant)
        if row is not None and row["correct"]:
            timings[variant] = row["ms"]
    return timings


def _print_pool_best(case: PoolCase, rows: list[dict], flashinfer: dict[str, float]) -> None:
    """The fastest correct launch of a case, against the shipped default and the fastest FlashInfer variant."""
    correct = [row for row in rows if row["correct"]]
    if not correct:
        _row("pool_decode_best", case.seq_len, case.attended / case.seq_len, float("nan"), batch=case.batch,
             case=case.name, error="no launch ran correctly")
        return
    best = min(correct, key=lambda row: row["ms"])
    default = next((row for row in correct if row["config"].startswith("default")), None)
    fields = {"batch": case.batch, "case": case.name, "config": best["config"], "split_arg": best["split_arg"],
              "num_splits": best["num_splits"], "launches": len(rows)}
    if default is not None:
        fields.update(default_us=default["ms"] * 1e3, default_num_splits=default["num_splits"])
    if flashinfer:
        variant, dense_ms = min(flashinfer.items(), key=lambda item: item[1])
        ratio = best["ms"] / dense_ms
        fields.update(flashinfer=variant, flashinfer_us=dense_ms * 1e3, ratio=ratio, gap_pct=(ratio - 1) * 100)
        if default is not None:
            fields.update(default_ratio=default["ms"] / dense_ms)
    _row("pool_decode_best", case.seq_len, case.attended / case.seq_len, best["ms"], **fields)


def bench_pool_decode(seq_lens, batches, setup: PoolSetup, *, quick: bool = False) -> None:
    """Serving-mode decode per (seq_len, batch): FlashInfer's dense decode, then our kernel's sweep with no table
    (before any compression event) and with one table per request (the steps after it), then the best of each."""
    torch.manual_seed(0)
    sweep = _pool_sweep(setup, quick=quick)
    for seq_len, batch in itertools.product(seq_lens, batches):
        cache = _pool_cache(setup, seq_len, batch)
        uncompressed = _pool_case(setup, cache, compressed=False)
        flashinfer = _bench_flashinfer(setup, uncompressed)
        for case in (uncompressed, _pool_case(setup, cache, compressed=True)):
            _print_pool_best(case, _sweep_pool_case(setup, case, sweep), flashinfer)
        del cache, uncompressed, case
        if setup.device == "cuda":
            torch.cuda.empty_cache()  # the next shape's cache is up to 4 GiB


def smoke_pool_decode() -> None:
    """Tiny shapes on the CPU under the Triton interpreter; every launch is checked against the reference."""
    from entropyinfer_sgl.kernels import interpret_mode

    if not interpret_mode():
        raise SystemExit("--pool-smoke runs under the Triton interpreter: set TRITON_INTERPRET=1")
    bench_pool_decode([SMOKE_SEQ_LEN], SMOKE_BATCHES, SMOKE_SETUP)
    print(json.dumps({"smoke_check": "ok", "atol": SMOKE_SETUP.atol}), flush=True)


def _row(kernel, tokens, density, ms, **extra):
    row = {"kernel": kernel, "tokens": tokens, "density": round(density, 4), "ms": round(ms, 4),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}  # cpu: --pool-smoke
    row.update({key: (round(value, 2) if isinstance(value, float) else value) for key, value in extra.items()})
    print(json.dumps(row), flush=True)


EVENT_SWEEP = [(block_n, warps, stages, splits) for block_n in (64, 128) for warps in (4, 8) for stages in (2, 3)
               for splits in (None, "x4")]  # splits None: the default (~2 waves); "x4": 4x as many programs


def bench_event(seq_lens, *, num_window=32, num_q_heads=32, num_kv_heads=8, head_dim=128, num_layers=32,
                dtype=torch.bfloat16, sweep_len=None, device="cuda", config=None, bench=None):
    """One request's compression event (eager, as the server runs it): per layer, the window's scores by the torch
    oracle and by the fused kernel and the whole `compress_layer` with each; then all layers as the server runs
    them (`compress_layers`, the fused kernel reading a pool through the request's slots: no key gather; one
    threshold selection for every layer), against layer by layer, with the selection alone (`plan_ms`:
    `uniform_kept_entries` over every layer's kv heads) and the eviction-order plan it replaced (`sort_plan_ms`);
    a layer's scores through the slots (`slot_scores_ms`) and with each window query's log-sum-exp given
    (`slot_scores_given_lse_ms`: one pass over the keys), and the event with them given (`one_pass_ms`).
    sweep_len: also time the scoring kernel's launches (EVENT_SWEEP) at that length. device / config / bench (ms per
    call of a function; default `triton.testing.do_bench`): the CPU smoke's (`smoke_event`)."""
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.core.decode import observation_scores, plan_decode_compression, uniform_kept_entries
    from entropyinfer_sgl.kernels.observation_scores import window_attention, window_num_splits
    from entropyinfer_sgl.runtime.decode_table import compress_layer, compress_layers
    from entropyinfer_sgl.runtime.kernel_path import fused_observation_scores

    if bench is None:
        from triton.testing import do_bench as bench
    config = config or EntropyInferConfig(observation_window_tokens=num_window)
    for seq_len in seq_lens:
        window_q = torch.randn(num_window, num_q_heads, head_dim, device=device, dtype=dtype)
        keys = torch.randn(seq_len, num_kv_heads, head_dim, device=device, dtype=dtype)
        torch_scores = observation_scores(window_q, keys, config)
        fused_scores = fused_observation_scores(window_q, keys, config)
        err = ((fused_scores - torch_scores).abs().max() / torch_scores.abs().max()).item()
        for name, scorer in (("torch", observation_scores), ("fused", fused_observation_scores)):
            ms_scores = bench(lambda: scorer(window_q, keys, config))
            ms_layer = bench(lambda: compress_layer(window_q, keys, None, config, scorer=scorer))
            _row("event_layer", seq_len, 1.0, ms_layer, scorer=name, scores_ms=ms_scores, relative_error=f"{err:.2e}")
        # the server's pool: the request's entries on shuffled rows of a larger buffer, read through its slots
        pool = torch.randn(seq_len + 4096, num_kv_heads, head_dim, device=device, dtype=dtype)
        slots = torch.randperm(pool.shape[0], device=device)[:seq_len]
        pool[slots] = keys
        windows = dict.fromkeys(range(num_layers), window_q)  # the same window and keys for every layer: timing only
        ms_loop = bench(lambda: [compress_layer(window_q, keys, None, config, scorer=fused_observation_scores)
                                    for _ in range(num_layers)])
        row_lse = torch.zeros(num_window, num_q_heads, device=device)  # timing only: its values do not matter

        def slot_scores(given_lse=None):  # one layer's scores read through the slots, as the server does
            return fused_observation_scores(window_q, pool, config, slots=slots, row_lse=given_lse)

        def event(given_lse=None):
            return compress_layers(windows, lambda layer: pool[slots], {}, config, scorer=fused_observation_scores,
                                   scores_of=lambda layer: slot_scores(given_lse))

        ms_event, ms_event_one_pass = bench(event), bench(lambda: event(row_lse))
        ms_slot_scores, ms_lse_scores = bench(slot_scores), bench(lambda: slot_scores(row_lse))
        all_scores = torch.cat([fused_scores] * num_layers)
        ms_plan = bench(lambda: uniform_kept_entries(all_scores, config))
        ms_sort = bench(lambda: plan_decode_compression(all_scores, config, backend="torch"))
        _row("event_all_layers", seq_len, 1.0, ms_event, layers=num_layers, one_pass_ms=ms_event_one_pass,
             layer_by_layer_ms=ms_loop, slot_scores_ms=ms_slot_scores, slot_scores_given_lse_ms=ms_lse_scores,
             plan_ms=ms_plan, sort_plan_ms=ms_sort)
        if seq_len == sweep_len:
            ref = window_attention(window_q, keys)  # the default launch
            for block_n, warps, stages, splits in EVENT_SWEEP:
                tiles = -(-seq_len // block_n)
                num_splits = None if splits is None else 4 * window_num_splits(num_kv_heads, tiles, keys.device)
                launch = dict(block_n=block_n, num_warps=warps, num_stages=stages, num_splits=num_splits)
                try:
                    got = window_attention(window_q, keys, **launch)
                    ms = bench(lambda: window_attention(window_q, keys, **launch))
                except Exception as err:  # noqa: BLE001 - a launch that does not fit is a row, not the end
                    print(json.dumps({"kernel": "event_scores_launch", **launch, "error": str(err)[:200]}))
                    continue
                _row("event_scores_launch", seq_len, 1.0, ms, block_n=block_n, warps=warps, stages=stages,
                     splits=splits or "default", max_err=f"{(got - ref).abs().max().item():.2e}")
        del window_q, keys, pool


def smoke_event() -> None:
    """`bench_event`'s code path on tiny shapes, on the CPU under the Triton interpreter (float32, two layers, a
    budget below the cache length so that entries are evicted), timed by a host loop."""
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.kernels import interpret_mode

    if not interpret_mode():
        raise SystemExit("smoke_event runs under the Triton interpreter: set TRITON_INTERPRET=1")
    config = EntropyInferConfig(observation_window_tokens=4, decode_budget_tokens=48, sink_tokens=4,
                                local_window_tokens=8)
    bench_event([200], num_window=4, num_q_heads=4, num_kv_heads=2, head_dim=16, num_layers=2, dtype=torch.float32,
                device="cpu", config=config, bench=lambda run: _time_ms(run, "wall")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--sweep", action="store_true", help="launch configurations of sparse_prefill only")
    parser.add_argument("--configs", default=DEFAULT_SWEEP, help="sweep: {block_m}x{block_n}w{warps}s{stages},...")
    parser.add_argument("--seq-len", type=int, default=16384, help="sweep: prompt length")
    parser.add_argument("--head-dims", default="128,64", help="sweep: head dims")
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("--pool-decode", action="store_true",
                        help="serving-mode decode (PoolRows) against FlashInfer's paged decode, in CUDA graphs")
    parser.add_argument("--pool-seq-lens", default="100000,131072", help="pool-decode: tokens per request")
    parser.add_argument("--pool-batches", default="1,8", help="pool-decode: requests per step")
    parser.add_argument("--pool-width", type=int, default=PoolSetup.width, help="pool-decode: req_to_token columns")
    parser.add_argument("--pool-quick", action="store_true", help="pool-decode: a smaller launch sweep")
    parser.add_argument("--pool-smoke", action="store_true",
                        help="pool-decode on the CPU with tiny shapes (needs TRITON_INTERPRET=1), checked")
    parser.add_argument("--event", action="store_true", help="one layer of a decode compression event")
    parser.add_argument("--event-sweep", action="store_true", help="event: the scoring kernel's launches at 100k")
    args = parser.parse_args()
    if args.pool_smoke:
        smoke_pool_decode()
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench needs a CUDA device")
    if args.pool_decode:
        seq_lens, batches = ([int(n) for n in text.split(",")] for text in (args.pool_seq_lens, args.pool_batches))
        bench_pool_decode(seq_lens, batches, PoolSetup(width=args.pool_width), quick=args.pool_quick)
        return
    if args.event:
        bench_event([32768, 100000, 131072], sweep_len=100000 if args.event_sweep else None)
        return
    if args.sweep:
        sweep_prefill(args.configs, args.seq_len, [int(d) for d in args.head_dims.split(",")])
        return
    seq_lens = [8192] if args.quick else [8192, 16384, 32768]
    if not args.decode_only:
        bench_prefill(seq_lens)
    bench_decode([1, 8] if args.quick else [1, 8, 32, 128], [1024, 4096])


if __name__ == "__main__":
    main()

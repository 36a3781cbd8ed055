"""Host time of the SGLang backend's per-decode-step bookkeeping, in this process (no server, no model, CPU).

    PYTHONPATH=python python benchmarks/bench_decode_bookkeeping.py --batch 1,16,64 --steps 400 --repeats 5

Times the two routines that run on the host for every decode step of a batch, at batch sizes B:
- `graph_step_allowed` (the CUDA-graph runner's question, before every step; kernel path only),
- `init_forward_metadata`'s decode part (`_prepare_decode`: request states, the compression schedule, window
  slots; every eager step, every step on the CPU engine).
Each request has a 2000-token prompt and generates `--steps` tokens; the default config (budget 1024, W 32, first
event at 16 generated tokens) with `--interval` (re-compression every that many steps; default 64). The compression
events themselves (`_compress`: scoring and planning, not bookkeeping) are replaced by a no-op that counts them.
Two arms: `reference` (the CPU engine's path: windows in Python, no arenas) and `kernel` (the window and decode
table arenas, on `--device`: cpu, or cuda as the GPU server holds them). Prints µs per step (the minimum over
repeats of the mean over steps) as JSON rows.

`--tables` times instead the reference path's per-layer decode-table bookkeeping of one compressed request (the
pool slots each kv head reads: kept positions, then the tokens appended since the event, through its
`req_to_token` row): SmolLM2's geometry (3 kv heads, 30 layers), 1024 kept entries per head of a 3000-token cache,
100 tokens appended. Works on code before `DecodeTable.visible_slots` too (`visible` + a gather), for before/after.

`--gather` times what handing the schedule to one Rust call per step would cost before the call: reading the
fields `graph_step_allowed` reads from every request's state into an int64 array (`[B, 8]`) and the step's
sequence lengths as numpy, at the `--batch` sizes (the most such a move could save is the schedule's time minus this).
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch


def _backend(kernel: bool, interval: int, num_rows: int, device: str = "cpu"):
    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.runtime.requests import StateStore
    from entropyinfer_sgl.runtime.window_arena import ObservationWindowArena
    from entropyinfer_sgl.sglang.backend import EntropyInferAttnBackend

    config = EntropyInferConfig(decode_evict_interval_steps=interval)
    backend = object.__new__(EntropyInferAttnBackend)  # no model runner: only the host bookkeeping is exercised
    backend.__dict__.update(config=config, inner=None, store=StateStore(), faults=None, max_windows=num_rows,
                            _unsupported_logged=set(), _infos=[], _arena_decode=None, _window_indices=None,
                            arena=None, windows=None, events=0)
    if kernel:
        backend.windows = ObservationWindowArena(num_rows, 1, config.observation_window_tokens, 1, 1, num_rows,
                                                 torch.float32, device)
        backend.arena = object()  # graph_step_allowed only asks whether there is one; no table is ever assigned

    def no_compress(info, in_cache):
        backend.events += 1

    backend._compress = no_compress
    return backend


def _decode_batch(rids: list[str], rows: list[int], seq_lens: list[int]):
    """What `compat.batch_view` hands `_prepare_decode`, and the forward batch fields `graph_step_allowed` reads."""
    from entropyinfer_sgl.sglang import compat

    bs = len(rids)
    forward_batch = SimpleNamespace(rids=rids, seq_lens_cpu=torch.tensor(seq_lens))
    view = compat.BatchView(forward_batch, "decode", rids, rows, seq_lens, [s - 1 for s in seq_lens], [1] * bs,
                            list(range(bs)), True)
    return forward_batch, view


def measure(batch: int, kernel: bool, steps: int, interval: int, prompt: int = 2000, device: str = "cpu") -> dict:
    backend = _backend(kernel, interval, num_rows=batch + 1, device=device)
    rids = [f"r{i}" for i in range(batch)]
    rows = list(range(1, batch + 1))
    for rid, row in zip(rids, rows):
        st = backend.store.begin_extend(rid, row, 0)
        st.extended_tokens = prompt
        backend._window_wanted(st, prompt)  # its prompt's tail reached the window: it holds one (as extend does)
        if kernel:
            backend._take_window_slot(st, prompt - 32)
    allowed_ns = prepare_ns = 0
    eager = 0
    for g in range(steps):
        seq_lens = [prompt + g + 1] * batch
        forward_batch, view = _decode_batch(rids, rows, seq_lens)
        t0 = time.perf_counter_ns()
        allowed = backend.graph_step_allowed(forward_batch) if kernel else False
        t1 = time.perf_counter_ns()
        backend._infos = []
        backend._prepare_decode(view)
        t2 = time.perf_counter_ns()
        allowed_ns += t1 - t0
        prepare_ns += t2 - t1
        eager += not allowed
    return {"batch": batch, "path": "kernel" if kernel else "reference", "device": device, "steps": steps,
            "eager_steps": eager, "events": backend.events, "graph_step_allowed_us": allowed_ns / steps / 1e3,
            "prepare_decode_us": prepare_ns / steps / 1e3}


def measure_tables(iterations: int, num_layers: int = 30, num_kv_heads: int = 3, kept: int = 1024,
                   cache_len: int = 3000, appended: int = 100) -> dict:
    from entropyinfer_sgl.runtime.decode_table import DecodeTable

    gen = torch.Generator().manual_seed(0)
    positions = torch.stack([torch.sort(torch.randperm(cache_len, generator=gen)[:kept]).values
                             for _ in range(num_kv_heads)])
    table = DecodeTable(positions=positions, lengths=torch.full((num_kv_heads,), kept), base_len=cache_len)
    row = torch.randperm(200_000, generator=gen)[:cache_len + 500].to(torch.int32)  # SGLang's req_to_token dtype
    seq_len = cache_len + appended
    if hasattr(table, "visible_slots"):
        def one_layer():
            return table.visible_slots(row, seq_len)
    else:  # the code before the Rust bookkeeping (for before/after runs)
        def one_layer():
            visible, lengths = table.visible(seq_len)
            return row.to(torch.int64)[visible], lengths
    for _ in range(20):
        one_layer()
    t0 = time.perf_counter_ns()
    for _ in range(iterations):
        one_layer()
    per_layer = (time.perf_counter_ns() - t0) / iterations / 1e3
    return {"what": "decode table slots", "kv_heads": num_kv_heads, "kept": kept, "appended": appended,
            "iterations": iterations, "per_layer_us": per_layer, "per_step_us": per_layer * num_layers,
            "layers": num_layers}


def measure_gather(batch: int, iterations: int) -> dict:
    import numpy as np

    backend = _backend(kernel=True, interval=64, num_rows=batch + 1)
    store, rids = backend.store, [f"r{i}" for i in range(batch)]
    for i, rid in enumerate(rids):
        st = store.begin_extend(rid, i + 1, 0)
        st.extended_tokens = st.prompt_len = 2000
        st.holds_window = True
    seq_lens = torch.full((batch,), 2100)

    def gather():
        fields = []
        for rid in rids:
            st = store.get(rid)
            cfg = backend.request_config(st)
            fields.append((st.extended_tokens if st.prompt_len is None else st.prompt_len, st.last_event_checked,
                           st.holds_window, st.method_enabled, cfg.decode_delay_steps,
                           cfg.decode_evict_interval_steps, cfg.observation_window_tokens, cfg.decode_budget_tokens))
        return np.array(fields, dtype=np.int64), seq_lens.numpy()

    for _ in range(100):
        gather()
    t0 = time.perf_counter_ns()
    for _ in range(iterations):
        gather()
    return {"what": "schedule inputs gathered", "batch": batch, "iterations": iterations,
            "per_step_us": (time.perf_counter_ns() - t0) / iterations / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,16,64", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=400, help="decode steps per run")
    parser.add_argument("--interval", type=int, default=64, help="decode_evict_interval_steps")
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell (the minimum is reported)")
    parser.add_argument("--tables", action="store_true", help="time the decode-table slots instead (see above)")
    parser.add_argument("--gather", action="store_true", help="time the schedule inputs' gathering (see above)")
    parser.add_argument("--device", default="cpu", help="where the kernel arm's window arena lives (cuda: as served)")
    args = parser.parse_args()
    if args.gather:
        for batch in [int(x) for x in args.batch.split(",")]:
            runs = [measure_gather(batch, args.steps * 10) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["per_step_us"])
            best["repeats"] = args.repeats
            print(json.dumps(best), flush=True)
        return
    if args.tables:
        runs = [measure_tables(args.steps * 5) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["per_layer_us"])
        best["repeats"] = args.repeats
        print(json.dumps(best), flush=True)
        return
    for batch in [int(x) for x in args.batch.split(",")]:
        for kernel in (False, True):
            runs = [measure(batch, kernel, args.steps, args.interval, device=args.device) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["graph_step_allowed_us"] + r["prepare_decode_us"])
            best["repeats"] = args.repeats
            print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()

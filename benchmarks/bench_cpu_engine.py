"""The SGLang CPU engine with EntropyInfer on vs the per-request off switch: time to first token by prompt length.

One server (SmolLM2-135M exported by `entropyinfer model export smollm2`, float32, `--entropyinfer-config small`,
chunked prefill of 1024 tokens: `serve_demo`'s launch) answers, per prompt length and repeat, the same passkey
prompt twice: with the method on and with `custom_params: {"entropyinfer": {"enabled": false}}`, flushing the
radix cache before every request so each one prefills the whole prompt. `--baseline-pythonpath DIR` starts a
second server from the package in DIR (another commit's `python/`, e.g. `git archive SHA python | tar -x -C DIR/..`)
and the requests alternate between the servers: every arm (server x on/off) once per repeat, in an order rotated
from one repeat to the next, so that both code versions see the same machine load. A warm-up request of each arm
runs first and is not counted. Each request
generates `--new-tokens` tokens (past the end of turn): the decode time per step is (total - TTFT) / (tokens - 1),
which with the default 32 includes the first compression event (after 16 generated tokens with `small`).

    PYTHONPATH=python python benchmarks/bench_cpu_engine.py --tokens 2048,3072,6144 --repeats 3 [--baseline-pythonpath DIR]

Prints one row per length and server: median TTFT and decode step of each arm, their ratio, the server's CPU seconds per
request (its processes' user + system time: less disturbed than wall time by other jobs on a shared machine), and
every TTFT sample; then the paired on/off ratios: per repeat, the on request over the off request of the same
repeat (adjacent in time, so they share the machine's load), their geometric mean and its 95% percentile-bootstrap
interval (`evaluation.stats.mean_interval` of the log ratios), for TTFT and server CPU. The 1-minute load average is
recorded at every request. `--json` appends the rows.

`--host` times instead, in this process, the host work of the CPU engine's reference path for one request of
SmolLM2's geometry (30 layers, 9 query / 3 kv heads of 64, `small`, 1024-token chunks), on random post-RoPE q/k/v
(`torch.randn`, seed 0): per chunk, all layers' planning and bookkeeping (`plan_chunk`, `ChunkPlan.sparse`,
`plan_pair_counts`) and, apart, their block-sparse attention (`sparse_chunk_attention`); per decode step, all
layers' observation-window recording; per compression event, all layers' `compress_layer`. Minimum of
`--repeats` runs each (the machine is shared: the minimum is the least disturbed).

    PYTHONPATH=python python benchmarks/bench_cpu_engine.py --host --tokens 2048,3072,6144 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from transformers import AutoTokenizer

from entropyinfer_sgl.evaluation.haystack import build_passkey_prompt
from entropyinfer_sgl.evaluation.stats import mean_interval
from entropyinfer_sgl.evaluation.models import export_smollm2
from entropyinfer_sgl.serve_demo import DemoServer, ask
from entropyinfer_sgl.sglang import site_hooks


def git_sha() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent)
    return out.stdout.strip() or "unknown"


def host_times(lengths: list[int], repeats: int) -> list[dict]:
    """The `--host` measurement (see the module docstring): one row per prompt length, times in ms."""
    import torch

    from entropyinfer_sgl import EntropyInferConfig
    from entropyinfer_sgl.runtime.chunk_plan import plan_chunk, plan_pair_counts
    from entropyinfer_sgl.runtime.decode_table import compress_layer
    from entropyinfer_sgl.runtime.requests import RequestState
    from entropyinfer_sgl.runtime.sparse_attention import sparse_chunk_attention

    cfg = EntropyInferConfig.small()
    layers, q_heads, kv_heads, dim, chunk = 30, 9, 3, 64, 1024

    def best_ms(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return min(times)

    rows = []
    for length in lengths:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(length, q_heads, dim, generator=gen)
        k = torch.randn(length, kv_heads, dim, generator=gen)
        v = torch.randn(length, kv_heads, dim, generator=gen)
        chunks, typing, prefix = [], [None] * layers, 0
        while prefix < length:
            end = min(prefix + chunk, length)
            chunks.append((prefix, end, list(typing)))
            for layer in range(1, layers):  # layer 0 is dense (num_dense_layers=1): not planned
                typing[layer] = plan_chunk(q[prefix:end], k[:end], cfg, prefix_len=prefix, layer_idx=layer,
                                           typing=typing[layer], prompt_len_tokens=length).typing
            prefix = end

        def plan_all(prefix, end, typing):
            results = []
            for layer in range(1, layers):
                result = plan_chunk(q[prefix:end], k[:end], cfg, prefix_len=prefix, layer_idx=layer,
                                    typing=typing[layer], prompt_len_tokens=length)
                if result.sparse(prefix):
                    plan_pair_counts(result.plan, prefix)
                results.append(result)
            return results

        plan_ms, attend_ms = [], []
        for prefix, end, typing in chunks:
            plan_ms.append(best_ms(lambda: plan_all(prefix, end, typing)))
            sparse = [r.plan for r in plan_all(prefix, end, typing) if r.sparse(prefix)]
            attend_ms.append(best_ms(lambda: [sparse_chunk_attention(q[prefix:end], k[:end], v[:end], plan,
                                                                     prefix_len=prefix, scale=dim ** -0.5)
                                              for plan in sparse]))
        state = RequestState(rid="bench", req_pool_idx=0)
        window = cfg.observation_window_tokens
        step_ms = best_ms(lambda: [state.record_queries(layer, q[length - 1:length], length, window)
                                   for layer in range(layers)])
        event_ms = best_ms(lambda: [compress_layer(q[length - window:], k, None, cfg) for _ in range(layers)])
        rows.append(dict(tokens=length, repeats=repeats, chunk_plan_ms=plan_ms, chunk_attention_ms=attend_ms,
                         decode_step_window_ms=step_ms, compression_event_ms=event_ms, git_sha=git_sha(),
                         machine=f"{platform.machine()} {os.cpu_count()} cpus",
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
        print(f"{length:6d} tokens: per chunk planning+bookkeeping {[round(x, 1) for x in plan_ms]} ms, attention "
              f"{[round(x, 1) for x in attend_ms]} ms; per decode step window recording {step_ms:.2f} ms; per "
              f"compression event {event_ms:.1f} ms (all layers)", flush=True)
    return rows


def server_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system, all threads) the server's processes have used: its process and every
    descendant (tokenizer, scheduler, detokenizer). Less disturbed than wall time by other jobs on a shared
    machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, usage = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        usage[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, pending = 0.0, [root_pid]
    while pending:
        pid = pending.pop()
        total += usage.get(pid, 0.0)
        pending.extend(child for child, parent in parents.items() if parent == pid)
    return total


def paired_ratio(on: list[float], off: list[float]) -> dict:
    """Geometric mean of the per-repeat ratios on[i] / off[i], with its 95% bootstrap interval and N (pairs)."""
    logs = {i: math.log(a / b) for i, (a, b) in enumerate(zip(on, off))}
    interval = mean_interval({"pairs": logs})
    return dict(ratio=math.exp(interval.mean), low=math.exp(interval.low), high=math.exp(interval.high),
                n=interval.n)


def format_ratio(paired: dict) -> str:
    return f"{paired['ratio']:.3f} [{paired['low']:.3f}, {paired['high']:.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="2048,3072,6144", help="prompt lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="pairs (on, off) per length")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (>= 2)")
    parser.add_argument("--config", default="small", help="--entropyinfer-config")
    parser.add_argument("--json", default=None, help="append the rows to this JSON-lines file")
    parser.add_argument("--log-dir", default=None, help="where the server logs go (default: a temp folder)")
    parser.add_argument("--baseline-pythonpath", default=None,
                        help="also serve the package found there (e.g. an export of an earlier commit's python/), "
                             "alternating requests between the two servers")
    parser.add_argument("--host", action="store_true", help="time the host work in this process (no server)")
    args = parser.parse_args()
    lengths = [int(x) for x in args.tokens.split(",")]
    if args.host:
        rows = host_times(lengths, args.repeats)
        if args.json:
            with open(args.json, "a") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
        return 0
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the decode step time needs a second token)")
    if importlib.util.find_spec("sgl_kernel") is None:  # SGLang on CPU needs the stand-in (as tests/sglang do)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_hooks.stub_dir()),
                                                                 os.environ.get("PYTHONPATH")]))
    model_dir = export_smollm2(None)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="entropyinfer-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = {"this": DemoServer(model_dir, args.config, log_dir / "server_this.log", extra_args=[])}
    if args.baseline_pythonpath:  # the same server from other code, started second (same port logic, own log)
        own = os.environ["PYTHONPATH"]
        os.environ["PYTHONPATH"] = os.pathsep.join([args.baseline_pythonpath, own])
        servers["baseline"] = DemoServer(model_dir, args.config, log_dir / "server_baseline.log", extra_args=[])
        os.environ["PYTHONPATH"] = own
    rows = []
    try:
        for server in servers.values():
            server.wait_ready(600)

        def one(server: DemoServer, message: str, enabled: bool, tag: str) -> tuple[float, float, float, float]:
            """(TTFT s, decode s per step, server CPU s for the request, 1-minute load average at its end)"""
            requests.post(server.url + "/flush_cache", timeout=60)
            cpu = server_cpu_s(server.proc.pid)
            _, ttft, total = ask(server, message, rid=f"bench-{tag}-{os.getpid()}-{time.monotonic_ns()}",
                                 new_tokens=args.new_tokens, enabled=enabled)
            return (ttft, (total - ttft) / (args.new_tokens - 1), server_cpu_s(server.proc.pid) - cpu,
                    os.getloadavg()[0])

        warm = build_passkey_prompt(tokenizer, total_tokens=1024, seed=99).user_message
        for server in servers.values():
            one(server, warm, True, "warm-on")
            one(server, warm, False, "warm-off")
        arms = [(name, enabled) for name in servers for enabled in (True, False)]
        for length in lengths:
            prompt = build_passkey_prompt(tokenizer, total_tokens=length, seed=0)
            samples = {arm: [] for arm in arms}
            for repeat in range(args.repeats):  # every arm once per repeat, in a rotated order
                for name, enabled in arms[repeat % len(arms):] + arms[:repeat % len(arms)]:
                    samples[name, enabled].append(one(servers[name], prompt.user_message, enabled,
                                                      f"{name}-{length}-{repeat}"))
            for name in servers:
                row = dict(tokens=prompt.num_tokens, server=name, repeats=args.repeats, new_tokens=args.new_tokens,
                           git_sha=git_sha(), machine=f"{platform.machine()} {os.cpu_count()} cpus",
                           date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                for enabled, arm in ((True, "on"), (False, "off")):
                    ttft, step, cpu, load = (list(x) for x in zip(*samples[name, enabled]))
                    row.update({f"ttft_{arm}_s": ttft, f"decode_step_{arm}_s": step, f"cpu_{arm}_s": cpu,
                                f"load_{arm}": load,
                                f"median_ttft_{arm}_s": statistics.median(ttft),
                                f"median_step_{arm}_s": statistics.median(step),
                                f"median_cpu_{arm}_s": statistics.median(cpu)})
                row["paired_ttft"] = paired_ratio(row["ttft_on_s"], row["ttft_off_s"])
                row["paired_cpu"] = paired_ratio(row["cpu_on_s"], row["cpu_off_s"])
                rows.append(row)
                print(f"{name:8s} {prompt.num_tokens:6d} tokens: TTFT on {row['median_ttft_on_s']:6.2f} s, off "
                      f"{row['median_ttft_off_s']:6.2f} s (on/off {row['median_ttft_on_s'] / row['median_ttft_off_s']:.2f}); "
                      f"server CPU on {row['median_cpu_on_s']:5.1f} s, off {row['median_cpu_off_s']:5.1f} s "
                      f"(on/off {row['median_cpu_on_s'] / row['median_cpu_off_s']:.2f}); decode step on "
                      f"{row['median_step_on_s'] * 1e3:.0f} ms, off {row['median_step_off_s'] * 1e3:.0f} ms; TTFT on "
                      f"{[round(x, 1) for x in row['ttft_on_s']]}, off {[round(x, 1) for x in row['ttft_off_s']]}",
                      flush=True)
                loads = row["load_on"] + row["load_off"]
                print(f"{name:8s} {prompt.num_tokens:6d} tokens, paired on/off (geometric mean of {args.repeats} "
                      f"per-repeat ratios, 95% bootstrap interval): TTFT " + format_ratio(row["paired_ttft"]) +
                      ", server CPU " + format_ratio(row["paired_cpu"]) +
                      f"; load average {min(loads):.1f}-{max(loads):.1f}; CPU on "
                      f"{[round(x, 1) for x in row['cpu_on_s']]}, off {[round(x, 1) for x in row['cpu_off_s']]}",
                      flush=True)
    except Exception as err:  # noqa: BLE001 - reported with the servers' logs
        print(f"error: {err}", file=sys.stderr)
        for name, server in servers.items():
            print(f"--- {name} server log tail ({server.log}) ---\n{server.tail()}", file=sys.stderr)
        return 1
    finally:
        for server in servers.values():
            server.stop()
    if args.json:
        with open(args.json, "a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

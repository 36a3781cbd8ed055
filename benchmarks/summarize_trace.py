"""Where the time of one profiled forward goes, from a torch profiler chrome trace (e.g. `bench_one_batch --profile
--profile-stage prefill`, SGLANG_TORCH_PROFILER_DIR): GPU busy and idle time over the traced span, GPU time by
kernel name, and what the host was doing in the longest idle gaps (host syncs, Python between launches).

    python benchmarks/summarize_trace.py TRACE.json[.gz] [--top 25] [--gaps 12]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
# CUDA runtime calls that make the host wait for the device (cudaMemcpy, unlike cudaMemcpyAsync, blocks)
HOST_SYNCS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"})


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    return [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]


def busy_intervals(events: list[dict]) -> list[tuple[float, float]]:
    """The union of the GPU events' [start, end) intervals, in order."""
    merged: list[list[float]] = []
    for start, end in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def sync_sites(events: list[dict], syncs: list[dict], ours: str = "entropyinfer_sgl/") -> list[tuple[str, list]]:
    """Host syncs grouped by the Python frame that made them: [(frame, [count, host microseconds])], most time
    first (a sync that waits long drained the GPU's queue)."""
    frames = [e for e in events if e.get("cat") == "python_function"]
    sites: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for sync in syncs:
        around = sorted((e for e in frames if e.get("tid") == sync.get("tid") and e["ts"] <= sync["ts"]
                         and e["ts"] + e["dur"] >= sync["ts"] + sync["dur"]), key=lambda e: e["dur"])
        mine = [e for e in around if ours in e["name"]]
        site = (mine or around or [{"name": "(no Python frame)"}])[0]["name"]
        sites[site][0] += 1
        sites[site][1] += sync["dur"]
    return sorted(sites.items(), key=lambda kv: -kv[1][1])


def short_name(name: str, width: int = 90) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def summarize(events: list[dict], top: int, gaps: int) -> str:
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES]
    if not gpu:
        return "no GPU events in the trace"
    busy = busy_intervals(gpu)
    span = busy[-1][1] - busy[0][0]
    busy_us = sum(b - a for a, b in busy)
    lines = [f"GPU span {span / 1e3:.1f} ms: busy {busy_us / 1e3:.1f} ms, idle {(span - busy_us) / 1e3:.1f} ms "
             f"({len(gpu)} GPU events)"]
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in gpu:
        by_name[e["name"]][0] += e["dur"]
        by_name[e["name"]][1] += 1
    lines.append(f"\nGPU time by kernel (top {top}):")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"{dur / 1e3:10.2f} ms {count:6d}x  {short_name(name)}")
    syncs = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"] in HOST_SYNCS]
    sync_us = sum(e["dur"] for e in syncs)
    lines.append(f"\nhost syncs (cuda runtime): {len(syncs)} calls, {sync_us / 1e3:.1f} ms on the host waiting; "
                 f"by the innermost Python frame of ours (else the innermost) around them:")
    for site, (count, dur) in sync_sites(events, syncs)[:gaps]:
        lines.append(f"{dur / 1e3:10.2f} ms {count:6d}x  {short_name(site)}")
    frames = [e for e in events if e.get("cat") == "python_function" and ("entropyinfer_sgl/" in e["name"]
                                                                          or "sglang/" in e["name"])]
    idle = sorted(((busy[i + 1][0] - busy[i][1], busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)),
                  reverse=True)
    for floor in (0.5, 0.1):
        over = [length for length, _, _ in idle if length >= floor * 1e3]
        lines.append(f"idle gaps >= {floor} ms: {len(over)}, {sum(over) / 1e3:.1f} ms in all")
    lines.append(f"\nlongest GPU idle gaps (top {gaps}) and the innermost Python frames (SGLang's or ours) in each:")
    for length, start, end in idle[:gaps]:
        inside = sorted((e for e in frames if e["ts"] < end and e["ts"] + e["dur"] > start), key=lambda e: e["dur"])
        names = ", ".join(short_name(e["name"], 60) for e in inside[:3])
        lines.append(f"{length / 1e3:8.2f} ms at +{(start - busy[0][0]) / 1e3:8.1f} ms: {names}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gaps", type=int, default=12)
    args = parser.parse_args()
    print(summarize(load_events(args.trace), args.top, args.gaps))


if __name__ == "__main__":
    main()

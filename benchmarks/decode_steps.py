"""Every decode step's latency of `bench_one_batch` runs (`--log-decode-step 1`), side by side.

    python3 benchmarks/decode_steps.py dense=one_batch_steps_dense.log entropyinfer=one_batch_steps_entropyinfer.log

Reads the benchmark's `Decode <i>. Batch size: <b>, latency: <s> s` lines after `Benchmark ...` (the warm-up's are
skipped) and prints one row per step (ms per run, and each later run over the first), then per run the median, the
slowest step, and the steps slower than the first run's median by more than 10 %. Issue 20's check: with CUDA graphs
no EntropyInfer step but a compression event's (step `decode_delay_steps`, then every interval) is slower than
dense. The last request stats line (`freed: ...`) of each log is printed: bench_one_batch frees the warm-up's request
(min(32, output_len) steps) when the benchmark's starts, so it tells whether the warm-up compressed.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

STEP = re.compile(r"Decode (\d+)\. Batch size: \d+, latency: ([0-9.]+) s")
FREED = re.compile(r"EntropyInfer request \S+ freed: .*")


def step_latencies_ms(text: str) -> dict[int, float]:
    """Decode step -> latency (ms) of the benchmark run (after `Benchmark ...`; the last run when several)."""
    steps: dict[int, float] = {}
    for line in text.split("Benchmark ...", 1)[-1].splitlines():
        match = STEP.search(line)
        if match:
            steps[int(match.group(1))] = float(match.group(2)) * 1000
    return steps


def report(runs: dict[str, dict[int, float]], slower_by: float = 0.10) -> str:
    names = list(runs)
    first = runs[names[0]]
    steps = sorted(set().union(*runs.values()))
    lines = ["step  " + "  ".join(f"{name:>14}" for name in names)
             + "".join(f"  {name + '/' + names[0]:>22}" for name in names[1:])]
    for step in steps:
        cells = "  ".join(f"{runs[name][step]:14.2f}" if step in runs[name] else f"{'-':>14}" for name in names)
        ratios = "".join(f"  {runs[name][step] / first[step]:22.2f}" if step in runs[name] and step in first
                         else f"  {'-':>22}" for name in names[1:])
        lines.append(f"{step:4d}  {cells}{ratios}")
    baseline = statistics.median(first.values()) if first else float("nan")
    for name in names:
        values = runs[name]
        if not values:
            lines.append(f"{name}: no decode steps in the log")
            continue
        slowest = max(values, key=values.get)
        slow = [step for step, ms in sorted(values.items()) if ms > baseline * (1 + slower_by)]
        lines.append(f"{name}: median {statistics.median(values.values()):.2f} ms, slowest step {slowest} "
                     f"({values[slowest]:.2f} ms), steps over {names[0]}'s median {baseline:.2f} ms "
                     f"+{slower_by:.0%}: {slow if slow else 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=LOG", help="a run's name and its bench_one_batch log")
    args = parser.parse_args()
    runs, freed = {}, []
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"expected NAME=LOG, got {item!r}")
        text = Path(path).read_text(errors="replace")
        runs[name] = step_latencies_ms(text)
        freed += [f"{name} (last freed request): {line}" for line in FREED.findall(text)[-1:]]
    print(report(runs))
    for line in freed:
        print(line[:400])


if __name__ == "__main__":
    main()

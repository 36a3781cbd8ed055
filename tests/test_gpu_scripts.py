"""scripts/gpu/eval_shards.sh: the parallel quality workers split the samples without gaps or overlaps."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("samples, shards", [(10, 3), (40, 5), (4, 7), (1, 1)])
def test_workers_take_interleaved_samples_that_cover_the_run_once(tmp_path, samples, shards):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    (fake / "python3").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", CALLS=str(calls), SAMPLES=str(samples),
               SHARDS=str(shards), LENGTHS="2000,4000", MINUTES="1")
    subprocess.run(["bash", "-c", f"source {ROOT / 'scripts/gpu/eval_shards.sh'} && run_eval_shards {tmp_path}/ "
                    "--methods full"], env=env, check=True, capture_output=True, text=True)
    covered = {2000: [], 4000: []}
    for line in calls.read_text().splitlines():
        args = line.split()
        value = {flag: int(args[args.index(flag) + 1]) for flag in ("--lengths", "--first-sample", "--samples",
                                                                     "--sample-stride")}
        assert value["--sample-stride"] == shards
        covered[value["--lengths"]] += [value["--first-sample"] + i * shards for i in range(value["--samples"])]
    for length, indices in covered.items():
        assert sorted(indices) == list(range(samples)), length


def test_decode_steps_reads_the_benchmark_run_and_names_the_slow_steps():
    """benchmarks/decode_steps.py (scripts/gpu/sglang.sh decode_steps): the warm-up's steps are skipped, every
    benchmark step is a row, and a step slower than the first run's median by over 10 % is named."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import decode_steps
    finally:
        sys.path.pop(0)

    def log(latencies):
        lines = [f"Decode {i}. Batch size: 1, latency: 9.00000 s, throughput: 0.1 token/s" for i in range(3)]
        lines.append("Benchmark ...")
        lines += [f"Decode {i}. Batch size: 1, latency: {s:6.5f} s, throughput: 1 token/s"
                  for i, s in enumerate(latencies)]
        return "\n".join(lines)

    dense = decode_steps.step_latencies_ms(log([0.0128] * 4))
    ours = decode_steps.step_latencies_ms(log([0.0120, 0.0121, 0.0230, 0.0119]))
    assert dense == {i: pytest.approx(12.8) for i in range(4)} and ours[2] == pytest.approx(23.0)
    text = decode_steps.report({"dense": dense, "entropyinfer": ours})
    assert len(text.splitlines()) == 1 + 4 + 2
    assert "entropyinfer: median" in text and "+10%: [2]" in text
    assert "dense: median 12.80 ms" in text and text.count("+10%: none") == 1

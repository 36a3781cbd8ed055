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

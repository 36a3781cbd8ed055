"""One intra-op thread for the CPU planner's small tensor operations."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def planner_threads(device: torch.device) -> Iterator[None]:
    """Run the enclosed torch operations on one intra-op thread when they run on the CPU (no-op elsewhere).

    Why: a chunk's planning is ~15 small operations per layer (representatives, two score matmuls, softmax,
    entropy) on KBs to a few MB each, well under a millisecond on one thread. Fanned out to the intra-op pool,
    each one waits for every pool thread to be scheduled: on a machine whose cores are busy (the SGLang CPU
    engine's own other threads, other processes) that wait is a scheduler time slice, and the planning of a
    2k-token SmolLM2 chunk took 3-14x longer on two threads than on one (benchmarks/RESULTS.md, issue 19). The
    results are the same: these operations reduce along rows that no thread splits (max/min over a block, a
    matmul's inner dimension, softmax and entropy over a row), which the tests check against the whole-prompt
    planner running on the default pool.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

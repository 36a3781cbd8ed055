"""Confidence intervals for quality scores: every figure the reports print carries N and a 95% interval.

Scores are grouped into cells (task x length); a method's figure over several cells is the mean of its cell means
(every cell weighs the same, whatever its N). Intervals are percentile bootstraps that resample samples within
each cell (stratified), so a cell with few samples widens the interval instead of being hidden by the others.
Differences between two methods are paired: both are scored on the same prompts (same task, length and sample
index), and the bootstrap resamples those prompts jointly, so prompt-to-prompt difficulty cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping

import numpy as np

Cell = Hashable  # e.g. (task, length)
Sample = Hashable  # e.g. the sample index within a cell


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile-bootstrap interval; `n` is the number of samples (pairs, for a difference)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def format(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        sign = "+" if signed else ""
        return (f"{scale * self.mean:{sign}.{digits}f} [{scale * self.low:{sign}.{digits}f}, "
                f"{scale * self.high:{sign}.{digits}f}]")


def _bootstrap(cells: list[np.ndarray], iterations: int, level: float, seed: int) -> Interval:
    """Mean over cells of each cell's mean of `cells[i]` (rows: samples), with a stratified bootstrap interval."""
    if not cells or any(len(values) == 0 for values in cells):
        raise ValueError("every cell needs at least one sample")
    rng = np.random.default_rng(seed)
    point = float(np.mean([values.mean() for values in cells]))
    draws = np.zeros(iterations)
    for values in cells:  # one loop per cell (a handful), vectorized over the iterations
        picks = rng.integers(0, len(values), size=(iterations, len(values)))
        draws += values[picks].mean(axis=1)
    draws /= len(cells)
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(point, float(low), float(high), sum(len(values) for values in cells), level)


def mean_interval(scores: Mapping[Cell, Mapping[Sample, float]], *, iterations: int = 4000, level: float = 0.95,
                  seed: int = 0) -> Interval:
    """The mean of cell means of one method's scores (`scores[cell][sample]`), with its interval."""
    cells = [np.asarray(list(samples.values()), dtype=np.float64) for samples in scores.values()]
    return _bootstrap(cells, iterations, level, seed)


def paired_difference(a: Mapping[Cell, Mapping[Sample, float]], b: Mapping[Cell, Mapping[Sample, float]], *,
                      iterations: int = 4000, level: float = 0.95, seed: int = 0) -> Interval:
    """`a - b` over the prompts both were scored on (cells and samples present in both), paired."""
    cells = []
    for cell in a:
        if cell not in b:
            continue
        shared = [s for s in a[cell] if s in b[cell]]
        if shared:
            cells.append(np.asarray([a[cell][s] - b[cell][s] for s in shared], dtype=np.float64))
    if not cells:
        raise ValueError("the two methods share no scored prompt")
    return _bootstrap(cells, iterations, level, seed)

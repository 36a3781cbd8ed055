"""Confidence intervals of the quality reports (evaluation/stats.py)."""

import numpy as np
import pytest

from entropyinfer_sgl.evaluation.report import markdown_tables
from entropyinfer_sgl.evaluation.stats import mean_interval, paired_difference


def _cells(values_per_cell):
    return {cell: dict(enumerate(values)) for cell, values in values_per_cell.items()}


def test_constant_scores_have_a_point_interval():
    interval = mean_interval(_cells({("a", 1): [1.0] * 7, ("b", 1): [0.0] * 5}))
    assert interval.mean == interval.low == interval.high == 0.5 and interval.n == 12


def test_the_interval_covers_the_true_mean_and_narrows_with_n():
    rng = np.random.default_rng(3)
    covered, widths = 0, {}
    for trial in range(40):
        for n in (10, 160):
            scores = (rng.random(n) < 0.7).astype(float)
            interval = mean_interval({("t", 1): dict(enumerate(scores))}, iterations=1000, seed=trial)
            widths.setdefault(n, []).append(interval.high - interval.low)
            covered += n == 160 and interval.contains(0.7)
    assert covered >= 34  # ~95% of 40
    assert np.mean(widths[160]) < 0.5 * np.mean(widths[10])


def test_cells_weigh_the_same_whatever_their_size():
    interval = mean_interval(_cells({("a", 1): [1.0] * 30, ("b", 1): [0.0, 0.0]}))
    assert interval.mean == pytest.approx(0.5)


def test_paired_differences_cancel_prompt_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.random(60)  # prompts differ a lot; method b is always 0.05 below a
    a = {("t", 1): dict(enumerate(difficulty))}
    b = {("t", 1): dict(enumerate(difficulty - 0.05))}
    paired = paired_difference(a, b)
    assert paired.mean == pytest.approx(0.05) and paired.low == pytest.approx(0.05)
    unpaired_width = mean_interval(a).high - mean_interval(a).low
    assert paired.high - paired.low < 0.01 * unpaired_width
    assert paired_difference(a, a).format(signed=True) == "+0.0 [+0.0, +0.0]"


def test_only_shared_prompts_are_paired():
    a = {("t", 1): {0: 1.0, 1: 1.0, 2: 0.0}, ("u", 1): {0: 1.0}}
    b = {("t", 1): {0: 0.0, 1: 1.0}}
    diff = paired_difference(a, b)
    assert diff.n == 2 and diff.mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share no scored prompt"):
        paired_difference({("t", 1): {0: 1.0}}, {("t", 1): {5: 1.0}})


def test_report_prints_intervals_n_and_paired_deltas():
    records = []
    for sample in range(12):
        for method, score in (("full", 1.0), ("entropyinfer", 1.0 if sample % 4 else 0.0)):
            records.append({"method": method, "task": "passkey", "length": 2000, "sample": sample, "score": score,
                            "prefill_density": 0.5, "cache_fraction": 1.0, "compression_events": 0})
    text = markdown_tables({"records": records, "methods": {"full": {}, "entropyinfer": {}}})
    row = next(line for line in text.splitlines() if line.startswith("| `entropyinfer` |"))
    assert "75.0 [" in row and "-25.0 [" in row and "| 12 |" in row
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    separator = text.splitlines()[text.splitlines().index(header) + 1]
    assert header.count("|") == separator.count("|")


def test_report_pairs_each_length_over_its_own_prompts():
    """The by-length table pairs a method with the reference over every prompt of that length both scored, even
    where another method lacks the length (so the summary's common cells leave it out)."""
    records = []
    for length, methods in ((2000, ("full", "entropyinfer")), (4000, ("full", "entropyinfer", "lever"))):
        for sample in range(10):
            for method in methods:
                score = 0.0 if (method == "entropyinfer" and length == 4000 and sample < 5) else 1.0
                records.append({"method": method, "task": "vartrack", "length": length, "sample": sample,
                                "score": score, "prefill_density": 0.25 if length == 4000 else 0.5,
                                "cache_fraction": 1.0, "compression_events": 0})
    text = markdown_tables({"records": records, "methods": {}}, reference="entropyinfer")
    by_length = [line for line in text.splitlines() if line.startswith("| `lever` |") and "(10)" in line]
    assert by_length and "+50.0 [" in by_length[0] and "0.250" in by_length[0] and "| – |" in by_length[0]
    full = [line for line in text.splitlines() if line.startswith("| `full` |") and "(10)" in line][0]
    assert "+0.0 [" in full and "+50.0 [" in full

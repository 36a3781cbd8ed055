"""Tables (markdown) and a plot (PNG) from a results JSON."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .stats import Interval, mean_interval, paired_difference


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _ordered(values: Sequence, preferred: Sequence) -> list:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def cell_scores(records: Sequence[dict]) -> dict[tuple[str, str, int], list[float]]:
    cells: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        cells[(r["method"], r["task"], int(r["length"]))].append(float(r["score"]))
    return cells


def sample_scores(records: Sequence[dict], method: str,
                  cells: Sequence[tuple[str, int]]) -> dict[tuple[str, int], dict[int, float]]:
    """`method`'s scores per (task, length) cell of `cells`, keyed by sample index (what pairs two methods)."""
    wanted = set(cells)
    out: dict[tuple[str, int], dict[int, float]] = {cell: {} for cell in cells}
    for r in records:
        cell = (r["task"], int(r["length"]))
        if r["method"] == method and cell in wanted:
            out[cell][int(r["sample"])] = float(r["score"])
    return out


def _interval(interval: Interval | None, signed: bool = False) -> str:
    return "–" if interval is None else interval.format(signed=signed)


def markdown_tables(data: dict, *, methods: Sequence[str] | None = None, reference: str = "full") -> str:
    """Summary (method x length, averaged over tasks, with 95% intervals; Δ vs `reference` paired), then method x
    task for every length (each cell with its interval and N)."""
    records = data["records"]
    if not records:
        return "(no records)\n"
    methods = _ordered([r["method"] for r in records], methods or list(data.get("methods", {})))
    tasks = _ordered([r["task"] for r in records], [])
    lengths = sorted({int(r["length"]) for r in records})
    cells = cell_scores(records)
    by_method = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)

    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}"

    # Averages over the (task, length) cells that every method has, so a missing cell never skews a comparison.
    common = [(t, n) for t in tasks for n in lengths if all(cells.get((m, t, n)) for m in methods)]

    def avg(method, length=None):
        vals = [_mean(cells[(method, t, n)]) for t, n in common if length is None or n == length]
        return _mean(vals)

    def interval(method, length=None):
        cells = [(t, n) for t, n in common if length is None or n == length]
        return mean_interval(sample_scores(records, method, cells)) if cells else None

    def delta(method, length=None):
        cells = [(t, n) for t, n in common if length is None or n == length]
        if not cells or reference not in methods or method == reference:
            return None
        try:
            return paired_difference(sample_scores(records, method, cells), sample_scores(records, reference, cells))
        except ValueError:  # no prompt scored by both
            return None

    lines = ["| method | " + " | ".join(f"{n} tok [95% CI]" for n in lengths) + f" | avg [95% CI] | Δ vs {reference} "
             "[paired 95% CI] | N | prefill density | KV held at end | compressions |",
             "|---|" + "---:|" * (len(lengths) + 6)]
    for m in methods:
        rs = by_method[m]
        lines.append(f"| `{m}` | " + " | ".join(_interval(interval(m, n)) for n in lengths)
                     + f" | **{_interval(interval(m))}** | {_interval(delta(m), signed=True)} | {len(rs)} | "
                     f"{_fmt(_mean(r['prefill_density'] for r in rs))} | {_fmt(_mean(r['cache_fraction'] for r in rs))} |"
                     f" {_fmt(_mean(r['compression_events'] for r in rs), 1)} |")
    out = ["Scores in percent: the mean over samples per task x length cell, then over the cells every method has "
           f"({len(common)} cells), with 95% percentile-bootstrap intervals (samples resampled within each cell). "
           f"Δ vs {reference}: paired over the prompts both scored. N: samples. Prefill density: computed / dense "
           "causal block pairs. KV held at end: cache entries held after the last generated token / tokens seen (1.0 "
           "when no compression fired). Compressions: compression events per sample. A bootstrap interval over a cell of "
           "a few samples is too narrow (all-correct cells give [100, 100]): read cells below ~10 samples as "
           "indicative only.", "", *lines, ""]
    out += _by_length_table(records, methods, tasks, lengths, reference)
    for n in lengths:
        present = [t for t in tasks if any(cells.get((m, t, n)) for m in methods)]
        if not present:
            continue
        out += [f"**{n} tokens** (samples per cell: "
                f"{', '.join(f'{t} {max(len(cells.get((m, t, n), [])) for m in methods)}' for t in present)})", "",
                "| method | " + " | ".join(present) + " | avg |", "|---|" + "---:|" * (len(present) + 1)]
        for m in methods:
            vals = [mean_interval({(t, n): dict(enumerate(cells[(m, t, n)]))}) if cells.get((m, t, n)) else None
                    for t in present]
            out.append(f"| `{m}` | " + " | ".join(_interval(v) for v in vals) + f" | {pct(avg(m, n))} |")
        out.append("")
    return "\n".join(out)


def _by_length_table(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], lengths: Sequence[int],
                     reference: str) -> list[str]:
    """Per length: each method's difference to `reference`, paired over the prompts of that length both scored
    (every task, not only the cells all methods share), with its N, and the method's prefill density there."""
    if reference not in methods:
        return []
    lines = [f"Δ vs {reference} by length, paired over the prompts of that length both scored [95% CI] (N prompts); "
             "prefill density at that length:", "",
             "| method | " + " | ".join(f"{n} tok" for n in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for m in methods:
        if m == reference:
            continue
        row = []
        for n in lengths:
            cells = [(t, n) for t in tasks]
            try:
                diff = paired_difference(sample_scores(records, m, cells), sample_scores(records, reference, cells))
            except ValueError:  # no prompt of this length scored by both
                row.append("–")
                continue
            density = _mean(r["prefill_density"] for r in records if r["method"] == m and int(r["length"]) == n)
            row.append(f"{diff.format(signed=True)} ({diff.n}); {_fmt(density)}")
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    return lines + [""]


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_plot(data: dict, path: str | Path, *, methods: Sequence[str] | None = None, title: str = "") -> Path | None:
    """One panel per task plus the average: score (%) against prompt length, one line per method. None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = data["records"]
    if not records:
        return None
    methods = _ordered([r["method"] for r in records], methods or list(data.get("methods", {})))
    tasks = _ordered([r["task"] for r in records], [])
    lengths = sorted({int(r["length"]) for r in records})
    cells = cell_scores(records)
    panels = tasks + ["average"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, constrained_layout=True)
    styles = ["-o", "-s", "-^", "-D", "-v", "--o", "--s", "--^", ":o", ":s", ":^", ":D"]
    for index, panel in enumerate(panels):
        ax = axes[index // cols][index % cols]
        for k, m in enumerate(methods):
            xs, ys = [], []
            for n in lengths:
                if panel == "average":
                    vals = [_mean(cells[(m, t, n)]) for t in tasks
                            if all(cells.get((mm, t, n)) for mm in methods)]
                    value = _mean(vals)
                else:
                    value = _mean(cells.get((m, panel, n), []))
                if value is not None:
                    xs.append(n)
                    ys.append(100 * value)
            if xs:
                ax.plot(xs, ys, styles[k % len(styles)], label=m, markersize=4, linewidth=1.2)
        ax.set_title(panel)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("score (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

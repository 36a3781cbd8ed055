"""Tables (markdown) and a plot (PNG) from a results JSON."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence


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


def markdown_tables(data: dict, *, methods: Sequence[str] | None = None, reference: str = "full") -> str:
    """Summary (method x length, averaged over tasks; Δ vs `reference`), then method x task for every length."""
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

    lines = ["| method | " + " | ".join(f"{n} tok" for n in lengths) + " | avg | Δ vs full | prefill density |"
             " KV held at end | compressions | samples |",
             "|---|" + "---:|" * (len(lengths) + 6)]
    ref_avg = avg(reference) if reference in methods else None
    for m in methods:
        a = avg(m)
        delta = "–" if a is None or ref_avg is None else f"{100 * (a - ref_avg):+.1f}"
        rs = by_method[m]
        lines.append(f"| `{m}` | " + " | ".join(pct(avg(m, n)) for n in lengths) + f" | **{pct(a)}** | {delta} | "
                     f"{_fmt(_mean(r['prefill_density'] for r in rs))} | {_fmt(_mean(r['cache_fraction'] for r in rs))} |"
                     f" {_fmt(_mean(r['compression_events'] for r in rs), 1)} | {len(rs)} |")
    out = ["Scores in percent (mean over samples, then over the task x length cells every method has: "
           f"{len(common)} cells). Prefill density: computed / dense causal block pairs. KV held at end: cache entries "
           "held after the last generated token / tokens seen (1.0 when no compression fired). Compressions: "
           "compression events per sample.", "", *lines, ""]
    for n in lengths:
        present = [t for t in tasks if any(cells.get((m, t, n)) for m in methods)]
        if not present:
            continue
        out += [f"**{n} tokens** (samples per cell: "
                f"{', '.join(f'{t} {max(len(cells.get((m, t, n), [])) for m in methods)}' for t in present)})", "",
                "| method | " + " | ".join(present) + " | avg |", "|---|" + "---:|" * (len(present) + 1)]
        for m in methods:
            vals = [_mean(cells.get((m, t, n), [])) for t in present]
            out.append(f"| `{m}` | " + " | ".join(pct(v) for v in vals) + f" | {pct(_mean(vals))} |")
        out.append("")
    return "\n".join(out)


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

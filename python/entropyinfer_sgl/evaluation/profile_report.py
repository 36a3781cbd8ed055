"""Per-layer x kv-head views of `hf.enable` stats: the rigid/dynamic table and the entropy/budget heatmap PNG.

Shared by `python -m entropyinfer_sgl.demo` and `entropyinfer profile`.
"""

from __future__ import annotations

from pathlib import Path


def layer_table(stats) -> str:
    """One line per layer: density, then per kv head R(igid)/D(ynamic), mean budget and normalized entropy."""
    lines = []
    for layer in range(stats.layer_density.shape[0]):
        density = float(stats.layer_density[layer])
        cells = []
        for head in range(stats.rigid.shape[1]):
            budget = float(stats.budget_tokens[layer, head])
            if budget != budget:  # NaN: not profiled
                cells.append("   -   ")
                continue
            kind = "R" if bool(stats.rigid[layer, head]) else "D"
            hn = float(stats.normalized_entropy[layer, head])
            cells.append(f"{kind} {budget:5.0f} Hn={hn:.3f}" if hn >= 1e-3 else f"{kind} {budget:5.0f} Hn={hn:.0e}")
        note = " (dense layer)" if stats.layers and _is_dense_layer(stats, layer) else ""
        lines.append(f"  L{layer:02d} density {density:.3f} | " + " | ".join(cells) + note)
    return "\n".join(lines)


def _is_dense_layer(stats, layer: int) -> bool:
    return any(r.layer_idx == layer and r.path == "dense" for r in stats.layers)


def write_heatmap(stats, path: Path, *, title: str) -> Path | None:
    """Per-layer x kv-head heatmaps (normalized entropy with rigid heads marked, mean budget); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    entropy = stats.normalized_entropy.numpy()
    budgets = stats.budget_tokens.numpy()
    num_layers, num_kv_heads = entropy.shape
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * num_kv_heads, 0.28 * num_layers + 2), constrained_layout=True)
    panels = ((entropy, "viridis", "entropy / ln(visible blocks)"), (budgets, "magma", "mean budget (tokens)"))
    for ax, (data, cmap, label) in zip(axes, panels):
        image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
        fig.colorbar(image, ax=ax, label=label)
        ax.set_xticks(range(num_kv_heads), [f"kv{h}" for h in range(num_kv_heads)])
        ax.set_yticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
        ax.set_xlabel("kv head")
        ax.set_ylabel("layer")
    for layer in range(num_layers):
        for head in range(num_kv_heads):
            if entropy[layer, head] == entropy[layer, head]:
                mark = "R" if bool(stats.rigid[layer, head]) else ""
                axes[0].text(head, layer, f"{entropy[layer, head]:.2f}{mark}", ha="center", va="center", fontsize=6,
                             color="white" if entropy[layer, head] < 0.5 * max(entropy.max(), 1e-9) else "black")
    axes[0].set_title("block-attention entropy (R = rigid)")
    axes[1].set_title("prefill budget per kv head")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path



"""`lendata report` of a length_profile build: the token-length distribution per prompt and per model (a box
plot), and a table of each profile's mean, spread and percentiles."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from lendata.methods.base import ReportSection


def distribution_plot(data: dict[str, Any], png: Path) -> Path:
    """One box per (prompt, model): prompts along the x axis, models side by side in their own colours."""
    from lendata.plots import pyplot, save_png

    plt = pyplot()
    prompts = list(data["prompts"])
    labels = list(data["tokens"])
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(prompts) * max(len(labels), 1) + 2), 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, label in enumerate(labels):
        series = [data["tokens"][label].get(p, []) for p in prompts]
        where = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(prompts))]
        keep = [(w, s) for w, s in zip(where, series, strict=True) if s]
        if not keep:
            continue
        box = ax.boxplot([s for _, s in keep], positions=[w for w, _ in keep], widths=width * 0.9,
                         patch_artist=True, whis=(5, 95), showfliers=True)
        for patch in box["boxes"]:
            patch.set_facecolor(colours[j % len(colours)])
            patch.set_alpha(0.6)
        ax.plot([], [], color=colours[j % len(colours)], linewidth=6, alpha=0.6, label=label)
    ax.set_xticks(range(len(prompts)))
    ax.set_xticklabels([f"P{i + 1}" for i in range(len(prompts))])
    ax.set_xlabel("prompt (see the table)")
    ax.set_ylabel("completion length (tokens)")
    d = data["decoding"]
    ax.set_title(f"length per prompt and model: {d['samples']} samples each, temperature {d['temperature']}, "
                 f"top_p {d['top_p']}, max {d['max_tokens']} tokens (whiskers p5-p95)", fontsize=9)
    ax.legend(fontsize=8)
    return save_png(fig, png, dpi=110)


def section(manifest: dict[str, Any], folder: Path) -> ReportSection:
    data = manifest["length_profile"]
    rows, lines = [], []
    numbers = {p: f"P{i + 1}" for i, p in enumerate(data["prompts"])}
    for label, by_prompt in data["tokens"].items():
        means = []
        for pid, tokens in by_prompt.items():
            if not tokens:
                continue
            t = np.asarray(tokens, dtype=float)
            mean, std = float(t.mean()), float(t.std(ddof=1)) if len(t) > 1 else 0.0
            p5, p50, p95 = np.percentile(t, (5, 50, 95))
            means.append(mean)
            rows.append((numbers[pid], data["prompts"][pid][:48], label, str(len(tokens)), f"{mean:.0f}",
                         f"{std / mean:.2f}" if mean else "—", f"{p5:.0f}", f"{p50:.0f}", f"{p95:.0f}"))
        if means:
            lines.append(f"{label}: mean completion {statistics.fmean(means):.0f} tokens over {len(means)} prompts")
    plot = distribution_plot(data, folder / "length_profile.png")
    return ReportSection("length_profile", data, [str(plot)],
                         (("#", "prompt", "model", "n", "mean tok", "cv", "p5", "p50", "p95"), rows), lines)

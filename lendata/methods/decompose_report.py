"""`lendata report`: the statistics a `decompose` build recorded, as a table, JSON and a PNG histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lendata.store import Version


def report_data(version: Version) -> dict[str, Any]:
    m = version.manifest
    if "decomposition" not in m:
        raise ValueError(f"{version.dataset}@{version.version} is not a decompose build: it has no statistics")
    return {"dataset": version.dataset, "version": version.version, "settings": m.get("settings", {}),
            **m["decomposition"], "summary": m["summary"]}


def histogram(data: dict[str, Any], png: Path) -> Path:
    """Token share per bucket (bars) with the sequences per bucket on top."""
    from lendata.plots import pyplot, save_png

    plt = pyplot()
    buckets = sorted(data["buckets"].items(), key=lambda kv: int(kv[0]))
    shares = [data["summary"]["token_share"][f"D{k}"] * 100 for k, _ in buckets]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([f"D{k}\n{1 << int(k):,}" for k, _ in buckets], shares, color="#4c72b0")
    for bar, (_, v) in zip(bars, buckets, strict=True):
        ax.annotate(f"{v['sequences']:,} seq", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    s = data["summary"]
    ax.set_ylabel("share of kept tokens (%)")
    ax.set_title(f"{data['dataset']}@{data['version']}: {data['kept_tokens']:,} tokens in buckets "
                 f"(avg context {s['avg_context_length']:,}, attention cost {s['attention_cost_vs_concat']:.2f}x)",
                 fontsize=9)
    return save_png(fig, png, dpi=110)

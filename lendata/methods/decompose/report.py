"""`lendata report`: the statistics a `decompose` build recorded, as a table, JSON and a PNG histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lendata.methods.base import ReportSection


def report_data(manifest: dict[str, Any]) -> dict[str, Any]:
    """The statistics a `decompose` build recorded in its manifest."""
    m = manifest
    if "decomposition" not in m:
        raise ValueError(f"{m.get('dataset')}@{m.get('version')} is not a decompose build: it has no statistics")
    return {"dataset": m.get("dataset"), "version": m.get("version"),
            "settings": m.get("recipe_settings") or m.get("settings", {}), **m["decomposition"],
            "summary": m["summary"]}


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


def section(manifest: dict[str, Any], folder: Path) -> ReportSection:
    """The bucket statistics as `lendata report` shows them: a table per bucket, the DD metrics, a histogram."""
    data = report_data(manifest)
    s = data["summary"]
    rows = [(f"D{k}", f"{1 << int(k):,}", f"{v['sequences']:,}", f"{v['tokens']:,}", f"{s['token_share'][f'D{k}']:.1%}")
            for k, v in sorted(data["buckets"].items(), key=lambda kv: int(kv[0]))]
    lines = [f"documents {data['documents']:,}; tokens {data['input_tokens']:,}, kept {data['kept_tokens']:,} "
             f"({s['kept_share']:.1%}), dropped {data['dropped_tokens']:,}",
             f"average sequence length {s['avg_sequence_length']:,}; average context length "
             f"{s['avg_context_length']:,}; attention cost vs concat-and-chunk at 2^max "
             f"{s['attention_cost_vs_concat']:.3f}x; cross-document attention 0"]
    if "baseline" in s:
        b = s["baseline"]
        lines.append(f"baseline concat-and-chunk at {b['length']:,}: average context length "
                     f"{b['avg_context_length']:,}; cross-document attention "
                     f"{b['cross_document_attention_share']:.1%} of attention pairs")
    return ReportSection("decomposition", data, [str(histogram(data, folder / "buckets.png"))],
                         (("bucket", "tokens/seq", "sequences", "tokens", "share"), rows), lines)

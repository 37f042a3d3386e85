"""`lendata report`: an HTML page and PNG plots for any version: length histograms per split (words and tokens),
target against produced length where a target exists, length per iteration where rows have one (Self-Lengthen),
quarantine reasons, truncation and repetition rates."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from lendata import store as st
from lendata.atomic import write_atomic
from lendata.catalog import read_parquet_sql
from lendata.describe import _length_sql, describe, text_columns
from lendata.paths import work_dir
from lendata.plots import pyplot, save_png

TOKEN_SAMPLE_CHARS = 4_000_000  # text tokenised per split for the token histogram (a sample on big splits)
REPEAT_SAMPLE = 2_000  # rows per split checked for repetition loops
TARGETS = [("target_words", "response_words"), ("level_length", "length")]  # (target, produced) column pairs
# columns whose mean and median are plotted per `iteration` (Self-Lengthen's premise: they rise)
ITERATION_LENGTHS = ("initial_words", "extended_words")


def main_column(split_stats: dict[str, Any]) -> str | None:
    """The split's long text: the text column with the most words on average."""
    cols = [(ls.get("mean_words", 0), c) for c, ls in split_stats["lengths"].items() if ls.get("rows")]
    return max(cols)[1] if cols else None


def _token_counts(texts: list[str]) -> np.ndarray:
    from lendata.lengths import count_tokens

    return np.asarray(count_tokens(texts), dtype=np.int64)


def split_lengths(con, version: st.Version, split: str, expr: str) -> dict[str, Any]:
    source = read_parquet_sql(version, split)
    words = con.execute(f"SELECT {_length_sql(expr, 'words')} AS w FROM {source}").fetchnumpy()["w"]
    sample, chars = [], 0
    for (text,) in con.execute(f"SELECT {expr} FROM {source} USING SAMPLE reservoir(5000 ROWS) REPEATABLE (0)"
                               ).fetchall():
        if text is None or chars > TOKEN_SAMPLE_CHARS:
            continue
        sample.append(text)
        chars += len(text)
    from lendata.methods.shared.budget import language_of
    from lendata.methods.shared.checks import default_n, max_ngram_repeats

    repeats = 0
    for text in sample[:REPEAT_SAMPLE]:
        lang = language_of(text[:2000])
        repeats += max_ngram_repeats(text, default_n(lang), lang)[0] >= 3
    return {"words": np.asarray(words, dtype=np.int64), "tokens": _token_counts(sample) if sample else None,
            "token_sample": len(sample), "repetition_rate": round(repeats / len(sample[:REPEAT_SAMPLE]), 4)
            if sample else None}


def _histograms(title: str, lengths: dict[str, Any], png: Path) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "words", "words"), (axes[1], "tokens", "tokens (sample)")):
        values = lengths[key]
        if values is None or not len(values):
            ax.set_axis_off()
            continue
        ax.hist(values, bins=min(50, max(5, len(np.unique(values)))), color="#4c72b0")
        ax.set_xlabel(label)
        ax.set_ylabel("rows")
        ax.set_title(f"{label}: mean {values.mean():,.0f}, p50 {np.median(values):,.0f}, n={len(values):,}",
                     fontsize=9)
    fig.suptitle(title, fontsize=10)
    return str(save_png(fig, png))


def _targets(con, version: st.Version, split: str, cols: tuple[str, str], png: Path) -> tuple[str, dict]:
    target, produced = cols
    rows = con.execute(f'SELECT "{target}", "{produced}" FROM {read_parquet_sql(version, split)}').fetchnumpy()
    t, p = rows[target].astype(float), rows[produced].astype(float)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(t, p, s=10, alpha=0.6, color="#4c72b0")
    top = float(max(t.max(), p.max())) if len(t) else 1.0
    ax.plot([0, top], [0, top], color="#999", lw=1, ls="--", label="produced = target")
    ax.set_xlabel(target)
    ax.set_ylabel(produced)
    ax.legend(fontsize=8)
    ratio = p / np.maximum(t, 1)
    ax.set_title(f"{split}: produced/target median {np.median(ratio):.2f}", fontsize=9)
    return str(save_png(fig, png)), {"rows": int(len(t)), "median_ratio": round(float(np.median(ratio)), 4),
                             "within_10pct": round(float(np.mean(np.abs(ratio - 1) <= 0.1)), 4)}


def _by_iteration(con, version: st.Version, split: str, cols: list[str], png: Path) -> tuple[str, list[dict]]:
    """Mean and median of each length column per iteration, as a table and a line plot."""
    stats = ", ".join(f'avg("{c}") AS "{c}_mean", median("{c}") AS "{c}_median"' for c in cols)
    rows = con.execute(f'SELECT iteration, count(*) AS rows, {stats} FROM {read_parquet_sql(version, split)} '
                       "GROUP BY iteration ORDER BY iteration").fetchall()
    names = ["iteration", "rows"] + [f"{c}_{k}" for c in cols for k in ("mean", "median")]
    table = [{k: (round(float(v), 1) if isinstance(v, float) else v) for k, v in zip(names, r, strict=True)}
             for r in rows]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in table]
    for c, color in zip(cols, ("#4c72b0", "#dd8452", "#55a868"), strict=False):
        ax.plot(its, [r[f"{c}_mean"] for r in table], marker="o", color=color, label=f"{c} mean")
        ax.plot(its, [r[f"{c}_median"] for r in table], marker="s", ls="--", color=color, label=f"{c} median")
    ax.set_xlabel("iteration")
    ax.set_xticks(its)
    ax.set_ylabel("words")
    ax.legend(fontsize=8)
    ax.set_title(f"{split}: length per iteration", fontsize=9)
    return str(save_png(fig, png)), table


def _reasons(version: st.Version) -> Counter:
    reasons: Counter = Counter()
    for split in ("quarantine", "rejected"):
        if version.rows(split):
            for r in version.read(split).column("reason").to_pylist():
                reasons[f"{split}: {str(r).split(':')[0].split('(')[0].strip()[:60]}"] += 1
    return reasons


def _reasons_plot(reasons: Counter, png: Path) -> str:
    plt = pyplot()
    top = reasons.most_common(12)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(top) + 1.2))
    ax.barh([r for r, _ in top], [n for _, n in top], color="#c44e52")
    ax.set_xlabel("rows")
    ax.tick_params(axis="y", labelsize=8)
    return str(save_png(fig, png))


def render(version: st.Version, root: Path, out_dir: Path | None = None,
           stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `index.html`, `report.json` and the PNGs; return their paths and the figures they show.
    `stats` is the version's `describe()`, when the caller has it already."""
    out_dir = out_dir or work_dir(root) / version.dataset / f"report-{version.version}"
    stats = stats or describe(version)
    data: dict[str, Any] = {"dataset": version.dataset, "version": version.version, "splits": {}, "plots": []}
    con = duckdb.connect(":memory:")
    try:
        for split, s in stats["splits"].items():
            if split in st.AUDIT_SPLITS or not s["rows"]:
                continue
            entry: dict[str, Any] = {"rows": s["rows"]}
            col = main_column(s)
            if col:
                lengths = split_lengths(con, version, split, text_columns(version, split)[col])
                entry.update(column=col, repetition_rate=lengths["repetition_rate"],
                             token_sample=lengths["token_sample"])
                data["plots"].append(_histograms(f"{version.dataset}@{version.version} {split}: {col}", lengths,
                                                 out_dir / f"lengths-{split}.png"))
            if "finish_reason" in s["schema"]:
                (share,) = con.execute(f"SELECT avg((finish_reason = 'length')::INT) FROM "
                                       f"{read_parquet_sql(version, split)}").fetchone()
                entry["truncation_rate"] = round(share or 0.0, 4)
            for pair in TARGETS:
                if all(c in s["schema"] for c in pair):
                    png, fit = _targets(con, version, split, pair, out_dir / f"target-{split}.png")
                    data["plots"].append(png)
                    entry["target_vs_produced"] = {"columns": list(pair), **fit}
                    break
            per_iteration = [c for c in ITERATION_LENGTHS if c in s["schema"]]
            if "iteration" in s["schema"] and per_iteration:
                png, table = _by_iteration(con, version, split, per_iteration, out_dir / f"iterations-{split}.png")
                data["plots"].append(png)
                entry["by_iteration"] = table
            data["splits"][split] = entry
    finally:
        con.close()
    if version.manifest.get("iterations"):  # Self-Lengthen's per-iteration evidence: adapters, acceptance
        data["iterations"] = version.manifest["iterations"]
    reasons = _reasons(version)
    data["rejections"] = dict(reasons.most_common())
    if reasons:
        data["plots"].append(_reasons_plot(reasons, out_dir / "rejections.png"))
    write_atomic(out_dir / "report.json", json.dumps({**data, "describe": stats}, indent=2, default=str))
    data["html"] = str(_html(version, stats, data, out_dir / "index.html"))
    return data


def _iterations_html(iterations: list[dict[str, Any]]) -> str:
    """Per iteration and role: the adapter used (path and hash) and the acceptance rate of each check."""
    if not iterations:
        return ""
    e = html.escape
    checks = list(iterations[0].get("acceptance", {}))

    def adapter(role: dict[str, Any]) -> str:
        if not role.get("lora"):
            return "base model"
        return f'<code>{e(str(role.get("lora_sha256") or "")[:12])}</code> {e(str(role["lora"]))}'

    rows = "".join(
        f"<tr><td>{it['iteration']}</td><td>{adapter(it.get('generator', {}))}</td>"
        f"<td>{adapter(it.get('extender', {}))}</td><td>{it.get('responses', '')}</td>"
        + "".join(f"<td>{it.get('acceptance', {}).get(c, '—')}</td>" for c in checks) + "</tr>"
        for it in iterations)
    return ("<h2>Iterations</h2><table><tr><th>iteration</th><th>Generator adapter</th><th>Extender adapter</th>"
            "<th>responses</th>" + "".join(f"<th>{e(c)}</th>" for c in checks) + f"</tr>{rows}</table>")


def _html(version: st.Version, stats: dict[str, Any], data: dict[str, Any], path: Path) -> Path:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(split)}</td><td>{s['rows']:,}</td><td>{e(str(s.get('column', '')))}</td>"
        f"<td>{s.get('truncation_rate', '—')}</td><td>{s.get('repetition_rate', '—')}</td>"
        f"<td>{e(json.dumps(s.get('target_vs_produced', '—')))}</td></tr>" for split, s in data["splits"].items())
    lengths = "".join(
        f"<tr><td>{e(split)}</td><td>{e(col)}</td><td>{ls['rows']:,}</td><td>{ls['mean_words']:,}</td>"
        f"<td>{ls['p50_words']:,}</td><td>{ls['p90_words']:,}</td><td>{ls['max_words']:,}</td></tr>"
        for split, s in stats["splits"].items() for col, ls in s["lengths"].items() if ls.get("rows"))
    reasons = "".join(f"<tr><td>{e(r)}</td><td>{n:,}</td></tr>" for r, n in data["rejections"].items())
    iterations = "".join(
        f"<tr><td>{e(split)}</td>" + "".join(f"<td>{e(str(v))}</td>" for v in row.values()) + "</tr>"
        for split, s in data["splits"].items() for row in s.get("by_iteration", []))
    header = next((list(row) for s in data["splits"].values() for row in s.get("by_iteration", [])), [])
    per_iteration = _iterations_html(data.get("iterations") or []) + (
        "<h2>Length per iteration</h2><table><tr><th>split</th>" + "".join(f"<th>{e(h)}</th>" for h in header)
        + f"</tr>{iterations}</table>" if iterations else "")
    images = "".join(f'<p><img src="{e(Path(p).name)}" alt="{e(Path(p).stem)}"></p>' for p in data["plots"])
    m = version.manifest
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(version.dataset)}@{e(version.version)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>{e(version.dataset)}@{e(version.version)}</h1>
<p>recipe {e(str(m.get('recipe')))} · engine {e(str(m.get('engine')))} · model {e(str(m.get('model')))} ·
created {e(str(m.get('created')))} · content hash <code>{e(str(m.get('content_hash')))}</code></p>
<h2>Splits</h2><table><tr><th>split</th><th>rows</th><th>main text</th><th>truncated</th><th>repetition</th>
<th>target vs produced</th></tr>{rows}</table>
<h2>Lengths (words)</h2><table><tr><th>split</th><th>column</th><th>rows</th><th>mean</th><th>p50</th><th>p90</th>
<th>max</th></tr>{lengths}</table>
{per_iteration}
<h2>Quarantine and rejections</h2><table><tr><th>reason</th><th>rows</th></tr>{reasons or
'<tr><td>none</td><td>0</td></tr>'}</table>
<h2>Plots</h2>{images}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return path

"""`lendata report`: an HTML page and PNG plots for any version: length histograms per split (words and tokens),
target against produced length where a target exists, length per iteration where rows have one (Self-Lengthen),
quarantine reasons, truncation and repetition rates."""

from __future__ import annotations

import html
import json
import re
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
REPEAT_FLAG = 3  # a row whose most frequent n-gram (10 words; 13 units in zh) occurs this often is flagged
FLAGGED_SHOWN = 20  # flagged rows listed per split on the page (the rest are in report.json)
TRUNCATED_LISTED = 10_000  # truncated rows listed per split in report.json (the rate counts them all)
TARGETS = [("target_words", "response_words"), ("level_length", "length")]  # (target, produced) column pairs
# columns whose mean and median are plotted per `iteration` (Self-Lengthen's premise: they rise)
ITERATION_LENGTHS = ("initial_words", "extended_words")


# answer columns, whatever their length, in order of preference as a split's main text
MAIN_TEXT = ("messages[assistant]", "response", "extended_response", "initial_response", "output", "text", "chosen")
# metadata columns lendata writes: never text, however many words a model's name has
LABELS = frozenset({"id", "language", "engine", "model", "source", "record", "plan_source", "plan_fallback",
                    "finish_reason", "stopped_by", "judge_model", "judge_error", "model_label", "chosen_model",
                    "rejected_model", "settings", "suite", "metric", "level", "dataset", "prompt_id", "record_id",
                    "generator_adapter", "extender_adapter", "unit", "phrasing", "constraint_type"})


def main_column(split_stats: dict[str, Any], among: list[str] | None = None) -> str | None:
    """The split's long text: a known answer column (MAIN_TEXT), else the text column (of `among`, when given: the
    prose columns) with the most words on average."""
    named = [c for c in MAIN_TEXT if split_stats["lengths"].get(c, {}).get("rows") and (among is None or c in among)]
    if named:
        return named[0]
    cols = [(ls.get("mean_words", 0), c) for c, ls in split_stats["lengths"].items() if ls.get("rows")
            and (among is None or c in among)]
    return max(cols)[1] if cols else None


def _token_counts(texts: list[str]) -> np.ndarray:
    from lendata.lengths import count_tokens

    return np.asarray(count_tokens(texts), dtype=np.int64)


def split_lengths(con, version: st.Version, split: str, expr: str, has_id: bool = False) -> dict[str, Any]:
    """Word lengths of every row; token lengths and the repetition check on a sample, with the rows it flags."""
    source = read_parquet_sql(version, split)
    words = con.execute(f"SELECT {_length_sql(expr, 'words')} AS w FROM {source}").fetchnumpy()["w"]
    sample = []  # up to REPEAT_SAMPLE rows for the repetition check; the first TOKEN_SAMPLE_CHARS of them tokenised
    ident = '"id"' if has_id else "NULL"
    for text, rid in con.execute(f"SELECT {expr}, {ident} FROM {source} USING SAMPLE reservoir({REPEAT_SAMPLE} ROWS) "
                                 "REPEATABLE (0)").fetchall():
        if text is not None:
            sample.append((text, rid))
    token_texts, chars = [], 0
    for text, _ in sample:
        if chars > TOKEN_SAMPLE_CHARS:
            break
        token_texts.append(text)
        chars += len(text)
    from lendata.methods.shared.budget import language_of
    from lendata.methods.shared.checks import default_n, max_ngram_repeats

    flagged = []
    for text, rid in sample[:REPEAT_SAMPLE]:
        lang = language_of(text[:2000])
        n = default_n(lang)
        count, gram = max_ngram_repeats(text, n, lang)
        if count >= REPEAT_FLAG:
            flagged.append({"id": rid, "why": f"repeats the {n}-gram \"{gram[:80]}\" {count} times"})
    checked = len(sample[:REPEAT_SAMPLE])
    return {"words": np.asarray(words, dtype=np.int64), "tokens": _token_counts(token_texts)
            if token_texts else None, "token_sample": len(token_texts), "repetition_checked": checked,
            "repetition_rate": round(len(flagged) / checked, 4) if checked else None, "repetitive": flagged}


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


def _targets(con, version: st.Version, split: str, cols: tuple[str, str], png: Path) -> tuple[str | None, dict]:
    target, produced = cols
    rows = con.execute(f'SELECT "{target}", "{produced}" FROM {read_parquet_sql(version, split)} '
                       f'WHERE "{target}" IS NOT NULL AND "{produced}" IS NOT NULL').fetchnumpy()
    t, p = np.asarray(rows[target], dtype=float), np.asarray(rows[produced], dtype=float)
    if not len(t):
        return None, {}
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


def _judge_scores(con, version: st.Version, split: str, schema: dict[str, str]) -> dict[str, Any] | None:
    """Mean S_q and per-dimension means of the rows a quality gate judged (columns `sq`, `judge_scores`)."""
    if "sq" not in schema:
        return None
    source = read_parquet_sql(version, split)
    judged, mean_sq, failed = con.execute(f"SELECT count(sq), avg(sq), count(*) FILTER (WHERE sq IS NULL) "
                                          f"FROM {source}").fetchone()
    dims = {}
    if "judge_scores" in schema and judged:
        from lendata.methods.shared.quality_gate import JUDGE_FIELDS

        names = [f.name for f in JUDGE_FIELDS[1][1]]
        row = con.execute("SELECT " + ", ".join(f'avg(judge_scores."{n}")' for n in names) + f" FROM {source}"
                          ).fetchone()
        dims = {n: round((v - 1) * 25, 1) for n, v in zip(names, row, strict=True) if v is not None}
    if not judged:  # a version built without a judge (an eval run without one has the column, all null)
        return None
    return {"judged": judged, "unjudged": failed, "mean_sq": round(mean_sq, 1) if mean_sq is not None else None,
            "dimensions": dims}


def _truncated(con, version: st.Version, split: str, has_id: bool) -> list[dict[str, Any]]:
    ident = '"id"' if has_id else "NULL"
    rows = con.execute(f"SELECT {ident} FROM {read_parquet_sql(version, split)} WHERE finish_reason = 'length' "
                       f"LIMIT {TRUNCATED_LISTED}").fetchall()
    return [{"id": r[0], "why": "stopped at its token limit (finish_reason = length): the text is cut"}
            for r in rows]


def prose_columns(con, version: st.Version, split: str, split_stats: dict[str, Any]) -> list[str]:
    """The split's text columns that hold text, not labels or JSON: the known answer columns (MAIN_TEXT), and
    columns where at least 10% of the rows have more than two words or the values average over 40 characters, as
    long as most values do not start with `{` or `[` (ids, languages, model names and records are out)."""
    exprs = text_columns(version, split)
    out = []
    for col, ls in split_stats["lengths"].items():
        if not ls.get("rows") or col not in exprs or col in LABELS:
            continue
        # Chinese prose has no spaces: a long value is text even when it is one "word"
        if col not in MAIN_TEXT and ls.get("p90_words", 0) <= 2 and ls.get("mean_chars", 0) <= 40:
            continue
        starts_json = f"regexp_matches(ltrim({exprs[col]}), '^[\\[{{]')"
        (json_share,) = con.execute(f"SELECT avg(({starts_json})::INT) FROM "
                                    f"{read_parquet_sql(version, split)}").fetchone()
        if (json_share or 0) <= 0.5:
            out.append(col)
    return out


def _method_section(version: st.Version, out_dir: Path) -> Any:
    from lendata.methods import method_of

    method = method_of(version.manifest)
    return method.report(version.manifest, out_dir) if method else None


def render(version: st.Version, root: Path, out_dir: Path | None = None,
           stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `index.html`, `report.json` and the PNGs; return their paths and the figures they show (with the
    section the version's method adds, under its name and as `section`).
    `stats` is the version's `describe()`, when the caller has it already."""
    out_dir = out_dir or work_dir(root) / version.dataset / f"report-{version.version}"
    stats = stats or describe(version)
    data: dict[str, Any] = {"dataset": version.dataset, "version": version.version, "splits": {}, "plots": []}
    con = duckdb.connect(":memory:")
    try:
        for split, s in stats["splits"].items():
            if split in st.AUDIT_SPLITS or not s["rows"]:
                continue
            entry: dict[str, Any] = {"rows": s["rows"], "flagged": [],
                                     "text_columns": prose_columns(con, version, split, s)}
            has_id = "id" in s["schema"]
            col = main_column(s, entry["text_columns"])
            if col:
                lengths = split_lengths(con, version, split, text_columns(version, split)[col], has_id)
                entry.update(column=col, repetition_rate=lengths["repetition_rate"],
                             repetition_checked=lengths["repetition_checked"], token_sample=lengths["token_sample"])
                entry["flagged"] += lengths["repetitive"]
                data["plots"].append(_histograms(f"{version.dataset}@{version.version} {split}: {col}", lengths,
                                                 out_dir / f"lengths-{split}.png"))
            if "finish_reason" in s["schema"]:
                (share,) = con.execute(f"SELECT avg((finish_reason = 'length')::INT) FROM "
                                       f"{read_parquet_sql(version, split)}").fetchone()
                entry["truncation_rate"] = round(share or 0.0, 4)
                entry["flagged"] = _truncated(con, version, split, has_id) + entry["flagged"]
            for pair in TARGETS:
                if all(c in s["schema"] for c in pair):
                    png, fit = _targets(con, version, split, pair, out_dir / f"target-{split}.png")
                    if png:  # rows with both lengths exist (LV-Eval results have no target)
                        data["plots"].append(png)
                        entry["target_vs_produced"] = {"columns": list(pair), **fit}
                    break
            judged = _judge_scores(con, version, split, s["schema"])
            if judged:
                entry["judge"] = judged
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
    section = _method_section(version, out_dir)
    if section is not None:
        data[section.name] = section.data
        data["plots"].extend(section.plots)
        data["section"] = {"name": section.name, "table": [list(section.table[0]), [list(r) for r in
                                                                                    section.table[1]]]
                           if section.table else None, "lines": section.lines}
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


RATES_EXPLAINED = (
    ("truncated", "the share of rows whose generation stopped at its token limit (<code>finish_reason = "
     "length</code>) instead of ending on its own: their text is cut off."),
    ("repetition", f"the share of the rows checked (all, or a sample of {REPEAT_SAMPLE:,}; the count is shown) "
     f"whose most frequent 10-word sequence (13 characters in Chinese) occurs {REPEAT_FLAG} or more times: a "
     "sign that the model looped."),
    ("target vs produced", "how long the texts came out against the length each row asked for: the median of "
     "produced / target, and the share of rows within ±10% of their target (the plot shows every row)."),
)


def target_sentence(fit: dict[str, Any] | None) -> str:
    if not fit:
        return "—"
    target, produced = fit["columns"]
    return (f"median {produced}/{target} {fit['median_ratio']:.2f}; {fit['within_10pct']:.0%} of "
            f"{fit['rows']:,} rows within ±10% of their target")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells are escaped here."""
    e = html.escape

    def cell(c: Any) -> str:  # numbers right-aligned, text left
        return f'<td class="n">{e(str(c))}</td>' if _NUMBER.fullmatch(str(c)) else f"<td>{e(str(c))}</td>"

    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows) + "</table>")


_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+%?|—")


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _flagged_html(data: dict[str, Any]) -> str:
    parts = []
    for split, s in data["splits"].items():
        flagged = s.get("flagged") or []
        if not flagged:
            continue
        rows = [[f.get("id") or "(no id)", f["why"]] for f in flagged[:FLAGGED_SHOWN]]
        more = (f"<p>{len(flagged) - FLAGGED_SHOWN:,} more in <code>report.json</code>.</p>"
                if len(flagged) > FLAGGED_SHOWN else "")
        parts.append(f"<h3>{html.escape(split)}: {len(flagged):,} flagged</h3>" + _table(["id", "why"], rows) + more)
    checked = sum(s.get("repetition_checked") or 0 for s in data["splits"].values())
    truncation = any("truncation_rate" in s for s in data["splits"].values())
    if not parts:
        if not checked and not truncation:
            return ""
        found = []
        if truncation:
            found.append("stopped at its token limit")
        if checked:
            found.append(f"repeats itself (of the {checked:,} rows checked)")
        return f"<h2>Flagged rows</h2><p>No kept row {' or '.join(found)}.</p>"
    return ("<h2>Flagged rows</h2><p>Kept rows this report finds cut at their token limit or looping; they passed "
            "the build's filters, so look at them before training on them.</p>" + "".join(parts))


def _judge_html(data: dict[str, Any]) -> str:
    rows = [[split, f"{j['judged']:,}", f"{j['unjudged']:,}", "—" if j["mean_sq"] is None else j["mean_sq"],
             *[j["dimensions"].get(d, "—") for d in _DIMENSION_COLUMNS]]
            for split, s in data["splits"].items() if (j := s.get("judge"))]
    if not rows:
        return ""
    shown = [k for k, d in enumerate(_DIMENSION_COLUMNS) if any(r[4 + k] != "—" for r in rows)]
    rows = [r[:4] + [r[4 + k] for k in shown] for r in rows]
    return ("<h2>Judge scores (S_q)</h2><p>LongBench-Write's quality score from the build's judge: each dimension "
            "is (mean score − 1) × 25 on 0..100, and S_q is their mean. A small judge's scores say little about "
            "the text.</p>" + _table(["split", "judged", "not judged", "S_q", *(_DIMENSION_COLUMNS[k] for k in shown)],
                                    rows))


_DIMENSION_COLUMNS = ("relevance", "accuracy", "coherence", "clarity", "breadth_and_depth", "reading_experience")


def _section_html(data: dict[str, Any]) -> str:
    section = data.get("section")
    if not section:
        return ""
    table = _table(section["table"][0], section["table"][1]) if section.get("table") else ""
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in section.get("lines", []))
    return f"<h2>{html.escape(section['name'].replace('_', ' ').capitalize())}</h2>{lines}{table}"


def _html(version: st.Version, stats: dict[str, Any], data: dict[str, Any], path: Path) -> Path:
    e = html.escape
    splits = _table(["split", "rows", "main text", "truncated", "repetition", "target vs produced"], [
        [split, f"{s['rows']:,}", s.get("column", ""), _percent(s.get("truncation_rate")),
         _percent(s.get("repetition_rate")) + (f" of {s['repetition_checked']:,}" if s.get("repetition_checked")
                                               else ""), target_sentence(s.get("target_vs_produced"))]
        for split, s in data["splits"].items()])
    explained = "".join(f"<dt>{e(name)}</dt><dd>{text}</dd>" for name, text in RATES_EXPLAINED)
    lengths = _table(["split", "column", "rows", "mean", "p50", "p90", "max"], [
        [split, col, f"{ls['rows']:,}", f"{ls['mean_words']:,}", f"{ls['p50_words']:,}", f"{ls['p90_words']:,}",
         f"{ls['max_words']:,}"]
        for split, s in data["splits"].items() for col in s.get("text_columns", [])
        if (ls := stats["splits"][split]["lengths"].get(col))])
    reasons = _table(["reason", "rows"], [[r, f"{n:,}"] for r, n in data["rejections"].items()]
                     or [["none", "0"]])
    iterations = [[split, *map(str, row.values())] for split, s in data["splits"].items()
                  for row in s.get("by_iteration", [])]
    header = next((list(row) for s in data["splits"].values() for row in s.get("by_iteration", [])), [])
    per_iteration = _iterations_html(data.get("iterations") or []) + (
        "<h2>Length per iteration</h2>" + _table(["split", *header], iterations) if iterations else "")
    images = "".join(f'<p><img src="{e(Path(p).name)}" alt="{e(Path(p).stem)}"></p>' for p in data["plots"])
    m = version.manifest
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(version.dataset)}@{e(version.version)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:75em}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}td.n{{text-align:right}}
dt{{font-weight:bold;margin-top:.4em}}img{{max-width:100%}}</style></head><body>
<h1>{e(version.dataset)}@{e(version.version)}</h1>
<p>recipe {e(str(m.get('recipe')))} · engine {e(str(m.get('engine')))} · model {e(str(m.get('model')))} ·
created {e(str(m.get('created')))} · content hash <code>{e(str(m.get('content_hash')))}</code></p>
<h2>Splits</h2>{splits}
<dl>{explained}</dl>
{_flagged_html(data)}
{_judge_html(data)}
{_section_html(data)}
{per_iteration}
<h2>Lengths (words)</h2><p>Text columns only (labels such as ids, languages and model names, and JSON, are left
out); words are whitespace-separated.</p>{lengths}
<h2>Quarantine and rejections</h2>{reasons}
<h2>Plots</h2>{images}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return path

"""The `lendata` command line."""

from __future__ import annotations

import io
import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Build, validate, store, query and publish long-output and variable-length LLM corpora.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", "--out", help="Store directory (default $LENDATA_STORE, else ./data)."),
]
# `lendata query` writes its result with --out FILE, so there the store is --store only
QueryStoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Store directory (default $LENDATA_STORE, else ./data).")]


def _store(store: Path | None) -> Path:
    from lendata.paths import store_root

    return store_root(store)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="Recipe name under pipelines/ (or a path to a .yaml).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: key=value.")] = None,
    store: StoreOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a committed version with the same number.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's flow and task logs.")] = False,
) -> None:
    """Run a recipe through its Prefect flow and commit the result as a dataset version."""
    from lendata import recipes
    from lendata.build import BuildFailed
    from lendata.inputs import InputError
    from lendata.store import StoreError

    root = _store(store)
    try:
        loaded = recipes.load(recipe, recipes.parse_sets(set_ or []))
    except recipes.RecipeError as e:
        _fail(str(e), 2)
    from flows import run_recipe

    try:
        report = run_recipe(loaded, root, overwrite=overwrite, progress=progress, verbose=verbose)
    except (BuildFailed, InputError, StoreError, ValueError, FileNotFoundError, ConnectionError) as e:
        _fail(str(e))
    summary = _summary(root, loaded, report)
    if as_json:
        print(json.dumps({**report.as_dict(), **({"summary": summary} if summary else {})}))
        return
    if summary:
        t = Table(*summary[0].keys(), title=f"{report.dataset}@{report.version} by {loaded['summary_by']}")
        for row in summary:
            t.add_row(*(str(v) for v in row.values()))
        out.print(t)
    state = "unchanged (identical content already committed)" if report.unchanged else "committed"
    out.print(
        f"[bold green]{report.dataset}@{report.version}[/] {state}: {report.rows} rows, "
        f"{report.quarantined} quarantined, {report.engine_calls} engine calls, {report.cache_hits} cache hits, "
        f"{report.seconds:.1f}s"
    )
    out.print(f"data: {report.path}")


def _summary(store: Path, recipe: dict, report) -> list[dict] | None:
    """Produced length per value of the recipe's `summary_by` column (e.g. the LongWrite-Ruler probe)."""
    col = recipe.get("summary_by")
    if not col:
        return None
    from lendata.catalog import query as run

    df = run(store, f'SELECT "{col}", count(*) AS rows, round(avg(response_words)) AS mean_words, '
                    f'max(response_words) AS max_words, round(avg(length_score), 1) AS mean_sl '
                    f'FROM "{report.dataset}@{report.version}" GROUP BY 1 ORDER BY 1')
    return df.to_dicts()


@app.command()
def engines(
    name: Annotated[str, typer.Option(help="Engine to load and time.")] = "llamacpp",
    tokens: Annotated[int, typer.Option(help="Tokens to generate for the speed check.")] = 64,
) -> None:
    """List the engines, load one (the default) and print its speed."""
    from lendata.engines import ENGINES, Request, make_engine

    for key, desc in ENGINES.items():
        out.print(f"  [bold]{key:9}[/] {desc}")
    t0 = time.monotonic()
    try:
        engine = make_engine(name)
    except Exception as e:
        _fail(f"cannot load {name}: {e}")
    loaded = time.monotonic() - t0
    req = Request(messages=({"role": "user", "content": "Write about the sea."},), max_tokens=tokens,
                  min_tokens=tokens, temperature=0.7, seed=0)
    t1 = time.monotonic()
    res = engine.generate([req])[0]
    gen = time.monotonic() - t1
    engine.close()
    if not res.ok:
        _fail(f"{name} failed to generate: {res.error}")
    out.print(
        f"{name}: {engine.model_id}, context {engine.context_window} tokens; loaded in {loaded:.2f}s, "
        f"{res.completion_tokens} tokens in {gen:.2f}s = {res.completion_tokens / gen:.1f} tok/s"
    )


@app.command("ls")
def ls_(store: StoreOpt = None) -> None:
    """List datasets, their versions and rows."""
    from lendata import store as st

    root = _store(store)
    datasets = st.list_datasets(root)
    if not datasets:
        out.print(f"no datasets in {root}")
        return
    t = Table("dataset", "version", "rows", "quarantined", "created", "recipe", "model")
    for d in datasets:
        for v in st.list_versions(root, d):
            ver = st.open_version(root, f"{d}@{v}")
            m = ver.manifest
            t.add_row(d, v, str(ver.rows()), str(ver.rows("quarantine")), m.get("created", ""),
                      str(m.get("recipe", "")), str(m.get("model", "")))
    out.print(t)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the store, e.g. "SELECT count(*) FROM direct".')],
    store: QueryStoreOpt = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    out_file: Annotated[Path | None, typer.Option("--out", "--to", help="Write the result to this file.")] = None,
) -> None:
    """Read-only SQL (DuckDB) over every dataset version; a view per dataset for its latest version."""
    from lendata.catalog import QueryError
    from lendata.catalog import query as run
    from lendata.paths import check_output

    root = _store(store)
    try:
        if out_file is not None:
            out_file = check_output(out_file, root, "--out")
        df = run(root, sql)
    except (QueryError, ValueError) as e:
        _fail(str(e))
    try:
        _write_result(df, fmt, out_file)
    except OSError as e:
        _fail(f"cannot write {out_file}: {e.strerror or e}")


def _write_result(df, fmt: Format, out_file: Path | None) -> None:
    from lendata.atomic import write_atomic

    if fmt is Format.parquet:
        if out_file is None:
            _fail("--format parquet needs --out FILE")
        buf = io.BytesIO()
        df.write_parquet(buf)
        write_atomic(out_file, buf.getvalue())
        err.print(f"wrote {df.height} rows to {out_file}")
        return
    if fmt is Format.csv:
        text = df.write_csv()
    elif fmt is Format.json:
        text = json.dumps(df.to_dicts(), ensure_ascii=False, default=str)
    else:
        t = Table(*df.columns)
        for row in df.iter_rows():
            t.add_row(*("" if v is None else str(v) for v in row))
        if out_file is None:
            out.print(t)
            return
        table = io.StringIO()
        Console(file=table, width=200).print(t)
        text = table.getvalue()
    if out_file is not None:
        write_atomic(out_file, text)  # never through a link at that name
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def validate(
    ref: Annotated[str, typer.Argument(help="DATASET or DATASET@VERSION.")],
    store: StoreOpt = None,
) -> None:
    """Check a committed version: file hashes and row counts against its manifest, rows against the schema."""
    from lendata.store import StoreError
    from lendata.validation import validate_version

    try:
        problems, summary = validate_version(_store(store), ref)
    except (StoreError, ValueError) as e:
        _fail(str(e))
    for line in summary:
        out.print(line)
    if problems:
        for p in problems:
            err.print(f"[red]problem:[/] {p}")
        raise typer.Exit(1)
    out.print("[bold green]valid[/]")


@app.command()
def score(
    file: Annotated[Path, typer.Argument(help="JSONL or Parquet of responses.")],
    metric: Annotated[str, typer.Option(
        help="sl (LongBench-Write S_l), longen, ruler (PM/FM), or lveval (keyword-recall gated F1).")] = "sl",
    target_field: Annotated[str | None, typer.Option(help="Field with the target length.")] = None,
    response_field: Annotated[str | None, typer.Option(help="Field with the response (default: messages).")] = None,
    counter: Annotated[str | None, typer.Option(help="Word counter: longwriter, longen or ruler.")] = None,
    out_file: Annotated[Path | None, typer.Option("--to", help="Write per-row scores here (.jsonl).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score a file of responses against their target lengths."""
    from lendata.inputs import InputError
    from lendata.paths import check_output
    from lendata.scoring import score_file

    try:
        if out_file is not None:
            out_file = check_output(out_file, None, "--to")
        rows, summary = score_file(file, metric, target_field, response_field, counter)
    except (InputError, ValueError) as e:
        _fail(str(e))
    for why in summary["skipped"]:
        err.print(f"skipped {why}", highlight=False)
    if out_file:
        from lendata.atomic import write_atomic

        try:
            write_atomic(out_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        except OSError as e:
            _fail(f"cannot write {out_file}: {e.strerror or e}")
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    if not rows:
        _fail("no row had both a response and a target length")
    t = Table("target", "rows", "mean words", f"mean {metric}")
    for target, v in summary["by_target"].items():
        t.add_row(str(target), str(v["rows"]), f"{v['mean_words']:.0f}", f"{v['mean_score']:.1f}")
    out.print(t)
    extra = f" (PM {summary['pm']:.1f}, FM {summary['fm']:.1f})" if metric == "ruler" else ""
    out.print(f"{metric}: mean {summary['mean']:.2f} over {summary['rows']} rows{extra}")


@app.command()
def report(
    ref: str = typer.Argument(..., help="DATASET or DATASET@VERSION"),
    out_dir: Path = typer.Option(None, "--to", help="folder for index.html and the PNGs "
                                                     "(default: <store>/_work/<dataset>/report-<version>)"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
    store: StoreOpt = None,
) -> None:
    """An HTML page and PNG plots: length histograms per split (words, tokens), target vs produced length,
    quarantine reasons, truncation and repetition rates; for a decompose build also its bucket statistics."""
    from lendata import store as st
    from lendata.methods.decompose_report import histogram, report_data
    from lendata.paths import check_output
    from lendata.report import render

    root = _store(store)
    try:
        version = st.open_version(root, ref)
        if out_dir is not None:  # the default is the store's _work folder; a published version is never hit
            out_dir = check_output(out_dir, root, "--to")
    except (st.StoreError, ValueError) as e:
        _fail(str(e))
    data = render(version, root, out_dir)
    if "decomposition" in version.manifest:
        dd = report_data(version)
        data["decomposition"] = dd
        data["plots"].append(str(histogram(dd, Path(data["html"]).parent / "buckets.png")))
    if as_json:
        print(json.dumps(data, default=str))
        return
    t = Table("split", "rows", "main text", "truncated", "repetition", "produced/target (median)")
    for split, s in data["splits"].items():
        fit = s.get("target_vs_produced")
        t.add_row(split, f"{s['rows']:,}", str(s.get("column", "")), str(s.get("truncation_rate", "—")),
                  str(s.get("repetition_rate", "—")), f"{fit['median_ratio']:.2f}" if fit else "—")
    out.print(t)
    if data["rejections"]:
        out.print("rejections: " + "; ".join(f"{r} ({n})" for r, n in list(data["rejections"].items())[:6]))
    if "decomposition" in data:
        _print_decomposition(data["decomposition"])
    out.print(f"report: {data['html']}")


def _print_decomposition(data: dict) -> None:
    s = data["summary"]
    t = Table("bucket", "tokens/seq", "sequences", "tokens", "share")
    for k, v in sorted(data["buckets"].items(), key=lambda kv: int(kv[0])):
        t.add_row(f"D{k}", f"{1 << int(k):,}", f"{v['sequences']:,}", f"{v['tokens']:,}",
                  f"{s['token_share'][f'D{k}']:.1%}")
    out.print(t)
    out.print(f"documents {data['documents']:,}; tokens {data['input_tokens']:,}, kept {data['kept_tokens']:,} "
              f"({s['kept_share']:.1%}), dropped {data['dropped_tokens']:,}")
    out.print(f"average sequence length {s['avg_sequence_length']:,}; average context length "
              f"{s['avg_context_length']:,}; attention cost vs concat-and-chunk at 2^max "
              f"{s['attention_cost_vs_concat']:.3f}x; cross-document attention 0")
    if "baseline" in s:
        b = s["baseline"]
        out.print(f"baseline concat-and-chunk at {b['length']:,}: average context length "
                  f"{b['avg_context_length']:,}; cross-document attention "
                  f"{b['cross_document_attention_share']:.1%} of attention pairs")


@app.command("convert-model")
def convert_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the safetensors checkpoint.")],
    gguf: Annotated[Path | None, typer.Option(help="GGUF file (default: the bundled SmolLM2-135M).")] = None,
) -> None:
    """Dequantize a GGUF into a safetensors checkpoint (for the vllm engine or transformers)."""
    from lendata.models import export_hf

    out.print(f"checkpoint: {export_hf(out_dir, gguf)}")


def main() -> None:  # pragma: no cover
    app()

from lendata import cli_versions  # noqa: E402,F401  (registers show, diff, export)

"""`lendata ls`, `query`, `validate`, `report` and `convert-model`: reading what the store holds."""

from __future__ import annotations

import io
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lendata.cli._app import QueryStoreOpt, StoreOpt, app, err, fail, out, store_root


@app.command("ls")
def ls_(store: StoreOpt = None) -> None:
    """List datasets, their versions and rows."""
    from lendata import store as st

    root = store_root(store)
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

    root = store_root(store)
    try:
        if out_file is not None:
            out_file = check_output(out_file, root, "--out")
        df = run(root, sql)
    except (QueryError, ValueError) as e:
        fail(str(e))
    try:
        _write_result(df, fmt, out_file)
    except OSError as e:
        fail(f"cannot write {out_file}: {e.strerror or e}")


def _write_result(df, fmt: Format, out_file: Path | None) -> None:
    from lendata.atomic import write_atomic

    if fmt is Format.parquet:
        if out_file is None:
            fail("--format parquet needs --out FILE")
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
        problems, summary = validate_version(store_root(store), ref)
    except (StoreError, ValueError) as e:
        fail(str(e))
    for line in summary:
        out.print(line)
    if problems:
        for p in problems:
            err.print(f"[red]problem:[/] {p}")
        raise typer.Exit(1)
    out.print("[bold green]valid[/]")


@app.command()
def report(
    ref: str = typer.Argument(..., help="DATASET or DATASET@VERSION"),
    out_dir: Path = typer.Option(None, "--to", help="folder for index.html and the PNGs "
                                                     "(default: <store>/_work/<dataset>/report-<version>)"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
    store: StoreOpt = None,
) -> None:
    """An HTML page and PNG plots: length histograms per split (words, tokens), target vs produced length,
    quarantine reasons, truncation and repetition rates; plus what the version's method reports (the bucket
    statistics of a decompose build)."""
    from lendata import store as st
    from lendata.paths import check_output
    from lendata.report import render

    root = store_root(store)
    try:
        version = st.open_version(root, ref)
        if out_dir is not None:  # the default is the store's _work folder; a published version is never hit
            out_dir = check_output(out_dir, root, "--to")
    except (st.StoreError, ValueError) as e:
        fail(str(e))
    data = render(version, root, out_dir)
    section = data.get("section")
    if as_json:
        print(json.dumps(data, default=str))
        return
    t = Table("split", "rows", "main text", "truncated", "repetition", "produced/target (median)")
    for split, s in data["splits"].items():
        fit = s.get("target_vs_produced")
        t.add_row(split, f"{s['rows']:,}", str(s.get("column", "")), str(s.get("truncation_rate", "—")),
                  str(s.get("repetition_rate", "—")), f"{fit['median_ratio']:.2f}" if fit else "—")
    out.print(t)
    flagged = sum(len(s.get("flagged", [])) for s in data["splits"].values())
    if flagged:
        out.print(f"flagged: {flagged} kept row(s) cut at their token limit or repeating themselves (listed on "
                  "the page and in report.json)")
    if data["rejections"]:
        out.print("rejections: " + "; ".join(f"{r} ({n})" for r, n in list(data["rejections"].items())[:6]))
    if section is not None:
        if section["table"]:
            header, rows = section["table"]
            t = Table(*header)
            for row in rows:
                t.add_row(*row)
            out.print(t)
        for line in section["lines"]:
            out.print(line)
    out.print(f"report: {data['html']}")


@app.command("convert-model")
def convert_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the safetensors checkpoint.")],
    gguf: Annotated[Path | None, typer.Option(help="GGUF file (default: the bundled SmolLM2-135M).")] = None,
) -> None:
    """Dequantize a GGUF into a safetensors checkpoint (for the vllm engine or transformers)."""
    from lendata.models import export_hf

    out.print(f"checkpoint: {export_hf(out_dir, gguf)}")

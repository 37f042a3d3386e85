"""`lendata show`, `diff` and `export`: what a version holds, how two differ, and its Hugging Face Hub layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lendata.cli._app import StoreOpt, app, fail, out, store_root


def _open(root: Path, ref: str):
    from lendata import store as st

    try:
        return st.open_version(root, ref)
    except (st.StoreError, ValueError) as e:
        fail(str(e))


def _card_inputs(version, root: Path, licence: str, plots: bool) -> tuple[str, list[Path], dict]:
    """What a dataset card needs: the licence (option, else the recipe's, else `other`), the report's plots,
    and the version's description, computed once for both."""
    from lendata.describe import describe

    stats = describe(version)
    pngs = []
    if plots:
        from lendata.report import render

        pngs = [Path(p) for p in render(version, root, stats=stats)["plots"]]
    return licence or str(version.manifest.get("recipe_settings", {}).get("license") or "other"), pngs, stats


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="DATASET or DATASET@VERSION.")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Schema, rows per split and length statistics (words) of every text column of a version."""
    from lendata.describe import describe

    d = describe(_open(store_root(store), ref))
    if as_json:
        print(json.dumps(d, ensure_ascii=False, default=str))
        return
    out.print(f"[bold]{d['dataset']}@{d['version']}[/]  created {d['created']}  recipe {d['recipe']}  "
              f"engine {d['engine']}  model {d['model']}\ncontent hash {d['content_hash']}")
    t = Table("split", "rows", "files", "bytes", "columns")
    for name, s in d["splits"].items():
        t.add_row(name, f"{s['rows']:,}", str(s["files"]), f"{s['bytes']:,}",
                  ", ".join(f"{c}: {k}" for c, k in s["schema"].items()))
    out.print(t)
    t = Table("split", "column", "rows", "mean words", "p10", "p50", "p90", "max", "mean chars",
              title="lengths of text columns")
    for name, s in d["splits"].items():
        for col, ls in s["lengths"].items():
            if ls.get("rows"):
                t.add_row(name, col, f"{ls['rows']:,}", f"{ls['mean_words']:,}", f"{ls['p10_words']:,}",
                          f"{ls['p50_words']:,}", f"{ls['p90_words']:,}", f"{ls['max_words']:,}",
                          f"{ls['mean_chars']:,}")
    out.print(t)


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="DATASET@VERSION (the old one).")],
    b: Annotated[str, typer.Argument(help="DATASET@VERSION (the new one).")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the difference as JSON.")] = False,
) -> None:
    """Rows per split, schema changes and the shift of every text column's length distribution
    (mean, p50 and p90 words, and the Kolmogorov-Smirnov distance: 0 same, 1 disjoint)."""
    from lendata.describe import diff as run

    root = store_root(store)
    d = run(_open(root, a), _open(root, b))
    if as_json:
        print(json.dumps(d, ensure_ascii=False, default=str))
        return
    out.print(f"[bold]{d['a']} → {d['b']}[/]" + ("  (identical content)" if d["same_content"] else ""))
    t = Table("split", "rows", "schema changes")
    for name, s in d["splits"].items():
        changes = [f"+{c}: {k}" for c, k in s.get("added_columns", {}).items()]
        changes += [f"-{c}: {k}" for c, k in s.get("removed_columns", {}).items()]
        changes += [f"{c}: {x} → {y}" for c, (x, y) in s.get("changed_types", {}).items()]
        rows = f"{s['rows_a'] if s['rows_a'] is not None else '—'} → {s['rows_b'] if s['rows_b'] is not None else '—'}"
        t.add_row(name, rows, "; ".join(changes) or ("split only in one version" if None in (s["rows_a"],
                                                                                              s["rows_b"]) else ""))
    out.print(t)
    t = Table("split", "column", "mean words", "p50", "p90", "KS", title="length shift")
    for name, s in d["splits"].items():
        for col, x in s.get("length_shift", {}).items():
            t.add_row(name, col, *(f"{u:,} → {v:,}" for u, v in (x["mean_words"], x["p50_words"], x["p90_words"])),
                      f"{x['ks']:.3f}")
    out.print(t)


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="DATASET@VERSION (or DATASET for the latest).")],
    target: Annotated[Path, typer.Argument(help="Folder to write the Hub layout into.")],
    store: StoreOpt = None,
    licence: Annotated[str, typer.Option("--license", help="The card's licence (a Hub licence id).")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty folder.")] = False,
    plots: Annotated[bool, typer.Option(help="Render the length report's plots into the card.")] = True,
) -> None:
    """Write `data/<split>-NNNNN-of-NNNNN.parquet` and a README.md dataset card: the Hugging Face layout that
    `datasets.load_dataset(DIR)` and `lendata push` read."""
    from lendata.hub import ExportError
    from lendata.hub import export as run

    root = store_root(store)
    version = _open(root, ref)
    licence, pngs, stats = _card_inputs(version, root, licence, plots)
    try:
        res = run(version, target, licence=licence, plots=pngs, overwrite=overwrite, stats=stats)
    except ExportError as e:
        fail(str(e))
    out.print(f"[bold green]{version.dataset}@{version.version}[/] exported to {res['path']}: "
              + ", ".join(f"{s} {n:,} rows" for s, n in res["splits"].items()) + f"; {res['files']} files")


@app.command()
def push(
    ref: Annotated[str, typer.Argument(help="DATASET@VERSION (or DATASET for the latest).")],
    repo: Annotated[str, typer.Option("--repo", help="The Hub dataset repo, ORG/NAME.")],
    store: StoreOpt = None,
    private: Annotated[bool | None, typer.Option(
        "--private/--public", help="The repo's visibility: a new repo is created so; an existing repo with the "
        "other visibility is refused. Default: keep an existing repo's, create a new one public.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Export and list the files; no network.")] = False,
    licence: Annotated[str, typer.Option("--license", help="The card's licence (a Hub licence id).")] = "",
    plots: Annotated[bool, typer.Option(help="Render the length report's plots into the card.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Publish a version to the Hugging Face Hub: one commit with the data files and the dataset card, tagged
    v<VERSION>. The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT points at another Hub."""
    from lendata.hub import ExportError, PushError
    from lendata.hub import push as run

    root = store_root(store)
    version = _open(root, ref)
    licence, pngs, stats = _card_inputs(version, root, licence, plots)
    try:
        res = run(version, repo, private=private, dry_run=dry_run, licence=licence, plots=pngs, stats=stats)
    except (PushError, ExportError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(res))
        return
    if res["dry_run"]:
        out.print(f"dry run: would upload {len(res['files'])} files to {repo} and tag {res['tag']}:")
        for f in res["files"]:
            out.print(f"  {f}")
        return
    out.print(f"[bold green]{version.dataset}@{version.version}[/] pushed to {repo}: commit {res['commit']}, "
              f"tag {res['tag']} ({len(res['files'])} files)")

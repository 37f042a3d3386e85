"""The typer app every command module registers on, and what they share: the consoles, the store option,
the error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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


def store_root(store: Path | None) -> Path:
    from lendata.paths import store_root

    return store_root(store)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)

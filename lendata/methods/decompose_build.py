"""A `decompose` recipe build without Prefect: resolve the corpus and tokenizer, stream, publish, report."""

from __future__ import annotations

import dataclasses
import sysconfig
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lendata import store as st
from lendata.build import BuildReport, input_identity
from lendata.corpus import doc_batches, prefetch
from lendata.inputs import InputError
from lendata.lengths import load_tokenizer
from lendata.methods.decompose import Settings, token_type
from lendata.methods.decompose_run import decompose_corpus, summary
from lendata.recipes import resolve_input

STDLIB = "@stdlib"  # the running Python's standard library sources: real text on every machine


def corpus_path(recipe: dict[str, Any]) -> Path:
    value = str(recipe["input"])
    if value == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    return resolve_input(recipe, value)


def build(recipe: dict[str, Any], store: Path, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    s = Settings.from_recipe(recipe)
    tokenizer = load_tokenizer(recipe.get("tokenizer"))
    eos_id = None
    if s.eos_token:
        eos_id = tokenizer.token_to_id(s.eos_token)
        if eos_id is None:
            raise InputError(f"the tokenizer has no token {s.eos_token!r} (set eos_token to one it has, or null)")
    ttype = token_type(int(recipe.get("vocab_size") or tokenizer.get_vocab_size()))
    path = corpus_path(recipe)
    batches = doc_batches(path, tokenizer, eos_id, text_field=recipe.get("text_field", "text"),
                          token_field=recipe.get("token_field"), glob=recipe.get("glob", "**/*.txt"),
                          batch_docs=s.batch_docs)
    meta = {"recipe": recipe["_name"], "recipe_settings": {k: v for k, v in recipe.items() if not k.startswith("_")},
            "settings": dataclasses.asdict(s), "input": str(path), "tokenizer": recipe.get("tokenizer") or "bundled",
            "inputs": input_identity(recipe)}
    with Progress(SpinnerColumn(), TextColumn("[bold]decompose[/] {task.fields[docs]:,} documents, "
                                              "{task.fields[tokens]:,} tokens"), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("decompose", total=None, docs=0, tokens=0)

        def tick(docs: int, tokens: int) -> None:
            f = bar.tasks[0].fields
            bar.update(task, docs=f["docs"] + docs, tokens=f["tokens"] + tokens)

        with st.Stage(store, recipe["dataset"]) as stage:
            stats = decompose_corpus(prefetch(batches), stage, s, ttype, on_batch=tick)
            if stats["documents"] == 0:
                raise InputError(f"{path}: no readable document (glob {recipe.get('glob')!r})")
            version = stage.publish(str(recipe.get("version", st.AUTO)), overwrite,
                                    meta={**meta, "decomposition": stats, "summary": summary(stats, s)})
    return BuildReport(dataset=version.dataset, version=version.version, path=str(version.path),
                       rows=version.rows("train"), quarantined=version.rows("quarantine"), engine_calls=0,
                       cache_hits=0, seconds=round(time.monotonic() - started, 2), unchanged=version.unchanged)

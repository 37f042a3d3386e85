"""`lendata score` and `lendata compare`: length metrics, the S_q quality judge, and win rates (raw and
length-controlled) between two sets of responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lendata.cli._app import StoreOpt, app, err, fail, out, store_root

EngineOpt = Annotated[str, typer.Option(help="Judge engine: llamacpp (embedded, default), openai or vllm.")]
EngineOptionOpt = Annotated[list[str] | None, typer.Option(
    "--engine-option", help="Judge engine option key=value, e.g. base_url=http://127.0.0.1:8000/v1, model=NAME.")]
CacheOpt = Annotated[Path | None, typer.Option(
    help="Response cache for the judge's calls (default: ~/.cache/lendata/judge/responses.sqlite).")]
AttemptsOpt = Annotated[int, typer.Option(help="Judge attempts per judgment (each with a new seed).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
SplitOpt = Annotated[str, typer.Option(help="For a dataset version (DATASET@VERSION): the split to judge.")]


def _judge_engine(name: str, options: list[str] | None, cache: Path | None):
    """The judge: any engine, wrapped in a response cache so a rerun judges nothing twice."""
    import yaml

    from lendata.engines import CachedEngine, ResponseCache, make_engine

    opts: dict[str, Any] = {}
    for pair in options or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            fail(f"--engine-option takes key=value, got {pair!r}", 2)
        try:
            opts[key.strip()] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            opts[key.strip()] = value
    try:
        engine = make_engine(name, **opts)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        fail(f"cannot start the judge engine {name}: {e}")
    return CachedEngine(engine, ResponseCache(_cache_path(cache)))


def _refuse_overwrite(out_file: Path | None, *protected: Path | None) -> None:
    """--to may not be one of the command's inputs or the judge's response cache."""
    if out_file is None:
        return
    for p in protected:
        if p is not None and Path(p).expanduser().resolve() == out_file:
            fail(f"--to {out_file} is one of this command's inputs (or the judge's cache): write it somewhere else")


def _cache_path(cache: Path | None) -> Path:
    from lendata.paths import user_cache

    return cache or user_cache() / "judge" / "responses.sqlite"


def _progress(total: int, what: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=total)
    return bar, (lambda _i, _j: bar.advance(task))


def _write_rows(out_file: Path | None, rows: list[dict[str, Any]], as_list: bool = False) -> None:
    if out_file is None:
        return
    from lendata.atomic import write_atomic

    text = (json.dumps(rows, ensure_ascii=False, indent=1) if as_list
            else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    try:
        write_atomic(out_file, text)
    except OSError as e:
        fail(f"cannot write {out_file}: {e.strerror or e}")


@app.command()
def score(
    file: Annotated[str, typer.Argument(help="JSONL or Parquet of responses, or DATASET@VERSION (sq).")],
    metric: Annotated[str, typer.Option(
        help="sl (LongBench-Write S_l), longen, ruler (PM/FM), lveval (keyword-recall gated F1), or sq "
             "(LongBench-Write's quality judge: six dimensions, with S_l and S̄ when targets are present).")] = "sl",
    target_field: Annotated[str | None, typer.Option(help="Field with the target length.")] = None,
    response_field: Annotated[str | None, typer.Option(help="Field with the response (default: messages).")] = None,
    counter: Annotated[str | None, typer.Option(help="Word counter: longwriter, longen or ruler.")] = None,
    out_file: Annotated[Path | None, typer.Option("--to", help="Write per-row scores here (.jsonl).")] = None,
    as_json: JsonOpt = False,
    best_of_answers: Annotated[bool, typer.Option(
        help="lveval: score an item's best answer (LV-Eval scores the first).")] = False,
    engine: EngineOpt = "llamacpp",
    engine_option: EngineOptionOpt = None,
    cache: CacheOpt = None,
    attempts: AttemptsOpt = 3,
    split: SplitOpt = "train",
    store: StoreOpt = None,
) -> None:
    """Score a file of responses against their target lengths (or, for a method's metric, its answers); with
    `--metric sq`, have a judge engine score their quality."""
    from lendata.inputs import InputError
    from lendata.paths import check_output

    try:
        if out_file is not None:
            out_file = check_output(out_file, None, "--to")
    except ValueError as e:
        fail(str(e))
    if metric == "sq":
        _score_quality(file, response_field, target_field, out_file, as_json, engine, engine_option, cache,
                       attempts, split, store, counter or "longwriter")
        return
    _refuse_overwrite(out_file, Path(file))
    from lendata.scoring import score_file

    try:
        rows, summary = score_file(file, metric, target_field, response_field, counter, best_of_answers)
    except (InputError, ValueError) as e:
        fail(str(e))
    for why in summary["skipped"]:
        err.print(f"skipped {why}", highlight=False)
    _write_rows(out_file, rows)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    if not rows:
        fail("no row had both a response and a target length")
    t = Table("target", "rows", "mean words", f"mean {metric}")
    for target, v in summary["by_target"].items():
        t.add_row(str(target), str(v["rows"]), f"{v['mean_words']:.0f}", f"{v['mean_score']:.1f}")
    out.print(t)
    if summary.get("groups"):  # LV-Eval's table: a score per dataset and level
        t = Table("dataset", "level", "rows", "score")
        for g in summary["groups"]:
            t.add_row(str(g["dataset"]), str(g["level"]), str(g["n"]), f"{g['score']:.2f}")
        out.print(t)
    if summary.get("levels"):  # Ruler's table: PM and FM per level and overall
        t = Table("level", "rows", "PM", "FM")
        for level, v in summary["levels"].items():
            t.add_row(level, str(v["n"]), f"{v['pm']:.1f}", f"{v['fm']:.1f}")
        out.print(t)
    extra = f" (PM {summary['pm']:.1f}, FM {summary['fm']:.1f})" if "pm" in summary else ""
    out.print(f"{metric}: mean {summary['mean']:.2f} over {summary['rows']} rows{extra}")


def _score_quality(file, response_field, target_field, out_file, as_json, engine, engine_option, cache,
                   attempts, split, store, counter) -> None:
    from lendata.inputs import InputError
    from lendata.judging import judges, run

    try:
        source = run.open_source(file, store_root(store), split)
        settings = judges.JudgeSettings(attempts=attempts)
    except (InputError, ValueError) as e:
        fail(str(e))
    _refuse_overwrite(out_file, source.path, _cache_path(cache))
    judge = _judge_engine(engine, engine_option, cache)
    try:
        bar, tick = _progress(len(source.rows), "judging quality")
        with bar:
            rows, summary = run.score_quality(source, judge, settings, response_field, target_field, tick,
                                              counter)
    finally:
        judge.close()
    for why in summary["skipped"]:
        err.print(f"skipped {why}", highlight=False)
    for why in summary["failures"]:
        err.print(f"[yellow]judge failed[/] {why}", highlight=False)
    _write_rows(out_file, rows)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    if not summary["judged"]:
        fail(f"the judge scored none of the {summary['rows']} rows ({summary['failed']} failed)")
    t = Table("dimension", "score (0-100)")
    for d, v in summary["dimensions"].items():
        t.add_row(d, f"{v:.1f}")
    out.print(t)
    line = f"S_q {summary['sq']:.1f} over {summary['judged']} rows judged by {judge.model_id}"
    if summary["failed"]:
        line += f"; the judge failed on {summary['failed']} (listed above, not scored)"
    if "sl" in summary:
        line += f"; S_l {summary['sl']:.1f}, S̄ {summary['s_bar']:.1f}"
    out.print(line)


@app.command()
def compare(
    a: Annotated[str | None, typer.Argument(help="System A (the baseline): a JSONL/Parquet file or DATASET@VERSION.")]
    = None,
    b: Annotated[str | None, typer.Argument(help="System B: responses to the same instructions.")] = None,
    annotations: Annotated[Path | None, typer.Option(
        help="Preferences that already exist, in AlpacaEval's annotation format (instead of A and B).")] = None,
    response_field: Annotated[str | None, typer.Option(help="Field with the response (default: messages).")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--to", help="Write the judged pairs here, in AlpacaEval's annotation format (.json).")] = None,
    as_json: JsonOpt = False,
    engine: EngineOpt = "llamacpp",
    engine_option: EngineOptionOpt = None,
    cache: CacheOpt = None,
    attempts: AttemptsOpt = 3,
    split: SplitOpt = "train",
    store: StoreOpt = None,
) -> None:
    """Win rate of B over A, raw and length-controlled (AlpacaEval 2.0's GLM): a judge compares each pair of
    responses to the same instruction in both orders; or give existing preferences with --annotations."""
    from lendata.inputs import InputError
    from lendata.judging import judges, run
    from lendata.judging import winrate as wr
    from lendata.paths import check_output

    try:
        if out_file is not None:
            out_file = check_output(out_file, None, "--to")
    except ValueError as e:
        fail(str(e))
    if (annotations is None) == (a is None and b is None) or (annotations is None and (a is None or b is None)):
        fail("give two systems A and B, or --annotations FILE (not both)", 2)
    if annotations is not None and out_file is not None:
        fail("--to writes the pairs a judge compares; with --annotations they exist already", 2)
    try:
        if annotations is not None:
            judged, skipped = wr.read_annotations(annotations)
            summary = run.summarize(judged, skipped)
        else:
            settings = judges.JudgeSettings(attempts=attempts)
            src_a, src_b = run.open_source(a, store_root(store), split), run.open_source(b, store_root(store), split)
            _refuse_overwrite(out_file, src_a.path, src_b.path, _cache_path(cache))
            judge = _judge_engine(engine, engine_option, cache)
            try:
                bar, tick = _progress(2 * min(len(src_a.rows), len(src_b.rows)), "judging pairs")
                with bar:
                    rows, summary = run.compare(src_a, src_b, judge, settings, response_field, tick)
            finally:
                judge.close()
            _write_rows(out_file, rows, as_list=True)  # written even when no pair was judged: the errors are in it
    except (InputError, wr.AnnotationError, ValueError) as e:
        fail(str(e))
    if not summary["n"]:
        for why in summary.get("failures", []):
            err.print(f"[yellow]judge failed[/] {why}", highlight=False)
        fail(f"the judge decided none of the pairs ({summary.get('failed', 0)} failed)"
             + (f"; the pairs and their errors are in {out_file}" if out_file else ""))
    for why in summary["skipped"]:
        err.print(f"skipped {why}", highlight=False)
    for why in summary.get("failures", []):
        err.print(f"[yellow]judge failed[/] {why}", highlight=False)
    for s in summary["systems"]:
        if s.get("warning"):
            err.print(f"[yellow]warning[/] {s['generator_2']}: {s['warning']}", highlight=False)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    t = Table("A (baseline)", "B", "pairs", "win rate of B", "LC win rate", "LC s.e.", "length coef.", "GLM")
    for s in summary["systems"]:
        t.add_row(s["generator_1"], s["generator_2"], str(s["n"]), f"{s['win_rate']:.1f}",
                  f"{s['lc_win_rate']:.1f}", f"{s['lc_standard_error']:.2f}", f"{s['length_coefficient']:+.2f}",
                  s["glm"])
    out.print(t)
    out.print("length coefficient > 0: the judge favoured the longer answer; the LC win rate is what the GLM "
              "predicts with no length difference")

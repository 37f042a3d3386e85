"""`eval`: evaluation runs over LongBench-Write-style sets, LongWrite-Ruler, LonGen and lendata LV-Eval builds."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.cli import app
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool
from lendata.inputs import InputError
from lendata.judging import judges
from lendata.lengths import length_score, longen_score
from lendata.methods.eval import lveval_shape
from lendata.methods.lveval.levels import RECORD_SCHEMA
from tests.test_agentwrite import _words

WRITES = 400  # the scripted model writes 400 words whatever it is asked


def _engine(req):
    prompt = req.messages[0]["content"]
    if req.json_schema == judges.QUALITY_SCHEMA:
        return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, 4)}))
    if "Answer:" in prompt or "回答：" in prompt:  # LV-Eval: answer with the capital named in the question
        return Result(text="Paris" if "France" in prompt else "Berlin", completion_tokens=1)
    return Result(text=_words(WRITES - 1) + " end.", completion_tokens=WRITES)


def _run(tmp_path, scripted, store=None, **sets):
    recipe = recipes.load("eval", sets)
    pool = EnginePool(lambda n, o: CachedEngine(scripted(_engine), ResponseCache(tmp_path / "c")), "llamacpp")
    store = store or tmp_path / "store"
    builds.run(recipe, store, progress=False, engines=pool)
    v = st.open_version(store, "eval")
    return v, v.read("results").to_pylist()


def test_longbench_write_scores_sl_per_range_and_sq_with_s_bar(tmp_path, scripted):
    src = tmp_path / "set.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Write {n} words on tides.", "length": n}) + "\n"
                           for n in (300, 1000, 5000)))
    v, rows = _run(tmp_path, scripted, input=str(src), n=None, judge="same")
    by_target = {r["target_words"]: r for r in rows}
    for n, r in by_target.items():
        assert r["score"] == pytest.approx(length_score(n, WRITES)) and r["metric"] == "sl" and r["sq"] == 75
    assert {r["level"] for r in rows} == {"[0, 500)", "[500, 2000)", "[4000, ∞)"}
    summary = v.manifest["eval"]
    mean_sl = sum(length_score(n, WRITES) for n in (300, 1000, 5000)) / 3
    assert summary["all"]["score"] == pytest.approx(mean_sl) and summary["all"]["sq"] == 75
    assert summary["all"]["s_bar"] == pytest.approx((mean_sl + 75) / 2)
    res = CliRunner().invoke(app, ["report", "eval", "--store", str(tmp_path / "store"), "--to", str(tmp_path / "r")])
    assert res.exit_code == 0 and "S̄" in res.output and "[4000, ∞)" in res.output


def test_longen_reads_the_shipped_prompts_and_scores_their_constraints(tmp_path, scripted):
    """All 240 shipped prompts, answers of 500 to 7,000 words: every score is LonGen's for the row's own
    constraint (its type and bounds read back from the shipped file), and the four types all occur."""
    from lendata.methods.eval.method import LONGEN
    from lendata.methods.shared.constraints import extract

    lengths = (500, 2100, 3500, 7000)

    def varied(req):
        n = lengths[req.seed % 4]
        return Result(text=_words(n - 1) + " end.", completion_tokens=n)

    recipe = recipes.load("eval", {"suite": "longen", "input": "", "n": None})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(varied), ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, tmp_path / "store", progress=False, engines=pool)
    rows = st.open_version(tmp_path / "store", "eval").read("results").to_pylist()
    shipped = {json.loads(x)["query"].strip(): extract(json.loads(x)["constraint"])
               for x in LONGEN.read_text(encoding="utf-8").splitlines() if x.strip()}
    assert len(rows) == 240 and {r["constraint_type"] for r in rows} == {"about", "range", "above", "below"}
    for r in rows:
        c = shipped[r["prompt"]]
        assert (r["constraint_type"], r["target_words"]) == (c.ctype, c.low)
        assert r["score"] == pytest.approx(100 * longen_score(c.ctype, c.low, r["response_words"], c.high))
    scores = [r["score"] for r in rows]
    assert any(x == 100 for x in scores) and any(x == 0 for x in scores) and any(0 < x < 100 for x in scores)


def _lveval_store(tmp_path):
    def rec(i, level, question, answer, lang="en"):
        return {"id": f"r{i}", "input": question, "context": "Some passages. " * (2000 if level == "64k" else 20),
                "answers": [answer], "length": 100, "context_length": 10, "dataset": "lv", "language": lang,
                "answer_keywords": answer, "confusing_facts": [], "level": level, "level_length": 16000,
                "unit": "words", "depth": [0.5], "evidence_offsets": [0], "fact_offsets": [], "distractors": 0,
                "replacements": [], "item_id": f"i{i}", "source": "x"}
    tables = {"16k": pa.Table.from_pylist([rec(0, "16k", "What is the capital of France?", "Paris"),
                                           rec(1, "16k", "What is the capital of Spain?", "Madrid")],
                                          schema=RECORD_SCHEMA),
              "64k": pa.Table.from_pylist([rec(2, "64k", "What is the capital of France?", "Paris")],
                                          schema=RECORD_SCHEMA)}
    store = tmp_path / "store"
    st.commit(store, "lv", tables)
    return store


def test_lveval_runs_every_level_in_lv_evals_shape_and_cuts_the_middle(tmp_path, scripted):
    store = _lveval_store(tmp_path)
    engine = scripted(_engine)
    engine.context_window = 4096
    recipe = recipes.load("eval", {"suite": "lveval", "input": "lv", "n": None, "target_field": None})
    pool = EnginePool(lambda n, o: CachedEngine(engine, ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, store, progress=False, engines=pool)
    rows = st.open_version(store, "eval").read("results").to_pylist()
    scores = {(r["level"], r["prompt"]): r["score"] for r in rows}
    assert scores[("16k", "What is the capital of France?")] == 100
    assert scores[("16k", "What is the capital of Spain?")] == 0
    long = next(r for r in rows if r["level"] == "64k")
    assert long["prompt_truncated"] and not any(r["prompt_truncated"] for r in rows if r["level"] == "16k")
    asked = [r for r in engine.seen if r.messages[0]["content"].startswith("Please answer")]
    assert {r.max_tokens for r in asked} == {64} and {r.temperature for r in asked} == {0.0}
    [cut] = [r for r in asked if r.messages[0]["content"].count("Some passages") > 100]
    text = cut.messages[0]["content"]  # the question at the end and the task at the start both survive the cut
    assert text.startswith(lveval_shape.frame("lv", "en")[0]) and text.endswith("Answer:")
    assert "capital of France" in text
    assert 3000 < len(text.split()) <= 4096 - 64 - 64 < 2 * 2000  # cut to the window, from 4,000 words
    summary = st.open_version(store, "eval").manifest["eval"]
    assert summary["levels"]["16k"]["score"] == 50 and summary["levels"]["64k"]["score"] == 100


def test_settings_are_checked():
    with pytest.raises(recipes.RecipeError, match="S_q"):
        recipes.load("eval", {"suite": "lveval", "judge": "same"})
    with pytest.raises(recipes.RecipeError, match="judge is 'x'"):
        recipes.load("eval", {"judge": "x"})


@pytest.mark.slow
def test_embedded_eval_runs_from_the_cli(tmp_path):
    """The bundled model under test: a LongBench-Write-style run and an LV-Eval run whose 64k prompt the 2,048-
    token window forces to be cut in the middle; every answer scored, the report's table printed."""
    store = _lveval_store(tmp_path)
    res = CliRunner().invoke(app, ["build", "eval", "--store", str(store), "--no-progress", "--set", "n=2",
                                   "--set", "max_tokens=64", "--set", "dataset=lbw"])
    assert res.exit_code == 0, res.output
    rows = st.open_version(store, "lbw").read("results").to_pylist()
    assert len(rows) == 2 and all(r["metric"] == "sl" and 0 <= r["score"] <= 100 for r in rows)
    assert all(r["finish_reason"] == "length" and r["response_tokens"] <= 64 for r in rows)
    res = CliRunner().invoke(app, ["build", "eval", "--store", str(store), "--no-progress", "--set", "suite=lveval",
                                   "--set", "input=lv", "--set", "n=null", "--set", "target_field=null",
                                   "--set", "engine_options={n_ctx: 2048}", "--set", "dataset=lv_eval"])
    assert res.exit_code == 0, res.output
    v = st.open_version(store, "lv_eval")
    rows = v.read("results").to_pylist()
    assert len(rows) == 3 and {r["level"] for r in rows} == {"16k", "64k"}
    assert [r["prompt_truncated"] for r in rows if r["level"] == "64k"] == [True]
    assert all(r["metric"] == "gated_f1" and r["response_tokens"] <= 64 for r in rows)
    report = CliRunner().invoke(app, ["report", "lv_eval", "--store", str(store), "--to", str(tmp_path / "r")])
    assert report.exit_code == 0 and "gated_f1" in report.output


def test_lveval_suite_checks_its_input_and_lists_empty_levels(tmp_path, scripted):
    from lendata.methods.lveval.levels import RECORD_SCHEMA

    store = _lveval_store(tmp_path)
    st.commit(store, "lv2", {"16k": pa.Table.from_pylist([], schema=RECORD_SCHEMA),
                             "32k": st.open_version(store, "lv").read("16k")})
    st.commit(store, "sft", {"train": pa.table({"id": ["a"], "instruction": ["q"]})})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(_engine), ResponseCache(tmp_path / "c")), "llamacpp")
    with pytest.raises(InputError, match="not an LV-Eval build: its records have no input"):
        builds.run(recipes.load("eval", {"suite": "lveval", "input": "sft", "target_field": None}), store,
                   progress=False, engines=pool)
    recipe = recipes.load("eval", {"suite": "lveval", "input": "lv2", "n": None, "target_field": None,
                                   "levels": ["32k", "32k", "16k"]})
    builds.run(recipe, store, progress=False, engines=pool)
    v = st.open_version(store, "eval")
    assert v.rows("results") == 2  # 32k read once
    assert v.manifest["eval"]["levels"]["16k"]["n"] == 0
    assert v.manifest["eval_input"]["version"] == "lv2@0.1.0"
    assert {r["record_id"] for r in v.read("results").to_pylist()} == {"r0", "r1"}

"""Quality gates in builds (issue 17, item 5): `judge` and `min_sq` on direct and agentwrite."""

from __future__ import annotations

import json

import pytest

from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool
from lendata.judging import judges
from tests.test_agentwrite import _words


def _instructions(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Write {w} words about {topic}.", "length": w}) + "\n"
                           for w, topic in ((20, "GOOD rivers"), (20, "BAD mountains"), (20, "UNJUDGEABLE lakes"))))
    return src


def _engine(req):
    """Writes a text; as a judge, scores GOOD 5s, BAD 1s, and cannot answer for UNJUDGEABLE."""
    if req.json_schema == judges.QUALITY_SCHEMA:
        prompt = req.messages[0]["content"]
        if "UNJUDGEABLE" in prompt:
            return Result(text="I refuse")
        score = 5 if "GOOD" in prompt else 1
        return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, score)}))
    if req.json_schema is not None:  # an AgentWrite plan
        return Result(text=json.dumps({"paragraphs": [{"main_point": "only point", "words": 20}]}))
    n = max(20, req.min_tokens)
    return Result(text=_words(n - 1, start=len(req.messages[0]["content"]) * 1000) + " end.", completion_tokens=n)


def _build(tmp_path, scripted, method="direct", **sets):
    recipe = recipes.load(method, {"input": str(_instructions(tmp_path)), "instruction_field": "prompt",
                                   "target_field": "length", "max_quarantine_share": 1.0, **sets})
    pool = EnginePool(lambda name, options: CachedEngine(scripted(_engine), ResponseCache(tmp_path / "c")),
                      "llamacpp")
    builds.run(recipe, tmp_path / "store", progress=False, engines=pool)
    v = st.open_version(tmp_path / "store", recipe.dataset)
    quarantine = v.read("quarantine").to_pylist() if "quarantine" in v.splits else []
    return v.read("train").to_pylist(), quarantine


def test_rows_below_min_sq_are_quarantined_with_their_scores(tmp_path, scripted):
    rows, quarantine = _build(tmp_path, scripted, judge="same", min_sq=50)
    assert [r["instruction"] for r in rows] == ["Write 20 words about GOOD rivers."]
    [kept] = rows
    assert kept["sq"] == 100 and kept["judge_scores"]["breadth_and_depth"] == 5
    assert kept["judge_model"] == "scripted-1" and kept["judge_error"] is None
    reasons = {json.loads(q["record"])["instruction"]: q["reason"] for q in quarantine}
    assert reasons["Write 20 words about BAD mountains."] == "S_q 0.0 is below min_sq 50"
    assert "could not score it" in reasons["Write 20 words about UNJUDGEABLE lakes."]
    assert "after 3 attempts" in reasons["Write 20 words about UNJUDGEABLE lakes."]
    bad = next(json.loads(q["record"]) for q in quarantine if "BAD" in q["record"])
    assert bad["sq"] == 0 and bad["judge_scores"]["relevance"] == 1  # the scores travel with the row


def test_a_judge_without_min_sq_scores_every_row_and_keeps_it(tmp_path, scripted):
    rows, quarantine = _build(tmp_path, scripted, judge="same")
    assert len(rows) == 3 and not quarantine
    by = {r["instruction"].split()[4]: r for r in rows}
    assert (by["GOOD"]["sq"], by["BAD"]["sq"], by["UNJUDGEABLE"]["sq"]) == (100, 0, None)
    assert "not JSON" in by["UNJUDGEABLE"]["judge_error"]


def test_no_judge_leaves_the_columns_out_and_min_sq_needs_a_judge(tmp_path, scripted):
    rows, _ = _build(tmp_path, scripted)
    assert "sq" not in rows[0]
    with pytest.raises(recipes.RecipeError, match="min_sq needs a judge"):
        recipes.load("direct", {"min_sq": 40})
    with pytest.raises(recipes.RecipeError, match="0..100"):
        recipes.load("agentwrite", {"judge": "same", "min_sq": 140})


def test_agentwrite_has_the_same_gate(tmp_path, scripted):
    rows, quarantine = _build(tmp_path, scripted, method="agentwrite", judge="same", min_sq=50, n=2,
                              min_paragraph=10, max_paragraph=20)
    gated = [q for q in quarantine if q["stage"] == "quality"]
    assert all(r["sq"] == 100 for r in rows)
    assert any("BAD mountains" in q["record"] and "below min_sq 50" in q["reason"] for q in gated)


def test_self_lengthen_gates_its_final_queries(tmp_path, scripted):
    from tests.test_methods import _answer, _self_lengthen_build

    def answer(req):
        if req.json_schema == judges.QUALITY_SCHEMA:  # half the queries score 5s, half 1s
            score = 5 if len(req.messages[0]["content"]) % 2 else 1
            return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, score)}))
        return _answer(req)

    v = _self_lengthen_build(tmp_path, scripted(answer), "gated",
                             quality={"judge": "same", "min_sq": 50}, queries={"min_words": 50})
    kept = v.read("queries").to_pylist()
    gated = [q for q in v.read("quarantine").to_pylist() if q["stage"] == "quality"]
    assert kept and gated
    assert all(q["sq"] == 100 and q["judge_scores"]["clarity"] == 5 for q in kept)
    assert all(q["reason"] == "S_q 0.0 is below min_sq 50" for q in gated)

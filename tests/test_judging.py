"""The judges: S_q (LongBench-Write) and the pairwise judge, their CLI (`lendata score --metric sq`, `lendata
compare`). Arithmetic and control flow with a scripted judge; the plumbing with the embedded SmolLM2 judge."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lendata.cli import app
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.judging import judges, run
from lendata.judging import winrate as wr


def _quality_reply(scores, analysis="ok"):
    return json.dumps({"Analysis": analysis, **dict(zip(judges.DIMENSIONS, scores, strict=True))})


def test_sq_is_the_mean_of_mean_minus_one_times_25():
    """Two rows: all 5s and all 1s give S_q 50; each dimension is (its mean - 1) × 25 (LongBench-Write)."""
    rows = [judges.Judgment(scores=dict(zip(judges.DIMENSIONS, s, strict=True))) for s in
            ([5, 5, 5, 5, 5, 5], [1, 1, 1, 1, 1, 1], [3, 4, 2, 5, 1, 3])]
    assert rows[0].sq == 100 and rows[1].sq == 0
    assert rows[2].sq == pytest.approx((2 + 3 + 1 + 4 + 0 + 2) * 25 / 6)
    s = judges.sq_summary(rows)
    assert s["dimensions"]["Relevance"] == pytest.approx((9 / 3 - 1) * 25)
    assert s["dimensions"]["Breadth and Depth"] == pytest.approx((7 / 3 - 1) * 25)
    assert s["sq"] == pytest.approx(sum(s["dimensions"].values()) / 6)


def test_a_failed_judgment_is_retried_with_a_new_seed_then_listed_never_scored_3(scripted):
    """The reference scores a missing dimension 3; here it is a failure after every attempt, with why."""
    def answer(req):
        instr = req.messages[0]["content"]
        if "ALWAYS-BAD" in instr:
            return Result(text=json.dumps({"Analysis": "x", "Relevance": 4}))  # five dimensions missing
        if "BAD-FIRST" in instr and req.seed == 0:
            return Result(text="The response is good.")
        return Result(text=_quality_reply([4, 4, 4, 4, 4, 4]))

    engine = scripted(answer)
    js = judges.judge_quality([("ALWAYS-BAD", "r"), ("BAD-FIRST", "r"), ("fine", "r")], engine,
                              judges.JudgeSettings(attempts=3))
    assert js[0].scores is None and "Accuracy is None" in js[0].error and "after 3 attempts" in js[0].error
    assert js[1].sq == 75 and js[1].attempts == 2
    assert js[2].sq == 75 and js[2].attempts == 1
    seeds = [r.seed for r in engine.seen if "ALWAYS-BAD" in r.messages[0]["content"]]
    assert seeds == [0, 1, 2]
    assert all(r.json_schema == judges.QUALITY_SCHEMA for r in engine.seen)
    s = judges.sq_summary(js)
    assert (s["judged"], s["failed"], s["sq"]) == (2, 1, 75)


def test_a_response_too_long_for_the_judge_is_a_listed_failure_not_truncated(scripted):
    engine = scripted(lambda req: Result(text=_quality_reply([5] * 6)))
    js = judges.judge_quality([("q", "word " * 5000), ("q", "short")], engine)
    assert js[0].scores is None and "too long for the judge" in js[0].error
    assert js[1].sq == 100
    assert len(engine.seen) == 1


def test_pairs_are_judged_in_both_orders_so_a_position_biased_judge_gives_ties(scripted):
    always_first = scripted(lambda req: Result(text='{"better": "a"}'))
    items = [("q1", "short", "a much longer answer"), ("q2", "x", "y")]
    got = judges.judge_pairs(items, always_first)
    assert [p.preference for p in got] == [1.5, 1.5]
    assert len(always_first.seen) == 4
    # a judge that always picks the longer answer prefers B in both orders
    def longer(req):
        text = req.messages[0]["content"]
        first = text.split("<Response a>\n")[1].split("\n</Response a>")[0]
        second = text.split("<Response b>\n")[1].split("\n</Response b>")[0]
        return Result(text=json.dumps({"better": "a" if len(first) > len(second) else "b"}))
    got = judges.judge_pairs(items[:1], scripted(longer))
    assert got[0].preference == 2.0 and (got[0].first_order, got[0].second_order) == ("b", "a")


def test_compare_judges_matched_instructions_and_lists_the_rest(scripted, tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"q{i}", "response": "word " * (10 + i)}) + "\n"
                         for i in range(12)) + '{"instruction": "only in a", "response": "x"}\n')
    b.write_text("".join(json.dumps({"instruction": f"q{i}", "response": "word " * (40 + i)}) + "\n"
                         for i in range(12)) + '{"instruction": "only in b", "response": "y"}\nnot json\n')
    judge = scripted(lambda req: Result(text='{"better": "b"}'))
    rows, summary = run.compare(run.open_source(str(a)), run.open_source(str(b)), judge)
    assert summary["n"] == 12 and len(rows) == 12
    assert f"{b}:13: no row of a has this instruction" in summary["skipped"]
    assert any("1 row(s) of a have no row of b" in s for s in summary["skipped"])
    assert any(f"{b}:14: invalid JSON" in s for s in summary["skipped"])
    assert {r["generator_1"] for r in rows} == {"a"} and {r["generator_2"] for r in rows} == {"b"}


def test_compare_cli_on_annotations_prints_the_json_the_issue_names(tmp_path):
    f = tmp_path / "ann.json"
    rows = [{"instruction": f"q{i}", "output_1": "a" * (100 + 3 * i), "output_2": "b" * (100 + (7 * i) % 90),
             "generator_1": "A", "generator_2": "B", "preference": 2 if i % 3 else 1} for i in range(40)]
    rows.append({"instruction": "bad", "output_1": "a", "output_2": "b", "generator_1": "A", "generator_2": "B",
                 "preference": 7})
    f.write_text(json.dumps(rows))
    res = CliRunner().invoke(app, ["compare", "--annotations", str(f), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"n", "win_rate", "lc_win_rate", "lc_standard_error", "length_coefficient"} <= set(got)
    assert got["n"] == 40 and got["win_rate"] == pytest.approx(100 * 26 / 40)
    assert any("[40]: preference 7 is not in [1, 2]" in s for s in got["skipped"])
    # the same numbers as the library, and a clear error for a missing file or no systems
    [lib] = wr.win_rates(wr.read_annotations(f)[0])
    assert got["lc_win_rate"] == pytest.approx(lib.lc_win_rate)
    res = CliRunner().invoke(app, ["compare", "--annotations", str(tmp_path / "none.json")])
    assert res.exit_code == 1 and "file not found" in res.output
    res = CliRunner().invoke(app, ["compare"])
    assert res.exit_code == 2 and "give two systems A and B, or --annotations" in res.output


@pytest.mark.slow
def test_embedded_judge_scores_quality_and_compares_through_the_cli(tmp_path):
    """Plumbing with the bundled SmolLM2 as the judge: every row is judged or listed as a failure with why, scores
    are integers 1..5 from a schema-constrained reply, targets add S_l and S̄, and a rerun is served from the
    cache. (The 135M judge's opinions mean nothing; the machinery is what is tested.)"""
    f = tmp_path / "responses.jsonl"
    texts = ["Paris is the capital of France. It lies on the Seine and is known for its museums.",
             "cat cat cat cat cat cat cat cat",
             "Rain forms when water vapour condenses into droplets heavy enough to fall."]
    f.write_text("".join(json.dumps({"instruction": f"Write about {t.split()[0]} in 20 words.", "response": t,
                                     "target_words": 20}) + "\n" for t in texts))
    cache = tmp_path / "judge.sqlite"
    args = ["score", str(f), "--metric", "sq", "--json", "--cache", str(cache), "--engine-option", "n_ctx=2048",
            "--to", str(tmp_path / "rows.jsonl")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["judged"] + summary["failed"] == 3 and len(summary["failures"]) == summary["failed"]
    assert summary["judge"]["engine"] == "llamacpp"
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    for r in rows:
        if r["judge_error"] is None:
            assert all(r[d] in (1, 2, 3, 4, 5) for d in judges.DIMENSIONS)
            assert 0 <= r["sq"] <= 100
        assert r["target"] == 20 and r["sl"] is not None
    assert summary["sl"] == pytest.approx(sum(r["sl"] for r in rows) / 3)
    if summary["sq"] is not None:
        assert summary["s_bar"] == pytest.approx((summary["sl"] + summary["sq"]) / 2)
    cached = len(ResponseCache(cache))
    again = CliRunner().invoke(app, args)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == summary
    assert len(ResponseCache(cache)) == cached

    g = tmp_path / "longer.jsonl"
    g.write_text("".join(json.dumps({"instruction": f"Write about {t.split()[0]} in 20 words.",
                                     "response": t + " " + t}) + "\n" for t in texts))
    res = CliRunner().invoke(app, ["compare", str(f), str(g), "--json", "--cache", str(cache),
                                   "--engine-option", "n_ctx=2048", "--to", str(tmp_path / "ann.json")])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["generator_1"] == "responses" and got["generator_2"] == "longer"
    assert got["n"] + got["failed"] == 3
    ann = json.loads((tmp_path / "ann.json").read_text())
    assert [a["preference"] in (1.0, 1.5, 2.0, None) for a in ann] == [True] * 3
    # the written annotations are AlpacaEval's format: they read back to the same win rates
    back = CliRunner().invoke(app, ["compare", "--annotations", str(tmp_path / "ann.json"), "--json"])
    assert json.loads(back.stdout.strip().splitlines()[-1])["win_rate"] == pytest.approx(got["win_rate"])


def test_cached_judge_engine_wrapper_counts_no_new_calls_on_rerun(scripted, tmp_path):
    engine = CachedEngine(scripted(lambda req: Result(text=_quality_reply([2] * 6))), ResponseCache(tmp_path / "c"))
    judges.judge_quality([("q", "r")], engine)
    judges.judge_quality([("q", "r")], engine)
    assert (engine.calls, engine.hits) == (1, 1)


def test_cli_refuses_to_overwrite_its_inputs_and_lists_bad_targets(tmp_path, monkeypatch, scripted):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "q", "response": "r", "target_words": "about 500"}) + "\n")
    before = a.read_text()
    for args in (["score", str(a), "--metric", "sq", "--to", str(a)],
                 ["compare", str(a), str(a), "--to", str(a)],
                 ["score", str(a), "--to", str(a)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "is one of this command's inputs" in res.output, args
    assert a.read_text() == before
    res = CliRunner().invoke(app, ["compare", str(a), "--annotations", str(a)])
    assert res.exit_code == 2 and "not both" in res.output
    # a target that is not a number is listed, and the row is still judged (no crash after the calls)
    judge = scripted(lambda req: Result(text=_quality_reply([3] * 6)))
    rows, summary = run.score_quality(run.open_source(str(a)), judge)
    assert rows[0]["sq"] == 50 and "sl" not in rows[0]
    assert any("target length is not a whole number" in s for s in summary["skipped"])


def test_compare_with_a_judge_that_prefers_b_in_both_orders(tmp_path, scripted):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"plain {i}"}) + "\n" for i in range(60)))
    b.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"BEST {'x' * (i % 7)}"}) + "\n"
                         for i in range(60)))

    def prefers_best(req):
        text = req.messages[0]["content"]
        first = text.split("<Response a>\n")[1].split("\n</Response a>")[0]
        return Result(text=json.dumps({"better": "a" if first.startswith("BEST") else "b"}))

    rows, summary = run.compare(run.open_source(str(a)), run.open_source(str(b)), scripted(prefers_best))
    assert summary["n"] == 60 and summary["win_rate"] == 100 and summary["lc_win_rate"] > 99
    assert {r["preference"] for r in rows} == {2.0}


def test_when_every_judgment_fails_the_pairs_are_still_written(tmp_path, monkeypatch):
    from lendata.cli import judge as cli_judge
    from tests.conftest import ScriptedEngine

    monkeypatch.setattr(cli_judge, "_judge_engine",
                        lambda *a: CachedEngine(ScriptedEngine(lambda req: Result(text="no")),
                                                ResponseCache(tmp_path / "c")))
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "q", "response": "r"}) + "\n")
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"instruction": "q", "response": "s"}) + "\n")
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--to", str(tmp_path / "pairs.json")])
    assert res.exit_code == 1 and "decided none of the pairs" in res.output
    [pair] = json.loads((tmp_path / "pairs.json").read_text())
    assert pair["preference"] is None and "A first: not JSON" in pair["judge_error"]


def test_a_misspelt_judge_engine_is_refused_when_the_recipe_loads():
    from lendata import recipes

    with pytest.raises(recipes.RecipeError, match="judge is 'smae'"):
        recipes.load("direct", {"judge": "smae", "min_sq": 40})
    with pytest.raises(recipes.RecipeError, match="judge is 'gpt-4o'"):
        recipes.load("self_lengthen", {"quality": {"judge": "gpt-4o"}})

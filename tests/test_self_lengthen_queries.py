"""Self-Lengthen's length-constrained queries as the reference builds them (eval/add_length_control.py):
type mix 0.40/0.25/0.10/0.25, granularity 2,000 with p = 0.2, bounds in [2,000, 8,000], zh numerals with
p = 0.5, an LLM rewrite that lendata checks (the constraint read back must be the one intended, else the
template, and the row says so), every query's constraint satisfied by its response under LonGen scoring."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lendata.engines.base import Result
from lendata.lengths import longen_score
from lendata.methods.self_lengthen import queries as q
from lendata.methods.shared.constraints import TYPES, Constraint, extract

EN, ZH = "Write about rivers.", "写一篇关于河流的文章。"


def test_type_frequencies_match_the_reference_mix():
    s = q.QuerySettings()
    rng = random.Random(0)
    n = 20_000
    counts = Counter(q.draw_type(rng, s.type_mix) for _ in range(n))
    expected = {"about": 0.40, "range": 0.25, "above": 0.10, "below": 0.25}
    chi2 = sum((counts[t] - n * p) ** 2 / (n * p) for t, p in expected.items())
    assert chi2 < 16.27, (counts, chi2)  # chi-square, 3 degrees of freedom, p = 0.001


def test_granularity_is_2000_with_p_0_2_and_bounds_stay_in_2000_8000():
    s = q.QuerySettings(type_mix={"range": 1.0})
    widths = Counter()
    for i in range(4000):
        c = q.length_constraint(4500, random.Random(i), s)  # satisfiable at both granularities
        widths[c.high - c.low] += 1
        assert 2000 <= c.low < c.high <= 8000
    assert abs(widths[2000] / 4000 - 0.2) < 0.03 and set(widths) == {1000, 2000}
    for n in (2000, 2100, 7900, 7999):
        for i in range(50):
            for ctype in TYPES:
                c = q.length_constraint(n, random.Random(i), q.QuerySettings(type_mix={ctype: 1.0}))
                if c is not None:
                    assert c.low >= 2000 and (c.high or c.low) <= 8000


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("ctype", TYPES)
def test_template_queries_are_satisfied_by_their_response_and_read_back(lang, ctype):
    s = q.QuerySettings(type_mix={ctype: 1.0}, zh_numerals=0.5)
    for n in (2000, 2450, 2999, 3500, 4999, 6100, 7999):
        for seed in range(5):
            c = q.length_constraint(n, random.Random(seed), s)
            assert c is not None and c.ctype == ctype
            assert longen_score(c.ctype, c.low, n, c.high) == 1.0
            for numerals in (False, True):
                query = q.template_query(EN if lang == "en" else ZH, c, lang, numerals)
                assert extract(query) == c, query
                if lang == "zh" and numerals:
                    assert not any(ch.isdigit() for ch in query)


def test_zh_numerals_are_used_about_half_the_time():
    sources = [q.Source(f"s{i}", 1, "zh", ZH, "河" * 3000, "extended", 3000) for i in range(400)]
    rows = q.queries_table(sources, q.QuerySettings(rewrite=False), seed=1).to_pylist()
    share = sum(not any(ch.isdigit() for ch in r["query"]) for r in rows) / len(rows)
    assert 0.42 < share < 0.58


def _sources(k=60):
    rng = random.Random(5)
    return [q.Source(f"s{i}", 1, "en", f"Write about river number {i}.",
                     " ".join(["word"] * rng.randint(2000, 7999)), "extended", 1) for i in range(k)]


def test_a_rewrite_is_used_only_when_its_constraint_reads_back_as_intended(scripted):
    """An engine that phrases the constraint naturally half the time and gets the number wrong otherwise."""
    def answer(req):
        prompt = req.messages[0]["content"]
        request = prompt.split("Request:\n", 1)[1]
        phrase = prompt.split('"', 2)[1]
        if req.seed % 2:
            return Result(text=f"In {phrase}, {request[0].lower()}{request[1:]}")
        return Result(text=f"{request} Make it 123 words long.")

    rows = q.queries_table(_sources(), q.QuerySettings(), seed=3, engine=scripted(answer)).to_pylist()
    kinds = Counter(r["phrasing"] for r in rows)
    assert kinds["rewritten"] > 10 and kinds["template"] > 10
    for r in rows:
        c = Constraint(r["constraint_type"], r["constraint_low"], r["constraint_high"])
        assert extract(r["query"]) == c  # whatever phrased it, the query states the intended constraint
        assert longen_score(c.ctype, c.low, r["response_words"], c.high) == 1.0
        if r["phrasing"] == "template":
            assert "instead of" in r["rewrite_note"] or "no length" in r["rewrite_note"]
        else:
            assert r["rewrite_note"] is None and r["query"].startswith("In ")


def test_a_failed_or_runaway_rewrite_falls_back_to_the_template(scripted):
    eng = scripted(lambda req: Result(text="x " * 5000))
    rows = q.queries_table(_sources(5), q.QuerySettings(), seed=3, engine=eng).to_pylist()
    assert all(r["phrasing"] == "template" and "runs away" in r["rewrite_note"] for r in rows)
    eng = scripted(lambda req: Result.failed("boom"))
    rows = q.queries_table(_sources(5), q.QuerySettings(), seed=3, engine=eng).to_pylist()
    assert all(r["rewrite_note"] == "rewrite failed (engine error)" for r in rows)


def test_sources_outside_the_window_or_kind_make_no_query():
    src = [q.Source("a", 1, "en", EN, "word " * 1998 + "x", "extended"),
           q.Source("b", 1, "en", EN, "word " * 8000, "extended"),
           q.Source("c", 1, "en", EN, "word " * 3000, "initial", 9)]
    assert q.queries_table(src, q.QuerySettings(rewrite=False), 1).num_rows == 1
    assert q.queries_table(src, q.QuerySettings(rewrite=False, sources=("extended",)), 1).num_rows == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(2000, 7999), st.integers(0, 10**6), st.sampled_from(["en", "zh"]))
def test_every_query_constraint_is_met_by_its_response(n, seed, lang):
    c = q.length_constraint(n, random.Random(seed), q.QuerySettings())
    if c is None:
        return
    assert longen_score(c.ctype, c.low, n, c.high) == 1.0
    assert extract(q.template_query(EN if lang == "en" else ZH, c, lang, seed % 2 == 0)) == c


def test_settings_refuse_unknown_types_and_sources():
    with pytest.raises(ValueError, match="type_mix"):
        q.QuerySettings(type_mix={"around": 1.0})
    with pytest.raises(ValueError, match="sources"):
        q.QuerySettings(sources=("final",))


def test_a_rewrite_that_is_cut_off_or_drops_the_request_is_not_used(scripted):
    def truncated(req):
        return Result(text="Write about river number 1 in around 3000 words", finish_reason="length")

    rows = q.queries_table(_sources(5), q.QuerySettings(), seed=3, engine=scripted(truncated)).to_pylist()
    assert all(r["phrasing"] == "template" and r["rewrite_note"] == "rewrite cut off at max_tokens" for r in rows)

    def drops_the_request(req):
        phrase = req.messages[0]["content"].split('"', 2)[1]
        return Result(text=f"Write {phrase}.")  # the right constraint, but the task is gone

    rows = q.queries_table(_sources(5), q.QuerySettings(), seed=3, engine=scripted(drops_the_request)).to_pylist()
    assert all(r["phrasing"] == "template" and "of the request's words" in r["rewrite_note"] for r in rows)
    assert all("river number" in r["query"] for r in rows)


@pytest.mark.parametrize("kw", [{"p1000": 1.5}, {"zh_numerals": -0.1}, {"min_words": 8000, "max_words": 2000}])
def test_query_settings_out_of_range_are_refused(kw):
    with pytest.raises(ValueError, match="queries"):
        q.QuerySettings(**kw)

"""LV-Eval construction without an engine: units, levels, the CFI and KPR checks, context assembly."""

import json

import numpy as np
import pytest

from lendata.engines.base import Result
from lendata.methods.lveval import items as lv
from lendata.methods.lveval.context import EvidenceTooLong, PoolTooSmall, assemble, depth_plan, record, rng_for
from lendata.methods.lveval.pool import Chars, Pool, Tokens, Unit, level_name, parse_level, read_pool, reflow, text_hash

EVIDENCE = ("The Zorvan Bridge crosses the Milla river at Tessport. It was opened in 1894 by the engineer Adela Brun, "
            "who also designed the lighthouse at Cape Orrin.")


def item(**kw):
    base = dict(id="q1", question="Who opened the Zorvan Bridge at Tessport?", answers=["Adela Brun"],
                keywords="Adela Brun", documents=[EVIDENCE], language="en", source="test")
    return lv.Item(**{**base, **kw})


def pool_of(texts, unit=None):
    unit = unit or Unit()
    return Pool(texts=list(texts), sources=[str(i) for i in range(len(texts))],
                sizes=np.asarray(unit.counts(list(texts)), np.int64), hashes=[text_hash(t) for t in texts])


def filler(n_docs=60, words=97, seed=0):
    rng = np.random.default_rng(seed)
    vocab = "river harbour stone archive ledger market tower canal garden orchard meadow quarry".split()
    return [" ".join(rng.choice(vocab, size=words)) + "." for _ in range(n_docs)]


# ---- levels, units, pool ----


def test_levels_parse_as_thousands_and_name_back():
    assert parse_level("16k") == 16_000 and parse_level(2048) == 2048 and parse_level("1.5k") == 1500
    assert level_name("256k") == "256k" and level_name(2048) == "2048"
    with pytest.raises(ValueError, match="not a length"):
        parse_level("lots")
    with pytest.raises(ValueError, match="is not a length"):
        lv.Settings(levels=("16k", "x"))


@pytest.mark.parametrize("unit", [Unit(), Chars(), Tokens()], ids=["words", "chars", "tokens"])
def test_each_unit_cuts_a_text_to_n_of_its_units(unit):
    text = "The quick brown fox jumps over the lazy dog near the riverbank, twice a day. " * 5
    for n in (1, 7, 30):
        cut = unit.cut(text, n)
        assert text.startswith(cut)
        assert abs(unit.count(cut) - n) <= (1 if unit.name == "tokens" else 0)


def test_reflow_keeps_paragraphs_and_drops_rules():
    assert reflow("Title\n*****\n\nOne\n   two  three\n\n\nFour") == "Title\n\nOne two three\n\nFour"


def test_pool_stops_near_its_cap_and_skips_stubs(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = filler(600, 50)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs) + '{"text": 3}\n{"txt": "x"}\n')
    pool = read_pool(path, Unit(), cap=5_000)
    assert 5_000 <= pool.total <= 5_000 + 256 * 50 and pool.total < 600 * 50
    everything = read_pool(path, Unit(), cap=10**9)
    assert len(everything.texts) == 600
    assert [b["source"] for b in everything.bad] == ["docs.jsonl:601", "docs.jsonl:602"]  # name, not path
    assert read_pool(path, Unit(), cap=10**9, min_size=51).texts == []


def test_python_docs_pool_is_real_prose():
    pool = read_pool("@python-docs", Unit(), cap=20_000)
    assert pool.total >= 20_000
    assert any("nonlocal" in t for t in pool.texts)


# ---- QA items ----


def test_read_items_quarantines_bad_rows_with_file_and_line(tmp_path):
    good = {"question": "Q?", "answers": ["Adela Brun"], "answer_keywords": ["Adela", "Brun"], "documents": EVIDENCE}
    rows = [good, {**good, "answers": []}, {**good, "answers": ["nobody"]}, {**good, "question": ""},
            {**good, "replacements": {"x": 1}}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    loaded = lv.read_items(path)
    assert len(loaded.rows) == 1 and loaded.rows[0].keywords == "Adela, Brun"
    assert loaded.rows[0].documents == [EVIDENCE] and loaded.rows[0].language == "en"
    reasons = {b.source: b.reason for b in loaded.bad}
    assert reasons[f"{path}:2"].startswith("`answers`")
    assert "does not occur in its documents" in reasons[f"{path}:3"]
    assert "question" in reasons[f"{path}:4"]
    assert "replacements" in reasons[f"{path}:5"]
    assert "invalid JSON" in reasons[f"{path}:6"]


def test_the_seed_set_is_usable_as_shipped():
    from lendata.paths import project_root

    loaded = lv.read_items(project_root() / "pipelines/data/lveval_seeds.jsonl")
    assert len(loaded.rows) == 20 and not loaded.bad
    for it in loaded.rows:
        table, rejected = lv.check_table(it.replacements, it)
        assert table == it.replacements and not rejected, it.id


# ---- confusing facts ----


@pytest.fixture
def checks():
    it = item()
    return it, lv.Settings(), lv.subject_terms(it), {g for d in it.documents for g in lv._grams(d, "en")}


def test_subject_terms_tie_question_to_evidence_without_the_answer():
    assert lv.subject_terms(item()) == {"zorvan", "bridge", "tessport", "opened"}


@pytest.mark.parametrize(("fact", "reason"), [
    ("The Zorvan Bridge was repainted in 1931 by the city council of Tessport.", None),
    ("The Zorvan Bridge was opened by Adela Brun's cousin.", "contains the answer keyword 'Adela Brun'"),
    ("It was opened in 1894 by the engineer", "repeats the evidence verbatim"),
    ("The Zorvan Bridge crosses the Milla river at Tessport and was opened in 1894 by the engineer.",
     "repeats the evidence"),
    ("Penguins in the southern ocean eat mostly krill and small fish.", "shares no subject term"),
    ("Bridge repainted.", "too short"),
    ("The Zorvan Bridge " + "was widened again and again " * 15, "too long"),
    ("] Question: who repainted the Zorvan Bridge at Tessport in 1931?", "does not start a sentence"),
    ("The Zorvan Bridge at Tessport. Question: who repainted it in 1931?", "echoes the prompt"),
    ("In the Zorvan Bridge at Tessport, the council repainted a", "ends mid-sentence"),
    ("The Zorvan Bridge is a placeholder. The Zorvan Bridge is a placeholder. The Zorvan Bridge is a placeholder.",
     "repeats itself"),
])
def test_each_fact_check_passes_and_fails(checks, fact, reason):
    it, s, subjects, grams = checks
    got = lv.fact_problem(fact, it, s, subjects, grams)
    assert got == reason if reason is None else got.startswith(reason)


def test_fact_keyword_check_is_whole_word_for_english_and_substring_for_chinese():
    it = item(keywords="Brun")
    assert not lv.contains_term("Brunhilde Street was paved in 1902.", "Brun", "en")
    assert lv.contains_term("A bridge by Brun.", "Brun", "en")
    assert lv.contains_term("这座桥由阿黛拉设计。", "阿黛拉", "zh")
    assert it.keyword_list() == ["Brun"] and item(keywords="").keyword_list() == ["Adela Brun"]


def test_confusing_facts_control_flow_keeps_good_facts_and_records_every_rejection(scripted):
    replies = iter([
        json.dumps({"facts": ["1. The Zorvan Bridge was repainted in 1931 by the city council of Tessport.",
                              "Adela Brun opened it."]}),
        "{not json",
        json.dumps({"facts": ["The Zorvan Bridge at Tessport was closed for repairs in 1977 after a flood.",
                              "The Zorvan Bridge at Tessport was closed for repairs in 1977 after a flood."]}),
    ])
    engine = scripted(lambda req: Result(text=next(replies)))
    out = lv.confusing_facts([item()], engine, lv.Settings(facts_per_item=2, fact_attempts=3))
    assert out.facts["q1"] == ["The Zorvan Bridge was repainted in 1931 by the city council of Tessport.",
                               "The Zorvan Bridge at Tessport was closed for repairs in 1977 after a flood."]
    reasons = [r["reason"] for r in out.rejected]
    assert reasons[0].startswith("too short") or reasons[0].startswith("contains the answer keyword")
    assert reasons[1].startswith("not JSON") and reasons[2] == "duplicate of an accepted fact"
    assert len(engine.seen) == 3 and all(r.json_schema for r in engine.seen)
    assert len({r.seed for r in engine.seen}) == 3  # each attempt samples anew
    assert lv.confusing_facts([item()], engine, lv.Settings(facts_per_item=0)).facts == {"q1": []}


# ---- keyword and phrase replacement ----


def test_replacement_checks_each_rule():
    it = item()
    table, rejected = lv.check_table({"Zorvan": "Pleq", "Tessport": "Gauze", "Milla": "Milo", "Orrin": "Adela",
                                      "Atlantis": "Vyx", "Zorvan Bridge": "Kuy", "": "x"}, it)
    assert table == {"Zorvan": "Pleq"}
    why = {o: r for o, _, r in rejected}
    assert why["Tessport"].startswith("shares characters 'e'")
    assert why["Milla"].startswith("shares characters")
    assert "already occurs" in why["Orrin"]
    assert "does not occur" in why["Atlantis"]
    assert why["Zorvan Bridge"].startswith("overlaps")
    assert why[""] == "empty term"


def test_replacement_that_would_break_an_answer_is_refused():
    it = item(answers=["Adela Brun", "the engineer Adela Brun"])
    table, rejected = lv.check_table({"engineer Adela": "Qox"}, it)
    # the second answer becomes "the Qox Brun", but the first stays "Adela Brun", which the text no longer has
    assert table == {} and rejected[0][2] == "an answer would no longer be found in the replaced documents"
    it2 = item(answers=["Adela Brun"], documents=[EVIDENCE.replace("Adela Brun", "AdelaBrun") + " Adela Brun."])
    assert lv.check_table({"Brun": "Kyx"}, it2)[0] == {"Brun": "Kyx"}


def test_replacer_is_whole_word_consistent_and_counted():
    rep = lv.Replacer({"Brun": "Kyx", "Adela Brun": "Omi Tyk"}, "en")
    assert rep("Adela Brun met Brun at Brunswick; Brun_x stays.") == "Omi Tyk met Kyx at Brunswick; Brun_x stays."
    assert rep.counts == {"Brun": 1, "Adela Brun": 1}
    zh = lv.Replacer({"阿黛拉": "欧米"}, "zh")
    assert zh("阿黛拉设计了阿黛拉桥") == "欧米设计了欧米桥" and zh.counts["阿黛拉"] == 2


def test_engine_proposed_tables_are_checked(scripted):
    reply = {"replacements": [{"original": "Tessport", "replacement": "Quabby"},
                              {"original": "Zorvan", "replacement": "Zorro"}]}
    engine = scripted(lambda req: Result(text=json.dumps(reply)))
    tables, rejected = lv.replacement_tables([item()], lv.Settings(kpr="engine"), engine)
    assert tables == {"q1": {"Tessport": "Quabby"}}
    assert [json.loads(r["record"])["original"] for r in rejected] == ["Zorvan"]
    assert engine.seen[0].json_schema["properties"]["replacements"]["maxItems"] == 3
    assert lv.replacement_tables([item()], lv.Settings(kpr="off"))[0] == {"q1": {}}


# ---- assembly ----


@pytest.mark.parametrize("unit", [Unit(), Chars(), Tokens()], ids=["words", "chars", "tokens"])
def test_context_lands_on_its_level_with_the_evidence_and_facts_recorded(unit):
    pool = pool_of(filler(), unit)
    it = item()
    facts = ["The Zorvan Bridge was repainted in 1931 by the city council of Tessport."]
    level = 3000
    ctx = assemble(it, facts, pool, unit, level, None, rng_for(1, "q1"))
    assert abs(ctx.length - level) <= {"words": 0, "chars": 2, "tokens": 3}[unit.name]
    assert ctx.text[ctx.evidence_offsets[0]:].startswith(EVIDENCE)
    assert ctx.text[ctx.fact_offsets[0]:].startswith(facts[0])
    assert 0.0 <= ctx.depth[0] <= 1.0 and ctx.distractors >= 4


def test_depth_plans_place_the_evidence_where_asked():
    pool = pool_of(filler())
    for depth in (0.0, 0.5, 1.0):
        s = lv.Settings(depth="fixed", depths=(depth,))
        (tag, targets), = depth_plan(s, 1)
        ctx = assemble(item(), [], pool, Unit(), 4000, targets, rng_for(tag))
        assert abs(ctx.depth[0] - depth) < 0.03, (depth, ctx.depth)
    grid = depth_plan(lv.Settings(depth="grid", depths=(0.0, 0.25, 0.5)), 2)
    assert [t for t, _ in grid] == ["d0", "d0.25", "d0.5"] and grid[1][1] == [0.25, 0.25]


def test_record_applies_replacements_everywhere_and_is_reproducible():
    pool = pool_of(filler())
    it = item()
    table = {"Zorvan": "Pleq", "Brun": "Kyx"}
    s = lv.Settings()
    rec = record(it, ["The Zorvan Bridge was repainted in 1931 by the council."], table, pool, Unit(), 2000, "u",
                 None, s, "demo")
    assert rec["input"] == "Who opened the Pleq Bridge at Tessport?" and rec["answers"] == ["Adela Kyx"]
    assert rec["answer_keywords"] == "Adela Kyx" and "Pleq" in rec["confusing_facts"][0]
    assert "Zorvan" not in rec["context"] and "Adela Kyx" in rec["context"]
    assert {r["original"]: r["count"] for r in rec["replacements"]} == {"Zorvan": 2, "Brun": 1}
    assert rec["dataset"] == "demo_2k" and rec["level"] == "2k" and rec["length"] == 2000
    again = record(it, ["The Zorvan Bridge was repainted in 1931 by the council."], table, pool, Unit(), 2000, "u",
                   None, s, "demo")
    assert again == rec


def test_the_items_own_documents_are_never_distractors_and_errors_are_clear():
    it = item()
    pool = pool_of([EVIDENCE, *filler(5)])
    with pytest.raises(PoolTooSmall, match="needs"):
        assemble(it, [], pool, Unit(), 5000, None, rng_for(0))
    ctx = assemble(it, [], pool, Unit(), 400, None, rng_for(0))
    assert ctx.text.count("The Zorvan Bridge crosses") == 1
    with pytest.raises(EvidenceTooLong, match="longer than the 10 level"):
        assemble(it, [], pool, Unit(), 10, None, rng_for(0))


def test_chinese_contexts_count_characters():
    zh = lv.Item(id="z1", question="谁设计了左文桥？", answers=["阿黛拉"], keywords="阿黛拉",
                 documents=["左文桥横跨米拉河，由工程师阿黛拉于一八九四年设计。"], language="zh", source="test")
    pool = pool_of(["河流与港口的档案记录了这座城市的历史。" * 20] * 30, Chars())
    ctx = assemble(zh, [], pool, Chars(), 3000, None, rng_for(0), lv.Replacer({"阿黛拉": "欧米"}, "zh"))
    assert ctx.length == 3000 - 1  # the replacement is a character shorter
    assert "欧米" in ctx.text and "阿黛拉" not in ctx.text


# ---- what LV-Eval counts, and where distractors come from (issue 15, item 7) ----


def test_a_records_length_is_input_plus_context_plus_answers_as_lveval_counts():
    pool = pool_of(filler())
    rec = record(item(), [], {}, pool, Unit(), 2000, "u", None, lv.Settings(), "demo")
    unit = Unit()
    qa = unit.count(rec["input"]) + sum(unit.count(a) for a in rec["answers"])
    assert rec["context_length"] == unit.count(rec["context"])
    assert rec["length"] == qa + rec["context_length"]
    assert rec["length"] == 2000  # the level is what LV-Eval's `length` reaches


def test_other_items_documents_are_mixed_into_every_context():
    other = item(id="q2", documents=["The Kelvar ferry sails from Ostrand to Mirelle every Tuesday at noon, "
                                     "carrying mail and cattle across the bay."])
    from lendata.methods.lveval.context import item_documents

    rec = record(item(), [], {}, pool_of(filler()), Unit(), 1500, "u", None, lv.Settings(), "demo",
                 mixed=item_documents([item(), other], Unit()))
    assert "Kelvar ferry" in rec["context"] and rec["context"].count("The Zorvan Bridge crosses") == 1


def _corpus(tmp_path, docs, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return path


def test_the_pool_is_a_seeded_sample_of_the_whole_corpus_not_its_first_documents(tmp_path):
    docs = [f"document {i} " + t for i, t in enumerate(filler(400, 50))]
    path = _corpus(tmp_path, docs)
    pool = read_pool(path, Unit(), cap=2_000, seed=1)
    picked = sorted(docs.index(t) for t in pool.texts)
    assert 2_000 <= pool.total < 2_000 + 60 and max(picked) > 200  # not the first ~40 documents
    assert read_pool(path, Unit(), cap=2_000, seed=1).texts == pool.texts
    assert set(read_pool(path, Unit(), cap=2_000, seed=2).texts) != set(pool.texts)
    backwards = read_pool(_corpus(tmp_path, docs[::-1], "rev.jsonl"), Unit(), cap=2_000, seed=1)
    assert set(backwards.texts) == set(pool.texts)  # the sample does not depend on the corpus order


def test_a_produced_corpus_is_cached_whole_and_survives_a_cache_it_cannot_write(tmp_path, monkeypatch):
    from lendata.corpus import cached_documents

    calls = []

    def produce():
        calls.append(1)
        yield "a", "first text"
        yield "b", "second\ntext"

    monkeypatch.setenv("LENDATA_CACHE", str(tmp_path / "cache"))
    assert list(cached_documents("docs", "v1", produce)) == [("a", "first text"), ("b", "second\ntext")]
    assert list(cached_documents("docs", "v1", produce)) == [("a", "first text"), ("b", "second\ntext")]
    assert len(calls) == 1 and not list((tmp_path / "cache").glob("*.tmp*"))
    list(cached_documents("docs", "v2", produce))  # another origin: made again
    assert len(calls) == 2
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("LENDATA_CACHE", str(tmp_path / "blocked"))
    assert list(cached_documents("docs", "v1", produce))[1] == ("b", "second\ntext")

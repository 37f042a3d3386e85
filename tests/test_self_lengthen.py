"""Self-Lengthen: checks on crafted en/zh texts, split/extend arithmetic, the 1.2x rule, drop_short, queries."""

import dataclasses
import random

import pytest

from lendata.engines.base import Result
from lendata.lengths import count_words
from lendata.methods.self_lengthen import queries, sets
from lendata.methods.self_lengthen import steps as sl
from lendata.methods.shared import checks
from lendata.methods.shared.constraints import extract, strip_constraint

EN_OK = ("Rivers shape the land they cross.\n\nThey carry silt from the mountains to the sea, and they build deltas "
         "where they slow down.")
ZH_OK = "河流塑造了它们流经的土地。\n\n它们把泥沙从山上带到海里，并在流速变慢的地方形成三角洲。"


# --- checks ---------------------------------------------------------------------------------------------


def test_check_accepts_clean_en_and_zh_text():
    assert checks.response_check(EN_OK, "en") is None
    assert checks.response_check(ZH_OK, "zh") is None


def test_check_ending_punctuation_en_and_zh():
    assert "no sentence ending" in checks.response_check("Rivers shape the land they cross and", "en")
    assert "no sentence ending" in checks.response_check("河流塑造了它们流经的土地，", "zh")
    # zh text ending with ASCII punctuation is accepted (the reference rejects it)
    for end in ".!?":
        assert checks.response_check("河流塑造了它们流经的土地" + end, "zh") is None
    assert checks.response_check("   \n", "en") == "empty response"


def test_check_repeated_ngrams_en_words_and_zh_units():
    ten = "the river carries silt from the mountains down to the sea"
    assert "repeated 10-gram" in checks.response_check(f"{ten}. Then {ten}.", "en")
    nine = "the river carries silt from the mountains down to"  # a 9-word repeat is allowed
    assert checks.response_check(f"{nine} the sea. Again {nine} a lake.", "en") is None
    thirteen = "河流把泥沙从山上带到海里并形成"  # 15 characters: holds repeated 13-grams
    assert "repeated 13-gram" in checks.response_check(f"{thirteen}。{thirteen}。", "zh")
    twelve = "河流把泥沙从山上带到海里"  # 12 characters + different neighbours: no 13-gram repeats
    assert checks.response_check(f"首先{twelve}。其次{twelve}！", "zh") is None


def test_zh_units_are_characters_and_ascii_runs():
    assert checks.units("用GPT-4o写 code。", "zh") == ["用", "GPT-4o", "写", " code", "。"]


def test_check_meta_words_en_only_in_first_two_and_last_three_lines():
    body = "\n".join(f"Line {i} tells of rivers and their banks." for i in range(10))
    assert "meta words" in checks.response_check("Here is the revised version:\n" + body, "en")
    assert "meta words" in checks.response_check(body + "\nThis paragraph was expanded.", "en")
    middle = body.split("\n")
    middle.insert(5, "The next paragraph is about deltas.")
    assert checks.response_check("\n".join(middle), "en") is None  # line 6 of 11: not checked
    assert checks.response_check("修订版本如下。\n" + ZH_OK, "zh") is None  # zh has no meta-word rule


def test_drop_short_drops_the_shortest_fifth_and_keeps_about_sixty_percent():
    rng = random.Random(0)
    lengths = list(range(1, 10001))
    keep = checks.drop_short(lengths, rng)
    assert not any(keep[:2000])  # rank >= 0.7937 -> 2 rank^3 >= 1: always dropped
    assert 0.58 < sum(keep) / len(keep) < 0.61
    assert keep == checks.drop_short(lengths, random.Random(0))  # seeded: the same choice twice


# --- split / extend arithmetic ------------------------------------------------------------------------------


def test_paragraph_split_falls_back_to_lines_and_halves():
    assert sl.paragraphs("a\n\nb\n\nc") == ["a", "b", "c"]
    assert sl.paragraphs("a\nb\n\nc") == ["a", "b", "", "c"]  # two blank-line parts -> single lines
    assert sl.first_half("a\n\nb\n\nc\n\nd") == "a\n\nb"
    assert sl.first_half("a\n\nb\n\nc") == "a"  # len // 2
    assert sl.first_half("only one paragraph") == "only one paragraph"  # never empty


def test_keep_head_keeps_floor_two_thirds():
    assert sl.keep_head("p1\n\np2\n\np3", 2 / 3) == "p1\n\np2"
    assert sl.keep_head("p1\n\np2\n\np3\n\np4\n\np5", 2 / 3) == "p1\n\np2\n\np3"  # floor(10/3)
    assert sl.keep_head("p1", 2 / 3) == ""


def _extender(grow: dict[str, str]):
    """Scripted Extender for one row: calls alternate A (extend the first half) and B (continue)."""
    calls = {"n": 0}

    def answer(req):
        calls["n"] += 1
        if calls["n"] % 2:
            return Result(text="A1 is a fresh sentence.\n\nA2 is another one.\n\nA3 is the last one.")
        return Result(text=grow.get("B", "B1 adds new facts here. B2 closes it."))

    return answer


def test_extend_round_builds_prefix_plus_continuation(scripted):
    eng = scripted(_extender({}))
    s = sl.Settings(micro_rounds=1, extend_retries=1, extensions=1, min_growth=1.0, word_counter="longwriter")
    r = sl.Response("r", "i", "Write about rivers.", "en", 1, 0, initial="P1 is short.\n\nP2 is short too.")
    [r] = sl.extend([r], eng, s)
    a_req, b_req = eng.seen
    assert "P1 is short." in a_req.messages[0]["content"] and "P2" not in a_req.messages[0]["content"]
    assert "P2 is short too." in b_req.messages[0]["content"]  # B sees the whole current text
    assert b_req.prefill == "A1 is a fresh sentence.\n\nA2 is another one.\n\n"  # 2 of A's 3 paragraphs
    assert r.extended == "A1 is a fresh sentence.\n\nA2 is another one.\n\nB1 adds new facts here. B2 closes it."


def test_extend_calls_ban_loops_in_their_own_output_only(scripted):
    """The extender rewrites its prompt, so the ban covers what it writes, not the text it was given."""
    s = sl.Settings(micro_rounds=1, extend_retries=1, extensions=1, min_growth=1.0, word_counter="longwriter",
                    extend_no_repeat_ngram=8)
    r = sl.Response("r", "i", "Write about rivers.", "en", 1, 0, initial="P1 is short.\n\nP2 is short too.")
    eng = scripted(_extender({}))
    sl.extend([r], eng, s)
    assert [(q.no_repeat_ngram, q.no_repeat_scope) for q in eng.seen] == [(8, "output"), (8, "output")]
    # zh: twice the n, as AgentWrite (a character is one to three byte-level tokens)
    eng = scripted(_extender({}))
    sl.extend([dataclasses.replace(r, language="zh")], eng, s)
    assert [q.no_repeat_ngram for q in eng.seen] == [16, 16]
    # a mixed batch: each row its own n
    eng = scripted(_extender({}))
    sl.extend([r, dataclasses.replace(r, id="r2", language="zh")], eng, s)
    assert [q.no_repeat_ngram for q in eng.seen] == [8, 16, 8, 16]
    # off by default, as the reference
    eng = scripted(_extender({}))
    sl.extend([r], eng, dataclasses.replace(s, extend_no_repeat_ngram=0))
    assert [q.no_repeat_ngram for q in eng.seen] == [0, 0]


def test_an_engine_that_cannot_ban_loops_extends_without_it_and_says_so(scripted, caplog):
    import pytest

    with pytest.raises(ValueError, match="extend_no_repeat_ngram"):
        sl.Settings(extend_no_repeat_ngram=-1)
    s = sl.Settings(micro_rounds=1, extend_retries=1, extensions=1, min_growth=1.0, word_counter="longwriter",
                    extend_no_repeat_ngram=8)
    r = sl.Response("r", "i", "Write about rivers.", "en", 1, 0, initial="P1 is short.\n\nP2 is short too.")
    eng = scripted(_extender({}))
    eng.decoding_options = frozenset()  # as the openai and vllm engines
    with caplog.at_level("WARNING", logger="lendata.self_lengthen"):
        [r] = sl.extend([r], eng, s)
    assert "cannot enforce extend_no_repeat_ngram=8" in caplog.text
    assert [q.no_repeat_ngram for q in eng.seen] == [0, 0] and r.extended


def test_rounds_accept_only_longer_valid_text_and_the_1_2x_rule(scripted):
    s = sl.Settings(micro_rounds=3, extend_retries=2, extensions=1, word_counter="longwriter")
    initial = "P1 has five words here.\n\nP2 has five words too."

    # B output fails the check (no ending): no round accepted, both attempts fail -> not extended
    r = sl.Response("r", "i", "x", "en", 1, 0, initial=initial)
    eng = scripted(_extender({"B": "and then it stops mid"}))
    [r] = sl.extend([r], eng, s)
    assert r.extended is None and r.failed.startswith("extend: not > 1.2x after 2 attempts")
    assert len(eng.seen) == 2 * 3 * 2  # 2 attempts x 3 rounds x (A + B)

    # output longer and valid: accepted, grows past 1.2x in the first attempt
    r = sl.Response("r", "i", "x", "en", 1, 0, initial=initial)
    eng = scripted(_extender({}))
    [r] = sl.extend([r], eng, s)
    assert r.extended and r.failed is None and r.extend_attempts == 1 and r.rounds_accepted >= 1
    assert count_words(r.extended, "longwriter") > 1.2 * count_words(initial, "longwriter")


def test_growth_at_or_below_1_2x_is_not_kept(scripted):
    s = sl.Settings(micro_rounds=1, extend_retries=1, extensions=1, keep_share=0.0, word_counter="longwriter")
    r = sl.Response("r", "i", "x", "en", 1, 0, initial="one two three four five six seven eight nine ten.")
    # 12 words = exactly 1.2x: longer, so the round is accepted, but not *more than* 1.2x
    [r] = sl.extend([r], scripted(_extender({"B": "a b c d e f g h i j k l."})), s)
    assert r.extended is None and "not > 1.2x" in r.failed
    r = sl.Response("r", "i", "x", "en", 1, 0, initial="one two three four five six seven eight nine ten.")
    [r] = sl.extend([r], scripted(_extender({"B": "a b c d e f g h i j k l m."})), s)
    assert r.extended == "a b c d e f g h i j k l m."


def test_generate_retries_until_the_check_passes_and_records_failures(scripted):
    calls = {"n": 0}

    def answer(req):
        calls["n"] += 1
        good = "Good text ends well." if "fine" in req.messages[0]["content"] and req.sample_index >= 2 else "no end"
        return Result(text=good)

    s = sl.Settings(samples=1, generate_attempts=4)
    out = sl.generate([{"id": "a", "instruction": "fine topic", "iteration": 1},
                       {"id": "b", "instruction": "hopeless topic", "iteration": 1}], scripted(answer), s)
    ok, bad = out
    assert ok.initial == "Good text ends well." and ok.gen_attempts == 3 and ok.failed is None
    assert bad.initial == "" and bad.gen_attempts == 4 and "no sentence ending" in bad.failed
    assert calls["n"] == 3 + 4  # every attempt is one batch across the rows still failing


# --- outputs -----------------------------------------------------------------------------------------------


def _resp(rid, initial, extended, lang="en"):
    return sl.Response(rid, "i" + rid, "Write about rivers.", lang, 1, 0, initial=initial, extended=extended)


def test_ext_sft_input_keeps_each_line_with_p_and_sets_have_both_shapes():
    s = sl.Settings(line_keep=0.8)
    initial = "\n".join(f"line {i}" for i in range(2000))
    gen, ext = sets.sft_tables([_resp("a", initial, "long " * 50 + "end.")], s)
    g, e = gen.to_pylist()[0], ext.to_pylist()[0]
    assert g["instruction"] == "Write about rivers." and g["input"] == "" and g["output"].endswith("end.")
    assert g["messages"][0]["content"] == g["instruction"] and g["messages"][1]["content"] == g["output"]
    kept = [ln for ln in initial.split("\n") if f"\n\n{ln}\n\n" in f"\n\n{e['instruction']}\n\n"]
    assert 0.77 < len(kept) / 2000 < 0.83
    assert "Original outline" in e["instruction"]


def test_keep_long_is_seeded_and_records_what_it_drops():
    s = sl.Settings(seed=3)
    rs = [_resp(str(i), "x.", "w " * (i + 1) + ".") for i in range(50)]
    kept, dropped = sets.keep_long(rs, s, 1)
    again, _ = sets.keep_long(rs, s, 1)
    assert [r.id for r in kept] == [r.id for r in again] and len(kept) + len(dropped) == 50
    assert all(d["stage"] == "drop_short" for d in dropped)


def test_strip_constraint_removes_the_length_and_keeps_the_task():
    assert strip_constraint("Write a 2000-word story about a lighthouse.") == "Write a story about a lighthouse."
    assert strip_constraint("Describe bees. The response should be about 3000 words.") == "Describe bees."
    assert strip_constraint("请介绍长江的历史。字数不少于2000字。") == "请介绍长江的历史。"
    assert extract(strip_constraint("写一篇约2000字的文章，介绍长江的历史。")) is None


def test_zh_numbers_read_back():
    for n in (1000, 2000, 3000, 10000, 12000, 25000):
        assert extract(f"写一篇文章，字数大约{queries.zh_number(n)}字。").low == n


def test_token_columns_are_counted_by_the_engine_of_each_role(scripted):
    gen, ext = scripted(), scripted()
    gen.count_tokens = lambda texts: [3 * len(t) for t in texts]
    ext.count_tokens = lambda texts: [5 * len(t) for t in texts]
    s = sl.Settings()
    long = " ".join(["river"] * 2500) + "."
    r = sl.Response("r1", "i1", "Write about rivers.", "en", 1, 0, initial="Short text.", extended=long)
    sets.count_tokens([r], gen, ext)
    resp = sets.responses_table([r], s, ext.name, ext.model_id).to_pylist()[0]
    assert (resp["initial_tokens"], resp["extended_tokens"]) == (3 * len("Short text."), 5 * len(long))
    gen_sft, ext_sft = sets.sft_tables([r], s)
    assert gen_sft.column("output_tokens").to_pylist() == ext_sft.column("output_tokens").to_pylist() == [5 * len(long)]
    sources = sets.query_sources([dataclasses.replace(r, extension=0)], [r], gen)
    q = queries.queries_table(sources, s.queries, s.seed).to_pylist()
    assert [x["source"] for x in q] == ["extended"]  # the initial response is too short for a query
    assert q[0]["response_tokens"] == 5 * len(long)


@pytest.mark.parametrize("stage", ["self_instruct", "extend"])
def test_an_engine_that_does_not_continue_a_prefill_is_refused_before_any_call(scripted, stage):
    """Self-instruct and the extender's second call write after a prefilled assistant turn; a server that answers
    it with a new turn (llama_cpp.server) would give a fresh answer glued onto the prefix, so nothing is sent."""
    eng = scripted()
    eng.continues_prefill = False
    s = sl.Settings()
    with pytest.raises(ValueError, match="continue_final_message"):
        if stage == "self_instruct":
            seeds = [{"instruction": f"Write a story about {t}.", "language": "en"} for t in ("cats", "dogs", "owls")]
            sl.self_instruct(seeds, eng, s, 1)
        else:
            resp = sl.Response(id="r1", instruction_id="i1", instruction="Write about owls.", language="en",
                               iteration=1, sample=0, initial="Owls fly. " * 20)
            sl.extend([resp], eng, s)
    assert eng.seen == []

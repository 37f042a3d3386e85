"""`preferences`: DPO pairs (TRL's prompt/chosen/rejected) from judged samples, length-matched by default."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.cli import app
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool
from lendata.judging import judges
from tests.test_agentwrite import _words

# sample k of every instruction: (marker the judge reads, words); the judge gives GOOD 4s, BAD 2s, LONG 5s, SHORT 1s
SAMPLES = {0: ("GOOD", 40), 1: ("BAD", 42), 2: ("LONG", 80), 3: ("SHORT", 10)}
SCORES = {"GOOD": 4, "BAD": 2, "LONG": 5, "SHORT": 1, "SAME": 3}


def _engine(req):
    prompt = req.messages[0]["content"]
    if req.json_schema == judges.QUALITY_SCHEMA:
        marker = next(m for m in SCORES if f"<Response>\n{m}" in prompt)
        return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, SCORES[marker])}))
    marker, words = SAMPLES[req.sample_index]
    if "TIE" in prompt:
        marker = "SAME"
    return Result(text=f"{marker} " + _words(words - 2, start=req.sample_index * 100) + " end.",
                  completion_tokens=words)


def _build(tmp_path, scripted, **sets):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Write 40 words about rivers.", "length": 40}) + "\n"
                   + json.dumps({"prompt": "Write 40 words about TIE.", "length": 40}) + "\n")
    recipe = recipes.load("preferences", {"input": str(src), "n": None, **sets})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(_engine), ResponseCache(tmp_path / "c")), "llamacpp")
    store = tmp_path / f"store-{sets.get('selection', 'default')}"
    builds.run(recipe, store, progress=False, engines=pool)
    return st.open_version(store, "preferences"), store


def test_length_matched_pairs_do_not_pair_a_long_winner_with_a_short_loser(tmp_path, scripted):
    v, store = _build(tmp_path, scripted)
    [pair] = v.read("train").to_pylist()
    # GOOD (40 words, S_q 75) over BAD (42 words, 25): not over SHORT (10 words, 0), whose gap is mostly length;
    # LONG (80 words, 100) misses the 40-word target, so it cannot be chosen
    assert pair["chosen"][0]["content"].startswith("GOOD") and pair["rejected"][0]["content"].startswith("BAD")
    assert (pair["chosen_sq"], pair["rejected_sq"]) == (75, 25)
    assert set(pair) >= {"prompt", "chosen", "rejected"}  # TRL's conversational preference format
    assert pair["prompt"] == [{"role": "user", "content": "Write 40 words about rivers."}]
    assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
    assert pair["length_ratio"] == pytest.approx(40 / 42) and pair["candidates"] == 4
    [no_pair] = v.read("rejected").to_pylist()
    assert "TIE" in no_pair["record"] and "differ in S_q" in no_pair["reason"]
    meta = v.manifest["preferences"]
    assert meta["pairs"] == 1 and meta["chosen_longer_share"] == 0 and meta["length_ratios"] == [round(40 / 42, 4)]
    res = CliRunner().invoke(app, ["report", "preferences", "--store", str(store), "--to", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "preference_lengths.png").is_file()
    assert "preference_lengths.png" in (tmp_path / "r" / "index.html").read_text()


def test_without_length_matching_the_widest_gap_wins(tmp_path, scripted):
    v, _ = _build(tmp_path, scripted, selection="none")
    [pair] = v.read("train").to_pylist()
    assert pair["chosen"][0]["content"].startswith("GOOD") and pair["rejected"][0]["content"].startswith("SHORT")


def test_settings_are_checked():
    with pytest.raises(recipes.RecipeError, match="samples"):
        recipes.load("preferences", {"samples": 1})
    with pytest.raises(recipes.RecipeError, match="judge is 'gtp'"):
        recipes.load("preferences", {"judge": "gtp"})


@pytest.mark.slow
def test_embedded_preferences_build(tmp_path):
    """The bundled model writes and judges: every instruction ends as a pair or in `rejected` with why."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Write two sentences about rain."}) + "\n")
    res = CliRunner().invoke(app, ["build", "preferences", "--store", str(tmp_path / "s"), "--no-progress",
                                   "--set", f"input={src}", "--set", "target_field=null", "--set", "samples=2",
                                   "--set", "max_tokens=96", "--set", "min_margin=0", "--set", "selection=none"])
    assert res.exit_code == 0, res.output
    v = st.open_version(tmp_path / "s", "preferences")
    pairs = v.read("train").to_pylist()
    rejected = v.read("rejected").to_pylist() if v.rows("rejected") else []
    assert len(pairs) + len(rejected) == 1
    for p in pairs:
        assert p["chosen_sq"] > p["rejected_sq"] and p["chosen"][0]["content"] != p["rejected"][0]["content"]
    for r in rejected:
        assert r["reason"]


def test_an_instruction_whose_samples_all_fail_is_listed(tmp_path, scripted):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Write 40 words about rivers.", "length": 40}) + "\n")
    recipe = recipes.load("preferences", {"input": str(src)})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(lambda req: Result.failed("down")),
                                                ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, tmp_path / "s", progress=False, engines=pool)
    v = st.open_version(tmp_path / "s", "preferences")
    assert v.rows("train") == 0 and v.rows("quarantine") == 4
    [r] = v.read("rejected").to_pylist()
    assert "none of the 4 samples" in r["reason"]


def test_length_adjusted_selection_keeps_no_pair_a_length_only_judge_explains(tmp_path, scripted):
    """A judge whose S_q is a function of length alone: `none` pairs the longest over the shortest; with
    `length_adjusted` the margin length explains is taken off, and no pair is left."""
    lengths = {0: 20, 1: 40, 2: 60, 3: 80}

    def by_length(req):
        prompt = req.messages[0]["content"]
        if req.json_schema == judges.QUALITY_SCHEMA:
            words = len(prompt.split("<Response>\n")[1].split("\n</Response>")[0].split())
            score = 1 + round((words - 20) / 20)  # 20 words: 1 ... 80 words: 4
            return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, score)}))
        return Result(text=_words(lengths[req.sample_index] - 1, start=req.seed * 100) + " end.",
                      completion_tokens=lengths[req.sample_index])

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Write about topic {i}."}) + "\n" for i in range(3)))
    got = {}
    for selection in ("none", "length_adjusted"):
        recipe = recipes.load("preferences", {"input": str(src), "n": None, "target_field": None,
                                              "selection": selection})
        pool = EnginePool(lambda n, o: CachedEngine(scripted(by_length), ResponseCache(tmp_path / "c")), "llamacpp")
        builds.run(recipe, tmp_path / selection, progress=False, engines=pool)
        got[selection] = st.open_version(tmp_path / selection, "preferences")
    pairs = got["none"].read("train").to_pylist()
    assert len(pairs) == 3 and all(p["chosen_words"] == 80 and p["rejected_words"] == 20 for p in pairs)
    adjusted = got["length_adjusted"]
    assert adjusted.manifest["preferences"]["length_slope"]["beta"] > 10  # S_q points per std of the word difference
    assert adjusted.rows("train") == 0
    assert all("once length is accounted for" in r["reason"] for r in adjusted.read("rejected").to_pylist())


def test_length_adjusted_never_chooses_the_lower_scored_answer(scripted):
    """A judge that favours length makes the adjusted margin of a shorter, slightly worse answer positive; the
    raw margin must still be positive (review finding: such a pair was built, then dropped by the schema)."""
    from lendata.methods.preferences import pairs as pp

    s = pp.Settings(selection="length_adjusted", min_margin=0)
    cands = [pp.Candidate(0, "q", None, "", "m", k, f"t{k}", words, sq) for k, (words, sq) in
             enumerate([(20, 20.8), (40, 25.0)])]
    pair, why = pp.select(cands, s, {"beta": 40.0, "std": 10.0, "pairs": 10})
    assert pair is None or pair[0].sq > pair[1].sq

import json
import math

import pytest

from lendata import lengths as L


def test_longwriter_words_counts_cjk_chars_and_ascii_letter_runs():
    assert L.longwriter_words("it's GPT-4o") == 3  # it, s, GPT (digits split "4o" -> "o" is not \b-bounded)
    assert L.longwriter_words("Hello, world! 123") == 2
    assert L.longwriter_words("中国旅游 guide") == 5


def test_longwriter_gpt4o_counts_one():
    # METHODS.md: "GPT-4o" counts 1 — the \b[a-zA-Z]+\b rule finds only "GPT"
    assert L.longwriter_words("GPT-4o") == 1
    assert L.longwriter_words("it's") == 2


def test_longen_words_counts_wide_chars_and_splits_rest():
    assert L.longen_words("你好，世界 hello world") == 7  # 4 ideographs + full-width comma + 2 words
    assert L.longen_words("a b  c\n") == 3
    assert L.longen_words("中文") > L.longwriter_words("中文。") - 1


def test_ruler_words_are_word_char_runs():
    assert L.ruler_words("it's 2024, GPT-4o!") == 5


@pytest.mark.parametrize(
    "ratio, expected",
    [(1 / 3, 0.0), (1 / 2, 50.0), (0.8, 87.5), (1, 100.0), (1.2, 93.333), (1.5, 83.333), (2, 66.667),
     (3, 33.333), (4, 0.0)],
)
def test_length_score_reference_points(ratio, expected):
    assert L.length_score(900, 900 * ratio) == pytest.approx(expected, abs=1e-3)


def test_length_score_empty_response_is_zero_and_bad_target_raises():
    assert L.length_score(100, 0) == 0.0
    with pytest.raises(ValueError):
        L.length_score(0, 10)


@pytest.mark.parametrize(
    "ctype, target, upper, produced, expected",
    [
        ("about", 1000, None, 1000, 1.0),
        ("about", 1000, None, 800, 1.0),
        ("about", 1000, None, 1200, 1.0),
        ("about", 1000, None, 600, 2 * 600 / 800 - 1),
        ("about", 1000, None, 1500, 3 - 2 * 1500 / 1200),
        ("range", 2000, 3000, 2500, 1.0),
        ("range", 2000, 3000, 1000, 0.0),
        ("range", 2000, 3000, 4500, 0.0),
        ("above", 2000, None, 2999, 1.0),
        ("above", 2000, None, 1800, 2 * 1800 / 2000 - 1),
        ("below", 2000, None, 1000, 1.0),
        ("below", 2000, None, 2400, 3 - 2 * 2400 / 2000),
        ("below", 2000, None, 300, 0.0),
    ],
)
def test_longen_score(ctype, target, upper, produced, expected):
    assert L.longen_score(ctype, target, produced, upper) == pytest.approx(expected)


def test_longen_intervals_and_errors():
    assert L.longen_interval("about", 1000) == (800, 1200)
    assert L.longen_interval("above", 1000) == (1000, 1500)
    assert L.longen_interval("below", 1000) == (500, 1000)
    with pytest.raises(ValueError):
        L.longen_interval("range", 1000)
    with pytest.raises(ValueError):
        L.longen_interval("nearly", 1000)


@pytest.mark.parametrize(
    "target, pm, fm",
    [("10", (0, 20), (0, 20)), ("30", (20, 40), (20, 40)), ("50", (40, 60), (40, 60)),
     ("80", (70, 90), (60, 100)), ("150", (130, 170), (100, 200)), ("300", (280, 320), (200, 400)),
     ("500", (450, 550), (400, 600)), ("700", (630, 770), (600, 800)), (">800", (800, math.inf), (800, math.inf))],
)
def test_ruler_windows_are_half_open(target, pm, fm):
    for mode, (lo, hi) in (("pm", pm), ("fm", fm)):
        assert not L.ruler_hit(target, lo, mode)  # (lo, hi]: lo itself misses
        assert L.ruler_hit(target, lo + 1, mode)
        if hi != math.inf:
            assert L.ruler_hit(target, hi, mode)
            assert not L.ruler_hit(target, hi + 1, mode)


def test_ruler_score_and_levels():
    assert L.ruler_score([80, 80, 1000], [75, 65, 900], "pm") == pytest.approx(200 / 3)
    assert L.ruler_score([80, 80, 1000], [75, 65, 900], "fm") == pytest.approx(100)
    assert L.ruler_level(1200) == ">800"
    with pytest.raises(ValueError):
        L.ruler_level(42)


def test_meta_length_tokens():
    assert L.meta_length_token(12) == "[MLT:10]"
    assert L.meta_length_token(16) is None
    assert L.meta_length_token(305) == "[MLT:300]"
    assert L.meta_length_token(900) == "[MLT:>800]"


def test_token_counts_match_llama_cpp(llama):
    texts = ["The Roman Empire was vast.", "中国旅游指南", "def f(x):\n    return x ** 2\n"]
    counted = L.count_tokens(texts)
    native = [len(llama._llm.tokenize(t.encode(), add_bos=False, special=False)) for t in texts]
    assert counted == native


def test_tokens_per_word_measured():
    assert L.tokens_per_word(["one two three", "four"], [6, 2]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        L.tokens_per_word(["123"], [1])


# Ruler's Meta Length Tokens (METHODS §2, corrected 2026-11-26): narrow windows, lower bound exclusive
@pytest.mark.parametrize(("words", "tag"), [
    (5, None), (6, "[MLT:10]"), (15, "[MLT:10]"), (16, None),
    (25, None), (26, "[MLT:30]"), (35, "[MLT:30]"), (36, None),
    (45, None), (46, "[MLT:50]"), (55, "[MLT:50]"), (56, None),
    (75, None), (76, "[MLT:80]"), (85, "[MLT:80]"), (86, None),
    (135, None), (136, "[MLT:150]"), (155, "[MLT:150]"), (156, None), (160, None),
    (295, None), (296, "[MLT:300]"), (305, "[MLT:300]"), (306, None),
    (495, None), (496, "[MLT:500]"), (505, "[MLT:500]"), (506, None),
    (695, None), (696, "[MLT:700]"), (705, "[MLT:700]"), (706, None),
    (800, None), (801, "[MLT:>800]"), (5000, "[MLT:>800]"), (0, None),
])
def test_meta_length_tokens_use_rulers_windows(words, tag):
    assert L.meta_length_token(words) == tag


def test_ruler_levels_group_the_targets():
    assert [L.ruler_group(t) for t in (10, 30, 50, 80, 150, 300, 500, 700, 1000, ">800")] == \
        ["Level 0"] * 4 + ["Level 1"] * 3 + ["Level 2"] * 3


def test_ruler_scores_are_reported_per_level_and_overall(tmp_path):
    from lendata.scoring import score_file

    rows = [(10, 12), (80, 95), (150, 160), (500, 700), (1000, 900), (700, 650)]  # (target, words produced)
    f = tmp_path / "r.jsonl"
    f.write_text("".join(json.dumps({"target_words": t, "response": "w " * n}) + "\n" for t, n in rows))
    _, summary = score_file(f, "ruler")
    # PM hits: 10 (0,20] yes; 80 (70,90] no; 150 (130,170] yes; 500 (450,550] no; >800 yes; 700 (630,770] yes
    # FM hits: 80 (60,100] yes; 500 (400,600] no; the rest as PM
    assert summary["levels"] == {
        "Level 0": {"n": 2, "pm": 50.0, "fm": 100.0},
        "Level 1": {"n": 2, "pm": 50.0, "fm": 50.0},
        "Level 2": {"n": 2, "pm": 100.0, "fm": 100.0},
        "All": {"n": 6, "pm": pytest.approx(400 / 6), "fm": pytest.approx(500 / 6)},
    }

import json
import random
from pathlib import Path

import pytest

from lendata.methods.shared.constraints import Constraint, constrain, draw, extract, ruler_instruction

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, expected", [
    ("Write an essay of 800 words on rivers", Constraint("about", 800)),
    ("Answer in at least 400 words.", Constraint("above", 400)),
    ("approximately 500 words", Constraint("about", 500)),
    ("no less than 1000 words", Constraint("above", 1000)),
    ("Write a 1000-word China travel guide", Constraint("about", 1000)),
    ("between 1,000 and 2,000 words", Constraint("range", 1000, 2000)),
    ("no more than 6000 words", Constraint("below", 6000)),
    ("Ensure the dialogue exceeds 4000 words.", Constraint("above", 4000)),
    ("all within a 5000-word limit", Constraint("below", 5000)),
    ("写一篇300到400字的短文", Constraint("range", 300, 400)),
    ("请在200字以内回答", Constraint("below", 200)),
    ("不少于800字", Constraint("above", 800)),
    ("大约2000字", Constraint("about", 2000)),
    ("约2000字", Constraint("about", 2000)),
    ("约四千字", Constraint("about", 4000)),
    ("2000字至4000字", Constraint("range", 2000, 4000)),
    ("字数不能超过7000字", Constraint("below", 7000)),
    ("Tell me about rivers.", None),
])
def test_extract_en_and_zh_forms(text, expected):
    assert extract(text) == expected


def test_extract_agrees_with_longen_labels_on_real_queries():
    rows = [json.loads(x) for x in (REPO / "lendata/data/longen.jsonl").read_text().splitlines()]
    agree = sum(1 for r in rows if (c := extract(r["query"])) is not None and c.ctype == r["type"])
    assert agree / len(rows) >= 0.95  # 240 human-written en/zh queries


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("c", [Constraint("about", 1000), Constraint("range", 2000, 3000),
                               Constraint("above", 2000), Constraint("below", 4000)])
def test_synthesised_constraints_round_trip(lang, c):
    base = "写一篇关于河流的文章。" if lang == "zh" else "Write an essay about rivers."
    assert extract(constrain(base, c, lang)) == c


def test_goals_and_draws():
    assert Constraint("range", 300, 400).goal() == 350
    assert Constraint("above", 1000).goal(0.1) == 1100
    assert Constraint("below", 1000).goal(0.1) == 900
    a = [draw(random.Random(3), 500, 3000, ("about", "range")) for _ in range(2)]
    assert a[0] == a[1] and 500 <= a[0].low <= 3000
    # Ruler's wording (METHODS §2, corrected 2026-11-26)
    assert ruler_instruction("Say it.", 80) == "Say it. The response should have a word count of 80 words."
    assert ruler_instruction("Say it. ", 1000) == \
        "Say it. The response should have a word count of more than 800 words."

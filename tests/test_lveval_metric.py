"""LV-Eval keyword-recall gated F1 on crafted predictions that pass and fail each gate."""

import pytest

from lendata.methods.lveval import metric as m


def test_normalisation_drops_case_punctuation_and_articles():
    assert m.normalize_en("The Eiffel Tower, in PARIS!") == "eiffel tower in paris"
    assert m.normalize_zh("北京，是 首都。") == "北京是首都"


def test_en_gate_at_0_2_of_keyword_tokens():
    answer = "Marie Curie discovered polonium and radium in 1898"
    keywords = "Marie Curie polonium radium 1898"  # 5 tokens: 1 found = 0.2 passes, 0 found fails
    assert m.score_one("it was curie", answer, keywords) > 0
    assert m.score_one("it was someone else entirely", answer, keywords) == 0.0
    # matches on blacklisted words do not count, but the denominator keeps them
    assert m.keyword_recall(["and", "of"], ["radium", "and", "of", "x", "y"], "en") == 0.0
    assert m.score_one("and of", "x and of", "radium and of x y") == 0.0


def test_en_f1_after_the_gate_and_no_gate_without_keywords():
    assert m.score_one("Marie Curie", "Marie Curie", "Curie") == 1.0
    p = m.score_one("Marie Curie the physicist", "Marie Curie", "Curie")  # 2 of 3 tokens right
    assert p == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    # "the" is dropped: 1 of 3 gold tokens, precision 1 -> F1 0.5
    assert m.score_one("blue", "the sky is blue", None) == pytest.approx(0.5)


def test_zh_gate_at_0_4_with_jieba_tokens_and_answer_as_default_keywords():
    answer = "居里夫人发现了镭"
    assert m.score_one("居里夫人发现了镭", answer, None, "zh") == 1.0
    assert m.score_one("是一位科学家", answer, None, "zh") == 0.0  # no keyword token: gate fails
    # keywords of 3 tokens: 1 found (0.33) fails the 0.4 gate, 2 found (0.67) passes
    kw = "居里夫人 镭 钋"
    assert m.keyword_recall(m.tokens("居里夫人", "zh"), m.tokens(kw, "zh"), "zh") < 0.4
    assert m.score_one("居里夫人", answer, kw, "zh") == 0.0
    assert m.score_one("居里夫人和镭", answer, kw, "zh") > 0


def test_item_score_is_the_best_answer():
    assert m.score("Paris", ["London", "Paris"], None) == 1.0
    assert m.score("Paris", [], None) == 0.0


def test_score_command_scores_an_lveval_file(tmp_path):
    import json

    from typer.testing import CliRunner

    from lendata.cli import app

    f = tmp_path / "preds.jsonl"
    rows = [
        {"pred": "Marie Curie", "answers": ["Marie Curie"], "answer_keywords": "Curie", "length": "16k"},
        {"pred": "nobody", "answers": ["Marie Curie"], "answer_keywords": "Curie", "length": "16k"},
        {"pred": "居里夫人发现了镭", "answers": ["居里夫人发现了镭"], "language": "zh", "length": "32k"},
        {"answers": ["x"]},
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    res = CliRunner().invoke(app, ["score", str(f), "--metric", "lveval", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rows"] == 3 and summary["mean"] == pytest.approx(200 / 3)
    assert summary["by_target"]["16k"]["mean_score"] == 50 and summary["by_target"]["32k"]["mean_score"] == 100
    assert len(summary["skipped"]) == 1 and "no prediction" in summary["skipped"][0]

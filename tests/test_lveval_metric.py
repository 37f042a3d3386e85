"""LV-Eval keyword-recall gated F1 on crafted predictions that pass and fail each gate."""

import pytest

from lendata.methods.shared import lveval_metric as m


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


# --- the metric per dataset, as LVEval's config.py chooses it (METHODS §6) ----------------------------------

PRED = "the answer is Paris France"  # normalised: answer is paris france (4 tokens)


@pytest.mark.parametrize(("dataset", "keywords", "expected"), [
    # keyword-gated F1 on the QA mixup sets: "London" is not in the prediction, the gate fails
    ("hotpotwikiqa_mixup_16k", "London", 0.0),
    ("multifieldqa_en_mixup_256k", "London", 0.0),
    ("loogle_SD_mixup_32k", "Paris", 40.0),  # the gate passes: F1 = 2 * 1/4 * 1 / (1/4 + 1)
    # plain F1 on factrecall: no gate whatever the keywords
    ("factrecall_en_64k", "London", 40.0),
])
def test_the_metric_follows_the_dataset(dataset, keywords, expected):
    assert 100 * m.score_record(PRED, ["Paris"], keywords, "en", dataset)[0] == pytest.approx(expected)
    assert m.metric_for(dataset) == ("f1" if dataset.startswith("factrecall") else "gated_f1")


def test_dureader_is_rouge_l_without_blacklisted_words():
    # ROUGE-L F over jieba tokens: (我 爱 北京 天安门) against (北京 天安门 我 爱): LCS 2, P = R = 2/4
    score, metric = m.score_record("我爱北京天安门", ["北京天安门我爱"], None, "zh", "dureader_mixup_16k")
    assert metric == "rouge_l_blacklist" and 100 * score == pytest.approx(50.0, abs=1e-4)
    # "c" is one of the reference's blacklisted zh tokens: (a b d) against (a d e), LCS 2 of 3
    assert 100 * m.score_record("a b c d", ["a c d e"], None, "zh", "dureader_mixup_16k")[0] == \
        pytest.approx(200 / 3, abs=1e-4)
    # the blacklist's function words (的, 了, ...) are dropped from both sides before the LCS
    assert m.score_record("北京的 天气", ["北京 天气"], None, "zh", "dureader_mixup_16k")[0] == \
        pytest.approx(1.0, abs=1e-6)


def test_the_first_answer_is_scored_unless_best_of_answers_is_asked():
    """LVEval's scorer breaks after the first answer: a prediction matching only the second scores 0."""
    assert m.score_record("Paris", ["Berlin", "Paris"], None, "en", "factrecall_en_16k")[0] == 0.0
    assert m.score_record("Paris", ["Berlin", "Paris"], None, "en", "factrecall_en_16k", best=True)[0] == 1.0


def test_lveval_scores_are_grouped_by_dataset_and_level(tmp_path):
    import json

    from lendata.scoring import score_file

    f = tmp_path / "preds.jsonl"
    rows = [{"pred": PRED, "answers": ["Paris"], "answer_keywords": "London", "dataset": "factrecall_en_16k"},
            {"pred": PRED, "answers": ["Paris"], "answer_keywords": "London", "dataset": "hotpotwikiqa_mixup_16k"},
            {"pred": "Paris", "answers": ["Paris"], "answer_keywords": "Paris", "dataset": "hotpotwikiqa_mixup_32k"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    per_row, summary = score_file(f, "lveval")
    assert summary["groups"] == [
        {"dataset": "factrecall_en", "level": "16k", "n": 1, "score": pytest.approx(40.0)},
        {"dataset": "hotpotwikiqa_mixup", "level": "16k", "n": 1, "score": 0.0},
        {"dataset": "hotpotwikiqa_mixup", "level": "32k", "n": 1, "score": 100.0},
    ]
    assert summary["mean"] == pytest.approx(140 / 3)
    assert [(r["dataset"], r["metric_used"]) for r in per_row] == [
        ("factrecall_en", "f1"), ("hotpotwikiqa_mixup", "gated_f1"), ("hotpotwikiqa_mixup", "gated_f1")]

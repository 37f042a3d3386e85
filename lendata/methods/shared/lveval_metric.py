"""LV-Eval's metrics (METHODS.md §6), as the reference implements them. Shared by the lveval method (its
`lendata score --metric lveval`) and the eval method's lveval suite.

The keyword-recall gated F1:
en: normalise (lower case, no punctuation, no articles, single spaces), split on spaces. If the item has
answer keywords, the share of keyword tokens found in the prediction must reach 0.2, where matches on
blacklisted function words do not count (the denominator is all keyword tokens); below it the score is 0.
Otherwise the score is token F1 against the answer. zh: jieba tokens, each normalised (lower case, no
punctuation, no spaces), empty ones removed; the keywords default to the answer and the gate is 0.4.
`score_record` scores the first answer, as the reference's loop does (it stops after the first); `best=True`
scores the best over all answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

BLACKLIST_EN = frozenset(
    "and to of in her was with for it from is that his he by she they or at because be on are their what as had "
    "were about being this who but have has when which does".split()
)
BLACKLIST_ZH = frozenset(
    "的 和 是 等 在 年 可以 为 与 ‰ 了 或 一种 月 c 至 日 有 进行 于 不 中 × 根据 小 由 亩 也 要 指 法 会 元 主要 以及 "
    "通过 首先 对 然后 号 以 所 后 丁 包括 无 将 用 能 形 方面 因素 位于 而 从 到 一定 用于 但 "
    "使用 让 具有 并 亿元 万元 上 类 基于 才 来 地 片 其他 个 或者 变得 时 给 你 使 条 受 已经 带 度".split()
)
_ZH_PUNCT = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
             "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ALL_PUNCT = set(string.punctuation + _ZH_PUNCT)
THRESHOLD = {"en": 0.2, "zh": 0.4}


def normalize_en(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def normalize_zh(s: str) -> str:
    return "".join("".join(ch for ch in s.lower() if ch not in _ALL_PUNCT).split())


def tokens(text: str, lang: str) -> list[str]:
    if lang == "zh":
        import jieba

        return [t for t in (normalize_zh(x) for x in jieba.cut(text, cut_all=False)) if t]
    return normalize_en(text).split()


def f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def keyword_recall(pred: Sequence[str], keywords: Sequence[str], lang: str) -> float:
    """Share of keyword tokens found in the prediction, matches on blacklisted words not counted."""
    if not keywords:
        return 0.0
    black = BLACKLIST_ZH if lang == "zh" else BLACKLIST_EN
    common = Counter(pred) & Counter(keywords)
    return sum(n for t, n in common.items() if t not in black) / len(keywords)


def score_one(prediction: str, answer: str, keywords: str | None, lang: str = "en") -> float:
    """One prediction against one answer, in [0, 1]."""
    pred, gold = tokens(prediction, lang), tokens(answer, lang)
    if lang == "zh" and not keywords:
        keywords = answer
    if keywords:
        if keyword_recall(pred, tokens(keywords, lang), lang) < THRESHOLD[lang]:
            return 0.0
    return f1(pred, gold)


def score(prediction: str, answers: Sequence[str], keywords: str | None, lang: str = "en") -> float:
    """An item's score: the best over its answers."""
    return max((score_one(prediction, a, keywords, lang) for a in answers), default=0.0)


# LVEval's config.py DATASET_METRIC: the metric of each dataset, named without its level suffix. Datasets it
# does not list (lendata's own builds) get the keyword-gated F1 of the QA mixup sets.
DATASET_METRIC = {
    "hotpotwikiqa_mixup": "gated_f1", "loogle_SD_mixup": "gated_f1", "loogle_CR_mixup": "gated_f1",
    "loogle_MIR_mixup": "gated_f1", "multifieldqa_en_mixup": "gated_f1", "multifieldqa_zh_mixup": "gated_f1",
    "cmrc_mixup": "gated_f1", "lic_mixup": "gated_f1", "factrecall_en": "f1", "factrecall_zh": "f1",
    "dureader_mixup": "rouge_l_blacklist",
}
_LEVEL_SUFFIX = re.compile(r"_.{1,3}k")  # the reference's split: "factrecall_en_16k" -> "factrecall_en"


def dataset_name(dataset: str) -> str:
    return _LEVEL_SUFFIX.split(dataset)[0]


def metric_for(dataset: str) -> str:
    return DATASET_METRIC.get(dataset_name(dataset), "gated_f1")


def plain_f1(prediction: str, answer: str, keywords: str | None = None, lang: str = "en") -> float:
    """Token F1 without the keyword gate (factrecall)."""
    return f1(tokens(prediction, lang), tokens(answer, lang))


def rouge_l_blacklist(prediction: str, answer: str, keywords: str | None = None, lang: str = "zh") -> float:
    """ROUGE-L F (the `rouge` package, as the reference) over jieba tokens, normalised, blacklisted words dropped
    from both sides (dureader)."""
    import jieba
    from rouge import Rouge

    def kept(text: str) -> str:
        return " ".join(t for t in (normalize_zh(x) for x in jieba.cut(text, cut_all=False)) if t not in BLACKLIST_ZH)

    pred, gold = kept(prediction), kept(answer)
    if not pred.split() or not gold.split():
        return 0.0
    try:
        return float(Rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):  # the package's own failures on degenerate input: 0, as the reference
        return 0.0


_METRICS: dict[str, Callable[..., float]] = {"gated_f1": score_one, "f1": plain_f1,
                                             "rouge_l_blacklist": rouge_l_blacklist}


def score_record(prediction: str, answers: Sequence[str], keywords: str | None, lang: str, dataset: str,
                 best: bool = False) -> tuple[float, str]:
    """(score in [0, 1], the metric used) of one record. The first answer only, as LVEval's scorer (it breaks
    after the first); `best`: the best over all answers."""
    metric = metric_for(dataset)
    scored = answers if best else answers[:1]
    return max((_METRICS[metric](prediction, a, keywords, lang) for a in scored), default=0.0), metric


def _level(rec: dict[str, Any]) -> str:
    found = re.search(r"_(\d{1,3}k)$", str(rec.get("dataset") or ""))
    return str(rec.get("level") or (found.group(1) if found else None) or rec.get("length") or "")


def score_records(records: Iterable[tuple[str, dict[str, Any]]], response_field: str | None,
                  response: Callable[[dict[str, Any]], str | None], skipped: list[str],
                  best_of_answers: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`lendata score --metric lveval`: LV-Eval records with a prediction (`pred`, else the response), `answers`,
    `answer_keywords` (or the reference's `gold_ans`), `language` and `dataset` (which picks the metric, as
    LVEval does). `response(rec)` is the record's response (its last assistant turn, `response` or
    `output`). Returns the per-row scores and the scores per (dataset, level); records that cannot be scored
    are added to `skipped` with why."""
    from lendata.lengths import count_words

    rows = []
    for where, rec in records:
        pred = rec.get(response_field) if response_field else rec.get("pred", response(rec))
        answers = rec.get("answers")
        if not isinstance(pred, str):
            skipped.append(f"{where}: no prediction (`pred`, or set --response-field)")
            continue
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers:
            skipped.append(f"{where}: no `answers` list")
            continue
        lang = "zh" if str(rec.get("language", "")).startswith("zh") else "en"
        keywords = rec.get("answer_keywords", rec.get("gold_ans"))
        dataset = str(rec.get("dataset") or "")
        value, metric = score_record(pred, [str(a) for a in answers], keywords or None, lang, dataset,
                                     best_of_answers)
        level = _level(rec)
        rows.append({"source": where, "target": level or 0, "words": count_words(pred, "longwriter"),
                     "language": lang, "dataset": dataset_name(dataset), "level": level, "metric_used": metric,
                     "score": 100 * value})
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["level"]), []).append(r["score"])
    summary = {"groups": [{"dataset": d, "level": lv, "n": len(s), "score": sum(s) / len(s)}
                          for (d, lv), s in sorted(groups.items(), key=lambda kv: (kv[0][0], _level_key(kv[0][1])))]}
    return rows, summary


def _level_key(level: str) -> tuple[int, str]:
    found = re.fullmatch(r"(\d+)k", level)
    return (int(found.group(1)) * 1000, "") if found else (0, level)

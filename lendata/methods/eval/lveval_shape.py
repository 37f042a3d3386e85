"""LV-Eval's generation setting (infinigence/LVEval `config.py`, `prediction.py`, `utils.py`; METHODS §6).

Per dataset: a prompt that states the task before and after the context, and a generation limit (64 new tokens;
16 for factrecall). Decoding is greedy. A prompt longer than the model's window is cut in the middle: its first
and last halves are kept (LongBench's rule, which LV-Eval follows). lendata's own LV-Eval builds name their
records after the build, not after an LV-Eval dataset; they get the mixup QA shape of their language.

Deliberate deviation: the reference cuts in tokens with the model's tokenizer and decodes the two halves; lendata
cuts characters and measures the result with the engine's own token count until it fits (the engine contract
has no detokenizer), so the kept halves can be a few tokens shorter than the reference's.
"""

from __future__ import annotations

from lendata.engines.base import Engine

_QA_EN = ("Please answer the following question based on the given passages. Questions and answers are only "
          "relevant to one passage. Only give me the answer and do not output any other explanation and evidence.")
_QA_EN_AFTER = ("Please answer the following question based on the above passages. Questions and answers are only "
                "relevant to one passage. Only give me the answer and do not output any other explanation and "
                "evidence.")
_HOTPOT_BEFORE = ("Answer the question based on the given passages. Questions and answers are only relevant to "
                  "some passages. Only give me the answer and do not output any other explanation and evidence.")
_HOTPOT_AFTER = ("Please answer the following question based on the above passages. Questions and answers are "
                 "only relevant to some passages. Only give me the answer and do not output any other explanation "
                 "and evidence.")
_QA_ZH = "请根据下面给定的文章回答问题，问题和答案只与其中一篇文章有关。"
_MF_ZH = "请阅读以下文章并用中文回答问题，问题和答案只与其中一篇文章有关。"
_MF_ZH_AFTER = "请基于上面的文章回答下面的问题，问题和答案只与其中一篇文章有关。"

# (before the context, after it, language of the frame) per LV-Eval dataset
_FRAMES: dict[str, tuple[str, str, str]] = {
    "hotpotwikiqa_mixup": (_HOTPOT_BEFORE, _HOTPOT_AFTER, "en"),
    **{d: (_QA_EN, _QA_EN_AFTER, "en") for d in ("loogle_SD_mixup", "loogle_CR_mixup", "loogle_MIR_mixup",
                                                  "multifieldqa_en_mixup")},
    "multifieldqa_zh_mixup": (_MF_ZH + "只需要直接给出问题的答案，不要输出其他任何解释和证据。",
                              _MF_ZH_AFTER + "只需要直接给出问题的答案，不要输出其他任何解释和证据。", "zh"),
    "factrecall_en": ("Please answer the following questions based on the given article.",
                      "Please answer the following questions based on the above article.", "en"),
    "factrecall_zh": ("请基于给定的文章回答下述问题。", "现在请基于上述文章回答下面的问题。", "zh"),
    "cmrc_mixup": (_QA_ZH, "现在请基于上述文章回答下面的问题，问题和答案只与其中一篇文章有关。", "zh"),
    "lic_mixup": (_QA_ZH, "请现在基于上述文章回答下面的问题，问题和答案只与其中一篇文章有关。", "zh"),
    "dureader_mixup": (_QA_ZH, "现在请基于上述文章回答下面的问题，问题和答案只与其中一篇文章有关。", "zh"),
}
MAX_NEW_TOKENS = {d: (16 if d.startswith("factrecall") else 64) for d in _FRAMES}
DEFAULT_MAX_NEW_TOKENS = 64


def frame(dataset: str, language: str) -> tuple[str, str, str]:
    """(before, after, frame language) for an LV-Eval dataset name; lendata's own builds by their language."""
    if dataset in _FRAMES:
        return _FRAMES[dataset]
    if language.startswith("zh"):
        return _FRAMES["multifieldqa_zh_mixup"]
    return _FRAMES["multifieldqa_en_mixup"]


def prompt(dataset: str, language: str, context: str, question: str) -> str:
    before, after, lang = frame(dataset, language)
    if lang == "zh":
        return f"{before}\n\n文章：{context}\n\n{after}\n\n问题：{question}\n回答："
    return f"{before}\n\nArticle: {context}\n\n{after}\n\nQuestion: {question}\nAnswer:"


def max_new_tokens(dataset: str) -> int:
    return MAX_NEW_TOKENS.get(dataset, DEFAULT_MAX_NEW_TOKENS)


def truncate_middle(text: str, engine: Engine, budget: int, max_rounds: int = 8) -> tuple[str, bool]:
    """(text, whether it was cut): the first and last halves kept so that the engine counts at most `budget`
    tokens."""
    (n,) = engine.count_tokens([text])
    if n <= budget:
        return text, False
    keep = len(text)
    for _ in range(max_rounds):
        keep = int(keep * budget / max(n, 1) * 0.98)
        half = max(keep // 2, 1)
        cut = text[:half] + text[-half:]
        (n,) = engine.count_tokens([cut])
        if n <= budget:
            return cut, True
    raise ValueError(f"cannot cut the prompt to {budget} tokens")

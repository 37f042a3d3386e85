"""LV-Eval long-context construction (Yuan et al. 2024; METHODS.md §6): QA items, confusing facts, replacements.

The paper's confusing facts (CFI) were written by GPT-4 and then checked by people, who rejected facts that do
not interfere, that contradict or add to the true facts, or that make the question ambiguous. Here an engine
writes candidate facts as JSON and automatic checks stand in for the people: a fact must not contain an answer
keyword (it would answer or contradict), must not repeat the evidence (it would add nothing), and must share a
subject term with it (else it does not interfere). Keyword and phrase replacement (KPR) swaps key terms for
terms that share no character with them, consistently in context, question, answers and keywords.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lendata.engines.base import Engine, Request, Result, estimate_prompt_tokens
from lendata.inputs import Bad, Loaded, records
from lendata.methods.lveval.pool import parse_level
from lendata.methods.shared.lveval_metric import BLACKLIST_EN, BLACKLIST_ZH, normalize_en, normalize_zh, tokens

STOP_EN = BLACKLIST_EN | frozenset(
    "the a an not no its into than then there these those such can may must will would should could also only "
    "other any all each one two used use using given same how why where does did do done been if so out over "
    "under after before while your you our we us them him".split()
)


@dataclass
class Settings:
    levels: tuple[int | str, ...] = ("16k", "32k", "64k", "128k", "256k")  # context lengths: 16k, 16000, ...
    unit: str = "auto"  # auto (words for en, characters for zh), words, chars or tokens
    depth: str = "uniform"  # uniform: a random depth per record; fixed: depths[0]; grid: a record per depth
    depths: tuple[float, ...] = (0.5,)  # evidence depths (fractions in [0, 1]) for depth fixed or grid
    facts_per_item: int = 2  # confusing facts kept per QA item (0: no CFI)
    fact_attempts: int = 2  # engine calls per item at most, each asking for facts_per_item candidates
    min_fact_words: int = 5  # zh: characters / 2
    max_fact_words: int = 60  # longer facts are rejected
    max_evidence_overlap: float = 0.5  # share of a fact's 4-grams found in the evidence above which it repeats it
    kpr: str = "given"  # given: the items' `replacements`; engine: proposed by the engine and checked; off
    max_replacements: int = 3  # replacement pairs per item at most
    max_tokens: int = 256  # per engine call (facts, replacement tables)
    temperature: float = 0.8  # sampling temperature of the engine calls
    top_p: float = 0.95  # nucleus sampling
    seed: int = 42  # depths, distractor order and engine calls are seeded from this
    pool_factor: float = 2.0  # distractor units held in memory, as a multiple of the longest level
    block_items: int = 16  # QA items per block: shards take whole blocks, each writes its own files
    # inputs
    input: str = ""  # QA items: question, answers, answer_keywords, documents[, replacements, language]
    n: int | None = None  # use only the first n items
    distractors: str = "@python-docs"  # the running Python's reference topics + docstrings; or a folder/.jsonl/.parquet
    text_field: str = "text"  # the text column of .jsonl/.parquet distractors
    glob: str = "**/*.txt"  # files of a distractor folder
    tokenizer: str | None = None  # for unit tokens: a tokenizers JSON file; null: the bundled SmolLM2 tokenizer

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        self.depths = tuple(float(d) for d in self.depths)
        if self.depth not in {"uniform", "fixed", "grid"}:
            raise ValueError(f"depth must be uniform, fixed or grid, got {self.depth!r}")
        if self.depth != "uniform" and (not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths)):
            raise ValueError(f"depths must be fractions in [0, 1], got {list(self.depths)}")
        if self.block_items < 1:
            raise ValueError(f"block_items must be at least 1, got {self.block_items}")
        if self.kpr not in {"given", "engine", "off"}:
            raise ValueError(f"kpr must be given, engine or off, got {self.kpr!r}")
        for level in self.levels:
            parse_level(level)


@dataclass
class Item:
    id: str
    question: str
    answers: list[str]
    keywords: str  # LV-Eval keeps answer keywords as one comma-separated string
    documents: list[str]
    language: str
    source: str
    replacements: dict[str, str] = field(default_factory=dict)

    def keyword_list(self) -> list[str]:
        parts = [k.strip() for k in re.split(r"[,，;；]", self.keywords) if k.strip()]
        return parts or [a for a in self.answers if a.strip()]


# ---- QA items ---------------------------------------------------------------------------------------------


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def read_items(path, n: int | None = None) -> Loaded:
    """QA items from JSONL/Parquet: question (or input), answers, answer_keywords, documents (or context/evidence),
    optional language, replacements and id. Bad rows are returned with file:line and the reason."""
    from lendata.methods.shared.budget import language_of

    out = Loaded()
    seen_ids: dict[str, int] = {}
    for lineno, rec, problem, raw in records(path):
        where = f"{path}:{lineno}"  # for messages; the records keep only the file's name
        if rec is None:
            out.bad.append(Bad(where, problem or "unreadable", raw))
            continue
        question = rec.get("question", rec.get("input"))
        answers = _strings(rec.get("answers", rec.get("answer")))
        docs = _strings(rec.get("documents", rec.get("context", rec.get("evidence"))))
        keywords = rec.get("answer_keywords") or ""
        keywords = ", ".join(keywords) if isinstance(keywords, list) else keywords
        repl = rec.get("replacements") or {}
        why = (
            "missing or empty question (`question` or `input`)" if not isinstance(question, str) or not question.strip()
            else "`answers` must be a string or a non-empty list of strings" if answers is None
            else "`documents` must be a string or a non-empty list of strings" if docs is None
            else "`answer_keywords` must be a string or a list of strings" if not isinstance(keywords, str)
            else "`replacements` must map strings to strings" if not (
                isinstance(repl, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in repl.items()))
            else None
        )
        if why is None:
            missing = [a for a in answers if not any(a in d for d in docs)]
            if missing:
                why = f"answer {missing[0]!r} does not occur in its documents, so it could not be found in a context"
        if why:
            out.bad.append(Bad(where, why, raw))
            continue
        lang = rec.get("language") or language_of(question + " " + docs[0][:2000])
        name = str(path).split("?")[0].rstrip("/").rsplit("/", 1)[-1]  # a local path or a URL
        item_id = str(rec.get("id") or f"{name.rpartition('.')[0] or name}-{lineno}")
        if item_id in seen_ids:  # facts, tables and records are keyed by id: two items cannot share one
            out.bad.append(Bad(where, f"duplicate id {item_id!r} (first at line {seen_ids[item_id]})", raw))
            continue
        seen_ids[item_id] = lineno
        out.rows.append(Item(id=item_id,
                             question=question, answers=answers, keywords=keywords, documents=docs, language=lang,
                             source=str(rec.get("source") or f"{name}:{lineno}"), replacements=dict(repl)))
        if n and len(out.rows) >= n:
            break
    return out


# ---- confusing-fact insertion -----------------------------------------------------------------------------

FACTS_SCHEMA_MAX = 6

CFI_PROMPT = {
    "en": "Below are a passage, a question about it and the answer.\n\nPassage:\n{evidence}\n\nQuestion: {question}\n"
          "Answer: {answer}\n\nWrite {k} confusing facts: sentences in the style of the passage that talk about "
          "the same subject but state something else, so that they do not answer the question. Do not use the "
          'words of the answer and do not copy sentences of the passage. Reply in JSON: {{"facts": ["..."]}}',
    "zh": "下面是一段材料、一个关于它的问题和答案。\n\n材料：\n{evidence}\n\n问题：{question}\n答案：{answer}\n\n"
          "请写{k}条干扰事实：风格与材料相似、谈论同一主题，但陈述不同的内容，因而不能回答该问题。不要使用答案中的词语，"
          '也不要照抄材料中的句子。用 JSON 回复：{{"facts": ["..."]}}',
}


def facts_schema(k: int, lang: str = "en") -> dict[str, Any]:
    """A list of sentence-sized strings: without a minimum length small models answer with one word."""
    low, high = (12, 200) if lang == "zh" else (40, 400)
    return {"type": "object", "required": ["facts"], "properties": {"facts": {
        "type": "array", "minItems": 1, "maxItems": max(1, min(k, FACTS_SCHEMA_MAX)),
        "items": {"type": "string", "minLength": low, "maxLength": high}}}}


def evidence_excerpt(item: Item, max_words: int = 300) -> str:
    """The paragraph holding the first answer, widened with its neighbours up to `max_words` (the prompt must
    fit a small model's window; the checks still compare against the whole documents)."""
    paras = [p for d in item.documents for p in d.split("\n\n") if p.strip()]
    hit = next((i for i, p in enumerate(paras) if any(a in p for a in item.answers)), 0)
    lo, hi = hit, hit + 1
    size = lambda a, b: sum(len(p.split()) for p in paras[a:b])  # noqa: E731
    while True:
        grew = False
        if lo > 0 and size(lo - 1, hi) <= max_words:
            lo, grew = lo - 1, True
        if hi < len(paras) and size(lo, hi + 1) <= max_words:
            hi, grew = hi + 1, True
        if not grew:
            break
    text = "\n\n".join(paras[lo:hi])
    return text if item.language == "zh" else " ".join(text.split()[: max_words * 2])


def _norm(text: str, lang: str) -> str:
    return normalize_zh(text) if lang == "zh" else normalize_en(text)


def content_terms(text: str, lang: str) -> set[str]:
    if lang == "zh":
        return {t for t in tokens(text, "zh") if len(t) >= 2 and t not in BLACKLIST_ZH}
    return {t for t in normalize_en(text).split() if len(t) >= 3 and t not in STOP_EN and not t.isdigit()}


def subject_terms(item: Item) -> set[str]:
    """Terms that tie the evidence to the question (in both), less the answer's own; the evidence's content
    terms when the question shares none."""
    evidence = " ".join(item.documents)
    answer = set().union(*(content_terms(k, item.language) for k in item.keyword_list()))
    both = (content_terms(item.question, item.language) & content_terms(evidence, item.language)) - answer
    return both or content_terms(evidence, item.language) - answer


def _grams(text: str, lang: str, n: int = 4) -> list[tuple[str, ...]]:
    units = list(_norm(text, lang)) if lang == "zh" else _norm(text, lang).split()
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def contains_term(text: str, term: str, lang: str) -> bool:
    """Substring (zh) or whole-word (en) match, ignoring case, either as written ("Brun's" holds "Brun") or
    after LV-Eval's normalisation ("Adela-Brun" holds "Adela Brun")."""
    t, k = _norm(text, lang), _norm(term, lang)
    if not k:
        return False
    if lang == "zh":
        return k in t
    raw, flat = " ".join(term.lower().split()), " ".join(text.lower().split())
    return f" {k} " in f" {t} " or re.search(rf"(?<!\w){re.escape(raw)}(?!\w)", flat) is not None


_ECHO = re.compile(r"\b(Question|Answer|Passage)\s*:|问题[:：]|答案[:：]|材料[:：]")
# "1. ", "12) ", "- ", "* ", "• ": a list marker is a whole token followed by a space ("3.5 million", "-5 degrees",
# "*emphasis*" and a year such as "1990. That year..." are text)
_ENUM = re.compile(r"\s*(?:\d{1,2}[.)]|[-*•])\s+")


def strip_list_marker(fact: str) -> str:
    """A fact without the list marker the model put before it; a fact without one comes back unchanged."""
    m = _ENUM.match(fact)
    return fact[m.end():] if m else fact


def fact_problem(fact: str, item: Item, s: Settings, subjects: set[str], evidence_grams: set) -> str | None:
    """Why a candidate confusing fact is rejected, or None when it passes every check."""
    lang = item.language
    size = len(_norm(fact, lang)) // 2 if lang == "zh" else len(fact.split())
    if size < s.min_fact_words:
        return f"too short ({size} < {s.min_fact_words} words)"
    if size > s.max_fact_words:
        return f"too long ({size} > {s.max_fact_words} words): a fact is a sentence or two"
    if not (fact[0].isalnum() or fact[0] in "\"'“‘「《"):
        return f"does not start a sentence ({fact[:20]!r})"
    words = re.findall(r"[a-z0-9']+", fact.lower()) if lang == "en" else []
    if words and words[-1] in STOP_EN - {"it", "them", "him", "us", "you", "this", "that", "these", "those"}:
        return f"ends mid-sentence ({words[-1]!r})"
    if _ECHO.search(fact):
        return "echoes the prompt (Question/Answer/Passage)"
    all_grams = _grams(fact, lang)
    if len(all_grams) >= 8 and len(set(all_grams)) < 0.8 * len(all_grams):
        return "repeats itself"
    for kw in [*item.keyword_list(), *item.answers]:
        if contains_term(fact, kw, lang):
            return f"contains the answer keyword {kw!r}"
    norm = _norm(fact, lang)
    if any(norm and norm in _norm(d, lang) for d in item.documents):
        return "repeats the evidence verbatim"
    grams = _grams(fact, lang)
    if grams:
        share = sum(g in evidence_grams for g in grams) / len(grams)
        if share > s.max_evidence_overlap:
            return f"repeats the evidence ({share:.0%} of its 4-grams are in it)"
    if not (content_terms(fact, lang) & subjects):
        return "shares no subject term with the evidence"
    return None


def parse_facts(result: Result) -> tuple[list[str], str | None]:
    if not result.ok:
        return [], f"engine error: {result.error}"
    try:
        value = json.loads(result.text, strict=False)
        facts = value.get("facts") if isinstance(value, dict) else None
    except json.JSONDecodeError as e:
        return [], f"not JSON ({e.msg}): {result.text[:200]!r}"
    if not isinstance(facts, list):
        return [], f"no `facts` list in {result.text[:200]!r}"
    # "1. ..." and "- ..." list markers are the model's layout, not part of a fact
    cleaned = [strip_list_marker(" ".join(f.split())) for f in facts if isinstance(f, str)]
    return [f for f in cleaned if f], None


@dataclass
class FactsOutcome:
    facts: dict[str, list[str]]  # item id -> accepted facts
    rejected: list[dict[str, Any]]  # {id, stage, reason, source, record}


def confusing_facts(items: list[Item], engine: Engine, s: Settings,
                    on_result: Callable[[int, Result], None] | None = None) -> FactsOutcome:
    """Rounds of engine calls: every item still short of `facts_per_item` asks again, up to `fact_attempts`."""
    out = FactsOutcome({it.id: [] for it in items}, [])
    if s.facts_per_item <= 0:
        return out
    checks = {it.id: (subject_terms(it), set(g for d in it.documents for g in _grams(d, it.language)))
              for it in items}
    for attempt in range(s.fact_attempts):
        todo = [it for it in items if len(out.facts[it.id]) < s.facts_per_item]
        if not todo:
            break
        chats = [({"role": "user", "content": CFI_PROMPT[it.language if it.language in CFI_PROMPT else "en"].format(
            evidence=evidence_excerpt(it), question=it.question, answer=it.answers[0], k=s.facts_per_item)},)
            for it in todo]
        room = [engine.context_window - p for p in estimate_prompt_tokens(engine, chats)]
        reqs = [Request(messages=c, max_tokens=max(1, min(s.max_tokens, r)), temperature=s.temperature,
                        top_p=s.top_p, seed=s.seed + attempt, sample_index=attempt,
                        json_schema=facts_schema(s.facts_per_item, it.language))
                for c, r, it in zip(chats, room, todo, strict=True)]
        for it, res in zip(todo, engine.generate(reqs, on_result=on_result), strict=True):
            candidates, problem = parse_facts(res)
            if problem:
                out.rejected.append(_rejected(it, "cfi", problem, res.text))
            for fact in candidates:
                kept = out.facts[it.id]
                why = fact_problem(fact, it, s, *checks[it.id])
                if why is None and any(_norm(fact, it.language) == _norm(k, it.language) for k in kept):
                    why = "duplicate of an accepted fact"
                if why is None and len(kept) >= s.facts_per_item:
                    why = "item already has facts_per_item facts"
                if why:
                    out.rejected.append(_rejected(it, "cfi", why, fact))
                else:
                    kept.append(fact)
    return out


def _rejected(item: Item, stage: str, reason: str, candidate: Any) -> dict[str, Any]:
    return {"id": item.id, "stage": stage, "reason": reason, "source": item.source,
            "record": candidate if isinstance(candidate, str) else json.dumps(candidate, ensure_ascii=False)}


# ---- keyword and phrase replacement -----------------------------------------------------------------------


class Replacer:
    """One pass over a text replaces every original (longest first, whole words for en) and counts them."""

    def __init__(self, table: dict[str, str], lang: str):
        self.table = table
        self.counts = dict.fromkeys(table, 0)
        alternation = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
        self._re = None
        if table:
            self._re = re.compile(alternation if lang == "zh" else rf"(?<!\w)(?:{alternation})(?!\w)")

    def _sub(self, m: re.Match) -> str:
        self.counts[m.group(0)] += 1
        return self.table[m.group(0)]

    def __call__(self, text: str, count: bool = True) -> str:
        if self._re is None:
            return text
        if count:
            return self._re.sub(self._sub, text)
        return self._re.sub(lambda m: self.table[m.group(0)], text)


def shares_characters(a: str, b: str) -> set[str]:
    """Characters two terms have in common, ignoring case, spaces and punctuation."""
    keep = lambda s: {c for c in s.lower() if c.isalnum()}  # noqa: E731
    return keep(a) & keep(b)


def check_table(table: dict[str, str], item: Item) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """(accepted replacements, [(original, replacement, reason)] rejected)."""
    lang = item.language
    evidence = "\n".join(item.documents)
    known = "\n".join([evidence, item.question, *item.answers])
    accepted: dict[str, str] = {}
    rejected = []
    word = (lambda t, w: w in t) if lang == "zh" else (
        lambda t, w: re.search(rf"(?<!\w){re.escape(w)}(?!\w)", t) is not None)
    for orig, repl in table.items():
        orig_s, repl_s = orig.strip(), repl.strip()
        common = shares_characters(orig_s, repl_s)
        why = (
            "empty term" if not orig_s or not repl_s
            else f"{orig_s!r} does not occur in the supporting documents" if not word(evidence, orig_s)
            else f"shares characters {''.join(sorted(common))!r} with the original" if common
            else f"{repl_s!r} already occurs in the item" if word(known, repl_s)
            else f"overlaps the replacement of {next(k for k in accepted if orig_s in k or k in orig_s)!r}"
            if any(orig_s in k or k in orig_s for k in accepted)
            else None
        )
        if why is None:
            trial = Replacer({**accepted, orig_s: repl_s}, lang)
            docs = [trial(d, count=False) for d in item.documents]
            if not all(any(trial(a, count=False) in d for d in docs) for a in item.answers):
                why = "an answer would no longer be found in the replaced documents"
        if why:
            rejected.append((orig, repl, why))
        else:
            accepted[orig_s] = repl_s
    return accepted, rejected


KPR_PROMPT = {
    "en": "Passage:\n{evidence}\n\nQuestion: {question}\nAnswer: {answer}\n\nPick up to {k} key terms (names, "
          "technical terms) that occur in the passage, and invent a made-up replacement for each that has none of "
          'the letters of the original. Reply in JSON: {{"replacements": [{{"original": "...", '
          '"replacement": "..."}}]}}',
    "zh": "材料：\n{evidence}\n\n问题：{question}\n答案：{answer}\n\n"
          "从材料中选出最多{k}个关键词（名称、术语），为每个编造一个与原词没有任何相同字的替换词。"
          '用 JSON 回复：{{"replacements": [{{"original": "...", "replacement": "..."}}]}}',
}


def kpr_schema(k: int) -> dict[str, Any]:
    pair = {"type": "object", "required": ["original", "replacement"],
            "properties": {"original": {"type": "string"}, "replacement": {"type": "string"}}}
    return {"type": "object", "required": ["replacements"],
            "properties": {"replacements": {"type": "array", "minItems": 1, "maxItems": max(1, k), "items": pair}}}


def parse_table(result: Result) -> tuple[dict[str, str], str | None]:
    if not result.ok:
        return {}, f"engine error: {result.error}"
    try:
        value = json.loads(result.text, strict=False)
        pairs = value.get("replacements") if isinstance(value, dict) else None
    except json.JSONDecodeError as e:
        return {}, f"not JSON ({e.msg}): {result.text[:200]!r}"
    if not isinstance(pairs, list):
        return {}, f"no `replacements` list in {result.text[:200]!r}"
    table = {p["original"]: p["replacement"] for p in pairs if isinstance(p, dict)
             and isinstance(p.get("original"), str) and isinstance(p.get("replacement"), str)}
    return table, None


def replacement_tables(items: list[Item], s: Settings, engine: Engine | None = None,
                       on_result: Callable[[int, Result], None] | None = None
                       ) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
    """Each item's checked replacement table ({} with `kpr: off`) and the rejected entries."""
    proposed: dict[str, dict[str, str]] = {it.id: {} for it in items}
    rejected: list[dict[str, Any]] = []
    if s.kpr == "given":
        proposed = {it.id: it.replacements for it in items}
    elif s.kpr == "engine":
        if engine is None:
            raise ValueError("kpr: engine needs an engine")
        chats = [({"role": "user", "content": KPR_PROMPT[it.language if it.language in KPR_PROMPT else "en"].format(
            evidence=evidence_excerpt(it), question=it.question, answer=it.answers[0], k=s.max_replacements)},)
            for it in items]
        room = [engine.context_window - p for p in estimate_prompt_tokens(engine, chats)] if chats else []
        reqs = [Request(messages=c, max_tokens=max(1, min(s.max_tokens, r)), temperature=0.0,
                        json_schema=kpr_schema(s.max_replacements)) for c, r in zip(chats, room, strict=True)]
        for it, res in zip(items, engine.generate(reqs, on_result=on_result) if reqs else [], strict=True):
            table, problem = parse_table(res)
            if problem:
                rejected.append(_rejected(it, "kpr", problem, res.text))
            proposed[it.id] = table
    tables = {}
    for it in items:
        tables[it.id], bad = check_table(proposed[it.id], it)
        rejected += [_rejected(it, "kpr", why, {"original": o, "replacement": r}) for o, r, why in bad]
    return tables, rejected


def replaced_item(item: Item, replace: Replacer) -> tuple[str, list[str], str]:
    """Question, answers and keywords with the item's replacements (not counted: counts are of the context)."""
    return (replace(item.question, count=False), [replace(a, count=False) for a in item.answers],
            replace(item.keywords, count=False))

"""One LV-Eval context: the item's supporting documents at a recorded depth, its confusing facts at random
paragraph boundaries, and distractors until the level is reached: first the other QA items' documents (LV-Eval's
"mixup": the documents of the other questions are the closest distractors there are), then documents sampled
from the distractor pool, in a seeded random order.

A record's `length` counts what LV-Eval's does: input + context + answers (words for en, characters for zh),
so the context is filled to the level minus the question and answers; `context_length` is the context alone.

Distractors are whole documents except the last, which is cut to the units left, so a context lands on its
level (words and characters exactly, tokens within a token or two) before replacements change it slightly.
A context is built from the distractors' paragraphs and joined once: building a 256k-word record costs a few
copies of it, whatever the number of records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lendata.methods.lveval.items import Item, Replacer, Settings, replaced_item
from lendata.methods.lveval.pool import SEP, Pool, Unit, level_name, text_hash


class PoolTooSmall(ValueError):
    pass


class EvidenceTooLong(ValueError):
    pass


def rng_for(*key: Any) -> np.random.Generator:
    """A generator seeded by the record's identity, so a record never depends on which others are built."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def depth_plan(s: Settings, n_docs: int) -> list[tuple[str, list[float] | None]]:
    """(tag, per-document target depths) per record of an item; None means draw uniformly per record."""
    if s.depth == "uniform":
        return [("u", None)]
    if s.depth == "fixed":
        return [(f"d{s.depths[0]:g}", [s.depths[0]] * n_docs)]
    return [(f"d{d:g}", [d] * n_docs) for d in s.depths]


@dataclass
class Context:
    text: str
    length: int
    depth: list[float]  # units before each supporting document / units not in it
    evidence_offsets: list[int]  # character offset of each supporting document
    fact_offsets: list[int]  # character offset of each inserted confusing fact
    distractors: int


def item_documents(items: Sequence[Item], unit: Unit) -> Pool:
    """Every QA item's supporting documents as a pool (sources: the owning item's id), to mix into the other
    items' contexts."""
    docs = [(it.id, d) for it in items for d in it.documents]
    texts = [d for _, d in docs]
    return Pool(texts=texts, sources=[i for i, _ in docs], sizes=np.asarray(unit.counts(texts), np.int64),
                hashes=[text_hash(t) for t in texts])


def distractors(pool: Pool, unit: Unit, budget: int, rng: np.random.Generator, exclude: set[str],
                level: int, mixed: Pool | None = None, label: str | None = None) -> tuple[list[str], list[int]]:
    """The other items' documents, then pool documents, each in a random order, until `budget` units are
    spent (the last one is cut to fit); returned in a random order, so the mixed ones are not all up front."""
    mixed = mixed or Pool()
    order = [(mixed, int(i)) for i in rng.permutation(len(mixed.texts))]
    order += [(pool, int(i)) for i in rng.permutation(len(pool.texts))]
    texts, sizes = [], []
    left = budget
    for src, i in order:
        if left <= unit.sep:
            break
        if src.hashes[i] in exclude:
            continue
        cost = int(src.sizes[i]) + unit.sep
        if cost <= left:
            texts.append(src.texts[i])
            sizes.append(int(src.sizes[i]))
            left -= cost
        else:
            cut = unit.cut(src.texts[i], left - unit.sep)
            texts.append(cut)
            sizes.append(left - unit.sep)
            left = 0
    if left > unit.sep + max(2, level // 100):
        others = [i for i in range(len(mixed.texts)) if mixed.hashes[i] not in exclude]
        held = f"{len(others)} document{'' if len(others) == 1 else 's'}"
        raise PoolTooSmall(
            f"the distractor pool holds {pool.total:,} {unit.name} ({len(pool.texts)} document"
            f"{'' if len(pool.texts) == 1 else 's'}) and the other QA items {int(mixed.sizes[others].sum()):,} "
            f"{unit.name} ({held}), but the {label or level_name(level)} level's context needs {budget:,} "
            f"{unit.name} of distractors: point `distractors` at a larger corpus, raise `pool_factor`, or lower "
            "the levels")
    shuffled = rng.permutation(len(texts))
    return [texts[i] for i in shuffled], [sizes[i] for i in shuffled]


def assemble(item: Item, facts: list[str], pool: Pool, unit: Unit, level: int, targets: list[float] | None,
             rng: np.random.Generator, replace: Replacer | None = None, mixed: Pool | None = None,
             label: str | None = None) -> Context:
    """A context of `level` units around the item's documents and facts (`label`: the level it is for)."""
    ev_sizes = unit.counts(item.documents)
    f_sizes = unit.counts(facts) if facts else []
    fixed = sum(ev_sizes) + sum(f_sizes) + unit.sep * (len(ev_sizes) + len(f_sizes) - 1)
    if fixed > level:
        raise EvidenceTooLong(f"{item.id}: the supporting documents and facts are {fixed:,} {unit.name}, longer "
                              f"than the {level_name(level)} level")
    exclude = {text_hash(d) for d in item.documents}
    d_texts, d_sizes = distractors(pool, unit, level - fixed, rng, exclude, level, mixed, label)
    # evidence and facts go between paragraphs, not only between documents: a depth sweep needs finer steps
    # than whole documents; splitting on SEP and joining with it again gives back the same text
    d_texts = [p for t in d_texts for p in t.split(SEP)]
    d_sizes = unit.counts(d_texts)
    # prefix[b]: units before boundary b (before distractor paragraph b), separators included
    prefix = np.concatenate([[0], np.cumsum(np.asarray(d_sizes, np.int64) + unit.sep)])
    if targets is None:
        targets = sorted(rng.uniform(0.0, 1.0, size=len(item.documents)).tolist())
    at: dict[int, list[tuple[str, int, str]]] = {}
    for j, (doc, t) in enumerate(zip(item.documents, targets, strict=True)):
        b = int(np.argmin(np.abs(prefix - t * (level - ev_sizes[j]))))
        at.setdefault(b, []).append(("evidence", j, doc))
    for j, fact in enumerate(facts):
        at.setdefault(int(rng.integers(0, len(d_texts) + 1)), []).append(("fact", j, fact))
    pieces: list[tuple[str, int, str]] = []
    for b in range(len(d_texts) + 1):
        pieces += sorted(at.get(b, []), key=lambda p: p[0] == "fact")  # evidence before facts at a boundary
        if b < len(d_texts):
            pieces.append(("distractor", b, d_texts[b]))
    sizes = {("evidence", j): n for j, n in enumerate(ev_sizes)} | {("fact", j): n for j, n in enumerate(f_sizes)}
    ev_off, f_off = [0] * len(ev_sizes), [0] * len(f_sizes)
    depth = [0.0] * len(ev_sizes)
    chars = units = 0
    parts = []
    for kind, j, text in pieces:
        if parts:
            chars += len(SEP)
            units += unit.sep
        text = replace(text) if replace else text
        if kind == "evidence":
            ev_off[j], depth[j] = chars, units
        elif kind == "fact":
            f_off[j] = chars
        parts.append(text)
        chars += len(text)
        units += d_sizes[j] if kind == "distractor" else sizes[(kind, j)]
    context = SEP.join(parts)
    del parts
    # depth 0: the document opens the context; 1: it closes it (the needle-in-a-haystack convention)
    depth = [round(min(1.0, d / max(units - n, 1)), 4) for d, n in zip(depth, ev_sizes, strict=True)]
    return Context(text=context, length=unit.count(context), depth=depth,
                   evidence_offsets=ev_off, fact_offsets=f_off, distractors=len(d_texts))


def record(item: Item, facts: list[str], table: dict[str, str], pool: Pool, unit: Unit, level: int,
           tag: str, targets: list[float] | None, s: Settings, dataset: str, mixed: Pool | None = None
           ) -> dict[str, Any]:
    """One output row in LV-Eval's shape plus level, depth, offsets and the replacements made. `mixed`: the QA
    items' documents (`item_documents`), mixed in as the first distractors (the item's own are skipped)."""
    replace = Replacer(table, item.language)
    # LV-Eval's `length` is input + context + answers: the context gets what the question and answers leave
    qa = unit.count(item.question) + sum(unit.counts(list(item.answers)))
    if qa >= level:
        raise EvidenceTooLong(f"{item.id}: the question and answers are {qa:,} {unit.name}, as long as the "
                              f"{level_name(level)} level")
    ctx = assemble(item, facts, pool, unit, level - qa, targets, rng_for(s.seed, item.id, level, tag), replace,
                   mixed, level_name(level))
    question, answers, keywords = replaced_item(item, replace)
    length = unit.count(question) + ctx.length + sum(unit.counts(list(answers)))
    name = level_name(level)
    return {
        "id": f"{item.id}-{name}-{tag}",
        "input": question,
        "context": ctx.text,
        "answers": answers,
        "length": length,
        "context_length": ctx.length,
        "dataset": f"{dataset}_{name}",
        "language": item.language,
        "answer_keywords": keywords,
        "confusing_facts": [replace(f, count=False) for f in facts],
        "level": name,
        "level_length": level,
        "unit": unit.name,
        "depth": ctx.depth,
        "evidence_offsets": ctx.evidence_offsets,
        "fact_offsets": ctx.fact_offsets,
        "distractors": ctx.distractors,
        "replacements": [{"original": k, "replacement": v, "count": replace.counts[k]} for k, v in table.items()],
        "item_id": item.id,
        "source": item.source,
    }

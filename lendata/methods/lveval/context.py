"""One LV-Eval context: the item's supporting documents at a recorded depth, its confusing facts at random
paragraph boundaries, and distractors sampled from the pool until the level is reached.

Distractors are whole documents except the last, which is cut to the units left, so a context lands on its
level (words and characters exactly, tokens within a token or two) before replacements change it slightly.
A context is built from the distractors' paragraphs and joined once: building a 256k-word record costs a few
copies of it, whatever the number of records.
"""

from __future__ import annotations

import hashlib
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


def distractors(pool: Pool, unit: Unit, budget: int, rng: np.random.Generator, exclude: set[str],
                level: int) -> tuple[list[str], list[int]]:
    """Pool documents in a random order until `budget` units are spent; the last one is cut to fit."""
    texts, sizes = [], []
    left = budget
    for i in rng.permutation(len(pool.texts)):
        if left <= unit.sep:
            break
        if pool.hashes[i] in exclude:
            continue
        cost = int(pool.sizes[i]) + unit.sep
        if cost <= left:
            texts.append(pool.texts[i])
            sizes.append(int(pool.sizes[i]))
            left -= cost
        else:
            cut = unit.cut(pool.texts[i], left - unit.sep)
            texts.append(cut)
            sizes.append(left - unit.sep)
            left = 0
    if left > unit.sep + max(2, level // 100):
        raise PoolTooSmall(
            f"the distractor pool holds {pool.total:,} {unit.name} ({len(pool.texts)} document"
            f"{'' if len(pool.texts) == 1 else 's'}) but a {level_name(level)} context needs {budget:,} {unit.name} "
            "of distractors: point `distractors` at a larger corpus, raise `pool_factor`, or lower the levels")
    return texts, sizes


def assemble(item: Item, facts: list[str], pool: Pool, unit: Unit, level: int, targets: list[float] | None,
             rng: np.random.Generator, replace: Replacer | None = None) -> Context:
    ev_sizes = unit.counts(item.documents)
    f_sizes = unit.counts(facts) if facts else []
    fixed = sum(ev_sizes) + sum(f_sizes) + unit.sep * (len(ev_sizes) + len(f_sizes) - 1)
    if fixed > level:
        raise EvidenceTooLong(f"{item.id}: the supporting documents and facts are {fixed:,} {unit.name}, longer "
                              f"than the {level_name(level)} level")
    exclude = {text_hash(d) for d in item.documents}
    d_texts, d_sizes = distractors(pool, unit, level - fixed, rng, exclude, level)
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
           tag: str, targets: list[float] | None, s: Settings, dataset: str) -> dict[str, Any]:
    """One output row in LV-Eval's shape plus level, depth, offsets and the replacements made."""
    replace = Replacer(table, item.language)
    ctx = assemble(item, facts, pool, unit, level, targets, rng_for(s.seed, item.id, level, tag), replace)
    question, answers, keywords = replaced_item(item, replace)
    name = level_name(level)
    return {
        "id": f"{item.id}-{name}-{tag}",
        "input": question,
        "context": ctx.text,
        "answers": answers,
        "length": ctx.length,
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

"""LV-Eval's raw material: how context length is counted, and the pool of distractor documents.

A context's length is counted in one unit: whitespace words (en), characters (zh) or tokens of a tokenizer.
Every unit can also *cut* a text to its first n units, which is how the last distractor is trimmed so a
context lands on its level. The pool holds at most what the longest level needs (times a margin), so memory
stays bounded however large the distractor corpus is.
"""

from __future__ import annotations

import ast
import hashlib
import heapq
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lendata.inputs import InputError

SEP = "\n\n"  # between the documents of a context
PYTHON_DOCS = "@python-docs"  # the running Python's reference topics and standard-library docstrings
_PYTHON_DOCS_FORMAT = 1  # bump when python_docs() or reflow() change what they produce: the cache is rebuilt
_RULE = re.compile(r"^\s*[*=~\-^]{3,}\s*$")
_WORD = re.compile(r"\S+")


def reflow(text: str) -> str:
    """One line per paragraph, single spaces, underline rules dropped: a reference page as running prose."""
    paras = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if not _RULE.match(ln)]
        para = " ".join(" ".join(lines).split())
        if para:
            paras.append(para)
    return SEP.join(paras)


def text_hash(text: str) -> str:
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()


class Unit:
    """Counts and cuts text in one unit; `sep` is what one SEP between documents adds to a count."""

    name = "words"
    sep = 0

    def count(self, text: str) -> int:
        # counted without building the list of words: for a 256k-word context that list is ~15 MB
        return sum(1 for _ in _WORD.finditer(text))

    def counts(self, texts: list[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def cut(self, text: str, n: int) -> str:
        """The first n units of `text` (n < count)."""
        if n <= 0:
            return ""
        for i, m in enumerate(_WORD.finditer(text), start=1):
            if i == n:
                return text[: m.end()]
        return text


class Chars(Unit):
    name = "chars"
    sep = len(SEP)

    def count(self, text: str) -> int:
        return len(text)

    def cut(self, text: str, n: int) -> str:
        return text[: max(n, 0)]


class Tokens(Unit):
    name = "tokens"

    def __init__(self, tokenizer_path: str | None = None):
        from lendata.lengths import load_tokenizer

        self.tok = load_tokenizer(tokenizer_path)
        # what SEP costs between two documents, which can differ from SEP alone ("\n\n" is one token, but two
        # after a full stop in SmolLM2's BPE)
        self.sep = self.count(f"end.{SEP}Start") - self.count("end.") - self.count("Start")

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def cut(self, text: str, n: int) -> str:
        if n <= 0:
            return ""
        offsets = self.tok.encode(text, add_special_tokens=False).offsets
        return text[: offsets[min(n, len(offsets)) - 1][1]]


def make_unit(name: str, language: str, tokenizer: str | None = None) -> Unit:
    """`auto`: words for en, characters for zh (LV-Eval's levels)."""
    if name == "auto":
        name = "chars" if language == "zh" else "words"
    if name == "words":
        return Unit()
    if name == "chars":
        return Chars()
    if name == "tokens":
        return Tokens(tokenizer)
    raise ValueError(f"unknown length unit {name!r}; choose auto, words, chars or tokens")


def parse_level(level: int | str) -> int:
    """`16k` -> 16000 (LV-Eval's levels are thousands of words), `2048` -> 2048."""
    s = str(level).strip().lower().replace("_", "")
    mult = 1000 if s.endswith("k") else 1
    try:
        value = int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError:
        raise ValueError(f"level {level!r} is not a length such as 16k or 20000") from None
    if value <= 0:
        raise ValueError(f"level {level!r} must be positive")
    return value


def level_name(level: int | str) -> str:
    n = parse_level(level)
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


@dataclass
class Pool:
    """Distractor documents with their sizes in the build's unit and a hash to exclude an item's own evidence."""

    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hashes: list[str] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(self.sizes.sum())


def python_docs() -> Iterator[tuple[str, str]]:
    """(source, text): the Language Reference topics, then each standard-library module's docstrings.

    Real English prose on every machine that has Python; the module files are parsed, never imported.
    """
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield f"pydoc_data.topics:{key}", reflow(pydoc_data.topics.topics[key])
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("**/*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds)]
        docs = [reflow(d) for d in docs if d and len(d.split()) >= 15]
        if sum(len(d.split()) for d in docs) >= 100:
            yield str(path.relative_to(root)), SEP.join(docs)


def _corpus_docs(path: str, text_field: str, glob: str) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    from lendata.corpus import text_batches

    for sources, texts, bad in text_batches(path, text_field=text_field, glob=glob, batch_docs=512):
        for s, t in zip(sources, texts, strict=True):
            yield s, t, []
        if bad:
            yield "", "", bad


def sample_key(seed: int, digest: str) -> int:
    """A document's place in the seeded sample, from the seed and its `text_hash` alone, so the sample does not
    depend on where a document sits in the corpus or on what else the corpus holds."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{digest}".encode()).digest()[:8], "little")


def read_pool(source: str | Path, unit: Unit, cap: int, text_field: str = "text", glob: str = "**/*.txt",
              min_size: int = 20, seed: int = 0) -> Pool:
    """A seeded sample of the whole distractor corpus, about `cap` units (LV-Eval samples distractors from its
    corpora; the first documents of a corpus in file order are one topic, one era, one author).

    Every document gets a key from the seed and its text; the pool is the documents with the smallest keys
    whose total reaches `cap`. One pass over the corpus with a heap, so memory stays about `cap` units however
    large the corpus is; a document whose key cannot enter the pool any more is not even counted. Documents
    under `min_size` units are skipped (headers, stubs); unreadable ones are kept as quarantine records in
    `pool.bad`. The pool is in key order: random, and the same for the same seed.
    """
    if str(source) == PYTHON_DOCS:
        docs: Iterator[tuple[str, str, list[dict[str, Any]]]] = ((s, t, []) for s, t in cached_python_docs())
    else:
        from lendata.remote import is_url

        if not is_url(str(source)) and not Path(source).exists():
            raise InputError(f"distractor corpus not found: {source}")
        docs = _corpus_docs(str(source), text_field, glob)
    pool = Pool()
    # (-key, arrival, source, text, size, text_hash): the largest key on top
    heap: list[tuple[int, int, str, str, int, str]] = []
    total = 0
    arrival = 0
    batch: list[tuple[int, str, str, str]] = []

    def bar() -> int:  # keys at or above this cannot enter a full pool
        return -heap[0][0] if heap and total >= cap else 1 << 64

    def flush() -> None:
        nonlocal total, arrival
        todo = [b for b in batch if b[0] < bar()]
        batch.clear()
        for (key, src, text, digest), size in zip(todo, unit.counts([b[2] for b in todo]), strict=True):
            if size < min_size or key >= bar():
                continue
            heapq.heappush(heap, (-key, arrival, src, text, size, digest))
            arrival += 1
            total += size
            while heap and total - heap[0][4] >= cap:  # the largest key is not needed to reach the cap
                total -= heapq.heappop(heap)[4]

    for src, text, bad in docs:
        pool.bad.extend(bad)
        if text.strip():
            digest = text_hash(text)
            batch.append((sample_key(seed, digest), src, text, digest))
        if len(batch) >= 256:
            flush()
    flush()
    kept = sorted(heap, key=lambda h: (-h[0], h[1]))
    pool.texts = [h[3] for h in kept]
    pool.sources = [h[2] for h in kept]
    pool.hashes = [h[5] for h in kept]
    pool.sizes = np.asarray([h[4] for h in kept], dtype=np.int64)
    return pool


def cached_python_docs() -> Iterator[tuple[str, str]]:
    """`python_docs()`, made once per Python installation and kept in the user cache: sampling reads the whole
    corpus, and parsing the standard library takes ~20 s on 2 cores, where reading the cached file takes well
    under 1. The cache is named by what made it: the code's format, this Python and its stdlib's place."""
    import sys

    from lendata.corpus import cached_documents

    origin = f"{_PYTHON_DOCS_FORMAT}|{sys.version}|{sysconfig.get_paths()['stdlib']}"
    return cached_documents("python-docs", origin, python_docs)

"""Dataset Decomposition (Pouransari et al. 2024, METHODS.md §5): cut tokenised documents into pieces of
exactly 2^k tokens (bucket D_k), each piece a contiguous slice of one document.

A document of length l gives one piece per set bit of l between 2^min and 2^max (binary decomposition);
the rest (l mod 2^min) is dropped. Lengths above 2^max follow one of two overflow rules:

- `random` (the reference's `randomize=True`): while the remainder is at least 2^(max+1), cut a piece of
  2^k with k drawn from [min, max] with p(k) proportional to 2^(max-k), so every bucket expects equal tokens;
- `cap` (OLMo-core, deterministic): cut as many 2^max pieces as fit, then decompose the remainder.

With `plus_one` each piece holds 2^k + 1 tokens (inputs and shifted targets), as in the reference.

Deliberate deviation: the reference draws k for every document from one random stream, so a document's pieces
depend on the documents read before it. Here each document draws from its own counter-based stream of
(seed, doc_id, draw) (splitmix64), so the pieces do not depend on the batch, unit, shard or runner; the
distribution p(k) is the reference's (tests/test_decompose.py checks both).

Everything here is arithmetic on arrays of document lengths: the pieces of a whole record batch of documents
are computed together (one numpy pass per bucket, and per draw round for `random`), and their tokens are
gathered from the batch's flat token buffer by one fancy index per bucket. Nothing is per-document Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

Overflow = Literal["random", "cap"]


@dataclass
class Settings:
    min_log2: int = 8  # buckets D_min (2^min_log2 tokens) ...
    max_log2: int = 13  # ... to D_max
    overflow: Overflow = "random"  # random: k ~ 2^(max-k) for pieces of over-long documents (reference); cap
    plus_one: bool = False  # pieces of 2^k + 1 tokens (inputs + shifted targets)
    seed: int = 42  # the random overflow rule: each document draws from its own stream of (seed, doc_id)
    eos_token: str | None = "<|endoftext|>"  # appended to every document; null for none
    baseline_length: int | None = 8192  # concat-and-chunk baseline at this length; null for none
    batch_docs: int = 2048  # documents per record batch (memory is bounded by this, not the corpus)
    rows_per_shard: int = 8192  # pieces per Parquet shard of a bucket
    unit_bytes: int = 64 << 20  # input bytes per work unit: units are what shards share out and name files
    # the corpus (fields after the method's own: `Settings(min_log2, max_log2, ...)` stays positional)
    input: str = "@stdlib"  # the CPython standard library; or a folder, .jsonl/.parquet files, tokenised .parquet
    glob: str | None = "**/*.txt"  # files of a folder input
    text_field: str = "text"  # the text column of .jsonl/.parquet input
    token_field: str | None = None  # a list-of-integers column: the input is already tokenised
    tokenizer: str | None = None  # a tokenizers JSON file; null: the bundled SmolLM2 tokenizer
    vocab_size: int | None = None  # for tokenised input: ids < 65,536 are stored as uint16

    def __post_init__(self) -> None:
        if not 0 <= self.min_log2 <= self.max_log2 <= 30:
            raise ValueError(f"need 0 <= min_log2 <= max_log2 <= 30, got {self.min_log2}, {self.max_log2}")
        if self.unit_bytes < 1:
            raise ValueError(f"unit_bytes must be at least 1, got {self.unit_bytes}")
        if self.overflow not in ("random", "cap"):
            raise ValueError(f"overflow is random or cap, got {self.overflow!r}")

    @property
    def extra(self) -> int:
        return int(self.plus_one)

    def size(self, k: int) -> int:
        """Tokens in one sequence of bucket k."""
        return (1 << k) + self.extra


@dataclass
class Pieces:
    """Pieces of a batch of documents: document index (in the batch), offset in that document, log2 size."""

    doc: np.ndarray
    offset: np.ndarray
    log2: np.ndarray
    dropped: np.ndarray  # per document: tokens after its last piece

    def __len__(self) -> int:
        return int(self.doc.size)


def random_odds(min_log2: int, max_log2: int) -> tuple[np.ndarray, np.ndarray]:
    """(levels max..min, p(k) proportional to 2^(max-k)): equal expected tokens per bucket."""
    levels = np.arange(max_log2, min_log2 - 1, -1)
    p = 2.0 ** np.arange(levels.size)
    return levels, p / p.sum()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs pass BigCrush as a counter-based stream."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def document_uniforms(seed: int, doc_ids: np.ndarray, draw: int) -> np.ndarray:
    """The `draw`-th uniform in [0, 1) of each document's own stream, a function of (seed, doc id, draw) alone:
    a document's pieces do not depend on the batch, unit or shard it was read in (numpy's generators give one
    stream per generator, and one generator per document would be a Python loop)."""
    return _uniforms(_document_keys(seed, doc_ids), np.asarray(draw))


def _document_keys(seed: int, doc_ids: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
        return _mix(np.asarray(doc_ids, dtype=np.int64).astype(np.uint64) * _GOLDEN
                    + _mix(np.array([seed], dtype=np.int64).astype(np.uint64)))


def _uniforms(keys: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Uniforms of (key, draw) pairs, broadcast: keys (n, 1) and draws (B,) give an (n, B) block."""
    with np.errstate(over="ignore"):
        bits = _mix(keys + (draws.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# draws per document per round of the random rule: a round takes a block of each still-too-long document's
# stream at once (most need one or two pieces; the longest, hundreds), so the rounds are few numpy passes
FIRST_BLOCK, LAST_BLOCK = 8, 512


def decompose_lengths(lengths: np.ndarray, s: Settings, doc_ids: np.ndarray | None = None) -> Pieces:
    """The pieces of documents with these lengths, in document order within each phase (the random rule's
    pieces ordered by draw, then document). `doc_ids` (default 0..n-1) seed each document's draws for the
    random overflow rule."""
    rem = np.asarray(lengths, dtype=np.int64).copy()
    pos = np.zeros_like(rem)
    docs: list[np.ndarray] = []
    offs: list[np.ndarray] = []
    ks: list[np.ndarray] = []
    if s.overflow == "random":
        docs, offs, ks = _random_pieces(rem, pos, s, doc_ids)
    for k in range(s.max_log2, s.min_log2 - 1, -1):
        size = s.size(k)
        # below 2^(k+1) (+extra) left, at most one piece fits; only k = max can repeat (cap rule)
        count = rem // size
        has = np.flatnonzero(count)
        if not has.size:
            continue
        c = count[has]
        d = np.repeat(has, c)
        within = np.arange(d.size) - np.repeat(np.cumsum(c) - c, c)
        docs.append(d)
        offs.append(np.repeat(pos[has], c) + within * size)
        ks.append(np.full(d.size, k))
        pos[has] += c * size
        rem[has] -= c * size
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt))  # noqa: E731
    return Pieces(cat(docs, np.int64), cat(offs, np.int64), cat(ks, np.int8), rem)


def _random_pieces(rem: np.ndarray, pos: np.ndarray, s: Settings, doc_ids: np.ndarray | None
                   ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The random rule (METHODS.md §5): while at least 2^(max+1) (+extra) tokens remain, cut a piece of 2^k with
    p(k) from the document's own stream. Cuts `rem` and advances `pos` in place; returns ([docs], [offsets],
    [log2]) ordered by draw, then document, as one draw per document per round would give."""
    extra = s.extra
    ids = np.arange(rem.size, dtype=np.int64) if doc_ids is None else np.asarray(doc_ids, dtype=np.int64)
    levels, p = random_odds(s.min_log2, s.max_log2)
    cumulative = np.cumsum(p)
    limit = 1 << (s.max_log2 + 1)
    active = np.flatnonzero(rem - extra >= limit)
    keys = _document_keys(s.seed, ids[active])[:, None]
    got_doc, got_off, got_k, got_draw = [], [], [], []
    draw, block = 0, FIRST_BLOCK
    while active.size:
        draws = np.arange(draw, draw + block)
        k = levels[np.minimum(np.searchsorted(cumulative, _uniforms(keys, draws), side="right"), levels.size - 1)]
        size = (np.int64(1) << k) + extra
        before = np.cumsum(size, axis=1) - size  # tokens cut by the block's earlier draws
        # draw j cuts while the rest is still too long; the rest only shrinks, so the cuts are a prefix
        cut = rem[active][:, None] - before - extra >= limit
        row, col = np.nonzero(cut)
        got_doc.append(active[row])
        got_off.append(pos[active][row] + before[row, col])
        got_k.append(k[row, col])
        got_draw.append(draws[col])
        used = (size * cut).sum(axis=1)
        pos[active] += used
        rem[active] -= used
        more = cut[:, -1] & (rem[active] - extra >= limit)  # the whole block cut, and still too long
        active, keys = active[more], keys[more]
        draw, block = draw + block, min(block * 4, LAST_BLOCK)
    if not got_doc:
        return [], [], []
    doc, off, k, drawn = (np.concatenate(x) for x in (got_doc, got_off, got_k, got_draw))
    order = np.lexsort((doc, drawn))
    return [doc[order]], [off[order]], [k[order]]


def token_type(vocab_size: int) -> pa.DataType:
    """The narrowest unsigned type for token ids (uint16 below 65,536 ids: half the bytes of int32)."""
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def numpy_type(ttype: pa.DataType) -> type:
    """numpy's type for a token type (pyarrow's to_pandas_dtype would import pandas)."""
    return {pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.int32(): np.int32, pa.int64(): np.int64}[ttype]


def bucket_schema(ttype: pa.DataType) -> pa.Schema:
    return pa.schema([("doc_id", pa.int64()), ("offset", pa.int64()), ("tokens", pa.list_(ttype))])


def gather(
    values: pa.Array, starts: np.ndarray, doc_ids: np.ndarray, pieces: Pieces, s: Settings
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(k, record batch of bucket k) for every non-empty bucket. `tokens` is a list view over the batch's
    token buffer (offset and size per sequence): no token is copied here; writing copies them once."""
    ttype = values.type
    schema = pa.schema([("doc_id", pa.int64()), ("offset", pa.int64()), ("tokens", pa.list_view(ttype))])
    for k in range(s.min_log2, s.max_log2 + 1):
        sel = np.flatnonzero(pieces.log2 == k)
        if not sel.size:
            continue
        begin = (starts[pieces.doc[sel]] + pieces.offset[sel]).astype(np.int32)
        sizes = np.full(sel.size, s.size(k), dtype=np.int32)
        tokens = pa.ListViewArray.from_arrays(pa.array(begin), pa.array(sizes), values)
        yield k, pa.RecordBatch.from_arrays(
            [pa.array(doc_ids[pieces.doc[sel]]), pa.array(pieces.offset[sel]), tokens], schema=schema)


def to_lists(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The stored form: `tokens` as a plain list column (one contiguous copy of the bucket's tokens).

    The copy is one numpy gather; pyarrow's list_view -> list cast builds an invalid offsets buffer (26.0)."""
    view = batch.column("tokens")
    starts = np.asarray(view.offsets)
    size = int(np.asarray(view.sizes)[0]) if len(view) else 0  # every sequence of a bucket has one size
    values = np.asarray(view.values)
    taken = values[(starts[:, None] + np.arange(size)).ravel()]
    ttype = view.type.value_type
    tokens = pa.ListArray.from_arrays(pa.array(np.arange(len(view) + 1, dtype=np.int32) * size),
                                      pa.array(taken, type=ttype))
    return pa.RecordBatch.from_arrays([batch.column(0), batch.column(1), tokens], schema=bucket_schema(ttype))


class ConcatChunker:
    """The concat-and-chunk baseline: documents joined end to end and cut every `length` tokens.

    Streams across batches with a carry buffer; also counts, per chunk, the document segments it holds, for
    average context length and cross-document attention."""

    def __init__(self, length: int, ttype: pa.DataType, first_id: int = 0):
        self.length, self.ttype = length, ttype
        self.first_id = first_id
        self.carry = np.zeros(0, dtype=np.int64)
        self.carry_docs = np.zeros(0, dtype=np.int64)  # lengths of the document segments in the carry
        self.next_id = first_id
        self.schema = pa.schema([("seq_id", pa.int64()), ("documents", pa.int32()), ("tokens", pa.list_(ttype))])
        # causal (query, key) pairs inside one document over all chunks: sum of l(l-1)/2 over the (chunk,
        # document) segments, which is also the numerator of the average context length
        self.pairs_within = 0
        self.pairs_total = 0
        self.tokens = 0

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> pa.RecordBatch | None:
        L = self.length
        buf = np.concatenate([self.carry.astype(flat.dtype, copy=False), flat])
        seg = np.concatenate([self.carry_docs, np.asarray(lengths, dtype=np.int64)])
        n = buf.size // L
        if n == 0:
            self.carry, self.carry_docs = buf, seg
            return None
        # segment boundaries in the stream, cut at chunk boundaries: lengths of (chunk, document) segments
        ends = np.cumsum(seg)
        cuts = np.union1d(ends[ends <= n * L], np.arange(1, n + 1) * L)
        pieces = np.diff(np.concatenate([[0], cuts]))
        chunk_of = (cuts - 1) // L
        docs_per_chunk = np.bincount(chunk_of, minlength=n).astype(np.int32)
        self.pairs_within += int((pieces * (pieces - 1) // 2).sum())
        self.pairs_total += n * (L * (L - 1) // 2)
        self.tokens += n * L
        np_type = numpy_type(self.ttype)
        tokens = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * L),
                                          pa.array(buf[: n * L].astype(np_type, copy=False), type=self.ttype))
        batch = pa.RecordBatch.from_arrays(
            [pa.array(np.arange(self.next_id, self.next_id + n)), pa.array(docs_per_chunk), tokens],
            schema=self.schema)
        self.next_id += n
        self.carry = buf[n * L:]
        left = ends - n * L
        keep = left > 0
        first = np.argmax(keep) if keep.any() else seg.size
        self.carry_docs = np.concatenate([[left[first]] if keep.any() else [], seg[first + 1:]]).astype(np.int64)
        return batch

    @property
    def sequences(self) -> int:
        return self.next_id - self.first_id

    @property
    def dropped(self) -> int:
        """Tokens of the last, partial chunk."""
        return int(self.carry.size)

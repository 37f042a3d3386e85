"""Dataset Decomposition: property tests of the bucketing and the curriculum sampler."""

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from lendata.methods.decompose.buckets import (
    ConcatChunker,
    Settings,
    decompose_lengths,
    document_uniforms,
    gather,
    random_odds,
)
from lendata.methods.decompose.curriculum import CurriculumSampler, preset_odds

lengths_st = hs.lists(hs.integers(min_value=0, max_value=70_000), min_size=1, max_size=40)
settings_st = hs.builds(
    Settings,
    min_log2=hs.integers(2, 6),
    max_log2=hs.integers(6, 12),
    overflow=hs.sampled_from(["random", "cap"]),
    plus_one=hs.booleans(),
    seed=hs.integers(0, 1000),
)


def reference_loop(n: int, s: Settings) -> list[tuple[int, int]]:
    """The reference's per-document loop (cap rule), as (offset, k) pieces."""
    out, pos = [], 0
    while n - pos > s.extra:
        k = int(math.log2(n - pos - s.extra))
        if k < s.min_log2:
            break
        k = min(k, s.max_log2)
        out.append((pos, k))
        pos += (1 << k) + s.extra
    return out


@settings(max_examples=300, deadline=None)
@given(lengths=lengths_st, s=settings_st)
def test_pieces_are_exact_contiguous_non_overlapping_and_account_for_every_token(lengths, s):
    L = np.array(lengths, dtype=np.int64)
    p = decompose_lengths(L, s)
    sizes = (np.int64(1) << p.log2.astype(np.int64)) + s.extra
    assert ((p.log2 >= s.min_log2) & (p.log2 <= s.max_log2)).all()
    assert (p.offset >= 0).all() and (p.offset + sizes <= L[p.doc]).all()  # inside its one document
    kept = np.bincount(p.doc, weights=sizes, minlength=L.size)
    assert (kept + p.dropped == L).all()  # kept + dropped = input, per document
    for d in range(L.size):  # slices of a document never overlap
        sel = np.flatnonzero(p.doc == d)
        order = np.argsort(p.offset[sel])
        starts, ends = p.offset[sel][order], (p.offset[sel] + sizes[sel])[order]
        assert (starts[1:] >= ends[:-1]).all()
    # what is dropped could not have made another piece
    assert (p.dropped < (1 << s.min_log2) + s.extra).all()


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, s=settings_st)
def test_cap_rule_matches_the_reference_loop_and_random_is_seeded(lengths, s):
    L = np.array(lengths, dtype=np.int64)
    cap = Settings(s.min_log2, s.max_log2, "cap", s.plus_one)
    p = decompose_lengths(L, cap)
    for d, n in enumerate(lengths):
        got = sorted((int(o), int(k)) for o, k in zip(p.offset[p.doc == d], p.log2[p.doc == d], strict=True))
        assert got == reference_loop(n, cap)
    a = decompose_lengths(L, s)
    b = decompose_lengths(L, s)
    assert all((x == y).all() for x, y in zip((a.doc, a.offset, a.log2), (b.doc, b.offset, b.log2), strict=True))


def pieces_by_doc(p, ids):
    return sorted((int(ids[d]), int(o), int(k)) for d, o, k in zip(p.doc, p.offset, p.log2, strict=True))


@settings(max_examples=100, deadline=None)
@given(lengths=hs.lists(hs.integers(0, 200_000), min_size=1, max_size=30), cut=hs.integers(0, 30),
       seed=hs.integers(0, 2**40))
def test_random_overflow_depends_on_the_document_not_the_batch(lengths, cut, seed):
    """Sharding must not change the data: a document's pieces are the same whichever batch (unit, shard) it
    is cut in, and wherever in that batch it sits."""
    s = Settings(6, 9, "random", seed=seed)
    L = np.array(lengths, dtype=np.int64)
    ids = np.arange(1000, 1000 + L.size)
    whole = pieces_by_doc(decompose_lengths(L, s, ids), ids)
    cut = min(cut, L.size)
    parts = pieces_by_doc(decompose_lengths(L[:cut], s, ids[:cut]), ids[:cut]) + pieces_by_doc(
        decompose_lengths(L[cut:], s, ids[cut:]), ids[cut:])
    assert sorted(parts) == whole
    rev = ids[::-1]
    assert pieces_by_doc(decompose_lengths(L[::-1], s, rev), rev) == whole
    if any(n >= 2 ** 10 for n in lengths):  # another seed draws other pieces for some over-long document
        other = Settings(6, 9, "random", seed=seed + 1)
        long_docs = np.full(50, 100_000)
        assert pieces_by_doc(decompose_lengths(long_docs, s), np.arange(50)) != pieces_by_doc(
            decompose_lengths(long_docs, other), np.arange(50))


def random_one_document(n: int, doc_id: int, s: Settings) -> list[tuple[int, int]]:
    """The random rule written out for one document, one draw at a time from its own stream: (offset, k)."""
    levels, p = random_odds(s.min_log2, s.max_log2)
    cumulative = np.cumsum(p)
    out, pos, draw = [], 0, 0
    while n - pos - s.extra >= 1 << (s.max_log2 + 1):
        u = document_uniforms(s.seed, np.array([doc_id]), draw)[0]
        k = int(levels[min(int(np.searchsorted(cumulative, u, side="right")), levels.size - 1)])
        out.append((pos, k))
        pos, draw = pos + (1 << k) + s.extra, draw + 1
    for k in range(s.max_log2, s.min_log2 - 1, -1):
        while n - pos >= (1 << k) + s.extra:
            out.append((pos, k))
            pos += (1 << k) + s.extra
    return out


@settings(max_examples=100, deadline=None)
@given(lengths=hs.lists(hs.integers(0, 30_000), min_size=0, max_size=12), s=settings_st,
       ids=hs.integers(0, 2**40))
def test_the_vectorised_random_rule_equals_one_document_at_a_time(lengths, s, ids):
    """decompose_lengths draws a block of each long document's stream per round (bench/decompose.py: about
    12x faster than one draw per round); the pieces must be the ones a plain per-document loop cuts, documents of
    hundreds of draws (several blocks) included."""
    s = Settings(s.min_log2, s.max_log2, "random", plus_one=s.plus_one, seed=s.seed)
    L = np.array(lengths, dtype=np.int64)
    doc_ids = np.arange(ids, ids + L.size)
    got = pieces_by_doc(decompose_lengths(L, s, doc_ids), doc_ids)
    want = sorted((int(d), off, k) for d, n in zip(doc_ids, L, strict=True)
                  for off, k in random_one_document(int(n), int(d), s))
    assert got == want


def test_random_overflow_gives_equal_expected_tokens_per_bucket():
    levels, p = random_odds(8, 13)
    assert list(levels) == [13, 12, 11, 10, 9, 8]
    assert np.allclose(p * 2.0 ** levels, (p * 2.0 ** levels)[0])  # p(k) 2^k is constant
    s = Settings(overflow="random", seed=1)
    # long documents, so that the deterministic tail (< 2^14 tokens each) hardly counts
    pieces = decompose_lengths(np.full(400, 2_000_000), s)
    tokens = np.array([((pieces.log2 == k) * (1 << k)).sum() for k in range(8, 14)], dtype=float)
    assert np.all(np.abs(tokens / tokens.mean() - 1) < 0.04)


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, s=settings_st)
def test_gathered_sequences_are_the_document_slices(lengths, s):
    L = np.array(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(L)[:-1]]).astype(np.int64)
    flat = np.arange(L.sum(), dtype=np.int64) % 60_000  # token = its position, so slices are checkable
    ids = np.arange(100, 100 + L.size)
    p = decompose_lengths(L, s)
    seen = 0
    for k, batch in gather(pa.array(flat.astype(np.uint16)), starts, ids, p, s):
        for doc_id, off, toks in zip(*(batch.column(c).to_pylist() for c in ("doc_id", "offset", "tokens")),
                                     strict=True):
            assert len(toks) == (1 << k) + s.extra
            begin = starts[doc_id - 100] + off
            assert toks == [int(x) % 60_000 for x in range(begin, begin + len(toks))]
            seen += 1
    assert seen == len(p)


def test_concat_and_chunk_baseline_counts_documents_and_cross_document_attention():
    c = ConcatChunker(10, pa.uint16())
    first = c.add(np.arange(25), np.array([3, 12, 10]))
    assert first.column("documents").to_pylist() == [2, 2]
    assert first.column("tokens").to_pylist()[1] == list(range(10, 20))
    second = c.add(np.arange(7), np.array([7]))
    assert second.column("tokens").to_pylist() == [[20, 21, 22, 23, 24, 0, 1, 2, 3, 4]]
    assert c.dropped == 2
    # chunk segments: (3, 7), (5, 5), (5, 5): causal pairs inside documents vs all pairs
    within = sum(n * (n - 1) // 2 for n in (3, 7, 5, 5, 5, 5))
    assert c.pairs_within == within and c.pairs_total == 3 * 45


# --- curriculum -------------------------------------------------------------------------------------------


def test_presets_match_the_paper():
    assert preset_odds("uniform", 6) == [1] * 6
    assert preset_odds("grow_linear", 6) == [6, 5, 4, 3, 2, 1]
    assert preset_odds("grow_p2", 6) == [32, 16, 8, 4, 2, 1]


@settings(max_examples=60, deadline=None)
@given(counts=hs.lists(hs.integers(0, 300), min_size=3, max_size=3), cycles=hs.integers(1, 4),
       odds=hs.sampled_from(["uniform", "grow_linear", "grow_p2"]), seed=hs.integers(0, 99))
def test_sampler_uses_each_sequence_once_with_constant_tokens_per_step(counts, cycles, odds, seed):
    buckets = {4: counts[0], 5: counts[1], 6: counts[2]}
    if not any(counts):
        with pytest.raises(ValueError):
            CurriculumSampler(buckets, 128)
        return
    smp = CurriculumSampler(buckets, tokens_per_step=128, odds=odds, cycles=cycles, seed=seed)
    used = {k: [] for k in buckets}
    for _step, k, rows in smp.plan():
        assert rows.size * (1 << k) == 128  # b / 2^k sequences of 2^k tokens
        used[k].extend(rows.tolist())
    for k, n in buckets.items():
        assert len(used[k]) == len(set(used[k]))  # never twice
        assert set(used[k]) <= set(range(n))
        assert n - len(used[k]) == smp.unused().get(k, 0) < max(1, 128 >> k)  # only a partial step left over
    again = CurriculumSampler(buckets, tokens_per_step=128, odds=odds, cycles=cycles, seed=seed)
    assert [(k, r.tolist()) for _, k, r in again.plan()] == [(k, r.tolist()) for _, k, r in smp.plan()]


# token shares of D8..D13: the DD README's Wikipedia row, and lendata's own run on the CPython stdlib (README)
MIXES = {"wikipedia": [15.3, 21.5, 23.0, 19.1, 13.1, 8.0], "cpython": [7.2, 9.3, 13.2, 17.7, 23.8, 28.7]}


def _quarter_means(sched: np.ndarray, b: int) -> list[float]:
    """Mean sequence length (tokens / sequences) of each quarter of the epoch."""
    out = []
    for part in np.array_split(sched.astype(np.int64), 4):
        sequences = sum(b >> int(k) for k in part)
        out.append(part.size * b / sequences)
    return out


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("cycles", [1, 8])
def test_uniform_odds_keep_the_mix_flat_over_the_epoch(mix, cycles):
    """METHODS §5 (corrected): a step's bucket is drawn with p ∝ o_i · n_i, so Uniform is no curriculum."""
    b, total = 1 << 16, 1 << 30
    buckets = {8 + i: int(total * share / 100) >> (8 + i) for i, share in enumerate(MIXES[mix])}
    smp = CurriculumSampler(buckets, b, odds="uniform", cycles=cycles, seed=0)
    quarters = _quarter_means(smp.schedule(), b)
    epoch = len(smp) * b / sum(b >> int(k) for k in smp.schedule())
    assert all(abs(q / epoch - 1) <= 0.10 for q in quarters), (quarters, epoch)


@pytest.mark.parametrize("mix", MIXES)
def test_grow_p2_lengthens_the_sequences_over_a_cycle(mix):
    b, total = 1 << 16, 1 << 30
    buckets = {8 + i: int(total * share / 100) >> (8 + i) for i, share in enumerate(MIXES[mix])}
    quarters = _quarter_means(CurriculumSampler(buckets, b, odds="grow_p2", cycles=1, seed=0).schedule(), b)
    assert quarters == sorted(quarters) and quarters[-1] > 2 * quarters[0], quarters


def test_the_default_is_the_papers_best_setting():
    smp = CurriculumSampler({8: 4096, 13: 128}, tokens_per_step=8192)
    assert smp.cycles == 8 and smp.odds == {8: 2.0, 13: 1.0}  # Grow-P2 over the buckets present


def test_grow_p2_puts_short_buckets_first_within_each_cycle():
    smp = CurriculumSampler({8: 4096, 13: 128}, tokens_per_step=8192, odds=[32, 1], cycles=2, seed=0)
    sched = smp.schedule()
    half = sched.size // 2
    for cycle in (sched[:half], sched[half:]):
        first, last = cycle[: len(cycle) // 4], cycle[-len(cycle) // 4:]
        assert (first == 8).mean() > (last == 8).mean()
    assert (sched == 8).sum() == 4096 // 32 and (sched == 13).sum() == 128


def test_state_dict_resumes_mid_epoch():
    rows = {k: np.arange(n * (1 << k)).reshape(n, 1 << k) for k, n in {4: 64, 5: 32, 6: 16}.items()}

    def make():
        return CurriculumSampler({k: v.shape[0] for k, v in rows.items()}, 128, cycles=2, seed=3,
                                 loader=lambda k, r: rows[k][r])

    full = [(b.step, b.log2, b.tokens.tolist()) for b in make()]
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = [(b.step, b.log2, b.tokens.tolist()) for b in resumed]
    assert [(b.step, b.log2, b.tokens.tolist()) for b in head] + rest == full
    with pytest.raises(ValueError, match="seed"):
        CurriculumSampler({4: 64, 5: 32, 6: 16}, 128, cycles=2, seed=4).load_state_dict(state)


def test_torch_adapter_yields_long_tensors():
    torch = pytest.importorskip("torch")
    from lendata.methods.decompose.curriculum import torch_dataset

    rows = {4: np.arange(64 * 16).reshape(64, 16)}
    ds = torch_dataset(CurriculumSampler({4: 64}, 64, seed=0, loader=lambda k, r: rows[k][r]))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=None))
    assert len(batches) == 16 and batches[0]["input_ids"].dtype == torch.int64
    assert batches[0]["input_ids"].shape == (4, 16)

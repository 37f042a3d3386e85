"""Dataset Decomposition on the CPython standard library (~13k .py files, ~50M SmolLM2 tokens).

Prints one JSON line of ratios, each against a baseline measured in the same run (issue 5):

- bucketing: lendata (vectorised lengths + zero-copy views) vs the reference's per-document loop, on the
  same tokenised input                                                          goal >= 20x
- end to end: text -> committed bucket shards, vs tokenisation alone (same reader and batches)
                                                                                goal <= 1.15x
- peak memory: the corpus twice over vs once, each in a fresh process         goal <= 1.1x

    .venv/bin/python bench/decompose.py [--glob '**/*.py'] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def reference_bucketing(seq: list[int], min_log2: int, max_log2: int, rng) -> dict[int, list[list[int]]]:
    """The reference's `get_binary` (randomize=True, plain 2^k pieces), written out as a per-document loop."""
    out: dict[int, list[list[int]]] = {}
    levels = np.arange(max_log2, min_log2 - 1, -1)
    ps = 2.0 ** np.arange(levels.size)
    ps /= ps.sum()
    while len(seq) > 0:
        k = int(math.log2(len(seq)))
        if k < min_log2:
            break
        if k > max_log2:
            k = int(rng.choice(levels, p=ps))
        out.setdefault(k, []).append(seq[: 1 << k])
        seq = seq[1 << k:]
    return out


def tokenised(glob: str):
    from lendata.corpus import doc_batches
    from lendata.lengths import load_tokenizer

    tok = load_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    t0 = time.monotonic()
    batches = list(doc_batches(STDLIB, tok, eos, glob=glob, batch_docs=2048))
    return batches, time.monotonic() - t0


def bench_bucketing(batches) -> dict:
    from lendata.methods.decompose.buckets import Settings, decompose_lengths, gather

    s = Settings(overflow="random")
    typed = [(pa.array(b.flat.astype(np.uint16)), b.starts, b.lengths) for b in batches]
    t0 = time.monotonic()
    n_seq = 0
    doc0 = 0
    for values, starts, lengths in typed:
        ids = np.arange(doc0, doc0 + lengths.size)
        pieces = decompose_lengths(lengths, s, ids)
        n_seq += sum(rb.num_rows for _, rb in gather(values, starts, ids, pieces, s))
        doc0 += lengths.size
    ours = time.monotonic() - t0
    # the reference works on one Python list of token ids per document
    docs = [b.flat[st: st + n].tolist() for b in batches for st, n in zip(b.starts, b.lengths, strict=True)]
    t0 = time.monotonic()
    rng = np.random.default_rng(0)
    ref_seq = sum(len(v) for d in docs for v in reference_bucketing(d, 8, 13, rng).values())
    ref = time.monotonic() - t0
    tokens = int(sum(b.lengths.sum() for b in batches))
    return {"tokens": tokens, "lendata_s": round(ours, 3), "reference_s": round(ref, 3),
            "sequences": n_seq, "reference_sequences": ref_seq, "speedup": round(ref / ours, 1),
            "reference_tokens_per_s": round(tokens / ref)}


def bench_end_to_end(glob: str, tok_seconds: float) -> dict:
    from lendata import build as builds
    from lendata import recipes

    with tempfile.TemporaryDirectory() as tmp:
        recipe = recipes.load("decompose", {"glob": glob})
        t0 = time.monotonic()
        report = builds.run(recipe, Path(tmp), progress=False)
        e2e = time.monotonic() - t0
    return {"tokenise_s": round(tok_seconds, 2), "end_to_end_s": round(e2e, 2), "ratio": round(e2e / tok_seconds, 3),
            "sequences": report.rows}


PEAK = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from lendata import recipes
from lendata import build as builds
recipe = recipes.load("decompose", {{"input": {src!r}, "text_field": "text"}})
builds.run(recipe, Path({store!r}), progress=False)
# VmHWM: this process image's peak RSS (ru_maxrss would include the parent's size at fork, kept over exec)
print(next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")))
"""


def bench_memory(glob: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        once, twice = Path(tmp) / "once.jsonl", Path(tmp) / "twice.jsonl"
        with once.open("w", encoding="utf-8") as f:
            for p in sorted(STDLIB.glob(glob)):
                try:
                    f.write(json.dumps({"text": p.read_text(encoding="utf-8")}) + "\n")
                except UnicodeDecodeError:
                    continue
        twice.write_bytes(once.read_bytes() * 2)
        peaks = {}
        for name, src in (("once", once), ("twice", twice)):
            code = PEAK.format(repo=str(REPO), src=str(src), store=str(Path(tmp) / f"store-{name}"))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            peaks[name] = int(out.stdout.strip().splitlines()[-1]) / 1024  # VmHWM is in kB
    return {"peak_mb_once": round(peaks["once"]), "peak_mb_twice": round(peaks["twice"]),
            "ratio": round(peaks["twice"] / peaks["once"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glob", default="**/*.py")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    for p in STDLIB.glob(args.glob):  # warm the page cache so that neither timing pays for the first read
        p.read_bytes()
    batches, tok_seconds = tokenised(args.glob)
    result = {"bench": "decompose", "corpus": f"{STDLIB} {args.glob}",
              "documents": sum(b.lengths.size for b in batches)}
    result["bucketing"] = bench_bucketing(batches)
    del batches
    result["end_to_end"] = bench_end_to_end(args.glob, tok_seconds)
    if not args.skip_memory:
        result["memory"] = bench_memory(args.glob)
    result["goals"] = {
        "bucketing_speedup>=20": result["bucketing"]["speedup"] >= 20,
        "end_to_end_ratio<=1.15": result["end_to_end"]["ratio"] <= 1.15,
        **({"memory_ratio<=1.1": result["memory"]["ratio"] <= 1.1} if "memory" in result else {}),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

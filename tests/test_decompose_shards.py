"""Sharded Dataset Decomposition and remote corpora (issue 18): the data do not depend on the shard count, the
runner, the form of the input (text files, JSONL split over several objects, Parquet read by row groups) or
where it lives (a local folder, an S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows import run_recipe
from lendata import recipes
from lendata import store as st
from lendata.corpus import plan_units
from lendata.inputs import InputError
from lendata.lengths import load_tokenizer
from lendata.methods.decompose.buckets import Settings, decompose_lengths

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL = {"min_log2": 6, "max_log2": 10, "baseline_length": 1024, "batch_docs": 16, "overflow": "random"}


def build(store: Path, **sets):
    return run_recipe(recipes.load("decompose", {**SMALL, **sets}), store, progress=False)


def rows(report, split: str = "train") -> list[tuple]:
    table = st.open_version(Path(report.path).parent.parent, f"{report.dataset}@{report.version}").read(split)
    cols = [c for c in ("doc_id", "offset", "seq_id", "tokens", "documents") if c in table.column_names]
    return sorted(zip(*(table.column(c).to_pylist() for c in cols), strict=True))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real text of varied length: the email package's sources, in a fixed order, some over 2^11 tokens so that
    the random overflow rule is exercised."""
    return [p.read_text(encoding="utf-8") for p in sorted((STDLIB / "email").glob("**/*.py"))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> dict[str, Path]:
    """The same documents as a folder of text files, two JSONL files and one Parquet file of small row groups."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "files").mkdir()
    for i, t in enumerate(texts):
        (root / "files" / f"doc{i:03d}.txt").write_text(t, encoding="utf-8")
    (root / "jsonl").mkdir()
    half = len(texts) // 2
    for name, part in (("a.jsonl", texts[:half]), ("b.jsonl", texts[half:])):
        with open(root / "jsonl" / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in part)
    pq.write_table(pa.table({"text": texts}), root / "corpus.parquet", row_group_size=4)
    return {"files": root / "files", "jsonl": root / "jsonl", "parquet": root / "corpus.parquet"}


def test_any_shard_count_publishes_the_same_version(tmp_path):
    """shards = 1, 2, 5 on the local runner: the second and third builds find the first one's content
    (`unchanged`), so not one file differs; each shard's documents and tokens are in the manifest."""
    sets = {"input": "@stdlib", "glob": "email/**/*.py", "unit_bytes": 30_000}
    one = build(tmp_path, **sets, shards=1)
    manifest = json.loads((Path(one.path) / "manifest.json").read_text())
    assert manifest["decomposition"]["units"] >= 5  # several units, so 2 and 5 shards really cut the work
    for shards in (2, 5):
        again = build(tmp_path, **sets, shards=shards)
        assert again.unchanged and again.version == one.version
    five = build(tmp_path / "five", **sets, shards=5)
    m5 = json.loads((Path(five.path) / "manifest.json").read_text())
    assert m5["content_hash"] == manifest["content_hash"]
    assert len(m5["shards"]) == 5
    assert sum(s["documents"] for s in m5["shards"]) == m5["decomposition"]["documents"] == 29
    assert sum(s["tokens"] for s in m5["shards"]) == m5["decomposition"]["input_tokens"]
    assert all(s["seconds"] >= 0 and s["host"] for s in m5["shards"])


def test_text_files_jsonl_and_parquet_of_the_same_documents_give_the_same_rows(tmp_path, corpus):
    """A document's id is its place in the corpus, and its pieces depend on (seed, id) alone: the same texts in
    any form, cut into any units, give the same (doc_id, offset, tokens) rows and the same baseline."""
    built = {form: build(tmp_path / form, input=str(path), glob="*.txt" if form == "files" else None,
                         unit_bytes=20_000) for form, path in corpus.items()}
    whole = build(tmp_path / "whole", input=str(corpus["jsonl"]), glob="*.jsonl", unit_bytes=1 << 30)
    train = rows(built["files"])
    assert len(train) > 100
    for report in [*built.values(), whole]:
        assert rows(report) == train
    # the baseline is cut per unit (its last partial chunk dropped): equal for equal units only
    assert rows(built["jsonl"], "baseline") != rows(whole, "baseline")
    docs = st.open_version(tmp_path / "jsonl", "decompose").read("documents").to_pylist()
    assert [d["doc_id"] for d in docs] == list(range(29))
    assert docs[0]["source"] == "a.jsonl:1" and docs[-1]["source"] == f"b.jsonl:{29 - 29 // 2}"


def test_rows_match_a_decomposition_of_each_document_alone(tmp_path, corpus, texts):
    """Differential: every document tokenised and decomposed on its own, with its id, gives the build's rows."""
    report = build(tmp_path, input=str(corpus["parquet"]), unit_bytes=1)  # a unit per row group
    tok = load_tokenizer(None)
    eos = tok.token_to_id("<|endoftext|>")
    s = Settings(**{k: v for k, v in SMALL.items() if k not in ("baseline_length", "batch_docs")})
    expected = []
    for doc_id, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=False).ids + [eos]
        p = decompose_lengths([len(ids)], s, [doc_id])
        expected += [(doc_id, int(o), ids[int(o): int(o) + (1 << int(k))]) for o, k in zip(p.offset, p.log2,
                                                                                            strict=True)]
    assert rows(report) == sorted(expected)


def test_units_come_from_the_input_alone(corpus):
    jsonl = plan_units(str(corpus["jsonl"]), "*.jsonl", 20_000)
    assert [u.first_doc for u in jsonl] == sorted({u.first_doc for u in jsonl}) and jsonl[0].first_doc == 0
    assert sum(u.count for u in jsonl) == 29 and len({u.paths for u in jsonl}) == 2
    parquet = plan_units(str(corpus["parquet"]), None, 1)
    assert [u.count for u in parquet] == [4] * 7 + [1] and [u.start for u in parquet] == list(range(8))
    assert plan_units(str(corpus["jsonl"]), "*.jsonl", 20_000) == jsonl  # the same input, the same units


def test_a_corpus_on_an_s3_server_gives_the_rows_of_the_local_files(tmp_path, corpus, monkeypatch):
    """A real S3-compatible server (moto) on 127.0.0.1: JSONL split over two objects and a Parquet file read by
    row groups through range requests; the secret key never reaches the manifest."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        secret = "s3cret-key-that-must-not-leak"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="corpora")
        for f in sorted(corpus["jsonl"].iterdir()):
            s3.upload_file(str(f), "corpora", f"email/{f.name}")
        s3.upload_file(str(corpus["parquet"]), "corpora", "email.parquet")

        local = build(tmp_path / "local", input=str(corpus["jsonl"]), glob="*.jsonl", unit_bytes=20_000)
        remote = build(tmp_path / "s3", input="s3://corpora/email/*.jsonl", unit_bytes=20_000)
        assert rows(remote) == rows(local) and rows(remote, "baseline") == rows(local, "baseline")
        pq_remote = build(tmp_path / "s3pq", input="s3://corpora/email.parquet", unit_bytes=1)
        assert rows(pq_remote) == rows(local)
        for report in (remote, pq_remote):
            text = (Path(report.path) / "manifest.json").read_text()
            assert secret not in text and "s3://corpora/" in text
        with pytest.raises(InputError, match="no file matches"):
            build(tmp_path / "none", input="s3://corpora/nothing/*.jsonl")
    finally:
        server.stop()
        for k in ("AWS_ENDPOINT_URL",):
            os.environ.pop(k, None)


def test_credentials_in_a_url_are_refused(tmp_path):
    with pytest.raises(InputError, match="credentials in a URL"):
        build(tmp_path, input="s3://AKIA:secret@corpora/x.jsonl")

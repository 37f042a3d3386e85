"""`decompose` end to end on real text (a slice of the CPython standard library), with real Prefect,
Parquet and DuckDB."""

import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows import run_recipe
from lendata import recipes
from lendata import store as st
from lendata.catalog import query as run
from lendata.cli import app
from lendata.lengths import load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL = {"input": "@stdlib", "glob": "email/**/*.py", "min_log2": 6, "max_log2": 10, "baseline_length": 1024,
         "batch_docs": 16}


def build(store, **sets):
    return run_recipe(recipes.load("decompose", {**SMALL, **sets}), store, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = tmp_path_factory.mktemp("dd")
    return store, build(store)


def test_buckets_are_hive_partitioned_and_exact(built):
    store, report = built
    v = st.open_version(store, "decompose")
    paths = [f["path"] for f in v.splits["train"]["files"]]
    assert paths and all(p.startswith("train/bucket=") for p in paths)
    rows = run(store, "SELECT bucket, count(*) AS n, min(len(tokens)) AS lo, max(len(tokens)) AS hi "
                      "FROM decompose GROUP BY bucket ORDER BY bucket").to_dicts()
    assert [r["bucket"] for r in rows] == sorted({int(p.split("=")[1].split("/")[0]) for p in paths})
    for r in rows:
        assert r["lo"] == r["hi"] == 2 ** r["bucket"]
    stats = v.manifest["decomposition"]
    assert sum(r["n"] for r in rows) == report.rows == sum(b["sequences"] for b in stats["buckets"].values())
    assert stats["kept_tokens"] + stats["dropped_tokens"] == stats["input_tokens"]
    docs = v.read("documents")
    assert docs.num_rows == stats["documents"] == len(list(STDLIB.glob("email/**/*.py")))
    assert pa.compute.sum(docs.column("tokens")).as_py() == stats["input_tokens"]


def test_sequences_are_slices_of_their_document_with_eos(built):
    store, _ = built
    v = st.open_version(store, "decompose")
    docs = {r["doc_id"]: r["source"] for r in v.read("documents").to_pylist()}
    tok = load_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    train = v.read("train").to_pylist()
    for row in train[:: max(1, len(train) // 25)]:
        text = (STDLIB / docs[row["doc_id"]]).read_text(encoding="utf-8")
        ids = tok.encode(text, add_special_tokens=False).ids + [eos]
        assert row["tokens"] == ids[row["offset"]: row["offset"] + len(row["tokens"])]


def test_rerun_is_the_same_version_and_report_prints_the_metrics(built, tmp_path):
    store, first = built
    again = build(store)
    assert again.unchanged and again.version == first.version
    res = CliRunner().invoke(app, ["report", "decompose", "--store", str(store), "--to", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["decomposition"]
    share = data["summary"]["token_share"]
    assert set(share) == {f"D{k}" for k in range(6, 11)} and abs(sum(share.values()) - 1) < 1e-3
    assert data["summary"]["cross_document_attention"] == 0
    assert 0 < data["summary"]["baseline"]["cross_document_attention_share"] < 1
    assert (tmp_path / "buckets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "index.html").is_file()
    text = CliRunner().invoke(app, ["report", "decompose", "--store", str(store), "--to", str(tmp_path)]).output
    assert "average context length" in text and "D10" in text


def test_tokenised_parquet_input_gives_the_same_buckets(built, tmp_path):
    store, _ = built
    v = st.open_version(store, "decompose")
    tok = load_tokenizer()
    sources = [r["source"] for r in v.read("documents").to_pylist()]
    ids = [tok.encode((STDLIB / s).read_text(encoding="utf-8"), add_special_tokens=False).ids for s in sources]
    pq.write_table(pa.table({"ids": pa.array(ids, pa.list_(pa.int32()))}), tmp_path / "tok.parquet")
    other = tmp_path / "store"
    build(other, input=str(tmp_path / "tok.parquet"), token_field="ids", glob=None, vocab_size=49152)
    w = st.open_version(other, "decompose")
    a, b = v.read("train"), w.read("train")
    assert a.column("tokens").to_pylist() == b.column("tokens").to_pylist()


def test_unreadable_documents_are_quarantined_with_their_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("word " * 400)
    (corpus / "bad.txt").write_bytes(b"ok \xff\xfe broken")
    report = build(tmp_path / "s", input=str(corpus), glob="*.txt")
    v = st.open_version(tmp_path / "s", "decompose")
    q = v.read("quarantine").to_pylist()
    assert report.quarantined == 1 and q[0]["source"].endswith("bad.txt") and "UTF-8" in q[0]["reason"]
    assert v.manifest["decomposition"]["documents"] == 1


def test_decompose_has_the_quarantine_threshold_over_documents_and_records_every_setting(tmp_path):
    """The one build path: decompose used to publish whatever share of its corpus was unreadable."""
    from lendata import build as builds

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("word " * 400)
    for i in range(2):
        (corpus / f"bad{i}.txt").write_bytes(b"ok \xff\xfe broken")
    recipe = recipes.load("decompose", {**SMALL, "input": str(corpus), "glob": "*.txt"})
    with pytest.raises(builds.BuildFailed, match=r"2 of 3 rows quarantined \(67% > max_quarantine_share 50%\)"):
        builds.run(recipe, tmp_path / "s", progress=False)
    assert st.list_versions(tmp_path / "s", "decompose") == []
    report = builds.run(recipes.load("decompose", {**SMALL, "input": str(corpus), "glob": "*.txt",
                                                   "max_quarantine_share": 1.0}), tmp_path / "s", progress=False)
    m = st.open_version(tmp_path / "s", "decompose").manifest
    assert report.quarantined == 2
    assert report.rows == sum(b["sequences"] for b in m["decomposition"]["buckets"].values())
    # code defaults the YAML does not name are recorded too
    assert m["recipe_settings"]["rows_per_shard"] == 8192 and m["recipe_settings"]["vocab_size"] is None
    assert set(m["recipe_settings"]) == set(recipe.resolved())


def test_curriculum_sampler_reads_a_committed_build(built):
    from lendata.methods.decompose.curriculum import CurriculumSampler

    store, _ = built
    v = st.open_version(store, "decompose")
    smp = CurriculumSampler.from_version(v, tokens_per_step=1024, odds="grow_p2", cycles=2, seed=1)
    by_bucket = {}
    for row in v.read("train").to_pylist():
        by_bucket.setdefault(row["bucket"], []).append(row["tokens"])
    steps = 0
    for batch in smp:
        assert batch.tokens.shape == (1024 >> batch.log2, 1 << batch.log2)  # constant tokens per step
        assert batch.tokens[0].tolist() == by_bucket[batch.log2][batch.rows[0]]
        steps += 1
    assert steps == len(smp) > 0

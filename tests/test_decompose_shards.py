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
from hypothesis import given, settings
from hypothesis import strategies as hs

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


SECRET = "s3cret-key-that-must-not-leak"


@pytest.fixture(scope="module")
def s3(corpus):
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 holding the corpus, and the environment
    that points the AWS SDKs at it; yields a boto3 client."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket="corpora")
        for f in sorted(corpus["jsonl"].iterdir()):
            client.upload_file(str(f), "corpora", f"email/{f.name}")
        client.upload_file(str(corpus["parquet"]), "corpora", "email.parquet")
        yield client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_corpus_on_an_s3_server_gives_the_rows_of_the_local_files(tmp_path, corpus, s3):
    """JSONL split over two objects, and a Parquet file read by row groups through range requests; the secret
    key never reaches the manifest."""
    local = build(tmp_path / "local", input=str(corpus["jsonl"]), glob="*.jsonl", unit_bytes=20_000)
    remote = build(tmp_path / "s3", input="s3://corpora/email/*.jsonl", unit_bytes=20_000)
    assert rows(remote) == rows(local) and rows(remote, "baseline") == rows(local, "baseline")
    pq_remote = build(tmp_path / "s3pq", input="s3://corpora/email.parquet", unit_bytes=1)
    assert rows(pq_remote) == rows(local)
    for report in (remote, pq_remote):
        text = (Path(report.path) / "manifest.json").read_text()
        assert SECRET not in text and "s3://corpora/" in text
    with pytest.raises(InputError, match="no file matches"):
        build(tmp_path / "none", input="s3://corpora/nothing/*.jsonl")


def test_instructions_and_qa_items_read_from_s3(s3, tmp_path):
    """Every recipe's `input` takes a URL: instruction files (direct, agentwrite, self_lengthen...) and LV-Eval's
    QA items are read from the object store as from a local file, bad lines quarantined with file and line."""
    from lendata.inputs import RemotePath, read_instructions
    from lendata.methods.lveval.items import read_items

    lines = [json.dumps({"instruction": "Write about rivers.", "length": 300}), "{not json",
             json.dumps({"instruction": "Write about tides."})]
    s3.put_object(Bucket="corpora", Key="prompts/p.jsonl", Body="\n".join(lines).encode())
    loaded = read_instructions(RemotePath("s3://corpora/prompts/p.jsonl"), target_field="length")
    assert [(r["instruction"], r["target"], r["source"]) for r in loaded.rows] == [
        ("Write about rivers.", 300, "p.jsonl:1"), ("Write about tides.", None, "p.jsonl:3")]
    assert [(b.source, b.reason.split(":")[0]) for b in loaded.bad] == [("s3://corpora/prompts/p.jsonl:2",
                                                                         "invalid JSON")]
    qa = {"question": "Who built the mill?", "answers": ["Ada"], "documents": ["The mill was built by Ada."]}
    s3.put_object(Bucket="corpora", Key="qa/items.jsonl", Body=json.dumps(qa).encode() + b"\n")
    items = read_items(RemotePath("s3://corpora/qa/items.jsonl"))
    assert [(i.question, i.source, i.id) for i in items.rows] == [("Who built the mill?", "items.jsonl:1", "items-1")]
    with pytest.raises(InputError, match="not found"):
        read_instructions(RemotePath("s3://corpora/prompts/missing.jsonl"))


@pytest.mark.parametrize("url", ["s3://AKIA:s3cr3t@corpora/x.jsonl", "hf://hf_s3cr3t@datasets/o/n/x.jsonl",
                                 "https://host/x.jsonl?X-Amz-Signature=s3cr3t", "gs://b/x.jsonl#s3cr3t"])
@pytest.mark.parametrize("recipe", ["decompose", "direct", "lveval"])
def test_credentials_in_a_url_are_refused_before_anything_records_them(tmp_path, url, recipe):
    """The recipe is recorded (Prefect's run parameters, the manifest): a URL carrying user info or a query is
    refused when the recipe is loaded, with the URL shown without them."""
    from typer.testing import CliRunner

    from lendata.cli import app

    res = CliRunner().invoke(app, ["build", recipe, "--store", str(tmp_path), "--set", f"input={url}"])
    assert res.exit_code == 2 and "user info or a query string" in res.output
    assert "s3cr3t" not in res.output and not (tmp_path / recipe).exists()


def test_local_names_with_glob_characters_or_colons_are_names(tmp_path):
    folder = tmp_path / "corpus[v2]::x"
    folder.mkdir()
    (folder / "a.txt").write_text("one two three " * 200)
    (tmp_path / "corpus2::x").mkdir()  # what the brackets would match as a pattern
    (tmp_path / "corpus2::x" / "b.txt").write_text("other")
    units = plan_units(str(folder), "*.txt", 1 << 20)
    assert [u.paths for u in units] == [(str(folder / "a.txt"),)]
    (tmp_path / "c.jsonl.gz").write_bytes(b"x")
    with pytest.raises(InputError, match="is compressed"):
        plan_units(str(tmp_path / "c.jsonl.gz"), None, 1 << 20)


def test_an_over_long_jsonl_line_is_quarantined_without_being_held(tmp_path, monkeypatch):
    from lendata import inputs
    from lendata.corpus import unit_texts

    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 64)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps({"text": "short"}), json.dumps({"text": "x" * 500}),
                               json.dumps({"text": "after"})]) + "\n")
    got, bad = [], []
    for u in plan_units(str(path), None, 1 << 20):
        for ids, _sources, texts, b in unit_texts(u, "text", 8):
            got += list(zip(ids.tolist(), texts, strict=True))
            bad += [(x["source"], x["reason"]) for x in b]
    assert got == [(0, "short"), (2, "after")]
    assert bad == [("c.jsonl:2", "line is 513 bytes, over the 64-byte limit")]


def test_a_corpus_on_the_hub_gives_the_rows_of_the_local_files(tmp_path, corpus, monkeypatch):
    """hf://datasets/... through huggingface_hub's file system against the loopback Hub (HF_ENDPOINT): JSONL over
    two files and a Parquet file read by row groups with range requests, never whole."""
    import huggingface_hub.constants

    from tests.hub_server import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the suite runs offline
        files = {f"email/{f.name}": f.read_bytes() for f in sorted(corpus["jsonl"].iterdir())}
        files["email.parquet"] = corpus["parquet"].read_bytes()
        files["README.md"] = b"a corpus\n"
        hub.seed_files("lendata/corpus", files)

        local = build(tmp_path / "local", input=str(corpus["jsonl"]), glob="*.jsonl", unit_bytes=20_000)
        remote = build(tmp_path / "hf", input="hf://datasets/lendata/corpus/email", glob="*.jsonl",
                       unit_bytes=20_000)
        assert rows(remote) == rows(local) and rows(remote, "baseline") == rows(local, "baseline")
        docs = st.open_version(tmp_path / "hf", "decompose").read("documents").to_pylist()
        assert docs[0]["source"] == "a.jsonl:1"
        served = hub.bytes_served
        # the Parquet file read unit by unit: a unit of one row group fetches that group's byte range
        one = build(tmp_path / "hfpq", input="hf://datasets/lendata/corpus/email.parquet", unit_bytes=1)
        assert rows(one) == rows(local)
        assert hub.bytes_served - served > 0
        token = hub.token
    assert all(token not in p.read_text() for p in (tmp_path / "hf").rglob("manifest.json"))


def test_the_hub_refuses_when_the_user_set_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("LENDATA_HF_OFFLINE_DEFAULT", raising=False)
    with pytest.raises(InputError, match="HF_HUB_OFFLINE is set"):
        build(tmp_path, input="hf://datasets/lendata/corpus/x.jsonl")


@settings(max_examples=60, deadline=None)
@given(lines=hs.lists(hs.one_of(hs.text(alphabet="ab \u00e9\u4e2d", max_size=30).map(lambda t: json.dumps({"text": t})),
                               hs.sampled_from(["", "   ", "{bad", "[1]", json.dumps({"other": 1})])),
                      min_size=0, max_size=25),
       crlf=hs.booleans(), trailing_newline=hs.booleans(), unit_bytes=hs.integers(1, 200))
def test_jsonl_units_read_every_line_once_with_its_number(tmp_path_factory, lines, crlf, trailing_newline,
                                                          unit_bytes):
    """However a JSONL file is cut into units (a boundary on a line end, mid-line, blank lines, CRLF, no final
    newline), every line is read once, with its own line number as source and its index as doc id."""
    from lendata.corpus import unit_texts

    path = tmp_path_factory.mktemp("units") / "c.jsonl"
    end = "\r\n" if crlf else "\n"
    path.write_bytes((end.join(lines) + (end if trailing_newline and lines else "")).encode())
    units = plan_units(str(path), None, unit_bytes)
    got, bad = [], []
    for u in units:
        for ids, sources, texts, b in unit_texts(u, "text", 4):
            got += list(zip(ids.tolist(), sources, texts, strict=True))
            bad += [x["source"] for x in b]
    expected, expected_bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        rec = json.loads(line) if line.startswith(("{\"", "[")) else None
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            expected.append((i, f"c.jsonl:{i + 1}", rec["text"]))
        else:
            expected_bad.append(f"c.jsonl:{i + 1}")
    assert got == expected and bad == expected_bad


def test_a_shard_whose_files_the_driver_cannot_see_fails_the_build_and_strays_are_not_published(tmp_path):
    """A worker on a machine without the shared store writes to its own disk: the driver refuses its file list
    instead of publishing a version without those files; a dead attempt's temporary file is not published."""
    with st.Stage(tmp_path / "store", "ds") as stage:
        elsewhere = st.DetachedStage(tmp_path / "worker-disk" / stage.path.name)
        w = elsewhere.writer("train", pa.schema([("x", pa.int64())]), None, 10, "u000000")
        w.write(pa.table({"x": [1, 2]}))
        w.close()
        with pytest.raises(st.StoreError, match="every worker mounts at the same path"):
            stage.adopt(elsewhere.splits, elsewhere.schemas)
        here = st.DetachedStage(stage.path)
        w = here.writer("train", pa.schema([("x", pa.int64())]), None, 10, "u000000")
        w.write(pa.table({"x": [1, 2]}))
        w.close()
        stage.adopt(here.splits, here.schemas)
        (stage.path / "train" / ".shard-deadbeef.tmp").write_bytes(b"half a shard")
        version = stage.publish()
    assert sorted(p.name for p in (version.path / "train").iterdir()) == ["part-u000000-00000.parquet"]
    assert version.read("train").column("x").to_pylist() == [1, 2]


def test_two_sharded_builds_of_one_dataset_at_once_publish_one_version(tmp_path, corpus):
    """Two users start the same sharded build into one store at the same moment. Both write their units straight
    into a staged version, so they must not share one: the dataset lock makes the second wait, and it then
    finds the first one's content. One version, no staged folder or temporary file left, every file once."""
    import subprocess
    import sys

    store = tmp_path / "store"
    args = [sys.executable, "-m", "lendata", "build", "decompose", "--store", str(store), "--json", "--no-progress",
            *(a for k, v in {**SMALL, "input": str(corpus["files"]), "glob": "*.txt", "unit_bytes": 30_000,
                             "shards": 2}.items() for a in ("--set", f"{k}={v}"))]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    reports = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert st.list_versions(store, "decompose") == ["0.1.0"]
    assert sorted(bool(r.get("unchanged")) for r in reports) == [False, True], reports
    assert not [p for p in (store / "decompose").iterdir() if p.name.startswith(".staging")]
    assert not list(store.rglob("*.tmp"))
    version = st.open_version(store, "decompose@0.1.0")
    manifest = json.loads((version.path / "manifest.json").read_text())
    listed = sorted(f["path"] for sp in manifest["splits"].values() for f in sp["files"])
    on_disk = sorted(str(p.relative_to(version.path)) for p in version.path.rglob("*.parquet"))
    assert listed == on_disk and len(listed) == len(set(listed))
    assert manifest["decomposition"]["documents"] == len(list(corpus["files"].glob("*.txt")))

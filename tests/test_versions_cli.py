"""`lendata show`, `diff`, `report` and `export` on real committed versions (Parquet, DuckDB, datasets)."""

import json

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from lendata import store as st
from lendata.cli import app
from lendata.describe import ks_statistic

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def sft(n, words, finish=None, extra=None):
    rows = {
        "id": [f"r{i}" for i in range(n)],
        "messages": pa.array([[{"role": "user", "content": f"write {w} words"},
                               {"role": "assistant", "content": " ".join(["word"] * w)}] for w in words], MESSAGES),
        "target_words": pa.array([100] * n, pa.int32()),
        "response_words": pa.array(words, pa.int32()),
        "finish_reason": finish or ["stop"] * n,
        **(extra or {}),
    }
    return pa.table(rows)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    q = pa.table({"id": ["x", "y", "z"], "stage": ["input"] * 3, "reason": ["invalid JSON: x", "invalid JSON: y",
                                                                            "too short (3 < 5)"],
                  "source": ["f:1", "f:2", "f:3"], "record": ["", "", ""]})
    st.commit(root, "ds", {"train": sft(4, [100, 90, 110, 80], ["stop", "length", "stop", "stop"]),
                           "quarantine": q}, meta={"recipe": "direct", "engine": "llamacpp", "model": "m"})
    st.commit(root, "ds", {"train": sft(6, [300, 310, 290, 305, 295, 300], extra={"language": ["en"] * 6}),
                           "test": sft(2, [50, 60])}, meta={"recipe": "direct"})
    return root


def run(*args):
    res = CliRunner().invoke(app, [*args])
    assert res.exit_code == 0, res.output
    return res


def test_show_gives_schema_rows_and_lengths(store):
    d = json.loads(run("show", "ds@0.1.0", "--store", str(store), "--json").stdout)
    train = d["splits"]["train"]
    assert train["rows"] == 4 and train["schema"]["target_words"] == "int32"
    ls = train["lengths"]["messages[assistant]"]
    assert ls["mean_words"] == 95.0 and ls["min_words"] == 80 and ls["max_words"] == 110
    assert d["splits"]["quarantine"]["rows"] == 3
    text = run("show", "ds", "--store", str(store)).output
    assert "ds@0.1.1" in text and "messages" in text and "110" not in text  # latest: 300 words


def test_diff_reports_rows_schema_and_length_shift(store):
    d = json.loads(run("diff", "ds@0.1.0", "ds@0.1.1", "--store", str(store), "--json").stdout)
    train = d["splits"]["train"]
    assert (train["rows_a"], train["rows_b"]) == (4, 6)
    assert train["added_columns"] == {"language": "string"} and train["removed_columns"] == {}
    shift = train["length_shift"]["messages[assistant]"]
    assert shift["mean_words"] == [95.0, 300.0] and shift["ks"] == 1.0  # no overlap at all
    assert d["splits"]["test"]["rows_a"] is None and not d["same_content"]
    assert "1.000" in run("diff", "ds@0.1.0", "ds@0.1.1", "--store", str(store)).output


def test_ks_statistic():
    import numpy as np

    a = np.sort(np.arange(100.0))
    assert ks_statistic(a, a) == 0.0 and ks_statistic(a, a + 1000) == 1.0
    assert 0.45 < ks_statistic(a, a + 50) <= 0.5


def test_report_writes_html_and_plots_with_the_rates(store, tmp_path):
    out = tmp_path / "rep"
    data = json.loads(run("report", "ds@0.1.0", "--store", str(store), "--to", str(out), "--json").stdout)
    train = data["splits"]["train"]
    assert train["truncation_rate"] == 0.25 and train["column"] == "messages[assistant]"
    assert train["target_vs_produced"]["median_ratio"] == 0.95 and train["target_vs_produced"]["within_10pct"] == 0.5
    assert train["repetition_rate"] == 1.0  # "word word word ..." is one long loop
    assert data["rejections"] == {"quarantine: invalid JSON": 2, "quarantine: too short": 1}
    for name in ("lengths-train.png", "target-train.png", "rejections.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert "ds@0.1.0" in page and 'src="lengths-train.png"' in page and "invalid JSON" in page


def test_export_is_loadable_by_datasets_offline(store, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    target = tmp_path / "hub"
    run("export", "ds@0.1.1", str(target), "--store", str(store), "--license", "apache-2.0")
    assert sorted(p.name for p in (target / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    text = (target / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "apache-2.0" and header["size_categories"] == ["n<1K"]
    assert {c["split"] for c in header["configs"][0]["data_files"]} == {"train", "test"}
    assert "quarantine" not in text.split("## Splits")[1].split("##")[0]
    assert "![lengths-train](plots/lengths-train.png)" in text and (target / "plots/lengths-train.png").is_file()
    loaded = datasets.load_dataset(str(target))
    v = st.open_version(store, "ds@0.1.1")
    assert {s: loaded[s].num_rows for s in loaded} == {"train": v.rows("train"), "test": v.rows("test")}
    assert loaded["train"][0]["messages"][1]["role"] == "assistant"
    res = CliRunner().invoke(app, ["export", "ds@0.1.1", str(target), "--store", str(store)])
    assert res.exit_code == 1 and "not empty" in res.output


def test_export_writes_hive_partitions_into_the_files(tmp_path):
    with st.Stage(tmp_path / "store", "dd") as stage:
        for k in (8, 9):
            w = stage.writer("train", pa.schema([("tokens", pa.list_(pa.uint16()))]), partition=f"bucket={k}")
            w.write(pa.table({"tokens": pa.array([[1] * (1 << k)] * 3, pa.list_(pa.uint16()))}))
            w.close()
        stage.publish()
    target = tmp_path / "hub"
    run("export", "dd", str(target), "--store", str(tmp_path / "store"), "--no-plots")
    header = yaml.safe_load((target / "README.md").read_text().split("---")[1])
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(p) for p in sorted((target / "data").iterdir()))
    assert sorted(table.column("bucket").to_pylist()) == [8, 8, 8, 9, 9, 9]


def _files(root):
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_export_overwrite_never_replaces_the_store_or_a_foreign_folder(store, tmp_path):
    before = _files(store)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(store / "ds")
    for target in (store, store / "ds", store / "ds" / "0.1.0", store / "new", tmp_path, tmp_path / "link", foreign):
        res = CliRunner().invoke(app, ["export", "ds@0.1.1", str(target), "--store", str(store), "--overwrite",
                                       "--no-plots"])
        assert res.exit_code == 1, (target, res.output)
        assert "store" in res.output or "not an earlier lendata export" in res.output, res.output
    assert _files(store) == before
    other = tmp_path / "other-store"  # nor into another store, or one of its versions
    st.commit(other, "x", {"train": pa.table({"x": [1]})})
    for target in (other / "new", other / "x" / "0.1.0" / "train"):
        res = CliRunner().invoke(app, ["export", "ds@0.1.1", str(target), "--store", str(store), "--no-plots"])
        assert res.exit_code == 1 and "store" in res.output, (target, res.output)
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(p.name for p in foreign.iterdir()) == [
        "notes.txt"]
    # an earlier export is replaced whole: the old version's files do not survive beside the new ones
    target = tmp_path / "hub"
    run("export", "ds@0.1.1", str(target), "--store", str(store), "--no-plots")
    (target / "data" / "stale-00000-of-00001.parquet").write_bytes((target / "data").iterdir().__next__().read_bytes())
    run("export", "ds@0.1.0", str(target), "--store", str(store), "--no-plots", "--overwrite")
    assert sorted(p.name for p in (target / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert "# ds 0.1.0" in (target / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub.")]  # no temporary folder left
    # an export folder with something else in it is not an export any more
    (target / "extra.txt").write_text("x")
    res = CliRunner().invoke(app, ["export", "ds@0.1.1", str(target), "--store", str(store), "--overwrite"])
    assert res.exit_code == 1 and "not an earlier lendata export" in res.output


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    from tests.hub_server import FakeHub

    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", server.token)
        # the suite runs offline; this test talks to the loopback Hub only
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def test_push_uploads_one_tagged_commit_and_never_moves_a_tag(store, hub):
    res = run("push", "ds@0.1.1", "--repo", "lendata/ds", "--store", str(store), "--private", "--json")
    pushed = json.loads(res.stdout)
    repo = hub.repos["lendata/ds"]
    assert repo.private and len(repo.commits) == 1 and repo.tags == {"v0.1.1": pushed["commit"]}
    assert sorted(repo.files) == sorted(pushed["files"]) == sorted(
        ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
         "plots/lengths-test.png", "plots/lengths-train.png", "plots/target-test.png", "plots/target-train.png"])
    v = st.open_version(store, "ds@0.1.1")
    assert repo.files["data/train-00000-of-00001.parquet"] == v.files("train")[0].read_bytes()
    assert b"configs:" in repo.files["README.md"]
    assert hub.token not in res.output
    # the same version again: refused before anything is uploaded
    again = CliRunner().invoke(app, ["push", "ds@0.1.1", "--repo", "lendata/ds", "--store", str(store)])
    assert again.exit_code == 1 and "already has tag v0.1.1" in again.output
    assert len(repo.commits) == 1
    # another version goes in as a second commit with its own tag
    run("push", "ds@0.1.0", "--repo", "lendata/ds", "--store", str(store), "--no-plots")
    assert len(repo.commits) == 2 and set(repo.tags) == {"v0.1.1", "v0.1.0"}


def test_push_with_a_bad_token_or_a_dry_run(store, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret")
    res = CliRunner().invoke(app, ["push", "ds", "--repo", "lendata/ds", "--store", str(store)])
    assert res.exit_code == 1 and "refused the token (HTTP 401)" in res.output
    assert "hf_wrong_secret" not in res.output and hub.repos == {}
    dry = run("push", "ds", "--repo", "lendata/ds", "--store", str(store), "--dry-run", "--no-plots")
    assert "would upload 3 files to lendata/ds and tag v0.1.1" in dry.output
    assert len(hub.requests) == 1  # only the refused whoami: a dry run makes no call
    bad = CliRunner().invoke(app, ["push", "ds", "--repo", "nameonly", "--store", str(store)])
    assert bad.exit_code == 1 and "ORG/NAME" in bad.output


def _version_with_shards(root, rows, rows_per_shard, splits, version):
    tables = {s: sft(rows, [100 + i for i in range(rows)]) for s in splits}
    return st.commit(root, "mix", tables, rows_per_shard=rows_per_shard, version=version,
                     meta={"recipe": "direct", "engine": "llamacpp", "model": "m"})


def _materialise(tree, folder):
    for path, data in tree.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def test_a_pushed_tag_serves_exactly_that_version(tmp_path, hub, monkeypatch):
    """0.1.0 (3 shards, 6 rows, train + test) then 0.1.1 (1 shard, 2 rows, train only): at tag v0.1.1 the repo
    holds 0.1.1's export file for file, and `load_dataset` reads its 2 rows, not 8."""
    import datasets

    root = tmp_path / "store"
    _version_with_shards(root, 6, 2, ("train", "test"), "0.1.0")
    _version_with_shards(root, 2, 10, ("train",), "0.1.1")
    hub.seed_files("lendata/mix", {".gitattributes": b"*.parquet filter=lfs\n", "notes.md": b"someone's notes",
                                   "data/train-00007-of-00009.parquet": b"stale"})
    for v in ("0.1.0", "0.1.1"):
        run("push", f"mix@{v}", "--repo", "lendata/mix", "--store", str(root), "--no-plots")
        expected = tmp_path / f"export-{v}"
        run("export", f"mix@{v}", str(expected), "--store", str(root), "--no-plots")
        tree = hub.repos["lendata/mix"].tree_at(f"v{v}")
        tree.pop(".gitattributes")  # the Hub's own repository settings, kept
        assert tree == {str(p.relative_to(expected)): p.read_bytes() for p in expected.rglob("*") if p.is_file()}
    repo = hub.repos["lendata/mix"]
    assert repo.commits[-1]["deleted"] == [f"data/{s}-0000{i}-of-00003.parquet" for s in ("test", "train")
                                           for i in range(3)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    loaded = datasets.load_dataset(str(_materialise(repo.tree_at("v0.1.1"), tmp_path / "at-v0.1.1")))
    assert {s: loaded[s].num_rows for s in loaded} == {"train": 2}
    old = datasets.load_dataset(str(_materialise(repo.tree_at("v0.1.0"), tmp_path / "at-v0.1.0")))
    assert {s: old[s].num_rows for s in old} == {"train": 6, "test": 6}


def test_push_refuses_a_visibility_it_cannot_give(store, hub):
    hub.seed_files("lendata/pub", {"README.md": b"public"}, private=False)
    res = CliRunner().invoke(app, ["push", "ds", "--repo", "lendata/pub", "--store", str(store), "--private",
                                   "--no-plots"])
    assert res.exit_code == 1 and "public" in res.output and "--private" in res.output, res.output
    assert len(hub.repos["lendata/pub"].commits) == 1 and not hub.repos["lendata/pub"].tags  # nothing uploaded
    hub.seed_files("lendata/priv", {"README.md": b"private"}, private=True)
    res = CliRunner().invoke(app, ["push", "ds", "--repo", "lendata/priv", "--store", str(store), "--public",
                                   "--no-plots"])
    assert res.exit_code == 1 and "private" in res.output and len(hub.repos["lendata/priv"].commits) == 1
    # without a visibility flag an existing repo keeps its own
    run("push", "ds", "--repo", "lendata/priv", "--store", str(store), "--no-plots")
    assert hub.repos["lendata/priv"].private and hub.repos["lendata/priv"].tags == {
        "v0.1.1": hub.repos["lendata/priv"].head}


def test_the_card_publishes_no_local_setting(tmp_path):
    import socket

    host = socket.gethostname()
    root = tmp_path / "store"
    settings = {
        "dataset": "ds", "temperature": 0.5, "seed": 42, "n": 4, "engine": "openai",
        "input": str(tmp_path / "secret-dir" / "prompts.jsonl"),
        "engine_options": {"base_url": "http://10.1.2.3:8000/v1", "model_path": "/x/y.gguf", "api_key_env": "K"},
        "ray": {"address": "head-node:6379"}, "runner": "ray", "shards": 4,
        "trainer": "python /home/me/train.py --out {out_adapter}",
        "generator": {"engine": "openai", "engine_options": {"base_url": "http://gpu-box:8000/v1"},
                      "lora": "/home/me/adapters/a1"},
        "note": f"built on {host}", "cache": "~/cache", "glob": "**/*.txt",
        # what an outside review still found published: hosts and paths without a scheme or a leading slash
        "server": "10.0.0.5:8000", "local": "localhost:8000", "v6": "[fe80::1]:8000", "node": "gpu17.corp.internal",
        "rel": "private/alice_prompts.jsonl", "cmd": "python /home/alice/clean.py", "win": "D:alice\\runs",
        "uri": "file:/etc/passwd", "nested": {"list": ["ok", "/srv/data/x"]},
    }
    meta = {"recipe": "direct", "engine": "vllm", "model": "C:\\Users\\me\\models\\SmolLM2-hf",
            "recipe_settings": settings,
            "inputs": [{"setting": "input", "name": "prompts.jsonl", "sha256": "ab" * 32}]}
    st.commit(root, "ds", {"train": sft(2, [100, 90])}, meta=meta)
    target = tmp_path / "hub"
    run("export", "ds", str(target), "--store", str(root), "--no-plots")
    card = (target / "README.md").read_text()
    for leak in (str(tmp_path), "secret-dir", "10.1.2.3", "/x/y", "head-node", "gpu-box", "/home/me", "~/cache",
                 host, "api_key_env", "10.0.0.5", "localhost", "fe80", "gpu17", "alice", "/etc/passwd", "/srv"):
        assert leak not in card, leak
    assert "prompts.jsonl" in card and "ab" * 32 in card
    assert '"temperature": 0.5' in card and '"seed": 42' in card and "SmolLM2-hf" in card
    assert "engine_options" in card.split("withheld")[1]  # the card says what it left out


def test_export_removes_only_its_own_leftovers(store, tmp_path):
    from lendata.hub import EXPORT_TMP

    target = tmp_path / "out"
    foreign = tmp_path / ".out.bak.tmp"  # someone's folder with a name like an export's temporary one
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    starry = tmp_path / ".x.y.tmp"
    starry.mkdir()
    killed = tmp_path / f".out{EXPORT_TMP}deadbeef.tmp"  # what a killed export of `out` left
    (killed / "data").mkdir(parents=True)
    run("export", "ds", str(target), "--store", str(store), "--no-plots")
    run("export", "ds", str(tmp_path / "*"), "--store", str(store), "--no-plots")  # a glob character in the name
    assert (foreign / "notes.txt").read_text() == "precious" and starry.is_dir()
    assert not killed.exists() and (target / "README.md").is_file() and (tmp_path / "*" / "README.md").is_file()


def test_an_export_never_mixes_two_contents_of_one_version(tmp_path):
    """A version replaced with --overwrite while it is exported: the export fails, it does not publish the new
    rows under the old card (the exported bytes are checked against the manifest the card describes)."""
    from lendata.hub import ExportError, export

    root = tmp_path / "store"
    st.commit(root, "ds", {"train": sft(3, [100, 90, 80])}, version="1.0.0")
    old = st.open_version(root, "ds@1.0.0")
    st.commit(root, "ds", {"train": sft(2, [10, 20])}, version="1.0.0", overwrite=True)
    with pytest.raises(ExportError, match="changed while it was exported"):
        export(old, tmp_path / "out", stats={"splits": {"train": {"rows": 3, "lengths": {}}}})
    assert not (tmp_path / "out").exists()

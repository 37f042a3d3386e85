"""`lendata build lveval` end to end: embedded SmolLM2 for the confusing facts, real Prefect, the shipped seed set
and the Python-docs distractor pool, levels up to 64k words."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from lendata import store as st
from lendata.cli import app
from lendata.methods.lveval import items as lv
from tests.conftest import REPO

LEVELS = "[16k,32k,64k]"


def build(store, *sets):
    res = CliRunner().invoke(app, ["build", "lveval", "--store", str(store), "--json", "--no-progress",
                                   "--set", f"levels={LEVELS}", "--set", "n=3", *[a for s in sets
                                                                                  for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = tmp_path_factory.mktemp("lveval")
    first = build(store)
    again = build(store)
    return store, first, again, st.open_version(store, "lveval")


def test_one_split_per_level_and_every_record_checked(built):
    store, first, _, v = built
    assert {"16k", "32k", "64k", "rejected", "quarantine"} == set(v.splits)
    seeds = {it.id: it for it in lv.read_items(REPO / "pipelines/data/lveval_seeds.jsonl").rows}
    facts_seen = 0
    for level in ("16k", "32k", "64k"):
        rows = v.read(level).to_pylist()
        assert sorted(r["item_id"] for r in rows) == sorted(list(seeds)[:3])  # the same items at every level
        for r in rows:
            target = int(level[:-1]) * 1000
            assert r["level_length"] == target and abs(r["length"] - target) <= 0.02 * target
            # LV-Eval's length: input + context + answers; the context alone in its own column
            assert r["context_length"] == len(r["context"].split())
            assert r["length"] == len(r["input"].split()) + r["context_length"] + sum(len(a.split())
                                                                                      for a in r["answers"])
            assert all(a in r["context"] for a in r["answers"]), r["id"]
            item = seeds[r["item_id"]]
            for fact, offset in zip(r["confusing_facts"], r["fact_offsets"], strict=True):
                assert r["context"][offset:].startswith(fact)
                assert not any(lv.contains_term(fact, k, "en") for k in lv.Item(
                    **{**item.__dict__, "keywords": r["answer_keywords"], "answers": r["answers"]}).keyword_list())
                facts_seen += 1
            for doc_offset, depth in zip(r["evidence_offsets"], r["depth"], strict=True):
                assert 0.0 <= depth <= 1.0
                # the supporting document is where the record says, with the item's replacements applied
                replace = lv.Replacer({x["original"]: x["replacement"] for x in r["replacements"]}, "en")
                assert r["context"][doc_offset:].startswith(replace(item.documents[0], count=False))
            for x in r["replacements"]:
                assert x["count"] >= 1 and x["original"] not in r["input"]
            assert r["dataset"] == f"lveval_{level}" and r["language"] == "en"
    assert v.manifest["levels"]["64k"]["rows"] == 3 and v.manifest["unit"] == "words"
    assert first["engine_calls"] >= 3  # confusing facts were asked of the embedded model
    assert facts_seen == 3 * v.manifest["confusing_facts"]
    for rej in v.read("rejected").to_pylist():
        assert rej["stage"] in {"cfi", "kpr", "distractors"} and rej["reason"]


def test_a_rerun_is_served_from_the_cache_and_changes_nothing(built):
    _, first, again, _ = built
    assert again["unchanged"] and again["version"] == first["version"]
    assert again["engine_calls"] == 0 and again["cache_hits"] >= first["engine_calls"]


def test_grid_depths_give_a_record_per_depth_and_bad_items_are_quarantined(tmp_path):
    seeds = (REPO / "pipelines/data/lveval_seeds.jsonl").read_text().splitlines()
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join([seeds[0], seeds[1], '{"question": "Q?", "answers": ["x"], "documents": "no"}']) + "\n")
    report = build(tmp_path / "store", f"input={qa}", "levels=[4k]", "depth=grid", "depths=[0,0.5,1]",
                   "facts_per_item=0")
    assert report["engine_calls"] == 0 and report["rows"] == 6 and report["quarantined"] == 1
    v = st.open_version(tmp_path / "store", "lveval")
    depths = sorted((r["item_id"], r["depth"][0]) for r in v.read("4k").to_pylist())
    # placed at the paragraph boundary nearest the asked depth
    assert all(abs(got - want) < 0.05 for (_, got), want in zip(depths, [0.0, 0.5, 1.0] * 2, strict=True)), depths
    (bad,) = v.read("quarantine").to_pylist()
    assert bad["source"] == f"{qa.name}:3" and "does not occur in its documents" in bad["reason"]


def test_the_quarantine_share_of_qa_items_does_not_depend_on_the_levels(tmp_path):
    """2 of 3 items unusable fails at any number of levels: the early check counts QA items."""
    from lendata import build as builds
    from lendata import recipes

    seeds = (REPO / "pipelines/data/lveval_seeds.jsonl").read_text().splitlines()
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join([seeds[0], *['{"question": "Q?", "answers": ["x"], "documents": "no"}'] * 2]) + "\n")
    for levels in (["1k"], ["1k", "2k", "3k", "4k"]):
        recipe = recipes.load("lveval", {"input": str(qa), "levels": levels, "facts_per_item": 0})
        with pytest.raises(builds.BuildFailed, match=r"2 of 3 QA items quarantined \(67% > max_quarantine_share"):
            builds.run(recipe, tmp_path / "store", progress=False)


def test_a_pool_too_small_for_the_level_fails_clearly(tmp_path):
    corpus = tmp_path / "tiny.jsonl"
    corpus.write_text(json.dumps({"text": "a short document about rivers and towers " * 10}) + "\n")
    res = CliRunner().invoke(app, ["build", "lveval", "--store", str(tmp_path / "s"), "--no-progress", "--set",
                                   f"distractors={corpus}", "--set", "levels=[16k]", "--set", "n=1", "--set",
                                   "facts_per_item=0"])
    assert res.exit_code == 1
    assert "distractor pool holds 70 words (1 document) and the other QA items 0 words (0 documents)" in res.output
    assert "the 16k level's context needs 15,845 words of distractors" in res.output
    assert st.list_versions(tmp_path / "s", "lveval") == []


MEMORY = textwrap.dedent("""
    import gc, sys
    from pathlib import Path
    from lendata import recipes
    from lendata.build import BuildRun
    from lendata.methods.lveval import items as lv
    from lendata.methods.lveval.context import item_documents
    from lendata.methods.lveval.levels import write_levels
    from lendata.methods.lveval.pool import Unit, read_pool

    k, out = int(sys.argv[1]), Path(sys.argv[2])
    items = lv.read_items(Path(sys.argv[3])).rows[:k]
    pool = read_pool("@python-docs", Unit(), cap=300_000)

    def run(level, dataset):
        build = BuildRun(recipes.load("lveval", {"levels": [level], "dataset": dataset}), out, progress=False)
        try:
            shard = build.output()
            stats = write_levels(items, {}, {}, pool, Unit(), lv.Settings(levels=(level,)), dataset, shard,
                                 item_documents(items, Unit()), "b000000")
            build.merge(shard.result())
            build.publish(False, 0.0)
        finally:
            build.close()
        return stats

    run("4k", "warmup")  # imports, polars' and Arrow's pools, a Parquet writer: measure building, not start-up
    gc.collect()
    rss = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak
    base = rss("VmRSS")
    assert run("256k", "mem")["256k"]["rows"] == k
    print(rss("VmHWM") - base)
""")


def test_256k_contexts_are_streamed_not_held_in_memory(tmp_path):
    # a fixed mmap threshold: glibc's moving one keeps freed multi-MB strings in the heap, which would measure
    # the allocator's reuse, not what the build holds
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}

    def peak(k):
        out = subprocess.run([sys.executable, "-c", MEMORY, str(k), str(tmp_path / f"s{k}"),
                              str(REPO / "pipelines/data/lveval_seeds.jsonl")], capture_output=True, text=True,
                             cwd=REPO, check=True, env=env)
        return int(out.stdout.split()[-1])

    context = 256_000 * 6.5  # bytes of a 256k-word context of this prose
    one, eight = peak(1), peak(8)
    # one record costs a constant number of copies of its context: the pieces and the joined text (Python),
    # the Arrow column, the Parquet page and its compressed copy (measured ~12 in all, 19 MB)
    assert eight < 24 * context, (one, eight)
    # holding the eight records of the level (the batch is one 256k record) would add ~35 copies
    assert eight - one < 4 * context, (one, eight)


def test_engine_proposed_replacements_from_the_embedded_model_obey_every_rule(tmp_path):
    report = build(tmp_path / "store", "levels=[4k]", "n=4", "kpr=engine", "facts_per_item=0")
    assert report["engine_calls"] == 4 and report["rows"] == 4
    v = st.open_version(tmp_path / "store", "lveval")
    seeds = {it.id: it for it in lv.read_items(REPO / "pipelines/data/lveval_seeds.jsonl").rows}
    for r in v.read("4k").to_pylist():
        item = seeds[r["item_id"]]
        assert all(a in r["context"] for a in r["answers"])
        for x in r["replacements"]:  # whatever the model proposed, what was applied passed the checks
            assert not lv.shares_characters(x["original"], x["replacement"])
            assert lv.contains_term(" ".join(item.documents), x["original"], "en")
            assert x["replacement"] in r["context"]
    rejected = [q for q in v.read("rejected").to_pylist() if q["stage"] == "kpr"]
    applied = sum(len(r["replacements"]) for r in v.read("4k").to_pylist())
    assert applied + len(rejected) >= 1  # the model proposed something, and each entry was either used or refused
    assert all(q["reason"] for q in rejected)


def test_unreadable_distractor_documents_are_recorded_not_counted_against_the_items(tmp_path):
    """The pool reads the whole corpus: its bad documents are the corpus's, not bad records of this build."""
    corpus = tmp_path / "corpus.jsonl"
    good = [json.dumps({"text": f"Document {i} tells of rivers, towers and harbours in the old town. " * 20})
            for i in range(60)]
    corpus.write_text("\n".join(good + ['{"text": null}'] * 40) + "\n")
    res = CliRunner().invoke(app, ["build", "lveval", "--store", str(tmp_path / "s"), "--no-progress", "--json",
                                   "--set", f"distractors={corpus}", "--set", "levels=[2k]", "--set", "n=2",
                                   "--set", "facts_per_item=0"])
    assert res.exit_code == 0, res.output
    v = st.open_version(tmp_path / "s", "lveval")
    unreadable = [r for r in v.read("rejected").to_pylist() if r["stage"] == "distractors"]
    assert len(unreadable) == 40 and all("corpus.jsonl:" in r["source"] for r in unreadable)
    assert v.manifest["distractor_pool"]["unreadable"] == 40 and v.rows("quarantine") == 0


@pytest.mark.slow
def test_shards_give_the_same_version_as_one(tmp_path):
    """Three items in blocks of one, built in 1 and in 3 shards with the embedded engine's confusing facts: the
    same files (the second build is `unchanged`), and each shard's items and records in the manifest."""
    one = build(tmp_path, "block_items=1")
    three = build(tmp_path, "block_items=1", "shards=3")
    assert three["unchanged"] and three["version"] == one["version"]
    other = build(tmp_path / "three", "block_items=1", "shards=3")  # a fresh store: every engine call made again
    manifest = json.loads((st.open_version(tmp_path / "three", "lveval").path / "manifest.json").read_text())
    assert manifest["content_hash"] == st.open_version(tmp_path, "lveval").manifest["content_hash"]
    assert manifest["blocks"] == 3 and [s["items"] for s in manifest["shards"]] == [1, 1, 1]
    assert sum(s["records"] for s in manifest["shards"]) == other["rows"] == 9
    assert manifest["confusing_facts"] > 0  # the engine was called in every shard's block

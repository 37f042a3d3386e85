"""`lendata build` end to end: real Prefect (ephemeral), real llama.cpp, real Parquet and DuckDB."""

import json
import os
import subprocess
import sys

import pytest

LENDATA = [sys.executable, "-m", "lendata"]


def run(*args, store, check=True):
    env = {**os.environ, "LENDATA_STORE": str(store)}
    p = subprocess.run([*LENDATA, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"lendata {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small build (3 good prompts, 1 bad line) run twice into the same store."""
    d = tmp_path_factory.mktemp("build")
    src = d / "prompts.jsonl"
    src.write_text(
        json.dumps({"q": "Write a 40-word note about the sea.", "w": 40}) + "\n"
        + '{"q": "broken\n'
        + json.dumps({"q": "Write a 60-word note about trees.", "w": 60}) + "\n"
        + json.dumps({"q": "Write a 50-word note about rain.", "w": 50}) + "\n"
    )
    store = d / "store"
    args = ["build", "direct", "--set", f"input={src}", "--set", "instruction_field=q", "--set", "target_field=w",
            "--json"]
    first = run(*args, store=store)
    second = run(*args, store=store)
    return store, first, second


def last_json(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_build_commits_a_version_and_reports_json(built):
    store, first, _ = built
    r = last_json(first)
    assert r["dataset"] == "direct" and r["version"] == "0.1.0"
    assert r["rows"] == 3 and r["quarantined"] == 1
    # one call per row, and at most one more per row cut at max_tokens (the recipe's continue_attempts: 1)
    got = run("query", "SELECT count(*) FILTER (WHERE continued_tokens > 0) AS n FROM direct", "--format", "json",
              store=store)
    assert 3 + json.loads(got.stdout)[0]["n"] <= r["engine_calls"] <= 6
    assert r["cache_hits"] == 0 and r["seconds"] > 0
    assert r["path"] == str(store / "direct" / "0.1.0")
    assert (store / "direct" / "0.1.0" / "manifest.json").is_file()
    assert "prompts.jsonl:2: invalid JSON" in first.stderr


def test_rerun_replays_the_cache_with_the_same_rows(built):
    _, first, second = built
    a, b = last_json(first), last_json(second)
    assert b["engine_calls"] == 0 and b["cache_hits"] == a["engine_calls"] >= 3  # continuations replay too
    assert (b["rows"], b["version"], b["path"]) == (a["rows"], a["version"], a["path"])


def test_query_over_the_build(built):
    store, _, _ = built
    p = run("query", "SELECT target_words, response_words, length_score, finish_reason, engine, "
            "len(messages) AS turns FROM direct ORDER BY target_words", "--format", "json", store=store)
    rows = json.loads(p.stdout)
    assert [r["target_words"] for r in rows] == [40, 50, 60]
    assert all(r["turns"] == 2 and r["engine"] == "llamacpp" and 0 <= r["length_score"] <= 100 for r in rows)
    # the per-row budget keeps a tiny model near its target: every response within 2x of it
    assert all(r["target_words"] / 2 <= r["response_words"] <= r["target_words"] * 2 for r in rows)
    q = run("query", "SELECT reason, source FROM direct__quarantine", "--format", "csv", store=store)
    assert "invalid JSON" in q.stdout and "prompts.jsonl:2" in q.stdout


def test_ls_and_validate(built):
    store, _, _ = built
    ls = run("ls", store=store)
    assert "direct" in ls.stdout and "0.1.0" in ls.stdout
    ok = run("validate", "direct@0.1.0", store=store)
    assert "valid" in ok.stdout and "train: 3 rows" in ok.stdout
    shard = store / "direct" / "0.1.0" / "train" / "part-00000.parquet"
    data = shard.read_bytes()
    shard.chmod(0o644)
    try:
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        bad = run("validate", "direct", store=store, check=False)
        assert bad.returncode == 1 and "sha256 differs" in bad.stderr
    finally:
        shard.write_bytes(data)


def test_clear_errors_for_unknown_recipe_key_and_input(tmp_path):
    p = run("build", "nope", store=tmp_path, check=False)
    assert p.returncode == 2 and "available:" in p.stderr and "direct" in p.stderr
    p = run("build", "direct", "--set", "bogus=1", store=tmp_path, check=False)
    assert p.returncode == 2 and "valid keys:" in p.stderr
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"text": "hi"}) + "\n")
    p = run("build", "direct", "--set", f"input={src}", store=tmp_path, check=False)
    assert p.returncode == 1 and "no record has the field 'prompt'" in p.stderr and "Traceback" not in p.stderr


def test_build_fails_past_the_quarantine_threshold(tmp_path):
    src = tmp_path / "x.jsonl"
    good = json.dumps({"prompt": "Say hi in 5 words", "length": 5})
    src.write_text('{"prompt": ""}\n{"prompt": "   "}\n' + good + "\n")
    p = run("build", "direct", "--set", f"input={src}", "--set", "max_quarantine_share=0.1", store=tmp_path,
            check=False)
    assert p.returncode == 1 and "max_quarantine_share" in p.stderr
    assert not (tmp_path / "direct").exists() or not any((tmp_path / "direct").glob("*/manifest.json"))


def test_engines_lists_all_and_times_the_default(tmp_path):
    p = run("engines", "--tokens", "16", store=tmp_path)
    text = " ".join(p.stdout.split())  # rich wraps lines at the terminal width
    for name in ("llamacpp", "openai", "vllm"):
        assert name in text
    assert "SmolLM2-135M" in text and "tok/s" in text and "context 8192 tokens" in text

"""`lendata build agentwrite` end to end with the bundled model, and `lendata score`."""

import json

import pytest

from tests.test_build_cli import last_json, run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("aw")
    src = d / "prompts.jsonl"
    src.write_text(
        json.dumps({"prompt": "Write a 150-word note about the history of bridges."}) + "\n"
        + json.dumps({"prompt": "写一篇不少于120字的短文，介绍长江。"}) + "\n"
    )
    store = d / "store"
    # the 135M model often runs past one-paragraph targets: the filters may quarantine both rows, which this
    # test of the build path reads too
    args = ["build", "agentwrite", "--set", f"input={src}", "--set", "target_field=null", "--set",
            "max_quarantine_share=1.0", "--json"]
    return store, run(*args, store=store), run(*args, store=store)


def test_agentwrite_build_and_free_rerun(built):
    store, first, second = built
    a, b = last_json(first), last_json(second)
    assert a["rows"] + a["quarantined"] == 2 and a["engine_calls"] >= 4  # 2 plans + at least 2 steps
    assert b["engine_calls"] == 0 and b["cache_hits"] == a["engine_calls"]
    assert (b["version"], b["rows"], b["quarantined"]) == (a["version"], a["rows"], a["quarantined"])


def test_agentwrite_rows_carry_plans_constraints_and_steps(built):
    from lendata import store as st

    store, _, _ = built
    ver = st.open_version(store, "agentwrite")
    rows = ver.read("train").to_pylist()
    if "quarantine" in ver.splits:  # rows a filter rejected still carry every column, as JSON
        rows += [json.loads(q["record"]) for q in ver.read("quarantine").to_pylist() if q["stage"] == "filter"]
    rows.sort(key=lambda r: r["target_words"])
    assert [(r["constraint_type"], r["target_words"]) for r in rows] == [("above", 132), ("about", 150)]
    for r in rows:
        assert len(r["plan"]) == 1 and r["plan_source"] in {"model", "model_repaired", "fallback"}
        assert len(r["step_words"]) == len(r["step_targets"]) == 1
        assert r["length_score"] >= 60, r  # a 135M model, length held by the pipeline
    assert ver.manifest["tokenizer"].startswith("gguf:") and "plan_fallbacks" in ver.manifest
    p = run("query", "SELECT count(*) AS n FROM agentwrite WHERE len(plan) = 1", "--format", "json", store=store)
    assert json.loads(p.stdout)[0]["n"] == ver.rows()


def test_score_cli(tmp_path):
    f = tmp_path / "resp.jsonl"
    f.write_text(
        json.dumps({"target_words": 10, "response": " ".join(["word"] * 10)}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Write about 30 words"},
                                   {"role": "assistant", "content": " ".join(["word"] * 10)}]}) + "\n"
        + json.dumps({"response": "no target here"}) + "\n"
        + "{broken\n"
    )
    p = run("score", str(f), "--metric", "sl", "--json", store=tmp_path)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 2 and summary["mean"] == pytest.approx((100 + 0) / 2)  # 10 of 30 words: S_l 0
    assert len(summary["skipped"]) == 2 and any("invalid JSON" in s for s in summary["skipped"])
    p = run("score", str(f), "--metric", "ruler", "--json", store=tmp_path)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["pm"] == pytest.approx(50.0) and summary["fm"] == pytest.approx(50.0)
    longen = tmp_path / "longen.jsonl"
    longen.write_text(json.dumps({"type": "below", "constraint": "少于100字", "query": "写短文",
                                  "response": "长" * 40}) + "\n")
    p = run("score", str(longen), "--metric", "longen", "--json", store=tmp_path)
    # below 100 accepts [50, 100]; 40 is under a=50: max(0, 2 * 40 / 50 - 1) = 0.6
    assert json.loads(p.stdout.strip().splitlines()[-1])["mean"] == pytest.approx(60.0)
    bad = run("score", str(f), "--metric", "nope", store=tmp_path, check=False)
    assert bad.returncode == 1 and "choose from" in bad.stderr


def test_longwrite_ruler_probe_reports_length_per_requested_length(tmp_path):
    # a 1024-token window bounds the unforced generations, so the test stays short
    p = run("build", "longwrite_ruler", "--set", "n=2", "--set", "engine_options.n_ctx=1024", "--json",
            store=tmp_path)
    report = last_json(p)
    assert report["dataset"] == "longwrite_ruler" and report["rows"] + report["quarantined"] == 2
    summary = report["summary"]
    assert [s["requested_words"] for s in summary] == [1000]
    assert summary[0]["rows"] == report["rows"] and summary[0]["mean_words"] > 0
    # 1,000 words do not fit a 1,024-token window: the table says the window, not the model, stopped them
    assert summary[0]["window_capped"] == report["rows"]
    q = run("query", "SELECT count(*) FILTER (WHERE finish_reason = 'length' AND window_limited) AS w, "
            "count(*) FILTER (WHERE finish_reason = 'stop') AS m FROM longwrite_ruler", "--format", "json",
            store=tmp_path)
    ended = json.loads(q.stdout)[0]
    assert (summary[0]["window_stopped"], summary[0]["model_stopped"]) == (ended["w"], ended["m"])
    assert summary[0]["window_stopped"] + summary[0]["model_stopped"] == report["rows"]  # all capped by the window
    q = run("query", "SELECT min_tokens, max_tokens FROM longwrite_ruler", "--format", "json", store=tmp_path)
    assert all(r["min_tokens"] == 0 and r["max_tokens"] <= 1024 for r in json.loads(q.stdout))  # unforced

"""`length_profile` (CASTILLO): sampled completion lengths per prompt and model, their statistics, the report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.cli import app
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool


def _prompts(tmp_path, n=3):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Write about topic {i}."}) + "\n" for i in range(n)))
    return src


def _by_seed(req):
    """A completion whose length is a function of its seed: 5 + seed words, cut at max_tokens."""
    n = 5 + req.seed
    cut = n > req.max_tokens
    return Result(text=" ".join(["w"] * min(n, req.max_tokens)), completion_tokens=min(n, req.max_tokens),
                  finish_reason="length" if cut else "stop")


def _scripted_build(tmp_path, scripted, sets, shards=1):
    recipe = recipes.load("length_profile", {"input": str(_prompts(tmp_path)), "n": None, "shards": shards,
                                             **sets})
    pool = EnginePool(lambda name, options: CachedEngine(scripted(_by_seed), ResponseCache(tmp_path / f"{shards}.c")),
                      "llamacpp")
    store = tmp_path / f"store{shards}"
    builds.run(recipe, store, progress=False, engines=pool)
    v = st.open_version(store, "length_profile")
    return v, v.read("profiles").to_pylist(), v.read("samples").to_pylist()


def test_statistics_are_castillos_and_match_the_samples(tmp_path, scripted):
    """4 samples of 3 prompts: prompt i's sample k has 5 + (i*4 + k) words (seed = i × samples + k)."""
    v, profiles, samples = _scripted_build(tmp_path, scripted, {"samples": 4, "max_tokens": 100})
    assert len(samples) == 12 and len(profiles) == 3
    by_prompt = {p["prompt"]: p for p in profiles}
    p = by_prompt["Write about topic 1."]
    lengths = np.array([9, 10, 11, 12], dtype=float)  # seeds 4..7
    assert p["tokens_mean"] == pytest.approx(lengths.mean())
    assert p["tokens_std"] == pytest.approx(lengths.std(ddof=1))
    assert p["tokens_cv"] == pytest.approx(lengths.std(ddof=1) / lengths.mean())
    for q, want in zip((5, 25, 50, 75, 95), np.percentile(lengths, (5, 25, 50, 75, 95)), strict=True):
        assert p[f"tokens_p{q}"] == pytest.approx(want)
    assert (p["tokens_min"], p["tokens_max"]) == (9, 12)
    assert p["shortest_text"] == " ".join(["w"] * 9) and p["longest_text"] == " ".join(["w"] * 12)
    assert p["words_mean"] == pytest.approx(10.5) and p["truncated_share"] == 0
    settings = json.loads(p["settings"])
    assert settings | {"temperature": 0.7, "top_p": 0.95, "max_tokens": 100, "samples": 4, "seed": 0} == settings
    assert settings["engine"] == "llamacpp"
    assert sorted(s["sample_index"] for s in samples if s["prompt"] == p["prompt"]) == [0, 1, 2, 3]
    assert v.manifest["length_profile"]["tokens"]["scripted-1"][p["prompt_id"]] == [9, 10, 11, 12]


def test_cut_completions_are_counted_and_shards_do_not_change_the_data(tmp_path, scripted):
    _, one, s1 = _scripted_build(tmp_path, scripted, {"samples": 3, "max_tokens": 10})
    _, three, s3 = _scripted_build(tmp_path, scripted, {"samples": 3, "max_tokens": 10}, shards=3)
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(s1, key=key) == sorted(s3, key=key) and sorted(one, key=key) == sorted(three, key=key)
    last = next(p for p in one if p["prompt"] == "Write about topic 2.")  # seeds 6, 7, 8: 11, 12, 13 words
    assert last["truncated_share"] == 1.0 and last["tokens_max"] == 10


def test_settings_are_checked(tmp_path):
    with pytest.raises(recipes.RecipeError, match="samples"):
        recipes.load("length_profile", {"input": str(_prompts(tmp_path)), "samples": 1})
    with pytest.raises(recipes.RecipeError, match="models"):
        recipes.load("length_profile", {"input": str(_prompts(tmp_path)), "models": '[{"engine": "x", "bogus": 1}]'})


def test_a_failing_engine_quarantines_its_samples_with_the_model(tmp_path, scripted):
    def flaky(req):
        return Result.failed("server said 500") if req.seed == 1 else _by_seed(req)

    recipe = recipes.load("length_profile", {"input": str(_prompts(tmp_path, 1)), "samples": 3})
    pool = EnginePool(lambda name, options: CachedEngine(scripted(flaky), ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, tmp_path / "s", progress=False, engines=pool)
    v = st.open_version(tmp_path / "s", "length_profile")
    [profile] = v.read("profiles").to_pylist()
    assert profile["samples"] == 2 and profile["failed"] == 1
    [q] = v.read("quarantine").to_pylist()
    assert q["reason"] == "scripted-1: server said 500"


@pytest.mark.slow
def test_embedded_profile_of_two_decodings_with_its_report(tmp_path):
    """The bundled model under two names (two context windows) through the CLI, then `lendata report`: each
    profile's numbers are those of its stored samples, and the page has the distribution plot."""
    models = json.dumps([{"name": "smol-a", "engine": "llamacpp", "engine_options": {"n_ctx": 1024}},
                         {"name": "smol-b", "engine": "llamacpp", "engine_options": {"n_ctx": 2048}}])
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["build", "length_profile", "--store", str(store), "--set", "n=2",
                                   "--set", "samples=3", "--set", "max_tokens=48", "--set", f"models={models}",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    v = st.open_version(store, "length_profile")
    profiles = pq.read_table(v.files("profiles")).to_pylist() if len(v.files("profiles")) == 1 else \
        v.read("profiles").to_pylist()
    samples = v.read("samples").to_pylist()
    assert {(p["model_label"], p["samples"]) for p in profiles} == {("smol-a", 3), ("smol-b", 3)}
    assert len(profiles) == 4 and len(samples) == 12
    for p in profiles:
        tokens = [s["tokens"] for s in samples if s["prompt_id"] == p["prompt_id"] and s["model_label"] ==
                  p["model_label"]]
        assert p["tokens_mean"] == pytest.approx(np.mean(tokens)) and p["tokens_max"] == max(tokens)
        assert all(0 < t <= 48 + 2 for t in tokens)
        assert json.loads(p["settings"])["engine_options"]["n_ctx"] in (1024, 2048)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "length_profile", "--store", str(store), "--to", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["length_profile"]["tokens"]) == {"smol-a", "smol-b"}
    assert (out / "length_profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "length_profile.png" in (out / "index.html").read_text()


def test_a_prompt_given_twice_is_profiled_twice_and_failures_keep_labels_with_colons(tmp_path, scripted):
    src = tmp_path / "dup.jsonl"
    src.write_text(json.dumps({"prompt": "Same prompt."}) + "\n" + json.dumps({"prompt": "Same prompt."}) + "\n")

    def flaky(req):
        return Result.failed("boom") if req.sample_index == 0 else _by_seed(req)

    recipe = recipes.load("length_profile", {"input": str(src), "samples": 3,
                                             "models": [{"name": "qwen2.5:7b", "engine": "llamacpp"}]})
    pool = EnginePool(lambda name, options: CachedEngine(scripted(flaky), ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, tmp_path / "s", progress=False, engines=pool)
    v = st.open_version(tmp_path / "s", "length_profile")
    profiles = v.read("profiles").to_pylist()
    assert len(profiles) == 2 and len({p["prompt_id"] for p in profiles}) == 2
    assert all(p["samples"] == 2 and p["failed"] == 1 for p in profiles)
    assert v.rows("samples") == 4
    assert {q["stage"] for q in v.read("quarantine").to_pylist()} == {"sample"}


def test_settings_keep_the_tokenizer_option_and_drop_credentials():
    from lendata.methods.length_profile.method import _SECRET

    assert not _SECRET.search("tokenizer") and not _SECRET.search("max_tokens")
    assert all(_SECRET.search(k) for k in ("api_key", "token", "hf_token", "password", "auth_header"))

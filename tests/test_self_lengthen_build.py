"""Self-Lengthen end to end with the embedded model and real Prefect, plus the trainer between iterations."""

import json
import time

import pyarrow as pa
import pytest

from flows import run_recipe
from lendata import recipes
from lendata import store as st
from lendata.methods.self_lengthen import steps as sl
from lendata.methods.self_lengthen.trainer import TrainerFailed, run_trainer, train_command

SMALL = {"n": 2, "iterations": 2, "samples": 1, "max_tokens": 200, "micro_rounds": 2, "generate_attempts": 3,
         "extend_retries": 3, "drop_short": False, "lora": {"epochs": 1, "max_length": 384}}
RERUN_STARTED: dict[str, float] = {}
SPLITS = ("instructions", "responses", "gen_sft", "ext_sft", "queries")


def build(tmp_path, name, **sets):
    recipe = recipes.load("self_lengthen", {**SMALL, **sets})
    return run_recipe(recipe, tmp_path / name, progress=False)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sl")
    first = build(tmp, "a")
    RERUN_STARTED["a"] = time.time()
    rerun = build(tmp, "a")
    other = build(tmp, "b")
    return tmp, first, rerun, other


def test_two_iterations_give_every_split_and_account_for_every_response(two_builds):
    tmp, first, _, _ = two_builds
    v = st.open_version(tmp / "a", "self_lengthen")
    assert set(SPLITS) | {"quarantine"} <= set(v.splits)
    instructions = v.read("instructions").to_pylist()
    assert sorted(r["iteration"] for r in instructions) == [1] * SMALL["n"] + [2] * SMALL["n"]
    responses = v.read("responses").to_pylist()
    quarantine = v.read("quarantine").to_pylist()
    not_generated = [q for q in quarantine if q["stage"] == "generate"]
    not_extended = [q for q in quarantine if q["stage"] == "extend"]
    # each instruction has `samples` initial responses: each failed generation or was submitted for extension
    # twice, and each submission is kept or quarantined with its reason
    assert (len(responses) + len(not_extended)) % 2 == 0
    assert len(not_generated) + (len(responses) + len(not_extended)) // 2 == len(instructions) * SMALL["samples"]
    assert all(q["reason"] for q in not_generated + not_extended)
    from lendata.engines.identity import content_identity
    from lendata.lengths import count_tokens
    from lendata.models import bundled_gguf_path, gguf_tokenizer_path

    gguf = bundled_gguf_path()  # the model that wrote them, counted with its own vocabulary
    for r in responses:
        assert r["extended_words"] > 1.2 * r["initial_words"] and r["growth"] > 1.2
        assert [r["initial_tokens"], r["extended_tokens"]] == count_tokens(
            [r["initial_response"], r["extended_response"]], str(gguf_tokenizer_path(gguf)))
    assert v.manifest["tokenizer"] == f"gguf:{gguf.name}@sha256:{content_identity(gguf)[:16]}"
    gen, ext = v.read("gen_sft").to_pylist(), v.read("ext_sft").to_pylist()
    assert len(gen) == len(ext) == len(responses)
    for g, e, r in zip(gen, ext, responses, strict=True):
        assert g["output"] == e["output"] == r["extended_response"]
        assert g["instruction"] == r["instruction"] and "Original outline" in e["instruction"]
        assert g["messages"][1]["content"] == g["output"]
        assert g["output_tokens"] == e["output_tokens"] == r["extended_tokens"]
    roles = v.manifest["roles"]
    assert [x["iteration"] for x in roles] == [1, 2] and roles[0]["generator"]["engine"] == "llamacpp"


def test_the_built_in_trainer_trains_two_adapters_that_iteration_two_uses(two_builds):
    from pathlib import Path

    from lendata.engines.identity import content_identity

    tmp, _, _, _ = two_builds
    v = st.open_version(tmp / "a", "self_lengthen")
    first, second = v.manifest["iterations"]
    assert first["responses"] > 0, "iteration 1 must keep responses to train on"
    trained = first["trained"]
    gen, ext = trained["generator"]["adapter"], trained["extender"]["adapter"]
    assert gen != ext and all((Path(a) / "adapter_model.safetensors").is_file() for a in (gen, ext))
    assert trained["generator"]["training"]["rows"] == first["responses"]
    assert trained["generator"]["sha256"] == content_identity(gen)
    # iteration 1 on the base model, iteration 2 on the adapters trained after it (path and hash recorded)
    assert first["generator"]["lora"] is None and first["extender"]["lora"] is None
    assert (second["generator"]["lora"], second["extender"]["lora"]) == (gen, ext)
    assert second["generator"]["lora_sha256"] == content_identity(gen)
    assert "trained" not in second  # nothing follows the last iteration
    rows = v.read("responses").to_pylist()
    for r in rows:
        expected = (None, None) if r["iteration"] == 1 else (content_identity(gen), content_identity(ext))
        assert (r["generator_adapter"], r["extender_adapter"]) == expected
    for it in (first, second):
        assert set(it["acceptance"]) == {"self_instruct", "generate", "drop_short_initial", "extend",
                                         "drop_short_extended"}
        assert it["lengths"]["initial_words"].keys() == {"mean", "median"}


def test_rerun_makes_no_engine_calls_trains_nothing_and_keeps_the_version(two_builds):
    tmp, first, rerun, _ = two_builds
    assert first.engine_calls > 0
    assert rerun.engine_calls == 0 and rerun.unchanged and rerun.version == first.version
    logs = list((tmp / "a").rglob("training_log.json"))
    assert len(logs) == 2  # one adapter per role, trained once: the rerun reused both
    assert all(log.stat().st_mtime < RERUN_STARTED["a"] for log in logs)


def test_same_seed_gives_the_same_rows_in_a_fresh_store(two_builds):
    tmp, first, _, other = two_builds
    assert other.engine_calls == first.engine_calls  # nothing shared: the store is new
    a, b = st.open_version(tmp / "a", "self_lengthen"), st.open_version(tmp / "b", "self_lengthen")
    for split in (*SPLITS, "quarantine"):
        assert a.read(split).to_pylist() == b.read(split).to_pylist(), split


# --- roles and the trainer ----------------------------------------------------------------------------------


def test_role_config_layers_recipe_role_iteration_and_trained_adapter():
    s = sl.Settings(extender=sl.RoleSettings(lora="/ext"),
                    iteration_roles={2: {"generator": sl.RoleSettings(lora="/gen2")}})
    default = ("vllm", {"model": "m"})
    assert sl.role_config(s, default, "generator", 1, None) == {"engine": "vllm", "engine_options": {"model": "m"},
                                                                "lora": None}
    assert sl.role_config(s, default, "extender", 1, None)["lora"] == "/ext"
    assert sl.role_config(s, default, "generator", 2, "/trained")["lora"] == "/gen2"  # named wins
    assert sl.role_config(s, default, "generator", 3, "/trained")["lora"] == "/trained"
    # llama.cpp loads adapters too (converted to its LoRA GGUF): a trained adapter reaches the embedded engine
    assert sl.role_config(sl.Settings(), ("llamacpp", {}), "extender", 2, "/trained")["lora"] == "/trained"


def _pairs(n):
    from lendata.methods.self_lengthen.sets import PAIR_SCHEMA

    rows = [{"id": str(i), "iteration": 1, "language": "en", "instruction": f"q{i}", "input": "", "output": f"a{i}.",
             "output_words": 1, "messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}."}]} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)





def test_trainer_command_runs_once_per_role_with_its_own_set_and_is_reused(tmp_path):
    # a trivial "trainer": the adapter it writes is a directory holding the files it was given
    cmd = ("mkdir -p {out_adapter} && cp {sft} {out_adapter}/own.jsonl && cp {gen_sft} {out_adapter}/g.jsonl && "
           "cp {sft_messages} {out_adapter}/m.jsonl && echo {iteration} {role} {init_adapter} > {out_adapter}/it")
    out = train_command(cmd, tmp_path, 2, _pairs(3), _pairs(2), {"generator": "/prev/gen"}, {})
    assert set(out) == {"generator", "extender"} and out["generator"] != out["extender"]
    gen, ext = out["generator"], out["extender"]
    assert [json.loads(x) for x in open(f"{gen}/own.jsonl")][0] == {"instruction": "q0", "input": "", "output": "a0."}
    assert len(open(f"{gen}/own.jsonl").readlines()) == 3 and len(open(f"{ext}/own.jsonl").readlines()) == 2
    assert len(open(f"{ext}/g.jsonl").readlines()) == 3  # every set stays available by name
    assert json.loads(open(f"{ext}/m.jsonl").readline())["messages"][1]["role"] == "assistant"
    assert open(f"{gen}/it").read().split() == ["2", "generator", "/prev/gen"]
    assert open(f"{ext}/it").read().split() == ["2", "extender"]  # no previous adapter: empty
    # the same data again: no second run (the adapter is keyed by command + data)
    marker = tmp_path / "ran"
    again = train_command(cmd + f" && touch {marker}", tmp_path, 2, _pairs(3), _pairs(2), {"generator": "/prev/gen"},
                          {})
    assert marker.exists() and again["generator"] != gen  # a different command is a different key
    assert train_command(cmd, tmp_path, 2, _pairs(3), _pairs(2), {"generator": "/prev/gen"}, {}) == out


def test_trainer_per_role_and_failures_are_clear(tmp_path):
    out = train_command({"extender": "mkdir {out_adapter} && echo {role} > {out_adapter}/role"}, tmp_path, 1,
                        _pairs(1), _pairs(1), {}, {})
    assert list(out) == ["extender"] and open(f"{out['extender']}/role").read().strip() == "extender"
    (tmp_path / "x").write_text("")
    with pytest.raises(TrainerFailed, match=r"exit 3\): echo boom[\s\S]*boom"):
        run_trainer("echo boom >&2; exit 3", {"gen_sft": tmp_path / "x"}, tmp_path / "t1")
    with pytest.raises(TrainerFailed, match="wrote nothing"):
        run_trainer("true", {"gen_sft": tmp_path / "x"}, tmp_path / "t2")
    with pytest.raises(TrainerFailed, match="unknown placeholder"):
        run_trainer("train {nope}", {"gen_sft": tmp_path / "x"}, tmp_path / "t3")
    assert not list((tmp_path / "t1").rglob("adapter"))  # nothing half-made is left where a reader looks


def test_the_report_plots_length_per_iteration_and_shows_each_iteration_s_adapters(two_builds):
    import polars as pl

    from lendata import report

    tmp, _, _, _ = two_builds
    v = st.open_version(tmp / "a", "self_lengthen")
    data = report.render(v, tmp / "a", tmp / "report")
    table = data["splits"]["responses"]["by_iteration"]
    # the figures against the rows themselves, computed here with polars
    rows = pl.from_arrow(v.read("responses")).group_by("iteration").agg(
        pl.len().alias("rows"), pl.col("initial_words").mean().alias("mean"),
        pl.col("extended_words").median().alias("median")).sort("iteration")
    assert [r["iteration"] for r in table] == rows["iteration"].to_list()
    assert [r["rows"] for r in table] == rows["rows"].to_list()
    assert [r["initial_words_mean"] for r in table] == [round(x, 1) for x in rows["mean"].to_list()]
    assert [r["extended_words_median"] for r in table] == [round(float(x), 1) for x in rows["median"].to_list()]
    assert (tmp / "report" / "iterations-responses.png").stat().st_size > 1000
    page = (tmp / "report" / "index.html").read_text()
    second = v.manifest["iterations"][1]
    assert "Length per iteration" in page and "<h2>Iterations</h2>" in page
    assert second["generator"]["lora_sha256"][:12] in page and second["extender"]["lora_sha256"][:12] in page


def test_trainer_commands_with_literal_braces_and_changed_inputs(tmp_path):
    # literal braces are doubled; an unbalanced one is a clear error, not a crash
    out = train_command("mkdir -p {out_adapter} && echo ${{HOME}} | awk '{{print $1}}' > {out_adapter}/home",
                        tmp_path, 1, _pairs(1), _pairs(1), {}, {})
    assert open(f"{out['generator']}/home").read().strip().startswith("/")
    with pytest.raises(TrainerFailed, match="literal brace"):
        train_command("echo { > {out_adapter}", tmp_path, 1, _pairs(1), _pairs(1), {}, {})
    # the same command and data from another starting adapter or base model is another adapter
    cmd = "mkdir -p {out_adapter} && echo {init_adapter} {base_model} > {out_adapter}/from"
    a = train_command(cmd, tmp_path, 2, _pairs(2), _pairs(2), {"generator": "/a1"}, {"generator": "/m"})
    b = train_command(cmd, tmp_path, 2, _pairs(2), _pairs(2), {"generator": "/a2"}, {"generator": "/m"})
    c = train_command(cmd, tmp_path, 2, _pairs(2), _pairs(2), {"generator": "/a1"}, {"generator": "/m2"})
    assert len({a["generator"], b["generator"], c["generator"]}) == 3
    assert open(f"{b['generator']}/from").read().split() == ["/a2", "/m"]

"""The method contract: one registry, one build path, methods that import only what they may."""

import ast
import random
import textwrap
from pathlib import Path

import pytest

import lendata.methods
from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool
from lendata.methods import get, registry
from lendata.methods.base import Method
from lendata.methods.self_lengthen import steps as sl

REPO = Path(__file__).resolve().parents[1]
METHODS = ["agentwrite", "decompose", "direct", "eval", "length_profile", "lveval", "preferences", "ruler",
           "self_lengthen"]


def test_the_registry_is_the_method_folder():
    methods = registry()
    assert list(methods) == METHODS
    for name, method in methods.items():
        assert isinstance(method, Method) and (REPO / "lendata/methods" / name / "__init__.py").is_file()
        assert method.splits(method.settings()), name  # defaults give a valid settings object and its splits
    with pytest.raises(lendata.methods.UnknownMethod, match="no method 'shared'"):
        get("shared")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


FORBIDDEN = ("lendata.build", "lendata.store", "lendata.recipes", "lendata.cli", "lendata.catalog", "lendata.hub",
             "lendata.paths", "flows", "prefect")


def test_methods_import_engines_lengths_and_their_helpers_only():
    for path in (REPO / "lendata/methods").rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(FORBIDDEN), f"{path.relative_to(REPO)} imports {name}"
            if name.startswith("lendata.methods."):  # another method's package: only the shared helpers
                own = path.relative_to(REPO / "lendata/methods").parts[0]
                other = name.split(".")[2]
                assert other in (own, "shared", "base") or own in ("__init__.py", "base.py"), \
                    f"{path.relative_to(REPO)} imports {name}"


def test_no_generic_module_names_a_method():
    """Adding a method touches no registry: the build, the flows, the CLI, the card, the scores and the
    validator know methods only through the registry."""
    generic = [*REPO.glob("lendata/*.py"), *REPO.glob("lendata/cli/*.py"), *REPO.glob("flows/*.py"),
               *REPO.glob("schemas/validate.py"), *REPO.glob("schemas/__init__.py")]
    # "ruler" there is Ruler's word counter and its PM/FM length metric, which every table can be scored with
    length_terms = {"lendata/lengths.py": {"ruler"}, "lendata/scoring.py": {"ruler"}}
    for path in generic:
        tree = ast.parse(path.read_text())
        allowed = length_terms.get(str(path.relative_to(REPO)), set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in METHODS and node.value not in allowed:
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno} names the method {node.value!r}")
        for name in _imports(path):
            parts = name.split(".")
            assert not (parts[:2] == ["lendata", "methods"] and len(parts) > 2 and parts[2] in METHODS), \
                f"{path.relative_to(REPO)} imports {name}"


# --- a method added by a newcomer: its package, its recipe, nothing else --------------------------------------

TOY = textwrap.dedent('''
    """A toy method: one row per line of a text file, with its word count."""
    from dataclasses import dataclass

    import pandera.polars as pdp
    import pyarrow as pa

    from lendata.methods.base import Method, Split

    SCHEMA = pa.schema([("id", pa.string()), ("text", pa.large_string()), ("words", pa.int64())])


    class LinesSchema(pdp.DataFrameModel):
        id: str
        words: int = pdp.Field(gt=0)

        class Config:
            strict = False


    @dataclass
    class Settings:
        input: str = ""  # a text file
        min_words: int = 0  # lines with fewer words are quarantined by the method


    def count(s, lines, offset, engines, progress):
        return [{"id": f"l{offset + i}", "text": t, "words": len(t.split())} for i, t in enumerate(lines)]


    class Toy(Method):
        name = "toylines"
        settings = Settings
        sharded = True
        card_tags = ("toy",)

        def splits(self, s):
            return {"train": Split(SCHEMA, LinesSchema)}

        def run(self, s, build):
            lines = build.path(s.input).read_text().splitlines()
            rows = [r for part in build.map(count, lines, "count") for r in part]
            build.quarantine([{"id": r["id"], "stage": "filter", "reason": "short", "source": "", "record": r["text"]}
                              for r in rows if 0 < r["words"] < s.min_words])
            build.add("train", pa.Table.from_pylist([r for r in rows if not 0 < r["words"] < s.min_words], SCHEMA))


    METHOD = Toy()
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "extra" / "toylines"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(TOY)
    monkeypatch.setattr(lendata.methods, "__path__", [*lendata.methods.__path__, str(tmp_path / "extra")])
    (tmp_path / "lines.txt").write_text("one two three\n\nfour five\nsix\n")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("flow: toylines\ndataset: toy\ninput: lines.txt\nshards: 2\nmin_words: 2\n"
                      "max_quarantine_share: 0.6\n")
    yield recipe
    import sys

    sys.modules.pop("lendata.methods.toylines", None)


def test_a_new_method_needs_only_its_package_and_its_recipe(toy, tmp_path):
    assert "toylines" in registry()
    recipe = recipes.load(str(toy))
    with pytest.raises(recipes.RecipeError, match="did you mean 'min_words'"):
        recipes.load(str(toy), {"min_word": "3"})
    report = builds.run(recipe, tmp_path / "store", progress=False)
    version = st.open_version(tmp_path / "store", "toy")
    assert report.rows == 2 and version.read("train").column("text").to_pylist() == ["one two three", "four five"]
    quarantine = version.read("quarantine").to_pylist()
    # the method's own filter first, then the rows its pandera schema refused (the empty line has 0 words)
    assert [(q["stage"], q["reason"]) for q in quarantine] == [("filter", "short"),
                                                               ("schema", "words: greater_than(0)")]
    m = version.manifest
    assert m["method"] == "toylines" and m["recipe_settings"]["min_words"] == 2
    assert set(m["recipe_settings"]) == set(recipes.keys(recipes.RunSettings)) - {"ray.address", "ray.num_cpus",
                                          "ray.cpus_per_shard", "ray.gpus_per_shard"} | {"input", "min_words"}
    assert [s["offset"] for s in m["shards"]] == [0, 2]  # two shards of the four lines
    from lendata.hub import card_tags

    assert card_tags(m) == (["text-generation"], ["toy"])


def test_the_quarantine_threshold_holds_for_every_method(toy, tmp_path):
    recipe = recipes.load(str(toy), {"max_quarantine_share": "0.4"})  # 2 of 4 rows quarantined: 50%
    with pytest.raises(builds.BuildFailed, match=r"2 of 4 rows quarantined \(50% > max_quarantine_share 40%\)"):
        builds.run(recipe, tmp_path / "store", progress=False)
    assert st.list_versions(tmp_path / "store", "toy") == []  # nothing published, nothing half-written
    assert not list((tmp_path / "store" / "toy").glob(".staging-*"))


def test_a_method_writing_an_undeclared_split_is_a_bug_not_data(toy, tmp_path):
    text = (toy.parent / "extra/toylines/__init__.py").read_text().replace('build.add("train"', 'build.add("tran"')
    (toy.parent / "extra/toylines/__init__.py").write_text(text)
    with pytest.raises(ValueError, match="wrote split 'tran', which it does not declare"):
        builds.run(recipes.load(str(toy)), tmp_path / "store", progress=False)


@pytest.mark.parametrize(("change", "message"), [
    # a split both streamed and added would lose the streamed rows
    ('build.stream("train", SCHEMA).write(pa.Table.from_pylist([{"id": "s", "text": "a b", "words": 2}], SCHEMA))\n'
     '        build.add("train"', "adds rows to split 'train', which it streams"),
    ('build.meta["content_hash"] = "x"\n        build.add("train"', "manifest entries the build owns"),
])
def test_a_method_cannot_overwrite_what_the_build_owns(toy, tmp_path, change, message):
    path = toy.parent / "extra/toylines/__init__.py"
    path.write_text(path.read_text().replace('build.add("train"', change))
    with pytest.raises(ValueError, match=message):
        builds.run(recipes.load(str(toy)), tmp_path / "store", progress=False)
    assert st.list_versions(tmp_path / "store", "toy") == []
    assert not list((tmp_path / "store" / "toy").glob(".staging-*"))


# --- Self-Lengthen's iteration loop is the method's, testable without Prefect ------------------------------

VOCAB = ("river stone valley harbor winter market garden lantern meadow bridge forest candle orchard village "
         "tower signal engine letter mirror island mountain thunder canvas shadow ribbon cellar compass "
         "harvest festival kitchen library").split()


def _answer(req):
    rng = random.Random(req.seed)
    if req.stop == sl.NEXT_INSTRUCTION_STOPS:  # step 0: a new instruction
        return Result(text=f"Write a long report about the {rng.choice(VOCAB)} of town {req.seed % 997}.",
                      completion_tokens=12)
    n = min(req.max_tokens, 160)
    sentences = [" ".join(rng.choice(VOCAB) for _ in range(9)).capitalize() + "." for _ in range(n // 10)]
    text = "\n\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4))
    return Result(text=text, completion_tokens=n)


def test_self_lengthen_iterates_and_hands_trained_adapters_over_without_prefect(tmp_path, scripted):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    engine = scripted(_answer)
    recipe = recipes.load("self_lengthen", {"n": 1, "iterations": 2, "samples": 1, "judge": False,
                                            "engine": "openai", "drop_short": False,
                                            "trainer": f"cp -r {adapter} {{out_adapter}}"})
    store = tmp_path / "store"
    pool = EnginePool(lambda name, options: CachedEngine(engine, ResponseCache(tmp_path / "c.sqlite")), "openai")
    builds.run(recipe, store, progress=False, engines=pool)
    version = st.open_version(store, "self_lengthen")
    assert sorted(set(version.read("instructions").column("iteration").to_pylist())) == [1, 2]
    trained = version.manifest["iterations"][0]["trained"]
    gen_adapter, ext_adapter = trained["generator"]["adapter"], trained["extender"]["adapter"]
    assert gen_adapter != ext_adapter, "the Generator and the Extender train adapters of their own"
    for path in (gen_adapter, ext_adapter):
        assert Path(path).name == "adapter" and (Path(path) / "adapter_config.json").is_file()
    first_lora = next(i for i, r in enumerate(engine.seen) if r.lora)
    assert all(r.lora is None for r in engine.seen[:first_lora])  # iteration 1 runs on the base model
    later = engine.seen[first_lora:]
    extend_calls = [r for r in later if r.messages[0]["content"].startswith(sl.EXTEND["en"][:40])]
    step0 = [r for r in engine.seen if r.stop == sl.NEXT_INSTRUCTION_STOPS]
    assert len(step0) >= 2  # one per iteration at least
    assert extend_calls and all(r.lora == ext_adapter for r in extend_calls)
    assert all(r.lora == gen_adapter for r in later if r not in extend_calls and r.stop != sl.NEXT_INSTRUCTION_STOPS)
    assert all(r.lora is None for r in step0), "self-instruct uses the base model in every iteration"
    roles = version.manifest["roles"]
    assert roles[0]["generator"]["lora"] is None and roles[1]["generator"]["lora"] == gen_adapter
    assert roles[1]["extender"]["lora"] == ext_adapter


def _self_lengthen_build(tmp_path, engine, name, **sets):
    recipe = recipes.load("self_lengthen", {"n": 6, "iterations": 1, "samples": 2, "judge": False,
                                            "engine": "openai", "extend_retries": 1, **sets})
    store = tmp_path / name
    pool = EnginePool(lambda n, o: CachedEngine(engine, ResponseCache(tmp_path / f"{name}.sqlite")), "openai")
    builds.run(recipe, store, progress=False, engines=pool)
    return st.open_version(store, "self_lengthen")


def test_self_lengthen_rows_do_not_depend_on_the_shard_count(tmp_path, scripted):
    """drop_short ranks all of an iteration's initial responses together, whatever the shards."""
    one = _self_lengthen_build(tmp_path, scripted(_answer), "one", shards=1)
    three = _self_lengthen_build(tmp_path, scripted(_answer), "three", shards=3)
    assert any(q["stage"] == "drop_short_initial" for q in one.read("quarantine").to_pylist())
    for split in ("instructions", "responses", "quarantine", "gen_sft"):
        assert one.read(split).to_pylist() == three.read(split).to_pylist(), split


def test_a_setup_that_cannot_train_fails_before_generating(tmp_path, scripted):
    """The built-in trainer needs base weights: an engine without local weights (an OpenAI-compatible server)
    and no lora.base is refused before any call, not after an iteration's work."""
    from lendata.training.lora import TrainingUnsupported

    engine = scripted(_answer)
    with pytest.raises(TrainingUnsupported, match="lora.base"):
        _self_lengthen_build(tmp_path, engine, "x", iterations=2)
    assert engine.seen == []


def test_a_self_lengthen_build_on_an_engine_that_cannot_continue_a_prefill_stops_before_any_call(tmp_path, scripted):
    """Self-instruct and the extender write after a prefilled turn: the build says so before generating anything,
    not after self-instruct and the whole generate step have run."""
    engine = scripted(_answer)
    engine.continues_prefill = False
    with pytest.raises(Exception, match="continue_final_message"):
        _self_lengthen_build(tmp_path, engine, "noprefill")
    assert engine.seen == []


def test_generate_and_extend_checks_the_extender_before_the_generator_runs(scripted):
    gen, ext = scripted(_answer), scripted(_answer)
    ext.continues_prefill = False
    with pytest.raises(ValueError, match="extender"):
        sl.generate_and_extend([{"id": "i1", "instruction": "Write about owls.", "language": "en", "iteration": 1}],
                               gen, ext, sl.Settings())
    assert gen.seen == [] and ext.seen == []

"""Typed recipes: every key checked against the run settings and the method's settings dataclass."""

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from lendata import recipes
from lendata.methods import registry


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(recipes.RecipeError, match="available: .*direct"):
        recipes.load("nonexistent")


def test_unknown_set_key_names_the_closest_and_the_valid_keys():
    with pytest.raises(recipes.RecipeError, match="did you mean 'n'.*valid keys: .*instruction_field"):
        recipes.load("direct", {"nn": "3"})
    with pytest.raises(recipes.RecipeError, match="unknown key 'min_paragrah'.*did you mean 'min_paragraph'"):
        recipes.load("agentwrite", recipes.parse_sets(["min_paragrah=5"]))
    with pytest.raises(recipes.RecipeError, match="did you mean 'ray.num_cpus'"):
        recipes.load("direct", recipes.parse_sets(["ray.num_cpu=2"]))
    with pytest.raises(recipes.RecipeError, match="did you mean 'queries.min_words'"):
        recipes.load("self_lengthen", recipes.parse_sets(["queries.min_word=5"]))


def test_a_typo_in_the_yaml_file_is_an_error_not_a_silent_default(tmp_path):
    text = (recipes.pipelines_dir() / "agentwrite.yaml").read_text().replace("min_paragraph: 100",
                                                                              "min_paragrah: 5")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(recipes.RecipeError, match=r"mine.yaml: unknown key 'min_paragrah'.*'min_paragraph'"):
        recipes.load(str(path))
    nested = tmp_path / "nested.yaml"
    nested.write_text("flow: direct\ndataset: d\nray: {num_cpu: 2}\n")
    with pytest.raises(recipes.RecipeError, match="'ray.num_cpu'.*'ray.num_cpus'"):
        recipes.load(str(nested))


def test_a_settings_field_the_yaml_does_not_name_can_be_set():
    assert "max_steps" not in (recipes.pipelines_dir() / "agentwrite.yaml").read_text()
    r = recipes.load("agentwrite", recipes.parse_sets(["max_steps=80"]))
    assert r.settings.max_steps == 80
    assert recipes.load("agentwrite").settings.max_steps == 50  # the code default


@pytest.mark.parametrize("name", recipes.available())
def test_every_key_of_every_recipe_can_be_set_to_its_own_value(name):
    """`--set key=<the value it has>` is accepted for every key, and changes nothing."""
    base = recipes.load(name)
    resolved = base.resolved()
    for key in recipes.keys(recipes.RunSettings) | recipes.keys(type(base.settings)):
        value = resolved
        for part in key.split("."):
            value = value[part]
        if isinstance(value, dict):
            continue  # a nested group: its keys are set one by one
        if isinstance(value, tuple | list):
            text = ",".join(str(v) for v in value) if value else "[]"
        elif value is None:
            text = "null"
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        again = recipes.load(name, {key: text})
        assert again.resolved() == resolved, key


def test_values_are_read_by_the_type_of_their_key():
    # the README's own examples: `*` would start a YAML alias; a string is not iterated as a list
    assert recipes.load("decompose", recipes.parse_sets(["glob=**/*.txt"])).settings.glob == "**/*.txt"
    # quotes a shell did not remove are YAML's: `--set "glob='*.txt'"` is *.txt
    assert recipes.load("decompose", recipes.parse_sets(["glob='*.txt'"])).settings.glob == "*.txt"
    assert recipes.load("decompose", recipes.parse_sets(['glob="a b"'])).settings.glob == "a b"
    assert recipes.load("lveval", recipes.parse_sets(["levels=16k,32k"])).settings.levels == ("16k", "32k")
    assert recipes.load("lveval", recipes.parse_sets(["levels=[1k, 2k]"])).settings.levels == ("1k", "2k")
    assert recipes.load("lveval", recipes.parse_sets(["depths=0.1, 0.9"])).settings.depths == (0.1, 0.9)
    assert recipes.load("lveval", recipes.parse_sets(["tokenizer=null"])).settings.tokenizer is None
    with pytest.raises(recipes.RecipeError, match="input cannot be null: it takes text"):
        recipes.load("direct", recipes.parse_sets(["input=null"]))
    r = recipes.load("direct", recipes.parse_sets(["n=3", "temperature=0.2", "engine_options.n_ctx=4096"]))
    assert r.settings.n == 3 and r.settings.temperature == 0.2 and r.run.engine_options == {"n_ctx": 4096}
    r = recipes.load("self_lengthen", recipes.parse_sets(["iteration_roles.2.extender.lora=/a", "judge=false"]))
    assert r.settings.iteration_roles["2"]["extender"].lora == "/a" and r.settings.judge is False


@pytest.mark.parametrize(("pair", "message"), [
    ("n=abc", r"n: .*integer.*'abc'"),
    ("n=1.5", r"n: .*integer"),
    ("temperature=hot", r"temperature: .*number.*'hot'"),
    ("shards=0", "shards is 0"),
    ("shards=true", r"shards: .*integer.*'true'"),
    ("runner=slurm", r"runner: .*'local' or 'ray'"),
    ("word_counter=chars", r"word_counter: .*'longwriter'"),
    ("max_quarantine_share=2", "max_quarantine_share is 2"),
    ("engine_options=5", "engine_options: .*dictionary"),
    ("n=0", "n is 0"),
])
def test_wrong_types_are_clear_errors(pair, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.load("direct", recipes.parse_sets([pair]))


def test_set_needs_key_and_value():
    with pytest.raises(recipes.RecipeError, match="key=value"):
        recipes.parse_sets(["n"])
    with pytest.raises(recipes.RecipeError, match="key=value"):
        recipes.parse_sets(["=3"])


def test_a_recipe_must_name_a_known_method(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("flow: writelong\ndataset: x\n")
    with pytest.raises(recipes.RecipeError, match="no method 'writelong'; the methods are: agentwrite"):
        recipes.load(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(recipes.RecipeError, match="a recipe is a mapping"):
        recipes.load(str(bad))


def test_resolved_settings_hold_every_field_with_code_defaults():
    r = recipes.load("agentwrite")
    resolved = r.resolved()
    fields = {f.name for f in dataclasses.fields(r.settings)} | {f.name for f in dataclasses.fields(r.run)}
    assert set(resolved) == fields
    assert resolved["max_steps"] == 50 and resolved["plan_max_tokens"] == 4096  # not in the YAML
    assert resolved["min_paragraph"] == 100  # the YAML's value
    yaml.safe_dump(resolved)  # plain data: JSON/YAML-able for the manifest


def test_no_method_field_shadows_a_run_setting():
    run = recipes.keys(recipes.RunSettings)
    for name, method in registry().items():
        assert not set(run) & set(recipes.keys(method.settings)), name


def test_every_key_has_one_line_of_help():
    for name in recipes.available():
        missing = [row["key"] for row in recipes.describe(name) if not row["help"]]
        assert not missing, f"{name}: keys without help: {missing}"


def test_lendata_recipes_lists_keys_with_type_default_and_help():
    from lendata.cli import app

    res = CliRunner().invoke(app, ["recipes", "agentwrite"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if " max_steps " in x)
    assert "int" in line and "50" in line and "paragraphs" in line
    listing = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "lveval" in listing.output and "self_lengthen" in listing.output
    bad = CliRunner().invoke(app, ["recipes", "nope"])
    assert bad.exit_code == 2 and "unknown recipe" in bad.output


def test_numbers_and_free_values_are_not_read_as_yaml_1_1():
    """YAML 1.1 reads 010 as 8, 1:30 as 90 and yes as true; a --set value means what it says."""
    r = recipes.load("direct", recipes.parse_sets(["n=010", "engine_options.model=0123",
                                                   "engine_options.api_key_env=yes", "engine_options.n_ctx=4096"]))
    assert r.settings.n == 10 and r.run.engine_options == {"model": "0123", "api_key_env": "yes", "n_ctx": 4096}
    with pytest.raises(recipes.RecipeError, match=r"seed: .*integer.*'1:30'"):
        recipes.load("direct", recipes.parse_sets(["seed=1:30"]))
    command = "train.sh {gen_sft} {out_adapter} # lr=1e-4, a: b"
    assert recipes.load("self_lengthen", {"trainer": command}).settings.trainer == command
    assert recipes.load("self_lengthen", recipes.parse_sets(["trainer={generator: g.sh}"])).settings.trainer == \
        {"generator": "g.sh"}


def test_dotted_keys_in_a_file_are_refused_not_dropped(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("flow: direct\ndataset: d\nray.address: auto\n")
    with pytest.raises(recipes.RecipeError, match=r"key 'ray.address': in a file, write nested keys as a mapping"):
        recipes.load(str(path))
    path.write_text("flow: self_lengthen\ndataset: d\nqueries: {min_words: 10, max.words: 3}\n")
    with pytest.raises(recipes.RecipeError, match="'queries.max.words'"):
        recipes.load(str(path))


def test_a_set_reaches_a_role_the_file_keys_by_number(tmp_path):
    from lendata.methods.self_lengthen import steps as sl

    path = tmp_path / "r.yaml"
    path.write_text("flow: self_lengthen\ndataset: d\nengine: vllm\niteration_roles: {2: {extender: {lora: A}}}\n")
    r = recipes.load(str(path), recipes.parse_sets(["iteration_roles.2.extender.lora=B"]))
    assert list(r.settings.iteration_roles) == [2]  # one entry, not a second one under "2"
    assert sl.role_config(r.settings, ("vllm", {}), "extender", 2, None)["lora"] == "B"
    assert r.resolved()["iteration_roles"] == {2: {"extender": {"engine": None, "engine_options": None,
                                                                "lora": "B"}}}


def test_role_overrides_are_typed():
    with pytest.raises(recipes.RecipeError, match="did you mean 'generator.lora'"):
        recipes.load("self_lengthen", recipes.parse_sets(["generator.lroa=x"]))
    with pytest.raises(recipes.RecipeError, match=r"iteration_roles.2.extender.lroa: Unexpected keyword"):
        recipes.load("self_lengthen", recipes.parse_sets(["iteration_roles.2.extender.lroa=x"]))
    with pytest.raises(recipes.RecipeError, match=r"'generator' or 'extender'.*'extendr'"):
        recipes.load("self_lengthen", recipes.parse_sets(["iteration_roles.2.extendr.lora=x"]))
    r = recipes.load("self_lengthen", recipes.parse_sets(["generator.engine_options.model=m", "generator.engine=vllm"]))
    assert r.settings.generator.engine == "vllm" and r.settings.generator.engine_options == {"model": "m"}


def test_null_mappings_and_bad_dataset_names(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("flow: direct\ndataset: d\nengine_options: null\n")
    assert recipes.load(str(path)).run.engine_options == {}  # as it always meant: no options
    with pytest.raises(recipes.RecipeError, match="invalid dataset '../../outside'"):
        recipes.load("direct", recipes.parse_sets(["dataset=../../outside"]))
    path.write_text("- a list\n")
    with pytest.raises(recipes.RecipeError, match="a recipe is a mapping"):
        recipes.describe(str(path))


def test_a_boolean_where_a_number_belongs_in_a_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("flow: direct\ndataset: d\nshards: true\n")
    with pytest.raises(recipes.RecipeError, match="shards is True; it must be a number"):
        recipes.load(str(path))

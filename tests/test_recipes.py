import pytest

from lendata import recipes


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(recipes.RecipeError, match="available: .*direct"):
        recipes.load("nonexistent")


def test_unknown_set_key_lists_valid_keys():
    with pytest.raises(recipes.RecipeError, match="valid keys: .*instruction_field"):
        recipes.load("direct", {"nn": 3})


def test_sets_are_parsed_as_yaml_and_applied():
    sets = recipes.parse_sets(["n=3", "temperature=0.2", "engine_options.n_ctx=4096", "input=x.jsonl"])
    r = recipes.load("direct", sets)
    assert r["n"] == 3 and r["temperature"] == 0.2 and r["engine_options"] == {"n_ctx": 4096}
    assert r["input"] == "x.jsonl" and r["_name"] == "direct"
    with pytest.raises(recipes.RecipeError, match="key=value"):
        recipes.parse_sets(["n"])

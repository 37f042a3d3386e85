"""The `ruler` method: any SFT table -> Ruler's MLT-tagged training set and a TLG evaluation set."""

import json

import pyarrow as pa
import pytest

from lendata import build as builds
from lendata import recipes
from lendata import store as st
from lendata.lengths import MLT_WINDOWS, ruler_group


def _chat(instruction: str, words: int) -> dict:
    text = " ".join(f"w{i}" for i in range(words)) + "."
    return {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": text}]}


def test_rows_get_the_tag_of_their_window_and_the_rest_are_dropped(tmp_path):
    words = [12, 20, 140, 155, 156, 300, 900, 700, 0]
    src = tmp_path / "sft.jsonl"
    lines = [json.dumps(_chat(f"Write about topic {i}. Answer in about 300 words.", n)) for i, n in enumerate(words)]
    src.write_text("\n".join([*lines, "{not json", json.dumps({"messages": [{"role": "user", "content": "x"}]})]))
    report = builds.run(recipes.load("ruler", {"input": str(src), "tlg_per_instruction": 2}), tmp_path / "s",
                        progress=False)
    v = st.open_version(tmp_path / "s", "ruler")
    train = v.read("train").to_pylist()
    assert [(r["response_words"], r["mlt"]) for r in train] == [
        (12, "[MLT:10]"), (140, "[MLT:150]"), (155, "[MLT:150]"), (300, "[MLT:300]"), (900, "[MLT:>800]"),
        (700, "[MLT:700]")]
    for r in train:  # the tag is prepended to the assistant turn; the user turn is untouched
        assert r["messages"][1]["content"].startswith(r["mlt"]) and r["messages"][0]["content"].startswith("Write")
    m = v.manifest
    assert m["ruler"]["dropped_outside_windows"] == 3  # 20, 156 and 0 words fall in no window
    assert m["ruler"]["stop_tokens"] == [f"[MLT:{k}]" for k in MLT_WINDOWS]
    quarantine = v.read("quarantine").to_pylist()
    assert [q["source"] for q in quarantine] == ["sft.jsonl:10", "sft.jsonl:11"] and report.quarantined == 2
    tlg = v.read("tlg").to_pylist()
    # every distinct instruction, its stated length removed, twice with a seeded level and Ruler's wording
    assert len(tlg) == 2 * len(words)
    for r in tlg:
        n = "more than 800" if r["target"] == ">800" else r["target"]
        assert r["instruction"].endswith(f"The response should have a word count of {n} words.")
        assert "300 words" not in r["instruction"].removesuffix(f"{n} words.")
        assert r["level"] == ruler_group(r["target"]) == ruler_group(r["target_words"])
    again = builds.run(recipes.load("ruler", {"input": str(src), "tlg_per_instruction": 2}), tmp_path / "s",
                       progress=False)
    assert again.unchanged  # seeded: the same levels again


def test_a_built_version_is_an_input(tmp_path):
    store = tmp_path / "s"
    rows = [{"id": str(i), **_chat(f"Topic {i}.", n)} for i, n in enumerate((50, 80, 81))]
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.large_string())]))
    st.commit(store, "mysft", {"train": pa.Table.from_pylist(rows, pa.schema([("id", pa.string()),
                                                                            ("messages", messages)]))})
    builds.run(recipes.load("ruler", {"input": "mysft@0.1.0", "dataset": "ruler_from_version"}), store,
               progress=False)
    train = st.open_version(store, "ruler_from_version").read("train").to_pylist()
    assert [r["mlt"] for r in train] == ["[MLT:50]", "[MLT:80]", "[MLT:80]"]
    assert train[0]["source"] == "mysft@0.1.0:train:1"
    with pytest.raises(ValueError, match="no dataset 'nosuch'"):
        builds.run(recipes.load("ruler", {"input": "nosuch@0.1.0"}), store, progress=False)


def test_the_tlg_set_can_be_scored_with_rulers_metric(tmp_path):
    from lendata.scoring import score_file

    src = tmp_path / "sft.jsonl"
    src.write_text(json.dumps(_chat("Write about rivers.", 12)) + "\n")
    builds.run(recipes.load("ruler", {"input": str(src), "tlg_per_instruction": 3}), tmp_path / "s", progress=False)
    tlg = st.open_version(tmp_path / "s", "ruler").read("tlg").to_pylist()
    answers = tmp_path / "answers.jsonl"  # a model that hits every target exactly
    answers.write_text("".join(json.dumps({**r, "response": "w " * r["target_words"] + "w"}) + "\n" for r in tlg))
    _, summary = score_file(answers, "ruler", target_field="target_words")
    assert summary["rows"] == 3 and summary["levels"]["All"]["pm"] == 100.0

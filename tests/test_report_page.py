"""The `lendata report` page a person reads (issue 17, item 7): its sections, parsed from the HTML."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from lendata import build as builds
from lendata import recipes
from lendata.cli import app
from lendata.engines import CachedEngine, ResponseCache
from lendata.engines.base import Result
from lendata.engines.pool import EnginePool
from lendata.judging import judges


class Page(HTMLParser):
    """h2 titles, and every table under the h2 it follows, as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.h2, self.tables, self.text = [], {}, []
        self._tag, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "table":
            self.tables.setdefault(self.h2[-1] if self.h2 else "", []).append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self.h2[-1] if self.h2 else ""][-1].append(self._row)
            self._row = None
        self._tag = None

    def handle_data(self, data):
        if self._tag == "h2":
            self.h2.append(data)
        if self._cell is not None:
            self._cell += data
        self.text.append(data)


def _engine(req):
    prompt = req.messages[0]["content"]
    if req.json_schema == judges.QUALITY_SCHEMA:
        return Result(text=json.dumps({"Analysis": "a", **dict.fromkeys(judges.DIMENSIONS, 4)}))
    if "LOOP" in prompt:  # a text that loops, ending cleanly
        return Result(text=" ".join(["the river runs to the sea and the sea runs back again"] * 6) + ".",
                      completion_tokens=70)
    if "CUT" in prompt:  # a text cut at its token limit
        return Result(text="Rivers carve valleys over long ages and", completion_tokens=req.max_tokens,
                      finish_reason="length")
    return Result(text="Rivers shape the land. They carry water and life from hills down to the wide sea.",
                  completion_tokens=20)


def test_the_report_page_has_the_sections_a_person_needs(tmp_path, scripted):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Write 20 words about rivers {tag}.", "length": 20}) + "\n"
                           for tag in ("FINE", "LOOP", "CUT")))
    # continue_attempts 0: the CUT row stays cut, as the page must show
    recipe = recipes.load("direct", {"input": str(src), "instruction_field": "prompt", "target_field": "length",
                                     "judge": "same", "continue_attempts": 0})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(_engine), ResponseCache(tmp_path / "c")), "llamacpp")
    store = tmp_path / "store"
    builds.run(recipe, store, progress=False, engines=pool)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", "direct", "--store", str(store), "--to", str(out)])
    assert res.exit_code == 0, res.output
    assert "flagged: 2 kept row(s)" in res.output
    page = Page()
    page.feed((out / "index.html").read_text())
    assert page.h2 == ["Splits", "Flagged rows", "Judge scores (S_q)", "Lengths (words)",
                       "Quarantine and rejections", "Plots"]
    [splits] = page.tables["Splits"]
    fit = splits[1][5]
    assert fit.startswith("median response_words/target_words") and "{" not in fit and "within ±10%" in fit
    text = " ".join(page.text)
    for name in ("truncated", "repetition", "target vs produced"):
        assert f"{name}" in text
    assert "stopped at its token limit" in text and "looped" in text
    [flagged] = page.tables["Flagged rows"]
    whys = [r[1] for r in flagged[1:]]
    assert any("token limit" in w for w in whys) and any("repeats the 10-gram" in w for w in whys)
    [lengths] = page.tables["Lengths (words)"]
    columns = {r[1] for r in lengths[1:]}
    assert "messages[assistant]" in columns and "instruction" in columns
    assert not columns & {"id", "language", "engine", "model", "source", "record", "finish_reason", "judge_model"}
    # a model's name of four words is still a label (the demo page listed `model` among the texts)
    from lendata.report import LABELS

    assert {"model", "engine", "plan_source", "language"} <= LABELS
    [judge] = page.tables["Judge scores (S_q)"]
    assert judge[1][:4] == ["train", "3", "0", "75.0"] and judge[1][4] == "75.0"


def test_null_targets_chinese_text_and_no_judge_are_reported_honestly(tmp_path, scripted):
    """Review findings: LV-Eval results (no target) gave a NaN sentence and invalid JSON; Chinese text without
    spaces was taken for a label, so nothing was checked, and the page still said nothing repeats."""
    from tests.test_eval import _engine as eval_engine
    from tests.test_eval import _lveval_store

    store = _lveval_store(tmp_path)
    recipe = recipes.load("eval", {"suite": "lveval", "input": "lv", "n": None, "target_field": None})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(eval_engine), ResponseCache(tmp_path / "c")), "llamacpp")
    builds.run(recipe, store, progress=False, engines=pool)
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["report", "eval", "--store", str(store), "--to", str(out)])
    assert res.exit_code == 0, res.output
    json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in report.json"))
    page = Page()
    page.feed((out / "index.html").read_text())
    assert "Judge scores (S_q)" not in page.h2 and "nan" not in " ".join(page.text).lower()
    [splits] = page.tables["Splits"]
    assert splits[1][2] == "response" and splits[1][5] == "—"

    src = tmp_path / "zh.jsonl"
    src.write_text(json.dumps({"prompt": "写一篇关于河流的短文。LOOP", "length": 50}) + "\n")

    def zh(req):
        return Result(text="河流从山上流到大海，" * 30 + "。", completion_tokens=300)

    recipe = recipes.load("direct", {"input": str(src), "instruction_field": "prompt", "target_field": "length",
                                     "dataset": "zh"})
    pool = EnginePool(lambda n, o: CachedEngine(scripted(zh), ResponseCache(tmp_path / "z")), "llamacpp")
    builds.run(recipe, store, progress=False, engines=pool)
    res = CliRunner().invoke(app, ["report", "zh", "--store", str(store), "--to", str(tmp_path / "rz")])
    assert res.exit_code == 0, res.output
    page = Page()
    page.feed((tmp_path / "rz" / "index.html").read_text())
    [flagged] = page.tables["Flagged rows"]
    assert "repeats the 13-gram" in flagged[1][1]
    assert "messages[assistant]" in {r[1] for r in page.tables["Lengths (words)"][0][1:]}

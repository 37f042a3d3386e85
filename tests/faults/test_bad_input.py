"""Bad input, fuzzed: every line is a row or a quarantine record naming its file and line; file-level problems
are one clear error; the CLI never shows a traceback as its only message and never leaves a broken store."""

import json
import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hs
from typer.testing import CliRunner

from lendata import store as st
from lendata.cli import app
from lendata.inputs import InputError, positive_whole, read_instructions
from tests.faults.fault_server import FaultServer
from tests.faults.harness import DATASET, visible_versions_are_whole

GOOD = hs.builds(lambda t, n: json.dumps({"prompt": t, "length": n}).encode(),
                 hs.text(string.ascii_letters + " ", min_size=1, max_size=40).filter(str.strip),
                 hs.integers(1, 5000))
BAD = hs.one_of(
    hs.binary(min_size=1, max_size=60).filter(lambda b: b.strip() and b"\n" not in b and b"\r" not in b),
    hs.builds(lambda v: json.dumps(v).encode(), hs.one_of(hs.integers(), hs.lists(hs.integers(), max_size=3),
                                                          hs.text(max_size=10), hs.none())),
    hs.builds(lambda v: json.dumps({"prompt": v, "length": 10}).encode(),
              hs.one_of(hs.integers(), hs.none(), hs.just(""), hs.lists(hs.text(max_size=3), max_size=2))),
    hs.builds(lambda v: json.dumps({"prompt": "write", "length": v}).encode(),
              hs.one_of(hs.just(0), hs.just(-3), hs.just("many"), hs.floats(allow_nan=True), hs.just([1]))),
    hs.just(b'{"length": 10}'),
    hs.just(b"\xff\xfe not utf-8 \xc3\x28"),
    # valid JSON that is not valid Unicode: lone UTF-16 surrogates, in a value, a nested value or a key
    hs.builds(lambda cp, where: {
        "prompt": b'{"prompt": "lone \\u%04x", "length": 10}' % cp,
        "other": b'{"prompt": "fine", "length": 10, "meta": ["\\u%04x"]}' % cp,
        "key": b'{"prompt": "fine", "length": 10, "\\u%04x": 1}' % cp}[where],
        hs.integers(0xD800, 0xDFFF), hs.sampled_from(["prompt", "other", "key"])),
)
BOM = b"\xef\xbb\xbf"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(lines=[b'{"prompt":"w","length":Infinity}', b'{"prompt":"w","length":NaN}', b'{"prompt":"w","length":2.5}',
                b'{"prompt":"w","length":true}', b'{"prompt":"w","length":"12"}', b'{"prompt":"w","length":7.0}'],
         bom=False)
@example(lines=[b'{"prompt": "lone \\ud800 surrogate", "length": 10}', b'{"prompt": "ok", "length": 5}'], bom=True)
@given(lines=hs.lists(hs.one_of(GOOD, BAD), min_size=1, max_size=25).filter(
    lambda ls: any(b'"prompt"' in x for x in ls)), bom=hs.booleans())
def test_every_line_is_a_row_or_a_quarantined_line_with_its_number(tmp_path, lines, bom):
    path = tmp_path / "in.jsonl"
    path.write_bytes((BOM if bom else b"") + b"\n".join(lines) + b"\n")
    try:
        loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    except InputError as e:  # a file-level problem: one message naming the file
        assert str(path) in str(e)
        return
    got = sorted([int(r["source"].rsplit(":", 1)[1]) for r in loaded.rows]
                 + [int(b.source.rsplit(":", 1)[1]) for b in loaded.bad])
    assert got == [i for i, line in enumerate(lines, 1) if line.strip()]
    assert all(b.reason and b.source.startswith(f"{path}:") for b in loaded.bad)
    assert all(isinstance(r["instruction"], str) and type(r["target"]) is int and r["target"] > 0
               for r in loaded.rows)
    # whatever was kept can go into the cache key, Arrow and SQLite: every string is valid Unicode
    json.dumps(loaded.rows, ensure_ascii=False).encode("utf-8")
    pa.Table.from_pylist([{"instruction": r["instruction"], "source": r["source"]} for r in loaded.rows])
    pa.Table.from_pylist([b.as_quarantine() for b in loaded.bad], schema=pa.schema(
        [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("source", pa.string()),
         ("record", pa.string())]))
    if bom and GOOD_LINE(lines[0]):  # a BOM does not cost the first line
        assert loaded.rows and loaded.rows[0]["source"].endswith(":1")


def GOOD_LINE(line):  # noqa: N802 - a predicate over the GOOD strategy's lines
    try:
        rec = json.loads(line)
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        return False
    return (isinstance(rec, dict) and set(rec) == {"prompt", "length"} and isinstance(rec["prompt"], str)
            and rec["prompt"].strip() and positive_whole(rec["length"]) is not None)


@pytest.mark.parametrize(("value", "expected"), [
    (12, 12), (12.0, 12), ("12", 12), (" 7 ", 7), (0, None), (-3, None), (2.5, None), (float("inf"), None),
    (float("nan"), None), (True, None), ("many", None), ("-4", None), ("²", None), ([1], None),
    (1_000_000, 1_000_000), (1_000_001, None), (3_000_000_000, None), (1e300, None), ("9" * 5000, None)])
def test_a_length_is_a_positive_whole_number(value, expected):
    assert positive_whole(value) == expected


def test_huge_lines_are_read_or_quarantined_not_fatal(tmp_path):
    path = tmp_path / "huge.jsonl"
    big = "word " * 2_000_000  # 10 MB
    path.write_text(json.dumps({"prompt": "short", "length": 5}) + "\n" + json.dumps({"prompt": big, "length": 5})
                    + "\n" + '{"prompt": "' + big + "\n")  # the last one never closes its string
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    assert [r["source"] for r in loaded.rows] == ["huge.jsonl:1", "huge.jsonl:2"]
    assert [(b.source, b.reason.split(":")[0]) for b in loaded.bad] == [(f"{path}:3", "invalid JSON")]
    assert len(loaded.bad[0].raw) <= 500  # the quarantine keeps a preview, not 10 MB


def test_lines_python_cannot_parse_are_quarantined(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "ok", "length": 5}\n'
                     + b'{"prompt": "big", "length": ' + b"9" * 5000 + b"}\n"  # over int()'s 4,300 digits
                     + b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"  # deeper than the recursion limit
                     + b'{"prompt": "huge", "length": 3000000000}\n'
                     + b'{"prompt": "last", "length": 7}\n')
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    assert [r["instruction"] for r in loaded.rows] == ["ok", "last"]
    assert [b.source.rsplit(":", 1)[1] for b in loaded.bad] == ["2", "3", "4"]


def test_a_parquet_string_that_is_not_utf8_is_one_quarantined_row(tmp_path):
    good = pa.array(["Write about rain.", "bad", "Write about snow."])
    offsets, data = good.buffers()[1], bytearray(good.buffers()[2].to_pybytes())
    i = data.index(b"bad")
    data[i:i + 3] = b"b\xff\xfe"  # same length, invalid UTF-8
    broken = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(bytes(data))])
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": broken, "length": [10, 10, 10]}), path)
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    assert [r["instruction"] for r in loaded.rows] == ["Write about rain.", "Write about snow."]
    assert loaded.bad[0].source == f"{path}:2" and "UTF-8" in loaded.bad[0].reason


@pytest.mark.parametrize("column", [
    pa.array([0, 10**13, 0], pa.timestamp("s")), pa.array([0, 2**31 - 1, 0], pa.date32()),
    pa.array([0, 2**62, 0], pa.duration("s"))])
def test_a_parquet_value_python_cannot_hold_is_one_quarantined_row(tmp_path, column):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "length": [10, 10, 10], "extra": column}), path)
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    assert [r["instruction"] for r in loaded.rows] == ["a", "c"]
    assert loaded.bad[0].source == f"{path}:2" and "cannot be read" in loaded.bad[0].reason


def test_a_bom_and_lone_surrogates(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + b'{"prompt": "Write about rain.", "length": 10}\n'
                     + b'{"prompt": "lone \\ud800 surrogate", "length": 10}\n'
                     + b'{"prompt": "Write about snow.", "length": 10, "tags": ["\\udfff"]}\n'
                     + b'{"prompt": "Write about hail.", "length": 10}\n')
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    assert [r["source"] for r in loaded.rows] == ["in.jsonl:1", "in.jsonl:4"]
    assert [(b.source, b.reason.split(":")[0]) for b in loaded.bad] == [(f"{path}:2", "not valid Unicode"),
                                                                        (f"{path}:3", "not valid Unicode")]
    assert "field 'prompt'" in loaded.bad[0].reason and "tags" in loaded.bad[1].reason


def test_the_line_limit_holds_without_reading_the_line(tmp_path, monkeypatch):
    import tracemalloc

    from lendata import inputs

    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(b'{"prompt": "first", "length": 5}\n{"prompt": "')
        for _ in range(64):  # a 64 MB line, 64 times the limit
            f.write(b"x" * (1 << 20))
        f.write(b'", "length": 5}\n{"prompt": "last", "length": 5}\n')
    tracemalloc.start()
    loaded = read_instructions(path, instruction_field="prompt", target_field="length")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r["instruction"] for r in loaded.rows] == ["first", "last"]
    assert loaded.bad[0].source == f"{path}:2" and "over the 1048576-byte limit" in loaded.bad[0].reason
    assert peak < 8 << 20, peak  # a few times the limit, not the 64 MB line


@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        yield s


def build(tmp_path, server, input_path, *sets):
    options = f"{{base_url: '{server.url}', concurrency: 2}}"
    return CliRunner().invoke(app, ["build", "direct", "--store", str(tmp_path / "store"), "--no-progress",
                                    "--set", f"input={input_path}", "--set", "engine=openai", "--set",
                                    f"engine_options={options}", "--set", f"dataset={DATASET}", *sets])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.jsonl", b"", "has no records"),
    ("blank.jsonl", b"\n  \n", "has no records"),
    ("columns.parquet", None, "no record has the field 'prompt'"),
    ("words.txt", b"hello", "unsupported input format"),
    ("allbad.jsonl", b"{broken\n[1, 2]\n", "2 of 2 rows quarantined (100% > max_quarantine_share 50%)"),
])
def test_bad_files_fail_with_one_clear_message_and_no_store_damage(tmp_path, server, name, content, message):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), path)
    else:
        path.write_bytes(content)
    res = build(tmp_path, server, path)
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert visible_versions_are_whole(tmp_path / "store") == []


def test_a_mixed_file_builds_and_quarantines_each_bad_line(tmp_path, server):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(BOM + b'{"prompt": "Write about rivers.", "length": 30}\n\xff\xfe\n{"prompt": 3, "length": 30}\n'
                     b'{"prompt": "Write about towers.", "length": 30}\n{"prompt": "x", "length": "lots"}\n'
                     b'{"prompt": "lone \\ud800 surrogate", "length": 10}\n'
                     b'{"prompt": "Write about lakes.", "length": 30, "\\udc00": 1}\n')
    res = build(tmp_path, server, path, "--set", "max_quarantine_share=0.8")
    assert res.exit_code == 0, res.output
    assert f"{path}:6: not valid Unicode" in res.output and "Traceback" not in res.output
    v = st.open_version(tmp_path / "store", DATASET)
    assert v.rows("train") == 2
    assert sorted(q["source"] for q in v.read("quarantine").to_pylist()) == [
        f"{path.name}:{i}" for i in (2, 3, 5, 6, 7)]
    assert visible_versions_are_whole(tmp_path / "store") == [v.version]

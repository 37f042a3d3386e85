import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lendata.inputs import InputError, read_instructions


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_lines_are_quarantined_with_file_and_line(tmp_path, capsys):
    f = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"prompt": "Write 100 words about rain", "length": 100}).encode(),
        b'{"prompt": "broken json", ',
        json.dumps({"prompt": "   ", "length": 50}).encode(),
        b"",
        '{"prompt": "caf\xe9"}'.encode("latin-1"),
        json.dumps({"prompt": "Write about snow", "length": "many"}).encode(),
        json.dumps(["not", "an", "object"]).encode(),
        json.dumps({"text": "wrong field", "length": 10}).encode(),
        json.dumps({"prompt": "Write about hail", "length": 200}).encode(),
    ])
    got = read_instructions(f, "prompt", "length")
    assert [r["instruction"] for r in got.rows] == ["Write 100 words about rain", "Write about hail"]
    assert [r["target"] for r in got.rows] == [100, 200]
    assert got.rows[1]["source"] == f"{f.name}:9"  # the data keep the name, not the local path
    bad = {b.source.rsplit(":", 1)[1]: b.reason for b in got.bad}
    assert set(bad) == {"2", "3", "5", "6", "7", "8"}
    assert "invalid JSON" in bad["2"] and "empty" in bad["3"] and "UTF-8" in bad["5"]
    assert "not a whole number from 1 to 1,000,000" in bad["6"]
    assert "JSON object" in bad["7"] and "missing field" in bad["8"]
    assert f"{f}:2: invalid JSON" in capsys.readouterr().err


def test_a_field_missing_everywhere_is_a_configuration_error(tmp_path):
    f = write_lines(tmp_path / "in.jsonl", [json.dumps({"text": "a", "n": 1}).encode()])
    with pytest.raises(InputError, match="fields found: n, text"):
        read_instructions(f, "prompt")
    with pytest.raises(InputError, match="target field 'length'"):
        read_instructions(f, "text", "length")


def test_n_takes_the_first_instructions_and_parquet_works(tmp_path):
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"q": ["a", "", "c", "d"], "w": [1, 2, 3, 4]}), p)
    got = read_instructions(p, "q", "w", n=2)
    assert [r["instruction"] for r in got.rows] == ["a", "c"] and got.bad[0].source == f"{p}:2"


def test_missing_or_unsupported_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_instructions(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unsupported"):
        read_instructions(tmp_path / "x.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_instructions(tmp_path / "bad.parquet")

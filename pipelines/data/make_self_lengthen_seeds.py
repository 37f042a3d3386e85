"""Regenerate `self_lengthen_seeds.jsonl`: LonGen queries (../shared/data/longen.jsonl, Apache-2.0) with their
length constraints removed, keeping only those whose stripped text still reads as a whole instruction.

    .venv/bin/python pipelines/data/make_self_lengthen_seeds.py ../shared/data/longen.jsonl
"""

import json
import re
import sys
from pathlib import Path

from lendata.methods.shared.constraints import extract, strip_constraint

PER_LANGUAGE = 24
# leftovers of a cut that no longer read as an instruction
DANGLING = re.compile(r"(\b(?:is|be|to|of|for|total|span|stays|fitting|around|about|within)\.$)|字数|一篇的|应。$|需。$")


def main(src: str) -> None:
    out: dict[str, list[dict[str, str]]] = {"en": [], "zh": []}
    for lineno, line in enumerate(Path(src).read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        text = strip_constraint(row["query"])
        if (extract(text) is not None or not 40 <= len(text) <= 400 or DANGLING.search(text) or "\n" in text
                or text.count('"') % 2 or len(out[row["language"]]) >= PER_LANGUAGE):
            continue
        out[row["language"]].append({"instruction": text, "language": row["language"],
                                     "source": f"longen.jsonl:{lineno} (length constraint removed)"})
    dest = Path(__file__).with_name("self_lengthen_seeds.jsonl")
    with dest.open("w", encoding="utf-8") as f:
        for rows in out.values():
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{dest}: {sum(map(len, out.values()))} seeds ({', '.join(f'{k} {len(v)}' for k, v in out.items())})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/longen.jsonl")

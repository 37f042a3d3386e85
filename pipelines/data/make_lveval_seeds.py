"""Writes lveval_seeds.jsonl: the QA seed set of the `lveval` recipe.

Each item is a question written for lendata over one topic of the Python Language Reference as CPython ships
it in `pydoc_data.topics` (Python 3.11; PSF License 2.0). The supporting document is the topic's text,
reflowed (one line per paragraph, layout underlines dropped); every answer is a verbatim span of it, so it
stays findable once the document is buried in distractors. `replacements` is the item's keyword-and-phrase
replacement table (LV-Eval KPR): each fabricated term shares no character with the term it replaces.

Run with the Python whose reference you want: `python pipelines/data/make_lveval_seeds.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lendata.methods.lveval.pool import reflow  # noqa: E402

ITEMS = [
    ("nonlocal", "Which bindings do the identifiers listed in a nonlocal statement refer to?",
     ["previously bound variables in the nearest enclosing scope excluding globals"],
     "nearest enclosing scope", {"nonlocal": "furthby"}),
    ("global", "According to the programmer's note, what is the global statement a directive to?",
     ["the parser"], "parser", {"parser": "klumbit"}),
    ("assert", "What does the current code generator emit for an assert statement when optimization is "
     "requested at compile time?", ["no code"], "no code", {"optimization": "hyquk"}),
    ("del", "Which exception is raised when a name that is unbound is deleted?", ["NameError"], "NameError",
     {"NameError": "BuzzDlik"}),
    ("lambda", "What can functions created with lambda expressions not contain?", ["statements or annotations"],
     "statements, annotations", {"lambda": "quirt"}),
    ("while", "What does a continue statement executed in the first suite of a while loop do?",
     ["skips the rest of the suite and goes back to testing the expression"], "goes back, testing the expression",
     {"suite": "flank"}),
    ("pass", "What happens when a pass statement is executed?", ["nothing happens"], "nothing", {}),
    ("yield", "What does using yield in a function definition cause that definition to create?",
     ["a generator function"], "generator function", {"generator": "muskwib"}),
    ("break", "When a for loop is terminated by break, what value does the loop control target keep?",
     ["its current value"], "current value", {"break": "snoop"}),
    ("return", "In an asynchronous generator function, what is a non-empty return statement?", ["a syntax error"],
     "syntax error", {"asynchronous": "melt"}),
    ("power", "Raising 0.0 to a negative power results in which exception?", ["ZeroDivisionError"],
     "ZeroDivisionError", {"ZeroDivisionError": "Quagmath"}),
    ("shifting", "How is a right shift by n bits defined?", ["floor division by \"pow(2,n)\"", "floor division"],
     "floor division", {}),
    ("bltin-null-object", "What is the name of the null object that functions return when they don't explicitly "
     "return a value?", ["None"], "None", {"None": "Guck"}),
    ("bltin-ellipsis-object", "What is the Ellipsis object commonly used by?", ["slicing"], "slicing",
     {"slicing": "bumpwork"}),
    ("imaginary", "How are complex numbers represented?", ["as a pair of floating point numbers"],
     "pair, floating point numbers", {"complex": "tidbur"}),
    ("integers", "Why are leading zeros in a non-zero decimal number not allowed?",
     ["for disambiguation with C-style octal literals"], "disambiguation, octal literals", {"octal": "bumpy"}),
    ("truth", "What do the Boolean operations or and and always return?", ["one of their operands"], "operands",
     {"operands": "jilk"}),
    ("floating", "In which radix are the integer and exponent parts of a floating point literal always "
     "interpreted?", ["radix 10"], "10", {}),
    ("raise", "Which exception is raised by a bare raise statement when there is no active exception?",
     ["RuntimeError"], "RuntimeError", {"RuntimeError": "Swabby"}),
    ("dict", "When the same key is given several times in a dictionary display, which value does the final "
     "dictionary keep for that key?", ["the last one given"], "last one", {"dictionary": "wump"}),
]


def main() -> None:
    import platform

    import pydoc_data.topics

    out = Path(__file__).with_name("lveval_seeds.jsonl")
    source = f"Python {platform.python_version()} Language Reference (pydoc_data.topics), PSF License 2.0"
    with out.open("w", encoding="utf-8") as f:
        for topic, question, answers, keywords, replacements in ITEMS:
            doc = reflow(pydoc_data.topics.topics[topic])
            missing = [a for a in answers if a not in doc]
            if missing:
                raise SystemExit(f"{topic}: answer {missing[0]!r} is not in the reflowed topic")
            rec = {"id": f"pyref-{topic}", "question": question, "answers": answers, "answer_keywords": keywords,
                   "documents": [doc], "language": "en", "replacements": replacements,
                   "source": f"{source}, topic {topic!r}"}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(ITEMS)} items to {out}")


if __name__ == "__main__":
    main()

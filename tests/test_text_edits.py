"""Everything that edits generated text, held to two properties: it never removes part of a word, and it never
changes a text it has no business with (issue 13, item 13). Hypothesis draws the texts."""

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as hs

from lendata.methods.lveval.items import strip_list_marker
from lendata.methods.self_lengthen.steps import clean_instruction
from lendata.methods.shared import checks

# words a real paragraph starts with that begin with a label word: the audit's cases and their relatives
TRAPS = ["Particularly", "Stepping", "Sections", "Part", "Parts", "Partial", "Steps", "Stepwise", "Paragraphs",
         "Sectional", "Party", "Partners", "Step-by-step", "Part-time", "Paragraphing", "Stepped", "Sectioning",
         "Part of", "Step by step", "Section of", "Paragraph of", "Steps 3", "Part I think", "Step up",
         "第一段时间", "第三段路", "段落之间", "段落清晰",
         # numbers and hyphens after a label word are text unless a separator and white space follow
         "Section 2.3 explains", "Paragraph 4.2 of", "Step 10.000 steps", "Part 3:30 pm", "Part I-beams",
         "Part X-ray,", "Section C-sections", "Step 1 **bold** text", "第一步、第二步", "Part IV-A", "Step 2.5x"]
WORD = hs.text(string.ascii_letters, min_size=1, max_size=10)
BODY = hs.lists(hs.one_of(WORD, hs.sampled_from(TRAPS)), min_size=1, max_size=12).map(" ".join)
LABELS = ["Paragraph 2:", "Paragraph 2.", "## Step 1 -", "**Step 3** -", "**Step 3** —", "Part IV.", "第3段：",
          "第三段：", "段落2：", "## Paragraph 1:", "**Paragraph 1:**", "Section 2 -", "Step 10:", "PARAGRAPH 4:",
          "**Part II**", "### Section 3.2:"]
# a label alone on its line
HEADINGS = ["## Paragraph 1", "Paragraph 3", "**Step 2**", "**Paragraph 3**", "Part IV", "第2段"]


def cut_is_at_a_word_boundary(before: str, after: str) -> bool:
    """`after` is a suffix of `before`, and what was cut off ends in white space (or a zh label's colon): a cut
    never falls inside a word or a number such as "2.3" or "3:30"."""
    if not before.endswith(after):
        return False
    removed = before[: len(before) - len(after)]
    return removed == "" or removed[-1].isspace() or removed[-1] in "：:"


@pytest.mark.parametrize("text", ["Particularly in Europe, rivers flood.", "Stepping back, we see more.",
                                  "Sections of the report were lost.", "Part of the problem is time.",
                                  "Paragraphs are short here.", "Step by step, the work got done.",
                                  "第一段时间里，河水很清。", "The paragraph is fine."])
def test_words_that_start_like_a_label_are_kept_whole(text):
    assert checks.strip_step_label(text) == text


@pytest.mark.parametrize("label", LABELS)
def test_real_labels_are_stripped(label):
    assert checks.strip_step_label(f"{label} The river flows.") == "The river flows."
    assert checks.strip_step_label(f"{label}\nThe river flows.") == "The river flows."


@pytest.mark.parametrize("label", HEADINGS)
def test_a_label_alone_on_its_line_is_stripped(label):
    assert checks.strip_step_label(f"{label}\nThe river flows.") == "The river flows."
    if "**" not in label:  # bold closes a label ("**Step 2** the river..."); a bare one needs its own line
        assert checks.strip_step_label(f"{label} the river flows.") == f"{label} the river flows."


@given(text=BODY)
@example(text="Particularly in Europe")
@example(text="Part of the problem")
@example(text="Section 2.3 explains the method.")
@example(text="Part 3:30 pm meetings are long.")
@example(text="第一步、第二步和第三步缺一不可。")
def test_stripping_never_changes_a_text_without_a_label(text):
    assert checks.strip_step_label(text) == text


@given(text=hs.text(min_size=1, max_size=40))
def test_whatever_stripping_removes_ends_in_white_space(text):
    out = checks.strip_step_label(text)
    reopened = out.startswith(("**", "__")) and not text.endswith(out)  # a bold title kept bold
    assert out == text or cut_is_at_a_word_boundary(text, out[2:] if reopened else out)


@pytest.mark.parametrize("text, out", [
    ("**Step 1: Gather materials**\n\nFirst, collect.", "**Gather materials**\n\nFirst, collect."),
    ("## **Paragraph 2: The Flood**\nRivers rose.", "**The Flood**\nRivers rose."),
    ("**Paragraph 1:** The river flows.", "The river flows."),
    ("**第一部分：引言**\n正文", "**引言**\n正文"),
    ("第3段:30分钟后出发。", "第3段:30分钟后出发。"),
    ("Section CLI: commands", "Section CLI: commands"),
])
def test_a_bold_label_keeps_its_title_whole(text, out):
    assert checks.strip_step_label(text) == out


@given(label=hs.sampled_from(LABELS), body=BODY, gap=hs.sampled_from([" ", "\n", "  ", "\n\n"]))
def test_stripping_removes_the_label_and_nothing_of_the_text(label, body, gap):
    text = label + gap + body
    out = checks.strip_step_label(text)
    assert out == body
    assert cut_is_at_a_word_boundary(text, out)


SENTENCES = hs.lists(hs.sampled_from([
    "The cost was 3.5 million in 2020.", "Prices rose by 2.75 percent.", "See e.g. the report.",
    "It works!", "Does it?", "Version 1.2.3 shipped.", "The river flows.", '"Stop," she said.']), min_size=1,
    max_size=6)
TAILS = hs.sampled_from(["", " and then the value of 3.5", " which cost 4.25", " see section 2.1", " the U.S",
                         " and so", " v1.2"])


@given(sentences=SENTENCES, tail=TAILS)
@example(sentences=["The river flows."], tail=" The cost was 3.5 million and the")
def test_trimming_to_a_sentence_cuts_only_between_sentences(sentences, tail):
    text = " ".join(sentences) + tail
    out = checks.trim_to_sentence(text, "en", keep_at_least=0.0)
    assert text.startswith(out)
    rest = text[len(out):]
    # the cut is after a whole sentence: what is dropped starts with a space (or nothing is dropped)
    assert rest == "" or rest[0].isspace(), (out, rest)
    assert checks.trim_to_sentence(" ".join(sentences), "en") == " ".join(sentences)


@given(sentences=hs.lists(hs.sampled_from(["河水很清。", "价格是3.5元。", "为什么？", "好！"]), min_size=1, max_size=5),
       tail=hs.sampled_from(["", "河水", "价格是3.5"]))
def test_zh_trimming_cuts_after_a_sentence(sentences, tail):
    text = "".join(sentences) + tail
    out = checks.trim_to_sentence(text, "zh", keep_at_least=0.0)
    assert text.startswith(out) and out[-1] in "。？！" and text[len(out):] == tail


@pytest.mark.parametrize("text, out", [
    ("The orchard grew fruit. It sold them at the market, e.g. apples and", "The orchard grew fruit."),
    ("Bake it well. Steps follow:\n1. Mix the flour and the eggs\n2. Add the milk slowly while", "Bake it well."),
    ("He left. A. B. Smith wrote that the", "He left."),
    ("天黑了。他说：“我们走吧。”然后他们", "天黑了。他说：“我们走吧。”"),
])
def test_trimming_skips_abbreviations_initials_and_list_numbers(text, out):
    lang = "zh" if "天" in text else "en"
    assert checks.trim_to_sentence(text, lang, keep_at_least=0.0) == out


def test_trimming_keeps_decimals_whole():
    assert checks.trim_to_sentence("The river flows. The cost was 3.5 million and the", "en", 0.0) == \
        "The river flows."


@given(body=BODY)
def test_list_markers_are_stripped_only_as_whole_tokens(body):
    assert strip_list_marker(body) == body
    for marker in ("1. ", "2) ", "- ", "* ", "• "):
        assert strip_list_marker(marker + body) == body
    for kept in ("1990s were loud", "3.5 million people", "-5 degrees", "*emphasis* here", "1990. That year"):
        assert strip_list_marker(kept) == kept


@given(body=BODY)
@example(body='Write about "rivers"')
@example(body="“河流”的故事")
def test_a_self_instructed_instruction_keeps_its_own_quotes(body):
    assert clean_instruction(body) == body
    assert clean_instruction(f"Instruction 3: {body}") == body
    assert clean_instruction(f"“{body}”") == body
    if '"' not in body:
        assert clean_instruction(f'"{body}"') == body
    out = clean_instruction(f"Instruction 3: {body}")
    assert cut_is_at_a_word_boundary(f"Instruction 3: {body}", out)


def test_inner_quotes_survive_instruction_cleaning():
    assert clean_instruction('Write about "rivers"') == 'Write about "rivers"'
    assert clean_instruction('"Write about rivers"') == "Write about rivers"
    assert clean_instruction("Instructional design essay") == "Instructional design essay"
    assert clean_instruction("Instruction 3:\nWrite a story about rivers.") == "Write a story about rivers."
    assert clean_instruction('"Rivers" and "lakes" compared') == '"Rivers" and "lakes" compared'
    assert clean_instruction('"Rivers" and "lakes"') == '"Rivers" and "lakes"'
    assert clean_instruction("“A “nested” title”") == "A “nested” title"

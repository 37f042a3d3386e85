"""No-repeat-n-gram decoding: a token that would complete an n-gram already present in the prompt or the output
is never sampled (Hugging Face's `no_repeat_ngram_size`, over prompt and output as there).

Small models fall into loops in long text; detecting a loop afterwards costs a resample of the whole paragraph,
often several. Banning the loop while decoding costs one dictionary lookup per token. The prompt counts because
AgentWrite's prompt holds the text written so far: a paragraph that copies an earlier one is a loop too. A
request may narrow the ban to its own answer (`Request.no_repeat_scope = "output"`: a prefilled assistant text
and what is generated), for a task that must copy its prompt, as Self-Lengthen's extender.

Deviation from Hugging Face, deliberate: the n-grams are over *word keys*, not raw token ids, when the engine
gives a key table (`word_keys`): a token's key is its letters and digits, lower-cased; tokens with none
(spaces, punctuation, newlines) are skipped. Over raw ids the bundled model evaded the ban by changing one
comma or a capital ("a testament built by" -> "a testament, built by"): the copy passed the ban and was then
caught by AgentWrite's word-level loop check, which resampled the whole paragraph (measured: 10 of 43 step calls
in the demo build). `NO_REPEAT_RULE` is the rule's version, part of the request key.

Known gap: keys are per token, not per word, so a word the tokenizer splits differently (" Likes" is " L" +
"ikes", " likes" one token; " bu" + "ilt" spells " built") gives other keys, and a copy can still pass with one
word re-split. The model rarely does this (the demo build's step resamples went from 10 to 0); AgentWrite's
word-level loop check after the step still catches it. A ban over decoded words would close it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NO_REPEAT_RULE = 2  # 1: raw token ids; 2: word keys (case and punctuation ignored)


def word_keys(token_texts: Sequence[bytes]) -> tuple[np.ndarray, dict[int, list[int]]]:
    """(key of each token id, -1 for a token with no letter or digit; the token ids of each key).

    A token that is not whole UTF-8 on its own (a piece of a CJK character) is keyed by its bytes without
    surrounding white space, so it is never skipped."""
    keys = np.full(len(token_texts), -1, dtype=np.int64)
    ids: dict[str, int] = {}
    members: dict[int, list[int]] = {}
    for tok, raw in enumerate(token_texts):
        try:
            text = raw.decode("utf-8")
            key = "".join(ch for ch in text.lower() if ch.isalnum())
        except UnicodeDecodeError:  # a piece of a character: its bytes, without the space it may carry
            piece = raw.strip()
            key = "\x00" + piece.hex() if piece else ""
        if not key:
            continue
        k = ids.setdefault(key, len(ids))
        keys[tok] = k
        members.setdefault(k, []).append(tok)
    return keys, members


class NoRepeatNgram:
    """Incremental index of a growing token sequence: `banned(tokens)` -> the tokens that may not come next.

    With `keys`/`members` (from `word_keys`) the n-grams are over the tokens' word keys and every token of a
    banned key is banned; without, over the token ids themselves."""

    def __init__(self, n: int, keys: np.ndarray | None = None, members: dict[int, list[int]] | None = None):
        if n < 1:
            raise ValueError(f"no_repeat_ngram must be >= 1, got {n}")
        if (keys is None) != (members is None):
            raise ValueError("word keys need both the key of each token and the tokens of each key")
        self.n, self.keys, self.members = n, keys, members
        self._units: list[int] = []  # the keyed sequence so far (skipped tokens left out)
        self._seen: dict[tuple[int, ...], set[int]] = {}  # (n-1 units) -> the units that followed them
        self._consumed = 0  # how many tokens of the sequence are in `_units`

    def banned(self, tokens: Sequence[int]) -> list[int]:
        """`tokens`: the whole sequence so far, which only grows between calls (one instance per request)."""
        self.extend(tokens[self._consumed:])
        return self.following()

    def extend(self, new_tokens: Sequence[int]) -> None:
        """Index the tokens that came after those indexed so far."""
        n, units = self.n, self._units
        for t in new_tokens:
            unit = int(t) if self.keys is None else int(self.keys[int(t)])
            if unit < 0:
                continue
            units.append(unit)
            if len(units) >= n:
                self._seen.setdefault(tuple(units[len(units) - n:-1]), set()).add(unit)
        self._consumed += len(new_tokens)

    def following(self) -> list[int]:
        """The tokens that may not come next: each would complete an n-gram already indexed."""
        n, units = self.n, self._units
        if len(units) < n - 1:
            return []
        nxt = self._seen.get(tuple(units[len(units) - n + 1:]) if n > 1 else (), ())
        if self.members is None:
            return sorted(nxt)
        return sorted(t for k in nxt for t in self.members[k])


def vocabulary_bytes(tokenizer: Any) -> list[bytes]:
    """Each token id's bytes, as llama.cpp's `detokenize` gives them, from a Hugging Face `tokenizers.Tokenizer`
    (for engines that hold no llama.cpp vocabulary: vLLM). Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen,
    SmolLM2) through the byte table their pieces are spelt in; sentencepiece vocabularies (Llama 2, Mistral,
    Gemma) with "▁" read as the space it stands for (decoding one token alone would strip it: "▁Dr" must stay
    " Dr", or the sentence rule reads "toldDr."); a "<0xNN>" byte token as that byte; any other token as its
    decoded text. Special tokens (control tokens: "<|im_end|>") are empty, as llama.cpp renders them, so they
    never count as words."""
    import json

    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> character table

    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    kinds = [decoder, *(decoder.get("decoders") or [])]
    byte_level = any(d.get("type") == "ByteLevel" for d in kinds)
    metaspace = any(d.get("type") == "Metaspace"
                    or (d.get("type") == "Replace" and "▁" in json.dumps(d, ensure_ascii=False)) for d in kinds)
    table = {ch: b for b, ch in bytes_to_unicode().items()}
    special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    out: list[bytes] = []
    for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        piece = tokenizer.id_to_token(i)
        if piece is None or i in special:
            out.append(b"")
        elif byte_level and all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out.append(bytes([int(piece[3:5], 16)]))
        elif metaspace:
            out.append(piece.replace("▁", " ").encode())
        else:
            out.append(tokenizer.decode([i], skip_special_tokens=False).encode())
    return out

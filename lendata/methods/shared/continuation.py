"""Continuing a text that stopped at its token limit, from where it stopped (issue 19).

The request is sent again with the cut text as the assistant's own turn, so the model finishes what it was
writing instead of the text being trimmed back or regenerated. Only on an engine that continues such a turn in
place (`continues_prefill`: llama.cpp, vLLM, a vLLM or SGLang server); elsewhere (llama_cpp.server, hosted
APIs) a new turn would be glued onto the cut text, so nothing is continued. AgentWrite continues a sample's
last step this way; `direct` continues a row cut at `max_tokens`.
A continuation has a sixth of the cut call's budget (which bounds the overshoot), at least
`CONTINUE_MIN_TOKENS`, and ends where the model starts a new paragraph or, with `end_at_sentence`, at the
first sentence end. A continuation cut again is continued again, up to `attempts` in all, so a text can grow
by up to `attempts` times max(a sixth of the budget, 64 tokens). Continuations only append: the cut text is kept
as written.
"""

from __future__ import annotations

from dataclasses import replace

from lendata.engines.base import Engine, Request, Result, continues_prefill, estimate_prompt_tokens
from lendata.engines.chains import Chain

PARAGRAPH_END = "\n\n"
# the least a continuation may write: a sixth of a short step's budget (a 60-word step: 13 tokens) is too few
# to finish the sentence it was cut in, and a continuation that is cut again leaves the text's ending truncated
CONTINUE_MIN_TOKENS = 64
MAX_CONTINUE_ATTEMPTS = 8  # more would let a looping model grow a text to the window


def check_attempts(attempts: int) -> None:
    """Refuse a `continue_attempts` setting outside 0..MAX_CONTINUE_ATTEMPTS (a recipe typo, not a run-time
    surprise: a negative value made AgentWrite's last step overrun the window, a huge one starved it)."""
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 0 <= attempts <= MAX_CONTINUE_ATTEMPTS:
        raise ValueError(f"continue_attempts must be an integer from 0 (off) to {MAX_CONTINUE_ATTEMPTS}, got "
                         f"{attempts!r}")


def continuation_tokens(cut_max_tokens: int) -> int:
    """The budget of one continuation of a call that had `cut_max_tokens`: a sixth of it (bounding the
    overshoot), at least `CONTINUE_MIN_TOKENS`."""
    return max(CONTINUE_MIN_TOKENS, cut_max_tokens // 6)


def continue_cut(req: Request, res: Result, engine: Engine, attempts: int, **change: object) -> Chain[Result]:
    """Continue `res` (the result of `req`) while it stopped at its token limit, at most `attempts` times; the
    final result (a chain: `res = yield from continue_cut(...)`). `change`: Request fields the continuations set
    (e.g. `end_at_sentence`). Each continuation's text is appended, its tokens counted and its finish reason
    becomes the result's; a failed continuation is tried again with a new seed, and when every attempt fails,
    or the window has no room left, the cut text stays as it is. Nothing is sent to an engine that does not
    continue a prefilled turn (`continues_prefill`)."""
    if attempts <= 0 or not continues_prefill(engine):  # the engine is not even asked when continuing is off
        return res
    for attempt in range(attempts):
        if not (res.ok and res.finish_reason == "length" and res.text.strip()):
            break
        more = replace(req, messages=(*req.messages, {"role": "assistant", "content": res.text}),
                       max_tokens=continuation_tokens(req.max_tokens), min_tokens=0,
                       stop=tuple(dict.fromkeys((*req.stop, PARAGRAPH_END))),
                       seed=(req.seed or 0) + 7919 * (attempt + 1), **change)
        # the cut call's prompt was fitted with room for it alone: a continuation gets what the window has left
        # (a server rejects a request whose prompt and max_tokens pass the window)
        room = engine.context_window - estimate_prompt_tokens(engine, [more.messages])[0] - 16
        if room < 16:
            break
        r = yield replace(more, max_tokens=min(more.max_tokens, room))
        if r.ok:
            # the cut call's other fields (its prompt and cache counts) stay the result's
            res = replace(res, text=res.text + r.text, completion_tokens=res.completion_tokens + r.completion_tokens,
                          finish_reason=r.finish_reason, cached=res.cached and r.cached)
    return res

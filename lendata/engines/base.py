"""The one engine contract: `generate(requests) -> results` over a batch.

Methods send many rows per call so that an engine that batches (vLLM, a server with concurrency) can work on
many samples at once; engines that cannot batch still work, one row at a time. A row that needs several calls
in turn is a chain (engines/chains.py), driven continuously where the engine can, else in rounds.
Per-row failures are results with `finish_reason="error"`, never exceptions, so one bad row cannot sink a
batch.

A chat whose last message is from the assistant is a *prefill*: the engine continues that message instead of
opening a new turn, and returns only the continuation (Self-Lengthen's extender writes after a given prefix).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "error"]


class UnsupportedOption(RuntimeError):
    """A request asks for a decoding option the engine cannot honour: a setup error, raised (silently ignoring it
    would build data under a key that claims it)."""


class AdapterError(RuntimeError):
    """A request names a LoRA adapter the engine cannot apply: a setup error, raised, not a row's failure (every
    row naming it would fail the same way, and a build would publish nothing while reporting success)."""


# llama.cpp's own penalty window (`penalty_last_n`): the llamacpp engine's rule before the window was an option
DEFAULT_REPETITION_WINDOW = 64
# more than any context window: llama.cpp allocates the window up front, and wraps values past 2**31
MAX_REPETITION_WINDOW = 1 << 17


def check_repetition_window(window: object) -> None:
    """Refuse a penalty window that is not a number of tokens from 1 to MAX_REPETITION_WINDOW (a Request's, or
    a recipe's before any call is made)."""
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_REPETITION_WINDOW:
        raise ValueError(f"repetition_window must be a number of tokens from 1 to {MAX_REPETITION_WINDOW}, got "
                         f"{window!r}")


@dataclass(frozen=True)
class Request:
    messages: tuple[dict[str, str], ...]
    max_tokens: int = 512
    min_tokens: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    # sample among the k likeliest tokens; None leaves the engine's own default (llama.cpp: 40, vLLM and most
    # OpenAI-compatible servers: off); 0 turns it off everywhere
    top_k: int | None = None
    repetition_penalty: float = 1.0
    # the penalty counts the ids among the last `repetition_window` tokens this call wrote: llama.cpp's rule
    # (`penalty_last_n`, default 64), which every engine follows. Not the prompt: HF's and vLLM's own penalty
    # count the prompt and all the output, which on a long prompt (AgentWrite's plan and text so far) penalizes
    # every common word and punctuation mark, and a small model then writes word salad
    repetition_window: int = DEFAULT_REPETITION_WINDOW
    # never complete an n-gram of word keys already in the prompt or the output (0 = off); engines/no_repeat.py
    no_repeat_ngram: int = 0
    # what the ban indexes: "all" (prompt and output) or "output" (the assistant turn's text: a prefill being
    # continued and what is generated; a task that must copy its prompt, as Self-Lengthen's extender rewriting
    # a text, may repeat the prompt but not itself)
    no_repeat_scope: Literal["all", "output"] = "all"
    # once min_tokens are out, end the output at the first sentence end (the terminator is kept; see
    # engines/sentence_end.py), so a budgeted text ends on a whole sentence instead of being cut or trimmed
    end_at_sentence: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    # which of several samples for the same prompt this is; part of the cache key
    sample_index: int = 0
    # LoRA adapter directory (vLLM); other engines refuse requests that name one
    lora: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        check_repetition_window(self.repetition_window)
        if self.top_k is not None and (not isinstance(self.top_k, int) or isinstance(self.top_k, bool)):
            raise ValueError(f"top_k must be an integer or None, got {self.top_k!r}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be None (the engine's default), 0 (off) or positive, got {self.top_k}")
        if self.end_at_sentence and self.json_schema is not None:
            raise ValueError("end_at_sentence cannot be combined with json_schema (JSON does not end in a sentence)")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be 0 (off) or a positive n-gram size, got {self.no_repeat_ngram}")
        if self.no_repeat_scope not in ("all", "output"):
            raise ValueError(f"no_repeat_scope must be 'all' or 'output', got {self.no_repeat_scope!r}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens], got {self.min_tokens}/{self.max_tokens}")
        for m in self.messages:
            if set(m) != {"role", "content"} or not isinstance(m["content"], str):
                raise ValueError(f"a message is {{role, content}} with string content, got {m!r}")

    @property
    def prefill(self) -> str | None:
        """The assistant text to continue, when the chat ends with an assistant message."""
        last = self.messages[-1] if self.messages else None
        return last["content"] if last and last["role"] == "assistant" else None

    def sampling(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("messages")
        d.pop("json_schema")
        d.pop("sample_index")
        d.pop("repetition_window")  # in the key through the engine's penalty rule (request_key)
        if d["top_k"] is None:  # the engine's default: keys made before top_k existed stay valid
            d.pop("top_k")
        for off in ("no_repeat_ngram", "end_at_sentence"):  # off: keys made before the option stay valid
            if not d[off]:
                d.pop(off)
        if not self.no_repeat_ngram or self.no_repeat_scope == "all":  # the default: keys stay as they were
            d.pop("no_repeat_scope")
        if self.no_repeat_ngram:  # on: the rule's version (raw ids, then word keys), as for end_at_sentence
            from lendata.engines.no_repeat import NO_REPEAT_RULE

            d["no_repeat_rule"] = NO_REPEAT_RULE
        if self.end_at_sentence:  # on: the rule's version, so text ended under an older rule is not replayed
            from lendata.engines.sentence_end import SENTENCE_RULE

            d["end_at_sentence"] = SENTENCE_RULE
        return d


@dataclass
class Result:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"
    error: str | None = None
    cached: bool = field(default=False, compare=False)
    # prompt tokens the engine served from a cache instead of evaluating (vLLM's prefix cache, the llama.cpp
    # engine's kept KV prefixes, a server that reports `prompt_tokens_details.cached_tokens`); None: the engine
    # does not say (or the answer came from the response cache, where nothing was evaluated)
    prompt_cached_tokens: int | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error"

    @classmethod
    def failed(cls, message: str, prompt_tokens: int = 0) -> Result:
        return cls(text="", prompt_tokens=prompt_tokens, finish_reason="error", error=message)


# the Request options an engine honours only if it says so in its `decoding_options`
DECODING_OPTIONS = ("no_repeat_ngram", "end_at_sentence")


def continues_prefill(engine: Any) -> bool:
    """Whether `engine` continues a chat's final assistant turn (a prefill) in place. llama.cpp and vLLM do; a
    server that does not (llama_cpp.server ignores vLLM's `continue_final_message`) answers it with a new turn,
    which a continuation would glue onto the cut text, so methods do not continue there."""
    return bool(getattr(engine, "continues_prefill", False))


def require_continues_prefill(engine: Any, what: str) -> None:
    """Refuse, before any call, a method step that cannot work without a continued prefill (`what` names it)."""
    if not continues_prefill(engine):
        raise ValueError(
            f"{what} writes after a prefilled assistant turn, and the {getattr(engine, 'name', engine)} engine does "
            "not continue one in place (a server such as llama_cpp.server answers it with a new turn, which would "
            "be glued onto the prefix; an openai server whose /models could not be read is taken not to, see the "
            "warning above): use the llamacpp or vllm engine or a vLLM or SGLang server, or set "
            "engine_options.continue_final_message: true for a server that does continue it")


def enforces(engine: Any, option: str) -> bool:
    """Whether `engine` honours the Request option `option` (one of DECODING_OPTIONS) while decoding; an engine
    that does not refuses a request that asks for it (`refuse_unenforced_options`)."""
    return option in getattr(engine, "decoding_options", frozenset())


def refuse_unenforced_options(engine_name: str, requests: Sequence[Request], why: str | None = None,
                              enforced: frozenset[str] = frozenset()) -> None:
    """Raise when a request asks for `no_repeat_ngram` or `end_at_sentence` and the engine does not enforce it
    (`enforced`: the ones it does; `why`: the engine's reason, when it has one)."""
    because = f" ({why})" if why else ""
    asked = sorted({r.no_repeat_ngram for r in requests if r.no_repeat_ngram})
    if asked and "no_repeat_ngram" not in enforced:
        raise UnsupportedOption(
            f"the {engine_name} engine cannot enforce no_repeat_ngram={asked[0]} here{because}; set "
            "no_repeat_ngram=0 in the recipe or use engine=llamacpp (or vllm on its V1 model runner)")
    if any(r.end_at_sentence for r in requests) and "end_at_sentence" not in enforced:
        raise UnsupportedOption(
            f"the {engine_name} engine cannot enforce end_at_sentence here{because}; set end_at_sentence=false "
            "in the recipe or use engine=llamacpp (or vllm on its V1 model runner)")


# called once per finished row: (index in the batch, its result)
OnResult = Callable[[int, Result], None]


@runtime_checkable
class Engine(Protocol):
    name: str
    model_id: str
    context_window: int

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def close(self) -> None: ...


KEY_VERSION = 2  # bumped when what the key covers changes: older cache entries are simply never hit


# an identity entry that changes only grammar-constrained (JSON) outputs: keys of free text leave it out, so a
# change of it does not throw away the cached free text
JSON_SAMPLING = "json_sampling"
# an engine's identity entry saying how it applies a repetition penalty, so a penalized request's key holds what
# was applied: WINDOW_RULE (the last `repetition_window` tokens written; llama.cpp, whose window was always 64
# before it was an option, so its keys at 64 stay as they were), MARKED_WINDOW_RULE (the same rule on an engine
# whose earlier keys meant another: vLLM counted the prompt and all the output), or none (the engine's or
# server's own rule, which the window does not change)
PENALTY_RULE = "penalty_rule"
WINDOW_RULE, MARKED_WINDOW_RULE = "window", "window, marked"


def _penalty_key(rule: str | None, req: Request) -> dict[str, Any]:
    """What a request's key holds of its penalty's window under the engine's `rule` (see PENALTY_RULE)."""
    if req.repetition_penalty == 1.0 or rule is None:
        return {}
    if rule == WINDOW_RULE and req.repetition_window == DEFAULT_REPETITION_WINDOW:
        return {}
    return {PENALTY_RULE: WINDOW_RULE, "repetition_window": req.repetition_window}


def request_key(producer: dict[str, Any], req: Request) -> str:
    """Content address of a response: what produced it (`identity.producer`: a server's URL and served model, or
    the weights' content hash, with the output-changing engine options), sampling, messages, schema, sample
    index, and a LoRA adapter by its content, not its path."""
    from lendata.engines.identity import content_identity

    sampling = req.sampling()
    lora = sampling.pop("lora")
    producer = dict(producer)
    json_sampling = producer.pop(JSON_SAMPLING, None)
    if req.json_schema is not None and json_sampling is not None:  # it changes JSON outputs only
        producer[JSON_SAMPLING] = json_sampling
    producer.update(_penalty_key(producer.pop(PENALTY_RULE, None), req))  # it changes penalized outputs only
    payload = {
        "key_version": KEY_VERSION,
        "producer": producer,
        "sampling": sampling,
        "lora": content_identity(lora) if lora else None,
        "messages": req.messages,
        "schema": req.json_schema,
        "sample": req.sample_index,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# role markers and the default system prompt a chat template adds (generous for ChatML-style templates)
_PER_MESSAGE_TOKENS = 8
_PER_CHAT_TOKENS = 32


def estimate_prompt_tokens(engine: Engine, chats: Sequence[Sequence[dict[str, str]]]) -> list[int]:
    """Upper estimate of each chat's prompt tokens, for fitting prompts into the context window."""
    flat = [m["content"] for chat in chats for m in chat]
    counts = iter(engine.count_tokens(flat))
    return [
        _PER_CHAT_TOKENS + sum(next(counts) + _PER_MESSAGE_TOKENS for _ in chat) for chat in chats
    ]

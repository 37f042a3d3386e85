"""The built-in LoRA trainer: supervised fine-tuning of a LoRA adapter on chat rows, with peft and the
transformers `Trainer`.

Why peft + `Trainer` and not TRL's `SFTTrainer`: the only thing SFT needs beyond `Trainer` here is a loss on the
assistant's tokens alone, and TRL does that only for chat templates carrying `{% generation %}` markers, which
SmolLM2's (and most GGUFs') templates lack. Masking the prompt is a few lines over the tokenizer's own chat
template; TRL would add a dependency whose API moves every release for nothing else.

Self-Lengthen's reference (LLaMA-Factory, `qwen/train_config_template/*.yaml`): LoRA on every linear layer
(`lora_target: all`), rank 8 and alpha 16 (LLaMA-Factory's defaults), learning rate 1e-4, 4 epochs, cosine
schedule with 10% warm-up, batch size 1, cut-off 16,384 tokens; from the second iteration on, training continues
from the previous iteration's adapter (`adapter_name_or_path`), as here (`init_adapter`).

Deviations: `max_length` defaults to 2,048 (a CPU and a 135M model with an 8k window), and an over-long
example keeps at least half of that for its response (`cut_lengths`); the model trains in float32 on the CPU
and with bf16 mixed precision on a GPU (the reference: bf16 on GPUs with DeepSpeed ZeRO-3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


log = logging.getLogger("lendata.training")


@dataclass
class LoraSettings:
    """The built-in trainer's settings (defaults: the Self-Lengthen reference's LLaMA-Factory run)."""

    __pydantic_config__ = {"extra": "forbid"}

    rank: int = 8  # LoRA rank r
    alpha: int = 16  # LoRA alpha (scale alpha / r)
    dropout: float = 0.0  # LoRA dropout
    target_modules: tuple[str, ...] = ("all-linear",)  # peft target modules; all-linear = every linear layer
    learning_rate: float = 1e-4  # peak learning rate
    epochs: float = 4.0  # passes over the iteration's training set
    max_length: int = 2048  # tokens per example (prompt + response), longer ones are cut at the end
    batch_size: int = 1  # examples per optimiser step
    warmup_ratio: float = 0.1  # share of steps warming up
    scheduler: str = "cosine"  # learning-rate schedule
    seed: int = 42  # training seed (data order, dropout, adapter initialisation)
    base: str | None = None  # Hugging Face checkpoint to train on; default: the role's engine's own weights

    def __post_init__(self) -> None:
        problems = [f"{name}={value!r} (needs {need})" for name, value, ok, need in (
            ("rank", self.rank, self.rank >= 1, ">= 1"), ("alpha", self.alpha, self.alpha > 0, "> 0"),
            ("dropout", self.dropout, 0 <= self.dropout < 1, "0 <= dropout < 1"),
            ("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0"),
            ("epochs", self.epochs, self.epochs > 0, "> 0"), ("max_length", self.max_length, self.max_length >= 16,
                                                               ">= 16"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("warmup_ratio", self.warmup_ratio, 0 <= self.warmup_ratio < 1, "0 <= warmup_ratio < 1"),
            ("scheduler", self.scheduler, self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
        ) if not ok]
        if problems:
            raise ValueError("lora settings out of range: " + "; ".join(problems))


class TrainingFailed(RuntimeError):
    pass


class TrainingUnsupported(TrainingFailed):
    """The engine has no local weights the trainer could train on."""


def adapter_key(base: str, settings: LoraSettings, rows: Sequence[dict[str, Any]], init_adapter: str | None) -> str:
    """What an adapter is made of: base weights, settings, the starting adapter and the data, by content."""
    from lendata.engines.identity import content_identity

    h = hashlib.sha256()
    payload = {"base": content_identity(base), "settings": {**dataclasses.asdict(settings), "base": None},
               "init": content_identity(init_adapter) if init_adapter else None, "trainer": "lendata-lora-1"}
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    for row in rows:
        h.update(json.dumps(row["messages"], ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cut_lengths(prompt: int, response: int, max_length: int) -> tuple[int, int]:
    """How many prompt and response tokens of an over-long example to keep: the response keeps all it needs
    up to half the budget or what the prompt leaves, so a long prompt can never leave it nothing (which would
    train on no tokens at all). Both are cut at their ends, as LLaMA-Factory's cut-off does."""
    if prompt + response <= max_length:
        return prompt, response
    keep_response = min(response, max(max_length // 2, max_length - prompt))
    return max_length - keep_response, keep_response


def encode(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """input_ids and labels of one chat; the labels are -100 (no loss) on everything before the last
    assistant message, so the adapter learns to write the response, not the prompt. An example longer than
    `max_length` is cut by `cut_lengths`; `cut` says whether it was."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not messages or messages[-1]["role"] != "assistant":
        raise TrainingFailed("a training row must end with the assistant's message")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if list(full[: len(prompt)]) != list(prompt):
        raise TrainingFailed("the chat template renders the prompt differently with and without the reply; "
                             "cannot tell the response's tokens apart")
    prompt, response = list(full[: len(prompt)]), list(full[len(prompt):])
    keep_prompt, keep_response = cut_lengths(len(prompt), len(response), max_length)
    return {"input_ids": prompt[:keep_prompt] + response[:keep_response],
            "labels": [-100] * keep_prompt + response[:keep_response],
            "cut": keep_prompt + keep_response < len(prompt) + len(response)}


def train_lora(
    base: str | Path,
    rows: Sequence[dict[str, Any]],
    root: str | Path,
    settings: LoraSettings | None = None,
    init_adapter: str | Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Train a LoRA adapter on `rows` (each with `messages`) over the Hugging Face checkpoint `base`; returns
    the adapter folder, `root/<key>/adapter`. Keyed by base, settings, starting adapter and data: the same
    inputs reuse the adapter without training. Written under a temporary name, renamed when complete."""
    settings = settings or LoraSettings()
    if not rows:
        raise TrainingFailed("no training rows: the iteration kept no responses to train on")
    base, root = Path(base), Path(root)
    out = root / adapter_key(str(base), settings, rows, str(init_adapter) if init_adapter else None) / "adapter"
    if (out / "adapter_model.safetensors").is_file():
        return out
    partial = out.with_name("adapter.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    record = _train(base, rows, partial, settings, Path(init_adapter) if init_adapter else None, on_step)
    # beside the adapter, not in it (timings differ run to run; the adapter's content must not), and before the
    # rename: an adapter that exists always has its record
    (out.parent / "training_log.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(partial, out)
    return out


def training_log(adapter: str | Path) -> dict[str, Any] | None:
    """What `train_lora` recorded about an adapter it made (loss, steps, rows, seconds), if anything."""
    try:
        return json.loads((Path(adapter).parent / "training_log.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _train(base: Path, rows: Sequence[dict[str, Any]], out: Path, s: LoraSettings, init: Path | None,
           on_step: Callable[[int, int], None] | None) -> dict[str, Any]:
    from lendata.remote import default_offline

    default_offline()
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(s.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gpu = torch.cuda.is_available()  # float32 on the CPU; bf16 mixed precision on a GPU that has it
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if init is not None:
        model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
    else:
        targets = "all-linear" if list(s.target_modules) == ["all-linear"] else list(s.target_modules)
        model = get_peft_model(model, LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    data = [encode(tokenizer, r["messages"], s.max_length) for r in rows]
    cut = sum(d.pop("cut") for d in data)
    if cut:
        log.warning("LoRA training: %d of %d examples are longer than lora.max_length %d tokens and were cut",
                    cut, len(data), s.max_length)

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
            if on_step:
                on_step(state.global_step, state.max_steps)

    try:
        args = TrainingArguments(
            output_dir=str(out.with_name("trainer-state")), num_train_epochs=s.epochs, learning_rate=s.learning_rate,
            per_device_train_batch_size=s.batch_size, lr_scheduler_type=s.scheduler,
            warmup_steps=s.warmup_ratio,  # a float below 1 is a share of the steps
            seed=s.seed, data_seed=s.seed, save_strategy="no", report_to=[], logging_steps=10, disable_tqdm=True,
            remove_unused_columns=False, use_cpu=not gpu, bf16=gpu and torch.cuda.is_bf16_supported(),
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Progress()],
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        result = trainer.train()
    except Exception as e:
        raise TrainingFailed(f"LoRA training failed: {type(e).__name__}: {e}") from e
    if not math.isfinite(result.training_loss):
        raise TrainingFailed(f"LoRA training gave a loss of {result.training_loss}: no example had a response "
                             "token to learn, or the learning rate diverged")
    model.save_pretrained(str(out))
    shutil.rmtree(out.with_name("trainer-state"), ignore_errors=True)
    return {"train_loss": result.training_loss, "steps": result.global_step, "rows": len(rows),
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2), "settings": dataclasses.asdict(s),
            "base": str(base), "init_adapter": str(init) if init else None, "history": trainer.state.log_history}

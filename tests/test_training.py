"""The built-in LoRA trainer and the peft -> llama.cpp LoRA GGUF converter.

Differential: the converted adapter must make llama.cpp write what transformers + peft write with the same
adapter over the same (dequantized) weights; the base model's outputs must agree too, which shows the
comparison itself is sound. A zero adapter must change nothing; a wrong Q/K row order would derail the
adapted output within a few tokens.
"""

import json
import math

import numpy as np
import pytest

from lendata.engines.base import Request
from lendata.training import gguf_lora
from lendata.training.lora import LoraSettings, TrainingFailed, encode, train_lora

PROMPT = ({"role": "user", "content": "Write a short story about a lighthouse keeper."},)
TOKENS = 24


# --- converter: fast checks ---------------------------------------------------------------------------------


def test_rotary_rows_are_interleaved_per_head():
    # one head of dimension 4: Hugging Face keeps halves [a0 a1 | b0 b1], GGUF interleaves them [a0 b0 a1 b1]
    rows = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert gguf_lora.interleave_rotary_rows(rows, 1).ravel().tolist() == [0.0, 10.0, 1.0, 11.0]
    two = np.arange(8.0).reshape(8, 1)  # two heads, each reordered on its own
    assert gguf_lora.interleave_rotary_rows(two, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def _fake_adapter(path, config, tensors):
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


@pytest.mark.parametrize(("config", "key", "message"), [
    ({"use_dora": True}, "model.layers.0.self_attn.v_proj", "DoRA"),
    ({"use_rslora": True}, "model.layers.0.self_attn.v_proj", "rsLoRA"),
    ({}, "model.embed_tokens", "no llama.cpp LoRA target"),
    ({}, "model.layers.0.self_attn.not_a_module", "no llama.cpp LoRA target"),
])
def test_converter_refuses_what_llama_cpp_cannot_apply(tmp_path, config, key, message):
    from lendata.models import bundled_gguf_path

    tensors = {f"base_model.model.{key}.lora_A.weight": np.zeros((2, 576), np.float32),
               f"base_model.model.{key}.lora_B.weight": np.zeros((192, 2), np.float32)}
    adapter = _fake_adapter(tmp_path / "a", config, tensors)
    with pytest.raises(gguf_lora.AdapterNotConvertible, match=message):
        gguf_lora.convert(adapter, bundled_gguf_path(), tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))


def test_converter_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    from lendata.models import bundled_gguf_path

    with pytest.raises(gguf_lora.AdapterNotConvertible, match="is not a peft adapter"):
        gguf_lora.convert(tmp_path, bundled_gguf_path(), tmp_path / "out.gguf")


def test_training_rows_learn_only_the_response():
    from transformers import AutoTokenizer

    from lendata.models import hf_checkpoint

    tok = AutoTokenizer.from_pretrained(str(hf_checkpoint()))
    chat = [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Danube."}]
    row = encode(tok, chat, 4096)
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tok.decode(learned).startswith("The Danube.")  # the reply (and the end-of-turn marker), nothing else
    assert row["labels"][: len(row["labels"]) - len(learned)] == [-100] * (len(row["labels"]) - len(learned))
    with pytest.raises(TrainingFailed, match="end with the assistant"):
        encode(tok, chat[:1], 4096)


# --- differential: llama.cpp with the converted adapter against transformers + peft ------------------------


def _peft_adapter(base, out, b_scale: float, seed: int = 0):
    """A peft LoRA on every linear layer; B random (scaled) so that it changes outputs, or zero (peft's init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * b_scale)
    model.save_pretrained(str(out))
    return model


def _hf_greedy(model, tokenizer) -> str:
    import torch

    ids = tokenizer.apply_chat_template(list(PROMPT), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.slow
def test_converted_adapter_makes_llama_cpp_write_what_peft_writes(tmp_path, llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lendata.models import hf_checkpoint

    base = hf_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    hf_base = _hf_greedy(AutoModelForCausalLM.from_pretrained(str(base)), tokenizer)
    adapted = _peft_adapter(base, tmp_path / "random", b_scale=0.02)
    hf_adapted = _hf_greedy(adapted, tokenizer)
    _peft_adapter(base, tmp_path / "zero", b_scale=0.0)

    def cpp(lora):
        return Request(messages=PROMPT, max_tokens=TOKENS, temperature=0.0, seed=1, lora=lora)

    base_out, adapted_out, zero_out, base_again = (r.text for r in llama.generate(
        [cpp(None), cpp(str(tmp_path / "random")), cpp(str(tmp_path / "zero")), cpp(None)]))
    assert hf_adapted != hf_base, "the test adapter must change the model's output"
    # the two runtimes agree on the base model (the comparison is sound) ...
    assert _common_prefix(base_out, hf_base) >= 40, (base_out, hf_base)
    # ... and on the adapted one: names, shapes, scale and the Q/K row order are right
    assert _common_prefix(adapted_out, hf_adapted) >= 40, (adapted_out, hf_adapted)
    assert adapted_out != base_out
    assert zero_out == base_out, "a zero adapter must not change llama.cpp's output"
    assert base_again == base_out, "switching back to the base model must not keep the adapter or its KV cache"
    assert llama.generate([cpp(str(tmp_path / "missing"))])[0].error.startswith("LoRA adapter")


@pytest.mark.slow
def test_builtin_trainer_trains_once_per_data_and_continues_from_an_adapter(tmp_path, llama, monkeypatch):
    from lendata.models import hf_checkpoint
    from lendata.training import lora

    rows = [{"messages": [{"role": "user", "content": f"Describe river number {i}."},
                          {"role": "assistant", "content": f"River {i} is long, slow and wide. It floods in spring."}]}
            for i in range(3)]
    s = LoraSettings(epochs=1, max_length=96, target_modules=("q_proj", "v_proj"), learning_rate=5e-3)
    base = hf_checkpoint()
    seen = []
    first = train_lora(base, rows, tmp_path, s, on_step=lambda step, total: seen.append((step, total)))
    assert (first / "adapter_model.safetensors").is_file() and (first / "adapter_config.json").is_file()
    assert seen[-1] == (3, 3)  # 3 rows, batch 1, 1 epoch
    log = lora.training_log(first)
    assert log["rows"] == 3 and log["steps"] == 3 and math.isfinite(log["train_loss"])
    assert not (first.parent / "adapter.partial").exists()

    def boom(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(lora, "_train", boom)
    assert train_lora(base, rows, tmp_path, s) == first  # the same data and settings: nothing trains
    with pytest.raises(AssertionError, match="trained again"):  # other data is other training
        train_lora(base, rows[:2], tmp_path, s)
    with pytest.raises(AssertionError, match="trained again"):  # continuing from an adapter is another key
        train_lora(base, rows, tmp_path, s, init_adapter=first)
    monkeypatch.undo()
    second = train_lora(base, rows, tmp_path, s, init_adapter=first)
    assert second != first and lora.training_log(second)["init_adapter"] == str(first)
    # what the trainer made reaches the embedded engine and changes what it writes
    req = dict(messages=({"role": "user", "content": "Describe river number 1."},), max_tokens=20, temperature=0.0)
    plain, tuned = llama.generate([Request(**req), Request(**req, lora=str(second))])
    assert plain.ok and tuned.ok and plain.text != tuned.text
    with pytest.raises(TrainingFailed, match="no training rows"):
        train_lora(base, [], tmp_path, s)

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

from lendata.engines.base import AdapterError, Request
from lendata.training import gguf_lora
from lendata.training.lora import LoraSettings, TrainingFailed, cut_lengths, encode, train_lora

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


def _peft_adapter(base, out, b_scale: float, targets="all-linear", seed: int = 0):
    """A peft LoRA; B random (scaled) so that it changes outputs, or zero (peft's own initialisation)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * b_scale)
    model.save_pretrained(str(out))
    return model


def _prompt_ids(tokenizer):
    return tokenizer.apply_chat_template(list(PROMPT), add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits[0].numpy()


def _cpp_logits(ids, lora_gguf=None):
    from llama_cpp import Llama

    from lendata.models import bundled_gguf_path

    llm = Llama(str(bundled_gguf_path()), n_ctx=512, logits_all=True, verbose=False,
                **({"lora_path": str(lora_gguf)} if lora_gguf else {}))
    try:
        llm.eval(ids[0].tolist())
        return np.array(llm.scores[: ids.shape[1]])
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize(("targets", "b_scale", "min_corr"), [(["q_proj", "k_proj"], 0.2, 0.95),
                                                             ("all-linear", 0.05, 0.92)])
def test_converted_adapter_shifts_llama_cpp_as_peft_shifts_transformers(tmp_path, monkeypatch, targets, b_scale,
                                                                       min_corr):
    """Over the prompt's every position and the whole vocabulary, the change the adapter makes to llama.cpp's
    logits must match the change peft makes to transformers' logits: in direction (correlation) and size
    (slope ~1, so alpha / rank is right). A converter that forgets to reorder Q/K rows fails this."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lendata.models import bundled_gguf_path, hf_checkpoint

    base = hf_checkpoint()
    ids = _prompt_ids(AutoTokenizer.from_pretrained(str(base)))
    hf_base = _hf_logits(AutoModelForCausalLM.from_pretrained(str(base)), ids)
    hf_adapted = _hf_logits(_peft_adapter(base, tmp_path / "a", b_scale, targets), ids)
    cpp_base = _cpp_logits(ids)
    assert np.corrcoef(hf_base[-1], cpp_base[-1])[0, 1] > 0.995  # the runtimes agree: the comparison is sound
    gguf = gguf_lora.convert(tmp_path / "a", bundled_gguf_path(), tmp_path / "a.gguf")
    hf_shift, cpp_shift = (hf_adapted - hf_base).ravel(), (_cpp_logits(ids, gguf) - cpp_base).ravel()
    assert np.abs(hf_shift).mean() > 0.5, "the test adapter must move the logits"
    assert np.corrcoef(hf_shift, cpp_shift)[0, 1] >= min_corr
    assert 0.85 <= np.dot(hf_shift, cpp_shift) / np.dot(hf_shift, hf_shift) <= 1.15
    if targets != "all-linear":  # the check can fail: without the Q/K row reordering it does
        monkeypatch.setattr(gguf_lora, "interleave_rotary_rows", lambda rows, heads: rows)
        wrong = gguf_lora.convert(tmp_path / "a", bundled_gguf_path(), tmp_path / "wrong.gguf")
        assert np.corrcoef(hf_shift, (_cpp_logits(ids, wrong) - cpp_base).ravel())[0, 1] < 0.6


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache_mb", [0, 256])
def test_the_engine_sets_adapters_per_request_and_a_zero_adapter_changes_nothing(tmp_path, kv_cache_mb):
    from lendata.engines.llamacpp import LlamaCppEngine
    from lendata.models import hf_checkpoint

    # prompt prefixes' KV is kept (live and saved): switching adapters must never continue another adapter's keys
    llama = LlamaCppEngine(n_ctx=2048, kv_cache_mb=kv_cache_mb)

    base = hf_checkpoint()
    _peft_adapter(base, tmp_path / "random", b_scale=0.05)
    _peft_adapter(base, tmp_path / "zero", b_scale=0.0)

    def cpp(lora):
        return Request(messages=PROMPT, max_tokens=TOKENS, temperature=0.7, seed=1, lora=lora)

    base_out, adapted_out, zero_out, base_again = (r.text for r in llama.generate(
        [cpp(None), cpp(str(tmp_path / "random")), cpp(str(tmp_path / "zero")), cpp(None)]))
    assert adapted_out != base_out, "the converted adapter changes llama.cpp's output for a fixed seed"
    assert zero_out == base_out, "a zero adapter must not change llama.cpp's output"
    assert base_again == base_out, "switching back to the base model must not keep the adapter or its KV cache"
    with pytest.raises(AdapterError, match="LoRA adapter .*missing"):  # a setup error, not a row's failure
        llama.generate([cpp(str(tmp_path / "missing"))])
    llama.close()


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
    # it starts from `first`'s weights: with a vanishing learning rate it ends where `first` ended
    from safetensors.numpy import load_file

    still = train_lora(base, rows, tmp_path, LoraSettings(**{**vars(s), "learning_rate": 1e-12}), init_adapter=first)
    a, b = load_file(str(first / "adapter_model.safetensors")), load_file(str(still / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(np.abs(a[k]).max() > 0 for k in a if "lora_B" in k)  # and those weights are not the zero init
    # what the trainer made reaches the embedded engine and changes what it writes
    req = dict(messages=({"role": "user", "content": "Describe river number 1."},), max_tokens=20, temperature=0.0)
    plain, tuned = llama.generate([Request(**req), Request(**req, lora=str(second))])
    assert plain.ok and tuned.ok and plain.text != tuned.text
    with pytest.raises(TrainingFailed, match="no training rows"):
        train_lora(base, [], tmp_path, s)


def test_an_overlong_example_keeps_tokens_of_its_response():
    assert cut_lengths(100, 50, 4096) == (100, 50)  # fits: nothing cut
    assert cut_lengths(5000, 3000, 2048) == (1024, 1024)  # a prompt longer than the budget leaves half
    assert cut_lengths(500, 3000, 2048) == (500, 1548)  # a short prompt is kept whole
    assert cut_lengths(3000, 100, 2048) == (1948, 100)  # a short response is kept whole
    for prompt, response, budget in ((9000, 1, 64), (1, 9000, 64), (40, 40, 64)):
        p, r = cut_lengths(prompt, response, budget)
        assert p + r == min(budget, prompt + response) and r >= min(response, budget // 2)


def test_encode_cuts_a_long_prompt_not_the_whole_response():
    from transformers import AutoTokenizer

    from lendata.models import hf_checkpoint

    tok = AutoTokenizer.from_pretrained(str(hf_checkpoint()))
    chat = [{"role": "user", "content": "river " * 3000}, {"role": "assistant", "content": "The Danube is long."}]
    row = encode(tok, chat, 256)
    assert len(row["input_ids"]) <= 256 and row["cut"]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tok.decode(learned).startswith("The Danube is long.")


@pytest.mark.parametrize(("field", "value"), [("warmup_ratio", 1.5), ("scheduler", "cosine_annealing"),
                                              ("learning_rate", 0.0), ("dropout", 1.0), ("rank", 0)])
def test_lora_settings_out_of_range_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        LoraSettings(**{field: value})


def _base_gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_q_k_rows_are_reordered_only_where_the_architecture_s_gguf_reorders_them(tmp_path):
    from gguf import GGUFReader

    b = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((2, 8), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b}
    adapter = _fake_adapter(tmp_path / "a", {}, tensors)

    def written_b(arch):
        out = gguf_lora.convert(adapter, _base_gguf(tmp_path / f"{arch}.gguf", arch), tmp_path / f"{arch}-lora.gguf")
        t = next(t for t in GGUFReader(str(out)).tensors if t.name.endswith("lora_b"))
        return np.array(t.data).reshape(8, 2)

    assert np.array_equal(written_b("qwen2"), b)  # Qwen2's conversion keeps Q/K rows as they are
    assert np.array_equal(written_b("llama"), gguf_lora.interleave_rotary_rows(b, 2))
    with pytest.raises(gguf_lora.AdapterNotConvertible, match="does not know whether olmo"):
        gguf_lora.convert(adapter, _base_gguf(tmp_path / "olmo.gguf", "olmo"), tmp_path / "olmo-lora.gguf")

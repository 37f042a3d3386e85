"""A peft LoRA adapter as a llama.cpp LoRA GGUF, so the embedded engine can use what the trainer made.

llama.cpp loads LoRA adapters only in its own GGUF form and the llama-cpp-python wheel ships no converter, so
this writes one with the `gguf` package (its tensor-name maps and writer), for the base model's architecture as
recorded in the base GGUF. What it has to get right:

- names: peft's `base_model.model.<hf module>.lora_A.weight` becomes `<gguf tensor>.weight.lora_a` (and `_b`),
  through the `gguf` package's map of Hugging Face module names for that architecture;
- shapes: lora_a is [rank, n_in] and lora_b is [n_out, rank], as peft stores them; llama.cpp checks that
  they multiply to the base tensor's shape;
- the scale: llama.cpp applies alpha / rank, as peft does without rsLoRA, from `adapter.lora.alpha`;
- Q and K rows: the GGUF conversion of Llama-family models reorders the rows of every attention head's Q and
  K projections (Hugging Face keeps the two rotary halves apart, GGUF interleaves them), and transformers
  undoes it when it loads a GGUF. An adapter trained on the Hugging Face weights changes the rows of
  `lora_B @ lora_A`, so lora_B's rows of q_proj / k_proj get the same reordering; lora_A is unchanged.

Deliberately refused (a clear error instead of a wrong adapter): rsLoRA and DoRA, per-module ranks or alphas,
adapters on embeddings or the output head, and modules the map does not know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_PEFT_PREFIX = "base_model.model."
# Architectures whose GGUF conversion interleaves the rotary halves of Q and K (llama.cpp's convert_hf_to_gguf
# permutes them for Llama-family models), and ones it leaves as they are. An adapter on Q or K of any other
# architecture is refused rather than guessed: a wrong guess gives an adapter that loads and silently does harm.
_ROTARY_INTERLEAVED = {"llama"}
_ROTARY_AS_IS = {"qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma", "gemma2", "gemma3", "phi3", "gpt2"}


class AdapterNotConvertible(ValueError):
    pass


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def base_layout(base_gguf: Path) -> dict:
    """What the converter needs of the base model: architecture, blocks, attention heads."""
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))
    arch = _field(reader, "general.architecture")
    if not arch:
        raise AdapterNotConvertible(f"{base_gguf} has no general.architecture")
    return {"arch": arch, "blocks": int(_field(reader, f"{arch}.block_count")),
            "heads": int(_field(reader, f"{arch}.attention.head_count")),
            "kv_heads": int(_field(reader, f"{arch}.attention.head_count_kv")
                            or _field(reader, f"{arch}.attention.head_count"))}


def interleave_rotary_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection (or of a LoRA B feeding one) from Hugging Face's per-head
    [first half | second half] layout to GGUF's pairwise-interleaved one."""
    head_dim = rows.shape[0] // heads
    per_head = rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:])
    return per_head.swapaxes(1, 2).reshape(rows.shape)


def _read_adapter(adapter_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterNotConvertible(f"{adapter_dir} is not a peft adapter: it needs adapter_config.json and "
                                    "adapter_model.safetensors")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterNotConvertible(f"{adapter_dir}: peft_type {config.get('peft_type')} is not LORA")
    for flag, what in (("use_rslora", "rsLoRA scaling"), ("use_dora", "DoRA")):
        if config.get(flag):
            raise AdapterNotConvertible(f"{adapter_dir}: {what} has no llama.cpp LoRA equivalent")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterNotConvertible(f"{adapter_dir}: per-module ranks or alphas are not supported")
    return config, load_file(str(weights_path))


def convert(adapter_dir: str | Path, base_gguf: str | Path, out: str | Path) -> Path:
    """Write `adapter_dir` (a peft LoRA adapter) as a llama.cpp LoRA GGUF at `out`, atomically."""
    import gguf

    adapter_dir, out = Path(adapter_dir), Path(out)
    config, weights = _read_adapter(adapter_dir)
    layout = base_layout(Path(base_gguf))
    arch = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == layout["arch"]), None)
    if arch is None:
        raise AdapterNotConvertible(f"the gguf package does not know architecture {layout['arch']!r}")
    names = gguf.get_tensor_name_map(arch, layout["blocks"])
    rank = int(config["r"])
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        module, _, part = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        side = part.removesuffix(".weight")
        if side not in ("A", "B") or not module:
            raise AdapterNotConvertible(f"{adapter_dir}: unexpected tensor {key}")
        target = names.get_name(module)
        if target is None or target in ("token_embd", "output"):
            raise AdapterNotConvertible(f"{adapter_dir}: module {module} has no llama.cpp LoRA target")
        pairs.setdefault(target, {})[side] = np.asarray(value, dtype=np.float32)
    if not pairs:
        raise AdapterNotConvertible(f"{adapter_dir} holds no LoRA tensors")

    writer_path = out.with_name(f".{out.name}.tmp{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(writer_path), layout["arch"])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.get("lora_alpha", rank)))
    for target in sorted(pairs):
        a, b = pairs[target].get("A"), pairs[target].get("B")
        if a is None or b is None or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterNotConvertible(f"{adapter_dir}: {target} needs lora_A [{rank}, n_in] and lora_B "
                                        f"[n_out, {rank}]")
        if target.endswith((".attn_q", ".attn_k")):
            if layout["arch"] in _ROTARY_INTERLEAVED:
                b = interleave_rotary_rows(b, layout["heads"] if target.endswith(".attn_q") else layout["kv_heads"])
            elif layout["arch"] not in _ROTARY_AS_IS:
                raise AdapterNotConvertible(f"{adapter_dir}: lendata does not know whether {layout['arch']}'s GGUF "
                                            "reorders Q/K rows; train without q_proj/k_proj for this model")
        writer.add_tensor(f"{target}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{target}.weight.lora_b", np.ascontiguousarray(b))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(writer_path, out)
    return out

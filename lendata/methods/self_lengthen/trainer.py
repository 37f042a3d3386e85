"""Training between Self-Lengthen iterations: two adapters per iteration, the Generator's on gen_sft and the
Extender's on ext_sft, each continuing from the adapter that role used in the iteration (the reference's
`adapter_name_or_path`, qwen/mk_train_config.py: the previous iteration's adapter) or from the base model.

By default the built-in LoRA trainer (`lendata.training.lora`) trains them. A `trainer` command replaces it for
external trainers (LLaMA-Factory, axolotl): a template whose `{placeholder}`s are replaced by shell-quoted
values, run once per role. It must write an adapter (a peft LoRA folder) to `{out_adapter}`; literal braces
in the command are written `{{` and `}}`. The folder is written under a temporary name and renamed when the
command succeeds, and it lives under a key made of the command, its input files and the other placeholder
values, so a rerun with the same data skips training and changed data or settings retrain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from lendata.training.lora import LoraSettings, train_lora

ROLE_SETS = {"generator": "gen_sft", "extender": "ext_sft"}
log = logging.getLogger("lendata.self_lengthen")


class TrainerFailed(RuntimeError):
    pass


def _key(template: str, files: dict[str, Path]) -> str:
    h = hashlib.sha256(template.encode())
    for name in sorted(files):
        h.update(name.encode())
        h.update(Path(files[name]).read_bytes())
    return h.hexdigest()[:16]


def run_trainer(template: str, files: dict[str, Path], root: Path, extra: dict[str, str] | None = None) -> Path:
    """Run `template` over `files`; returns the adapter directory it wrote (reused if already trained). The
    adapter is keyed by the command, the files and the other placeholder values (role, iteration, starting
    adapter, base model): changing any of them trains again."""
    out = root / _key(template + json.dumps(extra or {}, sort_keys=True), files) / "adapter"
    if out.is_dir():
        return out
    partial = out.with_name("adapter.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    values = {k: shlex.quote(str(v)) for k, v in files.items()}
    values.update({k: shlex.quote(v) for k, v in (extra or {}).items()})
    values["out_adapter"] = shlex.quote(str(partial))
    try:
        command = template.format(**values)
    except (KeyError, IndexError) as e:
        raise TrainerFailed(
            f"trainer command uses unknown placeholder {e}; available: {', '.join('{' + k + '}' for k in values)}; "
            "write a literal brace as {{ or }} (${{HOME}}, awk '{{print $1}}')"
        ) from None
    except ValueError as e:  # an unbalanced brace
        raise TrainerFailed(f"trainer command {template!r}: {e}; write a literal brace as {{{{ or }}}}") from None
    log = out.with_name("trainer.log")
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    log.write_text(f"$ {command}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise TrainerFailed(f"trainer command failed (exit {proc.returncode}): {command}\n{tail}\nfull log: {log}")
    if not partial.exists():
        raise TrainerFailed(f"trainer command succeeded but wrote nothing to {{out_adapter}} ({partial}); log: {log}")
    partial.rename(out)
    return out


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """Atomically: a trainer never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _sets(root: Path, iteration: int, gen_sft: pa.Table, ext_sft: pa.Table) -> dict[str, Path]:
    """The iteration's training sets as JSONL, in Alpaca and chat shapes, for external trainers."""
    files: dict[str, Path] = {}
    data = root / f"iter{iteration}"
    for name, table in (("gen_sft", gen_sft), ("ext_sft", ext_sft)):
        rows = table.to_pylist()
        files[name] = _write_jsonl([{k: r[k] for k in ("instruction", "input", "output")} for r in rows],
                                   data / f"{name}.jsonl")
        files[f"{name}_messages"] = _write_jsonl([{"messages": r["messages"]} for r in rows],
                                                 data / f"{name}_messages.jsonl")
    return files


def train_command(spec: str | dict[str, str], root: Path, iteration: int, gen_sft: pa.Table, ext_sft: pa.Table,
                  previous: dict[str, str], bases: dict[str, str]) -> dict[str, str]:
    """Run an external trainer once per role; the adapter each role uses next.

    `spec` is one command run for each role or {generator: CMD, extender: CMD}. Placeholders: {sft} and
    {sft_messages} (the role's set: gen_sft for the Generator, ext_sft for the Extender), {gen_sft} {ext_sft}
    {gen_sft_messages} {ext_sft_messages}, {role}, {iteration}, {init_adapter} (the role's previous adapter,
    empty in iteration 1), {base_model} (the role's base checkpoint, empty when unknown) and {out_adapter}.
    """
    if isinstance(spec, dict):
        unknown = set(spec) - set(ROLE_SETS)
        if unknown:
            raise TrainerFailed(f"trainer: unknown role(s) {sorted(unknown)}; use generator and/or extender")
        commands = {role: cmd for role, cmd in spec.items() if cmd}
    else:
        commands = dict.fromkeys(ROLE_SETS, spec)
    files = _sets(root, iteration, gen_sft, ext_sft)
    out = {}
    for role, cmd in commands.items():
        name = ROLE_SETS[role]
        role_files = {**files, "sft": files[name], "sft_messages": files[f"{name}_messages"]}
        extra = {"iteration": str(iteration), "role": role, "init_adapter": previous.get(role, ""),
                 "base_model": bases.get(role, "")}
        out[role] = str(run_trainer(cmd, role_files, root, extra))
    return out


def train_builtin(settings: LoraSettings, root: Path, gen_sft: pa.Table, ext_sft: pa.Table,
                  previous: dict[str, str], bases: dict[str, str],
                  progress: Callable[[int, str], Any] | None = None) -> dict[str, str | None]:
    """The built-in LoRA trainer, once per role, each continuing from the role's previous adapter. A role
    whose set is empty keeps its previous adapter (None: the base model), with a warning."""
    out: dict[str, str | None] = {}
    for role, table in (("generator", gen_sft), ("extender", ext_sft)):
        rows = table.to_pylist()
        if not rows:  # nothing kept to learn from: the role goes on with what it had
            log.warning("self_lengthen: %s is empty; the %s keeps %s", ROLE_SETS[role], role,
                        previous.get(role) or "the base model")
            out[role] = previous.get(role)
            continue
        steps = math.ceil(len(rows) / settings.batch_size) * math.ceil(settings.epochs)
        label = f"train {role} LoRA ({ROLE_SETS[role]}, {len(rows)} rows)"
        with progress(steps, label) if progress else contextlib.nullcontext() as bar:
            path = train_lora(bases[role], rows, root / "lora" / role, settings, previous.get(role),
                              on_step=(lambda _step, _total, bar=bar: bar.advance(1, 0)) if bar else None)
        out[role] = str(path)
    return out

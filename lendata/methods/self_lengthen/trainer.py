"""The optional training step between Self-Lengthen iterations: a user command, run once per data.

The command is a template; each `{placeholder}` is replaced by a shell-quoted path. It must write an adapter
(or any model directory) to `{out_adapter}`, which the next iteration's roles then use. The directory is
written under a temporary name and renamed when the command succeeds, and it lives under a key made of the
command and its input files, so a rerun with the same data skips training and a changed dataset retrains.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa


class TrainerFailed(RuntimeError):
    pass


def _key(template: str, files: dict[str, Path]) -> str:
    h = hashlib.sha256(template.encode())
    for name in sorted(files):
        h.update(name.encode())
        h.update(Path(files[name]).read_bytes())
    return h.hexdigest()[:16]


def run_trainer(template: str, files: dict[str, Path], root: Path, extra: dict[str, str] | None = None) -> Path:
    """Run `template` over `files`; returns the adapter directory it wrote (reused if already trained)."""
    out = root / _key(template, files) / "adapter"
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
            f"trainer command uses unknown placeholder {e}; available: {', '.join('{' + k + '}' for k in values)}"
        ) from None
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


def train_between(
    spec: str | dict[str, str], root: Path, iteration: int, gen_sft: pa.Table, ext_sft: pa.Table
) -> dict[str, str]:
    """Write an iteration's training sets as JSONL and run the trainer; the adapter each role uses next.

    `spec` is one command (one adapter for both roles) or {generator: CMD, extender: CMD}. Placeholders:
    {gen_sft} {ext_sft} (Alpaca JSONL), {gen_sft_messages} {ext_sft_messages} (chat JSONL), {out_adapter},
    {iteration}, and {role} for per-role commands.
    """
    files: dict[str, Path] = {}
    data = root / f"iter{iteration}"
    for name, table in (("gen_sft", gen_sft), ("ext_sft", ext_sft)):
        rows = table.to_pylist()
        files[name] = _write_jsonl([{k: r[k] for k in ("instruction", "input", "output")} for r in rows],
                                   data / f"{name}.jsonl")
        files[f"{name}_messages"] = _write_jsonl([{"messages": r["messages"]} for r in rows],
                                                 data / f"{name}_messages.jsonl")
    extra = {"iteration": str(iteration)}
    if isinstance(spec, str):
        path = str(run_trainer(spec, files, root, extra))
        return {"generator": path, "extender": path}
    unknown = set(spec) - {"generator", "extender"}
    if unknown:
        raise TrainerFailed(f"trainer: unknown role(s) {sorted(unknown)}; use generator and/or extender")
    return {role: str(run_trainer(cmd, files, root, {**extra, "role": role})) for role, cmd in spec.items() if cmd}

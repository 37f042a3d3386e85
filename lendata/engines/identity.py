"""What produced a response, for the response cache's key: a server's normalised URL and served model, or the
content identity (sha256) of local weights and adapters, plus every engine option that changes outputs.

A model's name is not its identity: two OpenAI-compatible servers may both call their model "default", and two
GGUF files may share a file name. Hashing weights costs one read (about 0.2 s for the bundled 93 MB GGUF); the
result is remembered per file by (real path, size, mtime) in the user cache, so it is paid once per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lendata.atomic import sha256_file
from lendata.paths import user_cache

# query parameters that carry credentials; never part of an identity (nor of anything written)
_SECRET_PARAMS = {"key", "api_key", "apikey", "token", "access_token", "sig", "signature", "code"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_memo: dict[str, dict[str, Any]] | None = None


def server_url(base_url: str) -> str:
    """`base_url` without credentials, with a lower-case scheme and host, an explicit port and no trailing
    slash: http://User:pw@LOCALHOST:8000/v1/ -> http://localhost:8000/v1."""
    parts = urlsplit(base_url.strip())
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "").lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in _SECRET_PARAMS])
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), query, ""))


def _memo_path() -> Path:
    return user_cache() / "content-identity.json"


def _load_memo() -> dict[str, dict[str, Any]]:
    global _memo
    if _memo is None:
        try:
            _memo = json.loads(_memo_path().read_text())
        except (OSError, ValueError):
            _memo = {}
    return _memo


def _save_memo() -> None:
    path = _memo_path()
    with contextlib.suppress(OSError):  # a lost memo only costs a re-hash
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(_load_memo()))
        os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered by (real path, size, mtime_ns)."""
    real = Path(path).resolve()
    st = real.stat()
    memo = _load_memo()
    seen = memo.get(str(real))
    if seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
        return seen["sha256"]
    digest = sha256_file(real)
    memo[str(real)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _save_memo()
    return digest


def content_identity(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative path and sha256 of each, in order): the identity of
    weights or an adapter, whatever their path or name."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    return f"missing:{p}"  # a name the engine resolves itself (a hub id); nothing local to hash


_DRIVE = re.compile(r"^[A-Za-z]:")


def model_name(model_id: str) -> str:
    """A model as data and dataset cards may name it: a hub id ("org/name") as it is, a local path (absolute,
    home-relative, Windows, or two folders deep) by its last part only. `vllm serve /home/me/ckpt/step-1000`
    serves the id "/home/me/ckpt/step-1000": the rows say "step-1000"."""
    text = str(model_id or "").strip()
    parts = [p for p in re.split(r"[\\/]", text) if p]
    local = text.startswith(("/", "~", ".", "\\")) or "\\" in text or bool(_DRIVE.match(text)) or len(parts) > 2
    return (parts[-1] if parts else text) if local else text


def producer(engine: Any) -> dict[str, Any]:
    """The identity of what generates for `engine`: its `identity()` when it has one, else its name and
    model id (scripted test engines)."""
    ident = getattr(engine, "identity", None)
    return ident() if callable(ident) else {"engine": engine.name, "model": engine.model_id}


def tokenizer_file(path: str | os.PathLike) -> str:
    """A tokenizer file as the manifest names it: its name and content (`file:tokenizer.json@sha256:…`)."""
    p = Path(path).expanduser()
    return f"file:{p.name}@sha256:{file_sha256(p)[:16]}" if p.is_file() else f"file:{p} (missing)"

"""File-system steps that readers must see whole or not at all: fsync of files and folder trees, and the atomic
exchange of two folders (how a version or an export is replaced without a moment in which neither exists);
and the sha256 of a file, streamed, by which the store, manifests and cache keys know files."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import sys
import uuid
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # Linux renameat2(2)
_RENAME_SWAP = 2  # macOS renamex_np(2)


class ExchangeUnsupported(OSError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temporary_beside(path: Path) -> Path:
    """An unpredictable hidden name in `path`'s folder, for a file about to replace `path`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `path` whole or not at all: a new file under an unpredictable name (O_EXCL: never through a link
    someone planted), fsynced, then renamed over `path`. A symlink or hard link at `path` is replaced, never
    written through, so an output option cannot reach a file the link points to."""
    path = Path(path)
    tmp = temporary_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every folder under `root` (deepest first) and `root` itself, so that the names of the files in
    them are on disk before `root` is renamed into view."""
    for folder, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        fsync_dir(Path(folder))


def exchange(a: Path, b: Path) -> None:
    """Swap two existing folders in one atomic step: afterwards `a` holds what `b` held and `b` what `a` held,
    and no reader ever finds `b` missing. Linux renameat2(RENAME_EXCHANGE), macOS renamex_np(RENAME_SWAP);
    elsewhere `ExchangeUnsupported` (no two-rename fallback: it would leave a moment with no version)."""
    libc = ctypes.CDLL(None, use_errno=True)
    src, dst = os.fsencode(a), os.fsencode(b)
    if sys.platform.startswith("linux"):
        fn = getattr(libc, "renameat2", None)
        if fn is None:  # glibc < 2.28: the system call itself (x86-64 316, aarch64 276)
            number = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)
            if number is None:
                raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available")
            rc = libc.syscall(number, _AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE)
        else:
            rc = fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE)
    elif sys.platform == "darwin":
        rc = libc.renamex_np(src, dst, _RENAME_SWAP)
    else:
        raise ExchangeUnsupported(errno.ENOSYS, f"atomic folder exchange is not available on {sys.platform}")
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise ExchangeUnsupported(err, f"the file system of {b} cannot exchange folders atomically")
        raise OSError(err, os.strerror(err), str(b))

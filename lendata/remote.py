"""Inputs anywhere fsspec reaches: local paths and globs, `s3://` (any S3-compatible endpoint), `hf://datasets/...`
(the Hub's file system; `HF_ENDPOINT` honoured), `gs://`, `https://`.

Files are opened as streams (byte ranges on object stores): nothing downloads a whole corpus first. Credentials
come from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, HF_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, ...),
never from a recipe, so they cannot reach a manifest; a URL that carries them (`s3://KEY:SECRET@bucket`) is
refused, and URLs are shown with any query string removed.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from lendata.inputs import InputError

GLOB_CHARS = re.compile(r"[*?\[]")


class RemoteError(InputError):
    pass


def is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value))


def shown(location: str) -> str:
    """A location as it may be printed or recorded: no query string, no user info."""
    out = re.sub(r"[?#].*$", "", location)
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", out)


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".7z", ".tar")


def check_url(location: str) -> None:
    """Refuse a URL that carries credentials (user info, or a query string such as a presigned signature): the
    recipe, and so the URL, is recorded in the manifest and in Prefect's run parameters."""
    if not is_url(location):
        return
    head = location.split("://", 1)[1].split("/", 1)[0]
    if "@" in head or "?" in location or "#" in location:
        raise RemoteError(f"{shown(location)}: a URL with user info or a query string would be recorded with the "
                          "recipe (manifest, Prefect); set credentials in the environment instead "
                          "(AWS_ACCESS_KEY_ID, HF_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, ...)")


def filesystem(location: str) -> tuple[Any, str]:
    """(fsspec file system, path within it) for a URL or a local path."""
    import fsspec

    if is_url(location):
        check_url(location)
        scheme = location.split("://", 1)[0]
        if scheme == "s3":
            return _s3(location)
        if scheme == "hf":
            return _hf(location)
        try:
            return fsspec.core.url_to_fs(location)
        except (ImportError, ValueError) as e:
            raise RemoteError(f"{shown(location)}: {e}") from None
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), str(Path(location).expanduser().absolute())


def _s3(location: str) -> tuple[Any, str]:
    """s3fs with the endpoint from AWS_ENDPOINT_URL (the AWS SDKs' own variable), for S3-compatible servers."""
    import os

    try:
        import s3fs
    except ImportError:
        raise RemoteError("s3:// inputs need s3fs: pip install 'lendata[remote]'") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})
    return fs, location.split("://", 1)[1]


def _hf(location: str) -> tuple[Any, str]:
    """The Hub's file system at HF_ENDPOINT (read when called, not when huggingface_hub was imported)."""
    import os

    from huggingface_hub import HfFileSystem, constants

    if constants.HF_HUB_OFFLINE:
        if os.environ.get(OFFLINE_BY_LENDATA) != "1":
            raise RemoteError(f"{shown(location)}: HF_HUB_OFFLINE is set; unset it to read from the Hub")
        constants.HF_HUB_OFFLINE = False  # lendata's own default for model loading, not the user's wish
    fs = HfFileSystem(endpoint=os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    return fs, location.split("://", 1)[1]


# set when lendata (not the user) turned HF_HUB_OFFLINE on (`default_offline`)
OFFLINE_BY_LENDATA = "LENDATA_HF_OFFLINE_DEFAULT"


def default_offline() -> None:
    """HF_HUB_OFFLINE=1 unless the user chose: models load from the local cache without asking the Hub
    (ENVIRONMENT.md: tokenizer load 7 s -> 4 s). Marked as lendata's, so hf:// inputs may still read the Hub."""
    import os

    if "HF_HUB_OFFLINE" not in os.environ:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ[OFFLINE_BY_LENDATA] = "1"


def expand(location: str, glob: str | None) -> tuple[Any, str, list[str], bool]:
    """(file system, root, sorted files, whether the location is a folder) that `location` names: a file, a
    folder (its files matching `glob`), or a glob pattern. Paths are the file system's own (no scheme)."""
    fs, path = filesystem(location)
    if GLOB_CHARS.search(path) and not fs.exists(path):  # a real name with [ ] * ? is a name, not a pattern
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
        if not files:
            raise RemoteError(f"{shown(location)}: no file matches")
        refuse_compressed(files, location)
        root = path[: GLOB_CHARS.search(path).start()].rsplit("/", 1)[0]  # type: ignore[union-attr]
        return fs, root, files, True
    if fs.isdir(path):
        import glob as globbing

        pattern = f"{globbing.escape(path.rstrip('/'))}/{glob or '**/*'}"  # the folder's name is not a pattern
        files = sorted(p for p in fs.glob(pattern) if fs.isfile(p))
        if not files:
            raise RemoteError(f"{shown(location)}: no file matches {glob!r}")
        refuse_compressed(files, location)
        return fs, path.rstrip("/"), files, True
    if not fs.exists(path):
        raise RemoteError(f"input not found: {shown(location)}")
    refuse_compressed([path], location)
    return fs, path.rsplit("/", 1)[0], [path], False


def refuse_compressed(files: list[str], location: str) -> None:
    """Compressed files cannot be cut into byte ranges: say so instead of reading them as text."""
    packed = [f for f in files if f.lower().endswith(COMPRESSED)]
    if packed:
        raise RemoteError(f"{shown(location)}: {packed[0].rsplit('/', 1)[-1]} is compressed; decompress it, or "
                          "convert the corpus to Parquet (compressed inside, read by row groups)")


def open_binary(fs: Any, path: str) -> io.BufferedReader:
    """A buffered binary stream of a file (`readline(size)` bounded, `seek`), reading ranges on demand."""
    return io.BufferedReader(fs.open(path, "rb", block_size=8 << 20), buffer_size=1 << 20)


def open_location(location: str | Path) -> tuple[io.BufferedReader, str]:
    """(stream, file name) of one input file given as a local path or a URL."""
    fs, path = filesystem(str(location))
    if not fs.isfile(path):
        raise InputError(f"input file not found: {shown(str(location))}")
    return open_binary(fs, path), path.rsplit("/", 1)[-1]

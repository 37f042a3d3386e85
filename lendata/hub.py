"""Hugging Face Hub layout: `data/<split>-NNNNN-of-NNNNN.parquet` plus a `README.md` dataset card whose YAML
`configs` lists the splits, so `datasets.load_dataset(DIR)` (or the Hub repo) loads every split as it is."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from lendata import store as st
from lendata.atomic import exchange, fsync_dir, fsync_tree
from lendata.describe import describe

SKIP_SPLITS = {"quarantine", "rejected"}  # audit trail, not data: they stay in the store


class ExportError(RuntimeError):
    pass


def size_category(rows: int) -> str:
    """The Hub's `size_categories` tag for a row count."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((tag for bound, tag in bounds if rows < bound), "n>1B")


def card_tags(manifest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(task_categories, tags) of a version's card: its method's, plus the recipe's own `tags`."""
    from lendata.methods import method_of

    method = method_of(manifest)
    extra = list((manifest.get("recipe_settings") or {}).get("tags") or [])
    if method is None:
        return ["text-generation"], extra
    return list(method.card_tasks), list(dict.fromkeys([*method.card_tags, *extra]))


# settings that name local things (paths, servers, clusters, commands, credentials' variable names): never on a
# card; inputs are identified by file name and sha256 instead (the manifest's `inputs`)
# (plus the settings a method names as its `inputs` and `local_settings`)
LOCAL_SETTINGS = {"engine_options", "runner", "shards", "ray", "input", "lora", "model_path", "base_url",
                  "api_key_env", "address", "store"}
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:")  # C:\\x, C:/x and the drive-relative D:x
_HOST_PORT = re.compile(r"^\[?[\w.:\-]+\]?:\d{1,5}$")  # localhost:8000, 10.0.0.5:8000, [fe80::1]:8000
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\[[0-9a-fA-F:]+\]")
_HOST = re.compile(r"\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")  # gpu17.corp.internal, x.jsonl


def _is_local(value: Any) -> bool:
    """Whether a setting's value may name something of this machine or network: a path (any string with a
    slash, absolute or not), a URL or URI, a host (a dotted name, an IP address, host:port), the machine's
    name, or an environment value. Errs on withholding: a withheld setting is listed on the card."""
    if isinstance(value, dict):
        return any(_is_local(k) or _is_local(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_is_local(v) for v in value)
    if not isinstance(value, str):
        return False
    v = value.strip()
    if "/" in v or "\\" in v or "://" in v or v.lower().startswith(("file:", "~")) or _WINDOWS_PATH.match(v):
        return True
    if _HOST_PORT.match(v) or _IP.search(v) or _HOST.search(v):
        return True
    host = socket.gethostname()
    if host and host.lower() in v.lower():
        return True
    env = (x for x in os.environ.values() if len(x) >= 8 and not x.isdigit())
    return any(x in v for x in env)


def public_settings(settings: dict[str, Any], local: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """(the recipe settings a card may show, the dotted keys it withholds): what shapes the data stays; local
    paths, URLs, hosts, run settings and commands go, and the keys in `local` (the method's inputs and local
    settings)."""
    withheld: list[str] = []
    local_keys = LOCAL_SETTINGS | set(local)

    def walk(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            if str(k).startswith("_"):
                continue
            if k in local_keys or key in local_keys or _is_local(k):  # a bare or a dotted name
                withheld.append(key)
            elif isinstance(v, dict):
                out[k] = walk(v, key + ".")
            elif _is_local(v):
                withheld.append(key)
            else:
                out[k] = v
        return out

    return walk(settings or {}, ""), withheld


def public_name(value: Any) -> str:
    """A model or file as a card may name it: the last part of a local path, never the path."""
    from lendata.engines.identity import model_name

    return model_name(str(value or ""))


def card(version: st.Version, files: dict[str, list[str]], stats: dict[str, Any], licence: str,
         plots: list[str]) -> str:
    m = version.manifest
    recipe = m.get("recipe") or "unknown"
    tasks, tags = card_tags(m)
    header = {
        "license": licence,
        "task_categories": tasks,
        "tags": ["lendata", *tags],
        "size_categories": [size_category(version.rows())],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in files]}],
    }
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {version.dataset} {version.version}", "",
        f"Built by [lendata](https://github.com/) with the `{recipe}` recipe.", "",
        "| | |", "|---|---|",
        f"| version | {version.version} |",
        f"| created | {m.get('created', '')} |",
        f"| engine | {m.get('engine') or '—'} |",
        f"| model | {public_name(m.get('model')) or '—'} |",
        f"| content hash | `{m.get('content_hash', '')}` |",
        "", "## Splits", "", "| split | rows | files |", "|---|---|---|",
        *[f"| {s} | {stats['splits'][s]['rows']:,} | {len(f)} |" for s, f in files.items()],
        "", "## Lengths (words)", "", "| split | column | rows | mean | p10 | p50 | p90 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in files:
        for col, ls in stats["splits"][split]["lengths"].items():
            if ls.get("rows") and ls.get("p90_words", 0) > 1:  # skip ids, labels and other one-word columns
                lines.append(f"| {split} | {col} | {ls['rows']:,} | {ls['mean_words']:,} | {ls['p10_words']:,} | "
                             f"{ls['p50_words']:,} | {ls['p90_words']:,} | {ls['max_words']:,} |")
    from lendata.methods import method_of

    method = method_of(m)
    local = (*method.inputs, *method.local_settings) if method else ()
    settings, withheld = public_settings(m.get("recipe_settings", {}), local)
    lines += ["", *([f"![{Path(p).stem}]({p})" for p in plots]), ""]
    inputs = m.get("inputs") or []
    if inputs:
        lines += ["## Inputs", "", "| setting | file | files | sha256 |", "|---|---|---|---|",
                  *[f"| {i.get('setting', '')} | {public_name(i.get('name'))} | {i.get('files', 1)} | "
                    f"`{i.get('sha256', '')}` |" for i in inputs], ""]
    lines += ["## Recipe", "", "```json", json.dumps(settings, indent=2, ensure_ascii=False, default=str), "```", ""]
    if withheld:
        lines += [f"Local settings withheld from this card (paths, servers, run settings): {', '.join(withheld)}.",
                  ""]
    return "\n".join(lines)


EXPORT_README = "README.md"
EXPORT_TMP = ".lendata-export-"  # in the names of an export's temporary folders: `.<target><this><id>.tmp`


def _clean_killed_exports(target: Path) -> None:
    """Delete the temporary folders that killed exports to `target` left, and only those: the name must be
    ours (the target's name escaped for glob) and no live export may hold the folder's lock."""
    for old in target.parent.glob(f".{glob.escape(target.name)}{EXPORT_TMP}*.tmp"):
        if old.is_symlink() or not old.is_dir():
            continue
        fd = os.open(old, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(old, ignore_errors=True)  # with the lock held: nobody can take the folder over meanwhile
        except BlockingIOError:
            continue  # a live export of the same target
        finally:
            os.close(fd)


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a lendata export and nothing else: a README.md dataset card tagged `lendata`,
    `data/*.parquet` and `plots/*.png`. Only such a folder may be replaced by `export --overwrite`."""
    try:
        text = (folder / EXPORT_README).read_text(encoding="utf-8")
        header = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, IndexError):
        return False
    if not isinstance(header, dict) or "lendata" not in (header.get("tags") or []):
        return False
    allowed = {"data": ".parquet", "plots": ".png"}
    for entry in folder.iterdir():
        if entry.name == EXPORT_README and entry.is_file() and not entry.is_symlink():
            continue
        suffix = allowed.get(entry.name)
        if suffix is None or entry.is_symlink() or not entry.is_dir():
            return False
        if any(f.is_symlink() or not f.is_file() or f.suffix != suffix for f in entry.iterdir()):
            return False
    return True


def check_target(version: st.Version, target: Path, overwrite: bool) -> Path:
    """The resolved export folder, or ExportError: never in a store, a committed version or around the version's
    store (the rule every output option follows, `paths.check_output`); a non-empty folder only with
    `overwrite`, and only when it is an earlier lendata export."""
    from lendata.paths import check_output

    try:
        t = check_output(target, version.store, "the export folder")
    except ValueError as e:
        raise ExportError(str(e)) from None
    if t.exists() and not t.is_dir():
        raise ExportError(f"{target} exists and is not a folder")
    if t.is_dir() and any(t.iterdir()):
        if not overwrite:
            raise ExportError(f"{target} is not empty (pass --overwrite to replace an earlier export)")
        if not is_export(t):
            raise ExportError(f"{target} is not an earlier lendata export (README.md card tagged lendata, data/, "
                              "plots/ and nothing else): refusing to replace it; choose an empty folder")
    return t


def export(version: st.Version, target: Path, licence: str = "other", plots: list[Path] | None = None,
           overwrite: bool = False, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the Hub layout of `version` into `target`, atomically: the layout is built in a hidden sibling
    folder and then renamed (or, replacing an earlier export, exchanged) into place, so a reader finds the old
    export or the new one, whole. `stats` is the version's `describe()`, when the caller has it already."""
    target = check_target(version, target, overwrite)
    splits = [s for s in version.splits if s not in SKIP_SPLITS and version.splits[s]["files"]]
    if not splits:
        raise ExportError(f"{version.dataset}@{version.version} has no data split to export")
    stats = stats or describe(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_killed_exports(target)
    tag = uuid.uuid4().hex[:8]
    # made under a name the cleaner does not match, locked, and only then given its findable name: a concurrent
    # export of the same target can never see it unlocked
    private = target.parent / f".{target.name}.lendata-new-{tag}"
    (private / "data").mkdir(parents=True)
    owner = os.open(private, os.O_RDONLY)
    fcntl.flock(owner, fcntl.LOCK_EX)  # held while this export lives; a later export sees it is not orphaned
    tmp = target.parent / f".{target.name}{EXPORT_TMP}{tag}.tmp"
    os.rename(private, tmp)
    try:
        files: dict[str, list[str]] = {}
        for split in splits:
            sources = version.files(split)
            n = len(sources)
            files[split] = []
            for i, src in enumerate(sources):
                rel = f"data/{split}-{i:05d}-of-{n:05d}.parquet"
                entry = version.splits[split]["files"][i]
                try:
                    data = src.read_bytes()
                except FileNotFoundError:
                    data = b""
                # the bytes exported are the bytes the manifest (and so the card) describes: a version replaced
                # with --overwrite while it was being exported is caught here, not published mixed
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ExportError(f"{version.dataset}@{version.version} changed while it was exported "
                                      f"({entry['path']} no longer has its manifest sha256); export it again")
                if st.partitions(entry["path"]):
                    # hive partition values live in the path: write them into the file, the Hub has no paths
                    table = st.with_partitions(pq.read_table(pa.BufferReader(data)), entry["path"])
                    st.write_parquet_atomic(table, tmp / rel)
                else:
                    (tmp / rel).write_bytes(data)
                files[split].append(rel)
        copied = []
        for p in plots or []:
            (tmp / "plots").mkdir(exist_ok=True)
            shutil.copyfile(p, tmp / "plots" / p.name)
            copied.append(f"plots/{p.name}")
        (tmp / EXPORT_README).write_text(card(version, files, stats, licence, copied), encoding="utf-8")
        fsync_tree(tmp)
        try:
            if target.exists():
                exchange(tmp, target)  # tmp now holds the earlier export, deleted below
            else:
                os.rename(tmp, target)
        except OSError as e:
            raise ExportError(f"cannot move the export into {target}: {e.strerror or e}") from None
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(owner)
    return {"path": str(target), "splits": {s: stats["splits"][s]["rows"] for s in splits},
            "files": sum(len(f) for f in files.values()) + 1 + len(plots or [])}


class PushError(RuntimeError):
    pass


def hub_token() -> str | None:
    """`HF_TOKEN`, else the token `hf auth login` stored. Never printed or written anywhere by lendata."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


KEPT_REMOTE = {".gitattributes"}  # the Hub's own repository settings (LFS rules), not part of a version


def push(version: st.Version, repo: str, private: bool | None = None, dry_run: bool = False,
         licence: str = "other", plots: list[Path] | None = None, endpoint: str | None = None,
         stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Upload the Hub layout of `version` to dataset repo `repo` in one commit tagged `v<version>`.

    The commit adds every file of the export and deletes every other file of the repo (but `.gitattributes`),
    so the tree at the tag is the version's export, file for file; it is made on top of the head that was
    listed (`parent_commit`), so a concurrent push cannot slip files in between. `private` True/False asks for
    that visibility: a new repo is created so, and an existing repo with the other visibility is refused
    before anything is uploaded (lendata never changes a repo's visibility); None keeps an existing repo's
    and creates a public one. A tag that already exists is never moved. `dry_run` exports and lists the files
    without any network call.
    """
    import tempfile

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if "/" not in repo or repo.count("/") != 1 or not all(repo.split("/")):
        raise PushError(f"--repo takes ORG/NAME, got {repo!r}")
    tag = f"v{version.version}"
    with tempfile.TemporaryDirectory(prefix="lendata-push-") as tmp:
        folder = Path(tmp) / "hub"
        exported = export(version, folder, licence=licence, plots=plots, stats=stats)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        plan = {"repo": repo, "tag": tag, "files": files, "splits": exported["splits"], "private": private}
        if dry_run:
            return {**plan, "dry_run": True}
        token = hub_token()
        if not token:
            raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
        if constants.is_offline_mode():
            raise PushError("HF_HUB_OFFLINE is set: unset it to push")
        api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT, token=token)
        try:
            user = api.whoami()
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            raise PushError(f"the Hub at {api.endpoint} refused the token (HTTP {status}): check HF_TOKEN or "
                            "`hf auth login`") from None
        try:
            try:
                info = api.dataset_info(repo)
            except RepositoryNotFoundError:
                api.create_repo(repo, repo_type="dataset", private=bool(private), exist_ok=True)
                info = api.dataset_info(repo)
            if private is not None and bool(info.private) != private:
                have, want = ("private", "--public") if info.private else ("public", "--private")
                raise PushError(f"{repo} exists and is {have}, but {want} was asked for: lendata does not change "
                                "a repo's visibility; change it on the Hub or push without the flag")
            tags = {t.name for t in api.list_repo_refs(repo, repo_type="dataset").tags}
            if tag in tags:
                raise PushError(f"{repo} already has tag {tag}: a published version is never replaced; "
                                "build a new version and push that")
            head = info.sha
            remote = set(api.list_repo_files(repo, repo_type="dataset", revision=head)) if head else set()
            stale = sorted(remote - set(files) - KEPT_REMOTE)
            operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
            operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
            commit = api.create_commit(repo, operations, repo_type="dataset", parent_commit=head,
                                       commit_message=f"{version.dataset} {version.version} (lendata)",
                                       commit_description=f"content hash {version.manifest.get('content_hash')}")
            api.create_tag(repo, tag=tag, revision=commit.oid, repo_type="dataset",
                           tag_message=f"{version.dataset} {version.version}")
            from huggingface_hub.hf_api import RepoFile

            served = {f.path: f.size for f in api.list_repo_tree(repo, repo_type="dataset", revision=tag,
                                                                   recursive=True)
                      if isinstance(f, RepoFile) and f.path not in KEPT_REMOTE}
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            raise PushError(f"the Hub refused the push of {repo} (HTTP {status}): {str(e).splitlines()[0]}") from None
        local = {f: (folder / f).stat().st_size for f in files}
        if served != local:  # checked, not assumed: the tag must serve this version's files and nothing else
            raise PushError(f"{repo} at {tag} does not hold exactly the export of {version.dataset}@"
                            f"{version.version}: extra {sorted(set(served) - set(local))}, missing "
                            f"{sorted(set(local) - set(served))}, other sizes "
                            f"{sorted(f for f in set(local) & set(served) if local[f] != served[f])}")
    return {**plan, "dry_run": False, "commit": commit.oid, "commit_url": commit.commit_url, "deleted": stale,
            "user": user.get("name")}

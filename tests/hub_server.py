"""A loopback stand-in for the Hugging Face Hub: the endpoints `lendata push` calls through huggingface_hub
(whoami, create repo, repo info, refs, tree, validate-yaml, preupload, commit with added and deleted files and
a parent commit, tag), with repos kept in memory as a tree per commit.

Every file is accepted as a regular (base64) upload, as the Hub does for small files, so no LFS or Xet
storage is involved. Requests are recorded so a test can check what was sent. `seed_files` puts files into a
repo as an earlier commit would have (a stale shard, a file someone else uploaded).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote


@dataclass
class Repo:
    private: bool
    commits: list[dict[str, Any]] = field(default_factory=list)  # each with the whole `tree` at that commit
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    @property
    def files(self) -> dict[str, bytes]:
        return dict(self.commits[-1]["tree"]) if self.commits else {}

    def tree_at(self, ref: str) -> dict[str, bytes]:
        """The files at a tag, a commit id or `main`."""
        oid = self.tags.get(ref, self.head if ref == "main" else ref)
        return dict(next(c["tree"] for c in self.commits if c["oid"] == oid))

    def add_commit(self, summary: str, added: dict[str, bytes], deleted: list[str]) -> str:
        tree = {p: b for p, b in self.files.items() if p not in deleted and not any(
            p.startswith(d.rstrip("/") + "/") for d in deleted)}
        tree.update(added)
        oid = hashlib.sha1(self.head.encode() + json.dumps(sorted(tree)).encode()).hexdigest()
        self.commits.append({"oid": oid, "summary": summary, "files": sorted(added), "deleted": sorted(deleted),
                             "tree": tree})
        return oid


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_served = 0  # file bytes sent: a streamed read sends what it reads, not whole files
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 404 and "Repository not found" in str(body):  # what huggingface_hub reads
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hub.requests.append((method, self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                path, _, query = self.path.partition("?")
                if method in ("GET", "HEAD") and path.startswith("/datasets/"):
                    return self._file(method, path)
                status, reply = hub.route(method, path, body, self.base, query)
                self._send(status, reply)

            def _file(self, method: str, path: str) -> None:
                """A file download (`/datasets/ORG/NAME/resolve/REV/PATH`), honouring a byte Range."""
                m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", unquote(path))
                repo = hub.repos.get(m.group(1)) if m else None
                data = repo.tree_at(m.group(2)).get(m.group(3)) if repo and repo.commits else None
                if data is None:
                    return self._send(404, {"error": "Entry not found"})
                start, end = 0, len(data) - 1
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if rng:
                    start, end = int(rng.group(1)), min(int(rng.group(2) or end), end)
                part = data[start:end + 1]
                hub.bytes_served += len(part) if method == "GET" else 0
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(part)))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", repo.head)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if method == "GET":
                    self.wfile.write(part)

            @property
            def base(self) -> str:
                return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_HEAD(self) -> None:  # noqa: N802
                self._handle("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seed_files(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        repo = self.repos.setdefault(repo_id, Repo(private=private))
        return repo.add_commit("seeded by the test", files, [])

    def route(self, method: str, path: str, body: bytes, base: str, query: str = "") -> tuple[int, Any]:
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": "tester", "orgs": [], "auth": {"type": "access_token"}}
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{base}/datasets/{repo_id}"}
            self.repos[repo_id] = Repo(private=req.get("visibility") == "private" or bool(req.get("private")))
            return 200, {"url": f"{base}/datasets/{repo_id}"}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        m = re.fullmatch(
            r"/api/datasets/([^/]+/[^/]+)(?:/(refs|preupload|commit|tag|tree|revision|paths-info)(?:/(.+))?)?",
            unquote(path))
        if not m or m.group(1) not in self.repos:
            return 404, {"error": f"Repository not found: {path}"}
        repo_id, repo, action = m.group(1), self.repos[m.group(1)], m.group(2)
        if action in (None, "revision") and method == "GET":
            head = repo.head if repo.commits else None
            return 200, {"id": repo_id, "private": repo.private, "sha": head,
                         "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
        if action in ("tree", "paths-info"):
            revision, _, under = (m.group(3) or "main").partition("/")
            try:
                tree = repo.tree_at(revision) if repo.commits else {}
            except StopIteration:
                return 404, {"error": f"Revision not found: {revision}"}
            entries = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for p, b in sorted(tree.items())]
            folders = sorted({"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)})
            entries = [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders] + entries
            if action == "paths-info":  # the entries of the paths asked for (a form post)
                wanted = set(parse_qs(body.decode()).get("paths", []))
                return 200, [e for e in entries if e["path"] in wanted]
            if under:  # a folder's children; all its descendants with recursive=true
                recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
                entries = [e for e in entries if e["path"].startswith(under.rstrip("/") + "/") and (
                    recursive or "/" not in e["path"][len(under.rstrip("/")) + 1:])]
            elif parse_qs(query).get("recursive", ["true"])[0].lower() == "false":
                entries = [e for e in entries if "/" not in e["path"]]
            return 200, entries
        if action == "refs":
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo.tags.items()]
            return 200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
                         "converts": [], "pullRequests": [], "tags": tags}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]}
        if action == "commit":
            lines = [json.loads(x) for x in body.splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            parent = header.get("parentCommit")
            if parent and parent != repo.head:  # the Hub refuses a commit whose parent is not the head
                return 412, {"error": f"A commit has happened since. Please refresh and try again ({parent})"}
            added = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            deleted = [x["value"]["path"] for x in lines if x["key"] in ("deletedFile", "deletedFolder")]
            oid = repo.add_commit(header.get("summary"), added, deleted)
            return 200, {"commitUrl": f"{base}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}
        if action == "tag":
            tag = json.loads(body)["tag"]
            if tag in repo.tags:
                return 409, {"error": f"Tag {tag} already exists"}
            repo.tags[tag] = m.group(3)
            return 200, {}
        return 404, {"error": "unknown endpoint"}

"""A small in-process stand-in for the Hugging Face Hub HTTP API, for tests.

``LocalHub`` is a standard-library HTTP server (``ThreadingHTTPServer``, HTTP/1.1, keep-alive, no Nagle
delay) bound to ``127.0.0.1`` on a free port. It speaks the part of the Hub API that the real
``huggingface_hub`` client (2.x, Xet disabled) uses to push and pull a repo, so ``create_repo``,
``create_commit`` (incl. ``parent_commit``), ``upload_folder``, ``create_tag``/``create_branch``,
``list_repo_refs``, ``list_repo_tree``/``list_repo_files``, ``get_paths_info``, ``model_info``/``repo_info``,
``hf_hub_download``, ``snapshot_download`` and ``HfFileSystem`` range reads run unchanged against it::

    with LocalHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_local")   # or patch the client, see tests/hubfixtures.py
        ...
        hub.tamper("me/repo", "weights.bin", b"evil")           # corrupt a stored blob behind the client's back

Endpoints (``{t}`` is ``models``, ``datasets`` or ``spaces``; URL prefix ``{p}`` is empty, ``datasets/`` or
``spaces/``; revisions and paths are URL-decoded; a revision is a branch, a tag, ``refs/heads/x``,
``refs/tags/x``, ``refs/pr/N`` or a (unique prefix of a) commit sha)::

    POST   /api/repos/create                       409 {"url"} if it exists (so exist_ok=True works)
    DELETE /api/repos/delete
    GET    /api/{t}/{repo}[/revision/{rev}]        repo info: sha, siblings (+size/lfs with ?blobs=true)
    POST   /api/{t}/{repo}/preupload/{rev}         uploadMode regular|lfs, shouldIgnore (gitIgnore), oid
    POST   /{p}{repo}.git/info/lfs/objects/batch   LFS batch: upload+verify actions (none if already stored)
    PUT    /_lfs/{t}/{repo}/{oid}                  raw bytes; sha256 must equal oid (else 400)
    POST   /_lfs/{t}/{repo}/{oid}/verify           {"oid","size"} must match an uploaded object
    POST   /api/{t}/{repo}/commit/{rev}            NDJSON header/file/lfsFile/deletedFile/deletedFolder;
                                                   parentCommit != head -> 412; ?create_pr=1 -> refs/pr/N
    GET    /api/{t}/{repo}/tree/{rev}[/{path}]     ?recursive=, ?expand= (lastCommit); one page, no Link
    POST   /api/{t}/{repo}/paths-info/{rev}        form or JSON: paths, expand
    GET    /api/{t}/{repo}/commits/{rev}           first-parent history, newest first
    GET    /api/{t}/{repo}/refs                    branches, tags, converts, pullRequests (?include_prs=1)
    POST   /api/{t}/{repo}/tag/{rev}  | DELETE /api/{t}/{repo}/tag/{tag}
    POST   /api/{t}/{repo}/branch/{b} | DELETE /api/{t}/{repo}/branch/{b}   (body startingPoint)
    HEAD/GET /{p}{repo}/resolve/{rev}/{path}       X-Repo-Commit, ETag (git blob sha1, or the sha256 for LFS
                                                   files, also sent as X-Linked-Etag with X-Linked-Size),
                                                   Content-Length, Accept-Ranges; Range -> 206 / 416
    PUT    /api/{t}/{repo}/settings                {"visibility": "private"|"public"} (or {"private": bool})
    POST   /api/validate-yaml, GET /api/whoami-v2  trivial answers

Private repos: ``create_repo(private=True)`` (or ``visibility``) makes one; a request without an
``Authorization`` header gets 401 RepoNotFound for it, as the Hub answers a stranger; any token is
accepted (never logged), and ``model_info`` reports ``private``. ``LocalHub.plant`` commits a file
of any advertised size whose bytes are made on demand (zeros), so a test can offer a 300 MB file
and check from ``requests`` that the client never asked for it.

Simplified: state is in memory and dies with the server; no gated repos, no pagination, no Xet (the ``xet-*-token`` routes answer 400
telling you to set ``HF_HUB_DISABLE_XET=1``), no multipart LFS, no LFS redirects to a CDN (files are
served directly with 200/206), no merges, commit ids are random-ish 40-hex sha1s (not real git objects),
one ``.gitattributes`` initial commit like the Hub makes (``LocalHub(gitattributes=False)`` for none).
Errors are JSON ``{"error": ...}`` with the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound,
EntryNotFound) so the client raises its typed errors; a bug in this server answers 501 (never retried).
A file goes to LFS if its suffix is in ``LFS_SUFFIXES``, its 512-byte sample has a NUL byte, or its size
is at least ``lfs_threshold``. Blobs are stored per repo by sha256, so ``tamper`` corrupts every file
(in every commit of that repo) with that content, while the advertised etag/size stay the same.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import re
import socket
import socketserver
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".gguf", ".npy", ".npz", ".pkl", ".onnx",
                ".h5", ".msgpack", ".zip", ".tar", ".gz", ".arrow", ".parquet")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO = r"[^/]+(?:/[^/]+)?"
_ROUTES = [  # (method, regex on the still-percent-encoded path, handler name)
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "ok"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", rf"/(?:(?P<p>datasets|spaces)/)?(?P<repo>{_REPO})\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/_lfs/(?P<t>\w+)/(?P<repo>.+)/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("POST", r"/_lfs/(?P<t>\w+)/(?P<repo>.+)/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
    ("GET", rf"/api/(?P<t>models|datasets|spaces)/(?P<repo>{_REPO})(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("GET", rf"/api/(?P<t>models|datasets|spaces)/(?P<repo>{_REPO})/refs", "refs"),
    ("PUT", rf"/api/(?P<t>models|datasets|spaces)/(?P<repo>{_REPO})/settings", "settings"),
    ("*", rf"/api/(?P<t>models|datasets|spaces)/(?P<repo>{_REPO})/(?P<op>preupload|commit|tree|paths-info"
          r"|commits|tag|branch|xet-\w+-token)/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "repo_op"),
    ("GET", rf"/(?:(?P<p>datasets|spaces)/)?(?P<repo>{_REPO})/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
_ROUTES = [(m, re.compile(rx + "$"), h) for m, rx, h in _ROUTES]


class HubError(Exception):
    """An HTTP error answered as JSON ``{"error": message}`` plus the Hub's ``X-Error-*`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Entry:
    """One file in a commit: its content digest (the blob key) and how the Hub advertises it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob sha1 of the content (regular) or of the LFS pointer (lfs)
    pointer_size: int = 0

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        return cls.lfs_file(sha, len(data)) if lfs else cls(sha, len(data), False, _git_oid(data))

    @classmethod
    def lfs_file(cls, sha256: str, size: int) -> Entry:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return cls(sha256, size, True, _git_oid(pointer), len(pointer))


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: ``files`` maps path -> Entry."""

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict


class Filler:
    """Content of a planted file: ``size`` zero bytes, made only when someone downloads them."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self.size)
        return bytes(max(stop - start, 0))


class Repo:
    def __init__(self, repo_type: str, repo_id: str, gitattributes: bool, private: bool = False):
        self.type, self.id, self.created, self.private = repo_type, repo_id, _now(), private
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (the LFS store and the git store together)
        self.commits: dict[str, Commit] = {}
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.prs: dict[int, str] = {}
        files = {}
        if gitattributes:
            files[".gitattributes"] = self.store(GITATTRIBUTES, lfs=False)
        self.branches["main"] = self.new_commit(None, "initial commit", "", files).oid

    def store(self, data: bytes, lfs: bool) -> Entry:
        entry = Entry.make(data, lfs)
        self.blobs.setdefault(entry.sha256, bytes(data))
        return entry

    def new_commit(self, parent: str | None, title: str, message: str, files: dict) -> Commit:
        seed = json.dumps([parent, title, message, sorted((p, e.git_oid) for p, e in files.items()),
                           time.time_ns(), len(self.commits)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, _now(), dict(files))
        self.commits[commit.oid] = commit
        return commit

    def ref_of(self, rev: str) -> tuple[dict, object] | None:
        """The (mapping, key) a branch-like revision lives in, or None (tags and shas are not committable)."""
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/"):]
        if rev in self.branches:
            return self.branches, rev
        m = re.fullmatch(r"refs/pr/(\d+)", rev)
        if m and int(m[1]) in self.prs:
            return self.prs, int(m[1])
        return None

    def resolve(self, rev: str) -> Commit:
        ref = self.ref_of(rev)
        if ref is not None:
            return self.commits[ref[0][ref[1]]]
        tag = rev[len("refs/tags/"):] if rev.startswith("refs/tags/") else rev
        if tag in self.tags:
            return self.commits[self.tags[tag]]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            hits = [oid for oid in self.commits if oid.startswith(rev)]
            if len(hits) == 1:
                return self.commits[hits[0]]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def last_commit(self, commit: Commit, path: str) -> dict:
        """The newest first-parent commit that changed ``path`` (a file or a folder)."""

        def view(c: Commit):
            return sorted((p, e) for p, e in c.files.items() if p == path or p.startswith(path + "/"))

        current = view(commit)
        while commit.parent is not None and view(self.commits[commit.parent]) == current:
            commit = self.commits[commit.parent]
        return {"id": commit.oid, "title": commit.title, "date": commit.date}


class LocalHub:
    """In-memory Hub server. ``with LocalHub() as hub: hub.endpoint`` (``start()``/``close()`` also work).

    ``hub.requests`` records ``(method, path, status, range_header)`` for every request (never headers
    such as ``Authorization``), so tests can assert e.g. that a download used LFS or a byte range.
    """

    def __init__(self, *, lfs_threshold: int = 10 * 1024 * 1024, gitattributes: bool = True):
        self.lfs_threshold, self.gitattributes = lfs_threshold, gitattributes
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int, str | None]] = []
        self.client_env: dict[str, str] = {}  # env vars for client subprocesses (set by tests/hubfixtures.py)
        self.lock = threading.RLock()  # guards all state; held across each commit's compare-and-swap
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> LocalHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.close_connections()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            if (repo_type, repo_id) not in self.repos:
                raise HubError(404, "Repository not found", "RepoNotFound")
            return self.repos[(repo_type, repo_id)]

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """The bytes the server currently serves for ``path`` at ``revision``."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            return repo.blobs[repo.resolve(revision).files[path].sha256]

    def tamper(self, repo_id: str, path: str, new_bytes: bytes, revision: str = "main",
               repo_type: str = "model") -> None:
        """Replace the stored content of ``path`` (as of ``revision``) in place, keeping its advertised
        etag, sha256 and size; every file of the repo sharing that content is affected. Same-length bytes
        download silently; for an LFS file a different length makes the client's size check fail
        (X-Linked-Size is the advertised size, Content-Length the real one)."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            repo.blobs[repo.resolve(revision).files[path].sha256] = bytes(new_bytes)

    def plant(self, repo_id: str, path: str, size: int, branch: str = "main", repo_type: str = "model") -> str:
        """Commit ``path`` on ``branch`` as an LFS file of ``size`` bytes (zeros, made on demand; its
        advertised sha256 is not theirs). Returns the new commit id."""
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            sha = hashlib.sha256(f"planted {path} {size} {time.time_ns()}".encode()).hexdigest()
            repo.blobs[sha] = Filler(size)  # type: ignore[assignment]
            head = repo.commits[repo.branches[branch]]
            commit = repo.new_commit(head.oid, f"plant {path}", "", {**head.files, path: Entry.lfs_file(sha, size)})
            repo.branches[branch] = commit.oid
            return commit.oid

    def requested(self, path_part: str, methods: tuple[str, ...] = ("GET", "HEAD")) -> list[tuple]:
        """The recorded requests whose (URL-decoded) path contains ``path_part``."""
        return [r for r in list(self.requests) if r[0] in methods and path_part in unquote(r[1])]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        with self.lock:
            return self.repo(repo_id, repo_type).branches[branch]

    def should_use_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample or size >= self.lfs_threshold


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    hub: LocalHub
    conns: set

    def __init__(self, *args):
        self.conns = set()
        super().__init__(*args)

    def server_bind(self):  # skip HTTPServer's socket.getfqdn(), which may block on reverse DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self):  # unblock handler threads parked on idle keep-alive sockets
        for sock in list(self.conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):  # quiet; see LocalHub.requests
        pass

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._dispatch()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():  # header values must be latin-1: keep them ASCII
            self.send_header(key, str(value).encode("ascii", "backslashreplace").decode())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            if isinstance(body, Filler):
                try:
                    for start in range(0, len(body), 1 << 20):
                        self.wfile.write(body[start:start + (1 << 20)])
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: fine
                    self.close_connection = True
                    return
            else:
                self.wfile.write(body)
        self.server.hub.requests.append((self.command, self.path, status, self.headers.get("Range")))

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self) -> None:
        self.hub = self.server.hub
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.raw = self._body()  # always drain the body so the keep-alive stream stays in sync
        try:
            for method, rx, name in _ROUTES:
                m = rx.match(url.path)
                if m and (method == "*" or method == self.command or (method, self.command) == ("GET", "HEAD")):
                    groups = {k: unquote(v) if v is not None else None for k, v in m.groupdict().items()}
                    return getattr(self, "h_" + name)(**groups)
            raise HubError(404, f"Not found: {self.command} {url.path}")
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            self._json({"error": e.message}, e.status, headers)
        except Exception as e:  # a bug here: answer 501 (not retried by the client, unlike 500)
            traceback.print_exc()
            self._json({"error": f"LocalHub internal error: {e!r}"}, 501)

    def _payload(self) -> dict:
        if not self.raw:
            return {}
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v if k == "paths" else v[-1] for k, v in parse_qs(self.raw.decode()).items()}
        return json.loads(self.raw)

    def _repo(self, t: str | None, repo: str) -> Repo:
        r = self.hub.repo(repo, _TYPES.get(t or "models", t or "model"))
        if r.private and not self.headers.get("Authorization"):
            raise HubError(401, "Repository Not Found", "RepoNotFound")
        return r

    def _url(self, repo: Repo) -> str:
        return f"{self.hub.endpoint}/{_PREFIX[repo.type]}{repo.id}"

    def h_ok(self):
        self._json({})

    def h_whoami(self):
        self._json({"type": "user", "name": "local-user", "fullname": "Local User", "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def h_create_repo(self):
        body = self._payload()
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        with self.hub.lock:
            exists = (repo_type, repo_id) in self.hub.repos
            if not exists:
                private = body.get("visibility", "private" if body.get("private") else "public") == "private"
                self.hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, self.hub.gitattributes, private)
            repo = self.hub.repos[(repo_type, repo_id)]
        if exists:
            return self._json({"error": "You already created this model repo", "url": self._url(repo)}, 409)
        self._json({"url": self._url(repo), "name": repo_id, "id": repo_id})

    def h_delete_repo(self):
        body = self._payload()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        with self.hub.lock:
            if self.hub.repos.pop((body.get("type") or "model", repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        self._json({})

    def h_info(self, t, repo, rev=None):
        with self.hub.lock:
            r = self._repo(t, repo)
            commit = r.resolve(rev or "main")
            blobs = self.query.get("blobs", "").lower() in ("1", "true")
            siblings = []
            for path, e in sorted(commit.files.items()):
                sib = {"rfilename": path}
                if blobs:
                    sib.update(size=e.size, blobId=e.git_oid)
                    if e.lfs:
                        sib["lfs"] = {"size": e.size, "sha256": e.sha256, "pointerSize": e.pointer_size}
                siblings.append(sib)
        author = repo.split("/")[0] if "/" in repo else None
        info = {"_id": hashlib.md5(repo.encode()).hexdigest()[:24], "id": repo, "author": author,
                "sha": commit.oid, "lastModified": commit.date, "createdAt": r.created, "private": r.private,
                "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if r.type == "model":
            info["modelId"] = repo
        if r.type == "space":
            info.update(sdk="static", runtime={"stage": "RUNNING", "hardware": {"current": None}})
        self._json(info)

    def h_settings(self, t, repo):
        body = self._payload()
        with self.hub.lock:
            r = self._repo(t, repo)
            if "visibility" in body:
                r.private = body["visibility"] == "private"
            elif "private" in body:
                r.private = bool(body["private"])
        self._json({})

    def h_refs(self, t, repo):
        with self.hub.lock:
            r = self._repo(t, repo)
            out = {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                for b, c in r.branches.items()],
                   "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in r.tags.items()],
                   "converts": []}
            if self.query.get("include_prs"):
                out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                                       for n, c in r.prs.items()]
        self._json(out)

    def h_repo_op(self, t, repo, op, rev, path=None):
        if op.startswith("xet-"):
            raise HubError(400, "LocalHub does not implement Xet storage: set HF_HUB_DISABLE_XET=1 "
                                "(or huggingface_hub.constants.HF_HUB_DISABLE_XET = True)")
        if op in ("tag", "branch"):
            return getattr(self, f"{op}_{'delete' if self.command == 'DELETE' else 'create'}")(t, repo, rev)
        with self.hub.lock:  # the whole operation (e.g. a commit's compare-and-swap) is atomic
            out = getattr(self, "op_" + op.replace("-", "_"))(self._repo(t, repo), rev, path)
        self._json(out)

    def op_preupload(self, r: Repo, rev, _):
        body = self._payload()
        files = r.resolve(rev).files
        ignore = [ln.strip() for ln in (body.get("gitIgnore") or "").splitlines()
                  if ln.strip() and not ln.startswith("#")]
        out = []
        for f in body.get("files", []):
            lfs = self.hub.should_use_lfs(f["path"], f.get("size", 0), base64.b64decode(f.get("sample", "")))
            old = files.get(f["path"])
            ignored = any(fnmatch.fnmatch(f["path"], p) or fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], p)
                          for p in ignore)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignored,
                        "oid": None if old is None else (old.sha256 if old.lfs else old.git_oid)})
        return {"files": out, "commitOid": r.resolve(rev).oid}

    def h_lfs_batch(self, repo, p=None):
        body = self._payload()
        with self.hub.lock:
            r = self._repo(p, repo)
            base = f"{self.hub.endpoint}/_lfs/{r.type}s/{r.id}"
            objects = []
            for o in body.get("objects", []):
                obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                if o["oid"] not in r.blobs and body.get("operation", "upload") == "upload":
                    obj["actions"] = {"upload": {"href": f"{base}/{o['oid']}", "header": {}},
                                      "verify": {"href": f"{base}/{o['oid']}/verify", "header": {}}}
                objects.append(obj)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_put(self, t, repo, oid):
        if hashlib.sha256(self.raw).hexdigest() != oid:
            raise HubError(400, f"LFS upload: sha256 of the {len(self.raw)} bytes received does not match {oid}")
        with self.hub.lock:
            self.hub.repo(repo, _TYPES.get(t, t)).blobs.setdefault(oid, self.raw)  # pre-signed: no token needed
        self._send(200, headers={"ETag": f'"{hashlib.md5(self.raw).hexdigest()}"'})

    def h_lfs_verify(self, t, repo, oid):
        body = self._payload()
        with self.hub.lock:
            data = self.hub.repo(repo, _TYPES.get(t, t)).blobs.get(oid)  # pre-signed: no token needed
        if data is None or body.get("oid") != oid or body.get("size") != len(data):
            raise HubError(404, f"LFS verify failed for {oid}: object missing or size mismatch")
        self._json({"success": True})

    def op_commit(self, r: Repo, rev, _):
        lines = [json.loads(ln) for ln in self.raw.decode().splitlines() if ln.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
        if self.query.get("create_pr") in ("1", "true"):
            head_oid, ref = r.resolve(rev).oid, (r.prs, max(r.prs, default=0) + 1)
        else:
            ref = r.ref_of(rev)
            if ref is None:
                r.resolve(rev)  # 404 RevisionNotFound if it does not exist at all
                raise HubError(400, f"Invalid rev id: {rev} is not a branch")
            head_oid = ref[0][ref[1]]
            parent = (header.get("parentCommit") or "").lower()
            if parent and not head_oid.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
        head = r.commits[head_oid]
        files = dict(head.files)
        for line in lines:
            key, value = line["key"], line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                files[path] = r.store(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = r.blobs.get(value["oid"])
                if data is None or value.get("size", len(data)) != len(data):
                    raise HubError(422, f"LFS object {value['oid']} for '{path}' was not uploaded")
                files[path] = Entry.lfs_file(value["oid"], value.get("size", len(data)))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            elif key != "header":
                raise HubError(400, f"Unsupported commit operation: {key}")
        commit = r.new_commit(head.oid, header.get("summary", ""), header.get("description", ""), files)
        ref[0][ref[1]] = commit.oid  # the compare-and-swap: still under hub.lock since the parent check
        out = {"success": True, "commitOid": commit.oid, "commitUrl": f"{self._url(r)}/commit/{commit.oid}",
               "hookOutput": ""}
        if ref[0] is r.prs:
            out["pullRequestUrl"] = f"{self._url(r)}/discussions/{ref[1]}"
        return out

    def tag_create(self, t, repo, rev):
        body = self._payload()
        with self.hub.lock:
            r = self._repo(t, repo)
            commit = r.resolve(rev)
            if body["tag"] in r.tags:
                raise HubError(409, f"Tag {body['tag']} already exists")
            r.tags[body["tag"]] = commit.oid
        self._json({"name": body["tag"], "ref": f"refs/tags/{body['tag']}", "targetCommit": commit.oid})

    def tag_delete(self, t, repo, tag):
        with self.hub.lock:
            if self._repo(t, repo).tags.pop(tag, None) is None:
                raise HubError(404, f"Tag {tag} not found", "RevisionNotFound")
        self._json({})

    def branch_create(self, t, repo, branch):
        body = self._payload()
        with self.hub.lock:
            r = self._repo(t, repo)
            commit = r.resolve(body.get("startingPoint") or "main")
            if branch in r.branches:
                raise HubError(409, f"Branch {branch} already exists")
            r.branches[branch] = commit.oid
        self._json({})

    def branch_delete(self, t, repo, branch):
        with self.hub.lock:
            r = self._repo(t, repo)
            if branch == "main" or r.branches.pop(branch, None) is None:
                raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch}")
        self._json({})

    def _entry_json(self, r: Repo, commit: Commit, path: str, expand: bool) -> dict:
        e = commit.files.get(path)
        if e is None:  # a folder
            out = {"type": "directory", "path": path, "size": 0,
                   "oid": hashlib.sha1(f"tree {commit.oid} {path}".encode()).hexdigest()}
        else:
            out = {"type": "file", "path": path, "size": e.size, "oid": e.git_oid}
            if e.lfs:
                out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
        if expand:
            out["lastCommit"] = r.last_commit(commit, path)
        return out

    @staticmethod
    def _dirs(files) -> set:
        return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}

    def op_tree(self, r: Repo, rev, path):
        commit = r.resolve(rev)
        path = (path or "").strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = self.query.get("expand", "").lower() in ("1", "true")
        dirs = self._dirs(commit.files)
        if path and path not in dirs:
            raise HubError(404, f"{path} is not a folder on {rev}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        prefix = path + "/" if path else ""
        names = [p for p in sorted(set(commit.files) | dirs) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix):]]
        return [self._entry_json(r, commit, p, expand) for p in names]

    def op_paths_info(self, r: Repo, rev, _):
        body = self._payload()
        commit = r.resolve(rev)
        paths = body.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        expand = str(body.get("expand", "")).lower() in ("1", "true")
        dirs = self._dirs(commit.files)
        wanted = [p.strip("/") for p in paths]
        return [self._entry_json(r, commit, p, expand) for p in wanted if p in commit.files or p in dirs]

    def op_commits(self, r: Repo, rev, _):
        commit, out = r.resolve(rev), []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date,
                        "authors": [{"user": "local-user"}], "parents": [commit.parent] if commit.parent else []})
            commit = r.commits.get(commit.parent) if commit.parent else None
        return out

    def h_resolve(self, repo, rev, path, p=None):
        with self.hub.lock:
            r = self._repo(p, repo)
            commit = r.resolve(rev)
            e = commit.files.get(path)
            if e is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            data = r.blobs[e.sha256]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{e.etag}"', "Accept-Ranges": "bytes"}
        if e.lfs:
            headers.update({"X-Linked-Etag": f'"{e.sha256}"', "X-Linked-Size": e.size})
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", (rng or "").strip())
        if rng and m and (m[1] or m[2]):
            size = len(data)
            start, end = (int(m[1]), int(m[2]) if m[2] else size - 1) if m[1] else (max(size - int(m[2]), 0), size - 1)
            end = min(end, size - 1)
            if start >= size or start > end:
                return self._send(416, headers={**headers, "Content-Range": f"bytes */{size}"},
                                  content_type="application/octet-stream")
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

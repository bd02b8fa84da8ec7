"""A local stand-in for the Hugging Face Hub, for tests.

It lets tests run the *real* ``huggingface_hub.hf_hub_download`` code path (HEAD for metadata, GET for the
content, cache layout, ``local_files_only``, error classes, resume with ``Range``) against a threaded HTTP
server on 127.0.0.1, so no test ever needs the network.

Usage from ``tests/conftest.py`` (pytest only sees fixtures defined or imported in conftest / the test module)::

    from hubserver import fake_hub  # noqa: F401

then, in a test::

    def test_download(fake_hub):
        commit = "a" * 40
        fake_hub.add_file("org/weights", commit, "prior.safetensors", b"...")   # also points "main" at commit
        path = hf_hub_download("org/weights", "prior.safetensors", revision=commit)
        assert fake_hub.file_gets("org/weights", "prior.safetensors") == 1

What the server answers, modelled on the Hub's ``/resolve`` endpoint as used by huggingface_hub 2.4.0:

* ``HEAD``/``GET /{repo}/resolve/{revision}/{filename}`` (datasets/spaces: ``/datasets/{repo}/...``), where
  ``revision`` is a 40-hex commit or a ref name (``main``, URL-quoted ``refs%2Fpr%2F1`` ...).
  - regular ("git") files: ``200`` with ``X-Repo-Commit``, ``ETag: "<git blob sha1>"``, ``Content-Length``,
    ``Accept-Ranges: bytes``; the GET carries the bytes.
  - LFS files (``lfs=True``, or by default anything >= ``lfs_threshold`` bytes or with a weights suffix): like the
    Hub, ``302`` to a "CDN" URL on a *different origin* (``http://localhost:{port}/_cdn/{sha256}`` - same server,
    other host name, so huggingface_hub does not follow it on HEAD and does not send auth there), with
    ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``. The GET then goes to the CDN URL.
  - ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> ``206`` + ``Content-Range``; unsatisfiable -> ``416``.
  - errors like the Hub: ``404`` + ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``
    (the latter with ``X-Repo-Commit``, so the client records ``.no_exist``), plus ``X-Error-Message``.
* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: a minimal model-info JSON (``id``, ``sha``,
  ``siblings``), enough for ``HfApi().model_info(...)`` to resolve a branch to a commit.
* anything else: plain ``404`` (e.g. ``/api/agent-harnesses``, which huggingface_hub only fetches with telemetry on).

Every request is recorded (``hub.requests``, ``hub.count(...)``, ``hub.file_gets(...)``) so tests can assert
"no network call when cached". Fault injection: ``hub.fail_after(repo, filename, nbytes)`` makes the next GET of
that file's content send the full ``Content-Length`` and then drop the connection after ``nbytes`` bytes;
``hub.stall_after(repo, filename, nbytes)`` sends ``nbytes`` and then holds the connection open, silent, until
``hub.release()`` (a transfer to kill midway); ``hub.corrupt_next(repo, filename)`` flips one byte of the next GET;
``hub.fail_next(status)`` answers the next request(s) with an error status; ``hub.delay_s`` delays every answer.

Xet is not emulated (no ``X-Xet-Hash`` header is ever sent), so downloads always use plain HTTP.

Wiring (``point_huggingface_hub_at``, used by the fixture): huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, timeouts etc. ONCE, at import, into ``huggingface_hub.constants``. The fixture therefore sets the
env vars (for subprocesses such as the ``unclip`` CLI) *and* patches the constants in this process:
``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (built from ENDPOINT at import; ``hf_hub_url`` formats it),
``HF_HUB_CACHE`` (+ the copy in ``utils._cache_manager``), ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_TELEMETRY`` (else the
user-agent builder GETs ``{ENDPOINT}/api/agent-harnesses`` once per process), ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` and
the token paths (no real token is sent), ``HF_HUB_ETAG_TIMEOUT``/``HF_HUB_DOWNLOAD_TIMEOUT``, ``utils._http._HUB_ORIGINS``;
then it drops the shared httpx2 client (``close_session()``).

huggingface_hub 2.4.0 behaviour pinned down by tests/test_hubserver.py:

* a 40-hex revision already in ``snapshots/`` is returned with no request at all; a branch costs one HEAD.
* downloading by commit does not write ``refs/main``; only downloads *by branch name* record the ref.
* missing file -> ``RemoteEntryNotFoundError`` (also ``EntryNotFoundError`` and ``HfHubHTTPError``); missing repo ->
  ``RepositoryNotFoundError``; missing revision -> ``RevisionNotFoundError``.
* not cached + ``local_files_only=True`` / ``HF_HUB_OFFLINE`` / hub unreachable -> ``LocalEntryNotFoundError``
  (a ``FileNotFoundError`` and an ``EntryNotFoundError`` too!); its ``__cause__`` is ``None`` /
  ``OfflineModeIsEnabled`` / the ``httpx2`` error (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout`` ...).
* hub unreachable and not cached: after the first HEAD fails, the HEAD is retried 5 times with back-off sleeps of
  1+2+4+8+8 = 23 s and a 60 s timeout each, whatever ``HF_HUB_ETAG_TIMEOUT`` says. ``get_hf_file_metadata`` (no
  retries by default) raises the raw ``httpx2`` error at once: a quick reachability probe.
* resume: only *within* one call. ``http_get`` retries a dropped GET up to 5 times (1 s sleep each, counter reset when
  progress was made) with ``Range: bytes=<written>-``, where <written> is a multiple of ``DOWNLOAD_CHUNK_SIZE``
  (10 MiB). Partial files are per-call (``<etag>.<uuid8>.incomplete``) and deleted on failure, so the next call
  starts over; when the retries run out the raw ``httpx2.RemoteProtocolError`` escapes ``hf_hub_download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

__all__ = [
    "block_non_loopback",
    "FakeHub",
    "HubFile",
    "RecordedRequest",
    "disable_retry_sleeps",
    "fake_hub",
    "point_huggingface_hub_at",
    "unused_endpoint",
]

_REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".npz", ".h5", ".msgpack")
_HEX = set("0123456789abcdef")


def _is_commit(rev: str) -> bool:
    return len(rev) == 40 and set(rev) <= _HEX


@dataclass
class HubFile:
    """One file at one commit of a fake repo."""

    repo_key: str  # URL form: "org/name" for models, "datasets/org/name" for datasets
    commit: str
    filename: str
    data: bytes
    lfs: bool

    @property
    def git_sha1(self) -> str:
        """Git blob id, the ETag the Hub sends for regular (non-LFS) files."""
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """What huggingface_hub uses as the blob name in ``blobs/``: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class RecordedRequest:
    method: str
    path: str  # unquoted path, no query string
    raw_path: str  # as sent on the wire
    host: str
    headers: dict[str, str]
    status: int | None = None
    kind: str = "other"  # "resolve", "cdn", "api" or "other"
    repo_key: str | None = None
    filename: str | None = None
    served: HubFile | None = field(default=None, repr=False)  # file whose bytes a GET carried (even partially)


@dataclass
class _Repo:
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


class FakeHub:
    """Threaded fake Hub on 127.0.0.1. Use as a context manager or call ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        cdn_host: str = "localhost",
        lfs_threshold: int = 10 * 1024 * 1024,
        redirect_lfs: bool = True,
    ) -> None:
        self.host = host
        self.cdn_host = cdn_host
        self.lfs_threshold = lfs_threshold
        self.redirect_lfs = redirect_lfs
        self.delay_s: float = 0.0
        self.requests: list[RecordedRequest] = []
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, HubFile] = {}  # sha256 -> file (for the CDN)
        self._fail_after: dict[str, list[int]] = {}  # sha256 of the content -> [nbytes, times]
        self._fail_next: list[int] = []
        self._stall_after: dict[str, int] = {}  # sha256 of the content -> bytes to send before stalling
        self._corrupt: set[str] = set()  # sha256 of contents whose next GET has one byte flipped
        self._release = threading.Event()  # set by stop() / release(): stalled GETs hang up
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.cache_dir: Path | None = None  # set by the `fake_hub` fixture

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        # Re-use the previous port on restart so `endpoint` stays valid (stop() + start() = "hub came back").
        server = _Server((self.host, self.port or 0), handler)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket: the endpoint then refuses connections."""
        self._release.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Value for ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:54321``."""
        assert self.port is not None, "server not started"
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_endpoint(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://{self.cdn_host}:{self.port}"

    # ------------------------------------------------------------------ content
    def add_file(
        self,
        repo_id: str,
        revision_commit: str,
        filename: str,
        data: bytes,
        *,
        lfs: bool | None = None,
        ref: str | None = "main",
        repo_type: str = "model",
    ) -> HubFile:
        """Add ``filename`` with ``data`` at commit ``revision_commit`` (40 lowercase hex chars).

        ``ref`` (default ``"main"``) is pointed at that commit; pass ``ref=None`` to leave refs alone.
        ``lfs`` defaults to: size >= ``lfs_threshold`` or a weights-like suffix (.safetensors, .bin, ...).
        Commits do not inherit files from each other: add every file a commit should have.
        """
        if not _is_commit(revision_commit):
            raise ValueError(f"revision_commit must be 40 lowercase hex chars, got {revision_commit!r}")
        if lfs is None:
            lfs = len(data) >= self.lfs_threshold or filename.endswith(_LFS_SUFFIXES)
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        f = HubFile(repo_key=key, commit=revision_commit, filename=filename, data=bytes(data), lfs=lfs)
        with self._lock:
            repo = self._repos.setdefault(key, _Repo())
            repo.commits.setdefault(revision_commit, {})[filename] = f
            if ref is not None:
                repo.refs[ref] = revision_commit
            if lfs:
                self._blobs[f.sha256] = f
        return f

    def set_ref(self, repo_id: str, ref: str, commit: str, *, repo_type: str = "model") -> None:
        """Point branch/tag ``ref`` at ``commit`` (which must already have files)."""
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            repo = self._repos[key]
            if commit not in repo.commits:
                raise KeyError(f"unknown commit {commit} in {key}")
            repo.refs[ref] = commit

    def get_file(self, repo_id: str, filename: str, revision: str = "main", *, repo_type: str = "model") -> HubFile:
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            repo = self._repos[key]
            commit = revision if revision in repo.commits else repo.refs[revision]
            return repo.commits[commit][filename]

    # ------------------------------------------------------------------ fault injection
    def fail_after(
        self,
        repo_id: str,
        filename: str,
        nbytes: int,
        *,
        revision: str = "main",
        times: int = 1,
        repo_type: str = "model",
    ) -> None:
        """The next ``times`` GETs of this file's bytes announce the full length, send ``nbytes``, then hang up."""
        f = self.get_file(repo_id, filename, revision, repo_type=repo_type)
        with self._lock:
            self._fail_after[f.sha256] = [nbytes, times]

    def stall_after(self, repo_id: str, filename: str, nbytes: int, *, revision: str = "main",
                    repo_type: str = "model") -> None:
        """The next GET of this file's bytes announces the full length, sends ``nbytes`` and then sends nothing
        more (the connection stays open) until ``release()`` or ``stop()``: a transfer to kill midway."""
        f = self.get_file(repo_id, filename, revision, repo_type=repo_type)
        with self._lock:
            self._stall_after[f.sha256] = nbytes
            self._release.clear()

    def release(self) -> None:
        """Hang up every stalled GET."""
        self._release.set()

    def corrupt_next(self, repo_id: str, filename: str, *, revision: str = "main", repo_type: str = "model") -> None:
        """The next GET of this file's bytes serves them with one byte flipped (same length, same ETag)."""
        f = self.get_file(repo_id, filename, revision, repo_type=repo_type)
        with self._lock:
            self._corrupt.add(f.sha256)

    def fail_next(self, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` requests (any path) with ``status`` and an empty JSON error."""
        with self._lock:
            self._fail_next.extend([status] * times)

    # ------------------------------------------------------------------ request log
    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, method: str | None = None, path: str | None = None, *, kind: str | None = None) -> int:
        """Number of recorded requests matching ``method`` (HEAD/GET), exact unquoted ``path`` and/or ``kind``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and (path is None or r.path == path or r.raw_path == path)
                and (kind is None or r.kind == kind)
            )

    def file_requests(
        self, repo_id: str, filename: str, *, method: str | None = None, repo_type: str = "model"
    ) -> list[RecordedRequest]:
        """Requests about this file: resolve HEAD/GETs, plus CDN GETs that served its bytes."""
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method)
                and (
                    (r.kind == "resolve" and r.repo_key == key and r.filename == filename)
                    or (r.served is not None and r.served.repo_key == key and r.served.filename == filename)
                )
            ]

    def file_gets(self, repo_id: str, filename: str, *, repo_type: str = "model") -> int:
        """How many GETs transferred (some of) this file's bytes, via /resolve or the CDN URL."""
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.method == "GET"
                and r.served is not None
                and r.served.repo_key == key
                and r.served.filename == filename
            )

    # ------------------------------------------------------------------ internals used by the handler
    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _pop_fail_next(self) -> int | None:
        with self._lock:
            return self._fail_next.pop(0) if self._fail_next else None

    def _take_fail_after(self, f: HubFile) -> int | None:
        with self._lock:
            entry = self._fail_after.get(f.sha256)
            if not entry:
                return None
            nbytes, times = entry
            if times <= 1:
                del self._fail_after[f.sha256]
            else:
                entry[1] = times - 1
            return nbytes

    def _take_stall_after(self, f: HubFile) -> int | None:
        with self._lock:
            return self._stall_after.pop(f.sha256, None)

    def _take_corrupt(self, f: HubFile) -> bool:
        with self._lock:
            if f.sha256 in self._corrupt:
                self._corrupt.discard(f.sha256)
                return True
            return False

    def _cdn_lookup(self, sha256: str, query: str) -> HubFile | None:
        with self._lock:
            src = unquote(query[len("src=") :]) if query.startswith("src=") else ""
            repo_key, _, rest = src.partition("@")
            commit, _, filename = rest.partition(":")
            f = self._repos.get(repo_key, _Repo()).commits.get(commit, {}).get(filename)
            if f is not None and f.sha256 == sha256:
                return f
            return self._blobs.get(sha256)

    def _lookup(self, repo_key: str, revision: str, filename: str | None):
        """-> (repo, commit, file, error_code). error_code is None on success."""
        with self._lock:
            repo = self._repos.get(repo_key)
            if repo is None:
                return None, None, None, "RepoNotFound"
            commit = revision if revision in repo.commits else repo.refs.get(revision)
            if commit is None:
                return repo, None, None, "RevisionNotFound"
            if filename is None:
                return repo, commit, None, None
            f = repo.commits[commit].get(filename)
            if f is None:
                return repo, commit, None, "EntryNotFound"
            return repo, commit, f, None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        """Hang up kept-alive connections so a stopped hub really is gone for pooled clients too."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):  # quiet: clients hanging up are expected in tests
        pass


_ERROR_MESSAGES = {
    "RepoNotFound": "Repository not found",
    "RevisionNotFound": "Invalid rev id: {revision}",
    "EntryNotFound": "Entry not found",
}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every answer carries Content-Length
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # noqa: A002 - silence stderr access log
        pass

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------
    def _dispatch(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        rec = RecordedRequest(
            method=self.command,
            path=unquote(split.path),
            raw_path=split.path,
            host=self.headers.get("Host", ""),
            headers={k: v for k, v in self.headers.items()},
        )
        raw = split.path
        if raw.startswith("/_cdn/"):
            rec.kind = "cdn"
        elif "/resolve/" in raw:
            rec.kind = "resolve"
            repo_part, _, rest = raw.partition("/resolve/")
            rev_raw, _, file_raw = rest.partition("/")
            rec.repo_key, rec.filename = unquote(repo_part.lstrip("/")), unquote(file_raw)
        elif raw.startswith("/api/models/"):
            rec.kind = "api"
        hub._record(rec)
        if hub.delay_s:
            time.sleep(hub.delay_s)
        forced = hub._pop_fail_next()
        if forced is not None:
            self._send_error(rec, forced, None, "Injected failure")
            return

        if rec.kind == "cdn":
            blob = hub._cdn_lookup(raw[len("/_cdn/") :], split.query)
            if blob is None:
                self._send_error(rec, 404, None, "Not found")
            else:
                self._send_content(rec, blob, {"ETag": f'"{blob.sha256}"'})
            return
        if rec.kind == "resolve":
            self._resolve(rec, raw)
            return
        if rec.kind == "api":
            self._api_model(rec, raw[len("/api/models/") :])
            return
        self._send_error(rec, 404, None, "Not found")

    def _resolve(self, rec: RecordedRequest, raw: str) -> None:
        hub = self.hub
        repo_part, _, rest = raw.partition("/resolve/")
        repo_key = unquote(repo_part.lstrip("/"))
        rev_raw, _, file_raw = rest.partition("/")
        revision, filename = unquote(rev_raw), unquote(file_raw)
        _, commit, f, err = hub._lookup(repo_key, revision, filename)
        if err is not None:
            extra = {"X-Repo-Commit": commit} if commit else {}
            msg = _ERROR_MESSAGES[err].format(revision=revision)
            self._send_error(rec, 404, err, msg, extra)
            return
        assert f is not None and commit is not None
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update(
                {
                    "ETag": f'"{f.sha256}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                }
            )
            if hub.redirect_lfs:
                # Like a signed CDN URL: content-addressed path + opaque query (here: which file, for the log).
                src = quote(f"{f.repo_key}@{f.commit}:{f.filename}", safe="")
                location = f"{hub.cdn_endpoint}/_cdn/{f.sha256}?src={src}"
                body = f"Found. Redirecting to {location}".encode()
                headers.update({"Location": location, "Content-Type": "text/plain; charset=utf-8"})
                self._send(rec, 302, headers, body)
                return
        else:
            headers["ETag"] = f'"{f.git_sha1}"'
        self._send_content(rec, f, headers)

    def _api_model(self, rec: RecordedRequest, rest: str) -> None:
        rest = unquote(rest)
        repo_id, revision = (rest.split("/revision/", 1) + ["main"])[:2]
        rec.repo_key = repo_id
        repo, commit, _, err = self.hub._lookup(repo_id, revision, None)
        if err is not None:
            self._send_error(rec, 404, err, _ERROR_MESSAGES[err].format(revision=revision))
            return
        assert repo is not None and commit is not None
        files = repo.commits[commit]
        info = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(files)],
        }
        self._send(rec, 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(info).encode())

    # ------------------------------------------------------------------ senders
    def _send_content(self, rec: RecordedRequest, f: HubFile, headers: dict[str, str]) -> None:
        data = f.data
        total = len(data)
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            span = _parse_range(range_header, total)
            if span is None:
                headers = {**headers, "Content-Range": f"bytes */{total}"}
                self._send_error(rec, 416, None, "Range Not Satisfiable", headers)
                return
            start, end = span
            data = data[start : end + 1]
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{total}"}
        headers = {**headers, "Content-Type": "application/octet-stream"}
        if self.command != "GET":
            self._send(rec, status, headers, data)
            return
        rec.served = f
        if self.hub._take_corrupt(f) and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        stall = self.hub._take_stall_after(f)
        if stall is not None and stall < len(data):
            rec.status = status
            self._write_head(status, headers, len(data))
            try:
                self.wfile.write(data[:stall])
                self.wfile.flush()
                self.hub._release.wait(120)
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
            return
        cut = self.hub._take_fail_after(f)
        if cut is None or cut >= len(data):
            self._send(rec, status, headers, data)
            return
        # Announce the full length, send `cut` bytes, hang up: the client sees an incomplete body.
        rec.status = status
        self._write_head(status, headers, len(data))
        try:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send_error(
        self,
        rec: RecordedRequest,
        status: int,
        error_code: str | None,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        headers.update(extra or {})
        self._send(rec, status, headers, json.dumps({"error": message}).encode())

    def _send(self, rec: RecordedRequest, status: int, headers: dict[str, str], body: bytes) -> None:
        rec.status = status
        self._write_head(status, headers, len(body))
        if self.command != "HEAD" and body:
            try:
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    def _write_head(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()


def _parse_range(value: str, total: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range -> inclusive (start, end), or None if unsatisfiable/unsupported."""
    value = value.strip()
    if not value.lower().startswith("bytes=") or "," in value:
        return None
    first, _, last = value[len("bytes=") :].strip().partition("-")
    try:
        if first == "":  # suffix range: last N bytes
            n = int(last)
            if n <= 0 or total == 0:
                return None
            return max(total - n, 0), total - 1
        start = int(first)
        end = int(last) if last else total - 1
    except ValueError:
        return None
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)


# ---------------------------------------------------------------------- wiring huggingface_hub to the fake hub
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost", b"::1"}


def block_non_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make name resolution fail for anything but loopback, like a machine without internet.

    A stray request to e.g. huggingface.co then fails at once with ``socket.gaierror`` (seen by httpx2 as
    ``httpx2.ConnectError``) instead of leaving the machine.
    """
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in _LOOPBACK_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, f"tests may only reach 127.0.0.1 (blocked: {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def unused_endpoint() -> str:
    """An ``http://127.0.0.1:PORT`` where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_huggingface_hub_at(
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    hf_home: str | os.PathLike,
    *,
    etag_timeout: int = 5,
    download_timeout: int = 5,
) -> Path:
    """Point huggingface_hub (this process *and* subprocesses) at ``endpoint`` with a private cache.

    huggingface_hub reads its env vars once, at import, into ``huggingface_hub.constants``; so the env vars are set
    for subprocesses (e.g. running the ``unclip`` CLI) and the already-imported constants are patched in-process.
    Returns the hub cache dir (``<hf_home>/hub``). Everything is undone by ``monkeypatch`` at teardown.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager, _http

    endpoint = endpoint.rstrip("/")
    hf_home = Path(hf_home)
    cache = hf_home / "hub"
    cache.mkdir(parents=True, exist_ok=True)

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": str(etag_timeout),
        "HF_HUB_DOWNLOAD_TIMEOUT": str(download_timeout),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_CO_STAGING",
    ):
        monkeypatch.delenv(k, raising=False)

    # In-process: constants captured at import time.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # else: GET {ENDPOINT}/api/agent-harnesses
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", etag_timeout)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", download_timeout)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(hf_home / ".agent_harnesses.json"))
    # `from ..constants import HF_HUB_CACHE` copy, used by scan_cache_dir() when no cache_dir is given.
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))
    # Origins that get auth headers / whose redirects are followed; computed from ENDPOINT at import.
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    # The shared httpx client is created once per process: drop it so the new settings (proxies) apply and no
    # kept-alive connection to a previous test's server is reused.
    _http.close_session()
    return cache


class _RecordingTime:
    """Stand-in for the ``time`` module inside huggingface_hub: ``sleep`` only records, the rest is real."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


def disable_retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make huggingface_hub's retry back-off instant; returns the (live) list of sleeps it asked for.

    huggingface_hub sleeps 1 s before each in-download resume (``file_download.http_get``) and 1+2+4+8+8 s between
    the retried HEADs when the Hub is unreachable (``utils._http._http_backoff_base``). Only those two modules'
    ``time`` is replaced, so the server and the test itself are unaffected.
    """
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    fake = _RecordingTime()
    monkeypatch.setattr(_http, "time", fake)
    monkeypatch.setattr(file_download, "time", fake)
    return fake.sleeps


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running :class:`FakeHub` with huggingface_hub pointed at it and a private, empty cache.

    ``fake_hub.cache_dir`` is the hub cache (``$HF_HUB_CACHE``). Name resolution of non-loopback hosts fails during
    the test (see :func:`block_non_loopback`). The server is stopped after the test.
    """
    from huggingface_hub.utils import _http

    hub = FakeHub().start()
    hub.cache_dir = point_huggingface_hub_at(monkeypatch, hub.endpoint, tmp_path / "hf-home")
    block_non_loopback(monkeypatch)
    try:
        yield hub
    finally:
        hub.stop()
        _http.close_session()


"""Fetching stage files: local paths as they are, Hugging Face Hub files through a resumable client.

Why our own client and not `huggingface_hub.hf_hub_download` (decision re-checked 2026-12-01 against the installed
huggingface_hub 2.4.0, plain HTTP, the stand-in Hub of tests/hubserver.py; `python benchmarks/check_hf_hub_download.py`,
numbers in benchmarks/results/hf_hub_download.json, behaviour pinned by tests/test_downloads.py and
tests/test_hubserver.py). KEEP ours: the library still does not do what we need.
  - Hub unreachable (connection refused), file not cached: hf_hub_download fails after 24.2 s (HEAD retried with
    sleeps 1+2+4+8+8 s), and still 24.3 s with HF_HUB_ETAG_TIMEOUT=1 HF_HUB_DOWNLOAD_TIMEOUT=1; a Hub that accepts
    and never answers: still waiting after 200 s with both at 1 s. Ours: 0.6 s and 1.7 s.
  - HF_HUB_OFFLINE=1: both fail at once (0.7 s / 0.3 s); no difference.
  - Interrupted: its partial file is `<etag>.<random>.incomplete`, unique per call, deleted when the call fails and
    left behind unused (an orphan) when the process is killed; it writes in 10 MiB pieces, so within a call it can
    resume only past a completed piece. A 20 MB file over a connection cut every 3 MB: 6 GETs from byte 0, then
    RemoteProtocolError (18 MB moved, nothing kept). Ours: 7 ranged GETs, done. Killed 2 MB in: the rerun of
    hf_hub_download starts from byte 0; ours asks for `Range: bytes=1996800-`.
  - Hashes: it checks the length only. A transfer with one byte flipped is cached and returned as the file (named
    by a sha256 it does not have); a corrupt cached file is returned with no check. Ours checks sha256 (and the git
    blob id) while streaming and discards a mismatch, and checks a cached file against its sha256 before use.
"""

import hashlib
import importlib
import os
import shutil
import sys
import time
from pathlib import Path

from unclip_cli.errors import UnclipError
from unclip_cli.weights.files import _check_size, _remember, _warn, _warn_unverified, human_size as _gb, verify
from unclip_cli.weights.spec import Source

# Fetching ------------------------------------------------------------------------------------
#
# Hub files are pinned to a commit and live in huggingface_hub's own cache ($HF_HUB_CACHE, usual layout:
# blobs/<etag>, snapshots/<commit>/<filename> -> ../../blobs/<etag>), so other tools share them and a cached
# file is found with no network request at all (`try_to_load_from_cache`).
#
# Missing files are not fetched with `hf_hub_download` (measured reasons in the module docstring). Instead
# (`_download`):
#   1. one HEAD without retries (`get_hf_file_metadata`, short connect timeout): fails at once when the Hub
#      cannot be reached, and gives the etag (the sha256 for LFS files), the size and the download URL;
#   2. a ranged GET into blobs/unclip-<key>.incomplete, whose name depends only on (commit, filename), so a
#      later call (`unclip models pull`, or a run that needs the file) continues it with `Range: bytes=<have>-`;
#   3. sha256 (and the git blob id of non-LFS files) computed while streaming and checked against weights.toml
#      and the Hub's own etag; a mismatch discards the file;
#   4. the finished file is renamed to blobs/<etag> and linked from snapshots/<commit>/<filename> as
#      huggingface_hub does, under huggingface_hub's per-blob lock file. From then on `hf_hub_download(...,
#      local_files_only=True)` and `try_to_load_from_cache` find it like any file huggingface_hub downloaded.
# A cached file is checked before use (`_check_cached`): size, and sha256 against the blob's own name (the Hub's
# sha256 for LFS files) or weights.toml; a corrupt one is taken out of the cache and fetched again (a truncated
# one continued from where it stops), or named in the error when offline.

DOWNLOAD_RETRIES = 5  # failed attempts in a row (without new bytes) before one call gives up; the next call resumes
RETRY_WAIT_S = 1.0  # first wait between attempts (doubles, at most 8x)
CONNECT_TIMEOUT_S = float(os.environ.get("UNCLIP_HUB_CONNECT_TIMEOUT") or 3.0)  # an unreachable Hub fails fast
READ_TIMEOUT_S = 30.0  # a stalled download (no byte for this long) is retried
OFFLINE_HINT = ("run `unclip models pull {model}` when online, point HF_HUB_CACHE at a Hugging Face cache that has "
                "it, or use the bundled model (--model shapes)")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub read it at import or as set now."""
    from huggingface_hub import constants

    now = any((os.environ.get(v) or "").strip().upper() in ("1", "ON", "YES", "TRUE")
              for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or now


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _storage(src: Source) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache() / repo_folder_name(repo_id=src.repo, repo_type="model")


def partial_path(src: Source) -> Path:
    """Where an unfinished download of a Hub file is kept (named by commit and filename, so no network is needed)."""
    key = hashlib.sha1(f"{src.revision}/{src.filename}".encode()).hexdigest()[:24]
    return _storage(src) / "blobs" / f"unclip-{key}.incomplete"


def partial_bytes(src: Source) -> int:
    """Bytes of an interrupted download of this file that the next fetch continues from (0 if none)."""
    if src.path is not None:
        return 0
    try:
        return partial_path(src).stat().st_size
    except OSError:
        return 0


def cached_path(src: Source) -> Path | None:
    """The local file for a source if it is already on disk, without any network access."""
    if src.path is not None:
        return src.path if src.path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(src.repo, src.filename, cache_dir=hub_cache(), revision=src.revision)
    return Path(found) if isinstance(found, str) else None


def fetch(src: Source, what: str, *, model: str = "") -> Path:
    """Local path of a stage file, downloading it from the Hub if needed; size- and sha256-checked.

    A Hub file without sha256 in weights.toml is used but reported (once per file) as unverified.
    """
    if src.path is not None:
        if not src.path.is_file():
            raise UnclipError(f"{what}: checkpoint {src.path} does not exist")
        verify(src.path, src.sha256, what)
        return src.path
    path = cached_path(src)
    sha = None
    if path is not None:
        path, sha = _check_cached(path, src, what, model)
    if path is None:
        path, sha = _download(src, what, model)
    _check_size(path, src, what)
    if src.sha256:
        verify(path, src.sha256, what)
    else:
        _warn_unverified(path, src, what, sha)
    return path


def _check_cached(path: Path, src: Source, what: str, model: str) -> tuple[Path | None, str | None]:
    """A cached Hub file as it is if its size and sha256 are right: (path, sha256 if computed here); (None, None)
    when it is corrupt or truncated and was taken out of the cache to be fetched again (offline: an error naming it).

    The sha256 it must have is the blob's own name (huggingface_hub names an LFS blob by the sha256 the Hub
    announced) or else weights.toml's; a file that matches its name but not weights.toml is left for `verify`.
    """
    blob = Path(os.path.realpath(path))
    size = blob.stat().st_size
    name = blob.name.lower()
    expected = name if len(name) == 64 and set(name) <= set("0123456789abcdef") else (src.sha256 or "").lower()
    problem, actual = None, None
    if src.size is not None and size != src.size:
        problem = f"it has {size} bytes, weights.toml says {src.size}"
    elif expected:
        actual = _known_sha256(path, src)
        if actual != expected:
            problem = f"its sha256 is {actual}, expected {expected}"
    if problem is None:
        return path, actual
    if hub_offline():
        raise UnclipError(f"{what}: the cached {blob} is corrupt or truncated ({problem}); delete it, or run "
                          f"`unclip models pull {model or 'MODEL'}` online to fetch it again")
    _warn(f"{what}: the cached {blob} is corrupt or truncated ({problem}); fetching it again")
    partial = partial_path(src)
    try:
        if not partial.exists() and (src.size is None or size < src.size):
            os.replace(blob, partial)  # a truncated copy is continued; not a true prefix: refetched whole
        else:
            blob.unlink()
        if path.is_symlink() or path.exists():
            path.unlink()
    except FileNotFoundError:
        pass  # another process took it out first
    return None, None


def _known_sha256(path: Path, src: Source) -> str:
    """sha256 of a cached file: remembered (per path, size and mtime) or computed now (and remembered if pinned)."""
    from unclip_cli.weights.files import _load_hashes, _hash_key, sha256_file

    seen = _load_hashes().get(_hash_key(path), "").removeprefix("unverified:")
    if seen:
        return seen
    actual = sha256_file(path)
    if src.sha256 and actual == src.sha256.lower():
        _remember(path, actual)
    return actual


def _not_available(src: Source, what: str, model: str, reason: str) -> UnclipError:
    return UnclipError(f"{what}: {src.describe()} is not downloaded and {reason}; "
                       + OFFLINE_HINT.format(model=model or "MODEL"))


# Hub answers that mean weights.toml or the user's login is wrong, most specific class first
# (GatedRepoError is a RepositoryNotFoundError; all are HfHubHTTPError).
_HUB_ANSWERS = (
    ("GatedRepoError", "{repo} is gated on the Hugging Face Hub; accept its terms on the website and log in "
                       "(`hf auth login`), then retry"),
    ("RepositoryNotFoundError", "repository {repo} is not on the Hugging Face Hub (or is private: log in with "
                                "`hf auth login`); check weights.toml"),
    ("RevisionNotFoundError", "commit {revision} is not in {repo} on the Hugging Face Hub; check `revision` in "
                              "weights.toml"),
    ("RemoteEntryNotFoundError", "{filename} is not in {repo} at commit {short}; check `filename` in weights.toml"),
)


def _hub_error(e, src: Source, what: str, model: str) -> UnclipError:
    from huggingface_hub import errors as hub_errors

    for name, message in _HUB_ANSWERS:
        if isinstance(e, getattr(hub_errors, name)):
            return UnclipError(f"{what}: " + message.format(repo=src.repo, revision=src.revision,
                                                            filename=src.filename, short=src.revision[:10]))
    status = e.response.status_code if e.response is not None else "?"
    return _not_available(src, what, model, f"the Hugging Face Hub answered HTTP {status} (try again later)")


def _probe(src: Source, what: str, model: str):
    """File metadata from one HEAD request, without retries; every failure becomes one clear UnclipError."""
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub import errors as hub_errors

    url = hf_hub_url(src.repo, src.filename, revision=src.revision)
    timeout = httpx2.Timeout(min(float(constants.HF_HUB_ETAG_TIMEOUT), READ_TIMEOUT_S), connect=CONNECT_TIMEOUT_S)
    try:
        return get_hf_file_metadata(url, timeout=timeout)
    except hub_errors.OfflineModeIsEnabled:
        raise _not_available(src, what, model, "HF_HUB_OFFLINE is set") from None
    except hub_errors.HfHubHTTPError as e:
        raise _hub_error(e, src, what, model) from None
    except (httpx2.TransportError, OSError) as e:
        reason = f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached ({type(e).__name__})"
        raise _not_available(src, what, model, reason) from None


def _download(src: Source, what: str, model: str) -> tuple[Path, str | None]:
    """Download a Hub file into the huggingface_hub cache, resumably. Returns (path, sha256 if computed)."""
    if hub_offline():
        raise _not_available(src, what, model, "HF_HUB_OFFLINE is set")
    try:
        importlib.import_module("httpx2")  # huggingface_hub >= 1.0 talks httpx2
    except ImportError:
        return _download_with_hf(src, what, model), None
    meta = _probe(src, what, model)
    etag = (meta.etag or "").lower()
    if not etag or not set(etag) <= set("0123456789abcdef") or len(etag) not in (40, 64):
        return _download_with_hf(src, what, model), None  # not a Hub-like answer: let huggingface_hub handle it
    hub_sha = etag if len(etag) == 64 else None  # LFS files: the etag is the content's sha256
    if src.sha256 and hub_sha and hub_sha != src.sha256.lower():
        raise UnclipError(f"{what}: the Hub's {src.describe()} has sha256 {hub_sha}, but weights.toml expects "
                          f"{src.sha256.lower()}; refusing to download it (wrong registry entry or changed file)")
    if src.size is not None and meta.size is not None and meta.size != src.size:
        raise UnclipError(f"{what}: the Hub's {src.describe()} has {meta.size} bytes, but weights.toml says "
                          f"{src.size}; refusing to download it (wrong registry entry or changed file)")
    from filelock import FileLock, Timeout

    storage = _storage(src)
    blob = storage / "blobs" / etag
    pointer = storage / "snapshots" / src.revision / src.filename
    lock_path = hub_cache() / ".locks" / storage.name / f"{etag}.lock"  # the lock huggingface_hub takes too
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        _warn(f"{what}: waiting for another download of {src.describe()} to finish")
        lock.acquire()
    try:
        sha = None
        if not pointer.is_file():
            if not blob.is_file():
                sha = _fetch_blob(src, meta, what, model, blob, expected_sha=src.sha256 or hub_sha,
                                  git_sha1=etag if len(etag) == 40 else None)
            _link(blob, pointer)
        if sha and src.sha256:
            _remember(pointer, sha)  # checked while downloading: `verify` need not read it again
    finally:
        lock.release()
    return pointer, sha


def _fetch_blob(src: Source, meta, what: str, model: str, blob: Path, expected_sha: str | None,
                git_sha1: str | None) -> str:
    """Stream the file into its partial file (continuing what is there) and move it to `blob`. Returns its sha256."""
    xfer = _open_partial(src, what, meta.size, git_sha1)
    continued = xfer.have > 0
    _stream_with_retries(src, meta, what, model, xfer)
    try:
        return _finish_blob(src, what, model, xfer, blob, expected_sha)
    except UnclipError:
        if not continued:
            raise
        # the bytes we continued from were not a true prefix (e.g. a corrupt cached file): once more, from byte 0
        _warn(f"{what}: the continued download of {src.describe()} did not check out; downloading it whole")
        xfer.partial.unlink(missing_ok=True)
        xfer = _open_partial(src, what, meta.size, git_sha1)
        _stream_with_retries(src, meta, what, model, xfer)
        return _finish_blob(src, what, model, xfer, blob, expected_sha)


class _Transfer:
    """Where one download stands: its partial file, the bytes in it, their running hashes and failures in a row."""

    def __init__(self, partial: Path, total: int | None, have: int, git_sha1: str | None):
        self.partial, self.total, self.have, self.git_sha1 = partial, total, have, git_sha1
        self.failures = 0  # failed attempts in a row without new bytes
        self.sha, self.git = _new_hashers(total, git_sha1)

    def hash(self, block: bytes) -> None:
        """Feed bytes that are (or are being) written to the partial file to the hashers."""
        self.sha.update(block)
        if self.git:
            self.git.update(block)

    def restart(self, advance) -> None:
        """Start the file over: no bytes yet, fresh hashers, the progress bar reset."""
        self.have = 0
        self.sha, self.git = _new_hashers(self.total, self.git_sha1)
        advance(None)


def _open_partial(src: Source, what: str, total: int | None, git_sha1: str | None) -> _Transfer:
    """The partial file to continue (dropped if too long), with disk space checked and its bytes re-hashed."""
    partial = partial_path(src)
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if total is not None and have > total:
        partial.unlink()
        have = 0
    if total is not None:
        free = shutil.disk_usage(partial.parent).free
        if free < total - have:
            raise UnclipError(f"{what}: {src.describe()} needs {_gb(total - have)} more disk space in "
                              f"{partial.parent}, only {_gb(free)} free")
    xfer = _Transfer(partial, total, have, git_sha1)
    if have:  # hash what an earlier call wrote, then continue it
        with open(partial, "rb") as f:
            while block := f.read(1 << 22):
                xfer.hash(block)
    return xfer


def _download_headers(url: str) -> dict:
    """Hub request headers for a download from `url`: no compression, and no token for another host (a CDN)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    if _origin(url) != _origin(constants.ENDPOINT):  # a CDN: never send the Hub token there
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return headers


def _stream_with_retries(src: Source, meta, what: str, model: str, xfer: _Transfer) -> None:
    """GET the rest of the file until it is complete: transport errors retried, an HTTP error re-probed once."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    headers = _download_headers(meta.location)
    url = meta.location
    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    reprobed = False
    with _Progress(what.split(" of model ")[0], xfer.total, xfer.have) as advance:
        try:
            while xfer.total is None or xfer.have < xfer.total:
                try:
                    if _stream_once(url, headers, timeout, xfer, advance):
                        break
                except httpx2.TransportError as e:
                    _wait_before_retry(src, what, model, xfer, e)
                except HfHubHTTPError as e:
                    url = _reprobe(src, what, model, xfer, e, advance, again=reprobed)
                    reprobed = True  # e.g. an expired CDN link: a fresh one from the Hub, once
        except KeyboardInterrupt:
            sys.stderr.write(f"\n{src.describe()}: stopped at {_gb(xfer.have)}; `unclip models pull "
                             f"{model or 'MODEL'}` continues the download\n")
            raise


def _stream_once(url: str, headers: dict, timeout, xfer: _Transfer, advance) -> bool:
    """One GET (ranged when continuing) appended to the partial file; True if a 416 says it is already complete."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    request_headers = dict(headers, **({"Range": f"bytes={xfer.have}-"} if xfer.have else {}))
    with get_session().stream("GET", url, headers=request_headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416 and xfer.total is not None and xfer.have == xfer.total:
            return True
        if r.status_code >= 400:
            r.read()
            hf_raise_for_status(r)
        if xfer.have and not (r.status_code == 206 and _range_start(r) == xfer.have):
            xfer.restart(advance)  # the server ignored the range: start over
        with open(xfer.partial, "ab" if xfer.have else "wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
                xfer.hash(chunk)
                xfer.have += len(chunk)
                xfer.failures = 0
                advance(len(chunk))
    if xfer.total is None:
        xfer.total = xfer.have  # no size announced: one complete response is the file
    return False


def _wait_before_retry(src: Source, what: str, model: str, xfer: _Transfer, e: Exception) -> None:
    """Count a failed attempt: give up after DOWNLOAD_RETRIES in a row, else wait (doubling, at most 8x)."""
    xfer.failures += 1
    if xfer.failures > DOWNLOAD_RETRIES:
        raise UnclipError(
            f"{what}: download of {src.describe()} was interrupted at {_gb(xfer.have)} of "
            f"{_gb(xfer.total) if xfer.total else '?'} ({type(e).__name__}); the part is kept: run "
            f"`unclip models pull {model or 'MODEL'}` to continue it") from None
    time.sleep(RETRY_WAIT_S * min(2 ** (xfer.failures - 1), 8))


def _reprobe(src: Source, what: str, model: str, xfer: _Transfer, e, advance, *, again: bool) -> str:
    """After an HTTP error, a fresh download URL from the Hub (a 416 starts the file over); `again`: give up."""
    status = e.response.status_code if e.response is not None else "?"
    if again:
        raise UnclipError(f"{what}: downloading {src.describe()} failed with HTTP {status}; the "
                          f"part is kept: run `unclip models pull {model or 'MODEL'}` to continue "
                          "it later") from None
    if status == 416:  # our partial file does not fit the remote file: start over
        xfer.partial.unlink(missing_ok=True)
        xfer.restart(advance)
    return _probe(src, what, model).location


def _finish_blob(src: Source, what: str, model: str, xfer: _Transfer, blob: Path, expected_sha: str | None) -> str:
    """Check the finished file's length, sha256 and git blob id (a mismatch discards it); move it to `blob`."""
    if xfer.total is not None and xfer.have != xfer.total:
        raise UnclipError(f"{what}: download of {src.describe()} ended at {xfer.have} of {xfer.total} bytes; run "
                          f"`unclip models pull {model or 'MODEL'}` to continue it")
    digest = xfer.sha.hexdigest()
    if expected_sha and digest != expected_sha.lower():
        xfer.partial.unlink(missing_ok=True)
        source = "weights.toml" if src.sha256 else "the Hub's checksum"
        raise UnclipError(f"{what}: the downloaded {src.describe()} has sha256 {digest}, but {source} says "
                          f"{expected_sha.lower()}; the file was discarded (nothing was installed)")
    if xfer.git and xfer.git.hexdigest() != xfer.git_sha1:
        xfer.partial.unlink(missing_ok=True)
        raise UnclipError(f"{what}: the downloaded {src.describe()} does not match the Hub's git blob id "
                          f"{xfer.git_sha1} (corrupt transfer); the file was discarded, run the command again")
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(xfer.partial, blob)
    return digest


def _new_hashers(total: int | None, git_sha1: str | None):
    git = hashlib.sha1(b"blob %d\0" % total) if git_sha1 and total is not None else None
    return hashlib.sha256(), git


def _range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _origin(url: str) -> tuple:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or {"http": 80, "https": 443}.get(u.scheme)


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<filename> -> ../../blobs/<etag>, as huggingface_hub lays out its cache."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except (OSError, NotImplementedError):  # no symlinks (e.g. Windows without developer mode): keep a copy
        shutil.copyfile(blob, pointer)


class _Progress:
    """A rich download bar on stderr (silent with UNCLIP_QUIET); the context value advances it."""

    def __init__(self, label: str, total: int | None, done: int):
        self.label, self.total, self.done = label, total, done
        self.bar = None

    def __enter__(self):
        if os.environ.get("UNCLIP_QUIET"):
            return lambda n: None
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total, completed=self.done)

        def advance(n):
            if n is None:
                self.bar.reset(task, total=self.total)
            else:
                self.bar.advance(task, n)

        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def _download_with_hf(src: Source, what: str, model: str) -> Path:
    """Fallback for a huggingface_hub without httpx2 (or an unusual endpoint): no resume across calls."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    missing = tuple(getattr(hub_errors, n) for n in ("RemoteEntryNotFoundError", "RevisionNotFoundError",
                                                     "RepositoryNotFoundError") if hasattr(hub_errors, n))
    try:
        return Path(hf_hub_download(src.repo, src.filename, revision=src.revision))
    except missing as e:
        raise UnclipError(f"{what}: {src.describe()} is not on the Hub ({type(e).__name__})") from None
    except (hub_errors.LocalEntryNotFoundError, OSError) as e:
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else f"the Hugging Face Hub cannot be reached ({type(e).__name__})"
        raise _not_available(src, what, model, reason) from None


"""The model registry (`weights.toml`) and fetching stage files.

A model is a set of stages (clip, prior, text_proj, decoder, sr256, sr256_last, sr1024, sr1024_last),
each one safetensors file: a local path, a file inside this package (`package = ...`), or a
Hugging Face Hub file pinned to a commit (`repo`, `revision`, `filename`), with its sha256 (a Hub
file without one still works but is reported as unverified). Hub files live in huggingface_hub's
usual cache; a cached file is used without touching the network, and a missing one is downloaded
resumably (see "Fetching" below). The registry is the packaged `weights.toml` plus, if present, `$UNCLIP_HOME/weights.toml`
(the user's own models; same format, later entries win).
"""

import hashlib
import json
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from unclip_cli.errors import UnclipError

PACKAGE_DIR = Path(__file__).resolve().parent
STAGES = ("clip", "clip_vision", "prior", "text_proj", "decoder", "sr256", "sr256_last", "sr1024", "sr1024_last")
REQUIRED = ("clip", "prior", "text_proj", "decoder")  # an image-variations model may have no prior


def unclip_home() -> Path:
    return Path(os.environ.get("UNCLIP_HOME") or Path.home() / ".local" / "share" / "unclip")


@dataclass(frozen=True)
class Source:
    """Where one stage file lives."""

    path: Path | None = None
    repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None

    def describe(self) -> str:
        return str(self.path) if self.path else f"{self.repo}@{(self.revision or '')[:10]}/{self.filename}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    format: str  # "unclip" (config in the safetensors metadata) or "diffusers"
    stages: dict[str, Source]
    defaults: dict = field(default_factory=dict)
    configs: dict[str, Source] = field(default_factory=dict)  # diffusers: config.json per stage


def _source(raw: dict, base: Path, where: str) -> Source:
    if "package" in raw:
        path = PACKAGE_DIR / raw["package"]
    elif "path" in raw:
        path = Path(os.path.expanduser(raw["path"]))
        path = path if path.is_absolute() else base / path
    elif {"repo", "revision", "filename"} <= raw.keys():
        rev = str(raw["revision"])
        if len(rev) != 40:
            raise UnclipError(f"{where}: revision must be a full 40-character commit hash, got '{rev}'")
        return Source(repo=raw["repo"], revision=rev, filename=raw["filename"], sha256=raw.get("sha256"), size=raw.get("size"))
    else:
        raise UnclipError(f"{where}: a stage needs `path`, `package`, or `repo` + `revision` + `filename`")
    return Source(path=path, sha256=raw.get("sha256"), size=raw.get("size"))


def _parse(data: dict, base: Path, origin: str) -> dict[str, ModelSpec]:
    models = {}
    for name, raw in data.get("models", {}).items():
        where = f"{origin} [models.{name}]"
        stages = {s: _source(r, base, f"{where}.stages.{s}") for s, r in raw.get("stages", {}).items()}
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise UnclipError(f"{where}: unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
        configs = {s: _source(r, base, f"{where}.configs.{s}") for s, r in raw.get("configs", {}).items()}
        models[name] = ModelSpec(
            name=name,
            description=raw.get("description", ""),
            format=raw.get("format", "unclip"),
            stages=stages,
            defaults=dict(raw.get("defaults", {})),
            configs=configs,
        )
    return models


def registry_files() -> list[Path]:
    files = [PACKAGE_DIR / "weights.toml"]
    user = unclip_home() / "weights.toml"
    return files + ([user] if user.is_file() else [])


def registry() -> tuple[str, dict[str, ModelSpec]]:
    """(default model name, {name: spec}) from the packaged and the user's weights.toml."""
    default, models = None, {}
    for f in registry_files():
        try:
            data = tomllib.loads(f.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UnclipError(f"cannot read model registry {f}: {e}") from None
        default = data.get("default", default)
        models.update(_parse(data, f.parent, str(f)))
    return default, models


def resolve(name: str | None) -> ModelSpec:
    """The spec of a named model (None: the default), or of a local folder in diffusers layout."""
    default, models = registry()
    name = name or default
    if name and name not in models and Path(name).expanduser().is_dir():  # registered names win
        from unclip_cli import karlo

        return karlo.spec_from_folder(name)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise UnclipError(f"unknown model '{name}' (known models: {known}; see `unclip models list`)")
    missing = [s for s in REQUIRED if s not in models[name].stages and not (s == "prior" and "clip_vision" in models[name].stages)]
    if missing:
        raise UnclipError(f"model '{name}' has no {', '.join(missing)} stage in weights.toml")
    return models[name]


# Fetching ------------------------------------------------------------------------------------
#
# Hub files are pinned to a commit and live in huggingface_hub's own cache ($HF_HUB_CACHE, usual layout:
# blobs/<etag>, snapshots/<commit>/<filename> -> ../../blobs/<etag>), so other tools share them and a cached
# file is found with no network request at all (`try_to_load_from_cache`).
#
# Missing files are not fetched with `hf_hub_download`: when the Hub cannot be reached it retries its HEAD for
# ~23 s, and it deletes its partial file when a download fails, so an interrupted 4 GB download starts over.
# Instead (`_download`):
#   1. one HEAD without retries (`get_hf_file_metadata`, short connect timeout): fails at once when the Hub
#      cannot be reached, and gives the etag (the sha256 for LFS files), the size and the download URL;
#   2. a ranged GET into blobs/unclip-<key>.incomplete, whose name depends only on (commit, filename), so a
#      later call (`unclip models pull`, or a run that needs the file) continues it with `Range: bytes=<have>-`;
#   3. sha256 (and the git blob id of non-LFS files) computed while streaming and checked against weights.toml
#      and the Hub's own etag; a mismatch discards the file;
#   4. the finished file is renamed to blobs/<etag> and linked from snapshots/<commit>/<filename> as
#      huggingface_hub does, under huggingface_hub's per-blob lock file. From then on `hf_hub_download(...,
#      local_files_only=True)` and `try_to_load_from_cache` find it like any file huggingface_hub downloaded.

DOWNLOAD_RETRIES = 5  # failed attempts in a row (without new bytes) before one call gives up; the next call resumes
RETRY_WAIT_S = 1.0  # first wait between attempts (doubles, at most 8x)
CONNECT_TIMEOUT_S = float(os.environ.get("UNCLIP_HUB_CONNECT_TIMEOUT") or 3.0)  # an unreachable Hub fails fast
READ_TIMEOUT_S = 30.0  # a stalled download (no byte for this long) is retried
OFFLINE_HINT = ("run `unclip models pull {model}` when online, point HF_HUB_CACHE at a Hugging Face cache that has "
                "it, or use the bundled model (--model shapes)")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified_cache() -> Path:
    return unclip_home() / "verified.json"


def _hash_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _load_hashes() -> dict:
    try:
        return json.loads(_verified_cache().read_text())
    except (OSError, ValueError):
        return {}


def _remember(path: Path, value: str) -> None:
    """Remember a file's hash (or that it was reported unverified) by path, size and mtime."""
    cache_file = _verified_cache()
    cache = _load_hashes()
    cache[_hash_key(path)] = value
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # remembering is an optimisation only


def verify(path: Path, expected: str | None, what: str) -> None:
    """Check a file's sha256 (remembered per path, size and mtime, so big files are hashed once)."""
    if not expected:
        return
    if _load_hashes().get(_hash_key(path)) == expected.lower():
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise UnclipError(f"{what}: sha256 of {path} is {actual}, expected {expected.lower()} (corrupt or wrong file)")
    _remember(path, actual)


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def _check_size(path: Path, src: Source, what: str) -> None:
    if src.size is not None and path.stat().st_size != src.size:
        raise UnclipError(f"{what}: {path} has {path.stat().st_size} bytes, weights.toml says {src.size} "
                          "(corrupt, truncated or wrong file)")


def _warn_unverified(path: Path, src: Source, what: str, sha: str | None = None) -> None:
    """A Hub file without sha256 in weights.toml works, but is reported once (per file version) as unverified."""
    seen = _load_hashes().get(_hash_key(path), "")
    if seen.startswith("unverified:"):
        return
    sha = sha or sha256_file(path)
    _warn(f"{what}: {src.describe()} has no sha256 in weights.toml, so it is not verified "
          f"(its sha256 is {sha}; add `sha256 = \"{sha}\"` to pin it)")
    _remember(path, f"unverified:{sha}")


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


def fetch(src: Source, what: str, *, model: str = "", download: bool = True) -> Path:
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
    if path is None:
        if not download:
            raise UnclipError(f"{what}: {src.describe()} is not downloaded (run `unclip models pull {model}`)")
        path, sha = _download(src, what, model)
    _check_size(path, src, what)
    if src.sha256:
        verify(path, src.sha256, what)
    else:
        _warn_unverified(path, src, what, sha)
    return path


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
        import httpx2  # noqa: F401  (huggingface_hub >= 1.0 talks httpx2)
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
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    partial = partial_path(src)
    partial.parent.mkdir(parents=True, exist_ok=True)
    total = meta.size
    have = partial.stat().st_size if partial.exists() else 0
    if total is not None and have > total:
        partial.unlink()
        have = 0
    if total is not None:
        free = shutil.disk_usage(partial.parent).free
        if free < total - have:
            raise UnclipError(f"{what}: {src.describe()} needs {_gb(total - have)} more disk space in "
                              f"{partial.parent}, only {_gb(free)} free")
    sha, git = _new_hashers(total, git_sha1)
    if have:  # hash what an earlier call wrote, then continue it
        with open(partial, "rb") as f:
            while block := f.read(1 << 22):
                sha.update(block)
                if git:
                    git.update(block)
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    url = meta.location
    if _origin(url) != _origin(constants.ENDPOINT):  # a CDN: never send the Hub token there
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    failures, reprobed = 0, False
    with _Progress(what.split(" of model ")[0], total, have) as advance:
        try:
            while total is None or have < total:
                request_headers = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
                try:
                    with get_session().stream("GET", url, headers=request_headers, timeout=timeout,
                                              follow_redirects=True) as r:
                        if r.status_code == 416 and total is not None and have == total:
                            break
                        if r.status_code >= 400:
                            r.read()
                            hf_raise_for_status(r)
                        if have and not (r.status_code == 206 and _range_start(r) == have):
                            have = 0  # the server ignored the range: start over
                            sha, git = _new_hashers(total, git_sha1)
                            advance(None)
                        with open(partial, "ab" if have else "wb") as f:
                            for chunk in r.iter_bytes():
                                f.write(chunk)
                                sha.update(chunk)
                                if git:
                                    git.update(chunk)
                                have += len(chunk)
                                failures = 0
                                advance(len(chunk))
                    if total is None:
                        total = have  # no size announced: one complete response is the file
                except httpx2.TransportError as e:
                    failures += 1
                    if failures > DOWNLOAD_RETRIES:
                        raise UnclipError(
                            f"{what}: download of {src.describe()} was interrupted at {_gb(have)} of "
                            f"{_gb(total) if total else '?'} ({type(e).__name__}); the part is kept: run "
                            f"`unclip models pull {model or 'MODEL'}` to continue it") from None
                    time.sleep(RETRY_WAIT_S * min(2 ** (failures - 1), 8))
                except HfHubHTTPError as e:
                    status = e.response.status_code if e.response is not None else "?"
                    if reprobed:
                        raise UnclipError(f"{what}: downloading {src.describe()} failed with HTTP {status}; the "
                                          f"part is kept: run `unclip models pull {model or 'MODEL'}` to continue "
                                          "it later") from None
                    reprobed = True  # e.g. an expired CDN link: ask the Hub for a fresh one, once
                    if status == 416:  # our partial file does not fit the remote file: start over
                        partial.unlink(missing_ok=True)
                        have = 0
                        sha, git = _new_hashers(total, git_sha1)
                        advance(None)
                    url = _probe(src, what, model).location
        except KeyboardInterrupt:
            sys.stderr.write(f"\n{src.describe()}: stopped at {_gb(have)}; `unclip models pull {model or 'MODEL'}` "
                             "continues the download\n")
            raise
    if total is not None and have != total:
        raise UnclipError(f"{what}: download of {src.describe()} ended at {have} of {total} bytes; run "
                          f"`unclip models pull {model or 'MODEL'}` to continue it")
    digest = sha.hexdigest()
    if expected_sha and digest != expected_sha.lower():
        partial.unlink(missing_ok=True)
        source = "weights.toml" if src.sha256 else "the Hub's checksum"
        raise UnclipError(f"{what}: the downloaded {src.describe()} has sha256 {digest}, but {source} says "
                          f"{expected_sha.lower()}; the file was discarded (nothing was installed)")
    if git and git.hexdigest() != git_sha1:
        partial.unlink(missing_ok=True)
        raise UnclipError(f"{what}: the downloaded {src.describe()} does not match the Hub's git blob id "
                          f"{git_sha1} (corrupt transfer); the file was discarded, run the command again")
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, blob)
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


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


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

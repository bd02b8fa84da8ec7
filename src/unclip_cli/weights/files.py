"""Local stage files: sha256 checks (remembered per path, size and mtime, so big files are hashed once) and sizes."""

import hashlib
import json
import os
import sys
from pathlib import Path

from unclip_cli.errors import UnclipError
from unclip_cli.weights.spec import Source, unclip_home


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"


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



"""The model registry (`weights.toml`) and fetching stage files.

A model is a set of stages (clip, prior, text_proj, decoder, sr256, sr256_last, sr1024, sr1024_last),
each one safetensors file: a local path, a file inside this package (`package = ...`), or a
Hugging Face Hub file pinned to a commit (`repo`, `revision`, `filename`), always with its sha256.
Hub files go through huggingface_hub into its usual cache; a cached file is used without touching
the network. The registry is the packaged `weights.toml` plus, if present, `$UNCLIP_HOME/weights.toml`
(the user's own models; same format, later entries win).
"""

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from unclip_cli.errors import UnclipError

PACKAGE_DIR = Path(__file__).resolve().parent
STAGES = ("clip", "prior", "text_proj", "decoder", "sr256", "sr256_last", "sr1024", "sr1024_last")
REQUIRED = ("clip", "prior", "text_proj", "decoder")


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
    """The spec of a named model (None: the default)."""
    default, models = registry()
    name = name or default
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise UnclipError(f"unknown model '{name}' (known models: {known}; see `unclip models list`)")
    missing = [s for s in REQUIRED if s not in models[name].stages]
    if missing:
        raise UnclipError(f"model '{name}' has no {', '.join(missing)} stage in weights.toml")
    return models[name]


# Fetching ------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified_cache() -> Path:
    return unclip_home() / "verified.json"


def verify(path: Path, expected: str | None, what: str) -> None:
    """Check a file's sha256 (remembered per path, size and mtime, so big files are hashed once)."""
    if not expected:
        return
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cache_file = _verified_cache()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) == expected.lower():
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise UnclipError(f"{what}: sha256 of {path} is {actual}, expected {expected.lower()} (corrupt or wrong file)")
    cache[key] = actual
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # remembering is an optimisation only


def cached_path(src: Source) -> Path | None:
    """The local file for a source if it is already on disk, without any network access."""
    if src.path is not None:
        return src.path if src.path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(src.repo, src.filename, revision=src.revision)
    return Path(found) if isinstance(found, str) else None


def fetch(src: Source, what: str, *, model: str = "", download: bool = True) -> Path:
    """Local path of a stage file, downloading it from the Hub if needed; sha256-checked."""
    if src.path is not None:
        if not src.path.is_file():
            raise UnclipError(f"{what}: checkpoint {src.path} does not exist")
        verify(src.path, src.sha256, what)
        return src.path
    path = cached_path(src)
    if path is None:
        if not download:
            raise UnclipError(f"{what}: {src.describe()} is not downloaded (run `unclip models pull {model}`)")
        path = _download(src, what, model)
    verify(path, src.sha256, what)
    return path


def _download(src: Source, what: str, model: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(hf_hub_download(src.repo, src.filename, revision=src.revision))
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as e:
        raise UnclipError(f"{what}: {src.describe()} is not on the Hub ({type(e).__name__})") from None
    except (LocalEntryNotFoundError, OSError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise UnclipError(
            f"{what}: {src.describe()} is not downloaded and {reason}; run `unclip models pull {model}` "
            "while online, point HF_HUB_CACHE at a cache that has it, or use the bundled model (--model shapes)"
        ) from None
    except Exception as e:  # httpx/requests connection errors differ between huggingface_hub versions
        if "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
            raise UnclipError(
                f"{what}: {src.describe()} is not downloaded and the Hugging Face Hub cannot be reached; "
                f"run `unclip models pull {model}` while online, or use the bundled model (--model shapes)"
            ) from None
        raise

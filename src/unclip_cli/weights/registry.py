"""The model registry: the packaged `weights.toml` plus, if present, `$UNCLIP_HOME/weights.toml`.

A model is a set of stages (clip, prior, text_proj, decoder, sr256, sr256_last, sr1024, sr1024_last),
each one safetensors file: a local path, a file inside this package (`package = ...`), or a
Hugging Face Hub file pinned to a commit (`repo`, `revision`, `filename`), with its sha256 (a Hub
file without one still works but is reported as unverified; see `hub.py` for fetching). The user's
file has the same format; later entries win. A local folder in diffusers layout is a model too
(`folder.py`). No torch is imported here.
"""

import os
import re
import tomllib
from pathlib import Path

from unclip_cli import options
from unclip_cli.errors import UnclipError
from unclip_cli.weights import folder
from unclip_cli.weights.spec import REQUIRED, STAGES, ModelSpec, Source, unclip_home

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _table(value, where: str) -> dict:
    """A TOML table (dict), else an error naming where it should be."""
    if not isinstance(value, dict):
        raise UnclipError(f"{where}: must be a table ({{ key = value, ... }}), got {value!r:.80}")
    return value


def _check_fields(raw: dict, where: str) -> None:
    """Text fields are text, size a non-negative integer, sha256 64 hex digits."""
    for key in ("path", "package", "repo", "revision", "filename", "sha256"):
        if key in raw and not isinstance(raw[key], str):
            raise UnclipError(f"{where}: {key} must be text (in quotes), got {raw[key]!r:.80}")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise UnclipError(f"{where}: size must be a number of bytes, got {size!r:.80}")
    if raw.get("sha256") and not re.fullmatch(r"[0-9a-fA-F]{64}", raw["sha256"]):
        raise UnclipError(f"{where}: sha256 must be 64 hex digits, got '{raw['sha256']:.80}'")


def _source(raw: dict, base: Path, where: str) -> Source:
    _check_fields(_table(raw, where), where)
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


def _defaults(raw: dict, where: str) -> dict:
    """A model's sampling defaults; unknown keys and bad values are errors that name them."""
    unknown = sorted(set(raw) - set(options.MODEL_DEFAULT_KEYS))
    if unknown:
        raise UnclipError(f"{where}: unknown keys {unknown} (known: {', '.join(options.MODEL_DEFAULT_KEYS)})")
    for key, value in raw.items():
        problem = options.check(key, value) if key in options.BY_NAME else None
        if problem or (key == "size" and not isinstance(value, int)):
            raise UnclipError(f"{where}: {key} = {value!r} ({problem or 'size must be an integer'})")
    return dict(raw)


def _parse(data: dict, base: Path, origin: str) -> dict[str, ModelSpec]:
    models = {}
    for name, raw in _table(data.get("models", {}), f"{origin} [models]").items():
        where = f"{origin} [models.{name}]"
        raw = _table(raw, where)
        stages = {s: _source(r, base, f"{where}.stages.{s}")
                  for s, r in _table(raw.get("stages", {}), f"{where}.stages").items()}
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise UnclipError(f"{where}: unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
        if raw.get("format", "unclip") not in ("unclip", "diffusers"):
            raise UnclipError(f"{where}: format must be \"unclip\" or \"diffusers\", got {raw['format']!r:.80}")
        configs = {s: _source(r, base, f"{where}.configs.{s}")
                   for s, r in _table(raw.get("configs", {}), f"{where}.configs").items()}
        models[name] = ModelSpec(
            name=name,
            description=raw.get("description", ""),
            format=raw.get("format", "unclip"),
            stages=stages,
            defaults=_defaults(_table(raw.get("defaults", {}), f"{where}.defaults"), f"{origin} [models.{name}.defaults]"),
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
        if not isinstance(default, (str, type(None))):
            raise UnclipError(f"model registry {f}: default must be a model name in quotes, got {default!r:.80}")
        models.update(_parse(data, f.parent, str(f)))
    return default, models


def resolve(name: str | None) -> ModelSpec:
    """The spec of a named model (None: the default), or of a local folder in diffusers layout."""
    default, models = registry()
    name = name or default
    if name and name not in models and Path(name).expanduser().is_dir():  # registered names win
        return folder.spec_from_folder(name)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise UnclipError(f"unknown model '{name}' (known models: {known}; see `unclip models list`)")
    missing = [s for s in REQUIRED if s not in models[name].stages and not (s == "prior" and "clip_vision" in models[name].stages)]
    if missing:
        raise UnclipError(f"model '{name}' has no {', '.join(missing)} stage in weights.toml")
    return models[name]


"""`unclip models list` and `unclip models pull`: what is configured, what is on disk, downloading ahead of time."""

import shutil
from pathlib import Path

from rich.console import Console

from unclip_cli.errors import UnclipError
from unclip_cli.weights import hub, registry
from unclip_cli.weights.files import human_size as _gb
from unclip_cli.weights.spec import Source

err = Console(stderr=True)


def _file_rows(files: dict[str, Source]) -> list[dict]:
    rows = []
    for stage, src in files.items():
        path = hub.cached_path(src)
        rows.append({
            "stage": stage, "source": src.describe(), "repo": src.repo, "revision": src.revision,
            "filename": src.filename, "size": src.size or (path.stat().st_size if path else None),
            "cached": path is not None, "path": str(path) if path else None,
            "partial_bytes": 0 if path else hub.partial_bytes(src), "sha256": src.sha256,
        })
    return rows


def list_models(as_json: bool) -> None:
    """Every configured model: each stage's (and config's) source, size, and whether it is on disk. No network."""
    default, models = registry.registry()
    rows = []
    for name, spec in models.items():
        stages, configs = _file_rows(spec.stages), _file_rows(spec.configs)
        rows.append({"name": name, "default": name == default, "description": spec.description, "format": spec.format,
                     "complete": all(f["cached"] for f in stages + configs), "stages": stages, "configs": configs})
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "stage", "size", "on disk", "sha256", "source")
    for row in rows:
        entries = [(s, s["stage"]) for s in row["stages"]] + [(c, f"{c['stage']} config") for c in row["configs"]]
        for i, (f, label) in enumerate(entries):
            name = (row["name"] + (" (default)" if row["default"] else "")) if i == 0 else ""
            if f["cached"]:
                state = "yes"
            elif f["partial_bytes"]:
                state = f"partial {_gb(f['partial_bytes'])}"
            else:
                state = "no"
            pinned = "pinned" if f["sha256"] else ("-" if f["repo"] is None else "not pinned")
            table.add_row(name, label, _gb(f["size"]), state, pinned, f["source"])
    Console(width=170).print(table)


def pull(name: str) -> None:
    """Download every stage and config file of a model (continuing interrupted downloads), sha256-checked."""
    _, models = registry.registry()
    spec = models.get(name) or registry.resolve(name)  # resolve: its error message, or a local folder
    files = [(f"config of stage '{s}'", src) for s, src in spec.configs.items()]
    files += [(f"stage '{s}'", src) for s, src in spec.stages.items()]
    missing = [src for _, src in files if hub.cached_path(src) is None]
    cache = hub.hub_cache()
    need = sum(src.size - hub.partial_bytes(src) for src in missing if src.size)
    if need:
        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        if free < need:
            raise UnclipError(f"model '{name}' needs {_gb(need)} more in {cache}, only {_gb(free)} free "
                              "(set HF_HUB_CACHE to a larger disk)")
    todo = f"{len(missing)} to download" + (f" (at least {_gb(need)})" if need else "") if missing else "all on disk"
    err.print(f"model '{name}': {len(files)} files, {todo}; cache {cache}", highlight=False)
    total = 0
    for what, src in files:
        before = _identity(hub.cached_path(src))
        path = hub.fetch(src, f"{what} of model '{name}'", model=name)
        had = before is not None and before == _identity(path)  # a corrupt cached file is fetched again
        total += path.stat().st_size
        state = ("local file" if src.path else "already downloaded") if had else "downloaded"
        check = "sha256 ok" if src.sha256 else "sha256 not pinned in weights.toml"
        err.print(f"  {what}: {state}, {_gb(path.stat().st_size)}, {check}", highlight=False)
    err.print(f"model '{name}' is ready ({_gb(total)})", highlight=False)


def _identity(path: Path | None) -> tuple | None:
    """Which file a path is (inode, size, mtime), to tell a file used as it was from one fetched again."""
    if path is None:
        return None
    st = Path(path).stat()
    return st.st_ino, st.st_size, st.st_mtime_ns

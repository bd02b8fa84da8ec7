"""Bodies of the CLI commands: validate inputs, run the pipeline, write results."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unclip_cli import images, pipeline, weights
from unclip_cli.errors import UnclipError
from unclip_cli.runner import RunArgs, StageProgress, err, generators, prepare, quiet, warn_truncated, write_outputs


def generate(prompt: str, args: RunArgs) -> list[Path]:
    stages, opts, seeds, _ = prepare(args)
    warn_truncated(stages, prompt)
    progress = StageProgress(quiet())
    with progress.progress:
        x = pipeline.generate(stages, [prompt], opts, generators(seeds), progress, one_by_one=True)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "generate", prompt, progress.timings)


def vary(image_path: Path, args: RunArgs) -> list[Path]:
    image = images.load_image(image_path)
    stages, opts, seeds, _ = prepare(args)
    progress = StageProgress(quiet())
    with progress.progress:
        x = pipeline.vary(stages, [image], opts, generators(seeds), progress, one_by_one=True)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "vary", "", progress.timings,
                         {"source": str(image_path)})


def edit(image_path: Path, mask_path: Path | None, prompt: str, args: RunArgs) -> list[Path]:
    image = images.load_image(image_path)
    mask_image = images.load_image(mask_path, "mask") if mask_path is not None else None
    edit_mask = images.edit_mask(image, mask_image, str(mask_path) if mask_path else None)  # [H, W] bool
    stages, opts, seeds, _ = prepare(args)
    warn_truncated(stages, prompt)
    S = opts.size
    x = images.to_tensor(image, S)[None]
    m = Image.fromarray(edit_mask.astype(np.uint8) * 255).resize((S, S), Image.BOX)
    m = torch.from_numpy(np.asarray(m) > 0)[None, None]
    progress = StageProgress(quiet())
    with progress.progress:
        out = pipeline.edit(stages, x, m, [prompt], opts, generators(seeds), progress, one_by_one=True)
    results = [composite(image, g, edit_mask) for g in images.to_pil(out)]
    return write_outputs(results, seeds, args, stages, opts, "edit", prompt, progress.timings,
                         {"source": str(image_path), "mask": str(mask_path) if mask_path else "alpha"})


def composite(original: Image.Image, generated: Image.Image, edit_mask: np.ndarray) -> Image.Image:
    """The generated image, scaled to the original's size, inside the mask; the original elsewhere."""
    mode = "RGBA" if "A" in original.getbands() else "RGB"
    base = np.asarray(original.convert(mode)).copy()
    gen = np.asarray(generated.resize(original.size, Image.BICUBIC).convert(mode))
    base[edit_mask] = gen[edit_mask]
    if mode == "RGBA":
        base[edit_mask, 3] = 255
    return Image.fromarray(base, mode)


def _file_rows(files: dict[str, weights.Source]) -> list[dict]:
    rows = []
    for stage, src in files.items():
        path = weights.cached_path(src)
        rows.append({
            "stage": stage, "source": src.describe(), "repo": src.repo, "revision": src.revision,
            "filename": src.filename, "size": src.size or (path.stat().st_size if path else None),
            "cached": path is not None, "path": str(path) if path else None,
            "partial_bytes": 0 if path else weights.partial_bytes(src), "sha256": src.sha256,
        })
    return rows


def _gb(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"


def models_list(as_json: bool) -> None:
    """Every configured model: each stage's (and config's) source, size, and whether it is on disk. No network."""
    default, models = weights.registry()
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


def models_pull(name: str) -> None:
    """Download every stage and config file of a model (continuing interrupted downloads), sha256-checked."""
    _, models = weights.registry()
    spec = models.get(name) or weights.resolve(name)  # resolve: its error message, or a local folder
    files = [(f"config of stage '{s}'", src) for s, src in spec.configs.items()]
    files += [(f"stage '{s}'", src) for s, src in spec.stages.items()]
    missing = [src for _, src in files if weights.cached_path(src) is None]
    cache = weights.hub_cache()
    need = sum(src.size - weights.partial_bytes(src) for src in missing if src.size)
    if need:
        import shutil

        cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache).free
        if free < need:
            raise UnclipError(f"model '{name}' needs {_gb(need)} more in {cache}, only {_gb(free)} free "
                              "(set HF_HUB_CACHE to a larger disk)")
    todo = f"{len(missing)} to download" + (f" (at least {_gb(need)})" if need else "") if missing else "all on disk"
    err.print(f"model '{name}': {len(files)} files, {todo}; cache {cache}", highlight=False)
    total = 0
    for what, src in files:
        had = weights.cached_path(src) is not None
        path = weights.fetch(src, f"{what} of model '{name}'", model=name)
        total += path.stat().st_size
        state = ("local file" if src.path else "already downloaded") if had else "downloaded"
        check = "sha256 ok" if src.sha256 else "sha256 not pinned in weights.toml"
        err.print(f"  {what}: {state}, {_gb(path.stat().st_size)}, {check}", highlight=False)
    err.print(f"model '{name}' is ready ({_gb(total)})", highlight=False)


def evaluate(model, per_prompt: int, ablation: bool, seed: int, size: int, overrides: dict, device: str, out) -> dict:
    import json

    from unclip_cli import evaluate as ev
    from unclip_cli.runner import options, pick_device

    dev = pick_device(device)
    stages, reach = pipeline.open_model(model, dev, torch.float32, size, keep_loaded=True)
    size = size or stages.decoder_size()
    args = RunArgs(**{k: v for k, v in overrides.items()})
    opts = options(args, stages.spec, size)
    modes = ("caption", "text_embed", "prior") if ablation else ("prior",)
    progress = StageProgress(quiet())
    with progress.progress:
        results = ev.evaluate(stages, opts, per_prompt=per_prompt, seed=seed, modes=modes, report=progress)
    results = {"model": stages.spec.name, "per_prompt": per_prompt, "seed": seed, "size": size,
               "options": {k: getattr(opts, k) for k in ("prior_steps", "decoder_steps", "sr_steps",
                                                         "prior_guidance", "decoder_guidance")},
               "modes": results}
    print_eval(results)
    if out:
        Path(out).write_text(json.dumps(results, indent=2))
        Path(out).with_suffix(".md").write_text(eval_markdown(results))
    return results


def _eval_rows(results: dict) -> list[list[str]]:
    """One row of cells per conditioning mode and prompt split (CLIP score and diversity on 'all' only)."""
    from unclip_cli.evaluate import MODES

    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = []
    for mode, r in results["modes"].items():
        for split in ("all_prompts", "unseen_prompts"):
            s = r[split]
            if s is None:
                continue
            o, first = s["overall"], split == "all_prompts"
            rows.append([MODES[mode], split.split("_")[0], pct(o["color"]), pct(o["shape"]), pct(o["size"]),
                         pct(o["relation"]), pct((s["one_object"] or {}).get("all")),
                         pct((s["two_objects"] or {}).get("all")),
                         f"{r['clip_score']:.3f}" if first else "", f"{r['diversity']:.3f}" if first else ""])
    return rows


EVAL_COLUMNS = ("conditioning", "prompts", "color", "shape", "size", "relation", "full caption, 1 object",
                "full caption, 2 objects", "CLIP score", "diversity")


def print_eval(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*EVAL_COLUMNS, title=f"unclip eval {results['model']}")
    for row in _eval_rows(results):
        table.add_row(*row)
    Console(width=170).print(table)


def eval_markdown(results: dict) -> str:
    """The eval results as a Markdown table (what the README shows)."""
    lines = ["| " + " | ".join(EVAL_COLUMNS) + " |", "|" + "---|" * len(EVAL_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _eval_rows(results)]
    return "\n".join(lines) + "\n"

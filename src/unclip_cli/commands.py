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
        x = pipeline.generate(stages, [prompt] * len(seeds), opts, generators(seeds), progress)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "generate", prompt, progress.timings)


def vary(image_path: Path, args: RunArgs) -> list[Path]:
    image = images.load_image(image_path)
    stages, opts, seeds, _ = prepare(args)
    progress = StageProgress(quiet())
    with progress.progress:
        x = pipeline.vary(stages, [image] * len(seeds), opts, generators(seeds), progress)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "vary", "", progress.timings,
                         {"source": str(image_path)})


def edit(image_path: Path, mask_path: Path | None, prompt: str, args: RunArgs) -> list[Path]:
    image = images.load_image(image_path)
    mask_image = images.load_image(mask_path, "mask") if mask_path is not None else None
    edit_mask = images.edit_mask(image, mask_image, str(mask_path) if mask_path else None)  # [H, W] bool
    stages, opts, seeds, _ = prepare(args)
    warn_truncated(stages, prompt)
    S, n = opts.size, len(seeds)
    x = images.to_tensor(image, S)[None].expand(n, -1, -1, -1)
    m = Image.fromarray(edit_mask.astype(np.uint8) * 255).resize((S, S), Image.BOX)
    m = torch.from_numpy(np.asarray(m) > 0)[None, None].expand(n, -1, -1, -1)
    progress = StageProgress(quiet())
    with progress.progress:
        out = pipeline.edit(stages, x, m, [prompt] * n, opts, generators(seeds), progress)
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


def models_list(as_json: bool) -> None:
    default, models = weights.registry()
    rows = []
    for name, spec in models.items():
        stages = []
        for stage, src in spec.stages.items():
            path = weights.cached_path(src)
            stages.append({"stage": stage, "source": src.describe(), "size": src.size or (path.stat().st_size if path else None),
                           "cached": path is not None})
        rows.append({"name": name, "default": name == default, "description": spec.description, "stages": stages})
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table
    from rich.console import Console

    table = Table("model", "stage", "size", "on disk", "source")
    for row in rows:
        for i, s in enumerate(row["stages"]):
            label = (row["name"] + (" (default)" if row["default"] else "")) if i == 0 else ""
            size = f"{s['size'] / 1e6:.1f} MB" if s["size"] else "?"
            table.add_row(label, s["stage"], size, "yes" if s["cached"] else "no", s["source"])
    Console().print(table)


def models_pull(name: str) -> None:
    spec = weights.resolve(name)
    for stage, src in spec.stages.items():
        what = f"stage '{stage}' of model '{name}'"
        path = weights.fetch(src, what, model=name)
        err.print(f"{stage}: {path}")
    for stage, src in spec.configs.items():
        weights.fetch(src, f"config of stage '{stage}'", model=name)
    err.print(f"model '{name}' is ready")

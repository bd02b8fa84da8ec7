"""Glue of `unclip mix` and of vary's steering options: check them, tell images from texts, write the
frames of a mix and its animated GIF. Everything that can fail on bad input fails before any sampling.
"""

import json
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unclip_cli.cli import run
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images, toolkit

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
GIF_FRAME_MS = 250


def _fraction(flag: str, value: float, *, zero_ok: bool = True) -> None:
    ok = 0 <= value <= 1 if zero_ok else 0 < value <= 1
    if not ok:  # also catches NaN
        raise UnclipError(f"{flag} must be {'between 0 and 1' if zero_ok else 'above 0 and at most 1'}, got {value}")


def steer_of(strength: float, prompt: str, prompt_mix: float, toward: str | None, source: str,
             amount: float) -> toolkit.Steer:
    """vary's steering options, checked."""
    _fraction("--strength", strength, zero_ok=False)
    _fraction("--prompt-mix", prompt_mix)
    _fraction("--amount", amount)
    if prompt_mix > 0 and not prompt.strip():
        raise UnclipError("--prompt-mix needs --prompt (the text whose prior embedding to mix toward)")
    if toward is None and (source or amount != toolkit.Steer.amount):
        raise UnclipError("--from and --amount need --toward (the caption to move the image toward)")
    if toward is not None and not toward.strip():
        raise UnclipError("--toward is empty")
    if toward is not None and toward.strip() == source.strip():
        raise UnclipError(f"--toward and --from are the same text ('{toward}'): there is no direction to move in")
    return toolkit.Steer(strength=strength, prompt=prompt.strip(), prompt_mix=prompt_mix, toward=toward,
                         source=source, amount=amount)


def parse_side(arg: str, name: str) -> tuple[tuple[str, object], str]:
    """A mix argument as (("image", PIL) or ("text", str), how it is recorded).

    `image:PATH` and `text:WORDS` say it outright. Otherwise an existing file is an image, an
    argument that looks like a path (an image extension, or a path separator) must be one, and
    anything else is a text.
    """
    if arg.startswith("image:"):
        path = Path(arg[len("image:"):])
        return ("image", images.load_image(path, f"{name}: image")), f"image:{path}"
    text = arg[len("text:"):] if arg.startswith("text:") else arg
    if not text.strip():
        raise UnclipError(f"{name} is empty: give an image file or a text")
    if arg.startswith("text:"):
        return ("text", text.strip()), f"text:{text.strip()}"
    path = Path(arg)
    if path.is_dir():
        raise UnclipError(f"{name}: {arg} is a folder (write text:{arg} to use it as a text)")
    if path.is_file():
        try:
            return ("image", images.load_image(path, f"{name}: image")), f"image:{path}"
        except UnclipError:
            raise UnclipError(f"{name}: {arg} is a file but not a readable image (write text:{arg} to use it "
                              "as a text)") from None
    if path.suffix.lower() in IMAGE_EXTS or "/" in arg or "\\" in arg:
        raise UnclipError(f"{name}: image {arg} does not exist (write text:{arg} to use it as a text)")
    return ("text", text.strip()), f"text:{text.strip()}"


def mix_ratios(a: str, b: str, ratio: float | None, frames: int | None) -> list[float]:
    """The ratios to decode."""
    if ratio is not None and frames is not None:
        raise UnclipError("give --ratio or --frames, not both")
    if frames is not None:
        if frames < 2:
            raise UnclipError(f"--frames must be at least 2, got {frames}")
        return [k / (frames - 1) for k in range(frames)]
    ratio = 0.5 if ratio is None else ratio
    _fraction("--ratio", ratio)
    return [ratio]


def same_sides(sa, sb) -> bool:
    if sa[0] != sb[0]:
        return False
    if sa[0] == "text":
        return sa[1] == sb[1]
    return sa[1].size == sb[1].size and np.array_equal(np.asarray(sa[1].convert("RGB")), np.asarray(sb[1].convert("RGB")))


def mix(a: str, b: str, ratio: float | None, frames: int | None, args: run.RunArgs) -> list[Path]:
    ratios = mix_ratios(a, b, ratio, frames)
    (sa, la), (sb, lb) = parse_side(a, "A"), parse_side(b, "B")
    if same_sides(sa, sb):
        raise UnclipError(f"A and B are the same {sa[0]}: every frame of the mix would be the same image")
    stages, opts, seeds = run.prepare(args)
    if "text" in (sa[0], sb[0]) and not stages.has("prior"):
        raise UnclipError(f"model '{stages.spec.name}' has no prior, so a mix side cannot be a text")
    for kind, value in (sa, sb):
        if kind == "text":
            run.warn_prompt(stages, value)
    progress = run.StageProgress(run.quiet(), args.on_step)
    series = []
    with progress.progress:
        for seed in seeds:
            x = toolkit.mix(stages, sa, sb, ratios, opts, torch.Generator().manual_seed(seed), progress)
            series.append(images.to_pil(x))
    return write_mix(series, seeds, ratios, args, stages, opts, progress.timings, {"mix_a": la, "mix_b": lb},
                     gif=frames is not None)


def _gif_bytes(frames: list[Image.Image]) -> bytes:
    buf = BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
    return buf.getvalue()


def write_mix(series, seeds, ratios, args, stages, opts, timings: dict, extra: dict, gif: bool) -> list[Path]:
    """PNG per (seed, ratio) and, for a series, a GIF per seed; prints the paths (or one JSON object)."""
    hashes = {s: stages.spec.stages[s].sha256 for s in stages.paths}
    records, gifs = [], []
    for seed, pils in zip(seeds, series):
        for r, im in zip(ratios, pils):
            params = run._params("mix", "", seed, im, stages, opts, hashes, {**extra, "ratio": round(r, 6)})
            data = images.png_bytes(im, params if args.metadata else None)
            records.append({"path": str(images.save_new(args.outdir, f"{seed}-mix-{r:.3f}", data)),
                            "seed": seed, "ratio": round(r, 6)})
        if gif:
            gifs.append(str(images.save_new(args.outdir, f"{seed}-mix", _gif_bytes(pils), ".gif")))
    if args.json:
        out = {"model": stages.spec.name, "images": records, "gifs": gifs, "timings": timings, "files": hashes,
               "size": opts.size}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write("".join(f"{p}\n" for p in [r["path"] for r in records] + gifs))
    return [Path(r["path"]) for r in records] + [Path(g) for g in gifs]

"""Glue of `unclip mix` and of vary's steering options: check them, tell images from texts, write the
frames of a mix and its animated GIF. Everything that can fail on bad input fails before any sampling.
"""

import dataclasses
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unclip_cli.cli import batches, run
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images, toolkit
from unclip_cli.train.data import IMAGE_EXTS

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
    """A series per seed (its frames, and a GIF with --frames), made and written chunk by chunk
    (cli/batches): a chunk is --batch-size series, by default about as many images as other verbs' chunks."""
    ratios = mix_ratios(a, b, ratio, frames)
    (sa, la), (sb, lb) = parse_side(a, "A"), parse_side(b, "B")
    if same_sides(sa, sb):
        raise UnclipError(f"A and B are the same {sa[0]}: every frame of the mix would be the same image")
    stages, opts, seeds = run.prepare(args, **run.mix_needs((sa[0], sb[0])))
    for kind, value in (sa, sb):
        if kind == "text":
            run.warn_prompt(stages, value)
    if args.batch_size is None:
        per_chunk = batches.default_batch_size(stages.paths, stages.device) // len(ratios)
        args = dataclasses.replace(args, batch_size=max(1, per_chunk))

    def make(chunk, progress):
        return [images.to_pil(toolkit.mix(stages, sa, sb, ratios, opts, torch.Generator().manual_seed(j.seed), progress))
                for j in chunk]

    save = _series_saver(ratios, args, stages, opts, {"mix_a": la, "mix_b": lb}, gif=frames is not None)
    return run.run_jobs([batches.Job("", s) for s in seeds], make, args, stages, opts, "mix", save=save)


def _gif_bytes(frames: list[Image.Image]) -> bytes:
    buf = BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
    return buf.getvalue()


def _series_saver(ratios, args: run.RunArgs, stages, opts, extra: dict, gif: bool):
    """save(series, job) -> [(path, fields)]: a PNG per ratio and, for --frames, the GIF, all or none; the
    paths printed once the series is in place (unless --json)."""
    hashes = run._hashes(stages)

    def save(pils, job) -> list:
        out = []
        try:
            for r, im in zip(ratios, pils):
                params = run._params("mix", "", job.seed, im, stages, opts, hashes, {**extra, "ratio": round(r, 6)})
                data = images.png_bytes(im, params if args.metadata else None)
                out.append((images.save_new(args.outdir, f"{job.seed}-mix-{r:.3f}", data), {"ratio": round(r, 6)}))
            if gif:
                out.append((images.save_new(args.outdir, f"{job.seed}-mix", _gif_bytes(pils), ".gif"), {"gif": True}))
        except BaseException:  # a full disk mid-series: no half series is left (signals wait: batches.run)
            for path, _ in out:
                path.unlink(missing_ok=True)
            raise
        if not args.json:
            sys.stdout.write("".join(f"{p}\n" for p, _ in out))
            sys.stdout.flush()
        if args.on_image is not None:  # `unclip serve` counts and shows what is written
            for path, _ in out:
                args.on_image(path)
        return out

    return save

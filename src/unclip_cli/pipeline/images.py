"""Images on disk: reading inputs and masks, tensor <-> PIL, and PNGs that carry their parameters.

Output files are never overwritten: each PNG is written to a temporary file and hard-linked to a
fresh name (`NNNNN-SEED-slug.png`), which fails instead of replacing an existing file.
"""

import json
import os
import re
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from unclip_cli.errors import UnclipError

JSON_KEY = "unclip"
A1111_KEY = "parameters"


def load_image(path: str | Path, what: str = "image") -> Image.Image:
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UnclipError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UnclipError(f"{what} {path} is a folder, not an image") from None
    except PermissionError:
        raise UnclipError(f"{what} {path} cannot be read (permission denied)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UnclipError(f"{what} {path} is not a readable image ({e.__class__.__name__})") from None


def edit_mask(image: Image.Image, mask: Image.Image | None, mask_path: str | None = None) -> np.ndarray:
    """Boolean [H, W] array, True where the image is to be regenerated.

    With a mask image: white (luminance >= 128) = edit, black = keep. Without one: the transparent
    pixels (alpha < 128) of an RGBA image, as in the DALL-E 2 edits API.
    """
    if mask is not None:
        if mask.size != image.size:
            raise UnclipError(
                f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]}"
            )
        if mask.mode in ("RGBA", "LA") and np.asarray(mask.getchannel("A")).min() < 255:
            m = np.asarray(mask.getchannel("A")) < 128  # a transparent-area mask, DALL-E style
        else:
            m = np.asarray(mask.convert("L")) >= 128
        where = f"mask {mask_path}"
    else:
        if "A" not in image.getbands():
            raise UnclipError("no --mask given and the image has no alpha channel: pass --mask (white = edit)")
        m = np.asarray(image.getchannel("A")) < 128
        where = "the image's alpha channel"
    if not m.any():
        raise UnclipError(f"{where} marks nothing to edit (mask is empty: white or transparent = edit)")
    return m


def to_tensor(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL -> [3, H, W] float in [-1, 1], optionally resized (bicubic) to size x size."""
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images, rounding as Karlo's runtime does."""
    x = (x.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((im * 255).round().astype("uint8")) for im in x]


def a1111_text(params: dict) -> str:
    """A1111-style infotext: the prompt, then `Key: value` pairs on one line."""
    prompt = params.get("prompt") or ""
    keys = [
        ("Steps", "decoder_steps"), ("Sampler", "sampler"), ("CFG scale", "decoder_guidance"),
        ("Seed", "seed"), ("Size", "size"), ("Model", "model"), ("Model hash", "model_hash"),
        ("Prior steps", "prior_steps"), ("Prior CFG scale", "prior_guidance"), ("SR steps", "sr_steps"),
        ("Mode", "mode"),
    ]
    pairs = [f"{label}: {params[k]}" for label, k in keys if params.get(k) not in (None, "")]
    negative = f"Negative prompt: {params['negative_prompt']}\n" if params.get("negative_prompt") else ""
    return f"{prompt}\n{negative}" + ", ".join(pairs)


def png_bytes(image: Image.Image, params: dict | None) -> bytes:
    info = None
    if params is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(A1111_KEY, a1111_text(params))
        info.add_itxt(JSON_KEY, json.dumps(params, sort_keys=True))
    buf = BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "image"


def check_outdir(outdir: Path) -> Path:
    """Create the output folder if needed and prove it is writable, before any work is done."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe = outdir / f".unclip-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UnclipError(f"output folder {outdir} is not writable ({e.strerror or e})") from None
    return outdir


def next_index(outdir: Path) -> int:
    nums = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5,})-", p.name))]
    return max(nums, default=-1) + 1


def save_new(outdir: Path, stem: str, data: bytes, suffix: str = ".png") -> Path:
    """Write data under a fresh `NNNNN-stem.png` name in outdir; never replaces an existing file."""
    tmp = outdir / f".unclip-tmp-{os.getpid()}-{stem}"
    tmp.write_bytes(data)
    try:
        index = next_index(outdir)
        while True:
            path = outdir / f"{index:05d}-{stem}{suffix}"
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                index += 1
    finally:
        tmp.unlink(missing_ok=True)


def read_params(path: str | Path) -> tuple[dict | None, str | None]:
    """(JSON parameters, A1111 text) stored in a PNG by `png_bytes`."""
    im = load_image(path)
    text = im.info.get(A1111_KEY)
    raw = im.info.get(JSON_KEY)
    return (json.loads(raw) if raw else None), text


def composite(original: Image.Image, generated: Image.Image, edit_mask: np.ndarray) -> Image.Image:
    """The generated image, scaled to the original's size, inside the mask; the original elsewhere."""
    mode = "RGBA" if "A" in original.getbands() else "RGB"
    base = np.asarray(original.convert(mode)).copy()
    gen = np.asarray(generated.resize(original.size, Image.BICUBIC).convert(mode))
    base[edit_mask] = gen[edit_mask]
    if mode == "RGBA":
        base[edit_mask, 3] = 255
    return Image.fromarray(base, mode)

"""Images on disk: reading inputs and masks, tensor <-> PIL, and PNGs that carry their parameters.

Output files are never overwritten, and never seen half-written: each PNG is written to a
temporary file in the output folder (a name unique to the process), flushed to disk (fsync), then
hard-linked to a fresh name (`NNNNN-SEED-slug.png`; a link fails instead of replacing an existing
file, so two processes writing into one folder never clobber each other) and the temporary name
removed, whatever happens.
"""

import contextlib
import errno
import itertools
import json
import math
import os
import re
import struct
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from unclip_cli.errors import UnclipError

JSON_KEY = "unclip"
A1111_KEY = "parameters"


MAX_PIXELS = 8192 * 8192  # larger inputs are refused before decoding (a 30000x30000 PNG needs 2.7 GB as RGB)
MAX_METADATA_CHARS = 64 * 1024  # `unclip info` reads a JSON chunk up to this size (ours are under 2 kB)
MAX_JSON_DEPTH = 32  # and nested this deep at most (ours: 2)


def load_image(path: str | Path, what: str = "image") -> Image.Image:
    """An image file as an 8-bit PIL image (RGB, RGBA, L or LA), its EXIF rotation applied; first frame only.

    Refused with an UnclipError: no file, not an image, truncated, over MAX_PIXELS.
    """
    path = Path(path)
    try:
        return _read(path, f"{what} {path}", MAX_PIXELS)
    except FileNotFoundError:
        raise UnclipError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UnclipError(f"{what} {path} is a folder, not an image") from None
    except PermissionError:
        raise UnclipError(f"{what} {path} cannot be read (permission denied)") from None
    except Image.DecompressionBombError:  # far over PIL's own limit: refused by Image.open from the header
        raise UnclipError(f"{what} {path}: image too large ({limit_text(MAX_PIXELS)})") from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as e:
        raise UnclipError(f"{what} {path} is not a readable image ({_reason(e, path)})") from None


def image_from_bytes(data: bytes, what: str, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """Bytes (an upload) read as `load_image` reads a file, but only in these PIL `formats` and up to
    `max_pixels` (checked from the header, before decoding); refused with an UnclipError."""
    if not data:
        raise UnclipError(f"{what} is empty")
    try:
        return _read(BytesIO(data), what, max_pixels, formats)
    except Image.DecompressionBombError:
        raise UnclipError(f"{what}: image too large ({limit_text(max_pixels)})") from None
    except UnidentifiedImageError:
        raise UnclipError(f"{what} is not an image in a format accepted here ({', '.join(formats)})") from None
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        why = "the file is truncated" if "truncated" in str(e).lower() else e.__class__.__name__
        raise UnclipError(f"{what} is not a readable image ({why})") from None


def _read(source, label: str, max_pixels: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
        warnings.simplefilter("ignore", UserWarning)  # e.g. PIL's "Corrupt EXIF data": the tag is then not used
        with Image.open(source, formats=formats) as im:
            _check_pixels(im.size, label, max_pixels)
            im.seek(0)  # an animation: its first frame
            im.load()
            return _eight_bit(_upright(im))


def _reason(e: Exception, path: Path) -> str:
    """Why PIL could not read a file, in a few words."""
    text = str(e)
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    if "truncated" in text.lower():
        return "the file is truncated"
    if "MAX_TEXT" in text:
        return "a metadata chunk is too large to read"
    if isinstance(e, UnidentifiedImageError):
        return "not an image format PIL knows"
    return e.__class__.__name__


def limit_text(max_pixels: int) -> str:
    side = math.isqrt(max_pixels)
    return f"the limit is {max_pixels // 10**6} megapixels, e.g. {side}x{side}"


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise UnclipError(f"{label} is {w}x{h}: image too large ({limit_text(max_pixels)})")
    if w < 1 or h < 1:
        raise UnclipError(f"{label} is {w}x{h}: it has no pixels")


def _upright(im: Image.Image) -> Image.Image:
    """A copy turned as its EXIF orientation says (a photo taken sideways); as it is if that tag is unreadable."""
    try:
        return ImageOps.exif_transpose(im)  # a new image, turned or not
    except (ValueError, TypeError, KeyError, IndexError, SyntaxError, OSError, struct.error):
        return im.copy()


def _eight_bit(im: Image.Image) -> Image.Image:
    """RGB, RGBA, L and LA as they are; 16-bit and float grey scaled to 8 bits; palettes and CMYK etc. to RGB(A)."""
    if im.mode in ("RGB", "RGBA", "L", "LA"):
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        top = 65535 if im.mode.startswith("I;16") or a.max() > 255 else 255  # "I" from 8-bit sources stays as is
        return Image.fromarray((np.clip(a, 0, top) * 255 // top).astype(np.uint8), "L")
    if im.mode == "F":  # float grey: 0..1, or 0..255 if any value is above 1
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 255.0 if a.max() > 1 else 1.0
        return Image.fromarray((np.clip(a, 0.0, top) * (255 / top)).round().astype(np.uint8), "L")
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGBA" if "A" in im.getbands() else "RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, La


def edit_mask(image: Image.Image, mask: Image.Image | None, mask_path: str | None = None, *,
              invert: bool = False) -> np.ndarray:
    """Boolean [H, W] array, True where the image is to be regenerated.

    With a mask image: white (luminance >= 128) = edit, black = keep. Without one: the transparent
    pixels (alpha < 128) of an RGBA image, as in the DALL-E 2 edits API. `invert`: the other way round.
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
    if invert:
        m = ~m
        if not m.any():
            raise UnclipError(f"{where}, inverted (--invert-mask), marks nothing to edit (it is all white or transparent)")
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
        ("Steps", "decoder_steps"), ("Sampler", "sampler"), ("Schedule type", "spacing"), ("CFG scale", "decoder_guidance"),
        ("Seed", "seed"), ("Size", "size"), ("Model", "model"), ("Model hash", "model_hash"),
        ("Prior steps", "prior_steps"), ("Prior CFG scale", "prior_guidance"),
        ("Prior candidates", "prior_candidates"), ("Image candidates", "image_candidates"),
        ("Negative rescale", "negative_rescale"), ("SR steps", "sr_steps"),
        ("Mode", "mode"), ("Precision", "dtype"),
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
    """Create the output folder if needed and prove it is writable, before any work is done. A new folder
    named like an image file (`-o cat.png`, the habit from tools whose -o is a file) is refused, not made."""
    if outdir.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif") and not outdir.is_dir():
        raise UnclipError(f"output folder {outdir} looks like an image file name: -o/--outdir is the folder the "
                          f"images go into, under numbered names (NNNNN-SEED-PROMPT.png); "
                          f"pass a folder, e.g. -o {str(outdir)[:-len(outdir.suffix)]}")
    probe = outdir / f".unclip-probe-{os.getpid()}"
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as e:
        raise UnclipError(f"output folder {outdir} is not writable ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):  # nothing to remove when the folder could not be made
            probe.unlink(missing_ok=True)
    return outdir


def next_index(outdir: Path) -> int:
    nums = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5,})-", p.name))]
    return max(nums, default=-1) + 1


_tmp_numbers = itertools.count()


def write_error(folder: Path, e: OSError) -> UnclipError:
    """The one-line error for a failed write into `folder` (full disk, quota, read-only, ...)."""
    if e.errno == errno.ENOSPC:
        return UnclipError(f"no space left on device writing to {folder}")
    if e.errno == errno.EDQUOT:
        return UnclipError(f"disk quota exceeded writing to {folder}")
    return UnclipError(f"cannot write to {folder} ({e.strerror or e})")


def _write_synced(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, flushed to the disk before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Make a new name in `folder` durable; best effort (not every file system can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_new(outdir: Path, stem: str, data: bytes, suffix: str = ".png") -> Path:
    """Write data under a fresh `NNNNN-stem.png` name in outdir, atomically; never replaces an existing
    file. A failed write (full disk: `write_error`) leaves no file behind."""
    tmp = outdir / f".unclip-tmp-{os.getpid()}-{next(_tmp_numbers)}-{stem}"
    try:
        _write_synced(tmp, data)
        index = next_index(outdir)
        while True:
            path = outdir / f"{index:05d}-{stem}{suffix}"
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                index += 1
    except OSError as e:
        raise write_error(outdir, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(outdir)
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` atomically (a temporary name beside it, fsync, rename over it): readers see the old
    file or the new one, never a part; a failed write leaves no temporary file."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f".unclip-tmp-{os.getpid()}-{next(_tmp_numbers)}-{path.name}"
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(folder, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(folder)


def read_params(path: str | Path) -> tuple[dict | None, str | None]:
    """(JSON parameters, A1111 text) stored in a PNG by `png_bytes`; hostile chunks give an UnclipError.

    The JSON chunk is only parsed (never evaluated) and only up to MAX_METADATA_CHARS characters and
    MAX_JSON_DEPTH levels of nesting (checked before parsing, so the parser never recurses deeply).
    """
    im = load_image(path)
    text = im.info.get(A1111_KEY)
    raw = im.info.get(JSON_KEY)
    text = str(text)[:MAX_METADATA_CHARS] if text is not None else None
    return (_parse_params(str(raw), Path(path)) if raw else None), text


def _parse_params(raw: str, path: Path) -> dict:
    where = f"{path}: its '{JSON_KEY}' metadata"
    if len(raw) > MAX_METADATA_CHARS:
        raise UnclipError(f"{where} is {len(raw)} characters, over the {MAX_METADATA_CHARS} limit; not read")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise UnclipError(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep; not read")
    try:
        params = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise UnclipError(f"{where} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(params, dict):
        raise UnclipError(f"{where} is not a JSON object (got {type(params).__name__})")
    return params


def json_depth(text: str) -> int:
    """Deepest nesting of [ and { in JSON text, outside strings; a loop, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def printable(text: str) -> str:
    """Text from a file, safe to print on a terminal: control characters (escape sequences) shown as \\xNN."""
    return "".join(c if c in "\n\t" or c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


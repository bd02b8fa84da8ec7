"""Training data: image+caption folders (the img2dataset layout) and the upsamplers' degradations."""

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip_cli.errors import UnclipError

# The file names unclip treats as images: a training folder's images, and what `unclip mix` takes for an
# image path (cli/toolkit.py). Every one is a format PIL reads.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def load_folder(folder) -> list[tuple[Path, str]]:
    """(image path, caption) for every image with a same-named .txt, sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    images = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) found in {root}")
    pairs = []
    for img in images:
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            raise ValueError(f"caption file {txt} is missing for image {img}")
        caption = txt.read_text(encoding="utf-8").strip()
        if not caption:
            raise ValueError(f"caption file {txt} is empty")
        pairs.append((img, caption))
    return pairs


def load_images(folder: str | Path, size: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """All images of an image+caption folder as uint8 [N, 3, size, size], and their captions."""
    try:
        pairs = load_folder(folder)
    except ValueError as e:
        raise UnclipError(str(e)) from None
    pairs = pairs[:limit] if limit else pairs
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BOX)) for p, _ in pairs])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), [c for _, c in pairs]


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of [B, C, H, W] with std sigma [B] (pixels)."""
    r = 3
    coords = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(coords[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # [B, 2r+1]
    B, C, H, W = x.shape
    y = F.pad(x, (r, r, r, r), mode="replicate").reshape(1, B * C, H + 2 * r, W + 2 * r)
    kh = k.repeat_interleave(C, 0)[:, None, None, :]
    kv = k.repeat_interleave(C, 0)[:, None, :, None]
    y = F.conv2d(F.conv2d(y, kh, groups=B * C), kv, groups=B * C)
    return y.reshape(B, C, H, W)


def degrade(low: torch.Tensor, kind: str, gen) -> torch.Tensor:
    """Corrupt low-res conditioning images in [-1, 1] so the upsampler learns to repair them."""
    B = low.shape[0]
    if kind == "none":
        return low
    sigma = 0.1 + torch.rand(B, generator=gen) * (0.6 if kind == "blur" else 1.2)
    low = gaussian_blur(low, sigma)
    if kind == "bsr":
        noise_std = torch.rand(B, generator=gen) * 0.04
        low = low + noise_std[:, None, None, None] * torch.randn(low.shape, generator=gen)
        out = []
        for i in range(B):  # JPEG round trip at a random quality
            im = Image.fromarray(((low[i].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=int(torch.randint(40, 96, (1,), generator=gen)))
            out.append(torch.from_numpy(np.asarray(Image.open(buf)).copy()).permute(2, 0, 1))
        low = to_float(torch.stack(out))
    return low.clamp(-1, 1)


def random_keep_masks(n: int, size: int, gen: torch.Generator, full: float = 0.1) -> torch.Tensor:
    """Keep masks [n, 1, size, size] (1 = known pixel) for training an inpainting decoder, GLIDE-style:
    a fraction `full` edits the whole image (plain generation), a quarter of the rest edits one half
    (left/right/top/bottom), the others a random rectangle of 1/4 to 3/4 of each side."""
    keep = torch.ones(n, 1, size, size)
    kind = torch.rand(n, generator=gen)
    sides = torch.randint(size // 4, 3 * size // 4 + 1, (n, 2), generator=gen)
    corner = torch.rand(n, 2, generator=gen)
    half = torch.randint(0, 4, (n,), generator=gen)
    h2 = size // 2
    for i in range(n):
        if kind[i] < full:
            keep[i] = 0
        elif kind[i] < full + (1 - full) / 4:
            sl = [(slice(None), slice(0, h2)), (slice(None), slice(h2, None)),
                  (slice(0, h2), slice(None)), (slice(h2, None), slice(None))][int(half[i])]
            keep[i, 0][sl] = 0
        else:
            h, w = int(sides[i, 0]), int(sides[i, 1])
            y, x = int(corner[i, 0] * (size - h + 1)), int(corner[i, 1] * (size - w + 1))
            keep[i, 0, y:y + h, x:x + w] = 0
    return keep

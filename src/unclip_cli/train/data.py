"""Training data: image+caption folders (the img2dataset layout) and the upsamplers' degradations."""

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip_cli.errors import UnclipError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


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

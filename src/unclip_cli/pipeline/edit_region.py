"""Where an edit happens: the square window the model sees, the mask in it, and the feathered paste-back.

The model makes square images (S x S, S = the output size). An image of any size is never stretched:
- the window is the smallest square that holds the mask's bounding box with a context margin of half
  its longer side on every side, and at least S (so no image pixel is sampled finer than the model
  draws); a small mask in a large image is therefore edited as a crop around it at the model's resolution;
- when that square is as large as the image's longer side, the window is the whole image, padded to
  a square (centred);
- the window is resized to S x S for the model and the result resized back (bicubic).
Padding (where the window leaves the image) repeats the image's edge pixels *and* its mask's edge
values: beside kept pixels the padding is known context (the background continued, not a mirrored
copy of nearby objects, nor a constant frame the decoder never saw in training), beside edited pixels
it is free for the model and cropped away afterwards.

Paste-back: every pixel of the (dilated) mask takes the model's pixel; with `blur` = PX, pixels up to
PX (Chebyshev distance) outside it blend linearly from the model's to the input's (the model redraws
that ring too: it is part of the edit region it is given); every pixel farther away is the input's,
bit for bit.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip_cli.pipeline import cascade, images

CONTEXT = 0.5  # margin on each side of the mask's box, as a fraction of its longer side


@dataclass(frozen=True)
class Window:
    top: int  # may be negative (padding above the image)
    left: int
    side: int
    height: int  # of the image
    width: int

    @property
    def whole(self) -> bool:
        return self.top == 0 and self.left == 0 and self.side == self.height == self.width


def _axis(lo: int, hi: int, dim: int, side: int) -> int:
    """Start of a window of `side` along an axis of length `dim`, around [lo, hi), inside if it fits."""
    if side > dim:
        return -((side - dim) // 2)
    return min(max((lo + hi) // 2 - side // 2, 0), dim - side)


def plan(mask: np.ndarray, size: int, context: float = CONTEXT) -> Window:
    """The square window (in image coordinates) to edit mask [H, W] (True = edit) at output size `size`."""
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(math.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * context)), size)
    if side >= max(H, W):
        side = max(H, W)
        return Window(-((side - H) // 2), -((side - W) // 2), side, H, W)
    return Window(_axis(y0, y1, H, side), _axis(x0, x1, W, side), side, H, W)


def cut(array: np.ndarray, win: Window) -> np.ndarray:
    """The window of an [H, W, ...] array, padded by repeating its edge where it leaves the image."""
    t, l = max(0, -win.top), max(0, -win.left)
    b, r = max(0, win.top + win.side - win.height), max(0, win.left + win.side - win.width)
    if t or l or b or r:
        array = np.pad(array, [(t, b), (l, r)] + [(0, 0)] * (array.ndim - 2), mode="edge")
    y, x = win.top + t, win.left + l
    return array[y:y + win.side, x:x + win.side]


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by `radius` pixels (a square neighbourhood)."""
    if radius <= 0:
        return mask
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0).numpy()


def feather(mask: np.ndarray, blur: int) -> np.ndarray:
    """Paste weights [H, W] in [0, 1]: 1 on the mask, (blur + 1 - d) / (blur + 1) at distance d <= blur
    outside it, exactly 0 farther away."""
    if blur <= 0:
        return mask.astype(np.float32)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    acc = m.clone()
    for _ in range(blur):  # acc counts the radii k = 0..blur at which the grown mask covers the pixel
        m = F.max_pool2d(m, 3, stride=1, padding=1)
        acc += m
    return (acc[0, 0] / (blur + 1)).numpy()


def dilation_radius(win: Window, dilate_px: int, decoder_size: int) -> int:
    """`dilate_px` pixels of the decoder's grid, in image pixels."""
    return math.ceil(dilate_px * win.side / decoder_size) if dilate_px > 0 else 0


def model_inputs(image: Image.Image, mask: np.ndarray, win: Window, size: int):
    """The window as the model's input: image [1, 3, S, S] in [-1, 1] and edit mask [1, 1, S, S] bool
    (a model pixel is edited if any image pixel it covers is)."""
    rgb = image.convert("RGB")
    if not win.whole:
        rgb = Image.fromarray(np.ascontiguousarray(cut(np.asarray(rgb), win)))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    m = Image.fromarray(np.ascontiguousarray(cut(mask, win)).astype(np.uint8) * 255).resize((size, size), Image.BOX)
    return x[None], torch.from_numpy(np.asarray(m) > 0)[None, None]


def paste(original: Image.Image, generated: Image.Image, win: Window, weights: np.ndarray) -> Image.Image:
    """The model's window output, resized back to the window, blended into the original with `weights`
    [H, W] (1 = model, 0 = original, bit for bit)."""
    mode = "RGBA" if "A" in original.getbands() else "RGB"
    base = np.asarray(original.convert(mode)).copy()
    gen = np.asarray(generated.resize((win.side, win.side), Image.BICUBIC).convert(mode))
    ys = slice(max(0, win.top), min(win.height, win.top + win.side))  # the image's part of the window
    xs = slice(max(0, win.left), min(win.width, win.left + win.side))
    gen = gen[ys.start - win.top:ys.stop - win.top, xs.start - win.left:xs.stop - win.left]
    w = weights[ys, xs]  # (weights outside the window are ignored: those pixels stay the original's)
    region = base[ys, xs]
    if mode == "RGBA":
        gen = gen.copy()
        gen[..., 3] = 255  # edited pixels become opaque
    full = w >= 1
    part = (w > 0) & ~full
    region[full] = gen[full]
    mix = w[part][:, None] * gen[part].astype(np.float32) + (1 - w[part][:, None]) * region[part].astype(np.float32)
    region[part] = np.round(mix).clip(0, 255).astype(np.uint8)
    base[ys, xs] = region
    return Image.fromarray(base, mode)


def edit(stages, image: Image.Image, mask: np.ndarray, prompts: list[str], opts, gens, report=cascade._noop, *,
         dilate: int = 0, blur: int = 0, negative: list[str] | None = None) -> list[Image.Image]:
    """Edit `image` (any size) where `mask` [H, W] is True: one result per generator (prompts: one for all,
    or one per generator), each the input's size. `dilate`: grow the mask by that many decoder pixels;
    `blur`: feather width in image pixels."""
    win = plan(mask, opts.size)
    grown = grow(mask, dilation_radius(win, dilate, stages.decoder_size()))
    # the model redraws the feathered ring too (else its pixels there would just be the input's again)
    x, m = model_inputs(image, grow(grown, blur), win, opts.size)
    out = cascade.edit(stages, x, m, list(prompts), opts, gens, report, one_by_one=True, negative=negative)
    weights = feather(grown, blur)
    return [paste(image, g, win, weights) for g in images.to_pil(out)]

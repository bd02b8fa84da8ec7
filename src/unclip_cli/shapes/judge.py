"""A pixel-level judge for the shapes world (see :mod:`unclip_cli.shapes`).

:func:`detect` finds the objects in an image: every pixel goes to the nearest palette colour
or the background when it is close to it (and clearly closer than to the runner-up), pixels
of one colour are grouped into 4-connected components (numpy label propagation with pointer
jumping; no scipy), and components smaller than ``MIN_AREA`` of the image are dropped. Each
object is measured with soft coverage (antialiased border pixels count fractionally): its
fill ratio of its bounding box gives the shape (triangle ~0.5, circle ~pi/4, square ~1), its
larger box side relative to the image gives the size, its box centre gives the position.

:func:`judge` matches the caption's objects to detected ones (colour first, then shape, size)
and reports, per attribute, whether the image agrees with the caption; :func:`summarize`
turns many judgements into accuracies.
"""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
from PIL import Image

from unclip_cli.shapes.world import BACKGROUND, COLORS, canonical

MAX_SIDE = 256  # larger images are box-downsampled to this before judging
ABS_THRESHOLD = 60.0  # max RGB distance from a palette colour for a pixel to be assigned
RATIO_THRESHOLD = 0.6  # ... and it must be below this fraction of the runner-up distance
ALPHA_FLOOR = 0.25  # coverage below this counts as background (noise) when measuring
MIN_AREA = 0.002  # components smaller than this fraction of the image are ignored
TRIANGLE_MAX_FILL = 0.67  # fill < this: triangle (ideal 0.5; ~0.6 when tiny)
CIRCLE_MAX_FILL = 0.89  # fill < this: circle (ideal pi/4 = 0.785), else square (ideal 1.0)
SIZE_THRESHOLD = 0.26  # extent >= this fraction of the side: "large" (~0.36), else "small" (~0.18)
ATTRIBUTES = ("color", "shape", "size", "relation", "count", "all")

_NAMES = list(COLORS)
_PALETTE = np.array([BACKGROUND] + [COLORS[c] for c in _NAMES], dtype=np.float32)  # 0 = bg


def _segment(rgb: np.ndarray) -> np.ndarray:
    """Palette index per pixel: 0 background, 1.. colours in COLORS order, -1 unassigned."""
    d2 = ((rgb[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=-1)
    best, second = order[..., 0], order[..., 1]
    d1 = np.take_along_axis(d2, best[..., None], -1)[..., 0]
    d2nd = np.take_along_axis(d2, second[..., None], -1)[..., 0]
    ok = (d1 <= ABS_THRESHOLD**2) & (d1 <= RATIO_THRESHOLD**2 * d2nd)
    return np.where(ok, best, -1).astype(np.int16)


def _label(cls: np.ndarray) -> np.ndarray:
    """4-connected components of equal, non-negative cls values: a root pixel index per pixel."""
    h, w = cls.shape
    idx = np.arange(h * w).reshape(h, w)
    same_h = (cls[:, 1:] == cls[:, :-1]) & (cls[:, 1:] >= 0)
    same_v = (cls[1:, :] == cls[:-1, :]) & (cls[1:, :] >= 0)
    a = np.concatenate([idx[:, :-1][same_h], idx[:-1, :][same_v]])
    b = np.concatenate([idx[:, 1:][same_h], idx[1:, :][same_v]])
    lab = np.arange(h * w)
    while True:
        la, lb = lab[a], lab[b]
        diff = la != lb
        if not diff.any():
            return lab.reshape(h, w)
        la, lb = la[diff], lb[diff]
        np.minimum.at(lab, np.maximum(la, lb), np.minimum(la, lb))  # hook larger root to smaller
        while True:  # pointer jumping until every pixel points at a root
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt


def _measure(rgb, mask, others, color_idx):
    """Soft area, soft width and height, and box centre of one component.

    Inside the component's box (grown by one pixel) every pixel that is not part of another
    object counts with its coverage alpha of this colour over the background (pixels of the
    component count 1), so antialiased borders and noisy holes are measured fractionally.
    """
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, mask.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, mask.shape[1])
    m, px = mask[y0:y1, x0:x1], rgb[y0:y1, x0:x1]
    bg, col = _PALETTE[0], _PALETTE[color_idx]
    alpha = np.clip(((px - bg) @ (col - bg)) / float((col - bg) @ (col - bg)), 0.0, 1.0)
    alpha = np.where((alpha >= ALPHA_FLOOR) & ~others[y0:y1, x0:x1], alpha, 0.0)
    cover = np.where(m, 1.0, alpha)
    width, height = cover.max(axis=0).sum(), cover.max(axis=1).sum()
    centre = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
    return float(cover.sum()), float(width), float(height), centre


def detect(image: Image.Image) -> list[dict]:
    """Objects in an image: [{color, shape, size, center (x,y in [0,1]), extent, fill, area}]."""
    image = image.convert("RGB")
    factor = math.ceil(max(image.size) / MAX_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    rgb = np.asarray(image, dtype=np.float32)
    h, w = rgb.shape[:2]
    cls = _segment(rgb)
    cls_obj = np.where(cls > 0, cls, -1)
    lab = _label(cls_obj).ravel()
    valid = cls_obj.ravel() >= 0
    roots, inverse, counts = np.unique(lab[valid], return_inverse=True, return_counts=True)
    keep = np.nonzero(counts >= max(4, MIN_AREA * h * w))[0]
    keep = keep[np.argsort(-counts[keep], kind="stable")][:16]
    comp = np.full(h * w, -1)
    comp[valid] = inverse
    comp = comp.reshape(h, w)
    kept = np.isin(comp, keep)
    found = []
    for k in keep:
        mask = comp == k
        color_idx = int(cls.ravel()[roots[k]])
        area, bw, bh, (cx, cy) = _measure(rgb, mask, kept & ~mask, color_idx)
        fill = area / max(bw * bh, 1e-6)
        if fill < TRIANGLE_MAX_FILL:
            shape = "triangle"
        else:
            shape = "circle" if fill < CIRCLE_MAX_FILL else "square"
        extent = max(bw / w, bh / h)
        found.append({
            "color": _NAMES[color_idx - 1],
            "shape": shape,
            "size": "large" if extent >= SIZE_THRESHOLD else "small",
            "center": (cx / w, cy / h),
            "extent": extent,
            "fill": fill,
            "area": area / (h * w),
        })
    return found


def relation_of(a: dict, b: dict) -> str:
    """The dominant-axis relation of object a to object b ("above" if a is mostly higher)."""
    dx = b["center"][0] - a["center"][0]
    dy = b["center"][1] - a["center"][1]
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


def _assess(spec: dict, matched: list) -> dict:
    objs = spec["objects"]
    out = {
        "color": all(m is not None and m["color"] == o["color"] for o, m in zip(objs, matched)),
        "shape": all(m is not None and m["shape"] == o["shape"] for o, m in zip(objs, matched)),
        "size": None,
        "relation": None,
    }
    if any(o["size"] for o in objs):
        out["size"] = all(
            m is not None and m["size"] == o["size"] for o, m in zip(objs, matched) if o["size"]
        )
    if spec["relation"] is not None:
        out["relation"] = None not in matched and relation_of(*matched) == spec["relation"]
    return out


def _score(spec: dict, matched: list) -> int:
    score = 0
    for o, m in zip(spec["objects"], matched):
        if m is not None:
            score += 4 * (m["color"] == o["color"]) + 2 * (m["shape"] == o["shape"])
            score += bool(o["size"]) and m["size"] == o["size"]
    return score


def judge(image: Image.Image, caption: str) -> dict:
    """Does the image show the caption? Booleans per attribute (None where not applicable)."""
    spec = canonical(caption)
    found = detect(image)
    k = len(spec["objects"])
    slots = list(range(len(found))) + [None] * max(0, k - len(found))
    # Best assignment of caption objects to detections; ties go to the larger detections.
    best_ix = max(
        permutations(slots, k),
        key=lambda ix: (
            _score(spec, [None if i is None else found[i] for i in ix]),
            -sum(i for i in ix if i is not None),
        ),
    )
    best = [None if i is None else found[i] for i in best_ix]
    out = _assess(spec, best)
    out["count"] = len(found) == k
    out["all"] = all(v for v in out.values() if v is not None)
    out["n_objects"] = k
    out["detected"] = found
    out["failure"] = failure(spec, found, out)
    return out


FAILURES = ("ok", "count", "binding", "color", "shape", "size", "relation")


def failure(spec: dict, found: list, verdict: dict) -> str:
    """The first thing wrong with an image, in the order of FAILURES: 'count' (another number of objects),
    'binding' (two objects whose colours and shapes are the caption's, bound the other way round: a red
    square and a blue circle drawn as a blue square and a red circle), then the first wrong attribute."""
    if verdict["all"]:
        return "ok"
    if not verdict["count"]:
        return "count"
    objs = spec["objects"]
    if len(objs) == 2 and not (verdict["color"] and verdict["shape"]):
        want = sorted((o["color"], o["shape"]) for o in objs)
        colors = sorted(o["color"] for o in objs) == sorted(d["color"] for d in found)
        shapes = sorted(o["shape"] for o in objs) == sorted(d["shape"] for d in found)
        if colors and shapes and sorted((d["color"], d["shape"]) for d in found) != want:
            return "binding"
    for attr in ("color", "shape", "size", "relation"):
        if verdict[attr] is False:
            return attr
    raise ValueError(f"a verdict that is not all right names nothing wrong: {verdict}")


def summarize(results: list[dict]) -> dict:
    """Accuracy per attribute (None ignored) overall and for one-/two-object prompts."""

    def group(rs):
        g = {"n": len(rs)}
        for attr in ATTRIBUTES:
            vals = [r[attr] for r in rs if r.get(attr) is not None]
            g[attr] = sum(map(bool, vals)) / len(vals) if vals else None
        return g

    def n_objects(r):
        return r.get("n_objects", 2 if r.get("relation") is not None else 1)

    return {
        "overall": group(results),
        "one_object": group([r for r in results if n_objects(r) == 1]),
        "two_objects": group([r for r in results if n_objects(r) == 2]),
    }

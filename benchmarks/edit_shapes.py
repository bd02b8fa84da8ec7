"""Edits on the bundled `shapes` model, judged: does the new object appear, is the old one untouched,
and is there a seam?

Each case: a 256x256 render with one large object in the left half; the right half is masked (white
= edit); the prompt names a new object. Per variant (plain known-region replacement, RePaint,
dilation + feathered paste-back, an inpainting decoder, ...) and seed:
- new_right: exactly one object is detected with its centre in the right half, of the prompt's colour
  and shape (shapes/judge.py: detect);
- old_kept: exactly one object in the left half, of the old colour and shape, and every input pixel
  of its box identical in the output;
- seam: column profiles of the background around the paste border (where the paste weight falls to
  0): mean level (RGB mean, 0-255) and texture (std of luminance over 5x5 windows that hold only
  background) in the 16 columns just inside the fully pasted area and the 16 just outside the
  pasted area, and the largest jump of the mean level between two neighbouring columns there.

Usage: python benchmarks/edit_shapes.py --seeds 4 --variants plain,repaint,blend --out benchmarks/results/edit_shapes.json
       (an existing --out file keeps the variants this run does not redo)
       (--inpaint-decoder DIR: a folder with decoder.safetensors and text_proj.safetensors of an
       inpainting decoder, for the variants inpaint and inpaint_blend)
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip_cli import options
from unclip_cli.pipeline import edit_region, stages as stages_mod
from unclip_cli.shapes import judge, world

from bench_settings import DDPM_25

CASES = [  # (old object, new prompt)
    (("blue", "square"), "a red circle"),
    (("green", "triangle"), "a yellow square"),
    (("red", "circle"), "a blue triangle"),
    (("yellow", "square"), "a purple circle"),
]
VARIANTS = {  # name: (model, resample, dilate, blur)
    "plain": ("shapes", 1, 0, 0),
    "repaint": ("shapes", 3, 0, 0),
    "blend": ("shapes", 1, 1, 4),
    "repaint_blend": ("shapes", 3, 1, 4),
    "inpaint": ("inpaint", 1, 0, 0),
    "inpaint_blend": ("inpaint", 1, 1, 4),
}
BAND = 16
SIZE = 256


def source(old: tuple[str, str], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y = float(rng.uniform(0.3, 0.7))
    scene = world.Scene((world.Obj(old[0], old[1], "large"),), ((0.25, y),), (0.34,), None, f"a large {old[0]} {old[1]}")
    return world.render(scene, SIZE)


def judged(out: Image.Image, src: Image.Image, old, new_prompt: str) -> dict:
    new = world.canonical(new_prompt)["objects"][0]
    found = judge.detect(out)
    right = [o for o in found if o["center"][0] > 0.5]
    left = [o for o in found if o["center"][0] <= 0.5]
    a, b = np.asarray(src), np.asarray(out.convert("RGB"))
    obj = np.any(np.abs(a.astype(int) - world.BACKGROUND).max(-1, keepdims=True) > 0, axis=-1)
    ys, xs = np.nonzero(obj)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return {
        "new_right": len(right) == 1 and right[0]["color"] == new["color"] and right[0]["shape"] == new["shape"],
        "new_present": any((o["color"], o["shape"]) == (new["color"], new["shape"]) for o in right),
        "new_color": any(o["color"] == new["color"] for o in right),
        "new_shape": any(o["shape"] == new["shape"] for o in right),
        "old_kept": len(left) == 1 and (left[0]["color"], left[0]["shape"]) == tuple(old)
                    and bool((a[box] == b[box]).all()),
        "objects_right": len(right),
    }


def seam_profile(out: Image.Image, src: Image.Image, weights: np.ndarray) -> dict:
    """Per-column background level and texture around the paste border (mask = right side)."""
    b = np.asarray(out.convert("RGB"), dtype=np.float32)
    a = np.asarray(src, dtype=np.float32)
    bg = (np.abs(b - 235).max(-1) < 40) & (np.abs(a - 235).max(-1) < 1)
    lum = torch.from_numpy(b.mean(-1))[None, None]
    mean = F.avg_pool2d(lum, 5, 1, 2, count_include_pad=False)
    var = F.avg_pool2d(lum**2, 5, 1, 2, count_include_pad=False) - mean**2
    std = var.clamp(min=0).sqrt()[0, 0].numpy()
    allbg = F.avg_pool2d(torch.from_numpy(bg.astype(np.float32))[None, None], 5, 1, 2)[0, 0].numpy() > 0.999
    col_w = weights.max(0)
    c1 = int(np.argmax(col_w >= 1))  # first fully pasted column
    c0 = int(np.argmax(col_w > 0))  # first column touched by the paste
    cols = range(c0 - BAND, c1 + BAND)
    level = [float(b[:, x][bg[:, x]].mean()) if bg[:, x].any() else float("nan") for x in cols]
    tex = [float(std[:, x][allbg[:, x]].mean()) if allbg[:, x].any() else float("nan") for x in cols]
    # the model drew an object right up to the fully pasted area's border while the first kept column
    # shows background: the object ends at the border (the "objects cut flat along the mask border")
    drawn = np.abs(b - 235).max(-1) >= 40
    cut = bool((drawn[:, c1] & ~drawn[:, c0 - 1]).sum() >= 4)
    return {"c0": c0, "c1": c1, "level": level, "texture": tex, "cut": cut}


def summarize_seams(profiles: list[dict]) -> dict:
    level = np.nanmean([p["level"] for p in profiles], axis=0)
    tex = np.nanmean([p["texture"] for p in profiles], axis=0)
    n_out, n_in = BAND, BAND  # first BAND columns: outside; last BAND: inside
    return {
        "level_outside": round(float(level[:n_out].mean()), 2), "level_inside": round(float(level[-n_in:].mean()), 2),
        "texture_outside": round(float(tex[:n_out].mean()), 3), "texture_inside": round(float(tex[-n_in:].mean()), 3),
        "max_column_step": round(float(np.nanmax(np.abs(np.diff(level)))), 2),
        "cut_at_border": round(float(np.mean([p["cut"] for p in profiles])), 3),
        "level_profile": [round(float(v), 2) for v in level], "texture_profile": [round(float(v), 3) for v in tex],
    }


def open_models(inpaint_dir: str | None):
    models = {"shapes": stages_mod.open_model("shapes", "cpu", torch.float32, SIZE, keep_loaded=True)[0]}
    if inpaint_dir:
        home = Path(tempfile.mkdtemp())
        spec = stages_mod.registry.resolve("shapes")
        lines = ['[models.inpaint]', 'description = "shapes with an inpainting decoder"', "[models.inpaint.defaults]",
                 *[f"{k} = {v!r}".replace("'", '"') for k, v in spec.defaults.items()], "[models.inpaint.stages]"]
        for stage, src in spec.stages.items():
            path = Path(inpaint_dir).resolve() / f"{stage}.safetensors" if stage in ("decoder", "text_proj") else src.path
            lines.append(f'{stage} = {{ path = "{path}" }}')
        (home / "weights.toml").write_text("\n".join(lines) + "\n")
        os.environ["UNCLIP_HOME"] = str(home)
        models["inpaint"] = stages_mod.open_model("inpaint", "cpu", torch.float32, SIZE, keep_loaded=True)[0]
    return models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4, help="seeds per case (4 cases)")
    ap.add_argument("--variants", default="plain,repaint,blend")
    ap.add_argument("--jump", type=int, default=5)
    ap.add_argument("--inpaint-decoder", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--examples", default=None, help="folder for a few example images")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = open_models(args.inpaint_decoder)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:, SIZE // 2:] = True
    out_path = Path(args.out) if args.out else None
    results = json.loads(out_path.read_text())["variants"] if out_path and out_path.exists() else {}
    for name in args.variants.split(","):
        model, resample, dilate, blur = VARIANTS[name]
        stages = models[model]
        opts = options.resolve(stages.spec.defaults, {**DDPM_25, "resample": resample, "jump": args.jump}, SIZE)
        rows, profiles, t0 = [], [], time.perf_counter()
        for ci, (old, prompt) in enumerate(CASES):
            for s in range(args.seeds):
                src = source(old, 1000 * ci + s)
                out = edit_region.edit(stages, src, mask, [prompt], opts, [torch.Generator().manual_seed(s)],
                                       dilate=dilate, blur=blur)[0]
                win = edit_region.plan(mask, SIZE)
                grown = edit_region.grow(mask, edit_region.dilation_radius(win, dilate, stages.decoder_size()))
                rows.append({"case": ci, "seed": s, **judged(out, src, old, prompt)})
                profiles.append(seam_profile(out, src, edit_region.feather(grown, blur)))
                if args.examples:  # every output, to look at (and re-measure) later
                    Path(args.examples).mkdir(parents=True, exist_ok=True)
                    out.save(Path(args.examples) / f"{name}-case{ci}-seed{s}.png")
                    src.save(Path(args.examples) / f"source-case{ci}-seed{s}.png")
        n = len(rows)
        results[name] = {
            "resample": resample, "jump": args.jump if resample > 1 else None, "mask_dilate": dilate, "mask_blur": blur,
            "model": model, "images": n, "seconds_per_image": round((time.perf_counter() - t0) / n, 2),
            **{k: round(sum(r[k] for r in rows) / n, 3) for k in ("new_right", "new_present", "new_color", "new_shape",
                                                                  "old_kept")},
            "seam": summarize_seams(profiles), "rows": rows,
        }
        short = {k: v for k, v in results[name].items() if k not in ("rows", "seam")}
        seam = {k: v for k, v in results[name]["seam"].items() if not k.endswith("profile")}
        print(name, json.dumps(short), json.dumps(seam), flush=True)
        if out_path:  # after every variant, merged with the variants of earlier runs
            out_path.write_text(json.dumps({"cases": CASES, "seeds": args.seeds, "size": SIZE,
                                            "variants": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""How faithfully an upsampler stage keeps a true image: true low-res renders of the shapes world in, the stage's
output against the true high-res render of the same scene.

    python benchmarks/sr_fidelity.py [--model shapes] [--stages sr256,sr1024] [--n 8] [--seed 0] [--threads 2] [--json OUT]

For each of --n scenes drawn from the shapes world (numpy seed --seed) and each stage, the scene is rendered at the
stage's input size, upsampled by the stage with the model's default sampler and steps (generator seed 0), and
compared with the render at the output size: mean absolute error in 0-255 levels inside the objects and over the
background, and the mean signed error per RGB channel inside the objects (a colour shift shows there). Plain bicubic
upsampling of the same input is the reference row. Stage sizes: sr256 32 -> 256 (the shapes decoder is 32 px), sr1024
256 -> 1024.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from unclip_cli import options
from unclip_cli.pipeline import cascade, images, stages as stages_mod
from unclip_cli.shapes import world

SIZES = {"sr256": (32, 256), "sr1024": (256, 1024)}


def errors(out: torch.Tensor, truth: torch.Tensor) -> dict:
    o, t = out[0].permute(1, 2, 0).numpy(), truth[0].permute(1, 2, 0).numpy()
    background = np.abs(t - t[0, 0]).sum(-1) < 0.05
    e = np.abs(o - t) * 127.5
    return {"object": float(e[~background].mean()), "background": float(e[background].mean()),
            "object_signed_rgb": [float(v) for v in (o - t)[~background].mean(0) * 127.5]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--stages", default="sr256,sr1024")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    st, _ = stages_mod.open_model(args.model, "cpu", torch.float32, 1024)
    opts = options.resolve(st.spec.defaults, {}, 1024)
    rng = np.random.default_rng(args.seed)
    scenes = [world.sample_scene(rng) for _ in range(args.n)]
    rows = {}
    for stage in args.stages.split(","):
        lo, hi = SIZES[stage]
        per = {"stage": [], "bicubic": []}
        for scene in scenes:
            low, truth = (images.to_tensor(world.render(scene, s))[None] for s in (lo, hi))
            out = cascade.upsample_stage(st, stage, low, hi, opts, [torch.Generator().manual_seed(0)])
            per["stage"].append(errors(out.float(), truth))
            bicubic = F.interpolate(low, size=(hi, hi), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
            per["bicubic"].append(errors(bicubic, truth))
        for name, errs in per.items():
            row = {k: round(float(np.mean([e[k] for e in errs])), 2) for k in ("object", "background")}
            row["object_signed_rgb"] = [round(float(v), 1) for v in np.mean([e["object_signed_rgb"] for e in errs], 0)]
            rows[f"{stage}:{name}"] = row
            print(f"{stage:7s} {name:8s} object {row['object']:6.2f}  background {row['background']:6.2f}  "
                  f"signed RGB in objects {row['object_signed_rgb']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "seed": args.seed, "options": vars(opts), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

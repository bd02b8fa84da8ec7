"""One-object count at 256 px (the default output): 6 size-less and 6 sized one-object prompts, 3 seeds each (700+).

Usage: python benchmarks/count_256.py MODEL   (results of 2026-12-01: benchmarks/results/count_256.out, where
shapes-old / shapes-sw were the bundled model with the previous / the size-word prior, via UNCLIP_HOME)
"""

import json
import sys

import numpy as np
import torch

from unclip_cli import options
from unclip_cli.pipeline import cascade, images, stages as stages_mod
from unclip_cli.shapes import judge, world

from bench_settings import DDPM_25
torch.set_num_threads(2)
model = sys.argv[1]
stages, _ = stages_mod.open_model(model, "cpu", torch.float32, 256, keep_loaded=True)
opts = options.resolve(stages.spec.defaults, DDPM_25, 256)
bare = [f"{'an' if c == 'orange' else 'a'} {c} {s}" for c in world.COLORS for s in world.SHAPES][::3]
sized = [f"a {z} {c} {s}" for z in world.SIZES for c in world.COLORS for s in world.SHAPES][::6]
out = {}
for kind, ps in (("bare", bare), ("sized", sized)):
    caps = [p for p in ps for _ in range(3)]
    gens = [torch.Generator().manual_seed(700 + i) for i in range(len(caps))]
    x = cascade.generate(stages, caps, opts, gens)
    v = [judge.judge(im, c) for im, c in zip(images.to_pil(x), caps)]
    out[kind] = {"count": float(np.mean([r["count"] for r in v])), "all": float(np.mean([r["all"] for r in v])), "n": len(v)}
print(model, json.dumps(out), flush=True)

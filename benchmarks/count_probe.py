"""Where does `shapes` draw the wrong number of objects? Probes for one-object prompts.

Usage: python benchmarks/count_probe.py [--per-prompt 4] [--out benchmarks/results/count_probe.json]
For one-object prompts with and without a size word ("a purple triangle", "a small purple triangle"), judged
by the shapes judge (count = exactly one object found), under:
  prior      the prior's embedding -> decoder (the default path), judged at the decoder's 32 px (and with
             --upsample after the 256 px upsampler);
  true       the CLIP embedding of a true render of the caption -> decoder (is the prior to blame?);
  guidance   the prior path with decoder guidance 1, 3 (default) and 5 (is guidance to blame?).
Prints and writes one JSON object: count accuracy and how many objects were found, per condition and prompt kind.
"""

import argparse
import json
from collections import Counter
from dataclasses import asdict, replace

import numpy as np
import torch

from unclip_cli import options
from unclip_cli.pipeline import cascade, images, stages as stages_mod
from unclip_cli.shapes import judge, world

from bench_settings import DDPM_25


def prompts() -> dict[str, list[str]]:
    bare = [f"{'an' if c == 'orange' else 'a'} {c} {s}" for c in world.COLORS for s in world.SHAPES]
    sized = [f"a {z} {c} {s}" for z in world.SIZES for c in world.COLORS for s in world.SHAPES]
    return {"no size word": bare, "with size word": sized[::2]}


def decode(stages, caps, embed, opts, seed):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(caps))]
    text, _ = cascade.encode_text(stages, caps)
    uncond, _ = cascade.encode_text(stages, [""] * len(caps))
    if embed is None:
        embed = cascade.prior_stage(stages, text, uncond, opts, gens)
    return cascade.decoder_stage(stages, embed, text, uncond, opts, gens), gens


def tally(pils, caps) -> dict:
    v = [judge.judge(im, c) for im, c in zip(pils, caps)]
    found = Counter(min(len(r["detected"]), 3) for r in v)
    return {"count": round(float(np.mean([r["count"] for r in v])), 3),
            "all": round(float(np.mean([r["all"] for r in v])), 3),
            "objects found (0/1/2/3+)": [found.get(k, 0) for k in range(4)], "n": len(v)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--upsample", action="store_true", help="also judge the prior path after the 256 px upsampler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stages, _ = stages_mod.open_model(args.model, "cpu", torch.float32, 256, keep_loaded=True)
    base = options.resolve(stages.spec.defaults, DDPM_25, 256)
    out = {"model": stages.spec.name, "per_prompt": args.per_prompt, "seed": args.seed, "options": asdict(base)}
    rng = np.random.default_rng(0)
    kinds = {kind: [p for p in ps for _ in range(args.per_prompt)] for kind, ps in prompts().items()}
    conditions = [("prior", None)] + [("true embedding", None)] + [("prior", g) for g in (1.0, 5.0)]
    for name, g in conditions:  # the most telling first; each line printed as soon as it is measured
        for kind, caps in kinds.items():
            opts = base if g is None else replace(base, decoder_guidance=g)
            embed = None
            if name == "true embedding":
                renders = [world.render(world.scene_from_caption(c, rng), 256) for c in caps]
                embed = cascade.encode_images(stages, renders)
            x, gens = decode(stages, caps, embed, opts, args.seed)
            label = name + ("" if g is None else f", decoder guidance {g:g}") + ", 32 px"
            out.setdefault(kind, {})[label] = tally(images.to_pil(x), caps)
            if args.upsample and name == "prior" and g is None:
                out[kind]["prior, 256 px"] = tally(images.to_pil(cascade.upsample_all(stages, x, base, gens)), caps)
            print(kind, "|", label, json.dumps(out[kind][label]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()

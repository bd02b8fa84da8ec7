"""Does the prior overshoot at high guidance? Its samples against the true CLIP embeddings of renders.

Usage: python benchmarks/prior_norms.py [--model shapes] [--guidance 1,1.5,2,3] [--per-prompt 8] [--json FILE]
For every held-out prompt: the mean norm of the CLIP image embeddings of `--per-prompt` true renders
(shapes.scene_from_caption, seeded), and, per prior guidance, the mean norm of as many prior samples (seeds
0..n-1, the model's default sampler and steps) and their mean cosine to the unit mean of the true embeddings
(for reference, the true embeddings' own mean cosine to it). Printed as a table per prompt type, and as JSON.
Classifier-free guidance extrapolates past the conditional prediction; where it pushes the sampled embedding
far outside the norm CLIP gives real images, the decoder meets inputs it was never trained on.
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from unclip_cli import options
from unclip_cli.pipeline import cascade, stages as stages_mod
from unclip_cli.shapes import world


def measure(stages, prompt: str, guidances: list[float], n: int, rng) -> dict:
    renders = [world.render(world.scene_from_caption(prompt, rng), 256) for _ in range(n)]
    true = cascade.encode_images(stages, renders).float()
    centre = F.normalize(true.mean(0), dim=-1)
    text, _ = cascade.encode_text(stages, [prompt] * n)
    uncond, _ = cascade.encode_text(stages, [""] * n)
    row = {"prompt": prompt, "objects": len(world.canonical(prompt)["objects"]),
           "true_norm": true.norm(dim=-1).mean().item(),
           "true_cos": F.cosine_similarity(true, centre[None]).mean().item()}
    for g in guidances:
        opts = options.resolve(stages.spec.defaults, {"prior_guidance": g}, stages.decoder_size())
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        emb = cascade.prior_stage(stages, text, uncond, opts, gens).float()
        row[f"g{g:g}"] = {"norm": emb.norm(dim=-1).mean().item(),
                          "cos": F.cosine_similarity(emb, centre[None]).mean().item()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--guidance", default="1,1.5,2,3")
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    guidances = [float(g) for g in args.guidance.split(",")]
    stages, _ = stages_mod.open_model(args.model, "cpu", torch.float32, None, keep_loaded=True)
    rng = np.random.default_rng(0)
    rows = [measure(stages, p, guidances, args.per_prompt, rng) for p, _ in world.heldout_prompts()]
    summary = {}
    for k in (1, 2):
        sel = [r for r in rows if r["objects"] == k]
        s = {"prompts": len(sel), "true_norm": np.mean([r["true_norm"] for r in sel]),
             "true_cos": np.mean([r["true_cos"] for r in sel])}
        for g in guidances:
            s[f"g{g:g}"] = {m: float(np.mean([r[f"g{g:g}"][m] for r in sel])) for m in ("norm", "cos")}
        summary[f"{k}_object" + ("s" if k > 1 else "")] = s
    print(f"{'prompts':12s} {'true norm':>9s} {'true cos':>8s} " + " ".join(f"{'g' + format(g, 'g') + ' norm':>9s} "
          f"{'cos':>5s}" for g in guidances))
    for name, s in summary.items():
        print(f"{name:12s} {s['true_norm']:9.2f} {s['true_cos']:8.3f} " + " ".join(
            f"{s[f'g{g:g}']['norm']:9.2f} {s[f'g{g:g}']['cos']:5.3f}" for g in guidances))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "per_prompt": args.per_prompt, "guidance": guidances,
                       "summary": summary, "prompts": rows}, f, indent=1, default=float)


if __name__ == "__main__":
    main()

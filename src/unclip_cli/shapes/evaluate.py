"""`unclip eval MODEL`: how well a model's images match their captions.

For the shapes world a pixel-level judge checks colour, shape, size, count and relation of every
generated image against its prompt, on held-out prompts (some use colour-shape combinations never
seen in training). Also a CLIP score (the model's own CLIP; mean cosine similarity of image and
prompt embeddings) and diversity (mean pairwise RMS pixel distance between images of one prompt).
The paper's ablation compares three ways to condition the decoder: (a) the caption alone (learned
null image embedding), (b) the CLIP *text* embedding in place of an image embedding, (c) the prior.
"""

import itertools

import numpy as np
import torch

from unclip_cli.pipeline import cascade as pipeline, images
from unclip_cli.shapes import judge, world as shapes

MODES = {"caption": "(a) caption only", "text_embed": "(b) CLIP text embedding", "prior": "(c) prior"}


def image_embeds(stages: pipeline.Stages, mode: str, text, uncond, opts, gens, report):
    if mode == "prior":
        return pipeline.prior_stage(stages, text, uncond, opts, gens, report)
    if mode == "text_embed":
        return text.embed
    null = stages.get("text_proj").null_image_embed(text.embed.shape[0], text.embed.dtype)
    return null


def run_mode(stages, prompts: list[str], per_prompt: int, mode: str, opts, seed: int, batch: int, report):
    """Images [len(prompts) * per_prompt] as PIL at opts.size, prompt-major."""
    out = []
    jobs = [(p, seed + i) for p in prompts for i in range(per_prompt)]
    for k in range(0, len(jobs), batch):
        chunk = jobs[k:k + batch]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        if mode == "prior":  # the verb's own path (image candidates included)
            out += images.to_pil(pipeline.generate(stages, [p for p, _ in chunk], opts, gens, report))
            continue
        text, _ = pipeline.encode_text(stages, [p for p, _ in chunk])
        uncond, _ = pipeline.encode_text(stages, [""] * len(chunk))
        emb = image_embeds(stages, mode, text, uncond, opts, gens, report)
        x = pipeline.decoder_stage(stages, emb, text, uncond, opts, gens, report)
        x = pipeline.upsample_all(stages, x, opts, gens, report)
        out += images.to_pil(x)
    return out


def clip_score(stages, pils, prompts) -> float:
    img = pipeline.encode_images(stages, pils)
    txt, _ = pipeline.encode_text(stages, prompts)
    return float(torch.nn.functional.cosine_similarity(img.float(), txt.embed.float()).mean())


def diversity(pils: list, per_prompt: int) -> float:
    arr = np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pils])
    dists = []
    for g in range(0, len(arr), per_prompt):
        group = arr[g:g + per_prompt]
        for i, j in itertools.combinations(range(len(group)), 2):
            dists.append(float(np.sqrt(((group[i] - group[j]) ** 2).mean())))
    return float(np.mean(dists)) if dists else 0.0


def failure_counts(verdicts: list[dict]) -> dict:
    """How many images went wrong in each way (judge.FAILURES: the first thing wrong), per object count."""
    out = {}
    for kind, k in (("one_object", 1), ("two_objects", 2)):
        vs = [v for v in verdicts if v["n_objects"] == k]
        if vs:
            out[kind] = {f: sum(v["failure"] == f for v in vs) for f in judge.FAILURES}
    return out


def per_prompt_results(verdicts: list[dict], caps: list[str], unseen: dict) -> list[dict]:
    """Each prompt's images: how many, the share fully right, and the count of each failure."""
    out = []
    for prompt in dict.fromkeys(caps):
        vs = [v for v, c in zip(verdicts, caps) if c == prompt]
        fails = {f: sum(v["failure"] == f for v in vs) for f in judge.FAILURES if f != "ok"}
        out.append({"prompt": prompt, "unseen": unseen[prompt], "images": len(vs),
                    "all": round(sum(v["all"] for v in vs) / len(vs), 4),
                    "failures": {f: n for f, n in fails.items() if n}})
    return out


def evaluate(stages, opts, *, per_prompt: int = 32, seed: int = 0, modes=("prior",), batch: int = 64,
             prompts: list[tuple[str, bool]] | None = None, report=pipeline._noop) -> dict:
    """Judge accuracies, CLIP score and diversity per conditioning mode."""
    prompts = prompts or shapes.heldout_prompts()
    texts = [p for p, _ in prompts]
    unseen = {p: u for p, u in prompts}
    results = {}
    for mode in modes:
        pils = run_mode(stages, texts, per_prompt, mode, opts, seed, batch, report)
        caps = [p for p in texts for _ in range(per_prompt)]
        verdicts = [judge.judge(im, c) for im, c in zip(pils, caps)]
        seen_v = [v for v, c in zip(verdicts, caps) if not unseen[c]]
        unseen_v = [v for v, c in zip(verdicts, caps) if unseen[c]]
        results[mode] = {
            "all_prompts": judge.summarize(verdicts),
            "seen_prompts": judge.summarize(seen_v) if seen_v else None,
            "unseen_prompts": judge.summarize(unseen_v) if unseen_v else None,
            "clip_score": round(clip_score(stages, pils, caps), 4),
            "diversity": round(diversity(pils, per_prompt), 4),
            "images": len(pils),
            "failures": failure_counts(verdicts),
            "by_prompt": per_prompt_results(verdicts, caps, unseen),
        }
        stages.release("clip")
    return results

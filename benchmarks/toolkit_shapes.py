"""Measure vary --strength, mix, text diffs and --negative-prompt on the bundled `shapes` model with its judge.

Usage: python benchmarks/toolkit_shapes.py [--n 16] [--series-n 8] [--frames 7] [--neg-n 32] [--only vary,mix,diff,negative]
       [--neg-cases 'a circle:circle:blue+red;...'] [--defaults] [--prior-file PATH]
       [--out benchmarks/results/toolkit_shapes.json]

Images are judged at the decoder's own size (32 px for shapes; the judge is right on 97.9% of true 32 px
renders, README). Sampling: DDPM 25 / 25 steps, guidance 3 / 3 (bench_settings.DDPM_25, the settings of the
README's older tables), or with --defaults the model's own defaults (weights.toml). Inputs are true renders
of the shapes world (shapes.scene_from_caption, seeded). Each setting is computed batched (one decoder
call over all seeds), through the same stage functions as the verbs (cascade.decoder_stage with `start`,
embeddings.slerp / text_diff, cascade.generate with `negative`); batched kernels round differently from
the CLI's one-image-at-a-time, so single images differ slightly from the CLI's, the statistics do not.

1. vary: each input's judged caption (colour, shape, size of its one object) kept, per --strength;
   diversity = mean pairwise RMS pixel distance (pixels in [0, 1]) between the variations of one input.
2. mix: image A -> image B, and text A -> text B (through the prior), frames at ratios 0..1, each seed's
   series decoded with the same noise; per series the judged label (colour+shape) per frame, and whether it
   changes exactly once, from A's label to B's (frames judged as neither count against it).
3. text diffs: an image of A, --from A --toward B, amounts 0..1; the same check on the series.
4. negative prompt: "a circle" and "a square" without a negative prompt, and with negatives naming the colour
   they are often drawn in, each with plain Kandinsky guidance (rescale 0) and with `--negative-prompt`'s
   guidance rescale: shares of images with the negative's colour, with the asked shape, with no object, with
   exactly one object; background level and grain. --prior-file measures another prior (e.g. an earlier one).
Prints progress to stderr and writes one JSON object.
"""

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unclip_cli import options
from unclip_cli.pipeline import cascade, embeddings, images, stages as stages_mod
from unclip_cli.shapes import judge, world

from bench_settings import DDPM_25

VARY_INPUTS = ("a large red circle", "a large blue square", "a large green triangle", "a small yellow circle")
MIX_PAIRS = (("a large red circle", "a large blue square"), ("a large green triangle", "a large orange circle"))
DIFF_CASES = (("a large red circle", "a large blue circle"), ("a large red circle", "a large red square"),
              ("a large yellow square", "a large purple square"))


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def render(caption: str, seed: int = 0):
    return world.render(world.scene_from_caption(caption, np.random.default_rng(seed)), 256)


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def label(im) -> str:
    """Judged colour and shape of the largest object ('none' if no object)."""
    found = judge.detect(im)
    return f"{found[0]['color']} {found[0]['shape']}" if found else "none"


def caption_kept(im, caption: str) -> bool:
    v = judge.judge(im, caption)
    return bool(v.get("all"))


def diversity(pils) -> float:
    arr = [np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pils]
    return float(np.mean([np.sqrt(((a - b) ** 2).mean()) for a, b in itertools.combinations(arr, 2)]))


def decode(stages, embeds, opts, seeds, start=None):
    """Batched decoder (empty caption, as vary) over rows of embeds, one generator per row."""
    empty, _ = cascade.encode_text(stages, [""] * len(seeds))
    x = cascade.decoder_stage(stages, embeds, empty, empty, opts, gens(seeds), start=start)
    return images.to_pil(x)


def measure_vary(stages, opts, n: int, strengths) -> dict:
    out = {}
    S = stages.decoder_size()
    for cap in VARY_INPUTS:
        src = render(cap)
        emb = cascade.encode_images(stages, [src]).expand(n, -1)
        x0 = images.to_tensor(src, S)[None].expand(n, -1, -1, -1)
        row = {"input_judged_kept": caption_kept(src.resize((S, S), resample=3), cap)}
        for s in strengths:
            t = time.perf_counter()
            pils = decode(stages, emb, opts, range(n), None if s >= 1 else (x0, s))
            kept = [caption_kept(p, cap) for p in pils]
            row[str(s)] = {"caption_kept": round(float(np.mean(kept)), 4), "diversity": round(diversity(pils), 4),
                           "labels": [label(p) for p in pils]}
            log(f"vary {cap!r} strength {s}: kept {np.mean(kept):.3f} div {row[str(s)]['diversity']} "
                f"({time.perf_counter() - t:.0f} s)")
        out[cap] = row
    summary = {str(s): {"caption_kept": round(float(np.mean([out[c][str(s)]["caption_kept"] for c in out])), 4),
                        "diversity": round(float(np.mean([out[c][str(s)]["diversity"] for c in out])), 4)}
               for s in strengths}
    return {"per_input": out, "mean": summary, "images_per_setting": n * len(VARY_INPUTS)}


def series_check(labels: list[str], a: str, b: str) -> dict:
    """Does the series go a, ..., a, b, ..., b (one change, from a's label to b's)?"""
    changes = sum(x != y for x, y in zip(labels, labels[1:]))
    ok = labels[0] == a and labels[-1] == b and changes == 1
    switch = next((i for i, (x, y) in enumerate(zip(labels, labels[1:])) if x != y), None)
    return {"labels": labels, "changes": changes, "one_change_a_to_b": ok, "switch_after_frame": switch}


def label_of(caption: str) -> str:
    o = world.canonical(caption)["objects"][0]
    return f"{o['color']} {o['shape']}"


def run_series(stages, opts, ea, eb, ratios, seeds, fn=embeddings.slerp) -> list[list[str]]:
    """Labels [seed][ratio]: every ratio decoded with the same seed (the same noise) per series."""
    per_ratio = []
    for r in ratios:
        pils = decode(stages, torch.cat([fn(ea[k:k + 1], eb[k:k + 1], r) for k in range(len(seeds))]), opts, seeds)
        per_ratio.append([label(p) for p in pils])
    return [[per_ratio[j][k] for j in range(len(ratios))] for k in range(len(seeds))]


def summarize_series(rows: list[dict]) -> dict:
    return {"series": len(rows), "one_change_a_to_b": round(float(np.mean([r["one_change_a_to_b"] for r in rows])), 4),
            "mean_changes": round(float(np.mean([r["changes"] for r in rows])), 3)}


def attribute_summary(case: str, rows: list[dict]) -> dict:
    """Per attribute (colour, shape) that differs between A and B: share of series where it changes once, A's to B's."""
    a, b = (label_of(c) for c in case.split(": ")[-1].split(" -> "))
    out = {}
    for k, name in enumerate(("color", "shape")):
        if a.split()[k] == b.split()[k]:
            continue
        seqs = [[lab.split()[k] if lab != "none" else "none" for lab in r["labels"]] for r in rows]
        checks = [series_check(seq, a.split()[k], b.split()[k]) for seq in seqs]
        out[name] = {"one_change_a_to_b": round(float(np.mean([c["one_change_a_to_b"] for c in checks])), 4),
                     "ends_right": round(float(np.mean([q[0] == a.split()[k] and q[-1] == b.split()[k] for q in seqs])), 4),
                     "mean_switch_ratio": _mean_switch(checks, len(rows[0]["labels"]))}
    return out


def _mean_switch(checks, frames: int):
    at = [(c["switch_after_frame"] + 0.5) / (frames - 1) for c in checks if c["one_change_a_to_b"]]
    return round(float(np.mean(at)), 3) if at else None


def reanalyze(path: str) -> None:
    """Add per-attribute summaries to a results file (no sampling)."""
    with open(path) as f:
        result = json.load(f)
    for part in ("mix", "text_diff"):
        for case, v in result.get(part, {}).get("cases", {}).items():
            v["per_attribute"] = attribute_summary(case, v["rows"])
            log(part, case, {k: v[k] for k in ("one_change_a_to_b", "mean_changes")}, v["per_attribute"])
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def measure_mix(stages, opts, n: int, frames: int) -> dict:
    ratios = [k / (frames - 1) for k in range(frames)]
    out = {}
    for a, b in MIX_PAIRS:
        for kind in ("image", "text"):
            t = time.perf_counter()
            if kind == "image":
                ea = cascade.encode_images(stages, [render(a)]).expand(n, -1)
                eb = cascade.encode_images(stages, [render(b)]).expand(n, -1)
            else:
                ea, eb = (prior_embeds(stages, opts, c, range(n)) for c in (a, b))
            rows = [series_check(lab, label_of(a), label_of(b)) for lab in run_series(stages, opts, ea, eb, ratios, range(n))]
            out[f"{kind}: {a} -> {b}"] = {**summarize_series(rows), "rows": rows}
            log(f"mix {kind} {a} -> {b}: {summarize_series(rows)} ({time.perf_counter() - t:.0f} s)")
    return {"ratios": ratios, "cases": out}


def prior_embeds(stages, opts, caption: str, seeds) -> torch.Tensor:
    text, _ = cascade.encode_text(stages, [caption] * len(seeds))
    uncond, _ = cascade.encode_text(stages, [""] * len(seeds))
    return cascade.prior_stage(stages, text, uncond, opts, gens(seeds))


def measure_text_diff(stages, opts, n: int, frames: int) -> dict:
    amounts = [k / (frames - 1) for k in range(frames)]
    out = {}
    for a, b in DIFF_CASES:
        t = time.perf_counter()
        zi = cascade.encode_images(stages, [render(a)]).expand(n, -1)
        txt, _ = cascade.encode_text(stages, [b, a])
        diff = lambda z, _unused, amount: embeddings.text_diff(z, txt.embed[0:1], txt.embed[1:2], amount)  # noqa: E731
        rows = [series_check(lab, label_of(a), label_of(b)) for lab in run_series(stages, opts, zi, zi, amounts, range(n), diff)]
        out[f"{a} -> {b}"] = {**summarize_series(rows), "rows": rows}
        log(f"text diff {a} -> {b}: {summarize_series(rows)} ({time.perf_counter() - t:.0f} s)")
    return {"amounts": amounts, "cases": out}


NEGATIVE_CASES = (("a circle", "circle", ("red", "orange")), ("a square", "square", ("purple",)))


def background(im) -> tuple[float, float]:
    """(level, grain) of the pixels the judge calls background: their mean offset from the world's background
    colour and their standard deviation (RGB 0-255, mean over channels; a true render: (0, 0))."""
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    px = rgb[judge._segment(rgb) == 0]
    if not len(px):
        return float("nan"), float("nan")
    return float((px.mean(0) - np.array(world.BACKGROUND, dtype=np.float32)).mean()), float(px.std(0).mean())


def judge_negative(pils, shape: str, neg: str | None) -> dict:
    """Shares of images with an object of the negative's colour, with the asked shape, with no object (noise),
    with exactly one object; the mean background level and grain (`background`)."""
    found = [judge.detect(p) for p in pils]
    share = lambda ok: round(float(np.mean([ok(f) for f in found])), 4)  # noqa: E731
    colours = sorted({o["color"] for f in found for o in f})
    return {"negative_colour": share(lambda f: any(o["color"] == neg for o in f)) if neg else None,
            "colours": {c: share(lambda f, c=c: any(o["color"] == c for o in f)) for c in colours},
            "shape": share(lambda f: any(o["shape"] == shape for o in f)), "no_object": share(lambda f: not f),
            "one_object": share(lambda f: len(f) == 1),
            **dict(zip(("background_level", "background_grain"),
                       np.round(np.nanmean([background(p) for p in pils], axis=0), 2).tolist())),
            "labels": [[f"{o['color']} {o['shape']}" for o in f] for f in found]}


def measure_negative(stages, opts, n: int, cases=NEGATIVE_CASES, rescales=(0.0, 1.0)) -> dict:
    """Each prompt without a negative prompt, then with each negative under each guidance rescale
    (--negative-rescale: 0.0 = Kandinsky's pattern alone; 1.0 = rescaled, the default before 2026-12-03 for all
    models and still for Karlo's)."""
    out = {}
    for prompt, shape, negs in cases:
        for neg, rescale in [(None, None)] + [(g, r) for g in negs for r in rescales]:
            t = time.perf_counter()
            o = opts if rescale is None else dataclasses.replace(opts, negative_rescale=rescale)
            x = cascade.generate(stages, [prompt] * n, o, gens(range(n)), negative=None if neg is None else [neg] * n)
            key = f"{prompt} | " + (f"negative '{neg}', rescale {rescale}" if neg else "no negative")
            out[key] = judge_negative(images.to_pil(x), shape, neg)
            log(f"{key}: " + ", ".join(f"{k} {v}" for k, v in out[key].items() if k != "labels")
                + f" ({time.perf_counter() - t:.0f} s)")
    return {"images_per_setting": n, "settings": out}


def parse_neg_cases(ap: argparse.ArgumentParser, text: str) -> list:
    """--neg-cases 'PROMPT:SHAPE:NEG+NEG;...' checked before any work: known shape and colour names only."""
    cases = []
    for case in text.split(";"):
        parts = [p.strip() for p in case.split(":")]
        negs = tuple(n.strip() for n in parts[2].split("+")) if len(parts) == 3 else ()
        if len(parts) != 3 or not parts[0] or parts[1] not in world.SHAPES or not negs \
                or not all(n in world.COLORS for n in negs):
            ap.error(f"--neg-cases: {case!r} is not 'PROMPT:SHAPE:COLOUR+COLOUR' (shapes: {', '.join(world.SHAPES)}; "
                     f"colours: {', '.join(world.COLORS)})")
        cases.append((parts[0], parts[1], negs))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--n", type=int, default=16, help="seeds per setting (vary, mix, text diffs)")
    ap.add_argument("--series-n", type=int, default=8, help="seeds (series) per mix / text-diff case")
    ap.add_argument("--neg-n", type=int, default=32, help="seeds per setting for the negative prompt")
    ap.add_argument("--neg-prompts", default=",".join(c[0] for c in NEGATIVE_CASES), help="which negative-prompt cases")
    ap.add_argument("--neg-cases", help="other negative-prompt cases: 'PROMPT:SHAPE:NEG+NEG;...', e.g. "
                    "'a circle:circle:blue+red;a square:square:red' (replaces --neg-prompts)")
    ap.add_argument("--defaults", action="store_true", help="sample with the model's own defaults (weights.toml) "
                    "instead of the pinned DDPM 25 / guidance 3 settings of the README's older tables")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--strengths", default="1.0,0.8,0.6,0.4")
    ap.add_argument("--only", default="vary,mix,diff,negative")
    ap.add_argument("--out", default="benchmarks/results/toolkit_shapes.json")
    ap.add_argument("--reanalyze", action="store_true", help="only add per-attribute summaries to --out")
    ap.add_argument("--prior-file", help="sample with this prior instead of the bundled one (e.g. an earlier "
                    "one: git show 490b26c^:src/unclip_cli/bundled/shapes/prior.safetensors > old_prior.safetensors)")
    args = ap.parse_args()
    cases = parse_neg_cases(ap, args.neg_cases) if args.neg_cases else \
        [c for c in NEGATIVE_CASES if c[0] in args.neg_prompts.split(",")]
    if args.reanalyze:
        return reanalyze(args.out)
    stages, size = stages_mod.open_model(args.model, "cpu", torch.float32, None, keep_loaded=True)
    if args.prior_file:
        stages.paths["prior"] = Path(args.prior_file)
    S = stages.decoder_size()
    opts = options.resolve(stages.spec.defaults, {} if args.defaults else DDPM_25, S)
    result = {"model": args.model, "prior_file": args.prior_file, "size": S, "options": {k: getattr(opts, k) for k in options.BY_NAME},
              "threads": torch.get_num_threads()}
    only = args.only.split(",")
    t0 = time.perf_counter()
    if "vary" in only:
        result["vary"] = measure_vary(stages, opts, args.n, [float(s) for s in args.strengths.split(",")])
    if "mix" in only:
        result["mix"] = measure_mix(stages, opts, args.series_n, args.frames)
    if "diff" in only:
        result["text_diff"] = measure_text_diff(stages, opts, args.series_n, args.frames)
    if "negative" in only:
        result["negative"] = measure_negative(stages, opts, args.neg_n, cases)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()

"""Where do the `shapes` model's caption errors come from? CLIP, the prior, or the decoder.

Usage: python benchmarks/diagnose_shapes.py [--model shapes] [--per-prompt 8] [--relations 300]
       python benchmarks/diagnose_shapes.py --clip runs/x/clip.safetensors   (checks 1, 4 and 5 only)
On true renders of the held-out prompts (shapes.scene_from_caption, seeded):
1. CLIP retrieval: is each render's embedding closest to its own prompt's among the held-out prompts
   (24 until 2026-12-01, 30 since; files written before 2026-12-02 fifth session label it "_of_24" either way)?
2. Prior: is the prior's embedding for a prompt nearest to a render of that same prompt?
3. Decoder alone: fed the renders' *true* CLIP image embeddings (and captions), judged at its size (also per
   prompt: the share of its images right in every respect).
4. Relations in CLIP: for two-object renders, the right relation among the four, and "A rel B" vs "B rel A";
   and the mean cosine similarity of the text embeddings of the four captions that differ only in the relation.
5. Layout in CLIP's image embedding: a linear probe (trained on 2400 two-object renders, tested on 600
   others) for whether the two objects are stacked (above/below) or side by side (left/right of); and,
   as a control that such a probe finds what the embedding holds, one for "one of the objects is red".
Prints one JSON object.
"""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from unclip_cli.models import clip
from unclip_cli.options import Options
from unclip_cli.pipeline import cascade as pipeline, images, stages as stages_mod
from unclip_cli.shapes import judge, world as shapes
from unclip_cli.weights import checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--relations", type=int, default=300)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--clip", metavar="FILE", help="only the CLIP checks (4 and 5), on this CLIP stage file")
    args = ap.parse_args()
    if args.clip:
        enc = file_encoders(args.clip)
        out = {"clip": args.clip, **retrieval_top1(*enc, args.per_prompt)[0], **relation_checks(*enc, args.relations),
               "clip_linear_probes": layout_probe(enc[0])}
        print(json.dumps(out, indent=1))
        return
    stages, _ = stages_mod.open_model(args.model, "cpu", torch.float32, None, keep_loaded=True)
    size = stages.decoder_size()
    opts = Options(size=size, decoder_guidance=args.guidance, prior_guidance=3.0)
    retrieval, caps, renders, emb = retrieval_top1(*encoders(stages), args.per_prompt)

    gens = [torch.Generator().manual_seed(i) for i in range(len(caps))]
    t, _ = pipeline.encode_text(stages, caps)
    u, _ = pipeline.encode_text(stages, [""] * len(caps))
    prior_emb = F.normalize(pipeline.prior_stage(stages, t, u, opts, gens), dim=-1)
    prior_nn = np.mean([caps[j] == c for j, c in zip((prior_emb @ emb.T).argmax(1).tolist(), caps)])

    verdicts = []
    for k in range(0, len(caps), 64):
        sl = slice(k, k + 64)
        t, _ = pipeline.encode_text(stages, caps[sl])
        u, _ = pipeline.encode_text(stages, [""] * len(caps[sl]))
        x = pipeline.decoder_stage(stages, pipeline.encode_images(stages, renders[sl]), t, u, opts, gens[sl])
        verdicts += [judge.judge(im, c) for im, c in zip(images.to_pil(x), caps[sl])]

    relations = relation_checks(*encoders(stages), args.relations)
    layout = layout_probe(encoders(stages)[0])

    print(json.dumps({
        "model": args.model, "decoder_size": size, "per_prompt": args.per_prompt,
        **retrieval,
        "prior_nearest_render_same_prompt": round(float(prior_nn), 4),
        "decoder_from_true_embeddings": judge.summarize(verdicts),
        "decoder_from_true_embeddings_by_prompt": by_prompt(verdicts, caps),
        **relations,
        "clip_linear_probes": layout,
    }, indent=1))


def by_prompt(verdicts: list[dict], caps: list[str]) -> dict:
    """{prompt: share of its images right in every respect}, in the held-out list's order."""
    out: dict[str, list] = {}
    for v, c in zip(verdicts, caps):
        out.setdefault(c, []).append(bool(v["all"]))
    return {c: round(sum(r) / len(r), 4) for c, r in out.items()}


def retrieval_top1(encode_images, encode_text, per_prompt: int):
    """{"clip_retrieval_top1_of_N": how often a true render of a held-out prompt is nearest (CLIP cosine) to its own
    prompt among the N held-out prompts (24 until 2026-12-01, 30 since)}, and the captions, renders and unit image
    embeddings it used."""
    prompts = [p for p, _ in shapes.heldout_prompts()]
    rng = np.random.default_rng(0)
    caps = [p for p in prompts for _ in range(per_prompt)]
    renders = [shapes.render(shapes.scene_from_caption(p, rng), 256) for p in caps]
    emb = F.normalize(encode_images(renders), dim=-1)
    text = F.normalize(encode_text(prompts), dim=-1)
    hit = np.mean([prompts[j] == c for j, c in zip((emb @ text.T).argmax(1).tolist(), caps)])
    return {f"clip_retrieval_top1_of_{len(prompts)}": round(float(hit), 4)}, caps, renders, emb


def encoders(stages):
    """(images -> embeddings, prompts -> embeddings) through a model's CLIP."""
    return (lambda ims: pipeline.encode_images(stages, ims), lambda ps: pipeline.encode_text(stages, ps)[0].embed)


def file_encoders(path: str):
    """The same for a bare CLIP stage file (e.g. one a training run just exported)."""
    model, _ = checkpoint.build(path, "clip", expect_kind="clip")
    tok, size = clip.Tokenizer(model.positional_embedding.shape[0]), clip.image_size(model)

    def images_fn(ims):
        with torch.no_grad():
            return clip.encode_image(model, torch.stack([clip.preprocess(im, size) for im in ims]))

    def text_fn(prompts):
        with torch.no_grad():
            return clip.encode_text(model, *tok(prompts)[:2]).embed

    return images_fn, text_fn


def relation_checks(encode_images, encode_text, n: int) -> dict:
    """On n random two-object renders: the right relation among the four, "A rel B" over "B rel A", and the
    mean cosine between the text embeddings of the four captions that differ only in the relation."""
    if not n:
        return {"clip_relation_top1_of_4": None, "clip_order_a_rel_b_vs_b_rel_a": None,
                "clip_text_cosine_between_relations": None}
    rel_ok = order_ok = 0
    text_cos = []
    rrng = np.random.default_rng(1)
    for _ in range(n):
        sc = shapes.sample_scene(rrng, two_objects_prob=1.0)
        a, b = sc.objects
        cap = lambda r, x, y: f"a {x.color} {x.shape} {r} a {y.color} {y.shape}"  # noqa: E731
        cands = [cap(r, a, b) for r in shapes.RELATIONS] + [cap(sc.relation, b, a)]
        e = F.normalize(encode_images([shapes.render(sc, 256)]), dim=-1)
        tn = F.normalize(encode_text(cands), dim=-1)
        s = (e @ tn.T)[0]
        c = tn[:4] @ tn[:4].T
        text_cos.append(float((c.sum() - c.diagonal().sum()) / 12))
        truth = shapes.RELATIONS.index(sc.relation)
        rel_ok += int(s[:4].argmax()) == truth
        order_ok += bool(s[truth] > s[4])
    return {"clip_relation_top1_of_4": round(rel_ok / n, 4), "clip_order_a_rel_b_vs_b_rel_a": round(order_ok / n, 4),
            "clip_text_cosine_between_relations": round(float(np.mean(text_cos)), 4)}


def layout_probe(encode_images, n_train: int = 2400, n_test: int = 600) -> dict:
    """Held-out accuracy of linear probes on CLIP image embeddings of two-object renders: 'stacked or side
    by side' (chance 0.5), and as a control that the probe works, 'is one of the objects red'."""
    rng = np.random.default_rng(3)
    scenes = [shapes.sample_scene(rng, two_objects_prob=1.0) for _ in range(n_train + n_test)]
    e = torch.cat([encode_images([shapes.render(sc, 256) for sc in scenes[k:k + 200]])
                   for k in range(0, len(scenes), 200)])
    e = 10 * F.normalize(e.float(), dim=-1)
    stacked = torch.tensor([sc.relation in ("above", "below") for sc in scenes])
    red = torch.tensor([any(o.color == "red" for o in sc.objects) for sc in scenes])
    return {"stacked_vs_side_by_side": _probe(e, stacked, n_train), "red_present": _probe(e, red, n_train),
            "red_present_base_rate": round(float(red[n_train:].float().mean()), 4)}


def _probe(x: torch.Tensor, y: torch.Tensor, n_train: int) -> float:
    gen = torch.Generator().manual_seed(0)
    w = (0.01 * torch.randn(x.shape[1], generator=gen)).requires_grad_()
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(500):
        loss = F.binary_cross_entropy_with_logits(x[:n_train] @ w + b, y[:n_train].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (x[n_train:] @ w + b) > 0
    return round(float((pred == y[n_train:]).float().mean()), 4)


if __name__ == "__main__":
    main()

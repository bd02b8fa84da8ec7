"""The unCLIP cascade as short stage functions: CLIP -> prior -> decoder -> upsamplers.

`generate` and `edit` are compositions of the same stages (vary and mix, in `pipeline/toolkit.py`, too). Each stage reads how it samples
(schedule, prediction type, variance, clamp) from its `DiffusionSpec` (`Stages.diffusion`), and
its module is loaded when the stage starts and released when it ends (`pipeline/stages.py`). Noise
comes only from the per-image generators passed in, in Karlo's order: prior init, prior steps,
decoder init, decoder steps, upsampler init, upsampler steps.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unclip_cli.diffusion import gaussian, repaint, samplers
from unclip_cli.errors import UnclipError
from unclip_cli.models import clip
from unclip_cli.models.clip import TextEncoding
from unclip_cli.models.unet import inpaint_inputs
from unclip_cli.options import Options
from unclip_cli.pipeline.stages import Stages

Report = Callable[[str, int, int], None]  # (stage, steps done, steps total)


def _noop(stage: str, done: int, total: int) -> None:
    pass


# Stages ------------------------------------------------------------------------------------


def encode_text(stages: Stages, prompts: list[str]) -> tuple[TextEncoding, list[str]]:
    """CLIP text encodings of prompts, and the words each prompt lost to truncation."""
    model = stages.get("clip")
    if stages.tokenizer is None:
        stages.tokenizer = clip.Tokenizer(stages.context_length())
    ids, mask, dropped = stages.tokenizer(prompts)
    with torch.no_grad():
        return clip.encode_text(model, ids, mask), dropped


def has_image_tower(stages: Stages) -> bool:
    return hasattr(stages.get("clip").visual, "image_size")  # not models.clip.AbsentTower: a text-only CLIP


def encode_images(stages: Stages, images) -> torch.Tensor:
    model = stages.get("clip")
    if not has_image_tower(stages):
        raise UnclipError(f"model '{stages.spec.name}' has no CLIP image encoder; this needs one")
    size = clip.image_size(model)
    pixels = torch.stack([clip.preprocess(im, size) for im in images])
    with torch.no_grad():
        return clip.encode_image(model, pixels)


def _sample(opts: Options, denoise: samplers.Denoiser, x, steps: int, gens, name: str, report: Report,
            post_step=None, timesteps=None):
    """Sample a stage (over `timesteps` if given, e.g. img2img's tail); an edit (post_step given) resamples
    RePaint-style when opts.resample > 1."""
    timesteps = timesteps or gaussian.spaced(denoise.schedule, steps, opts.spacing)
    resample = opts.resample if post_step is not None else 1
    total = len(timesteps) * resample
    report(name, 0, total)
    cb = lambda i, t, x: report(name, i + 1, total)  # noqa: E731
    fn = samplers.SAMPLERS[opts.sampler]
    if resample > 1 and opts.sampler not in repaint.SUPPORTED:
        raise UnclipError(f"--resample needs --sampler {' or '.join(repaint.SUPPORTED)}, not {opts.sampler}")
    with torch.no_grad():
        if resample > 1:
            return repaint.repaint(fn, denoise, x, denoise.schedule, timesteps, generators=gens, resample=resample,
                                   jump=opts.jump, callback=cb, post_step=post_step)
        return fn(denoise, x, denoise.schedule, timesteps, generators=gens, callback=cb, post_step=post_step)


def prior_stage(stages: Stages, text: TextEncoding, uncond: TextEncoding, opts: Options, gens, report: Report = _noop,
                rescale: float = 0.0):
    """CLIP text encoding -> CLIP image embedding [B, D] (denormalised). `rescale`: samplers.guided's.

    With opts.prior_candidates = N > 1 each image gets N rows that all draw from its generator (taking turns at
    every step) and the row with the highest cosine to the text embedding is kept, as the DALL-E 2 paper samples
    its prior (N = 2). A negative prompt's own embedding is chosen the same way, against the negative text."""
    if not stages.has("prior"):
        raise UnclipError(f"model '{stages.spec.name}' has no prior: it can only make variations (`unclip vary`)")
    n = opts.prior_candidates
    if n > 1:
        text, uncond, gens = text.repeat_rows(n), uncond.repeat_rows(n), [g for g in gens for _ in range(n)]
    prior = stages.get("prior")
    spec = stages.diffusion("prior")
    both = TextEncoding.cat([uncond, text])
    cond = dict(text_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask)
    pair = dict(text_embed=both.embed, text_tokens=both.tokens, text_mask=both.mask)
    if opts.prior_guidance == 1.0:
        net = lambda x, t: prior(x, torch.tensor(t, device=x.device), **cond)  # noqa: E731
    else:
        net2 = lambda x, t: prior(x, torch.tensor(t, device=x.device), **pair)  # noqa: E731
        net = samplers.guided(net2, opts.prior_guidance, spec.guided_channels, rescale)
    denoise = samplers.Denoiser(net, spec, stages.dtype)
    D = prior.cfg.embedding_dim
    x = samplers.randn((len(gens), D), gens, stages.device, torch.float32)
    z = _sample(opts, denoise, x, opts.prior_steps, gens, "prior", report)
    out = prior.denormalize(z).float()
    stages.release("prior")
    return out if n == 1 else closest_to_text(out, text.embed, n)


def closest_to_text(candidates: torch.Tensor, text_embed: torch.Tensor, n: int) -> torch.Tensor:
    """From [B * n, D] candidates (n per image, in a row) the one per image with the highest cosine to its text."""
    return candidates[best_rows(candidates, text_embed, n)]


def best_rows(embeds: torch.Tensor, text_embed: torch.Tensor, n: int) -> torch.Tensor:
    """Row indices, one per image, of the [B * n, D] embeddings (n per image, in a row) with the highest cosine to
    the text embedding of their image (ties: the first)."""
    score = F.cosine_similarity(embeds.float(), text_embed.float(), dim=-1).view(-1, n)
    return score.argmax(1) + torch.arange(score.shape[0], device=score.device) * n


def closest_images(stages: Stages, x: torch.Tensor, text_embed: torch.Tensor, n: int) -> torch.Tensor:
    """From [B * n, 3, S, S] images in [-1, 1] (n per image, in a row; `text_embed` their prompts' CLIP text
    embeddings, a row each) the one per image whose CLIP image embedding is closest to its prompt's."""
    from unclip_cli.pipeline.images import to_pil  # the PNGs' own 8-bit rounding, as `unclip eval` scores them

    embeds = encode_images(stages, to_pil(x))
    stages.release("clip")
    return x[best_rows(embeds, text_embed, n).to(x.device)]


def decoder_stage(
    stages: Stages, image_embed, text: TextEncoding, uncond: TextEncoding, opts: Options, gens,
    report: Report = _noop, known: tuple[torch.Tensor, torch.Tensor] | None = None,
    start: tuple[torch.Tensor, float] | None = None, uncond_embed: torch.Tensor | None = None, rescale: float = 0.0,
):
    """CLIP image embedding (+ text) -> 64x64 image in [-1, 1]. `known` = (image, keep mask) for edits.

    An inpainting decoder (GLIDE-style, `inpaint_inputs`) also gets cat[known image * keep, keep]
    (all zeros without `known`: everything is to be drawn).
    `start` = (image [B, 3, S, S], strength < 1): begin from the image noised to that level (img2img).
    `uncond_embed`: the image embedding of guidance's unconditional branch (default: the learned null one).
    `rescale`: samplers.guided's guidance rescale (0: plain guidance).
    """
    text_proj, unet = stages.get("text_proj"), stages.get("decoder")
    spec = stages.diffusion("decoder")
    B, image_embed = image_embed.shape[0], image_embed.to(stages.dtype)
    inpaint = inpaint_inputs(unet.cfg)
    C, S = unet.cfg.in_channels - (4 if inpaint else 0), unet.cfg.sample_size
    extra = _inpaint_channels(known, B, C, S, stages) if inpaint else None

    def call(x, t):
        if extra is not None:
            x = torch.cat([x, extra.repeat(x.shape[0] // B, 1, 1, 1)], dim=1)
        return unet(x, torch.tensor(t, device=x.device), emb=emb, context=ctx, context_mask=cmask)

    if opts.decoder_guidance == 1.0:
        emb, ctx, cmask = text_proj(image_embed, text.embed, text.tokens, text.mask)
        net = call
    else:
        both = TextEncoding.cat([uncond, text])
        null = text_proj.null_image_embed(B, image_embed.dtype) if uncond_embed is None else uncond_embed.to(stages.dtype)
        images = torch.cat([null, image_embed])
        emb, ctx, cmask = text_proj(images, both.embed, both.tokens, both.mask)
        net = samplers.guided(call, opts.decoder_guidance, spec.guided_channels, rescale)
    denoise = samplers.Denoiser(net, spec, stages.dtype)
    x = samplers.randn((B, C, S, S), gens, stages.device, torch.float32)
    post = _keep_known(denoise.schedule, known, gens) if known is not None else None
    timesteps = None
    if start is not None:
        x, timesteps = noised_start(denoise.schedule, opts.decoder_steps, start[0].to(x.device), start[1], x,
                                    opts.spacing)
    out = _sample(opts, denoise, x, opts.decoder_steps, gens, "decoder", report, post, timesteps).clamp(-1, 1)
    stages.release("text_proj", "decoder")
    return out


def upsample_stage(
    stages: Stages, name: str, low: torch.Tensor, size: int, opts: Options, gens,
    report: Report = _noop, known: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Super-resolution: low-res image [B, 3, s, s] -> [B, 3, size, size] in [-1, 1]."""
    # Karlo has a separate network for the last step (super_res_last): it is loaded for that step only,
    # after the first one is freed, so the two (2.77 GB each) are never held together. With -n N both
    # are therefore read once per image (about a second each, against minutes of sampling).
    last_name = f"{name}_last" if stages.has(f"{name}_last") else None
    model = {"net": stages.get(name)}
    spec = stages.diffusion(name)
    timesteps = gaussian.spaced(gaussian.schedule_of(spec), opts.sr_steps, opts.spacing)
    # in float32: antialiased bicubic has no bf16 kernel on the CPU
    up = F.interpolate(low.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    up = up.to(stages.dtype)

    def net(x, t):
        if last_name and t == timesteps[-1]:
            model.clear()
            stages.drop(name)
            out = stages.get(last_name)(x, torch.tensor(t, device=x.device), low_res=up)
            stages.drop(last_name)
            return out
        return model["net"](x, torch.tensor(t, device=x.device), low_res=up)

    denoise = samplers.Denoiser(net, spec, stages.dtype)
    x = samplers.randn((low.shape[0], up.shape[1], size, size), gens, stages.device, torch.float32)
    post = _keep_known(denoise.schedule, known, gens) if known is not None else None
    out = _sample(opts, denoise, x, opts.sr_steps, gens, name, report, post).clamp(-1, 1)
    stages.release(name, f"{name}_last")
    return out


def _inpaint_channels(known, B: int, C: int, S: int, stages: Stages) -> torch.Tensor:
    """An inpainting decoder's extra input [B, C + 1, S, S]: cat[known image * keep, keep]."""
    if known is None:
        return torch.zeros(B, C + 1, S, S, device=stages.device, dtype=stages.dtype)
    image, keep = known
    keep = keep.to(image.dtype).expand(B, 1, S, S)
    return torch.cat([image.expand(B, C, S, S) * keep, keep], dim=1).to(stages.dtype)


def noised_start(schedule, steps: int, image: torch.Tensor, strength: float, noise: torch.Tensor,
                 spacing: str = "uniform"):
    """img2img: round(steps * strength) (at least 1) timesteps from the noise level `strength` names
    (`gaussian.spaced_tail`), and the image noised to the first of them with `noise`. Returns (x, timesteps)."""
    timesteps = gaussian.spaced_tail(schedule, steps, strength, spacing)
    return gaussian.q_sample(schedule, image.float(), timesteps[0], noise), timesteps


def _keep_known(schedule, known, gens):
    """After each step, reset the kept pixels to the known image noised to the new timestep."""
    image, keep = known

    def post(x, prev):
        if prev < 0:
            return torch.where(keep, image, x)
        noise = samplers.randn(x.shape, gens, x.device, x.dtype)
        return torch.where(keep, gaussian.q_sample(schedule, image, prev, noise), x)

    return post


def _looper(stages: Stages, gens, one_by_one: bool, rows: int = 1):
    """How a verb runs each stage: loop(f) with f(i, gens_i) -> output rows i.

    Batched: one call over the whole batch (i = every row). One by one: a call per image, as a batch of
    `rows` (1, or an image's candidates, which share its generator), so image k is bit-identical to a run
    with generator k alone (batched kernels round differently), all inside one load of the stage.
    """
    if not one_by_one:
        return lambda f: f(slice(None), gens)

    def loop(f):
        with stages.holding():
            return torch.cat([f(slice(k, k + rows), gens[k:k + rows]) for k in range(0, len(gens), rows)])

    return loop


def upsample_all(stages: Stages, x64, opts: Options, gens, report: Report = _noop, known_at=None, loop=None):
    """Run the upsamplers needed to reach opts.size. known_at(size) -> (image, keep) for edits."""
    loop = loop or _looper(stages, gens, False)
    x = x64
    for name, size in (("sr256", 256), ("sr1024", 1024)):
        if opts.size >= size:
            known = known_at(size) if known_at else None
            x = loop(lambda i, g, x=x, name=name, size=size, known=known:
                     upsample_stage(stages, name, x[i], size, opts, g, report, known))
    return x


def _text_rows(stages: Stages, prompts: list[str], one_by_one: bool, negative: list[str] | None = None):
    """(text(i), uncond(i)): the CLIP text encodings a stage call over rows i conditions on; uncond is the
    negative prompt of each prompt (default: the empty one).

    Batched, or one by one with a single prompt: one encoding for all. One by one with a prompt per
    generator: each distinct prompt is encoded alone, as a batch of one, so its images are
    bit-identical to a run of that prompt alone.
    """
    negative = negative or [""] * len(prompts)
    if not one_by_one or len(prompts) == 1:
        text, _ = encode_text(stages, prompts)
        uncond, _ = encode_text(stages, negative)
        return (lambda i: text), (lambda i: uncond)
    encodings = {p: encode_text(stages, [p])[0] for p in dict.fromkeys([*prompts, *negative])}

    def rows(of: list[str], i: slice) -> TextEncoding:  # one row per row of i (an image's candidates share a prompt)
        enc = encodings[of[i.start]]
        return enc if i.stop - i.start == 1 else enc.repeat_rows(i.stop - i.start)

    return (lambda i: rows(prompts, i)), (lambda i: rows(negative, i))


# Verbs ------------------------------------------------------------------------------------
# Each verb takes one generator per image. Batched (default): prompts/images give one row per image.
# one_by_one=True: one image (or one prompt, or one prompt per generator), and every generator makes
# its own image (see _looper).


def clone_generators(gens) -> list[torch.Generator]:
    """Independent copies of generators in their current state (the same draws, without consuming them)."""
    out = []
    for g in gens:
        c = torch.Generator(device=g.device)
        c.set_state(g.get_state())
        out.append(c)
    return out


def _conditions(stages: Stages, prompts: list[str], negative: list[str] | None, opts: Options, loop, report,
                one_by_one: bool):
    """(text(i), uncond(i), image embeddings, unconditional image embeddings or None) for generate and edit.

    With negative prompts (Kandinsky 2.2's pattern) the negative text is the prior's unconditional
    input, and the prior's embedding of the negative text (sampled with a copy of each generator, so
    the main draws are unchanged, and plainly guided, as any prompt) is the decoder's unconditional
    image embedding. Guidance away from the negative is rescaled by opts.negative_rescale in both stages
    (samplers.guided): with 1 the guided prior embedding keeps the conditional one's length (without it, on
    shapes' prior of 2026-11, 3c - 2u was ~3x too long and every image noise; README "Negative prompts").
    """
    text, uncond = _text_rows(stages, prompts, one_by_one, negative)
    empty = _text_rows(stages, [""] * len(prompts), one_by_one)[0] if negative else None
    stages.release("clip")
    if not negative:
        return text, uncond, loop(lambda i, g: prior_stage(stages, text(i), uncond(i), opts, g, report)), None

    def both(i, g):
        neg = prior_stage(stages, uncond(i), empty(i), opts, clone_generators(g), report)
        pos = prior_stage(stages, text(i), uncond(i), opts, g, report, rescale=opts.negative_rescale)
        return torch.stack([pos, neg], 1)

    pos_neg = loop(both)
    return text, uncond, pos_neg[:, 0], pos_neg[:, 1]


def _each_row(texts: list[str], images: int, n: int) -> list[str]:
    """A text for each of n rows per image (`texts`: one per image, or one for all)."""
    return [t for t in (texts * images if len(texts) == 1 else texts) for _ in range(n)]


def _negative_branch(neg_embed, i, opts: Options) -> dict:
    """decoder_stage's keywords for rows i: the negative's image embedding, rescaled guidance (none: {})."""
    return {} if neg_embed is None else {"uncond_embed": neg_embed[i], "rescale": opts.negative_rescale}


def generate(stages: Stages, prompts: list[str], opts: Options, gens, report: Report = _noop, *,
             one_by_one: bool = False, negative: list[str] | None = None):
    """Images [B, 3, size, size] for prompts (one per generator); `negative`: a negative prompt per prompt.

    With opts.image_candidates = n > 1 every image gets n rows through the prior and the decoder, all drawing
    from its generator in turn (a negative prompt's own prior embedding, drawn from a copy of the generator, is
    the same for all n), and the row `closest_images` picks goes on to the upsamplers."""
    n = opts.image_candidates
    if n > 1:
        if not has_image_tower(stages):
            raise UnclipError(f"--image-candidates needs a CLIP image encoder; model '{stages.spec.name}' has none")
        prompts, negative = _each_row(prompts, len(gens), n), negative and _each_row(negative, len(gens), n)
    rows = [g for g in gens for _ in range(n)]
    loop = _looper(stages, rows, one_by_one, n)  # an image's candidates in one batch (they share its generator)
    text, uncond, image_embed, neg_embed = _conditions(stages, prompts, negative, opts, loop, report, one_by_one)
    x = loop(lambda i, g: decoder_stage(stages, image_embed[i], text(i), uncond(i), opts, g, report,
                                        **_negative_branch(neg_embed, i, opts)))
    if n > 1:  # one by one, each image's draws are ranked in a call of their own (its pick never depends on the run)
        x = loop(lambda i, g: closest_images(stages, x[i], text(i).embed, n))
        loop = _looper(stages, gens, one_by_one)
    return upsample_all(stages, x, opts, gens, report, loop=loop)


def vary(stages: Stages, images, opts: Options, gens, report: Report = _noop, *, one_by_one: bool = False):
    """Variations of several images at once (image i with generator i): each image's CLIP embedding goes to
    the decoder with an empty caption. `unclip vary` uses toolkit.vary (one image, steering); this batched
    form is what diffusers' UnCLIPImageVariationPipeline computes, and the Karlo parity tests compare them."""
    image_embed = encode_images(stages, images)
    text, _ = encode_text(stages, [""] * len(images))
    stages.release("clip")
    loop = _looper(stages, gens, one_by_one)
    x = loop(lambda i, g: decoder_stage(stages, image_embed, text, text, opts, g, report))
    return upsample_all(stages, x, opts, gens, report, loop=loop)


def edit(stages: Stages, image: torch.Tensor, edit_mask: torch.Tensor, prompts: list[str], opts: Options, gens,
         report: Report = _noop, *, one_by_one: bool = False, negative: list[str] | None = None):
    """Regenerate the masked area. image: [B, 3, S, S] in [-1, 1] at opts.size; edit_mask: [B, 1, S, S] bool.

    The mask is carried down to each stage's resolution by max-pooling (a low-res pixel is edited
    if any pixel it covers is), so the edit region never shrinks.
    """
    image, edit_mask = image.to(stages.device, torch.float32), edit_mask.to(stages.device)

    def known_at(size: int):
        f = image.shape[-1] // size
        img = F.interpolate(image, size=(size, size), mode="area") if f > 1 else image
        m = F.max_pool2d(edit_mask.float(), f) if f > 1 else edit_mask.float()
        return img, ~(m > 0)

    loop = _looper(stages, gens, one_by_one)
    text, uncond, image_embed, neg_embed = _conditions(stages, prompts, negative, opts, loop, report, one_by_one)
    known = known_at(stages.decoder_size())
    x = loop(lambda i, g: decoder_stage(stages, image_embed[i], text(i), uncond(i), opts, g, report, known,
                                        **_negative_branch(neg_embed, i, opts)))
    return upsample_all(stages, x, opts, gens, report, known_at, loop=loop)

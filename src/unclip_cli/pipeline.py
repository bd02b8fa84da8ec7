"""The unCLIP cascade as short stage functions: CLIP -> prior -> decoder -> upsamplers.

`generate`, `vary` and `edit` are compositions of the same stages. Each stage module is loaded
when its stage starts and released when it ends (`Stages`), so peak memory stays near the largest
stage. Noise comes only from the per-image generators passed in, in Karlo's order: prior init,
prior steps, decoder init, decoder steps, upsampler init, upsampler steps.
"""

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip_cli import checkpoint, clip, diffusion, samplers, weights
from unclip_cli.clip import TextEncoding
from unclip_cli.errors import UnclipError

Report = Callable[[str, int, int], None]  # (stage, steps done, steps total)
KINDS = {"clip": "clip", "prior": "prior", "text_proj": "text_proj", "decoder": "unet"}


def _noop(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class Options:
    prior_steps: int = 25
    decoder_steps: int = 25
    sr_steps: int = 7
    prior_guidance: float = 4.0
    decoder_guidance: float = 8.0
    sampler: str = "ddpm"
    size: int = 256
    prior_clip: float = 5.0  # clamp of the prior's x0 (diffusers: 5, original Karlo: 10)
    num_timesteps: int = 1000


class Stages:
    """Resolves, checks and loads the stage modules of one model."""

    def __init__(self, spec: weights.ModelSpec, device, dtype, paths: dict[str, Path], keep_loaded: bool = False,
                 config_paths: dict[str, Path] | None = None):
        self.spec, self.device, self.dtype, self.paths = spec, torch.device(device), dtype, paths
        self.config_paths = config_paths or {}  # diffusers layout: config.json per stage
        self.keep_loaded = keep_loaded
        self._loaded: dict[str, object] = {}
        self.tokenizer: clip.Tokenizer | None = None
        self._deferred: set[str] | None = None  # releases put off by holding()

    def has(self, stage: str) -> bool:
        return stage in self.paths

    def preflight(self) -> None:
        """Strict key/shape check of every stage file from its header, before any sampling."""
        if self.spec.format == "diffusers":
            from unclip_cli import karlo

            for stage, path in self.paths.items():
                karlo.check_stage(stage, path, self.config_paths.get(stage))
            return
        for stage, path in self.paths.items():
            meta, shapes = checkpoint.read_header(path, stage)
            if meta.get("format") != checkpoint.FORMAT:
                raise UnclipError(f"stage '{stage}': {path} is not an unclip checkpoint")
            if meta.get("kind") != KINDS.get(stage, "unet"):
                raise UnclipError(f"stage '{stage}': {path} holds a '{meta.get('kind')}' model, "
                                  f"expected '{KINDS.get(stage, 'unet')}'")
            with torch.device("meta"):
                module = checkpoint.instantiate(meta["kind"], json.loads(meta["config"]), stage)
            checkpoint.check_strict(stage, {k: tuple(v.shape) for k, v in module.state_dict().items()}, shapes)

    def get(self, stage: str):
        if stage not in self.paths:
            raise UnclipError(f"model '{self.spec.name}' has no {stage} stage")
        if stage not in self._loaded and self.spec.format == "diffusers":
            from unclip_cli import karlo

            path, cfg = self.paths[stage], self.config_paths.get(stage)
            if stage == "clip" and self.has("clip_vision"):  # text_encoder + image_encoder: one CLIP
                path, cfg = (path, self.paths["clip_vision"]), (cfg, self.config_paths.get("clip_vision"))
            self._loaded[stage] = karlo.build_stage(stage, path, cfg, self.device, self.dtype)
        if stage not in self._loaded:
            kind = KINDS.get(stage, "unet")
            module, _ = checkpoint.build(self.paths[stage], stage, self.device, self.dtype, expect_kind=kind)
            self._loaded[stage] = module
        return self._loaded[stage]

    def drop(self, *names: str) -> None:
        """Free now, even inside holding() (unless keep_loaded)."""
        if not self.keep_loaded:
            for n in names:
                self._loaded.pop(n, None)

    @contextmanager
    def holding(self):
        """Defer releases to the end of the block (to loop over images inside one load of a stage)."""
        outer, self._deferred = self._deferred, set()
        try:
            yield
        finally:
            names, self._deferred = self._deferred, outer
            self.release(*names)

    def release(self, *names: str) -> None:
        if self._deferred is not None:
            self._deferred.update(names)
            return
        if self.keep_loaded:
            return
        for n in names:  # dropping the last reference frees the weights (no gc pass needed)
            self._loaded.pop(n, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def decoder_size(self) -> int:
        """Resolution the decoder generates at (Karlo: 64), read from its config without loading it."""
        if self.spec.format == "diffusers":
            cfg = self.config_paths.get("decoder")
            return int(json.loads(cfg.read_text()).get("sample_size") or 64) if cfg else 64
        meta, _ = checkpoint.read_header(self.paths["decoder"], "decoder")
        return int(json.loads(meta["config"]).get("sample_size", 64))

    def context_length(self) -> int:
        return int(self.get("clip").positional_embedding.shape[0])


def open_model(name: str | None, device, dtype, size: int | None, *, keep_loaded: bool = False) -> tuple[Stages, int]:
    """Fetch and check the files a run at `size` needs. Returns (stages, resolved size).

    Sizes: the decoder's own resolution (64 for Karlo), then 256 and 1024 as far as the
    model's upsamplers reach. Without a size: the model's default `size`, else the largest.
    """
    spec = weights.resolve(name)
    ups = [(s, r) for s, r in (("sr256", 256), ("sr1024", 1024)) if s in spec.stages]
    # a diffusers-layout image-variations model has no prior but a separate image encoder (clip_vision)
    needed = [s for s in (*weights.REQUIRED, "clip_vision") if s in spec.stages]
    needed += [s for s, _ in ups] + [f"{s}_last" for s, _ in ups if f"{s}_last" in spec.stages]
    if size is not None and size not in (32, 64, 256, 1024):
        raise UnclipError(f"--size must be 64, 256 or 1024, got {size}")
    if size is not None and ups and size > ups[-1][1]:
        raise UnclipError(f"model '{spec.name}' reaches {ups[-1][1]}x{ups[-1][1]}; --size {size} is not available")
    if size is not None:  # only fetch what this size needs
        needed = [s for s in needed if not s.startswith("sr") or int(s[2:].split("_")[0]) <= size]
    paths = {s: weights.fetch(spec.stages[s], f"stage '{s}' of model '{spec.name}'", model=spec.name) for s in needed}
    configs = {s: weights.fetch(spec.configs[s], f"config of stage '{s}' of model '{spec.name}'", model=spec.name)
               for s in needed if s in spec.configs}
    stages = Stages(spec, device, dtype, paths, keep_loaded=keep_loaded, config_paths=configs)
    stages.preflight()
    base = stages.decoder_size()
    reach = ups[-1][1] if ups else base
    size = size or int(spec.defaults.get("size", reach))
    if size not in (base, *[r for _, r in ups]):
        allowed = ", ".join(str(v) for v in (base, *[r for _, r in ups]))
        raise UnclipError(f"model '{spec.name}' makes images of size {allowed}; --size {size} is not available")
    return stages, size


# Stages ------------------------------------------------------------------------------------


def encode_text(stages: Stages, prompts: list[str]) -> tuple[TextEncoding, list[str]]:
    """CLIP text encodings of prompts, and the words each prompt lost to truncation."""
    model = stages.get("clip")
    if stages.tokenizer is None:
        stages.tokenizer = clip.Tokenizer(stages.context_length())
    ids, mask, dropped = stages.tokenizer(prompts)
    with torch.no_grad():
        return clip.encode_text(model, ids, mask), dropped


def encode_images(stages: Stages, images) -> torch.Tensor:
    model = stages.get("clip")
    if not hasattr(model.visual, "image_size"):  # hf_clip.AbsentTower: a text-only CLIP
        raise UnclipError(f"model '{stages.spec.name}' has no CLIP image encoder; this needs one")
    size = clip.image_size(model)
    pixels = torch.stack([clip.preprocess(im, size) for im in images])
    with torch.no_grad():
        return clip.encode_image(model, pixels)


def _sample(opts: Options, denoise, x, schedule, steps: int, gens, name: str, report: Report, post_step=None):
    timesteps = diffusion.respace(schedule.num_timesteps, steps)
    report(name, 0, len(timesteps))
    cb = lambda i, t, x: report(name, i + 1, len(timesteps))  # noqa: E731
    fn = samplers.SAMPLERS[opts.sampler]
    with torch.no_grad():
        return fn(denoise, x, schedule, timesteps, generators=gens, callback=cb, post_step=post_step)


def prior_stage(stages: Stages, text: TextEncoding, uncond: TextEncoding, opts: Options, gens, report: Report = _noop):
    """CLIP text encoding -> CLIP image embedding [B, D] (denormalised)."""
    if not stages.has("prior"):
        raise UnclipError(f"model '{stages.spec.name}' has no prior: it can only make variations (`unclip vary`)")
    prior = stages.get("prior")
    schedule = diffusion.cosine_schedule(opts.num_timesteps)
    both = TextEncoding.cat([uncond, text])
    cond = dict(text_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask)
    pair = dict(text_embed=both.embed, text_tokens=both.tokens, text_mask=both.mask)
    if opts.prior_guidance == 1.0:
        net = lambda x, t: prior(x, torch.tensor(t, device=x.device), **cond)  # noqa: E731
    else:
        net2 = lambda x, t: prior(x, torch.tensor(t, device=x.device), **pair)  # noqa: E731
        net = samplers.guided(net2, opts.prior_guidance)
    denoise = samplers.Denoiser(net, schedule, prediction="sample", learned_variance=False, clip=opts.prior_clip)
    D = prior.cfg.embedding_dim
    x = samplers.randn((len(gens), D), gens, stages.device, stages.dtype)
    z = _sample(opts, denoise, x, schedule, opts.prior_steps, gens, "prior", report)
    out = prior.denormalize(z)
    stages.release("prior")
    return out


def decoder_stage(
    stages: Stages, image_embed, text: TextEncoding, uncond: TextEncoding, opts: Options, gens,
    report: Report = _noop, known: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """CLIP image embedding (+ text) -> 64x64 image in [-1, 1]. `known` = (image, keep mask) for edits."""
    text_proj, unet = stages.get("text_proj"), stages.get("decoder")
    schedule = diffusion.cosine_schedule(opts.num_timesteps)
    B = image_embed.shape[0]
    if opts.decoder_guidance == 1.0:
        emb, ctx, cmask = text_proj(image_embed, text.embed, text.tokens, text.mask)
        net = lambda x, t: unet(x, torch.tensor(t, device=x.device), emb=emb, context=ctx, context_mask=cmask)  # noqa: E731
    else:
        both = TextEncoding.cat([uncond, text])
        images = torch.cat([text_proj.null_image_embed(B, image_embed.dtype), image_embed])
        emb, ctx, cmask = text_proj(images, both.embed, both.tokens, both.mask)
        net2 = lambda x, t: unet(x, torch.tensor(t, device=x.device), emb=emb, context=ctx, context_mask=cmask)  # noqa: E731
        net = samplers.guided(net2, opts.decoder_guidance, guided_channels=unet.cfg.in_channels)
    learned = unet.cfg.out_channels == 2 * unet.cfg.in_channels
    denoise = samplers.Denoiser(net, schedule, prediction=unet.cfg.prediction, learned_variance=learned, clip=1.0)
    C, S = unet.cfg.in_channels, unet.cfg.sample_size
    x = samplers.randn((B, C, S, S), gens, stages.device, stages.dtype)
    post = _keep_known(schedule, known, gens) if known is not None else None
    out = _sample(opts, denoise, x, schedule, opts.decoder_steps, gens, "decoder", report, post).clamp(-1, 1)
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
    schedule = diffusion.cosine_schedule(opts.num_timesteps)
    timesteps = diffusion.respace(schedule.num_timesteps, opts.sr_steps)
    up = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False, antialias=True)

    def net(x, t):
        if last_name and t == timesteps[-1]:
            model.clear()
            stages.drop(name)
            out = stages.get(last_name)(x, torch.tensor(t, device=x.device), low_res=up)
            stages.drop(last_name)
            return out
        return model["net"](x, torch.tensor(t, device=x.device), low_res=up)

    cfg = model["net"].cfg
    learned = cfg.out_channels == 2 * (cfg.in_channels - up.shape[1])
    denoise = samplers.Denoiser(net, schedule, prediction=cfg.prediction, learned_variance=learned, clip=1.0)
    x = samplers.randn((low.shape[0], up.shape[1], size, size), gens, stages.device, stages.dtype)
    post = _keep_known(schedule, known, gens) if known is not None else None
    out = _sample(opts, denoise, x, schedule, opts.sr_steps, gens, name, report, post).clamp(-1, 1)
    stages.release(name, f"{name}_last")
    return out


def _keep_known(schedule, known, gens):
    """After each step, reset the kept pixels to the known image noised to the new timestep."""
    image, keep = known

    def post(x, prev):
        if prev < 0:
            return torch.where(keep, image, x)
        noise = samplers.randn(x.shape, gens, x.device, x.dtype)
        return torch.where(keep, diffusion.q_sample(schedule, image, prev, noise), x)

    return post


def _looper(stages: Stages, gens, one_by_one: bool):
    """How a verb runs each stage: loop(f) with f(i, gens_i) -> output rows i.

    Batched: one call over the whole batch (i = every row). One by one: a call per generator, as a
    batch of one (so image k is bit-identical to a run with generator k alone: batched kernels round
    differently), all inside one load of the stage.
    """
    if not one_by_one:
        return lambda f: f(slice(None), gens)

    def loop(f):
        with stages.holding():
            return torch.cat([f(slice(k, k + 1), [g]) for k, g in enumerate(gens)])

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


# Verbs ------------------------------------------------------------------------------------
# Each verb takes one generator per image. Batched (default): prompts/images give one row per image.
# one_by_one=True: one prompt or image, and every generator makes its own image (see _looper).


def generate(stages: Stages, prompts: list[str], opts: Options, gens, report: Report = _noop, *,
             one_by_one: bool = False):
    """Images [B, 3, size, size] for prompts (one per generator)."""
    text, _ = encode_text(stages, prompts)
    uncond, _ = encode_text(stages, [""] * len(prompts))
    stages.release("clip")
    loop = _looper(stages, gens, one_by_one)
    image_embed = loop(lambda i, g: prior_stage(stages, text, uncond, opts, g, report))
    x = loop(lambda i, g: decoder_stage(stages, image_embed[i], text, uncond, opts, g, report))
    return upsample_all(stages, x, opts, gens, report, loop=loop)


def vary(stages: Stages, images, opts: Options, gens, report: Report = _noop, *, one_by_one: bool = False):
    """Variations: each image's CLIP embedding goes to the decoder with an empty caption."""
    image_embed = encode_images(stages, images)
    text, _ = encode_text(stages, [""] * len(images))
    stages.release("clip")
    loop = _looper(stages, gens, one_by_one)
    x = loop(lambda i, g: decoder_stage(stages, image_embed, text, text, opts, g, report))
    return upsample_all(stages, x, opts, gens, report, loop=loop)


def edit(stages: Stages, image: torch.Tensor, edit_mask: torch.Tensor, prompts: list[str], opts: Options, gens,
         report: Report = _noop, *, one_by_one: bool = False):
    """Regenerate the masked area. image: [B, 3, S, S] in [-1, 1] at opts.size; edit_mask: [B, 1, S, S] bool.

    The mask is carried down to each stage's resolution by max-pooling (a low-res pixel is edited
    if any pixel it covers is), so the edit region never shrinks.
    """
    image, edit_mask = image.to(stages.device, stages.dtype), edit_mask.to(stages.device)

    def known_at(size: int):
        f = image.shape[-1] // size
        img = F.interpolate(image, size=(size, size), mode="area") if f > 1 else image
        m = F.max_pool2d(edit_mask.float(), f) if f > 1 else edit_mask.float()
        return img, ~(m > 0)

    text, _ = encode_text(stages, prompts)
    uncond, _ = encode_text(stages, [""] * len(prompts))
    stages.release("clip")
    loop = _looper(stages, gens, one_by_one)
    image_embed = loop(lambda i, g: prior_stage(stages, text, uncond, opts, g, report))
    known = known_at(stages.decoder_size())
    x = loop(lambda i, g: decoder_stage(stages, image_embed[i], text, uncond, opts, g, report, known))
    return upsample_all(stages, x, opts, gens, report, known_at, loop=loop)

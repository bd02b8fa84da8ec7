"""The DALL-E 2 toolkit around variations: steered variations (img2img strength, a text prompt, text
diffs) and mixing two CLIP image embeddings, composed from the cascade's stage functions.

Randomness: every seed's generator is copied before each use that must not disturb another (the
prior for a text, each frame of a mix), so a frame depends only on its seed and its ratio, and a
series of ratios is decoded with the same noise.
"""

from dataclasses import dataclass

import torch

from unclip_cli.errors import UnclipError
from unclip_cli.options import Options
from unclip_cli.pipeline import cascade, embeddings, images as images_mod
from unclip_cli.pipeline.cascade import Report, _noop
from unclip_cli.pipeline.stages import Stages


@dataclass(frozen=True)
class Steer:
    """How a variation departs from plain `vary` (the defaults: not at all)."""

    strength: float = 1.0  # < 1: start the decoder from the input noised to this level
    prompt: str = ""  # the decoder's caption
    prompt_mix: float = 0.0  # > 0: slerp the image embedding toward the prior's embedding of `prompt`
    toward: str | None = None  # text diff: target caption
    source: str = ""  # text diff: caption of the image as it is (--from)
    amount: float = 0.5  # text diff: slerp fraction toward the difference direction

    @property
    def uses_prior(self) -> bool:
        """Whether the image embedding is mixed toward the prior's embedding of `prompt`."""
        return bool(self.prompt) and self.prompt_mix > 0

    def record(self) -> dict:
        """What a PNG records beyond plain vary (only what was used)."""
        out = {}
        if self.strength != 1.0:
            out["strength"] = self.strength
        if self.uses_prior:
            out["prompt_mix"] = self.prompt_mix
        if self.toward is not None:
            out.update(toward=self.toward, **{"from": self.source}, amount=self.amount)
        return out


def prior_embed(stages: Stages, prompt: str, opts: Options, gens, report: Report = _noop) -> torch.Tensor:
    """The prior's image embedding for one text, sampled with a copy of each generator: [len(gens), D]."""
    text, _ = cascade.encode_text(stages, [prompt])
    uncond, _ = cascade.encode_text(stages, [""])
    stages.release("clip")
    loop = cascade._looper(stages, gens, True)
    return loop(lambda i, g: cascade.prior_stage(stages, text, uncond, opts, cascade.clone_generators(g), report))


def steered_embed(stages: Stages, image, steer: Steer) -> torch.Tensor:
    """The image's CLIP embedding [1, D], moved along the text diff if one is asked for."""
    embed = cascade.encode_images(stages, [image])
    if steer.toward is not None:
        t, _ = cascade.encode_text(stages, [steer.toward, steer.source])
        embed = embeddings.text_diff(embed, t.embed[0:1], t.embed[1:2], steer.amount)
    return embed


def vary(stages: Stages, image, opts: Options, gens, report: Report = _noop, steer: Steer = Steer()):
    """Variations of one image, one per generator (each as a batch of one), steered by `steer`.

    With the default Steer: each image's CLIP embedding, decoded with an empty caption (plain vary).
    The upsamplers always start from noise, conditioned on the decoder's (steered) low-res result.
    """
    embed = steered_embed(stages, image, steer)
    empty, _ = cascade.encode_text(stages, [""])
    caption = cascade.encode_text(stages, [steer.prompt])[0] if steer.prompt else empty
    stages.release("clip")
    embeds = embed.expand(len(gens), -1)
    if steer.uses_prior:
        embeds = embeddings.slerp(embeds, prior_embed(stages, steer.prompt, opts, gens, report).to(embed.dtype),
                                  steer.prompt_mix)
    start = None
    if steer.strength < 1.0:
        start = (images_mod.to_tensor(image, stages.decoder_size())[None], steer.strength)
    loop = cascade._looper(stages, gens, True)
    x = loop(lambda i, g: cascade.decoder_stage(stages, embeds[i], caption, empty, opts, g, report, start=start))
    return cascade.upsample_all(stages, x, opts, gens, report, loop=loop)


def side_embeds(stages: Stages, side: tuple[str, object], opts: Options, gens, report: Report) -> torch.Tensor:
    """One side of a mix as CLIP image embeddings [len(gens), D]: ("image", PIL) or ("text", str)."""
    kind, value = side
    if kind == "image":
        return cascade.encode_images(stages, [value]).expand(len(gens), -1)
    return prior_embed(stages, value, opts, gens, report)


def mix(stages: Stages, a, b, ratios: list[float], opts: Options, seed_gen: torch.Generator,
        report: Report = _noop) -> torch.Tensor:
    """Images [len(ratios), 3, size, size]: slerp(embedding of a, of b, ratio), each decoded with a copy
    of `seed_gen` (the same noise for every ratio) and an empty caption, as `vary` decodes."""
    ea = side_embeds(stages, a, opts, [seed_gen], report)
    eb = side_embeds(stages, b, opts, [seed_gen], report)
    stages.release("clip")
    if float(embeddings.cosine(ea, eb).min()) > 1 - 1e-6 and torch.allclose(ea.norm(), eb.norm(), rtol=1e-5):
        raise UnclipError("the two sides of the mix have the same CLIP image embedding: every frame would be the same image")
    empty, _ = cascade.encode_text(stages, [""])
    stages.release("clip")
    embeds = torch.cat([embeddings.slerp(ea, eb, r) for r in ratios])
    gens = cascade.clone_generators([seed_gen] * len(ratios))
    loop = cascade._looper(stages, gens, True)
    x = loop(lambda i, g: cascade.decoder_stage(stages, embeds[i], empty, empty, opts, g, report))
    return cascade.upsample_all(stages, x, opts, gens, report, loop=loop)

"""What each trainable stage needs: its module, its DiffusionSpec, how a batch is drawn, and its loss.

- clip: contrastive (open_clip's model and ClipLoss) on image-caption pairs.
- prior: x0-prediction MSE on normalised CLIP image embeddings given the CLIP text encoding;
  text dropped 10% of the time (DALL-E 2, sec. 2.2) for classifier-free guidance.
- decoder: eps (or v) MSE + learned-variance VB (L_hybrid) on 64x64 images, conditioned through TextProj;
  CLIP image embedding dropped 10% (-> learned null embedding) and caption 50% (-> empty caption).
- upsampler: eps MSE on random crops, conditioned on a degraded, bicubic-upsampled low-res crop
  (Gaussian blur for 64->256, a BSR-style blur/noise/JPEG mix for 256->1024).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unclip_cli.weights import checkpoint, vocabulary
from unclip_cli.models import clip
from unclip_cli.diffusion import gaussian, losses
from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.errors import UnclipError
from unclip_cli.shapes import world as shapes_world
from unclip_cli.train.data import degrade, load_images, random_keep_masks, to_float
from unclip_cli.models.prior import Prior, PriorConfig
from unclip_cli.models.text_proj import TextProj, TextProjConfig
from unclip_cli.models.unet import UNet, UNetConfig, inpaint_inputs


def diffusion_spec(raw: dict, *, prediction: str, variance: str = "fixed_small", clamp: float | None = 1.0,
                   channels: int | None = None, out_channels: int | None = None) -> DiffusionSpec:
    """The stage's DiffusionSpec: the config's [diffusion] table over this stage's defaults; a UNet's
    out_channels must hold the prediction (and as many learned-variance channels)."""
    given = dict(raw.get("diffusion", {}))
    variance = given.get("variance", variance)
    fields = {"prediction": prediction, "variance": variance, "clamp": clamp, **given}
    if variance == "learned_range":
        fields.setdefault("guided_channels", channels)
    try:
        spec = DiffusionSpec.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise UnclipError(f"[diffusion]: {e}") from None
    if out_channels is not None and out_channels != channels * (2 if spec.learned_variance else 1):
        raise UnclipError(f"[model] out_channels = {out_channels}, but a {spec.variance} variance over {channels} "
                          f"image channels needs {channels * (2 if spec.learned_variance else 1)}")
    return spec


def _sample_t(n: int, T: int, gen) -> torch.Tensor:
    return torch.randint(0, T, (n,), generator=gen)


class Task:
    module: nn.Module

    def after_step(self, model: nn.Module) -> None:
        pass

    def extra(self, name: str) -> dict | None:
        """Metadata stored with the exported stage file `name` (besides config and diffusion spec)."""
        return None


# CLIP ----------------------------------------------------------------------------------------


class ClipWithLayoutHead(nn.Module):
    """A CLIP and, for training only, a linear head that reads the scene's layout off the image embedding
    (shapes.layout_labels). Only `clip.*` is exported."""

    def __init__(self, model: nn.Module, embed_dim: int):
        super().__init__()
        self.clip = model
        self.layout_head = nn.Linear(embed_dim, sum(shapes_world.LAYOUT_CLASSES))

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor):
        return self.clip(pixels, ids)


class ClipTask(Task):
    def __init__(self, raw: dict, d):
        self.config = dict(raw["model"])
        try:
            model = clip.build_model(self.config)
        except (ValueError, TypeError) as e:
            raise UnclipError(f"training config [model]: {e}") from None
        size = clip.image_size(model)
        self.images, captions = load_images(raw["data"]["folder"], size, raw["data"].get("limit"))
        self.tokenize = clip.Tokenizer(model.positional_embedding.shape[0])
        # [contrastive] layout_weight = w > 0: a contrastive CLIP starts at a saddle for the relation (an image
        # embedding without layout gives the text tower nothing to match, and a text embedding without the
        # relation gives the image tower nothing), so it stays there (README, "The relation in CLIP"). A
        # linear head trained to read the layout off the image embedding, w times its cross-entropy added to
        # the loss, puts the layout into the embedding from the start; the head is not exported.
        weight = raw.get("contrastive", {}).get("layout_weight", 0.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise UnclipError(f"training config [contrastive] layout_weight: {weight!r} is not a number >= 0")
        self.layout_weight = float(weight)
        self.module = model
        if self.layout_weight > 0:
            labels = [shapes_world.layout_labels(c) for c in captions]
            self.layout = torch.tensor([lab if lab is not None else (-1,) * 5 for lab in labels])
            self.module = ClipWithLayoutHead(model, self.config["embed_dim"])
        self.captions = captions
        self.ids, _, _ = self.tokenize(captions)
        # [contrastive] hard_negatives = true: each shapes-world caption also brings a caption that
        # differs only in one binding (shapes.hard_negative) as an extra negative text for its image;
        # "all": every kind at once (shapes.hard_negatives: inverse relation, objects reordered, a swap).
        mode = raw.get("contrastive", {}).get("hard_negatives", False)
        if mode not in (True, False, "all"):
            raise UnclipError(f"training config [contrastive] hard_negatives: {mode!r} is not true, false or \"all\"")
        self.hard_negatives = mode
        self.mean = torch.tensor(clip.OPENAI_MEAN)[:, None, None]
        self.std = torch.tensor(clip.OPENAI_STD)[:, None, None]
        self.device = d.device

    def batch(self, n: int, gen) -> dict:
        idx = torch.randint(0, len(self.images), (n,), generator=gen)
        pix = (self.images[idx].float() / 255.0 - self.mean) / self.std
        ids = self.ids[idx]
        if self.hard_negatives:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
            if self.hard_negatives == "all":
                negs = [c for i in idx.tolist() for c in shapes_world.hard_negatives(self.captions[i], rng)]
            else:
                negs = [shapes_world.hard_negative(self.captions[i], rng) for i in idx.tolist()]
                negs = [c for c in negs if c is not None]
            if negs:
                ids = torch.cat([ids, self.tokenize(negs)[0]])
        out = {"pixels": pix.to(self.device), "ids": ids.to(self.device)}
        if self.layout_weight > 0:
            out["layout"] = self.layout[idx].to(self.device)
        return out

    def loss(self, net, batch: dict, gen) -> dict:
        """Symmetric InfoNCE (CLIP's loss); extra texts past the batch are negatives for every image."""
        img, txt, scale = net(batch["pixels"], batch["ids"])[:3]
        labels = torch.arange(len(img), device=img.device)
        per_image = scale * img @ txt.T  # [B, B + negatives]
        per_text = scale * txt[:len(img)] @ img.T
        loss = (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        with torch.no_grad():
            acc = (per_image.argmax(dim=1) == labels).float().mean()
        terms = {"loss": loss, "i2t_acc": acc}
        if self.layout_weight > 0:
            model = net.module if hasattr(net, "module") else net
            # img is unit-length: scaled by sqrt(dim) so that the head's logits need no large weights
            logits = model.layout_head(img * img.shape[1] ** 0.5).split(shapes_world.LAYOUT_CLASSES, dim=1)
            target = batch["layout"]
            layout = sum(F.cross_entropy(lg, target[:, k], ignore_index=-1) for k, lg in enumerate(logits)) / len(logits)
            terms["loss"] = loss + self.layout_weight * layout
            terms["layout_loss"] = layout.detach()
            with torch.no_grad():
                terms["axis_acc"] = (logits[0].argmax(1) == target[:, 0]).float().mean()
        return terms

    def after_step(self, model) -> None:
        with torch.no_grad():  # as CLIP: keep the temperature below 100
            model.logit_scale.clamp_(0, 4.6052)

    def exports(self) -> dict:
        return {"clip": ("clip", self.config, "clip." if self.layout_weight > 0 else "", None)}

    def extra(self, name: str) -> dict:
        """The words of the training captions travel with the model (a warning names any others)."""
        return {"vocabulary": vocabulary.of_captions(self.captions)}


# Conditioning from a trained CLIP ------------------------------------------------------------


class ClipData:
    """Dataset images with their CLIP image embeddings and caption encodings, computed once."""

    def __init__(self, raw: dict, image_size: int, device):
        data = raw["data"]
        self.clip_model, self.clip_config = checkpoint.build(data["clip"], "clip", expect_kind="clip")
        size = clip.image_size(self.clip_model)
        # CLIP sees each image at its own resolution (as at sampling time); the stage trains at image_size.
        clip_images, captions = load_images(data["folder"], size, data.get("limit"))
        self.images = clip_images if image_size == size else load_images(data["folder"], image_size, data.get("limit"))[0]
        uniq = sorted(set(captions))
        lookup = {c: i for i, c in enumerate(uniq)}
        self.caption_idx = torch.tensor([lookup[c] for c in captions])
        tok = clip.Tokenizer(self.clip_model.positional_embedding.shape[0])
        mean, std = torch.tensor(clip.OPENAI_MEAN)[:, None, None], torch.tensor(clip.OPENAI_STD)[:, None, None]
        with torch.no_grad():
            embeds = [clip.encode_image(self.clip_model, (clip_images[i:i + 256].float() / 255.0 - mean) / std)
                      for i in range(0, len(clip_images), 256)]
            self.image_embeds = torch.cat(embeds)
            encs = [clip.encode_text(self.clip_model, *tok(uniq[i:i + 256])[:2]) for i in range(0, len(uniq), 256)]
            self.text = clip.TextEncoding.cat(encs)
            self.empty = clip.encode_text(self.clip_model, *tok([""])[:2])
        self.device = device
        self.embed_dim = self.image_embeds.shape[1]
        self.text_width = self.text.tokens.shape[2]

    def text_batch(self, idx: torch.Tensor, drop: torch.Tensor) -> clip.TextEncoding:
        """Caption encodings of items idx, with the empty caption where drop is True."""
        t = self.text.rows(self.caption_idx[idx])  # indexing with a tensor copies: the cache is not written
        t.embed[drop], t.tokens[drop], t.mask[drop] = self.empty.embed[0], self.empty.tokens[0], self.empty.mask[0]
        return clip.TextEncoding(t.embed.to(self.device), t.tokens.to(self.device), t.mask.to(self.device))


# Prior ---------------------------------------------------------------------------------------


class PriorTask(Task):
    def __init__(self, raw: dict, d):
        self.data = ClipData(raw, image_size=clip.image_size_from_config(_clip_cfg(raw)), device=d.device)
        m = dict(raw["model"])
        self.config = PriorConfig(**{**m, "embedding_dim": self.data.embed_dim, "text_width": self.data.text_width})
        self.module = Prior(self.config)
        with torch.no_grad():
            self.module.clip_mean.copy_(self.data.image_embeds.mean(0, keepdim=True))
            self.module.clip_std.copy_(self.data.image_embeds.std(0, keepdim=True) + 1e-6)
        self.module.clip_mean.requires_grad_(False)
        self.module.clip_std.requires_grad_(False)
        self.spec = diffusion_spec(raw, prediction="sample", clamp=5.0)
        self.schedule = gaussian.schedule_of(self.spec)
        self.text_drop = raw.get("dropout", {}).get("text", 0.1)
        self.device = d.device

    def batch(self, n: int, gen) -> dict:
        idx = torch.randint(0, len(self.data.image_embeds), (n,), generator=gen)
        drop = torch.rand(n, generator=gen) < self.text_drop
        return {"x0": self.data.image_embeds[idx].to(self.device), "text": self.data.text_batch(idx, drop)}

    def loss(self, net, batch: dict, gen) -> dict:
        model = net.module if hasattr(net, "module") else net
        x0 = model.normalize(batch["x0"])
        t = _sample_t(len(x0), self.schedule.num_timesteps, gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_t = gaussian.q_sample(self.schedule, x0, t, noise)
        text = batch["text"]
        out = net(x_t, t, text_embed=text.embed, text_tokens=text.tokens, text_mask=text.mask)
        return losses.diffusion_loss(self.spec, self.schedule, out, x0, x_t, t, noise)

    def exports(self) -> dict:
        return {"prior": ("prior", self.config, "", self.spec)}


# Decoder -------------------------------------------------------------------------------------


class DecoderNet(nn.Module):
    """UNet + TextProj trained together; `image_drop` rows use the learned null image embedding."""

    def __init__(self, unet_cfg: UNetConfig, proj_cfg: TextProjConfig):
        super().__init__()
        self.unet, self.text_proj = UNet(unet_cfg), TextProj(proj_cfg)

    def forward(self, x_t, t, image_embed, image_drop, text: clip.TextEncoding, inpaint=None):
        """inpaint: [B, 4, H, W] = cat[known image * keep, keep] for an inpainting decoder (GLIDE)."""
        null = self.text_proj.null_image_embed(len(x_t), x_t.dtype)
        image_embed = torch.where(image_drop[:, None], null, image_embed)
        emb, ctx, cmask = self.text_proj(image_embed, text.embed, text.tokens, text.mask)
        x_in = x_t if inpaint is None else torch.cat([x_t, inpaint], dim=1)
        return self.unet(x_in, t, emb=emb, context=ctx, context_mask=cmask)


def _init_from(module: DecoderNet, init: dict, base: Path) -> None:
    """[init] decoder / text_proj = stage files to start from (a fine-tune). A plain decoder's first
    conv gets zero weights for an inpainting decoder's extra input channels, so training starts from
    exactly the plain decoder's function."""
    for prefix, key in (("unet.", "decoder"), ("text_proj.", "text_proj")):
        if key not in init:
            continue
        own = {k[len(prefix):]: v for k, v in module.state_dict().items() if k.startswith(prefix)}
        tensors = checkpoint.read_tensors(base / Path(init[key]).expanduser(), key, dtype=torch.float32)
        w = tensors.get("conv_in.weight")
        if w is not None and prefix == "unet." and w.shape[1] < own["conv_in.weight"].shape[1]:
            extra = own["conv_in.weight"].shape[1] - w.shape[1]
            tensors["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra, *w.shape[2:])], dim=1)
        getattr(module, prefix[:-1]).load_state_dict(tensors, strict=True)


class DecoderTask(Task):
    def __init__(self, raw: dict, d):
        size = raw["data"].get("image_size", 64)
        self.data = ClipData(raw, image_size=size, device=d.device)
        self.unet_cfg = UNetConfig(**raw["model"])
        self.proj_cfg = TextProjConfig(clip_embeddings_dim=self.data.embed_dim, cross_attention_dim=self.unet_cfg.context_dim,
                                       time_embed_dim=self.unet_cfg.time_dim, text_width=self.data.text_width)
        self.module = DecoderNet(self.unet_cfg, self.proj_cfg)
        self.inpaint = inpaint_inputs(self.unet_cfg)
        if "init" in raw:
            _init_from(self.module, raw["init"], Path(raw.get("_base", ".")))
        drop = raw.get("dropout", {})
        self.image_drop, self.text_drop = drop.get("image", 0.1), drop.get("text", 0.5)
        self.spec = diffusion_spec(raw, prediction="epsilon", variance="learned_range", channels=3,
                                   out_channels=self.unet_cfg.out_channels)
        self.schedule = gaussian.schedule_of(self.spec)
        self.device = d.device

    def batch(self, n: int, gen) -> dict:
        idx = torch.randint(0, len(self.data.images), (n,), generator=gen)
        text_drop = torch.rand(n, generator=gen) < self.text_drop
        image_drop = torch.rand(n, generator=gen) < self.image_drop
        out = {"x0": to_float(self.data.images[idx]).to(self.device),
               "image_embed": self.data.image_embeds[idx].to(self.device),
               "image_drop": image_drop.to(self.device), "text": self.data.text_batch(idx, text_drop)}
        if self.inpaint:
            out["keep"] = random_keep_masks(n, self.data.images.shape[-1], gen).to(self.device)
        return out

    def loss(self, net, batch: dict, gen) -> dict:
        x0 = batch["x0"]
        t = _sample_t(len(x0), self.schedule.num_timesteps, gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_t = gaussian.q_sample(self.schedule, x0, t, noise)
        keep = batch.get("keep")
        inpaint = None if keep is None else torch.cat([x0 * keep, keep], dim=1)
        out = net(x_t, t, batch["image_embed"], batch["image_drop"], batch["text"], inpaint)
        return losses.diffusion_loss(self.spec, self.schedule, out, x0, x_t, t, noise)

    def exports(self) -> dict:
        return {"decoder": ("unet", self.unet_cfg, "unet.", self.spec),
                "text_proj": ("text_proj", self.proj_cfg, "text_proj.", None)}


# Upsampler -----------------------------------------------------------------------------------


class UpsamplerTask(Task):
    def __init__(self, raw: dict, d):
        up = raw["upsampler"]
        self.name, self.low, self.high = up["name"], up["low_size"], up["high_size"]
        self.crop, self.kind = up.get("crop", self.high // 4), up.get("degradation", "blur")
        self.factor = self.high // self.low
        self.images, _ = load_images(raw["data"]["folder"], self.high, raw["data"].get("limit"))
        self.config = UNetConfig(**raw["model"])
        self.module = UNet(self.config)
        self.spec = diffusion_spec(raw, prediction="epsilon", variance="fixed_small", channels=3,
                                   out_channels=self.config.out_channels)
        self.schedule = gaussian.schedule_of(self.spec)
        self.device = d.device

    def batch(self, n: int, gen) -> dict:
        idx = torch.randint(0, len(self.images), (n,), generator=gen)
        c, f = self.crop, self.factor
        ys = torch.randint(0, (self.high - c) // f + 1, (n,), generator=gen) * f
        xs = torch.randint(0, (self.high - c) // f + 1, (n,), generator=gen) * f
        crops = torch.stack([self.images[i, :, y:y + c, x:x + c] for i, y, x in zip(idx, ys, xs)])
        x0 = to_float(crops)
        low = degrade(F.interpolate(x0, size=(c // f, c // f), mode="area"), self.kind, gen)
        up = F.interpolate(low, size=(c, c), mode="bicubic", align_corners=False, antialias=True)
        return {"x0": x0.to(self.device), "low_res": up.to(self.device)}

    def loss(self, net, batch: dict, gen) -> dict:
        x0 = batch["x0"]
        t = _sample_t(len(x0), self.schedule.num_timesteps, gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        x_t = gaussian.q_sample(self.schedule, x0, t, noise)
        out = net(x_t, t, low_res=batch["low_res"])
        return losses.diffusion_loss(self.spec, self.schedule, out, x0, x_t, t, noise)

    def exports(self) -> dict:
        return {self.name: ("unet", self.config, "", self.spec)}


def _clip_cfg(raw: dict) -> dict:
    meta, _ = checkpoint.read_header(Path(raw["data"]["clip"]), "clip")
    import json

    return json.loads(meta["config"])


TASKS = {"clip": ClipTask, "prior": PriorTask, "decoder": DecoderTask, "upsampler": UpsamplerTask}


def _relative_to(raw: dict, base: Path) -> dict:
    """The config with its [data] paths (folder, clip) taken relative to the config file's folder."""
    data = dict(raw["data"])
    for key in ("folder", "clip"):
        if key in data:
            data[key] = str(base / Path(data[key]).expanduser())  # an absolute path stays as it is
    return {**raw, "data": data}


def make(stage: str, raw: dict, base: Path, d, seed: int = 0) -> Task:
    """The task of a stage from its training config; `base`: the config file's folder."""
    if stage not in TASKS:
        raise UnclipError(f"unknown stage '{stage}' (train one of: {', '.join(TASKS)})")
    for section in ("model", "data"):
        if section not in raw:
            raise UnclipError(f"the training config has no [{section}] section")
    raw = {**raw, "_base": str(base)}
    with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the caller's RNG
        torch.manual_seed(seed)
        return TASKS[stage](_relative_to(raw, base), d)

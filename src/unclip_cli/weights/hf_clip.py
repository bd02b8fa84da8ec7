"""Convert a transformers-layout CLIP checkpoint into an ``open_clip.model.CLIP``.

Accepted inputs are the state dicts of ``CLIPModel`` (openai/clip-vit-large-patch14
``model.safetensors``), ``CLIPTextModelWithProjection`` (Karlo ``text_encoder/``) and
``CLIPVisionModelWithProjection`` (Karlo ``image_encoder/``), alone or merged. Keys may carry
the ``text_model.``/``vision_model.`` prefix (how every saved checkpoint and the
``*WithProjection`` classes spell them) or not (bare ``CLIPTextModel``/``CLIPVisionModel`` in
transformers 5); legacy ``*.embeddings.position_ids`` buffers are accepted and dropped.

Mapping (``{i}`` = layer index; text blocks live at ``transformer.resblocks.{i}``, vision ones at
``visual.transformer.resblocks.{i}``)::

    encoder.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias} -> attn.in_proj_{weight,bias} (cat q,k,v)
    encoder.layers.{i}.self_attn.out_proj.*    -> attn.out_proj.*
    encoder.layers.{i}.layer_norm{1,2}.*       -> ln_{1,2}.*
    encoder.layers.{i}.mlp.fc{1,2}.*           -> mlp.c_fc.* / mlp.c_proj.*
    text_model.embeddings.token_embedding.weight    -> token_embedding.weight
    text_model.embeddings.position_embedding.weight -> positional_embedding
    text_model.final_layer_norm.*                   -> ln_final.*
    text_projection.weight (Linear, out x in)       -> text_projection (Parameter, in x out: .T)
    vision_model.embeddings.class_embedding         -> visual.class_embedding
    vision_model.embeddings.patch_embedding.weight  -> visual.conv1.weight (both bias-free)
    vision_model.embeddings.position_embedding.weight -> visual.positional_embedding
    vision_model.pre_layrnorm.* / post_layernorm.*  -> visual.ln_pre.* / visual.ln_post.*
    visual_projection.weight                        -> visual.proj (.T)
    logit_scale                                     -> logit_scale

Behavioural equivalences (checked by tests/test_hf_clip.py): hidden_act ``quick_gelu`` ->
``quick_gelu=True`` (open_clip QuickGELU), ``gelu`` -> exact ``nn.GELU``; both use the same act in
both towers, so differing acts are rejected. ``layer_norm_eps`` goes to ``norm_kwargs`` (both
default to 1e-5). Text pooling: transformers with ``eos_token_id == 2`` (openai, Karlo configs)
takes the argmax of the token ids, exactly open_clip ``pool_type='argmax'``; any other eos id
takes its first occurrence, exactly open_clip ``pool_type='eos'``. Both apply a causal mask and
no padding mask (as transformers does when no ``attention_mask`` is passed). Vision: CLS token
after ``ln_post`` then projection, as transformers' ``post_layernorm(last_hidden_state[:, 0])``.
``attn_mask`` is a non-persistent buffer in open_clip, so it is not part of the state dict.

Text-only checkpoints (Karlo text_to_image): open_clip's ``CLIP`` always builds a vision tower, so
``open_clip_config_from_hf`` then describes a tiny placeholder one (the dict stays a plain
``CLIP(**cfg)`` config) and ``clip_module`` replaces ``model.visual`` with ``models.clip.AbsentTower``, whose
forward raises. A vision-only conversion is refused: the text tower is CLIP's top level.
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from unclip_cli.models import clip
from unclip_cli.weights import checkpoint

__all__ = ["open_clip_config_from_hf", "convert_state_dict", "clip_module", "load_hf_clip"]

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for keys a config.json leaves out.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                        layer_norm_eps=1e-5)
_ACTS = {"quick_gelu": True, "gelu": False}
_PLACEHOLDER_VISION = dict(layers=0, width=8, head_width=8, patch_size=1, image_size=1)

T = "transpose"  # marker: nn.Linear weight (out x in) -> open_clip Parameter (in x out)

# Per transformer block, relative to "<hf tower>encoder.layers.{i}." / "<oc tower>resblocks.{i}.".
# A tuple of hf names is concatenated along dim 0 (q, k, v -> nn.MultiheadAttention in_proj).
_BLOCK = [
    (("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "attn.in_proj_weight"),
    (("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "attn.in_proj_bias"),
    ("self_attn.out_proj.weight", "attn.out_proj.weight"),
    ("self_attn.out_proj.bias", "attn.out_proj.bias"),
    ("layer_norm1.weight", "ln_1.weight"),
    ("layer_norm1.bias", "ln_1.bias"),
    ("mlp.fc1.weight", "mlp.c_fc.weight"),
    ("mlp.fc1.bias", "mlp.c_fc.bias"),
    ("mlp.fc2.weight", "mlp.c_proj.weight"),
    ("mlp.fc2.bias", "mlp.c_proj.bias"),
    ("layer_norm2.weight", "ln_2.weight"),
    ("layer_norm2.bias", "ln_2.bias"),
]
_TEXT = [
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.weight", "ln_final.weight"),
    ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ("text_projection.weight", "text_projection", T),
]
_VISION = [
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
    ("visual_projection.weight", "visual.proj", T),
]
# tower name -> (top-level table, hf block prefix, open_clip block prefix, projection key)
_TOWERS = {
    "text": (_TEXT, "text_model.encoder.layers.", "transformer.resblocks.", "text_projection.weight"),
    "vision": (_VISION, "vision_model.encoder.layers.", "visual.transformer.resblocks.", "visual_projection.weight"),
}
_IGNORED = {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}


def _tower_cfg(cfg: dict, defaults: dict, kind: str) -> tuple[dict, bool]:
    c = {**defaults, **{k: v for k, v in cfg.items() if v is not None}}
    width, heads, inter = c["hidden_size"], c["num_attention_heads"], c["intermediate_size"]
    if c["hidden_act"] not in _ACTS:
        raise ValueError(f"{kind} hidden_act {c['hidden_act']!r} unsupported (want one of {sorted(_ACTS)})")
    if width % heads or int(width * (inter / width)) != inter:
        raise ValueError(f"{kind} tower: hidden_size {width} / heads {heads} / intermediate {inter} "
                         "not expressible in open_clip")
    out = dict(width=width, layers=c["num_hidden_layers"], mlp_ratio=inter / width,
               norm_kwargs={"eps": float(c["layer_norm_eps"])})
    if kind == "text":
        eos = c["eos_token_id"]
        out.update(heads=heads, context_length=c["max_position_embeddings"], vocab_size=c["vocab_size"],
                   pool_type="argmax" if eos == 2 else "eos", eos_id=eos)
    else:
        if c["num_channels"] != 3:
            raise ValueError(f"open_clip ViT expects 3 input channels, got {c['num_channels']}")
        out.update(head_width=width // heads, image_size=c["image_size"], patch_size=c["patch_size"])
    return out, _ACTS[c["hidden_act"]]


def open_clip_config_from_hf(text_config: dict | None, vision_config: dict | None, projection_dim: int) -> dict:
    """open_clip model config (``CLIP(**cfg)``) from transformers config.json tower dicts.

    ``vision_config=None`` yields a tiny placeholder vision tower (see module docstring)."""
    if text_config is None:
        raise ValueError("a text tower config is required: open_clip CLIP cannot omit its text tower")
    text_cfg, quick = _tower_cfg(text_config, _TEXT_DEFAULTS, "text")
    if vision_config is None:
        vision_cfg = dict(_PLACEHOLDER_VISION)
    else:
        vision_cfg, vquick = _tower_cfg(vision_config, _VISION_DEFAULTS, "vision")
        if vquick != quick:
            raise ValueError("text and vision towers use different hidden_act; open_clip has one quick_gelu flag")
    return dict(embed_dim=int(projection_dim), vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick)


def _add_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Give bare CLIPTextModel/CLIPVisionModel keys their ``text_model.``/``vision_model.`` prefix."""
    bare = [k for k in sd if k.split(".")[0] in ("embeddings", "encoder", "final_layer_norm",
                                                   "pre_layrnorm", "post_layernorm")]
    if not bare:
        return dict(sd)
    is_text = "embeddings.token_embedding.weight" in sd
    if is_text == ("embeddings.patch_embedding.weight" in sd):
        raise ValueError("unprefixed CLIP keys must come from exactly one tower (text or vision); "
                         f"cannot tell which for e.g. {bare[:3]}")
    prefix = "text_model." if is_text else "vision_model."
    return {(prefix + k if k in bare else k): v for k, v in sd.items()}


def convert_state_dict(hf_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers CLIP state dict to open_clip ``CLIP`` keys.

    Converts each tower that has any key present (text needs ``text_projection.weight``, vision
    ``visual_projection.weight``) plus ``logit_scale`` if present. Raises ``ValueError`` naming
    keys that a present tower lacks and keys that no table entry consumes."""
    src = _add_prefixes(hf_sd)
    todo = {k: v for k, v in src.items() if k not in _IGNORED}
    out: dict[str, Tensor] = {}
    missing: list[str] = []

    def take(hf, oc, how=None):
        names = hf if isinstance(hf, tuple) else (hf,)
        absent = [n for n in names if n not in todo]
        if absent:
            missing.extend(absent)
            for n in names:
                todo.pop(n, None)
            return
        parts = [todo.pop(n) for n in names]
        t = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        out[oc] = t.t().contiguous() if how == T else t

    for table, hf_block, oc_block, proj in _TOWERS.values():
        tower_prefix = hf_block.split(".")[0] + "."
        if not any(k.startswith(tower_prefix) or k == proj for k in todo):
            continue
        layer_re = re.compile(re.escape(hf_block) + r"(\d+)\.")
        n_layers = 1 + max((int(m.group(1)) for k in todo if (m := layer_re.match(k))), default=-1)
        for entry in table:
            take(*entry)
        for i in range(n_layers):
            for hf, oc in _BLOCK:
                names = tuple(f"{hf_block}{i}.{n}" for n in hf) if isinstance(hf, tuple) else f"{hf_block}{i}.{hf}"
                take(names, f"{oc_block}{i}.{oc}")
    if "logit_scale" in todo:
        take("logit_scale", "logit_scale")
    if missing or todo:
        raise ValueError(f"HF CLIP state dict does not match the CLIP layout: missing keys {sorted(missing)}; "
                         f"unexpected keys {sorted(todo)}")
    return out


def clip_module(text_config: dict | None, vision_config: dict | None, projection_dim: int):
    """The open_clip model for transformers configs, on the meta device (no init, no memory)."""
    with torch.device("meta"):
        model = clip.build_model(open_clip_config_from_hf(text_config, vision_config, projection_dim))
    if vision_config is None:
        model.visual = clip.AbsentTower("vision")
    return model


def load_hf_clip(text_config: dict | None, vision_config: dict | None, projection_dim: int,
                 hf_state_dict: dict[str, Tensor], device="cpu", dtype=torch.float32, stage: str = "clip"):
    """Build an ``open_clip.model.CLIP`` from transformers configs + state dict (strict load).

    With ``vision_config=None`` the vision tower is an ``AbsentTower`` and vision keys in the state
    dict are an error. A checkpoint without ``logit_scale`` (``*WithProjection`` files) gets
    open_clip's initial value, ln(1/0.07). Returns the model in eval mode."""
    model = clip_module(text_config, vision_config, projection_dim)
    sd = convert_state_dict(hf_state_dict)
    if vision_config is None and any(k.startswith("visual.") for k in sd):
        raise ValueError("state dict has vision tower weights but vision_config is None")
    sd.setdefault("logit_scale", torch.tensor(math.log(1 / 0.07)))
    return checkpoint.load_into(model, sd, stage, device, dtype)

"""Karlo v1 alpha in diffusers layout: configs and weights -> unclip's modules, strictly.

`check_stage` checks one stage file from its safetensors header only, `build_stage` builds the
module on the meta device and loads it strictly (`checkpoint.load_into`), and `stage_diffusion`
gives a stage's DiffusionSpec (from the folder's scheduler config, else Karlo's). Which subfolder
is which stage: `folder.py`.

Our prior, UNet and text_proj use diffusers' parameter names: a diffusers key *is* our key. CLIP
goes through `hf_clip` (transformers -> open_clip). Config translation refuses, naming the field,
every value whose behaviour unclip does not implement, and every field it does not know.
"""

import json
from pathlib import Path

import torch

from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.errors import UnclipError
from unclip_cli.models.prior import Prior, PriorConfig
from unclip_cli.models.text_proj import TextProj, TextProjConfig
from unclip_cli.models.unet import UNet, UNetConfig
from unclip_cli.weights import checkpoint, folder, hf_clip
from unclip_cli.weights.folder import read_json as _read_json
from unclip_cli.weights.spec import ModelSpec

# Fields that do not change what these block types compute (or only their precision / training).
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "dropout",
           "attention_head_dim", "upcast_attention", "use_linear_projection", "downsample_padding",
           "transformer_layers_per_block", "reverse_transformer_layers_per_block", "addition_time_embed_dim",
           "addition_embed_type_num_heads", "attn_norm_num_groups", "downsample_type", "upsample_type",
           "num_train_timesteps"}


def _fixed(default, *accepted):
    """A rule: the value a missing field means, and the values unclip implements."""
    return default, accepted or (default,)


_UNET = {  # both UNet classes
    "act_fn": _fixed("silu"), "flip_sin_to_cos": _fixed(True), "freq_shift": _fixed(0),
    "center_input_sample": _fixed(False), "mid_block_scale_factor": _fixed(1),
    "time_embedding_type": _fixed("positional"), "time_embedding_dim": _fixed(None), "num_class_embeds": _fixed(None),
    "resnet_time_scale_shift": _fixed("default", "default", "scale_shift"),
}
RULES = {
    "PriorTransformer": {
        "additional_embeddings": _fixed(4), "time_embed_act_fn": _fixed("silu"), "norm_in_type": _fixed(None),
        "embedding_proj_norm_type": _fixed(None), "encoder_hid_proj_type": _fixed("linear"),
        "added_emb_type": _fixed("prd"), "time_embed_dim": _fixed(None), "embedding_proj_dim": _fixed(None),
        "clip_embed_dim": _fixed(None),
    },
    "UNet2DConditionModel": {
        **_UNET, "class_embed_type": _fixed(None, "identity"),  # identity: text_proj's embedding is added to temb
        "mid_block_type": _fixed("UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn"),
        "only_cross_attention": _fixed(False), "dual_cross_attention": _fixed(False),
        "encoder_hid_dim": _fixed(None), "encoder_hid_dim_type": _fixed(None), "addition_embed_type": _fixed(None),
        "num_attention_heads": _fixed(None), "resnet_skip_time_act": _fixed(False),
        "resnet_out_scale_factor": _fixed(1.0), "time_embedding_act_fn": _fixed(None),
        "timestep_post_act": _fixed(None),
        "time_cond_proj_dim": _fixed(None), "conv_in_kernel": _fixed(3), "conv_out_kernel": _fixed(3),
        "projection_class_embeddings_input_dim": _fixed(None), "class_embeddings_concat": _fixed(False),
        "cross_attention_norm": _fixed(None), "attention_type": _fixed("default"),
        "mid_block_only_cross_attention": _fixed(None, None, False),
    },
    "UNet2DModel": {**_UNET, "class_embed_type": _fixed(None), "add_attention": _fixed(True, False),
                    "mid_block_type": _fixed("UNetMidBlock2D"), "sample_size": _fixed(None, None, 256)},
    "UnCLIPTextProjModel": {},
}
# Fields translated into our configs, with the value a missing one means.
TRANSLATED = {
    "PriorTransformer": dict(num_attention_heads=32, attention_head_dim=64, num_layers=20, embedding_dim=768,
                             num_embeddings=77),
    "UNet2DConditionModel": dict(in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                                 layers_per_block=2, down_block_types=None, up_block_types=None, norm_num_groups=32,
                                 norm_eps=1e-5, cross_attention_dim=1280, sample_size=64),
    "UNet2DModel": dict(in_channels=3, out_channels=3, block_out_channels=[224, 448, 672, 896], layers_per_block=2,
                        down_block_types=None, up_block_types=None, norm_num_groups=32, norm_eps=1e-5),
    "UnCLIPTextProjModel": dict(clip_extra_context_tokens=4, clip_embeddings_dim=768, time_embed_dim=None,
                                cross_attention_dim=None),
}
_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # block type -> has attention
_UP = {False: "ResnetUpsampleBlock2D", True: "SimpleCrossAttnUpBlock2D"}


def _checked(cfg: dict, cls: str, where: str) -> dict:
    """The translated fields of a diffusers config, after refusing anything we do not implement."""
    if cfg.get("_class_name", cls) != cls:
        raise UnclipError(f"{where}: _class_name = {cfg['_class_name']!r}, expected {cls!r}")
    rules, known = RULES[cls], TRANSLATED[cls]
    for field in cfg:
        if field not in rules and field not in known and field not in IGNORED:
            raise UnclipError(f"{where}: unknown config field {field!r} = {cfg[field]!r}; unclip does not implement it")
    for field, (default, accepted) in rules.items():
        value = cfg.get(field, default)
        if value not in accepted:
            raise UnclipError(f"{where}: {field} = {json.dumps(value)} is not supported "
                              f"(unclip implements {' or '.join(json.dumps(a) for a in accepted)})")
    out = {k: cfg.get(k, d) for k, d in known.items()}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise UnclipError(f"{where}: config lacks {', '.join(missing)}")
    return out


def prior_config(cfg: dict, where: str = "prior config") -> PriorConfig:
    c = _checked(cfg, "PriorTransformer", where)
    return PriorConfig(**c, additional_embeddings=4, dropout=float(cfg.get("dropout", 0.0)))


def text_proj_config(cfg: dict, where: str = "text_proj config") -> TextProjConfig:
    return TextProjConfig(**_checked(cfg, "UnCLIPTextProjModel", where))


def unet_config(cfg: dict, where: str = "unet config") -> UNetConfig:
    """UNet2DConditionModel (Karlo decoder) or UNet2DModel (super-res, no attention) -> UNetConfig."""
    cls = cfg.get("_class_name", "UNet2DConditionModel")
    if cls not in ("UNet2DConditionModel", "UNet2DModel"):
        raise UnclipError(f"{where}: _class_name = {cls!r}, expected UNet2DConditionModel or UNet2DModel")
    c = _checked(cfg, cls, where)
    down, up, chs = list(c["down_block_types"]), list(c["up_block_types"]), tuple(c["block_out_channels"])
    for t in down:
        if t not in _DOWN or (cls == "UNet2DModel" and _DOWN[t]):
            raise UnclipError(f"{where}: down_block_types has {t!r}; unclip implements "
                              f"{' and '.join(_DOWN) if cls == 'UNet2DConditionModel' else 'ResnetDownsampleBlock2D'}")
    attention = tuple(_DOWN[t] for t in down)
    if up != [_UP[a] for a in reversed(attention)]:
        raise UnclipError(f"{where}: up_block_types {up} do not mirror down_block_types (expected "
                          f"{[_UP[a] for a in reversed(attention)]})")
    if len(chs) != len(down) or not isinstance(c["layers_per_block"], int):
        raise UnclipError(f"{where}: block_out_channels / layers_per_block need one int per level of down_block_types")
    conditional = cls == "UNet2DConditionModel"
    if conditional and not isinstance(cfg.get("attention_head_dim"), int):
        raise UnclipError(f"{where}: attention_head_dim = {cfg.get('attention_head_dim')!r}; unclip needs one int")
    return UNetConfig(
        in_channels=c["in_channels"], out_channels=c["out_channels"], block_out_channels=chs,
        layers_per_block=c["layers_per_block"], attention=attention, mid_attention=conditional,
        attention_head_dim=cfg["attention_head_dim"] if conditional else 64,
        context_dim=c["cross_attention_dim"] if conditional else None,
        scale_shift=cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
        norm_num_groups=c["norm_num_groups"], norm_eps=float(c["norm_eps"]), dropout=float(cfg.get("dropout", 0.0)),
        sample_size=c["sample_size"] if conditional else 256,
    )


# A full CLIPModel file (openai/clip-vit-large-patch14's model.safetensors) holds both towers: a stage takes
# its own and drops these keys of the other one.
OTHER_TOWER = {"clip": ("vision_model.", "visual_projection."),
               "clip_vision": ("text_model.", "text_projection.", "logit_scale")}


def _tower_cfg(cfg: dict | None, kind: str) -> dict | None:
    """A tower's config: a CLIP{Text,Vision}ModelWithProjection config.json, or that half of a CLIPModel one."""
    if cfg is None or cfg.get("model_type") != "clip":
        return cfg
    if not isinstance(cfg.get(f"{kind}_config"), dict):
        raise UnclipError(f"CLIPModel config without {kind}_config")
    projection_dim = cfg.get("projection_dim", 512)  # the projections belong to the CLIPModel
    return {**cfg[f"{kind}_config"], "model_type": f"clip_{kind}_model", "projection_dim": projection_dim}


def clip_towers(text_cfg: dict | None, vision_cfg: dict | None, where: str = "CLIP config") -> tuple:
    """transformers CLIP configs (CLIP*ModelWithProjection, or CLIPModel) -> (text, vision, projection_dim), checked."""
    text_cfg, vision_cfg = _tower_cfg(text_cfg, "text"), _tower_cfg(vision_cfg, "vision")
    for cfg, kind in ((text_cfg, "clip_text_model"), (vision_cfg, "clip_vision_model")):
        if cfg is not None and cfg.get("model_type") != kind:
            raise UnclipError(f"{where}: model_type = {cfg.get('model_type')!r}, expected {kind!r}")
    dims = {c.get("projection_dim", 512) for c in (text_cfg, vision_cfg) if c is not None}
    if len(dims) != 1:
        raise UnclipError(f"{where}: text and image encoders differ in projection_dim ({sorted(dims)})")
    if text_cfg is None:  # header check of the image encoder alone: a placeholder text tower
        text_cfg = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, vocab_size=1,
                        max_position_embeddings=1, hidden_act=vision_cfg.get("hidden_act", "quick_gelu"))
    return text_cfg, vision_cfg, dims.pop()


def _module(stage: str, cfg: dict, where: str) -> torch.nn.Module:
    """The unclip module for a stage config, on the meta device (no init, no memory)."""
    with torch.device("meta"):
        if stage == "prior":
            return Prior(prior_config(cfg, where))
        if stage == "text_proj":
            return TextProj(text_proj_config(cfg, where))
        if stage in ("decoder", "sr256", "sr256_last"):
            return UNet(unet_config(cfg, where))
    raise UnclipError(f"{where}: unclip has no diffusers-layout stage '{stage}'")


def _clip_module(text_cfg: dict | None, vision_cfg: dict | None, where: str):
    try:
        return hf_clip.clip_module(*clip_towers(text_cfg, vision_cfg, where))
    except ValueError as e:
        raise UnclipError(f"{where}: {e}") from None


def _convert_clip(stage: str, hf: dict) -> dict:
    try:
        return hf_clip.convert_state_dict(hf)
    except ValueError as e:
        raise UnclipError(f"stage '{stage}': {e}") from None


def check_stage(stage: str, weights_path, config_path) -> None:
    """Strict key/shape check of one stage file from its header (no tensor is read)."""
    if config_path is None:
        raise UnclipError(f"stage '{stage}': no config.json for this diffusers-layout stage")
    _, found = checkpoint.read_header(Path(weights_path), stage)
    cfg, where = _read_json(config_path, f"stage '{stage}'"), f"stage '{stage}' ({config_path})"
    if stage in ("clip", "clip_vision"):
        text, vision = (cfg, None) if stage == "clip" else (None, cfg)
        expected = {k: tuple(v.shape) for k, v in _clip_module(text, vision, where).state_dict().items()
                    if k.startswith("visual.") == (stage == "clip_vision") and k != "logit_scale"}
        meta = {k: torch.empty(s, device="meta") for k, s in found.items() if not k.startswith(OTHER_TOWER[stage])}
        found = {k: tuple(v.shape) for k, v in _convert_clip(stage, meta).items() if k != "logit_scale"}
    else:
        expected = {k: tuple(v.shape) for k, v in _module(stage, cfg, where).state_dict().items()}
    checkpoint.check_strict(stage, expected, found)


def build_stage(stage: str, weights_path, config_path, device, dtype) -> torch.nn.Module:
    """Build a stage module on the meta device and load its diffusers-layout weights strictly.

    For `clip`, weights_path/config_path may be (text_encoder, image_encoder) pairs: one open_clip model.
    """
    if stage != "clip":
        module = _module(stage, _read_json(config_path, f"stage '{stage}'"), f"stage '{stage}' ({config_path})")
        # read_tensors gives each tensor its own aligned buffer (never views into a memory map at arbitrary
        # offsets: MKL's batch-of-one GEMMs round differently on unaligned data, 1e-7 that t=999 amplifies).
        tensors = checkpoint.read_tensors(Path(weights_path), stage, dtype=dtype)
        return checkpoint.load_into(module, tensors, stage, device, dtype)
    paths = list(weights_path) if isinstance(weights_path, (tuple, list)) else [weights_path]
    cfg_paths = list(config_path) if isinstance(config_path, (tuple, list)) else [config_path]
    cfgs = [_read_json(p, f"stage '{stage}'") for p in cfg_paths] + [None]
    towers = clip_towers(cfgs[0], cfgs[1], f"stage '{stage}' ({cfg_paths[0]})")
    hf = {}
    for p, tower in zip(paths, ("clip", "clip_vision")):
        own = checkpoint.read_tensors(Path(p), stage, dtype=dtype).items()
        hf.update({k: v for k, v in own if not k.startswith(OTHER_TOWER[tower])})
    try:
        return hf_clip.load_hf_clip(*towers, hf, device, dtype, stage=stage)
    except ValueError as e:
        raise UnclipError(f"stage '{stage}': {e}") from None


def stage_diffusion(stage: str, model: ModelSpec, stage_config: dict) -> DiffusionSpec | None:
    """A diffusion stage's spec: from the folder's scheduler_config.json, else Karlo's (HUB_SCHEDULERS)."""
    if stage not in folder.SCHEDULER_OF:
        return None
    if stage in model.diffusion:
        return model.diffusion[stage]
    name = folder.SCHEDULER_OF[stage]
    return folder.diffusion_spec(HUB_SCHEDULERS[name], stage_config, f"{name} of model '{model.name}'")


# Karlo's own files ------------------------------------------------------------------------------

# Karlo v1 alpha's config.json values (shared/reference/karlo.md sec. 1.2), as the 0.11-era hub files spell them
# (newer fields absent); tests and benchmarks write these.
HUB_CONFIGS = {
    "prior": {"_class_name": "PriorTransformer", "_diffusers_version": "0.11.0.dev0", "num_attention_heads": 32,
              "attention_head_dim": 64, "num_layers": 20, "embedding_dim": 768, "num_embeddings": 77,
              "additional_embeddings": 4, "dropout": 0.0},
    "decoder": {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.11.0.dev0", "sample_size": 64,
                "in_channels": 3, "out_channels": 6, "center_input_sample": False, "flip_sin_to_cos": True,
                "freq_shift": 0, "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                                                      "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
                "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
                "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                                   "ResnetUpsampleBlock2D"],
                "only_cross_attention": False, "block_out_channels": [320, 640, 960, 1280], "layers_per_block": 3,
                "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
                "norm_eps": 1e-05, "cross_attention_dim": 1536, "attention_head_dim": 64, "dual_cross_attention": False,
                "use_linear_projection": False, "class_embed_type": "identity", "num_class_embeds": None,
                "upcast_attention": False, "resnet_time_scale_shift": "scale_shift"},
    "super_res_first": {"_class_name": "UNet2DModel", "_diffusers_version": "0.11.0.dev0", "sample_size": 256,
                        "in_channels": 6, "out_channels": 3, "center_input_sample": False,
                        "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
                        "down_block_types": ["ResnetDownsampleBlock2D"] * 4, "up_block_types": ["ResnetUpsampleBlock2D"] * 4,
                        "block_out_channels": [320, 640, 960, 1280], "layers_per_block": 3, "mid_block_scale_factor": 1,
                        "downsample_padding": 1, "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32,
                        "norm_eps": 1e-05, "resnet_time_scale_shift": "default", "add_attention": False},
    "text_proj": {"_class_name": "UnCLIPTextProjModel", "_diffusers_version": "0.11.0.dev0",
                  "clip_embeddings_dim": 768, "clip_extra_context_tokens": 4, "cross_attention_dim": 1536,
                  "time_embed_dim": 1280},
    "text_encoder": {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
                     "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                     "hidden_act": "quick_gelu", "max_position_embeddings": 77, "projection_dim": 768,
                     "vocab_size": 49408, "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2,
                     "pad_token_id": 1},
}
HUB_CONFIGS["super_res_last"] = {**HUB_CONFIGS["super_res_first"], "sample_size": None}
# Karlo's scheduler_config.json values (what the Hub ships; tests and benchmarks write these).
HUB_SCHEDULERS = {
    "prior_scheduler": dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                            clip_sample_range=5.0, num_train_timesteps=1000),
    "decoder_scheduler": dict(variance_type="learned_range", prediction_type="epsilon", clip_sample=True,
                              clip_sample_range=1.0, num_train_timesteps=1000),
    "super_res_scheduler": dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=True,
                                clip_sample_range=1.0, num_train_timesteps=1000),
}

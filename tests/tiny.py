"""Tiny random unCLIP models for tests: every stage with Karlo's block types, a few KB to MB each."""

from pathlib import Path

import torch

from unclip_cli.weights import checkpoint, files
from unclip_cli.models.prior import PriorConfig
from unclip_cli.models.text_proj import TextProjConfig
from unclip_cli.models.unet import UNetConfig
from unclip_cli.diffusion.spec import DiffusionSpec

CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 2.0},
}
PRIOR = PriorConfig(num_attention_heads=2, attention_head_dim=16, num_layers=1, embedding_dim=32, text_width=32)
DECODER = UNetConfig(in_channels=3, out_channels=6, block_out_channels=(16, 32), layers_per_block=1,
                     attention=(False, True), attention_head_dim=16, context_dim=32, norm_num_groups=8)
TEXT_PROJ = TextProjConfig(clip_embeddings_dim=32, cross_attention_dim=32, time_embed_dim=DECODER.time_dim, text_width=32)
SR = UNetConfig(in_channels=6, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, attention=(False, False),
                mid_attention=False, context_dim=None, scale_shift=False, norm_num_groups=4)
SR1024 = UNetConfig(in_channels=6, out_channels=3, block_out_channels=(4, 4), layers_per_block=1, attention=(False, False),
                    mid_attention=False, context_dim=None, scale_shift=False, norm_num_groups=2)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every tensor seeded random values, so no bias, norm or embedding can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("clip_std"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            else:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
    return module


# What each tiny stage samples with: the prior predicts x0 (clamped to 5, as Karlo), the decoder eps with a
# learned-range variance (Karlo's decoder), the upsamplers eps with the fixed posterior variance.
PRIOR_SPEC = DiffusionSpec(prediction="sample", clamp=5.0)
DECODER_SPEC = DiffusionSpec(prediction="epsilon", variance="learned_range", guided_channels=3)
SR_SPEC = DiffusionSpec(prediction="epsilon")


def make_stage(path: Path, kind: str, config, seed: int, diffusion: DiffusionSpec | None = None) -> Path:
    module = randomize(checkpoint.instantiate(kind, checkpoint.config_to_dict(config)), seed)
    checkpoint.save(path, kind, config, module.state_dict(), diffusion=diffusion)
    return path


STAGES = {
    "clip": ("clip", CLIP, None), "prior": ("prior", PRIOR, PRIOR_SPEC), "text_proj": ("text_proj", TEXT_PROJ, None),
    "decoder": ("unet", DECODER, DECODER_SPEC), "sr256": ("unet", SR, SR_SPEC), "sr256_last": ("unet", SR, SR_SPEC),
    "sr1024": ("unet", SR1024, SR_SPEC),
}


def write_model(folder: Path, name: str = "tiny", *, with_sha: bool = True, extra_toml: str = "") -> Path:
    """Write tiny checkpoints and a weights.toml listing them; returns the toml path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'default = "{name}"', "", f"[models.{name}]", 'description = "tiny random test model"', "",
             f"[models.{name}.defaults]", "prior_steps = 3", "decoder_steps = 3", "sr_steps = 2", "",
             f"[models.{name}.stages]"]
    for i, (stage, (kind, cfg, spec)) in enumerate(STAGES.items()):
        path = make_stage(folder / f"{stage}.safetensors", kind, cfg, seed=100 + i, diffusion=spec)
        sha = f', sha256 = "{files.sha256_file(path)}"' if with_sha else ""
        lines.append(f'{stage} = {{ path = "{path.name}"{sha} }}')
    toml = folder / "weights.toml"
    toml.write_text("\n".join(lines) + "\n" + extra_toml)
    return toml

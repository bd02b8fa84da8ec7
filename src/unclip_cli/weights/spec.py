"""What a model is: its stages, where each stage file lives, and its sampling defaults. No torch, no I/O."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from unclip_cli.diffusion.spec import DiffusionSpec

STAGES = ("clip", "clip_vision", "prior", "text_proj", "decoder", "sr256", "sr256_last", "sr1024", "sr1024_last")
REQUIRED = ("clip", "prior", "text_proj", "decoder")  # an image-variations model may have no prior


def unclip_home() -> Path:
    return Path(os.environ.get("UNCLIP_HOME") or Path.home() / ".local" / "share" / "unclip")


@dataclass(frozen=True)
class Source:
    """Where one stage file lives."""

    path: Path | None = None
    repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None

    def describe(self) -> str:
        return str(self.path) if self.path else f"{self.repo}@{(self.revision or '')[:10]}/{self.filename}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    format: str  # "unclip" (config in the safetensors metadata) or "diffusers"
    stages: dict[str, Source]
    defaults: dict = field(default_factory=dict)
    configs: dict[str, Source] = field(default_factory=dict)  # diffusers: config.json per stage
    # diffusers layout: each stage's spec from its scheduler config (unclip checkpoints carry their own)
    diffusion: dict[str, DiffusionSpec] = field(default_factory=dict)

    @property
    def has_image_encoder(self) -> bool:
        """Whether its CLIP has an image tower: our own files carry one, a diffusers-layout model only with
        clip_vision (Karlo's text_encoder is text-only). Known before any file is fetched."""
        return self.format != "diffusers" or "clip_vision" in self.stages


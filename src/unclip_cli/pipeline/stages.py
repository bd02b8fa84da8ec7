"""Opening a model: fetch and check its stage files, then load each stage when it is needed.

`open_model` resolves a model name, fetches the files a run at a given size needs, and checks every
stage strictly from its file header before any sampling. `Stages` loads a stage's module when its
turn comes and releases it after (so peak memory stays near the largest stage), and knows each
diffusion stage's `DiffusionSpec`.
"""

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.errors import UnclipError
from unclip_cli.models import clip
from unclip_cli.weights import checkpoint, hub, karlo, registry, vocabulary
from unclip_cli.models.unet import UNet
from unclip_cli.weights.spec import REQUIRED, ModelSpec

KINDS = {"clip": "clip", "prior": "prior", "text_proj": "text_proj", "decoder": "unet"}  # others: "unet"
SIZES = (32, 64, 256, 1024)


class Stages:
    """Resolves, checks and loads the stage modules of one model."""

    def __init__(self, spec: ModelSpec, device, dtype, paths: dict[str, Path], keep_loaded: bool = False,
                 config_paths: dict[str, Path] | None = None):
        self.spec, self.device, self.dtype, self.paths = spec, torch.device(device), dtype, paths
        self.config_paths = config_paths or {}  # diffusers layout: config.json per stage
        self.keep_loaded = keep_loaded
        self._loaded: dict[str, object] = {}
        self._diffusion: dict[str, DiffusionSpec] = {}
        self.tokenizer: clip.Tokenizer | None = None
        self._deferred: set[str] | None = None  # releases put off by holding()
        self.active: str | None = None  # the stage last asked for (named if it runs out of memory)
        self.channels_last = channels_last_for(self.device, dtype)

    def has(self, stage: str) -> bool:
        return stage in self.paths

    def preflight(self) -> None:
        """Strict key/shape check of every stage file from its header, and each stage's diffusion spec."""
        for stage, path in self.paths.items():
            if self.spec.format == "diffusers":
                karlo.check_stage(stage, path, self.config_paths.get(stage))
                cfg = self.config_paths.get(stage)
                spec = karlo.stage_diffusion(stage, self.spec, json.loads(cfg.read_text()) if cfg else {})
            else:
                kind = KINDS.get(stage, "unet")
                spec = checkpoint.check_file(path, stage, kind)
            if spec is not None:
                self._diffusion[stage] = spec

    def diffusion(self, stage: str) -> DiffusionSpec:
        """How a diffusion stage (prior, decoder, sr256, ...) samples."""
        return self._diffusion[stage]

    def get(self, stage: str):
        if stage not in self.paths:
            raise UnclipError(f"model '{self.spec.name}' has no {stage} stage")
        self.active = stage
        if stage not in self._loaded and self.spec.format == "diffusers":
            path, cfg = self.paths[stage], self.config_paths.get(stage)
            if stage == "clip" and self.has("clip_vision"):  # text_encoder + image_encoder: one CLIP
                path, cfg = (path, self.paths["clip_vision"]), (cfg, self.config_paths.get("clip_vision"))
            self._loaded[stage] = karlo.build_stage(stage, path, cfg, self.device, self.dtype)
        if stage not in self._loaded:
            kind = KINDS.get(stage, "unet")
            module, _ = checkpoint.build(self.paths[stage], stage, self.device, self.dtype, expect_kind=kind)
            self._loaded[stage] = module
        module = self._loaded[stage]
        if self.channels_last and isinstance(module, UNet):
            module.to_channels_last()  # in place; weights already channels_last are left as they are
        return module

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

    def sizes(self) -> list[int]:
        """The output sizes this model makes: the decoder's own, then each upsampler's."""
        return [self.decoder_size(), *[r for _, r in _needed(self.spec, None)[1]]]

    def vocabulary(self) -> list[str] | None:
        """The words the model was trained on (stored in its CLIP file); None when it does not say."""
        if self.spec.format == "diffusers" or "clip" not in self.paths:
            return None
        if not hasattr(self, "_vocabulary"):  # read once per run, not once per prompt
            self._vocabulary = vocabulary.read(self.paths["clip"])
        return self._vocabulary

    def context_length(self) -> int:
        return int(self.get("clip").positional_embedding.shape[0])


def channels_last_for(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the UNets run channels_last ([B, H, W, C] in memory): on the CPU in half precision, where
    oneDNN's bf16 convolutions are 1.4-3x faster that way at most of Karlo's shapes
    (benchmarks/conv_layouts.py). fp32 stays in the plain layout, in which Karlo's decoder matches diffusers
    bit for bit."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def _needed(spec: ModelSpec, size: int | None) -> tuple[list[str], list[tuple[str, int]]]:
    """The stages a run at `size` needs, and the model's upsamplers [(stage, output size)]."""
    ups = [(s, r) for s, r in (("sr256", 256), ("sr1024", 1024)) if s in spec.stages]
    # a diffusers-layout image-variations model has no prior but a separate image encoder (clip_vision)
    needed = [s for s in (*REQUIRED, "clip_vision") if s in spec.stages]
    needed += [s for s, _ in ups] + [f"{s}_last" for s, _ in ups if f"{s}_last" in spec.stages]
    if size is not None and size not in SIZES:
        raise UnclipError(f"--size must be {', '.join(map(str, SIZES[:-1]))} or {SIZES[-1]}, got {size}")
    if size is not None and ups and size > ups[-1][1]:
        raise UnclipError(f"model '{spec.name}' reaches {ups[-1][1]}x{ups[-1][1]}; --size {size} is not available")
    if size is not None:  # only fetch what this size needs
        needed = [s for s in needed if not s.startswith("sr") or int(s[2:].split("_")[0]) <= size]
    return needed, ups


def open_model(model: str | ModelSpec | None, device, dtype, size: int | None, *, keep_loaded: bool = False
               ) -> tuple[Stages, int]:
    """Fetch and check the files a run at `size` needs; `model`: a name, a folder, or a spec already resolved.
    Returns (stages, resolved size).

    Sizes: the decoder's own resolution (64 for Karlo), then 256 and 1024 as far as the
    model's upsamplers reach. Without a size: the model's default `size`, else the largest.
    """
    spec = model if isinstance(model, ModelSpec) else registry.resolve(model)
    needed, ups = _needed(spec, size)
    where = lambda s: f"stage '{s}' of model '{spec.name}'"  # noqa: E731
    paths = {s: hub.fetch(spec.stages[s], where(s), model=spec.name) for s in needed}
    configs = {s: hub.fetch(spec.configs[s], f"config of {where(s)}", model=spec.name)
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

"""A local folder in diffusers layout (a copy of kakaobrain/karlo-v1-alpha, or its image-variations
repo) as a model: which subfolder is which stage, and each stage's diffusion spec read from its
scheduler_config.json. No torch: configs are translated into modules in `karlo.py`.
"""

import json
from pathlib import Path

from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.errors import UnclipError
from unclip_cli.weights.spec import ModelSpec, Source

# stage -> (subfolder, class it must hold). clip_vision joins clip into one open_clip model.
FOLDERS = {
    "clip": ("text_encoder", "CLIPTextModelWithProjection"),
    "clip_vision": ("image_encoder", "CLIPVisionModelWithProjection"),
    "prior": ("prior", "PriorTransformer"),
    "text_proj": ("text_proj", "UnCLIPTextProjModel"),
    "decoder": ("decoder", "UNet2DConditionModel"),
    "sr256": ("super_res_first", "UNet2DModel"),
    "sr256_last": ("super_res_last", "UNet2DModel"),
}
# The scheduler each diffusion stage samples with.
SCHEDULER_OF = {"prior": "prior_scheduler", "decoder": "decoder_scheduler", "sr256": "super_res_scheduler",
                "sr256_last": "super_res_scheduler"}
# The registry's karlo defaults: UnCLIPPipeline's guidance; DPM-Solver++(2M) SDE with the log-SNR spacing at 16/16/4
# steps (README "Speed"; Karlo's own DDPM 25/25/7 with --sampler ddpm --spacing uniform and the step flags).
DEFAULTS = dict(sampler="dpmpp_2m_sde", spacing="logsnr", prior_steps=16, decoder_steps=16, sr_steps=4,
                prior_guidance=4.0, decoder_guidance=8.0)

# UnCLIPScheduler's defaults for fields a scheduler_config.json leaves out, and its names -> ours.
_SCHED_DEFAULT = dict(_class_name="UnCLIPScheduler", beta_schedule="squaredcos_cap_v2", variance_type="fixed_small_log",
                      prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0, num_train_timesteps=1000)
_SCHEDULES = {"squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "epsilon", "sample": "sample", "v_prediction": "v"}
_VARIANCES = {"fixed_small_log": "fixed_small", "learned_range": "learned_range"}


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UnclipError(f"{what}: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UnclipError(f"{what}: cannot read {path} ({e})") from None


def diffusion_spec(scheduler: dict, stage_config: dict, where: str) -> DiffusionSpec:
    """DiffusionSpec of a stage from its UnCLIPScheduler config (and the stage's config.json for the channels)."""
    cfg = {**_SCHED_DEFAULT, **scheduler}
    for field, table in (("_class_name", {"UnCLIPScheduler": 1}), ("beta_schedule", _SCHEDULES),
                         ("prediction_type", _PREDICTIONS), ("variance_type", _VARIANCES)):
        if cfg[field] not in table:
            raise UnclipError(f"{where}: {field} = {json.dumps(cfg[field])} is not supported "
                              f"(unclip: {' or '.join(json.dumps(k) for k in table)})")
    variance = _VARIANCES[cfg["variance_type"]]
    guided = int(stage_config.get("out_channels", 6)) // 2 if variance == "learned_range" else None
    try:
        return DiffusionSpec(schedule=_SCHEDULES[cfg["beta_schedule"]], num_timesteps=int(cfg["num_train_timesteps"]),
                             prediction=_PREDICTIONS[cfg["prediction_type"]], variance=variance,
                             clamp=float(cfg["clip_sample_range"]) if cfg["clip_sample"] else None,
                             guided_channels=guided)
    except ValueError as e:
        raise UnclipError(f"{where}: {e}") from None


def _weights_file(sub: Path) -> Path:
    """The one safetensors weights file of a component folder; pickles are refused."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (sub / name).is_file():
            return sub / name
    found = sorted(sub.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if found or list(sub.glob("*.safetensors.index.json")):
        raise UnclipError(f"{sub}: several or sharded .safetensors files; unclip reads one file per component")
    if list(sub.glob("*.bin")) or list(sub.glob("*.pt*")) or list(sub.glob("*.ckpt")):
        raise UnclipError(f"{sub} has only pickle weights (.bin); unclip never loads pickles. Use a safetensors copy "
                          "(on the Hub, the SFconvertbot pull request of the repo) or convert it with safetensors")
    raise UnclipError(f"{sub}: no .safetensors weights file")


def _diffusion_specs(root: Path, stages: dict[str, Source]) -> dict[str, DiffusionSpec]:
    """The spec of every diffusion stage whose scheduler_config.json is in the folder."""
    out = {}
    for stage, folder in SCHEDULER_OF.items():
        path = root / folder / "scheduler_config.json"
        if stage in stages and path.is_file():
            stage_cfg = read_json(root / FOLDERS[stage][0] / "config.json", f"stage '{stage}'")
            out[stage] = diffusion_spec(read_json(path, "scheduler"), stage_cfg, str(path))
    return out


def spec_from_folder(path) -> ModelSpec:
    """A model spec for a local folder in diffusers layout (model_index.json + one subfolder per component)."""
    root = Path(path).expanduser().resolve()
    index = read_json(root / "model_index.json", f"model folder {root}")
    pipe = index.get("_class_name")
    if pipe not in ("UnCLIPPipeline", "UnCLIPImageVariationPipeline"):
        raise UnclipError(f"{root}/model_index.json: _class_name = {pipe!r}; unclip reads UnCLIPPipeline "
                          "(karlo-v1-alpha) and UnCLIPImageVariationPipeline (karlo-v1-alpha-image-variations)")
    stages, configs = {}, {}
    for stage, (folder, cls) in FOLDERS.items():
        entry = index.get(folder)
        if not entry or entry[-1] is None:
            continue
        if entry[-1] != cls:
            raise UnclipError(f"{root}/model_index.json: {folder} is {entry[-1]}, unclip reads {cls}")
        if not (root / folder / "config.json").is_file():
            raise UnclipError(f"{root / folder}: config.json is missing")
        stages[stage] = Source(path=_weights_file(root / folder))
        configs[stage] = Source(path=root / folder / "config.json")
    missing = [FOLDERS[s][0] for s in ("clip", "text_proj", "decoder") if s not in stages]
    if "prior" not in stages and "clip_vision" not in stages:
        missing.append("prior (or image_encoder)")
    if missing:
        raise UnclipError(f"{root}: no {', '.join(missing)} component in model_index.json")
    return ModelSpec(name=str(root), description=f"{pipe} in diffusers layout", format="diffusers", stages=stages,
                     configs=configs, defaults=dict(DEFAULTS), diffusion=_diffusion_specs(root, stages))

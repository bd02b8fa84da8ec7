"""What the verbs do around the pipeline: check the options, pick device and seeds, show progress,
run the cascade and write the PNGs. The one layer between `app.py` and the pipeline.
"""

import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unclip_cli.errors import UnclipError
from unclip_cli import options
from unclip_cli.pipeline import cascade, images, stages as stages_mod, toolkit

err = Console(stderr=True)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class RunArgs:
    """Options of generate, vary and edit; `sampling` maps option names to values (None = the model's default)."""

    model: str | None = None
    num_images: int = 1
    seed: int | None = None
    size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    outdir: Path = Path("outputs")
    json: bool = False
    metadata: bool = True
    sampling: dict = field(default_factory=dict)

    @classmethod
    def of(cls, kw: dict) -> "RunArgs":
        """From the CLI's keyword arguments (RUN_OPTIONS and sampling options)."""
        kw = dict(kw)
        sampling = {k: kw.pop(k) for k in options.BY_NAME if k in kw}
        kw["metadata"] = not kw.pop("no_metadata", False)
        return cls(**kw, sampling=sampling)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnclipError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise UnclipError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UnclipError("--device mps: Apple MPS is not available on this machine")
    elif name != "cpu":
        raise UnclipError(f"--device must be auto, cpu, cuda, cuda:N or mps, got '{name}'")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UnclipError(f"--dtype must be auto, fp32, fp16 or bf16, got '{name}'")
    return DTYPES[name]


def validate(args: RunArgs) -> None:
    if args.num_images < 1:
        raise UnclipError(f"--num-images must be at least 1, got {args.num_images}")
    if problem := options.first_problem(args.sampling):
        raise UnclipError(problem)
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_images:
        raise UnclipError(f"--seed must be a non-negative integer below 2**63, got {args.seed}")


class StageProgress:
    """rich progress bars per stage on stderr, and seconds of sampling per stage.

    A stage that runs again (the next image: `done` back at 0) adds its steps to the same bar and its
    time to the same total.
    """

    def __init__(self, quiet: bool):
        self.timings: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._tasks: dict[str, int] = {}
        self._before: dict[str, tuple[int, float]] = {}  # (steps, seconds) of the stage's earlier runs
        self._total: dict[str, int] = {}
        self.progress = Progress(TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, disable=quiet, transient=False)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage not in self._tasks:
            self._tasks[stage] = self.progress.add_task(stage, total=total)
            self._before[stage] = (0, 0.0)
            self._start[stage] = now
        elif done == 0:
            self._before[stage] = (self._before[stage][0] + self._total[stage], self.timings[stage])
            self._start[stage] = now
        self._total[stage] = total
        steps, seconds = self._before[stage]
        self.progress.update(self._tasks[stage], completed=steps + done, total=steps + total)
        self.timings[stage] = round(seconds + now - self._start[stage], 3)


def quiet() -> bool:
    return bool(os.environ.get("UNCLIP_QUIET"))


def prepare(args: RunArgs):
    """Everything that can fail on bad input, before any sampling: returns (stages, opts, seeds)."""
    validate(args)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    images.check_outdir(args.outdir)
    stages, size = stages_mod.open_model(args.model, device, dtype, args.size, keep_loaded=False)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    seeds = [seed + i for i in range(args.num_images)]
    return stages, options.resolve(stages.spec.defaults, args.sampling, size), seeds


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def warn_truncated(stages, prompt: str) -> None:
    _, dropped = cascade.encode_text(stages, [prompt])
    if dropped[0]:
        n = stages.context_length()
        err.print(f"[yellow]warning:[/] the prompt is longer than CLIP's {n} tokens; dropped: \"{dropped[0]}\"",
                  highlight=False, soft_wrap=True)  # one line, however long


# Verbs ---------------------------------------------------------------------------------------


def _negative(stages, negative: str) -> tuple[list[str] | None, dict]:
    """A negative prompt as the cascade takes it (None when empty: exactly as without one) and its metadata."""
    if not negative.strip():
        return None, {}
    warn_truncated(stages, negative)
    return [negative], {"negative_prompt": negative}


def generate(prompt: str, args: RunArgs, negative: str = "") -> list[Path]:
    stages, opts, seeds = prepare(args)
    warn_truncated(stages, prompt)
    neg, record = _negative(stages, negative)
    progress = StageProgress(quiet())
    with progress.progress:
        x = cascade.generate(stages, [prompt], opts, generators(seeds), progress, one_by_one=True, negative=neg)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "generate", prompt, progress.timings, record)


def vary(image_path: Path, args: RunArgs, steer: toolkit.Steer = toolkit.Steer()) -> list[Path]:
    image = images.load_image(image_path)
    stages, opts, seeds = prepare(args)
    if steer.prompt:
        warn_truncated(stages, steer.prompt)
    if steer.prompt and steer.prompt_mix > 0 and not stages.has("prior"):
        raise UnclipError(f"--prompt-mix needs a prior, and model '{stages.spec.name}' has none")
    progress = StageProgress(quiet())
    with progress.progress:
        x = toolkit.vary(stages, image, opts, generators(seeds), progress, steer)
    return write_outputs(images.to_pil(x), seeds, args, stages, opts, "vary", steer.prompt, progress.timings,
                         {"source": str(image_path), **steer.record()})


def edit(image_path: Path, mask_path: Path | None, prompt: str, args: RunArgs, negative: str = "") -> list[Path]:
    image = images.load_image(image_path)
    mask_image = images.load_image(mask_path, "mask") if mask_path is not None else None
    edit_mask = images.edit_mask(image, mask_image, str(mask_path) if mask_path else None)  # [H, W] bool
    stages, opts, seeds = prepare(args)
    warn_truncated(stages, prompt)
    neg, record = _negative(stages, negative)
    S = opts.size
    x = images.to_tensor(image, S)[None]
    m = Image.fromarray(edit_mask.astype(np.uint8) * 255).resize((S, S), Image.BOX)
    m = torch.from_numpy(np.asarray(m) > 0)[None, None]
    progress = StageProgress(quiet())
    with progress.progress:
        out = cascade.edit(stages, x, m, [prompt], opts, generators(seeds), progress, one_by_one=True, negative=neg)
    results = [images.composite(image, g, edit_mask) for g in images.to_pil(out)]
    return write_outputs(results, seeds, args, stages, opts, "edit", prompt, progress.timings,
                         {"source": str(image_path), "mask": str(mask_path) if mask_path else "alpha", **record})


# Output --------------------------------------------------------------------------------------


def _uses_prior(mode: str, extra: dict) -> bool:
    if mode == "vary":
        return "prompt_mix" in extra
    if mode == "mix":
        return any(str(extra.get(k, "")).startswith("text:") for k in ("mix_a", "mix_b"))
    return True


def _params(mode: str, prompt: str, seed: int, im, stages, opts, hashes: dict, extra: dict | None) -> dict:
    """What a PNG records about how it was made (None values left out)."""
    from unclip_cli import __version__

    spec = stages.spec
    prior = _uses_prior(mode, extra or {})
    params = {
        "mode": mode, "prompt": prompt, "seed": seed, "model": spec.name,
        "model_hash": (spec.stages["decoder"].sha256 or "")[:10], "size": f"{im.size[0]}x{im.size[1]}",
        "sampler": opts.sampler, "prior_steps": opts.prior_steps if prior else None,
        "prior_guidance": opts.prior_guidance if prior else None, "decoder_steps": opts.decoder_steps,
        "decoder_guidance": opts.decoder_guidance, "sr_steps": opts.sr_steps if opts.size >= 256 else None,
        "files": hashes, "version": __version__, **(extra or {}),
    }
    return {k: v for k, v in params.items() if v is not None}


def write_outputs(pils, seeds, args: RunArgs, stages, opts, mode: str, prompt: str, timings: dict, extra=None):
    hashes = {s: stages.spec.stages[s].sha256 for s in stages.paths}
    paths = []
    for im, seed in zip(pils, seeds):
        params = _params(mode, prompt, seed, im, stages, opts, hashes, extra)
        data = images.png_bytes(im, params if args.metadata else None)
        paths.append(images.save_new(args.outdir, f"{seed}-{images.slug(prompt or mode)}", data))
    if args.json:
        import json

        out = {"model": stages.spec.name, "images": [{"path": str(p), "seed": s} for p, s in zip(paths, seeds)],
               "timings": timings, "files": hashes, "size": opts.size}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        for p in paths:
            sys.stdout.write(f"{p}\n")
    return paths

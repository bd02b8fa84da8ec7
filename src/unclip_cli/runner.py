"""What the command line does around the pipeline: devices, seeds, progress, and writing results.

Kept apart from `cli.py` so that `unclip --help` never imports torch.
"""

import os
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unclip_cli import images, pipeline, weights
from unclip_cli.errors import UnclipError

err = Console(stderr=True)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class RunArgs:
    """Options shared by generate, vary and edit (None = the model's default)."""

    model: str | None = None
    num_images: int = 1
    seed: int | None = None
    prior_steps: int | None = None
    decoder_steps: int | None = None
    sr_steps: int | None = None
    prior_guidance: float | None = None
    decoder_guidance: float | None = None
    sampler: str = "ddpm"
    size: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    outdir: Path = Path("outputs")
    json: bool = False
    metadata: bool = True
    extra: dict = field(default_factory=dict)


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
    for flag in ("prior_steps", "decoder_steps", "sr_steps"):
        v = getattr(args, flag)
        if v is not None and not 1 <= v <= 1000:
            raise UnclipError(f"--{flag.replace('_', '-')} must be between 1 and 1000, got {v}")
    for flag in ("prior_guidance", "decoder_guidance"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise UnclipError(f"--{flag.replace('_', '-')} must not be negative, got {v}")
    if args.sampler not in ("ddpm", "ddim"):
        raise UnclipError(f"--sampler must be ddpm or ddim, got '{args.sampler}'")
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_images:
        raise UnclipError(f"--seed must be a non-negative integer below 2**63, got {args.seed}")


def options(args: RunArgs, spec: weights.ModelSpec, size: int) -> pipeline.Options:
    opts = pipeline.Options(size=size, sampler=args.sampler)
    # a model's default `size` was already applied when the size was resolved (pipeline.open_model): never
    # let it override the size asked for
    known = {k: v for k, v in spec.defaults.items() if k in pipeline.Options.__dataclass_fields__ and k != "size"}
    opts = replace(opts, **known)
    given = {k: getattr(args, k) for k in ("prior_steps", "decoder_steps", "sr_steps", "prior_guidance",
                                           "decoder_guidance") if getattr(args, k) is not None}
    return replace(opts, **given)


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


def prepare(args: RunArgs):
    """Everything that can fail on bad input, before any sampling: returns (stages, opts, seeds, outdir)."""
    validate(args)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    outdir = images.check_outdir(args.outdir)
    stages, size = pipeline.open_model(args.model, device, dtype, args.size, keep_loaded=False)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    seeds = [seed + i for i in range(args.num_images)]
    return stages, options(args, stages.spec, size), seeds, outdir


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def warn_truncated(stages, prompt: str) -> None:
    _, dropped = pipeline.encode_text(stages, [prompt])
    if dropped[0]:
        n = stages.context_length()
        err.print(f"[yellow]warning:[/] the prompt is longer than CLIP's {n} tokens; dropped: \"{dropped[0]}\"",
                  highlight=False, soft_wrap=True)  # one line, however long


def write_outputs(pils, seeds, args: RunArgs, stages, opts, mode: str, prompt: str, timings: dict, extra=None):
    spec = stages.spec
    hashes = {s: spec.stages[s].sha256 for s in stages.paths}
    model_hash = (spec.stages["decoder"].sha256 or "")[:10]
    paths = []
    for im, seed in zip(pils, seeds):
        params = {
            "mode": mode, "prompt": prompt, "seed": seed, "model": spec.name, "model_hash": model_hash,
            "size": f"{im.size[0]}x{im.size[1]}", "sampler": opts.sampler,
            "prior_steps": opts.prior_steps if mode != "vary" else None,
            "prior_guidance": opts.prior_guidance if mode != "vary" else None,
            "decoder_steps": opts.decoder_steps, "decoder_guidance": opts.decoder_guidance,
            "sr_steps": opts.sr_steps if opts.size >= 256 else None, "files": hashes, "version": _version(),
            **(extra or {}),
        }
        params = {k: v for k, v in params.items() if v is not None}
        data = images.png_bytes(im, params if args.metadata else None)
        paths.append(images.save_new(args.outdir, f"{seed}-{images.slug(prompt or mode)}", data))
    if args.json:
        import json

        out = {"model": spec.name, "images": [{"path": str(p), "seed": s} for p, s in zip(paths, seeds)],
               "timings": timings, "files": hashes, "size": opts.size}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        for p in paths:
            sys.stdout.write(f"{p}\n")
    return paths


def _version() -> str:
    from unclip_cli import __version__

    return __version__


def quiet() -> bool:
    return bool(os.environ.get("UNCLIP_QUIET"))

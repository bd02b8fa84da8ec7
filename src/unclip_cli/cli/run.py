"""What the verbs do around the pipeline: check the options, pick device and seeds, show progress,
run the cascade and write the PNGs. The one layer between `app.py` and the pipeline.
"""

import dataclasses
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unclip_cli.cli import batches, interrupts, prompts as prompts_mod
from unclip_cli.errors import UnclipError
from unclip_cli import options
from unclip_cli.diffusion import repaint
from unclip_cli.pipeline import cascade, edit_region, images, stages as stages_mod, toolkit
from unclip_cli.weights import registry, vocabulary

err = Console(stderr=True)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
MAX_IMAGES = 10_000  # per command: more is surely a typo (the seeds alone would fill memory at 10**9)


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
    batch_size: int | None = None  # images per chunk (None: batches.default_batch_size)
    prompts_file: str | None = None  # a path, or "-" for standard input
    guidelines: Path | None = None
    # For `unclip serve`: called at every sampling step with (stage, done, total) (it may raise
    # interrupts.Interrupted to stop the run as a signal would), and with each PNG's path once written.
    on_step: Callable[[str, int, int], None] | None = None
    on_image: Callable[[Path], None] | None = None

    @classmethod
    def of(cls, kw: dict) -> "RunArgs":
        """From the CLI's keyword arguments (RUN_OPTIONS and sampling options)."""
        kw = dict(kw)
        sampling = {k: kw.pop(k) for k in options.BY_NAME if k in kw}
        kw["metadata"] = not kw.pop("no_metadata", False)
        return cls(**kw, sampling=sampling)


@dataclass
class EditArgs:
    """How `edit` treats its mask (pipeline/edit_region.py)."""

    invert: bool = False
    dilate: int = 0  # pixels of the decoder's grid
    blur: int = 0  # image pixels of feathering outside the (dilated) mask

    def check(self) -> None:
        for flag, value in (("--mask-dilate", self.dilate), ("--mask-blur", self.blur)):
            if value < 0:
                raise UnclipError(f"{flag} must not be negative, got {value}")
            if value > 256:
                raise UnclipError(f"{flag} must be at most 256, got {value}")


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


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16; read from Linux's cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto = fp16 on CUDA, bf16 on a CPU with native bf16 (measured 2-3x faster than fp32 on Karlo's
    stages, README "Speed"), fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and native_bf16_cpu() else torch.float32
    if name not in DTYPES:
        raise UnclipError(f"--dtype must be auto, fp32, fp16 or bf16, got '{name}'")
    return DTYPES[name]


def validate(args: RunArgs, prompts: int = 1) -> None:
    if args.num_images < 1:
        raise UnclipError(f"--num-images must be at least 1, got {args.num_images}")
    if args.num_images > MAX_IMAGES:
        raise UnclipError(f"--num-images must be at most {MAX_IMAGES}, got {args.num_images}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UnclipError(f"--batch-size must be at least 1, got {args.batch_size}")
    if problem := options.first_problem(args.sampling):
        raise UnclipError(problem)
    if args.seed is not None and not 0 <= args.seed < 2**63 - args.num_images * prompts:
        raise UnclipError(f"--seed must be a non-negative integer below 2**63, got {args.seed}")


class StageProgress:
    """rich progress bars per stage on stderr, and seconds of sampling per stage.

    A stage that runs again (the next image: `done` back at 0) adds its steps to the same bar and its
    time to the same total.
    """

    def __init__(self, quiet: bool, listener: Callable[[str, int, int], None] | None = None):
        self.listener = listener
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
        if self.listener is not None:
            self.listener(stage, done, total)


def quiet() -> bool:
    return bool(os.environ.get("UNCLIP_QUIET"))


def check_model(spec, sampling: dict, *, image_encoder: str | None = None, prior: str | None = None,
                reranks: bool = False) -> None:
    """Refuse, from the model's entry and before any file is fetched, a run that needs a part the model lacks:
    `image_encoder` / `prior` name what needs CLIP's image tower / a prior; `reranks`: the run ranks its draws
    by CLIP when it asks for (or its model defaults to) more than one image candidate."""
    if reranks and options.resolve(spec.defaults, sampling, 0).image_candidates > 1:
        image_encoder = image_encoder or "--image-candidates"
    if image_encoder and not spec.has_image_encoder:
        raise UnclipError(f"{image_encoder} needs a CLIP image encoder; model '{spec.name}' has none")
    if prior and "prior" not in spec.stages:
        raise UnclipError(f"{prior} needs a prior; model '{spec.name}' has none (without one a model can only vary "
                          f"images and mix images)")


def prepare(args: RunArgs, prompts: int = 1, *, image_encoder: str | None = None, prior: str | None = None,
            reranks: bool = False):
    """Everything that can fail on bad input, before any sampling: returns (stages, opts, seeds), with
    `num_images` seeds per prompt: prompt k's images use seeds seed + k*n ... seed + k*n + n-1. The keywords say
    what the run needs of the model (check_model's)."""
    validate(args, prompts)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    images.check_outdir(args.outdir)
    spec = registry.resolve(args.model)
    check_model(spec, args.sampling, image_encoder=image_encoder, prior=prior, reranks=reranks)
    stages, size = stages_mod.open_model(spec, device, dtype, args.size, keep_loaded=False)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    seeds = [seed + i for i in range(args.num_images * prompts)]
    return stages, options.resolve(stages.spec.defaults, args.sampling, size), seeds


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def warn_prompt(stages, prompt: str) -> None:
    """Warnings about the prompt, one line each: words the model never saw, words cut off by CLIP."""
    vocab = stages.vocabulary()
    if vocab and (missing := vocabulary.unknown(vocab, prompt)):
        err.print(f"[yellow]warning:[/] {vocabulary.warning(stages.spec.name, vocab, missing)}",
                  highlight=False, soft_wrap=True, markup=True)
    _, dropped = cascade.encode_text(stages, [prompt])
    if dropped[0]:
        n = stages.context_length()
        err.print(f"[yellow]warning:[/] the prompt is longer than CLIP's {n} tokens; dropped: \"{dropped[0]}\"",
                  highlight=False, soft_wrap=True)  # one line, however long


# Prompts -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A run's prompts, and those set aside before any model loads (bad lines, refused by the guidelines)."""

    prompts: list  # [prompts_mod.Prompt]
    skipped: list  # [prompts_mod.Skipped]
    source: str | None = None  # the prompts file (None: one prompt on the command line)
    guidelines: prompts_mod.Guidelines | None = None
    refused: list = field(default_factory=list)  # [{"prompt", "term"(, "line")}]

    def jobs(self, seeds: list[int], n: int) -> list[batches.Job]:
        """n images per prompt; prompt k (counting every prompt of the file, bad ones too) uses seeds[k*n:(k+1)*n]."""
        return [batches.Job(p.text, seeds[p.index * n + i], p.line) for p in self.prompts for i in range(n)]

    def count(self) -> int:
        return max(p.index for p in self.prompts) + 1

    def to_json(self) -> dict:
        out = {}
        if self.source is not None:
            out.update(prompts_file=self.source, skipped=[{"line": s.line, "reason": s.reason} for s in self.skipped])
        if self.guidelines is not None:
            out["guidelines"] = {"file": self.guidelines.source, "refused": self.refused,
                                 "allowed": [p.text for p in self.prompts]}
        return out


def plan_prompts(prompt: str | None, args: RunArgs) -> Plan:
    """The prompt or the prompts file's lines, checked against the guidelines; bad lines reported."""
    if (prompt is None) == (args.prompts_file is None):
        raise UnclipError("give a prompt or --prompts-file, not both" if prompt else "no prompt: give one, or --prompts-file FILE")
    if args.prompts_file is not None:
        found, skipped, source = prompts_mod.read_prompts_file(args.prompts_file)
    else:
        found, skipped, source = [prompts_mod.Prompt(prompt, 0)], [], None
    plan = Plan([], list(skipped), source, prompts_mod.find_guidelines(args.guidelines))
    for p in found:
        term = plan.guidelines.match(p.text) if plan.guidelines else None
        if term is None:
            plan.prompts.append(p)
            continue
        plan.refused.append({"prompt": p.text, "term": term} | ({"line": p.line} if p.line else {}))
        why = f"refused by the guidelines in {plan.guidelines.source} (it contains '{term}')"
        plan.skipped.append(prompts_mod.Skipped(p.line, why))
    plan.skipped.sort(key=lambda s: s.line or 0)
    if not plan.prompts:
        if args.json:
            sys.stdout.write(json.dumps({"images": [], **plan.to_json()}) + "\n")
        if source is None:
            raise UnclipError(f"the prompt is {plan.skipped[0].reason}")
        raise UnclipError(f"no prompt of {source} is left to run: {len(plan.skipped)} line(s) skipped, "
                          f"the first: line {plan.skipped[0].line}: {plan.skipped[0].reason}")
    for s in plan.skipped:
        sys.stderr.write(f"error: {source} line {s.line}: {s.reason}; skipped (the other prompts run)\n")
    return plan


# Verbs ---------------------------------------------------------------------------------------


# What each verb needs of the model (check_model's keywords), for the CLI's verbs and serve's requests alike.
GENERATE_NEEDS = {"prior": "generate", "reranks": True}
EDIT_NEEDS = {"prior": "edit"}


def vary_needs(steer: toolkit.Steer) -> dict:
    return {"image_encoder": "vary", "prior": "--prompt-mix" if steer.uses_prior else None}


def mix_needs(kinds) -> dict:
    """A mix whose sides are of these kinds ("image", "text")."""
    return {"image_encoder": "a mix side that is an image" if "image" in kinds else None,
            "prior": "a mix side that is a text" if "text" in kinds else None}


def _negative(stages, negative: str) -> tuple[list[str] | None, dict]:
    """A negative prompt as the cascade takes it (None when empty: exactly as without one) and its metadata."""
    if not negative.strip():
        return None, {}
    warn_prompt(stages, negative)
    return [negative], {"negative_prompt": negative}


def generate(prompt: str | None, args: RunArgs, negative: str = "") -> list[Path]:
    plan = plan_prompts(prompt, args)
    stages, opts, seeds = prepare(args, plan.count(), **GENERATE_NEEDS)
    for p in plan.prompts:
        warn_prompt(stages, p.text)
    neg, record = _negative(stages, negative)

    def make(chunk, progress):
        x = cascade.generate(stages, [j.prompt for j in chunk], opts, generators([j.seed for j in chunk]),
                             progress, one_by_one=True, negative=neg and neg * len(chunk))
        return images.to_pil(x)

    return run_jobs(plan.jobs(seeds, args.num_images), make, args, stages, opts, "generate", plan, record)


def vary(image_path: Path, args: RunArgs, steer: toolkit.Steer = toolkit.Steer()) -> list[Path]:
    image = images.load_image(image_path)
    stages, opts, seeds = prepare(args, **vary_needs(steer))
    if steer.prompt:
        warn_prompt(stages, steer.prompt)

    def make(chunk, progress):
        x = toolkit.vary(stages, image, opts, generators([j.seed for j in chunk]), progress, steer)
        return images.to_pil(x)

    jobs = [batches.Job(steer.prompt, s) for s in seeds]
    return run_jobs(jobs, make, args, stages, opts, "vary", extra={"source": str(image_path), **steer.record()})


def edit(image_path: Path, mask_path: Path | None, prompt: str | None, args: RunArgs,
         region: EditArgs | None = None, negative: str = "") -> list[Path]:
    region = region or EditArgs()
    region.check()
    plan = plan_prompts(prompt, args)
    image = images.load_image(image_path)
    mask_image = images.load_image(mask_path, "mask") if mask_path is not None else None
    edit_mask = images.edit_mask(image, mask_image, str(mask_path) if mask_path else None, invert=region.invert)
    stages, opts, seeds = prepare(args, plan.count(), **EDIT_NEEDS)
    if opts.resample > 1 and opts.sampler not in repaint.SUPPORTED:
        if args.sampling.get("sampler") is not None:
            raise UnclipError(f"--resample needs --sampler {' or '.join(repaint.SUPPORTED)}, not {opts.sampler}")
        # the model's default sampler keeps a history: RePaint walks DDPM, on Karlo's even-in-t steps unless asked
        opts = dataclasses.replace(opts, sampler="ddpm", spacing=args.sampling.get("spacing") or "uniform")
    for p in plan.prompts:
        warn_prompt(stages, p.text)
    neg, record = _negative(stages, negative)

    def make(chunk, progress):
        return edit_region.edit(stages, image, edit_mask, [j.prompt for j in chunk], opts,
                                generators([j.seed for j in chunk]), progress, dilate=region.dilate, blur=region.blur,
                                negative=neg and neg * len(chunk))

    extra = {"source": str(image_path), "mask": str(mask_path) if mask_path else "alpha", "invert_mask": region.invert or None,
             "mask_dilate": region.dilate, "mask_blur": region.blur, "resample": opts.resample,
             "jump": opts.jump if opts.resample > 1 else None, **record}
    return run_jobs(plan.jobs(seeds, args.num_images), make, args, stages, opts, "edit", plan, extra)


def run_jobs(jobs, make, args: RunArgs, stages, opts, mode: str, plan: Plan | None = None, extra=None, *,
             save=None) -> list[Path]:
    """Make the images chunk by chunk (make(chunk, progress) -> an item per job: a PIL image), writing each
    chunk's files as it finishes with `save` (default: one PNG per job, `_saver`; see batches.run); print
    their paths (or, at the end or on an interruption, the JSON). Raises if lines were skipped."""
    progress = StageProgress(quiet(), args.on_step)
    written = batches.Written(args.outdir)
    batch = args.batch_size or batches.default_batch_size(stages.paths, stages.device)
    result = (written, stages, opts, progress, batch, plan)
    try:
        with progress.progress:
            batches.run(jobs, lambda chunk: make(chunk, progress), save or _saver(args, stages, opts, mode, extra),
                        batch, written, stages)
    except interrupts.Interrupted as e:
        if args.json:
            _print_json(*result, stopped=e)
        raise
    if args.json:
        _print_json(*result)
    if plan and plan.skipped:
        lines = ", ".join(str(s.line) for s in plan.skipped)
        raise UnclipError(f"{len(plan.skipped)} line(s) of {plan.source} skipped (line {lines}); "
                          f"the other prompts: {written.summary()}")
    return [Path(r["path"]) for r in written.records] + [Path(g) for g in written.gifs]


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
        "sampler": opts.sampler, "spacing": opts.spacing, "dtype": dtype_name(stages.dtype),
        "prior_steps": opts.prior_steps if prior else None,
        "prior_guidance": opts.prior_guidance if prior else None,
        "prior_candidates": opts.prior_candidates if prior and opts.prior_candidates > 1 else None,
        "image_candidates": opts.image_candidates if mode == "generate" else None,  # always: models' defaults differ
        "negative_rescale": opts.negative_rescale if (extra or {}).get("negative_prompt") else None,
        "decoder_steps": opts.decoder_steps,
        "decoder_guidance": opts.decoder_guidance, "sr_steps": opts.sr_steps if opts.size >= 256 else None,
        "files": hashes, "version": __version__, **(extra or {}),
    }
    return {k: v for k, v in params.items() if v is not None}


def _print_json(written, stages, opts, progress, batch: int, plan, stopped=None) -> None:
    out = {"model": stages.spec.name, **written.to_json(), "timings": progress.timings,
           "files": _hashes(stages), "size": opts.size, "batch_size": batch, **(plan.to_json() if plan else {})}
    if stopped is not None:
        out["interrupted"] = signal.Signals(stopped.signum).name
    sys.stdout.write(json.dumps(out) + "\n")


def _hashes(stages) -> dict:
    return {s: stages.spec.stages[s].sha256 for s in stages.paths}


def _saver(args: RunArgs, stages, opts, mode: str, extra):
    """save(image, job) -> path: one PNG with its parameters; its path on stdout at once (unless --json)."""
    hashes = _hashes(stages)

    def save(im, job: batches.Job) -> Path:
        params = _params(mode, job.prompt, job.seed, im, stages, opts, hashes, extra)
        data = images.png_bytes(im, params if args.metadata else None)
        path = images.save_new(args.outdir, f"{job.seed}-{images.slug(job.prompt or mode)}", data)
        if args.on_image is not None:
            args.on_image(path)
        if not args.json:
            sys.stdout.write(f"{path}\n")
            sys.stdout.flush()
        return path

    return save

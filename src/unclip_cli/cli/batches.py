"""A verb's images in chunks: each chunk goes through every stage, then its PNGs are written, so an
interruption loses at most the chunk in flight (`--batch-size`; stage files are read again per chunk).

Inside a chunk each image is still sampled alone, as a batch of one (`cascade` one_by_one), so an
image's pixels depend only on its seed and options, never on the chunk size. Running out of memory
becomes one line naming the stage; SIGINT/SIGTERM (`interrupts.Interrupted`) get the line saying how
many images were written and where.

A job may make more than one file: `unclip mix` makes a whole series per job (its frames and their GIF),
so a chunk is `--batch-size` series and a series is written whole or not at all.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unclip_cli.cli import interrupts
from unclip_cli.errors import UnclipError

BIG_MODEL_BYTES = 1 << 30  # stage files above this (Karlo: 13.7 GB) take seconds to read per chunk
DEFAULT_SMALL = 8  # shapes and the test models: reading every stage again costs ~0.1 s (README)
DEFAULT_BIG_CUDA = 4  # not measured: a GPU samples Karlo in seconds, so reading 13.7 GB per image would dominate
OOM_PHRASES = ("out of memory", "not enough memory", "can't allocate memory")


@dataclass(frozen=True)
class Job:
    """One image to make: its prompt ("" for vary), seed, and line in a prompts file (if any)."""

    prompt: str
    seed: int
    line: int | None = None


def default_batch_size(paths: dict[str, Path], device) -> int:
    """Images per chunk when --batch-size is not given: 1 for a big model on a CPU (Karlo: reading
    every stage again costs ~14 s against ~630 s per image), 4 for a big model on CUDA, else 8."""
    total = sum(p.stat().st_size for p in paths.values() if p.is_file())
    if total < BIG_MODEL_BYTES:
        return DEFAULT_SMALL
    return DEFAULT_BIG_CUDA if getattr(device, "type", str(device)) == "cuda" else 1


def is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (a RuntimeError), an allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and any(p in str(e).lower() for p in OOM_PHRASES)


def out_of_memory(stage: str | None, device) -> UnclipError:
    where = f"the {stage} stage" if stage else "a stage"
    return UnclipError(f"out of memory in {where} ({device}): try --dtype bf16, a smaller --size, "
                       "a smaller --image-candidates, or another --device (each image is already sampled alone: --batch-size "
                       "does not lower the peak)")


class Written:
    """The files a run has written so far (PNGs, and a mix's GIFs), for --json and for the line an
    interruption prints."""

    def __init__(self, outdir: Path):
        self.outdir, self.records, self.gifs = outdir, [], []

    def add(self, path: Path, job: Job, **fields) -> None:
        """A PNG made for `job`, recorded with `fields` (a mix frame: its ratio); gif=True: a mix's GIF."""
        if fields.pop("gif", False):
            self.gifs.append(str(path))
            return
        rec = {"path": str(path), "seed": job.seed}
        if job.line is not None:
            rec.update(prompt=job.prompt, line=job.line)
        self.records.append({**rec, **fields})

    def to_json(self) -> dict:
        return {"images": self.records, **({"gifs": self.gifs} if self.gifs else {})}

    def summary(self) -> str:
        n, g = len(self.records), len(self.gifs)
        if not n and not g:
            return "no image written"
        gifs = f" and {g} GIF{'s' if g != 1 else ''}" if g else ""
        return f"{n} image{'s' if n != 1 else ''}{gifs} written to {self.outdir}"


def run(jobs: list[Job], make: Callable, save: Callable, batch_size: int, written: Written, stages) -> None:
    """make(chunk of jobs) -> one item per job (a PIL image; a mix: a series); save(item, job) -> its Path, or
    [(Path, fields for Written.add)] for a job with several files. Chunk after chunk, writing as they finish."""
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            try:
                pils = make(chunk)
            except (MemoryError, RuntimeError) as e:
                if not is_out_of_memory(e):
                    raise
                raise out_of_memory(stages.active, stages.device) from None
            for item, job in zip(pils, chunk):
                with interrupts.deferred():  # a signal waits until the job's files are in place and counted
                    saved = save(item, job)
                    for path, fields in saved if isinstance(saved, list) else [(saved, {})]:
                        written.add(path, job, **fields)
    except interrupts.Interrupted as e:
        e.message = f"interrupted: {written.summary()}"
        raise
    except UnclipError as e:
        if written.records:
            raise UnclipError(f"{e}; {written.summary()} before") from None
        raise

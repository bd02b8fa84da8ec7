"""The `unclip` command line: a thin Typer shell over `cli/run.py`.

Commands parse options and hand them to `run`, which imports torch; nothing here does, so
`unclip --help` answers at once. The sampling options (steps, guidance, sampler) are not written
out per verb: `with_options(...)` adds them from their one definition in `options.py`.
"""

import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from unclip_cli.cli import interrupts
from unclip_cli.errors import UnclipError
from unclip_cli import options

app = typer.Typer(
    help="DALL-E 2 style image generation (unCLIP) on your own machine: generate, vary, edit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's help renderer (markdown-it and all) costs ~0.3 s of CPU per --help
)
models_app = typer.Typer(help="List and download models.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="Make training data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


@contextlib.contextmanager
def friendly_errors(interruptible: bool = False):
    """Turn UnclipError into `error: ...` on stderr and exit status 1, with no traceback. `interruptible`:
    SIGINT/SIGTERM stop the verb cleanly (its one line, exit 130/143; see cli/interrupts.py)."""
    try:
        with interrupts.catching() if interruptible else contextlib.nullcontext():
            yield
    except UnclipError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except interrupts.Interrupted as e:
        typer.echo(e.message, err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


Json = Annotated[bool, typer.Option("--json", help="Print a JSON object (paths, seeds, timings, hashes) on stdout.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Size = Annotated[Optional[int], typer.Option(help="Output size: the decoder's own (64 for Karlo, 32 for shapes), 256 or "
                                                  "1024; default: the model's default size, else the largest it reaches.")]
PromptsFile = Annotated[Optional[str], typer.Option("--prompts-file", help="Read prompts from this file, one a line "
                        "('-': standard input); blank lines and # comments skipped; prompt k uses seeds seed+k*n...")]
GuidelinesFile = Annotated[Optional[Path], typer.Option("--guidelines", help="Refuse prompts containing a word or phrase "
                           "listed in this file (default: $UNCLIP_HOME/guidelines.txt if present, else off).")]
# Options every image-making verb takes, before the sampling options: name -> (annotation, default).
RUN_OPTIONS = {
    "model": (Annotated[Optional[str], typer.Option("--model", "-m", help="Model name from weights.toml, or a folder in "
                                                   "diffusers layout (default: the bundled model).")], None),
    "num_images": (Annotated[int, typer.Option("--num-images", "-n", help="How many images; image i uses seed+i.")], 1),
    "seed": (Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first image (random if not given; "
                                                  "always recorded).")], None),
    "size": (Size, None),
    "device": (Device, "auto"),
    "dtype": (Annotated[str, typer.Option(help="auto (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32), "
                                               "fp32, fp16 or bf16.")], "auto"),
    "outdir": (Annotated[Path, typer.Option("--outdir", "-o", help="Folder for the PNGs (never overwrites).")],
               Path("outputs")),
    "json": (Json, False),
    "batch_size": (Annotated[Optional[int], typer.Option("--batch-size", help="Images per chunk: each chunk goes "
                   "through every stage and is written before the next starts (default: 1 for a big model on "
                   "a CPU, else 4 on CUDA; 8 for small models).")], None),
    "no_metadata": (Annotated[bool, typer.Option("--no-metadata", help="Do not embed the parameters in the PNGs.")], False),
}


def _sampling_parameters(verb: str) -> list[inspect.Parameter]:
    """A Typer option for each sampling option the verb offers (None = the model's default)."""
    out = []
    for o in options.SAMPLING:
        if options.offered(o, verb):
            hint = Annotated[Optional[o.type], typer.Option(o.flag, help=f"{o.help} Default: the model's, else {o.default}.")]
            out.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=None))
    return out


def with_options(verb: str, run: bool = True):
    """Append the sampling options `verb` offers (options.VERB_STAGES; and, if `run`, RUN_OPTIONS) to a command's own
    parameters."""

    def wrap(f):
        sig = inspect.signature(f)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
                 for n, (a, d) in RUN_OPTIONS.items()] if run else []
        params = own + extra + _sampling_parameters(verb)
        f.__signature__ = sig.replace(parameters=params)
        f.__annotations__ = {p.name: p.annotation for p in params}
        return f

    return wrap


def _run():
    from unclip_cli.cli import run

    return run


Negative = Annotated[str, typer.Option("--negative-prompt", help="What to steer away from: the prior's and the "
                                                                "decoder's unconditional input (empty = none).")]


@app.command()
@with_options("generate")
def generate(prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
             negative_prompt: Negative = "", prompts_file: PromptsFile = None, guidelines: GuidelinesFile = None,
             **kw):
    """Text to image: CLIP text -> prior -> decoder -> upsamplers -> PNG."""
    with friendly_errors(interruptible=True):
        if prompt is not None and not prompt.strip():
            raise UnclipError("the prompt is empty")
        _run().generate(prompt, _run().RunArgs.of(kw | {"prompts_file": prompts_file, "guidelines": guidelines}),
                        negative=negative_prompt)


@app.command()
@with_options("vary")
def vary(
    image: Annotated[Path, typer.Argument(help="The image to make variations of.")],
    strength: Annotated[float, typer.Option(help="How far from the input: 1 = from pure noise (default); below 1 the "
                                                 "decoder starts from the input noised to this level (img2img).")] = 1.0,
    prompt: Annotated[str, typer.Option(help="Steer with text: the decoder's caption.")] = "",
    prompt_mix: Annotated[float, typer.Option(help="With --prompt: also slerp the image embedding this far (0-1) "
                                                   "toward the prior's embedding of the prompt.")] = 0.0,
    toward: Annotated[Optional[str], typer.Option(help="Text diff: move the image toward this caption.")] = None,
    from_: Annotated[str, typer.Option("--from", help="Text diff: a caption of the image as it is.")] = "",
    amount: Annotated[float, typer.Option(help="Text diff: how far (0-1) to turn toward the difference.")] = 0.5,
    **kw,
):
    """Variations of an image: its CLIP image embedding -> decoder -> upsamplers (no prior unless --prompt-mix)."""
    with friendly_errors(interruptible=True):
        from unclip_cli.cli import toolkit

        steer = toolkit.steer_of(strength, prompt, prompt_mix, toward, from_, amount)
        _run().vary(image, _run().RunArgs.of(kw), steer)


@app.command()
@with_options("mix")
def mix(
    a: Annotated[str, typer.Argument(help="First side: an image file, or a text (through the prior). "
                                          "Write image:PATH or text:WORDS to say which.")],
    b: Annotated[str, typer.Argument(help="Second side, as A.")],
    ratio: Annotated[Optional[float], typer.Option(help="0 = A, 1 = B (default 0.5).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Write N images over ratios 0..1 and an animated GIF.")] = None,
    **kw,
):
    """Blend two images or texts: spherical interpolation of their CLIP image embeddings, same noise for every ratio."""
    with friendly_errors(interruptible=True):
        from unclip_cli.cli import toolkit

        toolkit.mix(a, b, ratio, frames, _run().RunArgs.of(kw))


@app.command()
@with_options("edit")
def edit(
    image: Annotated[Path, typer.Argument(help="The image to edit (any size; never stretched).")],
    prompt: Annotated[Optional[str], typer.Argument(help="What the masked area should show.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Mask image, same size: white = edit, black = keep. "
                                                      "Without it, the image's transparent pixels are edited.")] = None,
    negative_prompt: Negative = "",
    invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Edit the black (or opaque) pixels instead.")] = False,
    mask_dilate: Annotated[int, typer.Option(help="Grow the mask by this many pixels of the decoder's grid.")] = 0,
    mask_blur: Annotated[int, typer.Option(help="Feather the paste-back over this many pixels outside the (grown) "
                                                "mask; pixels farther out stay exactly the input's.")] = 0,
    prompts_file: PromptsFile = None,
    guidelines: GuidelinesFile = None,
    **kw,
):
    """Regenerate only the masked area of an image; every pixel outside the (grown, feathered) mask is kept exactly."""
    with friendly_errors(interruptible=True):
        if prompt is not None and not prompt.strip():
            raise UnclipError("the prompt is empty")
        run = _run()
        region = run.EditArgs(invert=invert_mask, dilate=mask_dilate, blur=mask_blur)
        run.edit(image, mask, prompt, run.RunArgs.of(kw | {"prompts_file": prompts_file, "guidelines": guidelines}), region,
                 negative=negative_prompt)


@app.command()
def info(image: Annotated[Path, typer.Argument(help="A PNG written by unclip.")], json: Json = False):
    """Print the parameters stored in an image."""
    with friendly_errors():
        from unclip_cli.pipeline import images

        params, text = images.read_params(image)
        if params is None and text is None:
            raise UnclipError(f"{image} carries no unclip or A1111 parameters")
        if json:
            import json as _json

            typer.echo(_json.dumps(params if params is not None else {"parameters": text}, indent=2, sort_keys=True))
        else:
            typer.echo(images.printable(text if text is not None else str(params)))


@models_app.command("list")
def models_list(json: Json = False):
    """The configured models, their stages, and which files are on disk."""
    with friendly_errors():
        from unclip_cli.cli import models

        models.list_models(json)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Model name from weights.toml.")]):
    """Download every file of a model ahead of time (resumable)."""
    with friendly_errors():
        from unclip_cli.cli import models

        models.pull(name)


@data_app.command("shapes")
def data_shapes(
    count: Annotated[int, typer.Option(help="Number of images.")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same dataset.")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    size_word_prob: Annotated[float, typer.Option(
        help="Share of one-object captions that name the size ('a small red circle' vs 'a red circle').")] = 1.0,
):
    """Render the procedural shapes world as an image+caption folder (img2dataset layout)."""
    with friendly_errors():
        from unclip_cli.shapes import world

        if count < 1:
            raise UnclipError(f"--count must be at least 1, got {count}")
        if not 0.0 <= size_word_prob <= 1.0:
            raise UnclipError(f"--size-word-prob must be between 0 and 1, got {size_word_prob}")
        try:
            world.write_dataset(out, count, seed, size=size, size_word_prob=size_word_prob)
        except FileExistsError as e:
            raise UnclipError(str(e)) from None
        typer.echo(str(out))


@app.command()
def train(
    stage: Annotated[str, typer.Argument(help="clip, prior, decoder or upsampler.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (TOML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: checkpoints, exported stage files, log.")],
    resume: Annotated[bool, typer.Option(help="Continue from OUT/state.safetensors if present.")] = True,
):
    """Train one stage; also runs under `torchrun --nproc_per_node N` (DDP)."""
    with friendly_errors():
        from unclip_cli.train import loop

        def log(rec: dict) -> None:
            typer.echo(" ".join(f"{k}={v}" for k, v in rec.items()), err=True)

        loop.run(stage, config, out, resume=resume, log=log)


@app.command("eval")
@with_options("eval", run=False)
def eval_(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default: the bundled model).")] = None,
    per_prompt: Annotated[int, typer.Option(help="Images per held-out prompt.")] = 32,
    ablation: Annotated[bool, typer.Option(help="Also (a) caption only and (b) CLIP text embedding in place of the prior.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of each prompt's first image.")] = 0,
    size: Annotated[Optional[int], typer.Option(help="Judge images at this size (default: the decoder's own, fastest).")] = None,
    device: Device = "auto",
    dtype: RUN_OPTIONS["dtype"][0] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Also write the results as JSON here.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="Judge these prompts instead (shapes-world captions, one a line, # comments).")] = None,
    **sampling,
):
    """Measure how well images match captions on the shapes world's held-out prompts."""
    with friendly_errors(interruptible=True):
        from unclip_cli.cli import evaluate

        evaluate.run(model, per_prompt, ablation, seed, size, sampling, device, out, prompts, dtype)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (other than 127.0.0.1: reachable by others; "
                                           "a warning says so).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    model: RUN_OPTIONS["model"][0] = None,
    outdir: RUN_OPTIONS["outdir"][0] = Path("outputs"),
    device: Device = "auto",
    dtype: RUN_OPTIONS["dtype"][0] = "auto",
):
    """A web page for generate, edit (paint the area), vary and mix, and its JSON API (needs the serve extra)."""
    with friendly_errors(interruptible=True):
        from unclip_cli.cli import serve as web

        web.main(web.Config(host=host, port=port, model=model, outdir=outdir, device=device, dtype=dtype))


def main() -> None:
    # Before torch is imported: back tensors of 2 MB and more with transparent huge pages (read once by
    # torch's CPU allocator). Measured on Karlo's fp32 decoder: 12-17% faster calls, 35-40% faster loads.
    # A user's own setting wins.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    app()


if __name__ == "__main__":
    sys.exit(main())

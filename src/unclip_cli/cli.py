"""The `unclip` command line: a thin Typer shell over the pipeline.

Commands parse options, call the pipeline and write files. torch is imported only inside the
commands that need it, so `unclip --help` answers at once.
"""

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from unclip_cli.errors import UnclipError

app = typer.Typer(
    help="DALL-E 2 style image generation (unCLIP) on your own machine: generate, vary, edit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and download models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@contextlib.contextmanager
def friendly_errors():
    """Turn UnclipError into `error: ...` on stderr and exit status 1, with no traceback."""
    try:
        yield
    except UnclipError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


# Options shared by the verbs.
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name from weights.toml (default: the bundled model).")]
NumImages = Annotated[int, typer.Option("--num-images", "-n", help="How many images; image i uses seed+i.")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first image (random if not given; always recorded).")]
PriorSteps = Annotated[Optional[int], typer.Option(help="Prior sampling steps (Karlo: 25).")]
DecoderSteps = Annotated[Optional[int], typer.Option(help="Decoder sampling steps (Karlo: 25).")]
SrSteps = Annotated[Optional[int], typer.Option(help="Upsampler sampling steps (Karlo: 7).")]
PriorGuidance = Annotated[Optional[float], typer.Option(help="Prior classifier-free guidance scale (Karlo: 4.0).")]
DecoderGuidance = Annotated[Optional[float], typer.Option(help="Decoder classifier-free guidance scale (Karlo: 8.0).")]
Sampler = Annotated[str, typer.Option(help="ddpm (ancestral, as Karlo) or ddim.")]
Size = Annotated[Optional[int], typer.Option(help="Output size: the decoder's own (64 for Karlo, 32 for shapes), 256 or 1024; default: the model's default size, else the largest it reaches.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")]
Outdir = Annotated[Path, typer.Option("--outdir", "-o", help="Folder for the PNGs (never overwrites).")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON object (paths, seeds, timings, hashes) on stdout.")]
NoMeta = Annotated[bool, typer.Option("--no-metadata", help="Do not embed the parameters in the PNGs.")]


def _args(**kw):
    from unclip_cli.runner import RunArgs

    kw["metadata"] = not kw.pop("no_metadata")
    return RunArgs(**kw)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    model: Model = None, num_images: NumImages = 1, seed: Seed = None,
    prior_steps: PriorSteps = None, decoder_steps: DecoderSteps = None, sr_steps: SrSteps = None,
    prior_guidance: PriorGuidance = None, decoder_guidance: DecoderGuidance = None,
    sampler: Sampler = "ddpm", size: Size = None, device: Device = "auto", dtype: Dtype = "auto",
    outdir: Outdir = Path("outputs"), json: Json = False, no_metadata: NoMeta = False,
):
    """Text to image: CLIP text -> prior -> decoder -> upsamplers -> PNG."""
    args = _args(**{k: v for k, v in locals().items() if k != "prompt"})
    with friendly_errors():
        if not prompt.strip():
            raise UnclipError("the prompt is empty")
        from unclip_cli import commands

        commands.generate(prompt, args)


@app.command()
def vary(
    image: Annotated[Path, typer.Argument(help="The image to make variations of.")],
    model: Model = None, num_images: NumImages = 1, seed: Seed = None,
    decoder_steps: DecoderSteps = None, sr_steps: SrSteps = None, decoder_guidance: DecoderGuidance = None,
    sampler: Sampler = "ddpm", size: Size = None, device: Device = "auto", dtype: Dtype = "auto",
    outdir: Outdir = Path("outputs"), json: Json = False, no_metadata: NoMeta = False,
):
    """Variations of an image: its CLIP image embedding -> decoder -> upsamplers (no prior)."""
    args = _args(**{k: v for k, v in locals().items() if k != "image"})
    with friendly_errors():
        from unclip_cli import commands

        commands.vary(image, args)


@app.command()
def edit(
    image: Annotated[Path, typer.Argument(help="The image to edit.")],
    prompt: Annotated[str, typer.Argument(help="What the masked area should show.")],
    mask: Annotated[Optional[Path], typer.Option(help="Mask image, same size: white = edit, black = keep. "
                                                      "Without it, the image's transparent pixels are edited.")] = None,
    model: Model = None, num_images: NumImages = 1, seed: Seed = None,
    prior_steps: PriorSteps = None, decoder_steps: DecoderSteps = None, sr_steps: SrSteps = None,
    prior_guidance: PriorGuidance = None, decoder_guidance: DecoderGuidance = None,
    sampler: Sampler = "ddpm", size: Size = None, device: Device = "auto", dtype: Dtype = "auto",
    outdir: Outdir = Path("outputs"), json: Json = False, no_metadata: NoMeta = False,
):
    """Regenerate only the masked area of an image; every other pixel is kept exactly."""
    args = _args(**{k: v for k, v in locals().items() if k not in ("image", "prompt", "mask")})
    with friendly_errors():
        if not prompt.strip():
            raise UnclipError("the prompt is empty")
        from unclip_cli import commands

        commands.edit(image, mask, prompt, args)


@app.command()
def info(image: Annotated[Path, typer.Argument(help="A PNG written by unclip.")],
         json: Json = False):
    """Print the parameters stored in an image."""
    with friendly_errors():
        from unclip_cli import images

        params, text = images.read_params(image)
        if params is None and text is None:
            raise UnclipError(f"{image} carries no unclip or A1111 parameters")
        if json:
            import json as _json

            typer.echo(_json.dumps(params if params is not None else {"parameters": text}, indent=2, sort_keys=True))
        else:
            typer.echo(text if text is not None else str(params))


@models_app.command("list")
def models_list(json: Json = False):
    """The configured models, their stages, and which files are on disk."""
    with friendly_errors():
        from unclip_cli import commands

        commands.models_list(json)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Model name from weights.toml.")]):
    """Download every file of a model ahead of time (resumable)."""
    with friendly_errors():
        from unclip_cli import commands

        commands.models_pull(name)


data_app = typer.Typer(help="Make training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    count: Annotated[int, typer.Option(help="Number of images.")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist or be empty).")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same dataset.")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
):
    """Render the procedural shapes world as an image+caption folder (img2dataset layout)."""
    with friendly_errors():
        from unclip_cli import shapes

        if count < 1:
            raise UnclipError(f"--count must be at least 1, got {count}")
        try:
            shapes.write_dataset(out, count, seed, size=size)
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
        from unclip_cli import train as training

        def log(rec: dict) -> None:
            typer.echo(" ".join(f"{k}={v}" for k, v in rec.items()), err=True)

        training.run(stage, config, out, resume=resume, log=log)


@app.command("eval")
def eval_(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default: the bundled model).")] = None,
    per_prompt: Annotated[int, typer.Option(help="Images per held-out prompt.")] = 32,
    ablation: Annotated[bool, typer.Option(help="Also (a) caption only and (b) CLIP text embedding in place of the prior.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of each prompt's first image.")] = 0,
    size: Annotated[Optional[int], typer.Option(help="Judge images at this size (default: the decoder's own, fastest).")] = None, prior_steps: PriorSteps = None, decoder_steps: DecoderSteps = None, sr_steps: SrSteps = None,
    prior_guidance: PriorGuidance = None, decoder_guidance: DecoderGuidance = None,
    device: Device = "auto", out: Annotated[Optional[Path], typer.Option(help="Also write the results as JSON here.")] = None,
):
    """Measure how well images match captions on the shapes world's held-out prompts."""
    with friendly_errors():
        from unclip_cli import commands

        commands.evaluate(model, per_prompt, ablation, seed, size, dict(
            prior_steps=prior_steps, decoder_steps=decoder_steps, sr_steps=sr_steps,
            prior_guidance=prior_guidance, decoder_guidance=decoder_guidance), device, out)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

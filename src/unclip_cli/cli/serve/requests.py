"""A JSON job request, checked and turned into a call of the verb's own code (`cli/run.py`,
`cli/toolkit.py`) before it is queued: unknown fields, wrong types, bad values and missing or unreadable
input images are refused at once with a 4xx and one line, as the CLI refuses them before any sampling.

Fields are the CLI's options with `_` for `-` (`num_images`, `decoder_steps`, `mask_blur`, ...); images
are referred to by an upload id or an output file name, never by a path.
"""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unclip_cli import options
from unclip_cli.cli import run, toolkit
from unclip_cli.cli.serve.common import Config, HttpError
from unclip_cli.cli.serve.files import Folder
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images
from unclip_cli.weights import registry

MAX_IMAGES = 16  # per job
MAX_TEXT = 2000  # characters of a prompt (CLIP reads 77 tokens; the rest is dropped with a warning)
REQUIRED = object()
COMMON = {"num_images": ((int,), 1), "seed": ((int, None), None), "size": ((int, None), None),
          "batch_size": ((int, None), None), "metadata": ((bool,), True)}
VERBS = {
    "generate": {"prompt": ((str,), REQUIRED), "negative_prompt": ((str,), "")},
    "edit": {"image": ((str,), REQUIRED), "mask": ((str, None), None), "prompt": ((str,), REQUIRED),
             "negative_prompt": ((str,), ""), "invert_mask": ((bool,), False), "mask_dilate": ((int,), 0),
             "mask_blur": ((int,), 0)},
    "vary": {"image": ((str,), REQUIRED), "strength": ((float,), 1.0), "prompt": ((str,), ""),
             "prompt_mix": ((float,), 0.0), "toward": ((str, None), None), "from": ((str,), ""), "amount": ((float,), 0.5)},
    "mix": {"a": ((dict,), REQUIRED), "b": ((dict,), REQUIRED), "ratio": ((float, None), None),
            "frames": ((int, None), None)},
}


def option_verbs(o: options.OptionInfo, spec=None) -> list[str]:
    """The verbs that take a sampling option (the page reads this from /api/info rather than repeating the rule);
    with a model's spec, none for image candidates when its CLIP has no image tower to rank them (Karlo), none for the
    prior's options when it has no prior."""
    if spec is not None and o.stage == "rerank" and not spec.has_image_encoder:
        return []
    if spec is not None and o.stage == "prior" and "prior" not in spec.stages:
        return []  # an image-variations model: nothing runs a prior
    return [v for v in VERBS if options.offered(o, v)]


def sampling_fields(verb: str) -> list[options.OptionInfo]:
    """The sampling options a verb takes, as the CLI offers them (options.VERB_STAGES)."""
    return [o for o in options.SAMPLING if options.offered(o, verb)]


def api_words(message: str) -> str:
    """A CLI error message in the API's words: `--decoder-steps` -> `decoder_steps`."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), message)


@dataclass
class Call:
    """A checked job: `go(args)` runs the verb (writing PNGs into args.outdir) and returns their paths."""

    verb: str
    summary: dict  # what the queue shows: the prompt or the inputs
    args: run.RunArgs
    go: Callable[[run.RunArgs], list[Path]]


def build(verb: str, body, cfg: Config, folder: Folder, sizes: list[int]) -> Call:
    """The call a request asks for, checked as far as can be without sampling; `sizes`: the model's."""
    if verb not in VERBS:
        raise HttpError(f"no such verb: {verb[:40]!r} (generate, edit, vary or mix)", 404)
    if not isinstance(body, dict):
        raise HttpError("the request body must be a JSON object")
    v = _fields(verb, body)
    args = run.RunArgs(model=cfg.model, num_images=v["num_images"], seed=v["seed"], size=v["size"],
                       device=cfg.device, dtype=cfg.dtype, outdir=cfg.outdir, metadata=v["metadata"],
                       sampling={o.name: v[o.name] for o in sampling_fields(verb)}, batch_size=v["batch_size"])
    if args.size is not None and args.size not in sizes:
        raise HttpError(f"size must be {' or '.join(map(str, sizes))} for model '{cfg.model or 'default'}', got {args.size}")
    if args.num_images > MAX_IMAGES:
        raise HttpError(f"num_images must be at most {MAX_IMAGES} per job, got {args.num_images}")
    try:
        run.validate(args)
        go, summary, needs = BUILDERS[verb](v, folder)
        run.check_model(registry.resolve(cfg.model), args.sampling, **needs)  # as the verb will, before queueing
    except HttpError:
        raise
    except UnclipError as e:
        raise HttpError(api_words(str(e))) from None
    return Call(verb, {**summary, "num_images": args.num_images}, args, go)


def _fields(verb: str, body: dict) -> dict:
    """The body's values, type-checked, with the defaults filled in."""
    spec = {**COMMON, **VERBS[verb], **{o.name: ((o.type, None), None) for o in sampling_fields(verb)}}
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise HttpError(f"{verb}: unknown field {unknown[0][:40]!r} (known: {', '.join(sorted(spec))})")
    out = {}
    for name, (types, default) in spec.items():
        if name not in body:
            if default is REQUIRED:
                raise HttpError(f"{verb}: '{name}' is required")
            out[name] = default
        else:
            out[name] = _checked(verb, name, body[name], types)
    return out


def _checked(verb: str, name: str, value, types: tuple):
    if value is None and None in types:
        return None
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not any(t is not None and isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in types):
        words = {int: "an integer", float: "a number", str: "text", bool: "true or false", dict: "an object"}
        want = " or ".join(words[t] if t is not None else "null" for t in types)
        raise HttpError(f"{verb}: '{name}' must be {want}, got {json.dumps(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HttpError(f"{verb}: '{name}' must be a finite number")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise HttpError(f"{verb}: '{name}' is {len(value)} characters, over the {MAX_TEXT} limit")
    return value


def _prompt(v: dict) -> str:
    if not v["prompt"].strip():
        raise HttpError("the prompt is empty")
    return v["prompt"]


def _generate(v: dict, folder: Folder):
    prompt, negative = _prompt(v), v["negative_prompt"]
    return (lambda args: run.generate(prompt, args, negative=negative)), {"prompt": prompt}, run.GENERATE_NEEDS


def _edit(v: dict, folder: Folder):
    prompt, negative = _prompt(v), v["negative_prompt"]
    image = folder.input(v["image"])
    mask = folder.input(v["mask"]) if v["mask"] is not None else None
    region = run.EditArgs(invert=v["invert_mask"], dilate=v["mask_dilate"], blur=v["mask_blur"])
    region.check()
    picture = images.load_image(image)
    images.edit_mask(picture, images.load_image(mask, "mask") if mask else None, v["mask"], invert=region.invert)
    go = lambda args: run.edit(image, mask, prompt, args, region, negative=negative)  # noqa: E731
    return go, {"prompt": prompt, "image": v["image"], "mask": v["mask"] or "alpha"}, run.EDIT_NEEDS


def _vary(v: dict, folder: Folder):
    steer = toolkit.steer_of(v["strength"], v["prompt"], v["prompt_mix"], v["toward"], v["from"], v["amount"])
    image = folder.input(v["image"])
    images.load_image(image)
    go = lambda args: run.vary(image, args, steer)  # noqa: E731
    return go, {"prompt": steer.prompt, "image": v["image"]}, run.vary_needs(steer)


def _side(value: dict, name: str, folder: Folder) -> tuple[str, str]:
    """A mix side, {"image": ref} or {"text": words}, as the CLI's `image:PATH` / `text:WORDS`, and as shown."""
    if len(value) != 1 or not set(value) <= {"image", "text"} or not isinstance(next(iter(value.values())), str):
        raise HttpError(f"mix: '{name}' must be {{\"image\": ID}} or {{\"text\": WORDS}}")
    if "image" in value:
        return f"image:{folder.input(value['image'])}", value["image"]
    _checked("mix", name, value["text"], (str,))
    return f"text:{value['text']}", value["text"]


def _mix(v: dict, folder: Folder):
    (a, shown_a), (b, shown_b) = _side(v["a"], "a", folder), _side(v["b"], "b", folder)
    if v["frames"] is not None and not 2 <= v["frames"] <= MAX_IMAGES:
        raise HttpError(f"frames must be between 2 and {MAX_IMAGES} per job, got {v['frames']}")
    ratios = toolkit.mix_ratios(a, b, v["ratio"], v["frames"])
    if v["num_images"] * len(ratios) > MAX_IMAGES:
        raise HttpError(f"num_images x frames must be at most {MAX_IMAGES} images per job, "
                        f"got {v['num_images']} x {len(ratios)}")
    sa, sb = toolkit.parse_side(a, "a")[0], toolkit.parse_side(b, "b")[0]
    if toolkit.same_sides(sa, sb):
        raise HttpError(f"a and b are the same {sa[0]}: every frame of the mix would be the same image")
    go = lambda args: toolkit.mix(a, b, v["ratio"], v["frames"], args)  # noqa: E731
    return go, {"a": shown_a, "b": shown_b}, run.mix_needs((sa[0], sb[0]))


# verb -> builder(fields, folder) -> (go, summary, what the verb needs of the model: run.check_model's keywords)
BUILDERS = {"generate": _generate, "edit": _edit, "vary": _vary, "mix": _mix}

"""Sampling options, each defined once: name, type, default, help and bounds (no torch here; imports nothing from unclip_cli).

`Options` is what the cascade reads. Its fields with `option(...)` metadata are the sampling
options: the CLI makes a `--flag` of each for every verb that uses the stage (`cli/app.py`),
`unclip eval` takes the same, and a model's `[defaults]` in weights.toml may set them (unknown
keys there are an error). Adding one means a field here and the code that reads it.
"""

import math
from dataclasses import dataclass, field, fields, replace


def option(default, help: str, *, stage: str, low=None, high=None, choices: tuple = ()):
    """A sampling option: `stage` says which verbs offer it (VERB_STAGES)."""
    meta = {"help": help, "stage": stage, "low": low, "high": high, "choices": choices}
    return field(default=default, metadata={"option": meta})


@dataclass(frozen=True)
class Options:
    prior_steps: int = option(25, "Prior sampling steps.", stage="prior", low=1, high=1000)
    decoder_steps: int = option(25, "Decoder sampling steps.", stage="decoder", low=1, high=1000)
    sr_steps: int = option(7, "Upsampler sampling steps.", stage="upsampler", low=1, high=1000)
    prior_candidates: int = option(1, "Prior: sample N image embeddings per image and keep the one closest to "
                                   "the prompt's CLIP text embedding (the DALL-E 2 paper samples 2; N times the "
                                   "prior's work).", stage="prior", low=1, high=64)
    image_candidates: int = option(1, "Draw N images per image (prior and decoder, at the decoder's size) and keep "
                                   "the one whose CLIP image embedding is closest to the prompt's text embedding "
                                   "(DALL-E's reranking; N times the prior's and decoder's work, the upsamplers run "
                                   "once; needs a CLIP image encoder).", stage="rerank", low=1, high=16)
    prior_guidance: float = option(4.0, "Prior classifier-free guidance scale (1 = none).", stage="prior", low=0.0)
    decoder_guidance: float = option(8.0, "Decoder classifier-free guidance scale (1 = none).", stage="decoder", low=0.0)
    negative_rescale: float = option(1.0, "With --negative-prompt: guidance rescale of the prior and decoder "
                                     "(0 = Kandinsky 2.2's plain guidance away from the negative; 1 = the guided "
                                     "prediction rescaled to the conditional one's spread).", stage="negative",
                                     low=0.0, high=1.0)
    sampler: str = option("ddpm", "ddpm (ancestral, as Karlo), ddim, dpmpp_2m (DPM-Solver++(2M), deterministic) "
                          "or dpmpp_2m_sde (its stochastic form).",
                          stage="all", choices=("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"))
    spacing: str = option("uniform", "Timestep spacing: uniform (even in t, as Karlo) or logsnr (even in log-SNR: "
                          "fewer steps for the dpmpp samplers).", stage="all", choices=("uniform", "logsnr"))
    resample: int = option(1, "Edits: RePaint resampling, each block of --jump steps sampled R times (R times the "
                           "network evaluations; 1 = none).", stage="edit", low=1, high=100)
    jump: int = option(5, "Edits: RePaint jump length in steps (with --resample > 1).", stage="edit", low=1, high=1000)
    size: int = 256  # output size, resolved per model by pipeline.stages.open_model (not a sampling option)


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: type
    default: object
    help: str
    stage: str
    low: object
    high: object
    choices: tuple

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SAMPLING = tuple(OptionInfo(f.name, f.type, f.default, **f.metadata["option"])
                 for f in fields(Options) if "option" in f.metadata)
BY_NAME = {o.name: o for o in SAMPLING}
# The option stages each verb offers, for the CLI's commands and serve's requests alike ("all" goes to every verb):
# only generate and edit take a negative prompt, only edit resamples (RePaint), only generate reranks its draws.
VERB_STAGES = {"generate": ("prior", "decoder", "upsampler", "negative", "rerank"),
               "edit": ("prior", "decoder", "upsampler", "edit", "negative"),
               "vary": ("prior", "decoder", "upsampler"), "mix": ("prior", "decoder", "upsampler"),
               "eval": ("prior", "decoder", "upsampler", "rerank")}


def offered(o: OptionInfo, verb: str) -> bool:
    """Whether `verb` offers option `o`."""
    return o.stage == "all" or o.stage in VERB_STAGES[verb]
MODEL_DEFAULT_KEYS = (*BY_NAME, "size")  # what a model's [defaults] may set


def check(name: str, value) -> str | None:
    """Why `value` is not allowed for option `name` (None if it is)."""
    o = BY_NAME[name]
    if o.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, o.type) or isinstance(value, bool):
        return f"{o.flag} must be {'a number' if o.type is float else 'an integer' if o.type is int else 'text'}, got {value!r}"
    if o.type is float and not math.isfinite(value):
        return f"{o.flag} must be a finite number, got {value}"
    if o.choices and value not in o.choices:
        return f"{o.flag} must be {' or '.join(o.choices)}, got {value!r}"
    if o.low is not None and o.high is not None and not o.low <= value <= o.high:
        return f"{o.flag} must be between {o.low} and {o.high}, got {value}"
    if o.low is not None and value < o.low:
        return f"{o.flag} must not be negative, got {value}" if o.low == 0 else f"{o.flag} must be at least {o.low}, got {value}"
    return None


def first_problem(values: dict) -> str | None:
    """The first reason one of these option values (None = not given) is not allowed."""
    return next((p for k, v in values.items() if v is not None and (p := check(k, v))), None)


def resolve(model_defaults: dict, given: dict, size: int) -> Options:
    """The options of a run: what was given (None = not given), else the model's defaults, else ours."""
    known = {k: v for k, v in model_defaults.items() if k in BY_NAME}
    chosen = {k: v for k, v in given.items() if k in BY_NAME and v is not None}
    return replace(Options(size=size), **{**known, **chosen})

"""Property-based tests (hypothesis): option checking and resolving, the command line's number parsing, and the
image and mask loaders. Whatever comes in, the answer is a value or an UnclipError (one `error:` line), never a
traceback. Bounded: every test has a fixed number of examples, so the file runs in well under 30 s.
"""

import importlib
import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from PIL import Image
from typer.testing import CliRunner

from unclip_cli import options
from unclip_cli.cli import run
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images

app_module = importlib.import_module("unclip_cli.cli.app")  # the module (the package exports the Typer app as `app`)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.sampled_from(["ddpm", "ddim", "dpmpp_2m", "euler", "DDPM"]))


def allowed(name: str, value) -> bool:
    """The rule options.check implements, written out independently."""
    o = options.BY_NAME[name]
    if isinstance(value, bool):
        return False
    if o.type is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
    elif not isinstance(value, o.type):
        return False
    if o.choices and value not in o.choices:
        return False
    return (o.low is None or value >= o.low) and (o.high is None or value <= o.high)


# --------------------------------------------------------------------------- options.py


@FAST
@given(name=st.sampled_from(sorted(options.BY_NAME)), value=values.filter(lambda v: v is not None))
def test_check_agrees_with_the_rule(name, value):
    problem = options.check(name, value)
    assert (problem is None) == allowed(name, value)
    if problem is not None:
        assert options.BY_NAME[name].flag in problem and "\n" not in problem


@FAST
@given(st.dictionaries(st.sampled_from(sorted(options.BY_NAME)), values, max_size=6))
def test_first_problem_is_the_first_failing_check(given_values):
    problems = [options.check(k, v) for k, v in given_values.items() if v is not None]
    assert options.first_problem(given_values) == next((p for p in problems if p), None)


def valid_values(name: str):
    o = options.BY_NAME[name]
    if o.choices:
        return st.sampled_from(o.choices)
    if o.type is int:
        return st.integers(min_value=o.low, max_value=o.high)
    return st.floats(min_value=o.low, max_value=1e6 if o.high is None else o.high, allow_nan=False)


settings_dicts = st.fixed_dictionaries({}, optional={n: valid_values(n) for n in options.BY_NAME})


@FAST
@given(model=settings_dicts, chosen=settings_dicts, unset=st.sets(st.sampled_from(sorted(options.BY_NAME))),
       size=st.sampled_from([32, 64, 256, 1024]))
def test_resolve_given_beats_model_beats_ours(model, chosen, unset, size):
    given_values = {**chosen, **{k: None for k in unset}}
    opts = options.resolve(model, given_values, size)
    assert opts.size == size
    for name, info in options.BY_NAME.items():
        expected = given_values.get(name)
        expected = expected if expected is not None else model.get(name, info.default)
        assert getattr(opts, name) == expected
        assert options.check(name, getattr(opts, name)) is None


# --------------------------------------------------------------------------- the command line's numbers


def parse(monkeypatch, *args: str):
    """Run `unclip generate` up to the checks of run.validate (no model loads); return (result, RunArgs or None)."""
    seen = {}

    def generate(prompt, run_args, negative=""):
        seen["args"] = run_args
        run.validate(run_args)

    monkeypatch.setattr(app_module, "_run", lambda: SimpleNamespace(RunArgs=run.RunArgs, generate=generate))
    r = CliRunner().invoke(app_module.app, ["generate", "a cat", *args], env={"COLUMNS": "200"})
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    return r, seen.get("args")


number_text = st.one_of(st.integers(min_value=-10**25, max_value=10**25).map(str), st.floats().map(repr),
                        st.text(alphabet="0123456789-+.eE_ xn", max_size=8))


def whole_number(text: str) -> int | None:
    """The integer a text means: "12", or a float with no fraction such as "12.0" (typer takes those too)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


BOUNDS = {"prior_steps": (1, 1000), "decoder_steps": (1, 1000), "sr_steps": (1, 1000),
          "num_images": (1, run.MAX_IMAGES), "seed": (0, 2**63 - 2)}


@SLOW
@given(flag=st.sampled_from(["--prior-steps", "--decoder-steps", "--sr-steps", "--num-images", "--seed"]),
       text=number_text)
def test_integer_options_from_the_command_line(monkeypatch, flag, text):
    r, args = parse(monkeypatch, flag, text)
    if r.exit_code == 2:  # typer's usage error: the text is not an integer it accepts
        assert "Invalid value" in r.output
        return
    name = flag.removeprefix("--").replace("-", "_")
    got = args.sampling.get(name, getattr(args, name, None))
    assert isinstance(got, int)
    if whole_number(text) is not None:
        assert got == whole_number(text)  # read as written
    # else: a form only typer's lax (pydantic) parsing takes, e.g. "0-5" read as -5: still checked below
    low, high = BOUNDS[name]
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert r.exit_code in (0, 1) and (r.exit_code == 0) == (errors == []) and len(errors) <= 1
    assert (r.exit_code == 0) == (low <= got <= high)


@SLOW
@given(flag=st.sampled_from(["--prior-guidance", "--decoder-guidance"]), text=number_text)
def test_float_options_from_the_command_line(monkeypatch, flag, text):
    r, args = parse(monkeypatch, flag, text)
    if r.exit_code == 2:
        assert "Invalid value" in r.output
        return
    value = args.sampling[flag.removeprefix("--").replace("-", "_")]
    assert isinstance(value, float)
    try:
        written = float(text)
    except ValueError:  # a form only typer's lax (pydantic) parsing takes, e.g. "0_." read as 0.0
        written = None
    assert written is None or value == written or (math.isnan(value) and math.isnan(written))
    assert (r.exit_code == 0) == (math.isfinite(value) and value >= 0)


# --------------------------------------------------------------------------- image and mask loaders


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]
FORMATS = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}, "JPEG": {"L", "RGB", "CMYK", "YCbCr"},
           "GIF": {"L", "P"}, "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"},
           "BMP": {"1", "L", "P", "RGB", "RGBA"}, "WEBP": {"RGB", "RGBA"}}


@st.composite
def image_files(draw) -> bytes:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(sorted(f for f, modes in FORMATS.items() if mode in modes)))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    im = im.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        rng.integers(0, 65536, (h, w)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def damaged(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none", "truncate", "flip", "splice"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if how == "splice":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(max_size=64)) + data[i:]
    return data


def load(scratch: Path, data: bytes, name: str = "x.img"):
    path = scratch / name
    path.write_bytes(data)
    try:
        return images.load_image(path)
    except UnclipError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return None


@SLOW
@given(data=image_files())
def test_any_valid_image_loads_as_8_bit_at_its_size(scratch, data):
    im = load(scratch, data)
    assert im is not None
    assert im.mode in ("RGB", "RGBA", "L", "LA")
    assert im.size == Image.open(io.BytesIO(data)).size
    assert images.to_tensor(im, 32).shape == (3, 32, 32)


@SLOW
@given(data=image_files().flatmap(damaged))
def test_damaged_image_loads_or_is_one_error(scratch, data):
    im = load(scratch, data)
    assert im is None or im.mode in ("RGB", "RGBA", "L", "LA")


@SLOW
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                      st.binary(max_size=200).map(lambda b: b"\xff\xd8\xff" + b),
                      st.binary(max_size=200).map(lambda b: b"GIF89a" + b)))
def test_random_bytes_never_give_a_traceback(scratch, data):
    load(scratch, data)


@SLOW
@given(image=image_files(), mask=image_files().flatmap(damaged), alpha_only=st.booleans())
def test_mask_loader_gives_a_boolean_map_or_one_error(scratch, image, mask, alpha_only):
    im = load(scratch, image, "image.img")
    m = None if alpha_only else load(scratch, mask, "mask.img")
    assume(alpha_only or m is not None)
    try:
        area = images.edit_mask(im, m, "mask.img")
    except UnclipError as e:
        assert "\n" not in str(e)
        return
    assert area.dtype == bool and area.shape == (im.size[1], im.size[0]) and area.any()

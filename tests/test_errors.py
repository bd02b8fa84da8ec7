"""Bad input: one `error: ...` line on stderr, no traceback, a nonzero exit status, nothing written."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unclip_cli.cli.app import app

FAST = ["--prior-steps", "1", "--decoder-steps", "1", "--sr-steps", "1", "--size", "64"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_error(r, *needles: str, outdir: Path | None = None) -> str:
    """The run failed with exactly one non-empty stderr line `error: ...` naming every needle."""
    assert r.exit_code != 0, r.stdout
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert r.stdout.strip() == ""
    if outdir is not None:
        assert not outdir.exists() or not any(outdir.iterdir()), sorted(outdir.iterdir())
    return line


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_sha(home: Path, stage: str, value: str) -> None:
    toml = home / "weights.toml"
    text, n = re.subn(rf'^({stage} = .*sha256 = ")[0-9a-f]+(")', rf"\g<1>{value}\g<2>", toml.read_text(), flags=re.M)
    assert n == 1
    toml.write_text(text)


def picture(path: Path, size: int = 64, mode: str = "RGB", alpha: int = 255) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    arr[..., 3] = alpha
    Image.fromarray(arr if mode == "RGBA" else arr[..., :3], mode).save(path)
    return path


def mask(path: Path, size: int = 64, value: int = 255) -> Path:
    m = np.zeros((size, size), np.uint8)
    m[8:24, 8:24] = value
    Image.fromarray(m, "L").save(path)
    return path


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


# --------------------------------------------------------------------------- input images and masks


@pytest.mark.parametrize("verb", ["vary", "edit"])
def test_missing_image(home, tmp_path, out, verb):
    missing = tmp_path / "nope.png"
    args = ["vary", missing] if verb == "vary" else ["edit", missing, "a cat", "--mask", mask(tmp_path / "m.png")]
    assert_error(invoke(*args, *FAST[-2:], "-o", out), str(missing), "does not exist", outdir=out)


@pytest.mark.parametrize("verb", ["vary", "edit"])
def test_unreadable_image(home, tmp_path, out, verb):
    bad = tmp_path / "x.png"
    bad.write_text("this is not a picture\n")
    args = ["vary", bad] if verb == "vary" else ["edit", bad, "a cat", "--mask", mask(tmp_path / "m.png")]
    assert_error(invoke(*args, *FAST[-2:], "-o", out), str(bad), "not a readable image", outdir=out)


def test_unreadable_mask(home, tmp_path, out):
    bad = tmp_path / "m.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = invoke("edit", picture(tmp_path / "a.png"), "a cat", "--mask", bad, "-o", out)
    assert_error(r, "mask", str(bad), "not a readable image", outdir=out)


def test_mask_of_another_size(home, tmp_path, out):
    r = invoke("edit", picture(tmp_path / "a.png", 64), "a cat", "--mask", mask(tmp_path / "m.png", 32), "-o", out)
    assert_error(r, "mask", "32x32", "64x64", outdir=out)


def test_empty_mask(home, tmp_path, out):
    r = invoke("edit", picture(tmp_path / "a.png"), "a cat", "--mask", mask(tmp_path / "m.png", value=0), "-o", out)
    assert_error(r, "mask", "nothing to edit", outdir=out)


def test_rgba_image_without_transparent_pixels(home, tmp_path, out):
    r = invoke("edit", picture(tmp_path / "a.png", mode="RGBA", alpha=255), "a cat", "-o", out)
    assert_error(r, "alpha", "nothing to edit", outdir=out)


def test_rgb_image_without_mask(home, tmp_path, out):
    r = invoke("edit", picture(tmp_path / "a.png"), "a cat", "-o", out)
    assert_error(r, "no --mask", "alpha channel", outdir=out)


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_generate(home, out, prompt):
    assert_error(invoke("generate", prompt, "-o", out), "prompt is empty", outdir=out)


def test_empty_prompt_edit(home, tmp_path, out):
    r = invoke("edit", picture(tmp_path / "a.png"), " ", "--mask", mask(tmp_path / "m.png"), "-o", out)
    assert_error(r, "prompt is empty", outdir=out)


def test_long_prompt_is_truncated_with_a_warning(home, tmp_path, out):
    prompt = " ".join(["a small red circle next to a big blue square"] * 12) + " zanzibarquokka"
    r = invoke("generate", prompt, *FAST, "--seed", 1, "-o", out)
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr  # one warning line, not wrapped at the console width
    assert lines[0].startswith("warning:") and "77 tokens" in lines[0]
    assert lines[0].endswith('big blue square zanzibarquokka"')  # the dropped tail is shown
    assert "Traceback" not in r.stderr
    assert len(list(out.glob("*.png"))) == 1


def test_prompt_within_limit_gives_no_warning(home, out):
    r = invoke("generate", "a small red circle", *FAST, "--seed", 1, "-o", out)
    assert r.exit_code == 0 and r.stderr.strip() == ""


# --------------------------------------------------------------------------- models and checkpoints


def test_unknown_model(home, out):
    assert_error(invoke("generate", "a cat", "--model", "nope", "-o", out), "unknown model 'nope'", "tiny", outdir=out)


def test_missing_checkpoint(home, out):
    (home / "decoder.safetensors").unlink()
    line = assert_error(invoke("generate", "a cat", *FAST, "-o", out), "decoder", "does not exist", outdir=out)
    assert "tiny" in line


def test_garbage_checkpoint_fails_its_sha256(home, out):
    path = home / "prior.safetensors"
    path.write_bytes(b"\x00garbage" * 1000)
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'prior'", "sha256", sha(path), outdir=out)


def test_garbage_checkpoint_without_matching_sha(home, out):
    """Even when weights.toml lists its (garbage) hash, the file is refused as not safetensors."""
    path = home / "prior.safetensors"
    path.write_bytes(b"\x00garbage" * 1000)
    set_sha(home, "prior", sha(path))
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'prior'", "not a valid safetensors", outdir=out)


def test_truncated_checkpoint(home, out):
    path = home / "decoder.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    set_sha(home, "decoder", sha(path))
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'decoder'", str(path), outdir=out)


def test_truncated_checkpoint_fails_its_sha256(home, out):
    path = home / "decoder.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'decoder'", "sha256", outdir=out)


def test_one_changed_byte_fails_the_sha256(home, out):
    """A still valid safetensors file whose tensor data differs in one byte."""
    path = home / "text_proj.safetensors"
    data = bytearray(path.read_bytes())
    expected = sha(path)
    header = int.from_bytes(data[:8], "little")
    assert len(data) - 1 > 8 + header  # the last byte lies in the tensor data
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    line = assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'text_proj'", expected, sha(path),
                        outdir=out)
    assert "corrupt" in line


def test_sha256_in_weights_toml_differs(home, out):
    actual = sha(home / "clip.safetensors")
    set_sha(home, "clip", "0" * 64)
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "stage 'clip'", "0" * 64, actual, outdir=out)


def test_vary_checks_checkpoints_too(home, tmp_path, out):
    set_sha(home, "decoder", "f" * 64)
    assert_error(invoke("vary", picture(tmp_path / "a.png"), "--size", 64, "-o", out), "stage 'decoder'", "f" * 64,
                 outdir=out)


# --------------------------------------------------------------------------- options and environment


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(home, out):
    assert_error(invoke("generate", "a cat", "--device", "cuda", "-o", out), "--device cuda", "CUDA", outdir=out)


def test_output_folder_under_a_file(home, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"
    assert_error(invoke("generate", "a cat", *FAST, "-o", out), "output folder", str(out), "not writable")
    assert blocker.read_text() == "x"


def test_output_folder_under_a_file_vary(home, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "out"
    assert_error(invoke("vary", picture(tmp_path / "a.png"), "-o", out), "output folder", "not writable")


def test_output_folder_named_like_an_image_file_is_refused(home, tmp_path):
    out = tmp_path / "cat.png"
    line = assert_error(invoke("generate", "a cat", *FAST, "-o", out), "output folder", str(out), "image file name",
                        "-o " + str(tmp_path / "cat"))
    assert not out.exists() and "not writable" not in line
    existing = tmp_path / "file.png"
    existing.write_bytes(b"x")  # an existing file of that name: still this error, and the file is untouched
    assert_error(invoke("vary", picture(tmp_path / "a.png"), "-o", existing), "image file name")
    assert existing.read_bytes() == b"x"


def test_an_existing_folder_named_like_an_image_is_used(home, tmp_path):
    out = tmp_path / "shots.png"
    out.mkdir()
    r = invoke("generate", "a cat", *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert [p.suffix for p in out.iterdir()] == [".png"]


def test_bad_size(home, out):
    assert_error(invoke("generate", "a cat", "--size", 512, "-o", out), "--size", "64, 256 or 1024", "512", outdir=out)


def test_size_above_what_the_model_reaches(home, out):
    toml = home / "weights.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.startswith("sr1024")))
    assert_error(invoke("generate", "a cat", "--size", 1024, "-o", out), "tiny", "256x256", "--size 1024", outdir=out)


@pytest.mark.parametrize("args, needles", [
    (["--num-images", "0"], ["--num-images", "at least 1"]),
    (["--sampler", "euler"], ["--sampler", "euler"]),
    (["--dtype", "fp8"], ["--dtype", "fp8"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--seed", "-1"], ["--seed"]),
    (["--decoder-steps", "0"], ["--decoder-steps", "between 1 and 1000"]),
    (["--prior-guidance", "-2"], ["--prior-guidance", "negative"]),
])
def test_bad_options(home, out, args, needles):
    assert_error(invoke("generate", "a cat", *args, "-o", out), *needles, outdir=out)


def test_info_on_a_missing_file(tmp_path):
    assert_error(invoke("info", tmp_path / "nope.png"), "does not exist")


def test_unknown_or_bad_model_defaults_are_named(home, out):
    """A [defaults] key that is no sampling option (a typo, or the retired prior_clip) stops with its name."""
    toml = home / "weights.toml"
    good = toml.read_text()
    toml.write_text(good.replace("[models.tiny.defaults]", "[models.tiny.defaults]\nprior_clip = 5.0\ndecoder_step = 3"))
    assert_error(invoke("generate", "a cat", "-o", out), "[models.tiny.defaults]", "decoder_step", "prior_clip",
                 outdir=out)
    toml.write_text(good.replace("[models.tiny.defaults]", "[models.tiny.defaults]\nsampler = \"euler\""))
    assert_error(invoke("generate", "a cat", "-o", out), "sampler", "euler", outdir=out)


def test_size_message_lists_the_sizes(home, out):
    assert_error(invoke("generate", "a cat", "--size", 48, "-o", out), "--size must be 32, 64, 256 or 1024", outdir=out)

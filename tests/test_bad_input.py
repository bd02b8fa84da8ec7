"""The bad-input suite: odd, broken and hostile files, prompts, numbers and registries.

Each refused case checks the one `error: ...` line (it names the problem), the exit status, that the output
folder stays empty and that the input files are unchanged; each accepted case checks what was made of it.
Cases already covered elsewhere are not repeated here: a text file named .png, a mask of another size, an
all-black mask, an empty prompt (tests/test_errors.py); a truncated checkpoint, a sha256 mismatch, a pickle
renamed .safetensors, a checkpoint whose tensors do not match its config (tests/test_checkpoint.py,
tests/test_errors.py).
"""

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from test_errors import FAST, assert_error, mask, picture
from unclip_cli.cli.app import app
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images

SMALL = ["--size", "64", "--decoder-steps", "1", "--sr-steps", "1"]  # vary and edit: 64 px, one step per stage


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digest(*paths: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def refused(args: list, *needles: str, out: Path, inputs: tuple[Path, ...] = ()) -> str:
    """Run the CLI, expect one error line naming every needle, exit 1, empty `out`, inputs unchanged."""
    before = digest(*inputs)
    r = invoke(*args, "-o", out)
    line = assert_error(r, *needles, outdir=out)
    assert r.exit_code == 1
    assert digest(*inputs) == before
    return line


def made(args: list, out: Path, inputs: tuple[Path, ...] = (), n: int = 1):
    """Run the CLI, expect success and `n` readable PNGs in `out`, inputs unchanged."""
    before = digest(*inputs)
    r = invoke(*args, "-o", out)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.stderr
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == n and sorted(out.iterdir()) == pngs
    for p in pngs:
        with Image.open(p) as im:
            im.load()
    assert digest(*inputs) == before
    return r, pngs


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height, with a tiny compressed body: a decompression bomb, made cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def noise(size=(64, 64), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


# --------------------------------------------------------------------------- broken image files


@pytest.mark.parametrize("verb", ["vary", "edit"])
def test_truncated_image(home, tmp_path, out, verb):
    bad = picture(tmp_path / "a.png")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    m = mask(tmp_path / "m.png")
    args = ["vary", bad, *SMALL] if verb == "vary" else ["edit", bad, "a cat", "--mask", m, *SMALL]
    refused(args, str(bad), "not a readable image", "truncated", out=out, inputs=(bad, m))


def test_truncated_mask(home, tmp_path, out):
    image, m = picture(tmp_path / "a.png"), mask(tmp_path / "m.png")
    m.write_bytes(m.read_bytes()[:60])
    refused(["edit", image, "a cat", "--mask", m, *SMALL], "mask", str(m), "not a readable image", out=out,
            inputs=(image, m))


def test_empty_image_file(home, tmp_path, out):
    bad = tmp_path / "a.png"
    bad.write_bytes(b"")
    refused(["vary", bad, *SMALL], str(bad), "empty", out=out, inputs=(bad,))


def test_jpeg_named_png_is_accepted(home, tmp_path, out):
    path = tmp_path / "photo.png"
    Image.fromarray(noise()).save(path, format="JPEG")
    made(["vary", path, *SMALL, "--seed", 1], out, inputs=(path,))


@pytest.mark.parametrize("size", [(30000, 30000), (9000, 9000)])
def test_decompression_bomb_is_refused_before_decoding(home, tmp_path, out, size):
    """30000x30000 trips PIL's own bomb check; 9000x9000 (81 MP) is under PIL's but over our 67 MP limit."""
    bomb = png_with_header(tmp_path / "bomb.png", *size)
    assert bomb.stat().st_size < 200
    line = refused(["vary", bomb, *SMALL], str(bomb), "image too large", out=out, inputs=(bomb,))
    assert "megapixels" in line
    m = mask(tmp_path / "m.png")
    refused(["edit", picture(tmp_path / "a.png"), "a cat", "--mask", bomb, *SMALL], "mask", "image too large",
            out=out, inputs=(bomb, m))


def test_pixel_limit_is_8192_squared(tmp_path):
    assert images.MAX_PIXELS == 8192 * 8192
    with pytest.raises(UnclipError, match="image too large"):
        images.load_image(png_with_header(tmp_path / "a.png", 8192, 8193))


# --------------------------------------------------------------------------- unusual but valid images


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_one_pixel_image_varies(home, tmp_path, out):
    path = _save(tmp_path / "dot.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    made(["vary", path, *SMALL, "--seed", 1], out, inputs=(path,))


def test_one_pixel_image_edits(home, tmp_path, out):
    path = _save(tmp_path / "dot.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    m = _save(tmp_path / "m.png", Image.new("L", (1, 1), 255))
    _, [png] = made(["edit", path, "a blue square", "--mask", m, *FAST, "--seed", 1], out, inputs=(path, m))
    assert Image.open(png).size == (1, 1)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = _save(tmp_path / "g16.png", Image.fromarray(ramp))
    assert Image.open(path).mode == "I;16"
    im = images.load_image(path)
    assert im.mode == "L"
    got = np.asarray(im).astype(int)
    assert np.array_equal(got, ramp.astype(np.int64) * 255 // 65535)  # a PIL convert("L") would clip to 255
    assert got.min() == 0 and got.max() == 254 and (got < 128).mean() > 0.4


@pytest.mark.parametrize("kind", ["16-bit", "palette", "grey", "cmyk", "grey+alpha", "1-bit"])
def test_image_modes_vary(home, tmp_path, out, kind):
    rgb = Image.fromarray(noise())
    path = {
        "16-bit": lambda: _save(tmp_path / "a.png", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)),
        "palette": lambda: _save(tmp_path / "a.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        "grey": lambda: _save(tmp_path / "a.png", rgb.convert("L")),
        "cmyk": lambda: _save(tmp_path / "a.jpg", rgb.convert("CMYK"), format="JPEG"),
        "grey+alpha": lambda: _save(tmp_path / "a.png", rgb.convert("LA")),
        "1-bit": lambda: _save(tmp_path / "a.png", rgb.convert("1")),
    }[kind]()
    loaded = images.load_image(path)
    assert loaded.mode in ("RGB", "RGBA", "L", "LA") and loaded.size == (64, 64)
    made(["vary", path, *SMALL, "--seed", 2], out, inputs=(path,))


def test_cmyk_colours_survive(tmp_path):
    path = _save(tmp_path / "red.tif", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))  # pure red in CMYK
    assert images.load_image(path).getpixel((3, 3)) == (255, 0, 0)


def test_palette_transparency_marks_the_edit_area(home, tmp_path, out):
    """A palette PNG with a transparent index edits like an RGBA image: transparent pixels regenerate."""
    p = Image.new("P", (64, 64), 1)
    p.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    p.paste(0, (8, 8, 24, 24))
    path = _save(tmp_path / "hole.png", p, transparency=0)
    loaded = images.load_image(path)
    assert loaded.mode == "RGBA"
    area = images.edit_mask(loaded, None)
    assert area.sum() == 16 * 16 and area[8:24, 8:24].all()
    _, [png] = made(["edit", path, "a blue square", *FAST, "--seed", 1], out, inputs=(path,))
    result = np.asarray(Image.open(png).convert("RGB"))
    keep = ~area
    assert np.array_equal(result[keep], np.asarray(loaded.convert("RGB"))[keep])


def test_animation_uses_its_first_frame(home, tmp_path, out):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    apng = tmp_path / "anim.png"
    frames[0].save(apng, save_all=True, append_images=frames[1:], duration=50)
    for path in (gif, apng):
        with Image.open(path) as im:
            assert getattr(im, "n_frames", 1) == 3
        assert images.load_image(path).convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    made(["vary", apng, *SMALL, "--seed", 1], out, inputs=(apng,))


def _exif_rotated(path: Path) -> Path:
    """A 64 wide x 32 high JPEG whose EXIF says "rotate 90 clockwise to view" (orientation 6): seen 32 x 64."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)  # left half red, right half blue as stored
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, format="JPEG", exif=exif, quality=95)
    return path


def test_exif_rotation_is_honoured(tmp_path):
    im = images.load_image(_exif_rotated(tmp_path / "photo.jpg"))
    assert im.size == (32, 64)  # upright: portrait
    r, g, b = im.getpixel((16, 5))  # after a 90 degree clockwise turn, the stored left half is on top
    assert r > 200 and b < 60
    r, g, b = im.getpixel((16, 58))
    assert b > 200 and r < 60


def test_exif_rotated_photo_edits_with_an_upright_mask(home, tmp_path, out):
    photo = _exif_rotated(tmp_path / "photo.jpg")
    m = np.zeros((64, 32), np.uint8)  # the mask is drawn on the picture as it is seen: 32 wide x 64 high
    m[40:56, 8:24] = 255
    m_path = _save(tmp_path / "m.png", Image.fromarray(m))
    _, [png] = made(["edit", photo, "a red circle", "--mask", m_path, *FAST, "--seed", 1], out, inputs=(photo, m_path))
    assert Image.open(png).size == (32, 64)


# --------------------------------------------------------------------------- masks


def test_soft_mask_threshold_is_128(tmp_path):
    """Grey levels: 128 and above = edit, 127 and below = keep (documented in the README)."""
    image = Image.new("RGB", (256, 1))
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8)[None, :])
    area = images.edit_mask(image, ramp, "ramp.png")
    assert not area[0, :128].any() and area[0, 128:].all()


def test_soft_mask_edit_keeps_the_dark_grey_pixels(home, tmp_path, out):
    image = picture(tmp_path / "a.png")
    grey = np.zeros((64, 64), np.uint8)
    grey[:, 16:32] = 127  # kept
    grey[:, 32:48] = 128  # edited
    grey[:, 48:] = 255  # edited
    m = _save(tmp_path / "m.png", Image.fromarray(grey))
    _, [png] = made(["edit", image, "a red circle", "--mask", m, *FAST, "--seed", 1], out, inputs=(image, m))
    before, after = np.asarray(Image.open(image)), np.asarray(Image.open(png))
    assert np.array_equal(after[:, :32], before[:, :32])
    assert not np.array_equal(after[:, 32:], before[:, 32:])


def test_all_white_mask_regenerates_everything(home, tmp_path, out):
    image = picture(tmp_path / "a.png")
    m = _save(tmp_path / "m.png", Image.new("L", (64, 64), 255))
    _, [png] = made(["edit", image, "a red circle", "--mask", m, *FAST, "--seed", 1], out, inputs=(image, m))
    assert (np.asarray(Image.open(png)) != np.asarray(Image.open(image))).any(axis=-1).mean() > 0.9


# --------------------------------------------------------------------------- prompts


def test_500_word_prompt_warns_and_runs(home, out):
    prompt = " ".join(["red", "circle", "above", "a", "blue", "square"] * 84)[: 10_000]
    assert len(prompt.split()) >= 500
    r, _ = made(["generate", prompt, *FAST, "--seed", 1], out)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "77 tokens" in lines[0]


@pytest.mark.parametrize("prompt", ["красный круг над синим квадратом", "一个红色的圆", "دائرة حمراء",
                                    "🔴 above 🟦", "a red circle 🙂 \u200d\u2764\ufe0f"])
def test_non_latin_and_emoji_prompts_run(home, out, prompt):
    _, [png] = made(["generate", prompt, *FAST, "--seed", 1], out)
    r = invoke("info", png, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["prompt"] == prompt  # stored and read back intact


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("args, needles", [
    (["-n", "1000000"], ["--num-images", "at most 10000"]),
    (["-n", str(10**30)], ["--num-images", "at most"]),
    (["-n", "-3"], ["--num-images", "at least 1"]),
    (["--decoder-steps", str(10**9)], ["--decoder-steps", "between 1 and 1000"]),
    (["--prior-steps", "-1"], ["--prior-steps", "between 1 and 1000"]),
    (["--sr-steps", "1001"], ["--sr-steps", "between 1 and 1000"]),
    (["--decoder-guidance", "nan"], ["--decoder-guidance", "finite"]),
    (["--prior-guidance", "inf"], ["--prior-guidance", "finite"]),
    (["--decoder-guidance", "1e400"], ["--decoder-guidance", "finite"]),
    (["--seed", str(2**64)], ["--seed", "below 2**63"]),
])
def test_absurd_numbers(home, out, args, needles):
    refused(["generate", "a cat", *args], *needles, out=out)


@pytest.mark.parametrize("args, name", [(["--decoder-steps", "ten"], "'--decoder-steps'"), (["-n", "2.5"], "'-n'"),
                                        (["--prior-guidance", "lots"], "'--prior-guidance'")])
def test_numbers_that_are_not_numbers(home, out, args, name):
    """Typer's own usage error (not ours, so in its box): exit 2 naming the option, no traceback, nothing written."""
    r = CliRunner().invoke(app, ["generate", "a cat", *args, "-o", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "Traceback" not in r.output
    error = [line for line in r.output.splitlines() if "Invalid value for" in line]
    assert len(error) == 1 and name in error[0] and "valid" in error[0].split(":", 1)[1], r.output
    assert not out.exists()


# --------------------------------------------------------------------------- weights.toml


def _edit_toml(home: Path, old: str, new: str) -> Path:
    toml = home / "weights.toml"
    text = toml.read_text()
    assert old in text, text
    toml.write_text(text.replace(old, new, 1))
    return toml


def test_weights_toml_syntax_error(home, out):
    toml = home / "weights.toml"
    toml.write_text(toml.read_text() + "\n[models.broken\nclip = \n")
    refused(["generate", "a cat", *FAST], "model registry", str(toml), "line", out=out, inputs=(toml,))


def test_unknown_stage(home, out):
    toml = _edit_toml(home, "[models.tiny.stages]\n", "[models.tiny.stages]\nsr512 = { path = \"clip.safetensors\" }\n")
    refused(["generate", "a cat", *FAST], "unknown stages ['sr512']", "known: clip", out=out, inputs=(toml,))


@pytest.mark.parametrize("old, new, needles", [
    ('decoder = { path = "decoder.safetensors"', 'decoder = { sha = "x"',
     ["stages.decoder", "needs `path`, `package`, or `repo` + `revision` + `filename`"]),
    ('decoder = { path = "decoder.safetensors", sha256 = "', 'decoder = { path = "decoder.safetensors", sha256 = "zz',
     ["stages.decoder", "sha256 must be 64 hex digits"]),
    ('decoder = { path = "decoder.safetensors"', 'decoder = { path = 7',
     ["stages.decoder", "path must be text"]),
    ('decoder = { path = "decoder.safetensors"', 'decoder = { size = "big", path = "decoder.safetensors"',
     ["stages.decoder", "size must be a number of bytes"]),
])
def test_stage_entry_with_a_missing_or_wrong_field(home, out, old, new, needles):
    toml = _edit_toml(home, old, new)
    refused(["generate", "a cat", *FAST], *needles, out=out, inputs=(toml,))


def test_stage_that_is_not_a_table(home, out):
    toml = home / "weights.toml"
    lines = [('decoder = "decoder.safetensors"' if line.startswith("decoder = ") else line)
             for line in toml.read_text().splitlines()]
    toml.write_text("\n".join(lines) + "\n")
    refused(["generate", "a cat", *FAST], "stages.decoder", "must be a table", out=out, inputs=(toml,))


def test_model_missing_a_required_stage(home, out):
    toml = home / "weights.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.startswith("text_proj = ")))
    refused(["generate", "a cat", *FAST], "model 'tiny' has no text_proj stage", out=out, inputs=(toml,))


def test_unknown_format(home, out):
    toml = _edit_toml(home, "[models.tiny]\n", '[models.tiny]\nformat = "ckpt"\n')
    refused(["generate", "a cat", *FAST], "format must be", "ckpt", out=out, inputs=(toml,))


# --------------------------------------------------------------------------- unclip info on hostile metadata


def _png_with_chunks(path: Path, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value, zip=False)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def info_error(path: Path, *needles: str) -> str:
    before = digest(path)
    line = assert_error(invoke("info", path), *needles)
    assert digest(path) == before
    return line


def test_info_deeply_nested_json(tmp_path):
    path = _png_with_chunks(tmp_path / "deep.png", unclip="[" * 30_000 + "]" * 30_000)  # under the size cap
    with pytest.raises(RecursionError):
        json.loads("[" * 30_000 + "]" * 30_000)  # what `unclip info` used to do with it
    info_error(path, str(path), "nested more than 32 levels")
    assert images.json_depth('{"a": "[[[[[[", "b": [[1]]}') == 3  # brackets inside strings do not count


def test_info_huge_json_chunk(tmp_path):
    path = _png_with_chunks(tmp_path / "huge.png", unclip=json.dumps({"prompt": "x" * 5_000_000}))
    info_error(path, str(path), "over the 65536 limit")


def test_info_compressed_metadata_bomb(tmp_path):
    """A 5 MB text chunk that compresses to a few kB: PIL refuses to inflate it; one line, no traceback."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("unclip", "{" + " " * 5_000_000 + "}", zip=True)
    path = tmp_path / "zbomb.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert path.stat().st_size < 20_000
    info_error(path, str(path), "metadata chunk is too large")


@pytest.mark.parametrize("raw, needle", [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
                                         ('"__import__(\'os\').system(\'touch PWNED\')"', "not a JSON object")])
def test_info_bad_json(tmp_path, monkeypatch, raw, needle):
    monkeypatch.chdir(tmp_path)
    path = _png_with_chunks(tmp_path / "bad.png", unclip=raw)
    info_error(path, needle)
    assert not (tmp_path / "PWNED").exists()


def test_info_is_never_evaluated_and_escapes_terminal_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = "__import__('os').system('touch PWNED') \x1b]0;owned\x07\x1b[2J"
    path = _png_with_chunks(tmp_path / "evil.png", parameters=hostile, unclip=json.dumps({"prompt": hostile}))
    r = invoke("info", path)
    assert r.exit_code == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J" in r.stdout and "__import__('os')" in r.stdout
    r = invoke("info", path, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"prompt": hostile} and "\x1b" not in r.stdout
    assert not (tmp_path / "PWNED").exists()


def test_info_on_a_bomb_image(tmp_path):
    info_error(png_with_header(tmp_path / "bomb.png", 30000, 30000), "image too large")


def test_metadata_written_by_unclip_passes_the_caps():
    params = {"mode": "generate", "prompt": "x" * 2000, "files": {"clip": "0" * 64}, "seed": 1}
    raw = json.loads(json.dumps(params))
    assert len(json.dumps(raw)) < images.MAX_METADATA_CHARS and images.json_depth(json.dumps(raw)) == 2
    buf = io.BytesIO(images.png_bytes(Image.new("RGB", (4, 4)), params))
    assert images._parse_params(Image.open(buf).info["unclip"], Path("x.png")) == params


# --------------------------------------------------------------------------- a diffusers-layout folder (Karlo's)


@pytest.fixture(scope="module")
def karlo_folder(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    import karlo_tiny

    root = tmp_path_factory.mktemp("karlo") / "tiny-karlo"
    karlo_tiny.write_folder(root, seed=0)
    return root


@pytest.mark.parametrize("damage, needles", [
    (lambda cfg: {**cfg, "layers_per_block": cfg["layers_per_block"] + 1}, ["stage 'decoder'", "missing key"]),
    (lambda cfg: "{ not json", ["decoder", "config.json"]),
])
def test_stage_whose_config_does_not_match_its_file(home, karlo_folder, tmp_path, out, damage, needles):
    import shutil

    folder = tmp_path / "karlo"
    shutil.copytree(karlo_folder, folder)
    config = folder / "decoder" / "config.json"
    changed = damage(json.loads(config.read_text()))
    config.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    weights = folder / "decoder" / "diffusion_pytorch_model.safetensors"
    refused(["generate", "a cat", "--model", folder, *FAST], *needles, out=out, inputs=(config, weights))

"""End to end: `unclip generate / vary / edit / info` on the tiny random model (fixture `home`)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from PIL import Image
from typer.testing import CliRunner

from unclip_cli.cli.app import app

FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2"]
FAST_VARY = FAST[2:]  # vary has no prior


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_ok(*args) -> dict:
    """Run a verb with --json, assert success, return the parsed JSON object."""
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def source_image(path: Path, size: int, alpha: bool = False) -> Path:
    """A deterministic smooth RGB(A) test picture."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)
    if alpha:
        a = np.full((size, size, 1), 255, np.uint8)
        a[size // 4: size // 2, size // 3: 3 * size // 4] = 0  # transparent = edit
        rgb = np.concatenate([rgb, a], axis=-1)
    Image.fromarray(rgb, "RGBA" if alpha else "RGB").save(path)
    return path


def mask_image(path: Path, size: int) -> tuple[Path, np.ndarray]:
    m = np.zeros((size, size), np.uint8)
    m[size // 8: size // 2, size // 4: 5 * size // 8] = 255  # white = edit
    Image.fromarray(m, "L").save(path)
    return path, m == 255


def verb_args(verb: str, tmp_path: Path, size: int) -> list:
    if verb == "generate":
        return ["generate", "a red circle on a blue square"]
    if verb == "vary":
        return ["vary", source_image(tmp_path / "src.png", size)]
    src = source_image(tmp_path / "src.png", size)
    mask, _ = mask_image(tmp_path / "mask.png", size)
    return ["edit", src, "a green triangle", "--mask", mask]


# --------------------------------------------------------------------------- sizes, seeds, determinism


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("verb", ["generate", "vary", "edit"])
def test_size_seeds_and_determinism(home, tmp_path, verb, size):
    base = verb_args(verb, tmp_path, size) + ["--size", size] + (FAST_VARY if verb == "vary" else FAST)
    pair = run_ok(*base, "--num-images", 2, "--seed", 41, "--outdir", tmp_path / "pair")
    again = run_ok(*base, "--seed", 41, "--outdir", tmp_path / "again")
    second = run_ok(*base, "--seed", 42, "--outdir", tmp_path / "second")

    assert [im["seed"] for im in pair["images"]] == [41, 42]
    assert pair["size"] == size and pair["model"] == "tiny"
    a41, a42 = (pixels(im["path"]) for im in pair["images"])
    b41 = pixels(again["images"][0]["path"])
    b42 = pixels(second["images"][0]["path"])
    for arr in (a41, a42, b41, b42):
        assert arr.shape[:2] == (size, size)
    assert np.array_equal(a41, b41), "same seed must give the same pixels"
    assert np.array_equal(a42, b42), "image 2 of `-n 2 --seed 41` must equal a single run with --seed 42"
    assert not np.array_equal(a41, a42), "different seeds must give different images"
    # The seed is recorded in the file.
    assert json.loads(invoke("info", "--json", pair["images"][1]["path"]).stdout)["seed"] == 42


@pytest.mark.parametrize("verb", ["generate", "vary", "edit"])
def test_several_images_load_each_stage_once(home, tmp_path, monkeypatch, verb):
    """-n 3 loops over the images inside each loaded stage instead of reloading the stage per image."""
    from unclip_cli.weights import checkpoint
    from unclip_cli.pipeline import stages as stages_mod

    loads, build = [], checkpoint.build
    monkeypatch.setattr(checkpoint, "build", lambda path, stage, *a, **k: loads.append(stage) or build(path, stage, *a, **k))
    held, get = [], stages_mod.Stages.get
    monkeypatch.setattr(stages_mod.Stages, "get", lambda self, stage: (get(self, stage), held.append(set(self._loaded)))[0])
    args = verb_args(verb, tmp_path, 256) + ["--size", 256] + (FAST_VARY if verb == "vary" else FAST)
    out = run_ok(*args, "-n", 3, "--seed", 3, "--outdir", tmp_path / "out")
    assert len(out["images"]) == 3
    # the tiny model has a separate last-step upsampler, like Karlo: the two are never held together,
    # so both are read once per image; every other stage is read once.
    expected = ["clip", "decoder", "text_proj"] + ["sr256", "sr256_last"] * 3 + ([] if verb == "vary" else ["prior"])
    assert sorted(loads) == sorted(expected), loads
    assert held and not any({"sr256", "sr256_last"} <= h for h in held), "both upsampler networks held at once"


def test_generate_1024(home, tmp_path):
    out = run_ok("generate", "a dot", "--size", 1024, "--seed", 3, "--prior-steps", 1, "--decoder-steps", 1,
                 "--sr-steps", 1, "--outdir", tmp_path)
    with Image.open(out["images"][0]["path"]) as im:
        assert im.size == (1024, 1024)
    assert set(out["timings"]) == {"prior", "decoder", "sr256", "sr1024"}


def test_default_size_is_the_largest_the_model_reaches(home, tmp_path):
    # Not asserted through a 1024 run (slow); the tiny model reaches 1024, so a 64 model is made.
    toml = home / "weights.toml"
    toml.write_text("\n".join(l for l in toml.read_text().splitlines() if not l.startswith("sr")) + "\n")
    out = run_ok("generate", "a dot", "--seed", 3, *FAST, "--outdir", tmp_path)
    assert out["size"] == 64
    with Image.open(out["images"][0]["path"]) as im:
        assert im.size == (64, 64)


def test_size_asked_for_wins_over_the_models_default_size(home, tmp_path):
    toml = home / "weights.toml"
    toml.write_text(toml.read_text().replace("sr_steps = 2", "sr_steps = 2\nsize = 256", 1))
    out = run_ok("generate", "a dot", "--seed", 3, *FAST, "--outdir", tmp_path / "default")
    assert out["size"] == 256  # the model's default
    out = run_ok("generate", "a dot", "--size", 64, "--seed", 3, *FAST, "--outdir", tmp_path / "asked")
    assert out["size"] == 64 and "sr256" not in out["timings"]
    with Image.open(out["images"][0]["path"]) as im:
        assert im.size == (64, 64)


# --------------------------------------------------------------------------- edit keeps unmasked pixels


def test_edit_with_mask_file_keeps_every_unmasked_pixel(home, tmp_path):
    src = source_image(tmp_path / "src.png", 64)
    mask, edit = mask_image(tmp_path / "mask.png", 64)
    out = run_ok("edit", src, "a green triangle", "--mask", mask, "--size", 64, "--seed", 7, *FAST,
                 "--outdir", tmp_path / "out")
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert after.shape == before.shape
    assert np.array_equal(after[~edit], before[~edit])
    assert not np.array_equal(after[edit], before[edit]), "the masked area should have been regenerated"


def test_edit_with_transparent_pixels_keeps_every_opaque_pixel(home, tmp_path):
    src = source_image(tmp_path / "src.png", 64, alpha=True)
    before = pixels(src)
    keep = before[..., 3] == 255
    out = run_ok("edit", src, "a green triangle", "--size", 64, "--seed", 7, *FAST, "--outdir", tmp_path / "out")
    after = pixels(out["images"][0]["path"])
    assert after.shape == before.shape  # RGBA in, RGBA out
    assert np.array_equal(after[keep], before[keep])
    assert (after[~keep, 3] == 255).all(), "edited pixels become opaque"


def test_edit_mask_is_resized_with_the_image(home, tmp_path):
    """A 96x96 image edited at --size 64: the output keeps the image's size and its unmasked pixels."""
    src = source_image(tmp_path / "src.png", 96)
    mask, edit = mask_image(tmp_path / "mask.png", 96)
    out = run_ok("edit", src, "x", "--mask", mask, "--size", 64, "--seed", 1, *FAST, "--outdir", tmp_path / "out")
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert after.shape == before.shape
    assert np.array_equal(after[~edit], before[~edit])


# --------------------------------------------------------------------------- info, --json, metadata


def test_info_reads_the_parameters_back(home, tmp_path):
    out = run_ok("generate", "a purple hexagon", "--size", 64, "--seed", 1234, "--prior-steps", 2,
                 "--decoder-steps", 3, "--outdir", tmp_path)
    path = out["images"][0]["path"]

    r = invoke("info", path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "a purple hexagon"
    for piece in ("Seed: 1234", "Steps: 3", "Prior steps: 2", "Model: tiny", "Size: 64x64", "Mode: generate"):
        assert piece in r.stdout

    r = invoke("info", "--json", path)
    assert r.exit_code == 0, r.stderr
    params = json.loads(r.stdout)
    assert params["prompt"] == "a purple hexagon"
    assert params["seed"] == 1234
    assert params["prior_steps"] == 2 and params["decoder_steps"] == 3
    assert params["model"] == "tiny" and params["mode"] == "generate" and params["size"] == "64x64"
    assert params["files"]["decoder"] == hashlib.sha256((home / "decoder.safetensors").read_bytes()).hexdigest()


def test_json_output(home, tmp_path):
    out = run_ok("generate", "a dot", "--size", 256, "--seed", 5, "-n", 2, *FAST, "--outdir", tmp_path / "out")
    assert out["model"] == "tiny"
    assert [im["seed"] for im in out["images"]] == [5, 6]
    paths = [Path(im["path"]) for im in out["images"]]
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in paths)
    assert len(set(paths)) == 2
    assert set(out["timings"]) == {"prior", "decoder", "sr256"}
    assert all(isinstance(v, float) and v >= 0 for v in out["timings"].values())
    stages = {"clip", "prior", "text_proj", "decoder", "sr256", "sr256_last"}
    assert set(out["files"]) == stages
    for stage in stages:
        assert out["files"][stage] == hashlib.sha256((home / f"{stage}.safetensors").read_bytes()).hexdigest()


def test_plain_output_is_one_path_per_line(home, tmp_path):
    out = tmp_path / "out"
    r = invoke("generate", "a dot", "--size", 64, "--seed", 5, "-n", 2, *FAST, "--outdir", out)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(Path(p).is_file() for p in lines)
    assert sorted(lines) == sorted(str(p) for p in out.glob("*.png"))


def test_never_overwrites(home, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "a dot", "--size", 64, "--seed", 9, *FAST, "--outdir", out]
    first = Path(run_ok(*args)["images"][0]["path"])
    first_bytes = first.read_bytes()
    second = Path(run_ok(*args)["images"][0]["path"])
    assert second != first
    assert first.read_bytes() == first_bytes
    assert sorted(out.iterdir()) == sorted([first, second])  # no temporary files left behind
    assert np.array_equal(pixels(first), pixels(second))


def test_no_metadata(home, tmp_path):
    out = run_ok("generate", "a secret prompt", "--size", 64, "--seed", 2, *FAST, "--no-metadata",
                 "--outdir", tmp_path)
    path = out["images"][0]["path"]
    assert b"secret" not in Path(path).read_bytes()
    with Image.open(path) as im:
        assert not {"unclip", "parameters"} & set(im.info)
    r = invoke("info", path)
    assert r.exit_code != 0
    assert r.stderr.startswith("error:") and "carries no" in r.stderr


def test_ddim_sampler_runs_and_is_deterministic(home, tmp_path):
    args = ["generate", "a dot", "--size", 64, "--seed", 4, "--sampler", "ddim", *FAST]
    a = run_ok(*args, "--outdir", tmp_path / "a")
    b = run_ok(*args, "--outdir", tmp_path / "b")
    assert np.array_equal(pixels(a["images"][0]["path"]), pixels(b["images"][0]["path"]))
    r = invoke("info", "--json", a["images"][0]["path"])
    assert json.loads(r.stdout)["sampler"] == "ddim"


def test_help_lists_the_verbs():
    r = invoke("--help")
    assert r.exit_code == 0
    for verb in ("generate", "vary", "edit", "info", "models"):
        assert verb in r.stdout


def test_the_sde_sampler_runs_every_verb_and_is_reproduced_by_its_seed(home, tmp_path):
    """dpmpp_2m_sde with the log-SNR spacing (the bundled models' defaults): generate at 1024 is reproduced by its
    seed and records both; an edit keeps every unmasked pixel (post_step after each step); vary --strength 0.5
    starts from the noised input (img2img tail) and differs from strength 1."""
    sde = ["--sampler", "dpmpp_2m_sde", "--spacing", "logsnr"]
    args = ["generate", "a cat", "--size", 1024, *sde, *FAST, "-s", 3]
    a, b = run_ok(*args, "-o", tmp_path / "a"), run_ok(*args, "-o", tmp_path / "b")
    pa = a["images"][0]["path"]
    assert np.array_equal(pixels(pa), pixels(b["images"][0]["path"]))
    info = json.loads(invoke("info", pa, "--json").stdout)
    assert info["sampler"] == "dpmpp_2m_sde" and info["spacing"] == "logsnr"
    src = source_image(tmp_path / "src.png", 64)
    mask, edited = mask_image(tmp_path / "m.png", 64)
    edit = pixels(run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, *sde, *FAST, "-s", 4,
                         "-o", tmp_path / "e")["images"][0]["path"])
    assert np.array_equal(edit[~edited], pixels(src)[~edited]) and not np.array_equal(edit[edited], pixels(src)[edited])
    half, full = (pixels(run_ok("vary", src, "--size", 64, "--strength", st, *sde, *FAST_VARY, "-s", 5,
                                "-o", tmp_path / f"v{st}")["images"][0]["path"]) for st in (0.5, 1))
    assert not np.array_equal(half, full)
    assert np.abs(half.astype(int) - pixels(src).astype(int)).mean() < np.abs(full.astype(int) - pixels(src).astype(int)).mean()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_every_sampler_runs_every_stage(home, tmp_path, sampler):
    """The deterministic samplers give the same image twice and record themselves in the PNG."""
    args = ["generate", "a cat", "--size", 1024, "--sampler", sampler, *FAST, "-s", 3]
    a = run_ok(*args, "-o", tmp_path / "a")
    b = run_ok(*args, "-o", tmp_path / "b")
    pa, pb = a["images"][0]["path"], b["images"][0]["path"]
    assert np.array_equal(pixels(pa), pixels(pb))
    r = invoke("info", pa, "--json")
    assert json.loads(r.stdout)["sampler"] == sampler

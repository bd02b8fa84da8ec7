"""`unclip edit` that blends in: aspect kept (pad/crop, never stretch), crops around small masks, mask
dilation and feathered paste-back with exact outside pixels, --invert-mask, RePaint resampling, and an
inpainting decoder (GLIDE-style extra input channels), on the tiny random models."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tiny
from test_cli import FAST, invoke, pixels, run_ok
from test_errors import assert_error
from unclip_cli.diffusion import gaussian, repaint, samplers
from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.pipeline import cascade, edit_region
from unclip_cli.train import data as train_data
from unclip_cli.train import tasks

BG = (200, 180, 160)


def picture(path, w: int, h: int, circle=None, seed: int = 0):
    """A noisy background (so any resampling shows) with an optional black circle (cx, cy, r)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(BG) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if circle:
        cx, cy, r = circle
        ImageDraw.Draw(im).ellipse([cx - r, cy - r, cx + r, cy + r], fill=(0, 0, 0))
    im.save(path)
    return path


def mask_file(path, w: int, h: int, box) -> tuple:
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    Image.fromarray(m, "L").save(path)
    return path, m == 255


@pytest.fixture
def spy(monkeypatch):
    """Records what cascade.edit is given (the model's input image and mask)."""
    seen = []
    real = cascade.edit

    def wrapper(stages, image, mask, *a, **k):
        seen.append((image.clone(), mask.clone()))
        return real(stages, image, mask, *a, **k)

    monkeypatch.setattr(cascade, "edit", wrapper)
    return seen


def extent(dark: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(dark)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


# --------------------------------------------------------------------------- geometry


def test_wide_image_keeps_aspect(home, tmp_path, spy):
    """320x240, circle on the kept left, right half edited at --size 64: the model sees the image padded
    to a square, so the circle is still round there (stretching would make it 1.33x wider than high)."""
    src = picture(tmp_path / "wide.png", 320, 240, circle=(80, 120, 50))
    mask, edit = mask_file(tmp_path / "m.png", 320, 240, (160, 0, 320, 240))
    out = run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, "--seed", 3, *FAST, "-o", tmp_path / "o")
    (x, m), = spy
    assert x.shape == (1, 3, 64, 64) and m.shape == (1, 1, 64, 64)
    w, h = extent(x[0].mean(0).numpy() < -0.6)  # the black circle in the model's input
    assert abs(w - h) <= 1, (w, h)
    assert 19 <= w <= 22  # diameter 100 of 320 px -> 20 of 64
    assert m[0, 0, :, 33:].all() and not m[0, 0, :, :31].any()  # the right half, padding included
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert after.shape == (240, 320, 3)
    assert np.array_equal(after[~edit], before[~edit])
    assert not np.array_equal(after[edit], before[edit])


def test_plan_pads_a_wide_image_to_a_centred_square():
    mask = np.zeros((240, 320), bool)
    mask[:, 160:] = True
    win = edit_region.plan(mask, 64)
    assert (win.top, win.left, win.side) == (-40, 0, 320)
    arr = np.arange(240 * 320).reshape(240, 320)
    cut = edit_region.cut(arr, win)
    assert cut.shape == (320, 320)
    assert np.array_equal(cut[40:280], arr) and (cut[:40] == arr[0]).all() and (cut[280:] == arr[-1]).all()
    padded_mask = edit_region.cut(mask, win)  # padding takes the mask of the edge it repeats
    assert padded_mask[:40, 160:].all() and not padded_mask[:40, :160].any()


def test_small_mask_in_a_large_image_is_edited_as_a_crop(home, tmp_path, spy):
    """A 40x40 mask in a 512x384 image at --size 64: the window is the mask's box with a margin of half
    its side (80x80 around it), at the model's resolution; the rest of the image is never touched."""
    src = picture(tmp_path / "big.png", 512, 384, seed=1)
    mask, edit = mask_file(tmp_path / "m.png", 512, 384, (300, 200, 340, 240))
    out = run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, "--seed", 4, *FAST, "-o", tmp_path / "o")
    (x, m), = spy
    crop = Image.open(src).convert("RGB").crop((280, 180, 360, 260)).resize((64, 64), Image.BICUBIC)
    expect = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(x[0], expect)
    assert m[0, 0].sum() == 32 * 32 and m[0, 0, 16:48, 16:48].all()  # the 40 px mask, at 64/80 scale
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert after.shape == before.shape
    assert np.array_equal(after[~edit], before[~edit])
    assert not np.array_equal(after[edit], before[edit])


def test_plan_keeps_the_window_inside_the_image_near_a_border():
    mask = np.zeros((300, 400), bool)
    mask[5:25, 380:398] = True
    win = edit_region.plan(mask, 32)
    assert win.side == 40 and (win.top, win.left) == (0, 360)


# --------------------------------------------------------------------------- dilation, feathering, invert


def test_feather_weights():
    m = np.zeros((20, 20), bool)
    m[8:12, 8:12] = True
    w = edit_region.feather(m, 3)
    assert (w[m] == 1).all()
    assert w[8, 7] == pytest.approx(0.75) and w[8, 5] == pytest.approx(0.25) and w[8, 4] == 0
    assert (w[edit_region.grow(m, 3) == 0] == 0).all() and (w[edit_region.grow(m, 3)] > 0).all()


def test_mask_blur_and_dilation_keep_every_pixel_outside_exact(home, tmp_path):
    """Tiny decoder: 64 px, so --mask-dilate 2 grows the mask by 2 px of a 64 px image; --mask-blur 3
    feathers 3 px more. Every pixel farther than 5 px (Chebyshev) from the mask is the input's."""
    src = picture(tmp_path / "s.png", 64, 64, seed=2)
    mask, edit = mask_file(tmp_path / "m.png", 64, 64, (20, 20, 40, 36))
    out = run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, "--seed", 5, "--mask-dilate", 2,
                 "--mask-blur", 3, *FAST, "-o", tmp_path / "o")
    before, after = pixels(src).astype(int), pixels(out["images"][0]["path"]).astype(int)
    grown, near = edit_region.grow(edit, 2), edit_region.grow(edit, 5)
    assert np.array_equal(after[~near], before[~near])
    ring = near & ~grown
    assert (after[ring] != before[ring]).any(), "the feathered ring blends in the model's pixels"
    assert (after[grown & ~edit] != before[grown & ~edit]).any(), "the dilated ring is regenerated"
    plain = run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, "--seed", 5, *FAST, "-o", tmp_path / "p")
    p = pixels(plain["images"][0]["path"]).astype(int)
    assert np.array_equal(p[~edit], before[~edit])


def test_invert_mask_edits_the_black_area(home, tmp_path):
    src = picture(tmp_path / "s.png", 64, 64, seed=3)
    mask, white = mask_file(tmp_path / "m.png", 64, 64, (0, 0, 64, 40))
    out = run_ok("edit", src, "a dog", "--mask", mask, "--invert-mask", "--size", 64, "--seed", 6, *FAST,
                 "-o", tmp_path / "o")
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert np.array_equal(after[white], before[white])
    assert not np.array_equal(after[~white], before[~white])


# --------------------------------------------------------------------------- RePaint


def old_edit(stages, image: Image.Image, mask: np.ndarray, prompt, opts, gens):
    """The edit as it was before pad/crop, dilation and feathering: stretch to S, sample, composite."""
    S = opts.size
    x = torch.from_numpy(np.asarray(image.convert("RGB").resize((S, S), Image.BICUBIC)).copy())
    x = (x.permute(2, 0, 1).float() / 127.5 - 1)[None]
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((S, S), Image.BOX)
    m = torch.from_numpy(np.asarray(m) > 0)[None, None]
    out = cascade.edit(stages, x, m, [prompt], opts, gens, one_by_one=True)
    gen = (out[0].permute(1, 2, 0) * 0.5 + 0.5).clamp(0, 1).numpy()
    gen = Image.fromarray((gen * 255).round().astype("uint8")).resize(image.size, Image.BICUBIC)
    base = np.asarray(image.convert("RGB")).copy()
    base[mask] = np.asarray(gen)[mask]
    return base


@pytest.mark.parametrize("size", [64, 256])
def test_defaults_and_resample_1_are_the_old_pixels(home, tmp_path, size):
    from unclip_cli import options
    from unclip_cli.pipeline import stages as stages_mod

    src = picture(tmp_path / "s.png", 96, 96, seed=4)
    mask, edit = mask_file(tmp_path / "m.png", 96, 96, (10, 30, 80, 90))  # large: the window is the image
    out = run_ok("edit", src, "a dog", "--mask", mask, "--size", size, "--seed", 9, "--resample", 1, *FAST,
                 "-o", tmp_path / "o")
    stages, _ = stages_mod.open_model(None, "cpu", torch.float32, size)
    opts = options.resolve(stages.spec.defaults, {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}, size)
    old = old_edit(stages, Image.open(src), edit, "a dog", opts, [torch.Generator().manual_seed(9)])
    assert np.array_equal(pixels(out["images"][0]["path"]), old)


def test_resample_runs_changes_the_edit_and_keeps_the_rest(home, tmp_path):
    src = picture(tmp_path / "s.png", 64, 64, seed=5)
    mask, edit = mask_file(tmp_path / "m.png", 64, 64, (32, 0, 64, 64))
    common = ["--mask", mask, "--size", 64, "--seed", 2, "--decoder-steps", 4, "--prior-steps", 2]
    one = pixels(run_ok("edit", src, "a dog", *common, "-o", tmp_path / "a")["images"][0]["path"])
    r2 = [pixels(run_ok("edit", src, "a dog", *common, "--resample", 2, "--jump", 2, "--sampler", sampler,
                        "-o", tmp_path / sampler)["images"][0]["path"]) for sampler in ("ddpm", "ddim")]
    again = pixels(run_ok("edit", src, "a dog", *common, "--resample", 2, "--jump", 2, "-o", tmp_path / "b")["images"][0]["path"])
    before = pixels(src)
    for im in r2:
        assert np.array_equal(im[~edit], before[~edit])
    assert not np.array_equal(r2[0][edit], one[edit])
    assert np.array_equal(again, r2[0]), "a seed reproduces a resampled edit"



def test_resample_walks_ddpm_when_the_models_default_sampler_keeps_a_history(home, tmp_path):
    """A model whose default sampler is a multistep one (dpmpp_2m_sde, log-SNR spacing) still edits with --resample:
    RePaint walks DDPM on even-in-t steps then, exactly as if --sampler ddpm --spacing uniform were given; asking for
    the multistep sampler by name is refused."""
    toml = home / "weights.toml"
    toml.write_text(toml.read_text().replace("sr_steps = 2\n", 'sr_steps = 2\nsampler = "dpmpp_2m_sde"\nspacing = "logsnr"\n', 1))
    src = picture(tmp_path / "s.png", 64, 64, seed=5)
    mask, _ = mask_file(tmp_path / "m.png", 64, 64, (32, 0, 64, 64))
    common = ["--mask", mask, "--size", 64, "--seed", 2, "--decoder-steps", 4, "--prior-steps", 2,
              "--resample", 2, "--jump", 2]
    default = run_ok("edit", src, "a dog", *common, "-o", tmp_path / "a")
    ddpm = run_ok("edit", src, "a dog", *common, "--sampler", "ddpm", "--spacing", "uniform", "-o", tmp_path / "b")
    assert np.array_equal(pixels(default["images"][0]["path"]), pixels(ddpm["images"][0]["path"]))
    plain = run_ok("edit", src, "a dog", *common[:-4], "-o", tmp_path / "c")  # no RePaint: the model's sampler
    assert not np.array_equal(pixels(plain["images"][0]["path"]), pixels(ddpm["images"][0]["path"]))
    r = invoke("edit", src, "a dog", *common, "--sampler", "dpmpp_2m_sde", "-o", tmp_path / "d")
    assert r.exit_code == 1 and "--resample needs --sampler ddpm or ddim" in r.stderr


def _toy():
    spec = DiffusionSpec(prediction="sample", clamp=None)
    calls = []

    def net(x, t):
        calls.append(t)
        return 0.5 * x

    return samplers.Denoiser(net, spec), calls


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_repaint_costs_r_times_and_r1_is_the_sampler(name):
    denoise, calls = _toy()
    fn = samplers.SAMPLERS[name]
    ts = gaussian.respace(1000, 10)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g = lambda: [torch.Generator().manual_seed(1)]  # noqa: E731
    plain = fn(denoise, x, denoise.schedule, ts, generators=g())
    n_plain = len(calls)
    same = repaint.repaint(fn, denoise, x, denoise.schedule, ts, generators=g(), resample=1, jump=3)
    assert torch.equal(plain, same)
    calls.clear()
    steps = []
    out = repaint.repaint(fn, denoise, x, denoise.schedule, ts, generators=g(), resample=3, jump=4,
                          callback=lambda i, t, x: steps.append(i))
    assert len(calls) == 3 * n_plain == 30 and steps == list(range(30))
    assert calls[:12] == ts[:4] * 3 and calls[-6:] == ts[8:] * 3  # blocks of 4, 4 and 2 steps, each 3 times
    assert not torch.equal(out, plain)


def test_renoise_is_the_forward_process_over_the_jump():
    schedule = gaussian.cosine_schedule(1000)
    x = torch.full((1, 20000), 0.8)
    y = repaint.renoise(schedule, x, 300, 600, [torch.Generator().manual_seed(0)])
    ratio = float(schedule.alphas_cumprod[600] / schedule.alphas_cumprod[300])
    assert float(y.mean()) == pytest.approx(0.8 * ratio**0.5, abs=0.02)
    assert float(y.std()) == pytest.approx((1 - ratio) ** 0.5, abs=0.02)


# --------------------------------------------------------------------------- inpainting decoder


@pytest.fixture
def inpaint_home(tmp_path, monkeypatch):
    """A tiny model whose decoder takes cat[x_t, known image * keep, keep] (in_channels 3 + 4)."""
    monkeypatch.setitem(tiny.STAGES, "decoder", ("unet", dataclasses.replace(tiny.DECODER, in_channels=7),
                                                 tiny.DECODER_SPEC))
    h = tmp_path / "inpaint-home"
    tiny.write_model(h)
    monkeypatch.setenv("UNCLIP_HOME", str(h))
    monkeypatch.setenv("UNCLIP_QUIET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return h


def test_inpainting_decoder_gets_the_known_image_and_mask(inpaint_home, tmp_path, monkeypatch):
    from unclip_cli.models import unet as unet_mod

    seen = []
    real = unet_mod.UNet.forward

    def forward(self, x, t, **k):
        if self.cfg.in_channels == 7:
            seen.append(x.clone())
        return real(self, x, t, **k)

    monkeypatch.setattr(unet_mod.UNet, "forward", forward)
    src = picture(tmp_path / "s.png", 64, 64, seed=6)
    mask, edit = mask_file(tmp_path / "m.png", 64, 64, (0, 32, 64, 64))
    out = run_ok("edit", src, "a dog", "--mask", mask, "--size", 64, "--seed", 1, *FAST, "-o", tmp_path / "o")
    assert len(seen) == 2 and seen[0].shape == (2, 7, 64, 64)  # 2 steps, guidance doubles the batch
    keep = torch.from_numpy(~edit).float()
    image = torch.from_numpy(pixels(src)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(seen[0][:, 6], keep.expand(2, 64, 64))
    assert torch.allclose(seen[0][:, 3:6], (image * keep).expand(2, 3, 64, 64))
    before, after = pixels(src), pixels(out["images"][0]["path"])
    assert np.array_equal(after[~edit], before[~edit]) and not np.array_equal(after[edit], before[edit])
    seen.clear()
    gen = run_ok("generate", "a dog", "--size", 64, "--seed", 1, *FAST, "-o", tmp_path / "g")
    assert len(seen) == 2 and not seen[0][:, 3:].any(), "generate: nothing known, the extra inputs are zero"
    assert pixels(gen["images"][0]["path"]).shape == (64, 64, 3)


def test_inpainting_fine_tune_starts_as_the_plain_decoder(tmp_path):
    """[init] from a plain decoder: the extra input channels start at zero weight, so whatever the known
    image and mask, the first output equals the plain decoder's."""
    plain_path = tiny.make_stage(tmp_path / "decoder.safetensors", "unet", tiny.DECODER, seed=3, diffusion=tiny.DECODER_SPEC)
    proj_path = tiny.make_stage(tmp_path / "text_proj.safetensors", "text_proj", tiny.TEXT_PROJ, seed=4)
    net = tasks.DecoderNet(dataclasses.replace(tiny.DECODER, in_channels=7), tiny.TEXT_PROJ)
    tasks._init_from(net, {"decoder": plain_path.name, "text_proj": proj_path.name}, tmp_path)
    from unclip_cli.weights import checkpoint

    plain, _ = checkpoint.build(plain_path, "decoder")
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, tiny.DECODER.time_dim, generator=g)
    extra = torch.randn(2, 4, 64, 64, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = net.unet(torch.cat([x, extra], 1), t, emb=emb)
        b = plain(x, t, emb=emb)
    assert torch.allclose(a, b, atol=1e-5)


def test_random_keep_masks():
    keep = train_data.random_keep_masks(200, 32, torch.Generator().manual_seed(0))
    assert keep.shape == (200, 1, 32, 32) and set(keep.unique().tolist()) <= {0.0, 1.0}
    edited = (keep == 0).float().mean((1, 2, 3))
    assert (edited > 0).all() and (edited == 1).any() and (edited < 1).any()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, needles", [
    (["--mask-blur", "-1"], ("--mask-blur", "negative")),
    (["--mask-dilate", "-2"], ("--mask-dilate", "negative")),
    (["--resample", "0"], ("--resample", "between 1 and 100")),
    (["--jump", "0"], ("--jump", "between 1 and 1000")),
    (["--resample", "2", "--sampler", "dpmpp_2m"], ("--resample", "ddpm or ddim")),
])
def test_bad_edit_options(home, tmp_path, args, needles):
    src = picture(tmp_path / "s.png", 64, 64)
    mask, _ = mask_file(tmp_path / "m.png", 64, 64, (0, 0, 10, 10))
    r = invoke("edit", src, "a dog", "--mask", mask, *args, *FAST, "-o", tmp_path / "out")
    assert_error(r, *needles, outdir=tmp_path / "out")


def test_black_mask_and_inverted_white_mask_are_errors(home, tmp_path):
    src = picture(tmp_path / "s.png", 64, 64)
    black, _ = mask_file(tmp_path / "b.png", 64, 64, (0, 0, 0, 0))
    white, _ = mask_file(tmp_path / "w.png", 64, 64, (0, 0, 64, 64))
    assert_error(invoke("edit", src, "a dog", "--mask", black, *FAST, "-o", tmp_path / "o1"), "nothing to edit",
                 outdir=tmp_path / "o1")
    assert_error(invoke("edit", src, "a dog", "--mask", white, "--invert-mask", *FAST, "-o", tmp_path / "o2"),
                 "--invert-mask", "nothing to edit", outdir=tmp_path / "o2")


def test_inpainting_decoder_fine_tunes_from_a_plain_one(tmp_path):
    from test_train import TRAIN, unet_fields, write_toml
    from unclip_cli.shapes import world
    from unclip_cli.train import loop as train
    from unclip_cli.weights import checkpoint

    world.write_dataset(tmp_path / "data", 16, seed=3, size=64)
    clip = tiny.make_stage(tmp_path / "clip.safetensors", "clip", tiny.CLIP, seed=1)
    plain_cfg = dataclasses.replace(tiny.DECODER, sample_size=32)
    plain = tiny.make_stage(tmp_path / "plain.safetensors", "unet", plain_cfg, seed=2, diffusion=tiny.DECODER_SPEC)
    proj = tiny.make_stage(tmp_path / "proj.safetensors", "text_proj", tiny.TEXT_PROJ, seed=3)
    cfg = write_toml(tmp_path / "inpaint.toml", {
        "model": unet_fields(plain_cfg) | {"in_channels": 7},
        "init": {"decoder": plain.name, "text_proj": proj.name},  # relative to the config's folder
        "data": {"folder": "data", "clip": clip.name, "image_size": 32},
        "train": TRAIN | {"steps": 2}})
    out = train.run("decoder", cfg, tmp_path / "out")
    unet, config = checkpoint.build(out / "decoder.safetensors", "decoder", expect_kind="unet")
    assert config["in_channels"] == 7
    start, _ = checkpoint.build(plain, "decoder")
    w, w0 = unet.conv_in.weight.float(), start.conv_in.weight.float()
    assert (w[:, :3] - w0).abs().max() < 0.05, "the image channels start from the plain decoder"
    assert w[:, 3:].abs().max() > 0, "the known-image and mask channels have been trained"
    assert (unet.conv_out.weight.float() - start.conv_out.weight.float()).abs().max() < 0.05


def test_karlo_layout_edit_with_every_option(home, tmp_path):
    """The same code on a Karlo-layout (diffusers) model: a 96x72 image, dilation, feathering, RePaint."""
    import karlo_tiny

    folder = tmp_path / "karlo"
    karlo_tiny.write_folder(folder, seed=0)
    src = picture(tmp_path / "s.png", 96, 72, seed=7)
    mask, edit = mask_file(tmp_path / "m.png", 96, 72, (50, 10, 90, 60))
    out = run_ok("edit", src, "a dog", "--mask", mask, "-m", folder, "--size", 64, "--seed", 3, *FAST,
                 "--mask-dilate", 1, "--mask-blur", 2, "--resample", 2, "--jump", 1, "-o", tmp_path / "o")
    before, after = pixels(src), pixels(out["images"][0]["path"])
    near = edit_region.grow(edit, 2 + 2)  # 1 decoder pixel of 64 over a 96 px window = 2 image px, + 2 blur
    assert after.shape == before.shape and np.array_equal(after[~near], before[~near])
    assert not np.array_equal(after[edit], before[edit])

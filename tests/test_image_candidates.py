"""--image-candidates N (generate, eval): each image is drawn N times through the prior and the decoder, all from
its own generator, and the draw whose CLIP image embedding is closest to the prompt's text embedding goes on to the
upsamplers (DALL-E's reranking), on the tiny random model (fixture `home`)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip_cli.options import Options
from unclip_cli.pipeline import cascade, images, stages as stages_mod

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import FAST, invoke, run_ok  # noqa: E402
from test_eval_cmd import app, runner  # noqa: E402
from test_prior_candidates import reproduced_and_recorded  # noqa: E402
from test_toolkit import SMALL, fails  # noqa: E402
from hubserver import fake_hub  # noqa: E402,F401  (fixture import)

PROMPTS = ["a red circle", "a blue square"]


def test_best_rows_picks_each_images_closest_row():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    embeds = torch.tensor([[0.0, 1.0], [3.0, 0.2],  # image 0: the second row points along its text
                           [1.0, 1.0], [1.0, 0.9]])  # image 1: the first
    assert cascade.best_rows(embeds, text, 2).tolist() == [1, 2]


def _open(size: int = 64):
    stages = stages_mod.open_model(None, torch.device("cpu"), torch.float32, size)[0]
    return stages, Options(prior_steps=2, decoder_steps=2, prior_guidance=2.0, decoder_guidance=2.0,
                           size=stages.decoder_size())


def test_the_bundled_models_spec_and_its_loaded_clip_agree_on_the_image_tower(home):
    """The early refusals read the spec, the pipeline's own check the loaded CLIP (Karlo's: test_karlo_parity)."""
    stages, _ = _open()
    assert stages.spec.has_image_encoder and cascade.has_image_tower(stages)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_kept_image_is_the_closest_of_its_own_draws(home, monkeypatch):
    stages, opts = _open()
    seen = []
    pick = cascade.closest_images
    monkeypatch.setattr(cascade, "closest_images", lambda st, x, t, n: seen.append((x, t, n)) or pick(st, x, t, n))
    best = cascade.generate(stages, PROMPTS, replace(opts, image_candidates=3), gens(5, 6))
    plain = cascade.generate(stages, PROMPTS, opts, gens(5, 6))
    assert best.shape == plain.shape and not torch.equal(best, plain)
    (draws, _, n), = seen
    assert draws.shape[0] == 6 and n == 3
    embeds = cascade.encode_images(stages, images.to_pil(draws))
    text, _ = cascade.encode_text(stages, [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3)  # computed here, independently
    cos = F.cosine_similarity(embeds.float(), text.embed.float()).view(2, 3)
    for i in range(2):  # image i's three draws (rows 3i..3i+2): all different, the closest kept
        assert len(set(cos[i].tolist())) == 3
        assert torch.equal(best[i], draws[3 * i + int(cos[i].argmax())])


def test_one_by_one_each_image_equals_its_run_alone(home):
    stages, opts = _open(256)
    opts = replace(opts, image_candidates=2, size=256)  # through the upsampler too
    both = cascade.generate(stages, PROMPTS, opts, gens(1, 2), one_by_one=True)
    for i, seed in enumerate((1, 2)):
        alone = cascade.generate(stages, [PROMPTS[i]], opts, gens(seed), one_by_one=True)
        assert torch.equal(both[i:i + 1], alone)


def test_seed_reproduces_and_is_recorded(home, tmp_path):
    params, text, plain = reproduced_and_recorded(tmp_path, "--image-candidates")
    assert params["image_candidates"] == 2 and "Image candidates: 2" in text
    assert plain["image_candidates"] == 1  # recorded, 1 or not: models' defaults differ


def test_bad_image_candidates_is_one_line_and_only_generate_and_eval_offer_it(home, tmp_path):
    for bad in (0, 17):
        fails("generate", "a red circle", *SMALL, *FAST, "--image-candidates", bad, match="--image-candidates",
              outdir=tmp_path / "o")
    for verb in ("generate", "eval"):
        assert "--image-candidates" in invoke(verb, "--help").stdout
    for verb in ("vary", "edit", "mix"):
        assert "--image-candidates" not in invoke(verb, "--help").stdout


def test_eval_takes_image_candidates(home, tmp_path, monkeypatch):
    ranked = []
    pick = cascade.closest_images
    monkeypatch.setattr(cascade, "closest_images", lambda st, x, t, n: ranked.append(x.shape[0]) or pick(st, x, t, n))
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\n")
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--per-prompt", "2", "--prior-steps", "2", "--decoder-steps", "2",
                            "--image-candidates", "2", "--prompts", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["options"]["image_candidates"] == 2 and res["modes"]["prior"]["images"] == 2
    assert ranked == [4]  # the two images' two draws each, ranked


def test_with_prior_candidates_and_a_negative_prompt(home, tmp_path):
    """Image candidates over prior candidates and a negative prompt: each image still its own seed's."""
    common = [*SMALL, *FAST, "--image-candidates", 2, "--prior-candidates", 2, "--negative-prompt", "blue"]
    run = run_ok("generate", "a red circle", "-n", 2, "--seed", 3, *common, "--outdir", tmp_path / "a")
    alone = run_ok("generate", "a red circle", "-n", 1, "--seed", 4, *common, "--outdir", tmp_path / "b")
    second, own = (images.load_image(r["images"][k]["path"]) for r, k in ((run, 1), (alone, 0)))
    assert second.tobytes() == own.tobytes()  # the run's second image (seed 4) is seed 4's run alone
    assert images.read_params(run["images"][0]["path"])[0]["image_candidates"] == 2


def test_what_a_model_lacks_is_refused_before_any_download(fake_hub, tmp_path, monkeypatch):
    """Karlo's layout (diffusers, no clip_vision) has no CLIP image tower: --image-candidates, vary and a mix's
    image side need one. An image-variations layout has no prior: generate, edit, a mix's text side and
    --prompt-mix need one. Each is refused from the model's entry, before a byte of its files is asked for."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("UNCLIP_HOME", str(home))
    files = {"clip": "text_encoder/model.safetensors", "clip_vision": "image_encoder/model.safetensors",
             "prior": "prior/diffusion_pytorch_model.safetensors",
             "text_proj": "text_proj/diffusion_pytorch_model.safetensors",
             "decoder": "decoder/diffusion_pytorch_model.safetensors"}
    lines = []
    for name, left_out in (("textonly", "clip_vision"), ("imageonly", "prior")):
        lines += [f"[models.{name}]", 'description = "a test layout"', 'format = "diffusers"', "", f"[models.{name}.stages]"]
        lines += [f'{s} = {{ repo = "someone/{name}", revision = "{"1" * 40}", filename = "{f}" }}'
                  for s, f in files.items() if s != left_out]
    (home / "weights.toml").write_text("\n".join(lines) + "\n")
    picture, mask = tmp_path / "in.png", tmp_path / "mask.png"
    images.to_pil(torch.zeros(1, 3, 8, 8))[0].save(picture)
    images.to_pil(torch.ones(1, 3, 8, 8))[0].save(mask)
    out = tmp_path / "out"
    no_tower = "needs a CLIP image encoder; model 'textonly' has none"
    fails("generate", "a red circle", "--model", "textonly", "--image-candidates", "2",
          match=f"--image-candidates {no_tower}", outdir=out)
    fails("vary", picture, "--model", "textonly", match=f"vary {no_tower}", outdir=out)
    fails("mix", picture, "a red circle", "--model", "textonly", match=f"a mix side that is an image {no_tower}",
          outdir=out)
    no_prior = "needs a prior; model 'imageonly' has none"
    fails("generate", "a red circle", "--model", "imageonly", match=f"generate {no_prior}", outdir=out)
    fails("edit", picture, "--mask", mask, "a red circle", "--model", "imageonly", match=f"edit {no_prior}", outdir=out)
    fails("mix", picture, "a red circle", "--model", "imageonly", match=f"a mix side that is a text {no_prior}",
          outdir=out)
    fails("vary", picture, "--prompt", "a red circle", "--prompt-mix", "0.5", "--model", "imageonly",
          match=f"--prompt-mix {no_prior}", outdir=out)
    r = invoke("eval", "textonly", "--per-prompt", 1)
    assert r.exit_code == 1 and f"unclip eval (its CLIP score) {no_tower}" in r.stderr, r.stderr
    assert fake_hub.requests == []
    # what the models have asks the hub for their files (and fails there: the fake hub has none)
    for args in (("generate", "a red circle", "--model", "textonly"), ("vary", picture, "--model", "imageonly"),
                 ("mix", "text:a red circle", "text:a blue square", "--model", "textonly"),
                 ("vary", picture, "--prompt", "a red circle", "--model", "imageonly")):
        asked = len(fake_hub.requests)
        r = invoke(*args, "--outdir", out)
        assert r.exit_code == 1 and "needs a" not in r.stderr and len(fake_hub.requests) > asked, (args, r.stderr)


def test_a_models_default_candidates_count_as_asked(fake_hub, tmp_path, monkeypatch):
    """A text-only-CLIP model whose weights.toml defaults to 2 image candidates: generate is refused before any
    download unless --image-candidates 1 overrides the default."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("UNCLIP_HOME", str(home))
    files = {"clip": "text_encoder/model.safetensors", "prior": "prior/diffusion_pytorch_model.safetensors",
             "text_proj": "text_proj/diffusion_pytorch_model.safetensors",
             "decoder": "decoder/diffusion_pytorch_model.safetensors"}
    lines = ["[models.textonly]", 'description = "a test layout"', 'format = "diffusers"', "",
             "[models.textonly.defaults]", "image_candidates = 2", "", "[models.textonly.stages]"]
    lines += [f'{s} = {{ repo = "someone/textonly", revision = "{"1" * 40}", filename = "{f}" }}' for s, f in files.items()]
    (home / "weights.toml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    fails("generate", "a red circle", "--model", "textonly",
          match="--image-candidates needs a CLIP image encoder; model 'textonly' has none", outdir=out)
    assert fake_hub.requests == []
    r = invoke("generate", "a red circle", "--model", "textonly", "--image-candidates", 1, "--outdir", out)
    assert r.exit_code == 1 and "needs a" not in r.stderr and fake_hub.requests, r.stderr

"""--prior-candidates N: the prior draws N image embeddings per image and keeps the one closest to the text
(the DALL-E 2 paper's sampling, N = 2), on the tiny random model (fixture `home`)."""

import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip_cli.options import Options
from unclip_cli.pipeline import cascade, images, stages as stages_mod

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import FAST, invoke, run_ok  # noqa: E402
from test_toolkit import SMALL, fails  # noqa: E402


def test_closest_to_text_keeps_each_images_best_candidate():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = torch.tensor([[0.0, 1.0], [2.0, 0.1], [0.5, 0.5],  # image 0: the second points along its text
                          [1.0, 0.0], [0.2, 0.1], [-1.0, 3.0]])  # image 1: the third
    out = cascade.closest_to_text(cands, text.repeat_interleave(3, 0), 3)
    assert torch.equal(out, cands[[1, 5]])


def _open():
    return stages_mod.open_model(None, torch.device("cpu"), torch.float32, 64)[0]


def test_candidates_are_drawn_from_each_images_generator_and_the_closest_kept(home):
    stages = _open()
    text, _ = cascade.encode_text(stages, ["a red circle", "a blue square"])
    uncond, _ = cascade.encode_text(stages, ["", ""])
    opts = Options(prior_steps=2, prior_guidance=4.0, size=64)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    best = cascade.prior_stage(stages, text, uncond, replace(opts, prior_candidates=3), gens())
    one = cascade.prior_stage(stages, text, uncond, opts, gens())
    assert best.shape == one.shape and not torch.equal(best, one)
    for i, g in enumerate(gens()):  # image i's three candidates: its generator used by three rows in turn
        row = slice(i, i + 1)
        cands = cascade.prior_stage(stages, text.rows(row).repeat_rows(3), uncond.rows(row).repeat_rows(3), opts,
                                    [g, g, g])
        cos = F.cosine_similarity(cands, text.embed[i:i + 1].float(), dim=-1)
        assert len(set(cos.tolist())) == 3  # three different draws
        assert torch.allclose(best[i], cands[int(cos.argmax())], atol=1e-6)
        assert F.cosine_similarity(best[i:i + 1], text.embed[i:i + 1].float()) >= cos.max() - 1e-6


def test_candidates_batched_equal_one_by_one(home):
    """Two images with 2 candidates each in one batch give the embeddings each gives alone."""
    stages = _open()
    prompts = ["a red circle", "a blue square"]
    text, _ = cascade.encode_text(stages, prompts)
    uncond, _ = cascade.encode_text(stages, ["", ""])
    opts = Options(prior_steps=3, prior_guidance=4.0, prior_candidates=2, size=64)
    both = cascade.prior_stage(stages, text, uncond, opts, [torch.Generator().manual_seed(s) for s in (1, 2)])
    for i, s in enumerate((1, 2)):
        row = slice(i, i + 1)
        alone = cascade.prior_stage(stages, text.rows(row), uncond.rows(row), opts, [torch.Generator().manual_seed(s)])
        assert torch.allclose(both[i:i + 1], alone, atol=1e-5)


def reproduced_and_recorded(tmp_path, flag: str) -> tuple[dict, str, dict]:
    """`generate -n 2 FLAG 2` twice gives the same pixels, and other pixels than without FLAG; returns the first
    image's (params, A1111 text) and the plain run's params."""
    args = ["generate", "a red circle", "-n", 2, *SMALL, *FAST, "--seed", 9, flag, 2]
    a = run_ok(*args, "--outdir", tmp_path / "a")
    b = run_ok(*args, "--outdir", tmp_path / "b")
    plain = run_ok(*args[:-2], "--outdir", tmp_path / "c")
    for x, y, z in zip(a["images"], b["images"], plain["images"]):
        px, py, pz = (images.load_image(p["path"]) for p in (x, y, z))
        assert px.tobytes() == py.tobytes() and px.tobytes() != pz.tobytes()
    return (*images.read_params(a["images"][0]["path"]), images.read_params(plain["images"][0]["path"])[0])


def test_candidates_seed_reproduces_and_is_recorded(home, tmp_path):
    params, text, plain = reproduced_and_recorded(tmp_path, "--prior-candidates")
    assert params["prior_candidates"] == 2 and "Prior candidates: 2" in text
    assert "prior_candidates" not in plain


def test_bad_prior_candidates_is_one_line(home, tmp_path):
    for bad in (0, 65):
        fails("generate", "a red circle", *SMALL, *FAST, "--prior-candidates", bad, match="--prior-candidates",
              outdir=tmp_path / "o")
    assert "--prior-candidates" in invoke("generate", "--help").stdout


def test_candidates_with_a_negative_prompt_and_prompt_mix(home, tmp_path, monkeypatch):
    """Both prior runs of a negative prompt (and the prior run of `vary --prompt-mix`) draw N candidates each."""
    seen = []
    prior_stage = cascade.prior_stage
    monkeypatch.setattr(cascade, "prior_stage", lambda s, t, u, o, g, *a, **k: seen.append(o.prior_candidates)
                        or prior_stage(s, t, u, o, g, *a, **k))
    out = run_ok("generate", "a red circle", "--negative-prompt", "red", *SMALL, *FAST, "--seed", 4,
                 "--prior-candidates", 3, "--outdir", tmp_path / "g")
    assert seen == [3, 3] and images.read_params(out["images"][0]["path"])[0]["prior_candidates"] == 3
    seen.clear()
    src = out["images"][0]["path"]
    run_ok("vary", src, "--prompt", "a blue square", "--prompt-mix", 0.5, *SMALL, *FAST, "--seed", 4,
           "--prior-candidates", 2, "--outdir", tmp_path / "v")
    assert seen == [2]

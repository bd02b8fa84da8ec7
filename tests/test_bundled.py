"""The shipped `shapes` model: the default, offline, intact, and it draws what simple prompts ask for."""

import hashlib
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from unclip_cli.shapes import judge
from unclip_cli.weights import hub, registry as weights
from unclip_cli.cli.app import app


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No user registry, an empty Hugging Face cache, and the Hub switched off."""
    monkeypatch.setenv("UNCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNCLIP_QUIET", "1")
    return tmp_path


def test_shapes_is_the_default_and_its_files_match_weights_toml(offline):
    default, models = weights.registry()
    assert default == "shapes"
    spec = models["shapes"]
    assert set(spec.stages) == {"clip", "prior", "text_proj", "decoder", "sr256", "sr1024"}
    total = 0
    for stage, src in spec.stages.items():
        path = hub.fetch(src, stage, model="shapes")
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == src.sha256, stage
        total += len(data)
    assert total <= 40e6  # the limit for the bundled model


def test_weights_toml_has_the_defaults_bundle_shapes_writes(offline):
    """scripts/bundle_shapes.py rewrites the shapes block on every bundling: its defaults must be weights.toml's, or
    the next bundling would silently undo a default chosen since (as 32 decoder steps, 2026-12-03)."""
    import importlib.util
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bundle_shapes.py"
    spec = importlib.util.spec_from_file_location("bundle_shapes", path)
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    written = tomllib.loads(bundle.DEFAULTS)["models"]["shapes"]["defaults"]
    assert written == weights.registry()[1]["shapes"].defaults
    assert written["decoder_steps"] == 32 and written["image_candidates"] == 2


@pytest.mark.parametrize("prompt,color,shape", [("a large blue square", "blue", "square"),
                                                ("a large red circle", "red", "circle")])
def test_default_model_generates_offline_what_the_prompt_says(offline, prompt, color, shape):
    out = offline / "out"
    r = CliRunner().invoke(app, ["generate", prompt, "--seed", "0", "-n", "4", "--size", "256", "-o", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.stderr
    images = json.loads(r.stdout.strip().splitlines()[-1])["images"]
    assert len(images) == 4
    exact = 0
    for item in images:
        with Image.open(item["path"]) as im:
            assert im.size == (256, 256)
            found = [(o["color"], o["shape"]) for o in judge.detect(im)]
        # the trained model, not noise: the asked object in every image, and alone in at least 3 of 4
        # (measured 2026-12-01: exactly one object in 100% of 18 sized one-object prompts at 256 px)
        assert (color, shape) in found, (item["path"], found)
        exact += found == [(color, shape)]
    assert exact >= 3, exact


def test_bundled_1024_upsampler_keeps_a_true_renders_colours(offline):
    """The 256->1024 stage on a true 256 px render: close to the true 1024 px render, inside the objects and on
    the background (the eps upsampler bundled before 2026-12-02 was off by 65 and 98 levels)."""
    import numpy as np
    import torch

    from unclip_cli import options
    from unclip_cli.pipeline import cascade, images, stages as stages_mod
    from unclip_cli.shapes import world

    st, _ = stages_mod.open_model("shapes", "cpu", torch.float32, 1024)
    opts = options.resolve(st.spec.defaults, {}, 1024)
    scene = world.scene_from_caption("a large red circle above a small blue square", np.random.default_rng(0))
    out = cascade.upsample_stage(st, "sr1024", images.to_tensor(world.render(scene, 256))[None], 1024, opts,
                                 [torch.Generator().manual_seed(0)])
    result = images.to_pil(out)[0]
    got = np.asarray(result).astype(np.float32)
    truth = np.asarray(world.render(scene, 1024).convert("RGB")).astype(np.float32)
    background = np.abs(truth - truth[0, 0]).sum(-1) < 1
    err = np.abs(got - truth)
    assert err[background].mean() < 8, err[background].mean()
    assert err[~background].mean() < 30, err[~background].mean()
    found = [(o["color"], o["shape"]) for o in judge.detect(result)]
    assert sorted(found) == [("blue", "square"), ("red", "circle")], found

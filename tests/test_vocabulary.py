"""A model's vocabulary travels in its CLIP file; prompts with words it never saw get one warning line."""

import json

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import tiny
from unclip_cli.cli.app import app
from unclip_cli.weights import checkpoint, vocabulary

runner = CliRunner()


def test_words_are_lowercased_letters_in_any_script():
    assert vocabulary.words("A Red-circle, 2 SQUARES! don't") == ["a", "red", "circle", "squares", "don't"]
    assert vocabulary.words("ein Kreis über einem Quadrat") == ["ein", "kreis", "über", "einem", "quadrat"]
    assert vocabulary.words("猫 🐱 😀") == ["猫"]


def test_unknown_words_once_each_in_prompt_order():
    vocab = vocabulary.of_captions(["a red circle", "a blue square above a red circle"])
    assert vocab == ["a", "above", "blue", "circle", "red", "square"]
    assert vocabulary.unknown(vocab, "A hedgehog using a calculator, a Hedgehog") == ["hedgehog", "using", "calculator"]
    assert vocabulary.unknown(vocab, "a RED circle above a blue square") == []


def test_warning_is_one_line_naming_words_and_the_way_out():
    line = vocabulary.warning("shapes", ["a", "red"], [f"w{i}" for i in range(10)])
    assert "\n" not in line and '"w0"' in line and '"w7"' in line and '"w8"' not in line and "2 more" in line
    assert "it knows 2 words: a, red" in line and "unclip models pull karlo" in line


def test_bundled_model_carries_its_vocabulary():
    from unclip_cli.weights import registry

    spec = registry.resolve("shapes")
    from unclip_cli.weights import hub

    path = hub.fetch(spec.stages["clip"], "clip", model="shapes")
    vocab = vocabulary.read(path)
    assert {"circle", "square", "triangle", "red", "above", "left"} <= set(vocab) and "hedgehog" not in vocab


@pytest.fixture
def vocab_home(home):
    """The tiny model with a vocabulary in its CLIP file (as `unclip train clip` writes it)."""
    path = home / "clip.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    checkpoint.save(path, "clip", json.loads(meta["config"]), tensors,
                    extra={"vocabulary": vocabulary.of_captions(["a red circle", "a blue square"])})
    toml = home / "weights.toml"
    toml.write_text("\n".join(line.split(", sha256")[0] + " }" if line.startswith("clip =") else line
                              for line in toml.read_text().splitlines()) + "\n")
    return home


def test_generate_warns_about_unknown_words_once(vocab_home, tmp_path):
    r = runner.invoke(app, ["generate", "a hedgehog using a red calculator", "--size", "64", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if "never trained on" in line]
    assert len(lines) == 1 and '"hedgehog", "using", "calculator"' in lines[0] and "tiny" in lines[0]
    assert len(list((tmp_path / "o").glob("*.png"))) == 1  # a warning, not an error


def test_known_words_and_models_without_a_vocabulary_do_not_warn(vocab_home, home, tmp_path):
    r = runner.invoke(app, ["generate", "a Red circle", "--size", "64", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0 and "never trained on" not in r.stderr
    tiny.write_model(home, with_sha=False)
    r = runner.invoke(app, ["generate", "a hedgehog", "--size", "64", "-o", str(tmp_path / "o2")])
    assert r.exit_code == 0 and "never trained on" not in r.stderr


def test_trained_clip_stores_its_caption_vocabulary(tmp_path):
    from unclip_cli.shapes import world

    world.write_dataset(tmp_path / "data", 6, seed=3, size=64)
    captions = [p.read_text().strip() for p in sorted((tmp_path / "data").glob("*.txt"))]
    from test_train import TRAIN, write_toml
    from unclip_cli.train import loop

    cfg = write_toml(tmp_path / "clip.toml", {"model": tiny.CLIP, "data": {"folder": str(tmp_path / "data")},
                                              "train": {**TRAIN, "steps": 1}})
    out = loop.run("clip", cfg, tmp_path / "clip")
    assert vocabulary.read(out / "clip.safetensors") == vocabulary.of_captions(captions)

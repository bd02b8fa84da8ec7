"""--prompts-file, --guidelines and --batch-size on the tiny random model (fixture `home`), in process."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from unclip_cli.cli.app import app

FAST = ["--prior-steps", "1", "--decoder-steps", "2", "--size", "64"]


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def one_json(r) -> dict:
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def prompt_of(path) -> str:
    return json.loads(Image.open(path).info["unclip"])["prompt"]


def stderr_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- prompts files


def test_prompts_file_lines_seeds_and_a_bad_line(home, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# shapes\na red dot\n\n   \na blue dot\n" + "x" * 1001 + "\n  a green dot  \n")
    out = tmp_path / "out"
    r = invoke("generate", "--prompts-file", f, "-n", 2, "--seed", 10, *FAST, "-o", out, "--json")
    assert r.exit_code == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = stderr_lines(r)
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: {f} line 6: the line is 1001 characters long"), errors[0]
    assert "skipped (line 6)" in errors[1] and "6 images written" in errors[1], errors[1]
    res = one_json(r)
    # prompt k of the file (bad ones counted) uses seeds 10 + 2k, 10 + 2k + 1: the bad third prompt's are unused
    got = [(im["prompt"], im["seed"], im["line"]) for im in res["images"]]
    assert got == [("a red dot", 10, 2), ("a red dot", 11, 2), ("a blue dot", 12, 5), ("a blue dot", 13, 5),
                   ("a green dot", 16, 7), ("a green dot", 17, 7)]
    assert res["skipped"] == [{"line": 6, "reason": "the line is 1001 characters long (at most 1000)"}]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(im["path"]).name for im in res["images"])
    for im in res["images"]:
        assert prompt_of(im["path"]) == im["prompt"]
    # each image is the one a single run of its prompt and seed makes, whatever the chunks
    alone = invoke("generate", "a green dot", "--seed", 17, *FAST, "-o", tmp_path / "alone", "--json")
    assert alone.exit_code == 0, alone.stderr
    assert np.array_equal(pixels(one_json(alone)["images"][0]["path"]), pixels(res["images"][5]["path"]))
    chunked = invoke("generate", "--prompts-file", f, "-n", 2, "--seed", 10, *FAST, "--batch-size", 3,
                     "-o", tmp_path / "chunked", "--json")
    assert chunked.exit_code == 1
    again = one_json(chunked)["images"]
    assert [im["seed"] for im in again] == [10, 11, 12, 13, 16, 17]
    for a, b in zip(again, res["images"]):
        assert np.array_equal(pixels(a["path"]), pixels(b["path"]))


def test_prompts_from_standard_input_and_edit(home, tmp_path):
    from test_cli import mask_image, source_image

    src, (mask, _) = source_image(tmp_path / "src.png", 64), mask_image(tmp_path / "m.png", 64)
    r = invoke("edit", src, "--mask", mask, "--prompts-file", "-", "--seed", 3, *FAST, "-o", tmp_path / "out",
               "--json", input="a red dot\n# not this\na blue dot\n")
    assert r.exit_code == 0, r.stderr
    res = one_json(r)
    assert [(im["prompt"], im["seed"]) for im in res["images"]] == [("a red dot", 3), ("a blue dot", 4)]
    assert res["prompts_file"] == "standard input" and res["skipped"] == []


@pytest.mark.parametrize("content, needle", [
    (b"# only a comment\n\n", "holds no prompt"),
    (b"a red dot\xff\n", "line 1: the line is not UTF-8 text"),
    (b"a red\x00dot\n", "line 1: the line contains a control character"),
])
def test_prompts_file_with_nothing_to_run(home, tmp_path, content, needle):
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    r = invoke("generate", "--prompts-file", f, *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert stderr_lines(r) == [stderr_lines(r)[0]] and needle in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_prompt_and_prompts_file_together_or_neither(home, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a dot\n")
    both = invoke("generate", "a dot", "--prompts-file", f, *FAST, "-o", tmp_path / "out")
    assert both.exit_code == 1 and "not both" in both.stderr
    neither = invoke("generate", *FAST, "-o", tmp_path / "out")
    assert neither.exit_code == 1 and "no prompt" in neither.stderr
    missing = invoke("generate", "--prompts-file", tmp_path / "nope.txt", *FAST, "-o", tmp_path / "out")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- guidelines


@pytest.fixture
def guidelines(tmp_path) -> Path:
    g = tmp_path / "guidelines.txt"
    g.write_text("# terms, one a line\nred  dot\nTRIANGLE\n")
    return g


def test_guidelines_refuse_before_any_model_loads(home, tmp_path, guidelines, monkeypatch):
    from unclip_cli.pipeline import stages as stages_mod

    monkeypatch.setattr(stages_mod, "open_model", lambda *a, **k: pytest.fail("a model was opened"))
    out = tmp_path / "out"
    r = invoke("generate", "A  RED dot, big", "--guidelines", guidelines, *FAST, "-o", out, "--json")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert stderr_lines(r) == [f"error: the prompt is refused by the guidelines in {guidelines} (it contains 'red  dot')"]
    assert one_json(r) == {"images": [], "guidelines": {"file": str(guidelines), "allowed": [],
                                                        "refused": [{"prompt": "A  RED dot, big", "term": "red  dot"}]}}
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("prompt", ["a reddish dot", "triangles", "a red, dotted line"])
def test_guidelines_match_whole_words_only(home, tmp_path, guidelines, prompt):
    r = invoke("generate", prompt, "--guidelines", guidelines, *FAST, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    res = one_json(r)
    assert res["guidelines"] == {"file": str(guidelines), "allowed": [prompt], "refused": []}
    assert len(res["images"]) == 1


def test_guidelines_in_unclip_home_and_in_a_prompts_file(home, tmp_path, guidelines):
    (home / "guidelines.txt").write_text(guidelines.read_text())
    f = tmp_path / "p.txt"
    f.write_text("a blue dot\na green triangle\na yellow dot\n")
    r = invoke("generate", "--prompts-file", f, "--seed", 0, *FAST, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 1
    assert f"error: {f} line 2: refused by the guidelines in {home / 'guidelines.txt'} (it contains 'TRIANGLE')" in r.stderr
    res = one_json(r)
    assert [(im["prompt"], im["seed"]) for im in res["images"]] == [("a blue dot", 0), ("a yellow dot", 2)]
    assert res["guidelines"]["refused"] == [{"prompt": "a green triangle", "term": "TRIANGLE", "line": 2}]
    assert res["skipped"][0]["line"] == 2
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_guidelines_off_by_default(home, tmp_path):
    res = one_json(invoke("generate", "a red dot", *FAST, "-o", tmp_path / "out", "--json"))
    assert "guidelines" not in res and len(res["images"]) == 1


# --------------------------------------------------------------------------- chunks


def test_each_chunk_is_written_before_the_next_starts(home, tmp_path, monkeypatch):
    from unclip_cli.pipeline import cascade
    from unclip_cli.weights import checkpoint

    out = tmp_path / "out"
    seen, generate = [], cascade.generate
    monkeypatch.setattr(cascade, "generate", lambda *a, **k: seen.append(len(list(out.glob("*.png")))) or generate(*a, **k))
    loads, build = [], checkpoint.build
    monkeypatch.setattr(checkpoint, "build", lambda path, stage, *a, **k: loads.append(stage) or build(path, stage, *a, **k))
    r = invoke("generate", "a dot", "-n", 5, "--batch-size", 2, "--seed", 1, *FAST, "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert seen == [0, 2, 4]  # chunks of 2, 2, 1: each starts after the previous one's files are in place
    assert loads.count("decoder") == 3 and loads.count("prior") == 3  # stage files are read again per chunk
    assert one_json(r)["batch_size"] == 2


def test_batch_size_does_not_change_pixels(home, tmp_path):
    runs = {k: one_json(invoke("generate", "a dot", "-n", 3, "--seed", 4, *FAST, *k, "-o", tmp_path / str(len(k)),
                               "--json")) for k in ((), ("--batch-size", "1"))}
    default, ones = runs[()], runs[("--batch-size", "1")]
    assert default["batch_size"] == 8 and ones["batch_size"] == 1
    for a, b in zip(default["images"], ones["images"], strict=True):
        assert np.array_equal(pixels(a["path"]), pixels(b["path"]))


def test_batch_size_must_be_positive(home, tmp_path):
    r = invoke("generate", "a dot", "--batch-size", 0, *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 1 and "--batch-size must be at least 1, got 0" in r.stderr

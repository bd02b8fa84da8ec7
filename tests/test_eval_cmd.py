"""`unclip eval` and `unclip data shapes` through the command line."""

import json

from typer.testing import CliRunner

from unclip_cli.cli.app import app

runner = CliRunner()


def test_eval_ablation_writes_json_and_markdown(home, tmp_path):
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--per-prompt", "2", "--ablation", "--prior-steps", "2", "--decoder-steps", "2",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"caption", "text_embed", "prior"}
    assert res["size"] == 64 and res["per_prompt"] == 2
    for mode in res["modes"].values():
        assert mode["images"] == 2 * 30
        assert mode["all_prompts"]["overall"]["n"] == 60
        assert 0.0 <= mode["diversity"] and -1.0 <= mode["clip_score"] <= 1.0
    md = out.with_suffix(".md").read_text().splitlines()
    assert md[0].startswith("| conditioning") and md.index("") == 2 + 3 * 2
    # then the images by the first thing wrong: one row per mode and object count, each adding up to its images
    fails = md[md.index("") + 1:]
    assert fails[0].startswith("| conditioning | objects | right | count | binding") and len(fails) == 2 + 3 * 2
    split = res["modes"]["prior"]["all_prompts"]
    for line in fails[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert sum(map(int, cells[2:])) == split["one_object" if cells[1] == "1" else "two_objects"]["n"]
    # count is reported per prompt type, from the judge's verdicts
    cols = [c.strip() for c in md[0].strip("|").split("|")]
    prior_row = [c.strip() for c in md[md.index("") - 2].strip("|").split("|")]
    one = res["modes"]["prior"]["all_prompts"]["one_object"]["count"]
    two = res["modes"]["prior"]["all_prompts"]["two_objects"]["count"]
    assert prior_row[cols.index("count, 1 object")] == f"{100 * one:.1f}%"
    assert prior_row[cols.index("count, 2 objects")] == f"{100 * two:.1f}%"


def test_data_shapes_writes_pairs_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "ds"
    r = runner.invoke(app, ["data", "shapes", "--count", "5", "--out", str(out), "--seed", "1", "--size", "64"])
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.png"))) == 5 and len(list(out.glob("*.txt"))) == 5
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = runner.invoke(app, ["data", "shapes", "--count", "5", "--out", str(out), "--seed", "2"])
    assert r.exit_code == 1 and "error:" in r.stderr and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_eval_on_a_prompts_file(home, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# my own prompts\na red circle\n\na blue square above a green triangle\n")
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--per-prompt", "2", "--prior-steps", "2", "--decoder-steps", "2",
                            "--prompts", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["prompts"] == str(f) and res["modes"]["prior"]["images"] == 4
    split = res["modes"]["prior"]["all_prompts"]
    assert split["one_object"]["n"] == 2 and split["two_objects"]["n"] == 2
    # what went wrong, per prompt and in all: the tallies add up to the images and agree with the accuracies
    per = res["modes"]["prior"]["by_prompt"]
    assert [p["prompt"] for p in per] == ["a red circle", "a blue square above a green triangle"]
    for p, kind in zip(per, ("one_object", "two_objects")):
        assert p["images"] == 2 and p["unseen"] is False
        wrong = sum(p["failures"].values())
        assert wrong == round(2 * (1 - p["all"]))
        assert p["all"] == split[kind]["all"]
        tally = res["modes"]["prior"]["failures"][kind]
        assert sum(tally.values()) == 2 and tally["ok"] == 2 - wrong
        assert all(tally[f] == n for f, n in p["failures"].items())


def test_eval_refuses_a_prompt_outside_the_shapes_world(home, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\na hedgehog using a calculator\n")
    r = runner.invoke(app, ["eval", "--prompts", str(f), "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 1 and "line 2" in r.stderr and "hedgehog" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "e.json").exists()
    r = runner.invoke(app, ["eval", "--per-prompt", "0"])
    assert r.exit_code == 1 and "--per-prompt" in r.stderr

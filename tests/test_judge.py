"""Tests for the pixel-level shapes judge (unclip_cli.judge)."""

import numpy as np
import pytest
from PIL import Image

from unclip_cli.shapes import judge as J
from unclip_cli.shapes import world as S


def scenes(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng, **kw) for _ in range(n)]


def with_sizes(scene):
    """The scene's caption with every object's true size written out."""
    spec = S.canonical(scene.caption)
    for o, obj in zip(spec["objects"], scene.objects):
        o["size"] = obj.size
    return spec


def edited(spec, i=0, **changes):
    spec = {"objects": [dict(o) for o in spec["objects"]], "relation": spec["relation"]}
    spec["objects"][i].update(changes)
    return spec


@pytest.mark.parametrize("size", [64, 256])
def test_judge_accepts_true_captions(size):
    results = []
    for s in scenes(size, 300):
        r = J.judge(S.render(s, size), s.caption)
        assert r["n_objects"] == len(s.objects)
        results.append(r["all"])
    assert np.mean(results) >= 0.99


def test_judge_accepts_true_captions_1024_and_sized_two_object_captions():
    for s in scenes(11, 6, two_objects_prob=1.0):
        r = J.judge(S.render(s, 1024), S.make_caption(with_sizes(s)))
        assert r["all"] and r["size"] is True and r["relation"] is True, r


def test_judge_attributes_per_caption_kind():
    s1 = S.scene_from_caption("a large red circle", np.random.default_rng(0))
    r = J.judge(S.render(s1, 64), s1.caption)
    assert {k: r[k] for k in J.ATTRIBUTES} == {
        "color": True, "shape": True, "size": True, "relation": None, "count": True, "all": True
    }
    s2 = S.scene_from_caption("a red square above a blue circle", np.random.default_rng(0))
    r = J.judge(S.render(s2, 64), s2.caption)
    assert {k: r[k] for k in J.ATTRIBUTES} == {
        "color": True, "shape": True, "size": None, "relation": True, "count": True, "all": True
    }
    d = {(o["color"], o["shape"]) for o in r["detected"]}
    assert d == {("red", "square"), ("blue", "circle")}


def _wrong_color(s):
    used = {o.color for o in s.objects}
    return 0, {"color": next(c for c in S.COLORS if c not in used)}


def _wrong_shape(s):
    return 0, {"shape": next(h for h in S.SHAPES if h != s.objects[0].shape)}


def _wrong_size(s):
    i = len(s.objects) - 1
    return i, {"size": "small" if s.objects[i].size == "large" else "large"}


@pytest.mark.parametrize("attr,seed,wrong,still_right", [
    ("color", 1, _wrong_color, ("shape", "size", "count")),
    ("shape", 2, _wrong_shape, ("color", "size", "count")),
    ("size", 3, _wrong_size, ("color", "shape")),
])
def test_judge_rejects_one_wrong_attribute(attr, seed, wrong, still_right):
    for s in scenes(seed, 150):
        i, change = wrong(s)
        r = J.judge(S.render(s, 64), S.make_caption(edited(with_sizes(s), i, **change)))
        assert r[attr] is False and r["all"] is False, s.caption
        assert all(r[a] is True for a in still_right), (s.caption, r)


@pytest.mark.parametrize("size", [64, 256])
def test_judge_rejects_swapped_relation(size):
    for s in scenes(4, 100 if size == 64 else 40, two_objects_prob=1.0):
        spec = S.canonical(s.caption)
        swapped = dict(spec, relation=S.INVERSE[spec["relation"]])
        r = J.judge(S.render(s, size), S.make_caption(swapped))
        assert r["relation"] is False and r["all"] is False, s.caption
        assert r["color"] is True and r["shape"] is True and r["count"] is True
        # the same picture described from the other object's side is true
        a, b = spec["objects"]
        flipped = {"objects": [b, a], "relation": S.INVERSE[spec["relation"]]}
        assert J.judge(S.render(s, size), S.make_caption(flipped))["all"] is True


def test_judge_rejects_wrong_count():
    one = S.scene_from_caption("a small red circle", np.random.default_rng(0))
    r = J.judge(S.render(one, 64), "a red circle above a blue square")
    assert r["count"] is False and r["all"] is False
    assert r["relation"] is False  # nothing to relate
    two = S.scene_from_caption("a red circle left of a blue square", np.random.default_rng(0))
    r = J.judge(S.render(two, 64), "a small red circle")
    assert r["count"] is False and r["color"] is True and r["all"] is False


def test_judge_blank_and_other_images():
    r = J.judge(Image.new("RGB", (64, 64), S.BACKGROUND), "a small red circle")
    assert r["all"] is False and r["count"] is False and r["detected"] == []
    r = J.judge(Image.new("RGB", (64, 64), (0, 0, 0)), "a small red circle")
    assert r["all"] is False
    # RGBA / non-square inputs are accepted
    s = S.scene_from_caption("a large yellow triangle", np.random.default_rng(0))
    img = S.render(s, 128).convert("RGBA")
    assert J.judge(img, s.caption)["all"] is True
    wide = Image.new("RGB", (192, 128), S.BACKGROUND)
    wide.paste(S.render(s, 128), (0, 0))
    assert J.judge(wide, "a yellow triangle")["shape"] is True


def test_judge_tolerates_mild_noise():
    rng = np.random.default_rng(0)
    ok = []
    for s in scenes(5, 100):
        arr = np.asarray(S.render(s, 64), dtype=float) + rng.normal(0, 8, (64, 64, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        ok.append(J.judge(img, s.caption)["all"])
    assert np.mean(ok) >= 0.97


def test_judge_heldout_prompts_render_correctly():
    rng = np.random.default_rng(0)
    for prompt, _ in S.heldout_prompts():
        s = S.scene_from_caption(prompt, rng)
        assert J.judge(S.render(s, 64), prompt)["all"] is True, prompt


def test_judge_bad_caption():
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        J.judge(Image.new("RGB", (64, 64)), "a pink elephant")


def test_label_components():
    cls = np.array(
        [
            [1, 1, -1, 2],
            [-1, 1, -1, 2],
            [1, -1, 2, 2],
            [1, 1, -1, -1],
        ]
    )
    lab = J._label(cls)
    groups = {}
    for (y, x), v in np.ndenumerate(cls):
        if v >= 0:
            groups.setdefault(lab[y, x], set()).add((y, x))
    assert sorted(map(len, groups.values())) == [3, 3, 4]
    spiral = np.full((9, 9), -1)  # a long snake: one component
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = 1
    spiral[2:7, 6] = spiral[6, 2:7] = 1
    lab = J._label(spiral)
    assert len(np.unique(lab[spiral >= 0])) == 1


def test_summarize():
    results = [
        {"color": True, "shape": True, "size": True, "relation": None, "count": True, "all": True,
         "n_objects": 1},
        {"color": True, "shape": False, "size": False, "relation": None, "count": True,
         "all": False, "n_objects": 1},
        {"color": True, "shape": True, "size": None, "relation": False, "count": True,
         "all": False, "n_objects": 2},
        {"color": False, "shape": True, "size": None, "relation": True, "count": False,
         "all": False, "n_objects": 2},
    ]
    out = J.summarize(results)
    assert out["overall"]["n"] == 4
    assert out["overall"]["color"] == 0.75
    assert out["overall"]["size"] == 0.5  # None ignored
    assert out["overall"]["all"] == 0.25
    assert out["one_object"] == {
        "n": 2, "color": 1.0, "shape": 0.5, "size": 0.5, "relation": None, "count": 1.0, "all": 0.5
    }
    assert out["two_objects"]["relation"] == 0.5
    assert out["two_objects"]["size"] is None
    assert J.summarize([])["overall"]["all"] is None
    # real judgements summarize too
    s = scenes(0, 10)
    out = J.summarize([J.judge(S.render(x, 64), x.caption) for x in s])
    assert out["overall"]["n"] == 10


def test_failure_names_the_first_thing_wrong():
    rng = np.random.default_rng(3)
    two = S.render(S.scene_from_caption("a red square above a blue circle", rng), 128)
    assert J.judge(two, "a red square above a blue circle")["failure"] == "ok"
    # the caption's colours and shapes, bound the other way round
    assert J.judge(two, "a blue square above a red circle")["failure"] == "binding"
    assert J.judge(two, "a red circle above a blue square")["failure"] == "binding"
    # one colour that is not in the picture is a colour mistake, not a binding one
    assert J.judge(two, "a green square above a blue circle")["failure"] == "color"
    assert J.judge(two, "a red triangle above a blue circle")["failure"] == "shape"
    assert J.judge(two, "a red square below a blue circle")["failure"] == "relation"
    assert J.judge(two, "a red square")["failure"] == "count"
    one = S.render(S.scene_from_caption("a large green triangle", rng), 128)
    assert J.judge(one, "a large green triangle")["failure"] == "ok"
    assert J.judge(one, "a large green circle")["failure"] == "shape"
    assert J.judge(one, "a small green triangle")["failure"] == "size"
    assert J.judge(one, "a green triangle left of a red circle")["failure"] == "count"

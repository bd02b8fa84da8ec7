"""Tests for the procedural shapes world (unclip_cli.shapes)."""

import io

import numpy as np
import pytest
from PIL import Image

from unclip_cli.shapes import world as S
from unclip_cli.train import data


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scenes(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [S.sample_scene(rng, **kw) for _ in range(n)]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different():
    a = [png_bytes(S.render(s, 64)) for s in scenes(3, 20)]
    b = [png_bytes(S.render(s, 64)) for s in scenes(3, 20)]
    c = [png_bytes(S.render(s, 64)) for s in scenes(4, 20)]
    assert a == b
    assert a != c
    assert [s.caption for s in scenes(3, 20)] == [s.caption for s in scenes(3, 20)]


def test_sampling_does_not_touch_global_rng():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    scenes(1, 10)
    assert np.random.random() == before


def test_scene_from_caption_deterministic():
    cap = "a red square above a blue circle"
    s1 = S.scene_from_caption(cap, np.random.default_rng(5))
    s2 = S.scene_from_caption(cap, np.random.default_rng(5))
    s3 = S.scene_from_caption(cap, np.random.default_rng(6))
    assert s1 == s2 and s1 != s3
    assert s1.caption == cap


# --------------------------------------------------------------------------- captions


def test_sampled_captions_round_trip_and_match_scene():
    for s in scenes(0, 400):
        spec = S.canonical(s.caption)
        assert S.canonical(S.make_caption(spec)) == spec
        assert spec["relation"] == s.relation
        assert [(o["color"], o["shape"]) for o in spec["objects"]] == [
            (o.color, o.shape) for o in s.objects
        ]
        if len(s.objects) == 1:  # one object: size always given
            assert spec["objects"][0]["size"] == s.objects[0].size
            assert s.caption == f"a {s.objects[0].size} {s.objects[0].color} {s.objects[0].shape}"
        else:  # two objects: sizes never given, colours differ
            assert all(o["size"] is None for o in spec["objects"])
            assert s.objects[0].color != s.objects[1].color


def test_canonical_examples():
    assert S.canonical("a small red circle") == {
        "objects": [{"color": "red", "shape": "circle", "size": "small"}],
        "relation": None,
    }
    assert S.canonical("a red square above a blue circle") == {
        "objects": [
            {"color": "red", "shape": "square", "size": None},
            {"color": "blue", "shape": "circle", "size": None},
        ],
        "relation": "above",
    }
    spec = S.canonical("A large Orange triangle to the RIGHT of  a small green square.")
    assert spec["objects"][0] == {"color": "orange", "shape": "triangle", "size": "large"}
    assert spec["objects"][1] == {"color": "green", "shape": "square", "size": "small"}
    assert spec["relation"] == "right of"
    assert S.make_caption(S.canonical("an orange circle")) == "an orange circle"


@pytest.mark.parametrize(
    "rel,phrases",
    [
        ("above", ["above", "on top of"]),
        ("below", ["below", "beneath", "under"]),
        ("left of", ["left of", "to the left of"]),
        ("right of", ["right of", "to the right of"]),
    ],
)
def test_paraphrases_parse_to_same_spec(rel, phrases):
    specs = [S.canonical(f"a red square {p} a blue circle") for p in phrases]
    assert all(sp == specs[0] for sp in specs)
    assert specs[0]["relation"] == rel
    for p in phrases:  # and make_caption writes each of them back
        spec = S.canonical(f"a large red square {p} a blue circle")
        assert S.make_caption(spec, p) == f"a large red square {p} a blue circle"


def test_paraphrases_are_sampled():
    caps = [s.caption for s in scenes(1, 400, two_objects_prob=1.0)]
    for phrase in ("on top of", "beneath", "under", " left of", " right of"):
        assert any(phrase in c and "to the" + phrase not in c for c in caps), phrase
    assert not any(" on top of " in s.caption for s in scenes(1, 200, paraphrase_prob=0.0))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a pink circle",
        "a red hexagon",
        "red circle",
        "a circle",
        "a red circle above",
        "a huge red circle",
        "two red circles",
        "a red circle next to a blue square",
        "a red circle above a blue square above a green triangle",
    ],
)
def test_canonical_rejects_outside_grammar(bad):
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        S.canonical(bad)


def test_canonical_error_names_unknown_word():
    with pytest.raises(ValueError, match="pink"):
        S.canonical("a pink circle")


def test_make_caption_rejects_wrong_phrase():
    with pytest.raises(ValueError):
        S.make_caption(S.canonical("a red circle above a blue square"), "under")


# --------------------------------------------------------------------------- geometry


def boxes(scene):
    return [
        (x - e / 2, y - e / 2, x + e / 2, y + e / 2)
        for (x, y), e in zip(scene.positions, scene.extents)
    ]


def check_geometry(scene):
    for (x0, y0, x1, y1), o, e in zip(boxes(scene), scene.objects, scene.extents):
        assert S.MARGIN - 1e-9 <= min(x0, y0) and max(x1, y1) <= 1 - S.MARGIN + 1e-9
        lo, hi = S.SIZE_EXTENT[o.size] * 0.9, S.SIZE_EXTENT[o.size] * 1.1
        assert lo - 1e-9 <= e <= hi + 1e-9
    if scene.relation is None:
        assert len(scene.objects) == 1
        return
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes(scene)
    (ax, ay), (bx, by) = scene.positions
    gap = {
        "above": by0 - ay1,
        "below": ay0 - by1,
        "left of": bx0 - ax1,
        "right of": ax0 - bx1,
    }[scene.relation]
    assert gap >= S.GAP - 1e-9  # the boxes are separated along the relation's axis
    primary, secondary = (abs(by - ay), abs(bx - ax))
    if scene.relation in ("left of", "right of"):
        primary, secondary = secondary, primary
    assert secondary <= primary / 2 + 1e-9  # the relation is clearly the dominant one


def test_relations_are_geometrically_true():
    for s in scenes(2, 500, two_objects_prob=0.7):
        check_geometry(s)


def test_scene_from_caption_satisfies_caption():
    rng = np.random.default_rng(0)
    for rel, phrases in S.RELATION_PHRASES.items():
        for p in phrases:
            for sizes in (("large", "large"), ("small", "large"), (None, None)):
                a = f"a {sizes[0] or ''} red circle".replace("  ", " ")
                b = f"a {sizes[1] or ''} blue triangle".replace("  ", " ")
                for _ in range(10):
                    s = S.scene_from_caption(f"{a} {p} {b}", rng)
                    assert s.relation == rel
                    if sizes[0]:
                        assert [o.size for o in s.objects] == list(sizes)
                    check_geometry(s)
    s = S.scene_from_caption("a large green circle", rng)
    assert s.objects == (S.Obj("green", "circle", "large"),)


# --------------------------------------------------------------------------- held out


def test_heldout_never_sampled():
    pairs = set(S.HELDOUT_COMBOS)
    triples = set(S.HELDOUT_RELATIONS) | {
        (b, S.INVERSE[r], a) for a, r, b in S.HELDOUT_RELATIONS
    }
    for s in scenes(9, 3000, exclude=S.HELDOUT):
        assert not {(o.color, o.shape) for o in s.objects} & pairs
        if s.relation:
            assert (s.objects[0].color, s.relation, s.objects[1].color) not in triples
        assert not S.uses_heldout(s.caption)
    for s in scenes(9, 1000, exclude=S.HELDOUT_COMBOS):
        assert not {(o.color, o.shape) for o in s.objects} & pairs
    # without exclusion they do occur (so the exclusion is what removes them)
    seen = {(o.color, o.shape) for s in scenes(9, 1000) for o in s.objects}
    assert pairs <= seen


def test_exclude_validated():
    with pytest.raises(ValueError):
        S.sample_scene(np.random.default_rng(0), exclude=[("pink", "circle")])


def test_heldout_prompts():
    prompts = S.heldout_prompts()
    assert 20 <= len(prompts) <= 30
    assert len({p for p, _ in prompts}) == len(prompts)
    for prompt, unseen in prompts:
        spec = S.canonical(prompt)
        assert S.uses_heldout(spec) == unseen, prompt
    unseen = [S.canonical(p) for p, u in prompts if u]
    seen = [p for p, u in prompts if not u]
    assert len(seen) >= 4
    assert any(len(s["objects"]) == 1 for s in unseen)
    assert any(len(s["objects"]) == 2 for s in unseen)
    assert any(  # some are unseen only through their colour/relation combination
        not any((o["color"], o["shape"]) in S.HELDOUT_COMBOS for o in s["objects"])
        for s in unseen
    )


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_render_sizes(size):
    s = scenes(5, 1, two_objects_prob=1.0)[0]
    img = S.render(s, size)
    assert img.mode == "RGB" and img.size == (size, size)
    arr = np.asarray(img)
    assert tuple(arr[0, 0]) == S.BACKGROUND
    # both objects' colours are present (as fully covered pixels)
    for o in s.objects:
        assert (arr == S.COLORS[o.color]).all(-1).sum() > 0.005 * size * size


def test_render_same_scene_at_any_resolution():
    for s in scenes(6, 10):
        small = np.asarray(S.render(s, 64), dtype=float)
        big = np.asarray(S.render(s, 256).reduce(4), dtype=float)
        assert np.abs(small - big).mean() < 1.0


def test_render_antialiased():
    s = S.scene_from_caption("a large red circle", np.random.default_rng(0))
    arr = np.asarray(S.render(s, 64)).reshape(-1, 3)
    pure = (arr == S.BACKGROUND).all(-1) | (arr == S.COLORS["red"]).all(-1)
    assert (~pure).sum() > 10  # border pixels are blends


# --------------------------------------------------------------------------- datasets


def test_write_dataset_layout(tmp_path):
    out = S.write_dataset(tmp_path / "ds", count=12, seed=1, size=64)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i:08d}.{ext}" for i in range(12) for ext in ("png", "txt")])
    assert not list(tmp_path.glob("*.tmp-*"))
    for i in range(12):
        text = (out / f"{i:08d}.txt").read_text()
        assert text.endswith("\n") and text.count("\n") == 1
        S.canonical(text)
        with Image.open(out / f"{i:08d}.png") as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    # same seed: identical bytes; the captions are those of sample_scene with the held-out excluded
    again = S.write_dataset(tmp_path / "ds2", count=12, seed=1, size=64)
    for p in out.iterdir():
        assert p.read_bytes() == (again / p.name).read_bytes()
    rng = np.random.default_rng(1)
    expected = [S.sample_scene(rng, exclude=S.HELDOUT).caption for _ in range(12)]
    assert [(out / f"{i:08d}.txt").read_text().strip() for i in range(12)] == expected
    other = S.write_dataset(tmp_path / "ds3", count=12, seed=2, size=64)
    assert (other / "00000000.png").read_bytes() != (out / "00000000.png").read_bytes() or (
        (other / "00000001.png").read_bytes() != (out / "00000001.png").read_bytes()
    )


def test_write_dataset_refuses_non_empty(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        S.write_dataset(out, count=2, seed=0, size=64)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # an existing empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    S.write_dataset(empty, count=2, seed=0, size=64)
    assert len(list(empty.iterdir())) == 4


def test_write_dataset_leaves_nothing_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = S.render

    def flaky(scene, size=256):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(scene, size)

    monkeypatch.setattr(S, "render", flaky)
    with pytest.raises(RuntimeError):
        S.write_dataset(tmp_path / "ds", count=5, seed=0, size=64)
    assert list(tmp_path.iterdir()) == []


def test_load_folder(tmp_path):
    out = S.write_dataset(tmp_path / "ds", count=5, seed=0, size=64)
    pairs = data.load_folder(out)
    assert [p.name for p, _ in pairs] == [f"{i:08d}.png" for i in range(5)]
    assert all(c == (out / p.with_suffix(".txt").name).read_text().strip() for p, c in pairs)
    # other formats, unsorted creation, non-image files ignored
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    img = Image.new("RGB", (8, 8), S.BACKGROUND)
    for name, fmt in (("b.jpg", "JPEG"), ("a.webp", "WEBP"), ("c.JPEG", "JPEG"), ("d.png", "PNG")):
        img.save(mixed / name, format=fmt)
        (mixed / name).with_suffix(".txt").write_text(f"a small red circle {name}\n")
    (mixed / "notes.json").write_text("{}")
    pairs = data.load_folder(mixed)
    assert [p.name for p, _ in pairs] == ["a.webp", "b.jpg", "c.JPEG", "d.png"]
    assert pairs[0][1] == "a small red circle a.webp"


def test_load_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        data.load_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.load_folder(tmp_path / "empty")
    d = tmp_path / "nocap"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "x.png")
    with pytest.raises(ValueError, match="caption file .*x.txt is missing"):
        data.load_folder(d)
    (d / "x.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        data.load_folder(d)


def test_hard_negative_changes_exactly_one_binding():
    rng = np.random.default_rng(0)
    kinds = set()
    for scene in scenes(5, 300):
        neg = S.hard_negative(scene.caption, rng)
        a, b = S.canonical(scene.caption), S.canonical(neg)
        assert neg != scene.caption and len(a["objects"]) == len(b["objects"])
        strip = lambda spec: [(o["color"], o["shape"]) for o in spec["objects"]]  # noqa: E731
        if a["relation"] is None:
            (c1, s1), (c2, s2) = strip(a)[0], strip(b)[0]
            assert (c1 != c2) + (s1 != s2) == 1
            kinds.add("one")
        elif a["relation"] != b["relation"]:
            assert b["relation"] == S.INVERSE[a["relation"]] and strip(a) == strip(b)
            kinds.add("relation")
        else:  # colours or shapes swapped between the two objects: the same multiset, other binding
            assert strip(a) != strip(b)
            assert sorted(o["color"] for o in a["objects"]) == sorted(o["color"] for o in b["objects"])
            assert sorted(o["shape"] for o in a["objects"]) == sorted(o["shape"] for o in b["objects"])
            kinds.add("swap")
    assert kinds == {"one", "relation", "swap"}
    assert S.hard_negative("a photo of a dog", rng) is None


def test_hard_negatives_are_all_other_pictures_in_the_captions_style():
    rng = np.random.default_rng(1)
    strip = lambda spec: [(o["color"], o["shape"]) for o in spec["objects"]]  # noqa: E731
    seen_swap = False
    for scene in scenes(7, 300, paraphrase_prob=1.0):
        a = S.canonical(scene.caption)
        negs = S.hard_negatives(scene.caption, rng)
        assert len(set(negs)) == len(negs) and scene.caption not in negs
        if a["relation"] is None:
            assert len(negs) == 1 and S.canonical(negs[0])["relation"] is None
            continue
        inv, reordered, *swap = [S.canonical(n) for n in negs]
        assert inv["relation"] == S.INVERSE[a["relation"]] and strip(inv) == strip(a)
        assert reordered["relation"] == a["relation"] and strip(reordered) == strip(a)[::-1]
        # the reordered caption keeps the caption's relation phrase (a paraphrase stays a paraphrase)
        phrase = scene.caption[len(S.make_caption({"objects": [dict(a["objects"][0])], "relation": None})) + 1:]
        phrase = phrase[: phrase.rindex(" a")]
        assert f" {phrase} a" in negs[1]
        both_differ = all(x != y for x, y in zip(*strip(a)))
        assert len(swap) == int(both_differ)
        if swap:
            seen_swap = True
            assert swap[0]["relation"] == a["relation"] and strip(swap[0]) not in (strip(a), strip(a)[::-1])
    assert seen_swap
    assert S.hard_negatives("a red square above a red square", rng) == []  # the inverse is the same picture
    assert S.hard_negatives("a photo of a dog", rng) == []


def test_layout_labels_describe_the_picture_not_the_wording():
    same = ["a red square above a blue circle", "a blue circle below a red square", "a blue circle under a red square",
            "a red square on top of a blue circle"]
    labels = {S.layout_labels(c) for c in same}
    assert labels == {(1, list(S.COLORS).index("red"), S.SHAPES.index("square"),
                       list(S.COLORS).index("blue"), S.SHAPES.index("circle"))}
    left = S.layout_labels("a green triangle to the right of a yellow square")
    assert left == S.layout_labels("a yellow square left of a green triangle") and left[0] == 2
    assert left[1] == list(S.COLORS).index("yellow")  # the left object comes first
    assert S.layout_labels("a red square above a blue circle") != S.layout_labels("a red square below a blue circle")
    one = S.layout_labels("a small purple triangle")
    assert one == (0, list(S.COLORS).index("purple"), S.SHAPES.index("triangle"), len(S.COLORS), len(S.SHAPES))
    assert S.layout_labels("a photo of a dog") is None
    for scene in scenes(3, 100):
        assert all(0 <= v < n for v, n in zip(S.layout_labels(scene.caption), S.LAYOUT_CLASSES))


def test_size_word_prob_drops_the_size_from_some_one_object_captions():
    full = scenes(5, 200)
    assert all(len(s.objects) == 2 or S.canonical(s.caption)["objects"][0]["size"] for s in full)
    assert [s.caption for s in full] == [s.caption for s in scenes(5, 200, size_word_prob=1.0)]  # old datasets kept
    mixed = [s for s in scenes(5, 400, size_word_prob=0.5) if len(s.objects) == 1]
    bare = [s for s in mixed if S.canonical(s.caption)["objects"][0]["size"] is None]
    assert 0.3 < len(bare) / len(mixed) < 0.7
    for s in bare:  # the caption still describes the scene (the size is just unsaid)
        o = S.canonical(s.caption)["objects"][0]
        assert (o["color"], o["shape"]) == (s.objects[0].color, s.objects[0].shape)
    assert not any(S.canonical(s.caption)["objects"][0]["size"] for s in scenes(5, 50, size_word_prob=0.0)
                   if len(s.objects) == 1)

"""A procedural captioned-image world: one or two solid shapes on a plain background.

Used to train and evaluate tiny unCLIP models on a laptop. Everything is deterministic for
a seed (only ``numpy.random.default_rng`` generators are used, never global RNG state).

Caption grammar (case, extra spaces and a trailing "." are ignored by :func:`canonical`)::

    caption  := object | object RELATION object
    object   := ("a" | "an") [SIZE] COLOR SHAPE
    SIZE     := "small" | "large"
    COLOR    := "red" | "green" | "blue" | "yellow" | "purple" | "orange"
    SHAPE    := "circle" | "square" | "triangle"
    RELATION := "above" | "on top of"                  -> above
              | "below" | "beneath" | "under"          -> below
              | "to the left of" | "left of"           -> left of
              | "to the right of" | "right of"         -> right of

"A above B" reads as "A is above B". Captions written by :func:`sample_scene` always give the
size for one object ("a small red circle") and never for two ("a red square above a blue
circle"; the sizes in the picture are then random), use "an" before "orange", and use the
first phrase of each relation ("above", "below", "to the left of", "to the right of") except
with probability ``paraphrase_prob``, when one of the others is drawn.

Geometry: a scene lives in [0, 1] units (x right, y down), so it renders identically at any
resolution. An object's extent (circle diameter, square side, triangle base and height) is
~0.18 of the image width for "small" and ~0.36 for "large" (+-10% jitter). Positions are
bounding-box centres. For two objects "A above B" means the boxes are separated vertically
by a gap of at least ``GAP`` and the horizontal offset of the centres is at most half the
vertical one (likewise for the other relations); objects never overlap.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (235, 235, 235)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIZE_EXTENT = {"small": 0.18, "large": 0.36}  # fraction of the image width
SIZE_JITTER = 0.10  # extents are drawn from extent * U(1 - j, 1 + j)
RELATIONS = ("above", "below", "left of", "right of")
# Accepted phrases per relation; the first is what sample_scene writes by default.
RELATION_PHRASES = {
    "above": ("above", "on top of"),
    "below": ("below", "beneath", "under"),
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
}
INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
MARGIN = 0.02  # objects keep this far (in image widths) from the border
GAP = 0.05  # minimum gap between the boxes of two objects along the relation's axis
SUPERSAMPLE = 4

# (color, shape) pairs that never appear in training data.
HELDOUT_COMBOS = (("purple", "triangle"), ("orange", "square"), ("green", "circle"))
# (color A, relation, color B): "a <A> ... <relation> a <B> ..." in either orientation
# ("yellow above blue" is the same picture as "blue below yellow") never appears in training.
HELDOUT_RELATIONS = (("yellow", "above", "blue"), ("red", "left of", "purple"))
HELDOUT = HELDOUT_COMBOS + HELDOUT_RELATIONS


@dataclass(frozen=True)
class Obj:
    """One object of a scene; size is always concrete ("small"/"large") in a Scene."""

    color: str
    shape: str
    size: str


@dataclass(frozen=True)
class Scene:
    """A scene: objects, their box centres and extents in [0,1] units, relation, caption."""

    objects: tuple[Obj, ...]
    positions: tuple[tuple[float, float], ...]
    extents: tuple[float, ...]
    relation: str | None
    caption: str

    @property
    def spec(self) -> dict:
        """The canonical spec of this scene's caption."""
        return canonical(self.caption)


# ----------------------------------------------------------------------------- captions

_PHRASE_TO_REL = {p: r for r, ps in RELATION_PHRASES.items() for p in ps}
_OBJ_RE = r"an? (?:({sizes}) )?({colors}) ({shapes})".format(
    sizes="|".join(SIZES), colors="|".join(COLORS), shapes="|".join(SHAPES)
)
_REL_RE = "|".join(sorted(map(re.escape, _PHRASE_TO_REL), key=len, reverse=True))
_CAPTION_RE = re.compile(rf"^{_OBJ_RE}(?: ({_REL_RE}) {_OBJ_RE})?$")
_VOCAB = {"a", "an", *SIZES, *COLORS, *SHAPES, *" ".join(_PHRASE_TO_REL).split()}


def _normalize(caption: str) -> str:
    return " ".join(str(caption).lower().replace(",", " ").split()).rstrip(".").strip()


def canonical(caption: str) -> dict:
    """Parse a caption of the grammar into {"objects": [{color, shape, size|None}], "relation"}."""
    text = _normalize(caption)
    m = _CAPTION_RE.match(text)
    if m is None:
        unknown = [w for w in text.split() if w not in _VOCAB]
        why = f"unknown word(s) {unknown}" if unknown else "words are in the wrong order"
        raise ValueError(
            f"caption {caption!r} is outside the shapes grammar ({why}); expected e.g. "
            f"'a small red circle' or 'a red square above a blue circle' with colours "
            f"{list(COLORS)}, shapes {list(SHAPES)}, sizes {list(SIZES)} and relations "
            f"{sorted(_PHRASE_TO_REL)}"
        )
    s1, c1, h1, rel, s2, c2, h2 = m.groups()
    objects = [{"color": c1, "shape": h1, "size": s1}]
    if rel is not None:
        objects.append({"color": c2, "shape": h2, "size": s2})
    return {"objects": objects, "relation": _PHRASE_TO_REL[rel] if rel else None}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(spec: dict, phrase: str | None = None) -> str:
    """Write a caption for a spec (sizes included where not None); inverse of canonical()."""
    words = []
    for obj in spec["objects"]:
        parts = [p for p in (obj.get("size"), obj["color"], obj["shape"]) if p]
        words.append(f"{_article(parts[0])} {' '.join(parts)}")
    if len(words) == 1:
        return words[0]
    rel = spec["relation"]
    phrase = phrase or RELATION_PHRASES[rel][0]
    if _PHRASE_TO_REL.get(phrase) != rel:
        raise ValueError(f"phrase {phrase!r} does not mean {rel!r}")
    return f"{words[0]} {phrase} {words[1]}"


def hard_negative(caption: str, rng) -> str | None:
    """A caption that differs from `caption` in one attribute binding, for contrastive training.

    Two objects: the inverse relation with the objects in the same order, or the two colours (or
    shapes) swapped between the objects. One object: another colour or shape. None for captions
    outside the grammar. Without such negatives a batch rarely holds two captions that differ only
    in the relation, and CLIP learns to ignore word order (as the paper's CLIP does).
    """
    try:
        spec = canonical(caption)
    except ValueError:
        return None
    rng = _as_rng(rng)
    objs = [dict(o) for o in spec["objects"]]
    if len(objs) == 1:
        key = _pick(rng, ("color", "shape"))
        objs[0][key] = _pick(rng, [v for v in (COLORS if key == "color" else SHAPES) if v != objs[0][key]])
        return make_caption({"objects": objs, "relation": None})
    options = ["relation"] + [k for k in ("color", "shape") if objs[0][k] != objs[1][k]]
    key = _pick(rng, options)
    relation = spec["relation"]
    if key == "relation":
        return make_caption({"objects": objs, "relation": INVERSE[relation]})
    return make_caption({"objects": _swapped(objs, key), "relation": relation})


def _swapped(objs: list[dict], key: str) -> list[dict]:
    """Two objects with their `key` (colour or shape) exchanged."""
    out = [dict(o) for o in objs]
    out[0][key], out[1][key] = objs[1][key], objs[0][key]
    return out


def hard_negatives(caption: str, rng) -> list[str]:
    """Every kind of hard negative of `caption` at once, the relation's wording kept in its style.

    Two objects: the inverse relation (said with any of its phrases), the two objects in the other order
    (the same phrase: "B rel A" is the other picture), and the colours or shapes swapped between the
    objects (one of them, where they differ). One object: another colour or shape. Empty for captions
    outside the grammar. With one relation negative per two-object caption in every batch, the relation
    word and the order of the objects carry as much of the loss as colour and shape do.
    """
    try:
        spec = canonical(caption)
    except ValueError:
        return []
    rng = _as_rng(rng)
    objs = [dict(o) for o in spec["objects"]]
    if len(objs) == 1:
        return [hard_negative(caption, rng)]
    if (objs[0]["color"], objs[0]["shape"]) == (objs[1]["color"], objs[1]["shape"]):
        return []  # "A above A" is also "A below A": no relation or swap changes the picture
    relation = spec["relation"]
    phrase = _CAPTION_RE.match(_normalize(caption)).group(4)
    inverse = INVERSE[relation]
    out = [make_caption({"objects": objs, "relation": inverse}, _pick(rng, RELATION_PHRASES[inverse])),
           make_caption({"objects": objs[::-1], "relation": relation}, phrase)]
    keys = [k for k in ("color", "shape") if objs[0][k] != objs[1][k]]
    if len(keys) == 2:  # with one attribute differing, swapping it is the reordered caption again
        out.append(make_caption({"objects": _swapped(objs, _pick(rng, keys)), "relation": relation}, phrase))
    return [c for c in out if canonical(c) != spec]


LAYOUT_CLASSES = (3, len(COLORS), len(SHAPES), len(COLORS) + 1, len(SHAPES) + 1)


def layout_labels(caption: str) -> tuple[int, int, int, int, int] | None:
    """What a picture of `caption` shows, as class indices, whichever way the caption puts it: the axis
    (0 one object, 1 stacked, 2 side by side), the colour and shape of the first object (the top or left one,
    or the only one) and of the second (len(COLORS) and len(SHAPES) for none). "A above B" and "B below A"
    get the same labels. None outside the grammar. Targets of CLIP's auxiliary layout head."""
    try:
        spec = canonical(caption)
    except ValueError:
        return None
    objs = spec["objects"]
    colors, shapes = list(COLORS), list(SHAPES)
    if len(objs) == 1:
        return 0, colors.index(objs[0]["color"]), shapes.index(objs[0]["shape"]), len(colors), len(shapes)
    first, second = objs if spec["relation"] in ("above", "left of") else objs[::-1]
    axis = 1 if spec["relation"] in ("above", "below") else 2
    return (axis, colors.index(first["color"]), shapes.index(first["shape"]),
            colors.index(second["color"]), shapes.index(second["shape"]))


# ----------------------------------------------------------------------------- sampling


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _split_exclude(exclude) -> tuple[set, set]:
    pairs, triples = set(), set()
    for item in exclude or ():
        item = tuple(item)
        if len(item) == 2 and item[0] in COLORS and item[1] in SHAPES:
            pairs.add(item)
        elif len(item) == 3 and item[0] in COLORS and item[1] in RELATIONS and item[2] in COLORS:
            triples.add(item)
            triples.add((item[2], INVERSE[item[1]], item[0]))
        else:
            raise ValueError(
                f"exclude entry {item!r} is neither (color, shape) nor (color, relation, color)"
            )
    return pairs, triples


def uses_heldout(caption: str | dict, heldout=HELDOUT) -> bool:
    """True if a caption (or spec) uses a held-out (color, shape) or (color, relation, color)."""
    spec = canonical(caption) if isinstance(caption, str) else caption
    pairs, triples = _split_exclude(heldout)
    objs = spec["objects"]
    if any((o["color"], o["shape"]) in pairs for o in objs):
        return True
    rel = spec["relation"]
    return rel is not None and (objs[0]["color"], rel, objs[1]["color"]) in triples


def _extent(rng: np.random.Generator, size: str) -> float:
    return float(SIZE_EXTENT[size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))


def _layout(rng: np.random.Generator, extents: list[float], relation: str | None):
    """Random box centres for 1 object, or 2 objects such that "obj0 <relation> obj1" holds."""
    lo = [MARGIN + e / 2 for e in extents]
    hi = [1 - MARGIN - e / 2 for e in extents]
    if relation is None:
        return [(float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[0], hi[0])))]
    # The object with the smaller coordinate along the relation's axis is "first".
    first, second = (0, 1) if relation in ("above", "left of") else (1, 0)
    dmin = (extents[0] + extents[1]) / 2 + GAP
    p_first = rng.uniform(lo[first], min(hi[first], hi[second] - dmin))
    p_second = rng.uniform(max(lo[second], p_first + dmin), hi[second])
    d = p_second - p_first
    s_first = rng.uniform(max(lo[0], lo[1]), min(hi[0], hi[1]))
    s_second = rng.uniform(max(lo[second], s_first - d / 2), min(hi[second], s_first + d / 2))
    prim, sec = {first: p_first, second: p_second}, {first: s_first, second: s_second}
    if relation in ("above", "below"):  # primary axis is y
        return [(float(sec[i]), float(prim[i])) for i in (0, 1)]
    return [(float(prim[i]), float(sec[i])) for i in (0, 1)]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng, *, two_objects_prob: float = 0.5, exclude=None, paraphrase_prob: float = 0.25, size_word_prob: float = 1.0
) -> Scene:
    """Draw a random scene (objects, sizes, layout, caption), avoiding the `exclude` combos.

    A one-object caption names the size ("a small red circle") with probability `size_word_prob`, else not
    ("a red circle"); at 1.0 no extra random number is drawn, so datasets made before the option stay the same.
    """
    rng = _as_rng(rng)
    pairs, triples = _split_exclude(exclude)
    allowed = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pairs]
    if not allowed:
        raise ValueError("exclude leaves no (color, shape) pair to draw")
    n = 2 if rng.random() < two_objects_prob else 1
    for _ in range(1000):
        combos = [_pick(rng, allowed) for _ in range(n)]
        relation = _pick(rng, RELATIONS) if n == 2 else None
        if n == 2 and (combos[0][0] == combos[1][0]
                       or (combos[0][0], relation, combos[1][0]) in triples):
            continue  # the two objects of a scene have different colours
        break
    else:
        raise ValueError("exclude leaves no two-object scene to draw")
    sizes = [_pick(rng, SIZES) for _ in range(n)]
    extents = [_extent(rng, s) for s in sizes]
    positions = _layout(rng, extents, relation)
    objects = tuple(Obj(c, s, z) for (c, s), z in zip(combos, sizes))
    says_size = size_word_prob >= 1.0 or rng.random() < size_word_prob
    spec = {
        "objects": [
            {"color": o.color, "shape": o.shape, "size": o.size if n == 1 and says_size else None}
            for o in objects
        ],
        "relation": relation,
    }
    phrase = None
    if relation is not None and rng.random() < paraphrase_prob:
        phrase = _pick(rng, RELATION_PHRASES[relation][1:])
    return Scene(objects, tuple(positions), tuple(extents), relation, make_caption(spec, phrase))


def scene_from_caption(caption: str, rng) -> Scene:
    """A random scene that satisfies `caption` (unspecified sizes drawn at random)."""
    rng = _as_rng(rng)
    spec = canonical(caption)
    sizes = [o["size"] or _pick(rng, SIZES) for o in spec["objects"]]
    extents = [_extent(rng, s) for s in sizes]
    positions = _layout(rng, extents, spec["relation"])
    objects = tuple(Obj(o["color"], o["shape"], z) for o, z in zip(spec["objects"], sizes))
    return Scene(objects, tuple(positions), tuple(extents), spec["relation"], _normalize(caption))


# ----------------------------------------------------------------------------- rendering


def render(scene: Scene, size: int = 256) -> Image.Image:
    """Render a scene as an antialiased size x size RGB image (drawn 4x larger, box-downsampled)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj, (x, y), e in zip(scene.objects, scene.positions, scene.extents):
        cx, cy, h = x * big, y * big, e * big / 2
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:  # isosceles triangle, apex up, base = height = extent
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    return img.reduce(SUPERSAMPLE)


# ----------------------------------------------------------------------------- prompts

# (prompt, is_unseen). Unseen prompts use a HELDOUT_COMBOS pair (one- and two-object) or a
# HELDOUT_RELATIONS colour/relation combination; seen prompts are controls drawn from what
# the training data can contain.
_HELDOUT_PROMPTS = (
    # held-out (color, shape), one object
    ("a small purple triangle", True),
    ("a large purple triangle", True),
    ("a small orange square", True),
    ("a large orange square", True),
    ("a small green circle", True),
    ("a large green circle", True),
    # one object without a size word, as people type it (training captions of one object always name the size)
    ("a purple triangle", True),
    ("an orange square", True),
    ("a green circle", True),
    ("a red circle", False),
    ("a blue square", False),
    ("a yellow triangle", False),
    # held-out (color, shape) inside a two-object prompt
    ("a purple triangle above a blue square", True),
    ("a red circle to the left of an orange square", True),
    ("a green circle below a yellow triangle", True),
    ("an orange square to the right of a purple circle", True),
    ("a purple triangle beneath a green circle", True),
    ("a blue circle on top of an orange square", True),
    # held-out colour/relation combination (objects themselves are seen)
    ("a yellow square above a blue triangle", True),
    ("a blue circle under a yellow square", True),
    ("a red triangle to the left of a purple square", True),
    ("a purple circle right of a red circle", True),
    # seen controls
    ("a small red circle", False),
    ("a large blue square", False),
    ("a small yellow triangle", False),
    ("a large green square", False),
    ("a red square above a blue circle", False),
    ("a green triangle to the right of a yellow square", False),
    ("an orange circle below a purple square", False),
    ("a blue triangle left of a red circle", False),
)


def heldout_prompts() -> list[tuple[str, bool]]:
    """The fixed evaluation prompts as (prompt, is_unseen): 30, 19 of them unseen."""
    return list(_HELDOUT_PROMPTS)


# ----------------------------------------------------------------------------- datasets


def write_dataset(out_dir, count: int, seed: int, size: int = 256, exclude=HELDOUT, size_word_prob: float = 1.0) -> Path:
    """Write `count` NNNNNNNN.png + NNNNNNNN.txt pairs into a new (or empty) out_dir."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; refusing to overwrite it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        rng = np.random.default_rng(seed)
        for i in range(count):
            scene = sample_scene(rng, exclude=exclude, size_word_prob=size_word_prob)
            render(scene, size).save(tmp / f"{i:08d}.png")
            (tmp / f"{i:08d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""Seeded procedural scenes (128x128 RGB) and their captions: the demo model's whole world.

A scene is one or two coloured shapes on a plain or gradient background, or a simple portrait
(an oval face with eyes, mouth and hair). `Scene` holds the attributes; `render(scene, rng)` draws
it (with a little random jitter in place, size and gradient, so one caption has many images);
`caption(scene, rng)` writes it in one of several plain-word phrasings.

Held-out combinations (`is_held_out`) never appear in training: the checker prompts with them, so
a model that scores well has learnt the words, not memorised the pictures.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

import numpy as np

SIZE = 128
SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")
COLOURS = {
    "red": (220, 30, 30), "orange": (250, 140, 20), "yellow": (250, 225, 40), "green": (40, 170, 60),
    "cyan": (40, 210, 220), "blue": (30, 80, 230), "purple": (140, 50, 200), "pink": (250, 120, 190),
}
BACKGROUNDS = {
    "white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), "navy": (20, 30, 90),
    "cream": (240, 225, 190), "olive": (110, 110, 40),
}
GRADIENT = "gradient"
BACKGROUND_NAMES = tuple(BACKGROUNDS) + (GRADIENT,)
# Grid cell (column, row) in thirds of the image.
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
# Half-width in pixels. Small objects at 16 px, not 13: at 13 a small star is about 3 latent pixels across and
# the VAE rounds its tips off (round trip of 288 held-out scenes: shape 88.2 % at 13 px, 94.5 % at 16 px).
SIZES = {"small": 16.0, "big": 24.0}
SKINS = {"light": (245, 210, 180), "tan": (215, 165, 115), "brown": (150, 95, 60), "dark": (90, 55, 35)}
HAIRS = {"black": (25, 20, 20), "brown": (110, 60, 25), "blonde": (240, 205, 100), "red": (200, 70, 30), "white": (235, 235, 235)}
GRID = (0.22, 0.5, 0.78)
RELATIONS = ("left of", "right of", "above", "below")
CAPTION_STYLES = 4
EYE = (20, 20, 30)
MOUTH = (170, 40, 50)


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    position: str = "centre"
    size: str = "big"


@dataclass(frozen=True)
class Scene:
    kind: str  # "shape" | "pair" | "face"
    background: str
    objects: tuple[Shape, ...] = ()
    relation: str = ""  # pairs: objects[0] <relation> objects[1]
    hair: str = ""
    skin: str = ""


def _hash_fraction(*parts: str) -> float:
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def is_held_out(scene: Scene) -> bool:
    """About 1 in 8 single-shape (shape, colour, position) triples and portrait (hair, skin, background)
    triples are kept out of training; pairs are always allowed (their parts are what is tested)."""
    if scene.kind == "shape":
        o = scene.objects[0]
        return _hash_fraction(o.shape, o.colour, o.position) < 0.125
    if scene.kind == "face":
        return _hash_fraction(scene.hair, scene.skin, scene.background) < 0.125
    return False


def random_scene(rng: np.random.Generator, held_out: bool | None = False) -> Scene:
    """A random scene; held_out=False never returns a held-out one, True only held-out, None either."""
    while True:
        roll = rng.random()
        background = BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))]
        if roll < 0.25:
            scene = Scene("face", background, hair=_pick(rng, HAIRS), skin=_pick(rng, SKINS))
            if _face_blends(scene):
                continue
        elif roll < 0.4:
            a, b = _pick(rng, SHAPES), _pick(rng, SHAPES)
            ca = _pick(rng, COLOURS)
            cb = _pick(rng, [c for c in COLOURS if c != ca])
            scene = Scene("pair", background, (Shape(a, ca), Shape(b, cb)), relation=_pick(rng, RELATIONS))
        else:
            scene = Scene("shape", background, (Shape(_pick(rng, SHAPES), _pick(rng, COLOURS), _pick(rng, POSITIONS), _pick(rng, SIZES)),))
        if held_out is None or is_held_out(scene) == held_out:
            return scene


_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_POSITION_AT = {cell: name for name, cell in POSITIONS.items()}


def minimal_partner(scene: Scene, rng: np.random.Generator) -> Scene:
    """A training scene that differs from `scene` in one word of its caption: a placed shape moved to the other
    side along one axis (a corner along either, the centre to an edge), a pair's relation reversed, a face's hair
    or skin changed. Held-out partners are avoided (another choice is tried; failing that, any training scene)."""
    for _ in range(8):
        partner = _one_change(scene, rng)
        if not is_held_out(partner) and partner != scene and not (partner.kind == "face" and _face_blends(partner)):
            return partner
    return random_scene(rng, held_out=False)


def _one_change(scene: Scene, rng: np.random.Generator) -> Scene:
    if scene.kind == "pair":
        return replace(scene, relation=_MIRROR[scene.relation])
    if scene.kind == "face":
        if rng.random() < 0.5:
            return replace(scene, hair=_pick(rng, [h for h in HAIRS if h != scene.hair]))
        return replace(scene, skin=_pick(rng, [s for s in SKINS if s != scene.skin]))
    shape = scene.objects[0]
    column, row = POSITIONS[shape.position]
    if (column, row) == (1, 1):
        column, row = [(0, 1), (2, 1), (1, 0), (1, 2)][rng.integers(4)]
    elif row == 1 or (column != 1 and rng.random() < 0.5):
        column = 2 - column
    else:
        row = 2 - row
    return replace(scene, objects=(replace(shape, position=_POSITION_AT[column, row]),))


def _face_blends(scene: Scene) -> bool:
    """A face the colour of its background (light skin on cream) is not a picture."""
    return scene.background != GRADIENT and bool(np.linalg.norm(np.subtract(SKINS[scene.skin], BACKGROUNDS[scene.background])) < 60)


def _pick(rng: np.random.Generator, options):
    options = list(options)
    return options[rng.integers(len(options))]


# -- captions ---------------------------------------------------------------------------------------

_POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "top left"),
    "top": ("at the top", "at the top centre", "top"),
    "top right": ("in the top right corner", "at the top right", "top right"),
    "left": ("on the left", "at the left", "left"),
    "centre": ("in the centre", "in the middle", "centre"),
    "right": ("on the right", "at the right", "right"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "bottom left"),
    "bottom": ("at the bottom", "at the bottom centre", "bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "bottom right"),
}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _background_phrase(background: str) -> str:
    return _a(f"{background} background")


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """One caption in a random phrasing (the first phrasing when rng is None)."""
    style = 0 if rng is None else int(rng.integers(4))
    bg = _background_phrase(scene.background)
    if scene.kind == "face":
        person = ("a portrait of a person", "a face", "a portrait", "a person")[style]
        if style == 3:
            return f"{scene.hair} hair, {scene.skin} skin, face, {scene.background} background"
        return f"{person} with {scene.hair} hair and {scene.skin} skin on {bg}"
    if scene.kind == "pair":
        a, b = scene.objects
        text = f"{_a(a.colour)} {a.shape} {scene.relation} {_a(b.colour)} {b.shape}"
        return f"{text} on {bg}" if style % 2 == 0 else f"{bg} with {text}"
    o = scene.objects[0]
    where = _POSITION_PHRASES[o.position][0 if style < 2 else 1 if style == 2 else 2]
    if style == 0:
        return f"a {o.size} {o.colour} {o.shape} {where} on {bg}"
    if style == 1:
        return f"{bg} with a {o.size} {o.colour} {o.shape} {where}"
    if style == 2:
        return f"a picture of a {o.size} {o.colour} {o.shape} {where}, {bg}"
    return f"{o.size} {o.colour} {o.shape}, {where}, {scene.background} background"


# -- rendering --------------------------------------------------------------------------------------

_SS = 2  # supersampling factor: masks are drawn at 256x256 and averaged down (smooth edges)


def _grid(size: int = SIZE * _SS) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / _SS
    return np.meshgrid(coords, coords)  # x, y in output pixels


_XX, _YY = _grid()


def shape_mask(shape: str, cx: float, cy: float, r: float, xx: np.ndarray = _XX, yy: np.ndarray = _YY) -> np.ndarray:
    """A boolean mask of `shape` centred at (cx, cy) with half-width r (pixel units of xx/yy)."""
    dx, dy = (xx - cx) / r, (yy - cy) / r
    if shape == "circle":
        return dx * dx + dy * dy <= 1.0
    if shape == "ring":
        d = dx * dx + dy * dy
        return (d <= 1.0) & (d >= 0.5**2)
    if shape == "square":
        return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
    if shape == "triangle":  # pointing up, base at the bottom
        return (dy <= 0.85) & (dy >= -0.95 + 2 * np.abs(dx) * 0.95)
    if shape == "star":
        angle = np.arctan2(dx, -dy)
        radius = np.sqrt(dx * dx + dy * dy)
        # five points: the boundary radius swings between 1.0 and 0.42
        k = np.abs(((angle / (2 * np.pi / 5)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between
        return radius <= 0.42 + 0.58 * k**1.6
    if shape == "heart":
        x, y = dx * 1.15, -dy * 1.15 + 0.25
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _downsample(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return mask.reshape(h // _SS, _SS, w // _SS, _SS).mean(axis=(1, 3), dtype=np.float32)


def _paint(image: np.ndarray, mask: np.ndarray, colour, foreground: np.ndarray | None = None) -> None:
    if foreground is not None:
        foreground |= mask
    alpha = _downsample(mask)[..., None]
    image *= 1 - alpha
    image += alpha * np.asarray(colour, np.float32)


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    image = np.empty((SIZE, SIZE, 3), np.float32)
    if name != GRADIENT:
        image[:] = BACKGROUNDS[name]
        return image
    palette = np.asarray(list(BACKGROUNDS.values()), np.float32)
    while True:  # two clearly different ends (white to cream would look plain)
        i, j = rng.choice(len(palette), 2, replace=False)
        a, b = palette[i], palette[j]
        if np.linalg.norm(a - b) > 100:
            break
    t = np.linspace(0, 1, SIZE, dtype=np.float32)
    ramp = t[:, None, None] if rng.random() < 0.5 else t[None, :, None]
    image[:] = a + (b - a) * ramp
    return image


def object_centre(position: str, size: str, rng: np.random.Generator | None) -> tuple[float, float, float]:
    col, row = POSITIONS[position]
    jitter = (lambda: 0.0) if rng is None else (lambda: float(rng.uniform(-4, 4)))
    scale = 1.0 if rng is None else float(rng.uniform(0.95, 1.05))  # +-5 %: a small one never near a big one
    return GRID[col] * SIZE + jitter(), GRID[row] * SIZE + jitter(), SIZES[size] * scale


def _pair_layout(relation: str, rng: np.random.Generator | None) -> list[tuple[float, float]]:
    j = (lambda: 0.0) if rng is None else (lambda: float(rng.uniform(-5, 5)))
    lo, hi, mid = 0.28 * SIZE, 0.72 * SIZE, 0.5 * SIZE
    first, second = ((lo, mid), (hi, mid)) if relation in ("left of", "right of") else ((mid, lo), (mid, hi))
    if relation in ("right of", "below"):
        first, second = second, first
    return [(first[0] + j(), first[1] + j()), (second[0] + j(), second[1] + j())]


def render(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """The scene as a uint8 HxWx3 array (rng: jitter; None draws the canonical picture)."""
    return render_with_mask(scene, rng)[0]


def render_with_mask(scene: Scene, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The scene and its foreground: uint8 HxWx3, and float32 HxW coverage (0 background, 1 object or face)."""
    image = _background(scene.background, rng if rng is not None else np.random.default_rng(0))
    foreground = np.zeros((SIZE * _SS, SIZE * _SS), bool)
    if scene.kind == "face":
        _draw_face(image, scene, rng, foreground)
    elif scene.kind == "pair":
        for obj, (cx, cy) in zip(scene.objects, _pair_layout(scene.relation, rng)):
            r = 18.0 * (1.0 if rng is None else float(rng.uniform(0.9, 1.1)))
            _paint(image, shape_mask(obj.shape, cx, cy, r), COLOURS[obj.colour], foreground)
    else:
        obj = scene.objects[0]
        cx, cy, r = object_centre(obj.position, obj.size, rng)
        _paint(image, shape_mask(obj.shape, cx, cy, r), COLOURS[obj.colour], foreground)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), _downsample(foreground)


def _draw_face(image: np.ndarray, scene: Scene, rng: np.random.Generator | None, foreground: np.ndarray | None = None) -> None:
    j = (lambda s: 0.0) if rng is None else (lambda s: float(rng.uniform(-s, s)))
    cx, cy = 64 + j(4), 68 + j(4)
    rx, ry = 30 + j(2), 38 + j(2)
    hair = HAIRS[scene.hair]
    # Hair: a larger oval behind the head, cut off below the ears, plus a fringe over the forehead.
    back = (((_XX - cx) / (rx + 7)) ** 2 + ((_YY - cy + 6) / (ry + 6)) ** 2 <= 1) & (_YY <= cy + 10)
    _paint(image, back, hair, foreground)
    head = ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1
    _paint(image, head, SKINS[scene.skin], foreground)
    fringe = head & (_YY <= cy - ry * 0.55 + j(2))
    _paint(image, fringe, hair)
    for side in (-1, 1):
        ex, ey = cx + side * rx * 0.4, cy - ry * 0.12
        _paint(image, ((_XX - ex) / 4.0) ** 2 + ((_YY - ey) / 3.2) ** 2 <= 1, EYE)
    mouth = (np.abs((_XX - cx) / (rx * 0.38)) <= 1) & (np.abs(_YY - (cy + ry * 0.45) - 5 * ((_XX - cx) / (rx * 0.38)) ** 2 * -0.6) <= 2.0)
    _paint(image, mouth, MOUTH)


def training_pairs(count: int, seed: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`count` (image, caption) pairs, none held out: uint8 N x 128 x 128 x 3, captions, scenes."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    captions, scenes = [], []
    for index in range(count):
        scene = random_scene(rng, held_out=False)
        images[index] = render(scene, rng)
        captions.append(caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


def held_out_scenes(count: int, seed: int = 7) -> list[Scene]:
    """Held-out single shapes and portraits (never in training), in a fixed order."""
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        scene = random_scene(rng, held_out=True)
        if scene not in scenes:
            scenes.append(scene)
    return scenes


def vocabulary() -> list[str]:
    """Every word a caption can use (the tokenizer's whole-word entries)."""
    words = set()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        scene = random_scene(rng, held_out=None)
        for style in range(4):
            text = caption(scene, FixedStyle(style))
            words.update(text.replace(",", " , ").split())
    words.update({"a", "an", "the", "of", "and", "with", "on", "in", "at", "picture", "photo"})
    return sorted(words)


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """The words the demo learnt (plus spelling variants users type), for the out-of-vocabulary note."""
    return frozenset(vocabulary()) | {"center", "grey", "colour", "color", "circles", "squares", "image", "small", "large", "person"}


class FixedStyle:
    """An rng stand-in for `caption` that always picks one phrasing."""

    def __init__(self, style: int):
        self.style = style

    def integers(self, n):
        return self.style % n


__all__ = ["Scene", "Shape", "render", "render_with_mask", "caption", "random_scene", "is_held_out", "training_pairs", "held_out_scenes",
           "minimal_partner",
           "vocabulary", "shape_mask"]

"""The prompt checker's eyes: what a 128x128 demo image shows, by simple image analysis.

1. Background: the median colour of the outer frame; when opposite edges differ a lot, "gradient"
   (the background is then modelled per row or per column).
2. Foreground: pixels far from the background, split into connected components (small specks dropped).
3. A face: most foreground pixels are nearest to a skin tone; the hair colour is read above the skin.
4. A shape: colour is the nearest palette colour of its inner pixels; position is the centroid's
   cell in a 3x3 grid; size from its extent; shape is the template (drawn by the scene generator
   into the same bounding box) with the best overlap (IoU).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from pipelines.demo import scenes

FOREGROUND_DISTANCE = 60.0
GRADIENT_DISTANCE = 40.0
MIN_AREA = 40
FACE_DISTANCE = 30.0


@dataclass
class Blob:
    colour: str
    shape: str
    position: str
    size: str
    centre: tuple[float, float]
    area: int


@dataclass
class Analysis:
    background: str
    face: bool
    hair: str = ""
    skin: str = ""
    blobs: list[Blob] = field(default_factory=list)


def _nearest(colour: np.ndarray, palette: dict[str, tuple]) -> str:
    names = list(palette)
    values = np.asarray([palette[n] for n in names], np.float32)
    return names[int(np.argmin(((values - colour) ** 2).sum(axis=1)))]


def _background(image: np.ndarray) -> tuple[str, np.ndarray]:
    """The background's name and a per-pixel model of it (H x W x 3)."""
    edge = 3
    top, bottom = np.median(image[:edge].reshape(-1, 3), 0), np.median(image[-edge:].reshape(-1, 3), 0)
    left, right = np.median(image[:, :edge].reshape(-1, 3), 0), np.median(image[:, -edge:].reshape(-1, 3), 0)
    vertical, horizontal = np.linalg.norm(top - bottom), np.linalg.norm(left - right)
    if max(vertical, horizontal) > GRADIENT_DISTANCE:
        if vertical >= horizontal:
            rows = np.median(np.concatenate([image[:, :edge], image[:, -edge:]], axis=1), axis=1)  # H x 3
            return scenes.GRADIENT, np.broadcast_to(rows[:, None, :], image.shape)
        cols = np.median(np.concatenate([image[:edge], image[-edge:]], axis=0), axis=0)  # W x 3
        return scenes.GRADIENT, np.broadcast_to(cols[None, :, :], image.shape)
    frame = np.concatenate([image[:edge].reshape(-1, 3), image[-edge:].reshape(-1, 3),
                            image[:, :edge].reshape(-1, 3), image[:, -edge:].reshape(-1, 3)])
    colour = np.median(frame, 0)
    return _nearest(colour, scenes.BACKGROUNDS), np.broadcast_to(colour, image.shape)


@functools.lru_cache(maxsize=None)
def _unit_extent(shape: str) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of a shape drawn at centre 0 with r = 1."""
    grid = np.linspace(-1.5, 1.5, 601, dtype=np.float32)
    xx, yy = np.meshgrid(grid, grid)
    mask = scenes.shape_mask(shape, 0.0, 0.0, 1.0, xx, yy)
    ys, xs = np.nonzero(mask)
    return float(grid[xs.min()]), float(grid[xs.max()]), float(grid[ys.min()]), float(grid[ys.max()])


_PIXELS = np.meshgrid(np.arange(scenes.SIZE, dtype=np.float32) + 0.5, np.arange(scenes.SIZE, dtype=np.float32) + 0.5)


def _classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """The best-overlapping shape template and its half-width r."""
    ys, xs = np.nonzero(mask)
    bx0, bx1, by0, by1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
    best, best_iou, best_r = "circle", -1.0, 1.0
    for shape in scenes.SHAPES:
        x0, x1, y0, y1 = _unit_extent(shape)
        r = 0.5 * ((bx1 - bx0) / (x1 - x0) + (by1 - by0) / (y1 - y0))
        cx = bx0 - x0 * r if r > 0 else 0
        cy = by0 - y0 * r if r > 0 else 0
        template = scenes.shape_mask(shape, cx, cy, max(r, 1e-3), *_PIXELS)
        iou = np.logical_and(template, mask).sum() / max(1, np.logical_or(template, mask).sum())
        if iou > best_iou:
            best, best_iou, best_r = shape, iou, r
    return best, best_r


def _position(cx: float, cy: float) -> str:
    third = lambda v: 0 if v < 0.36 * scenes.SIZE else 2 if v > 0.64 * scenes.SIZE else 1  # noqa: E731
    cell = (third(cx), third(cy))
    return next(name for name, where in scenes.POSITIONS.items() if where == cell)


_LABELS = {**{f"skin:{k}": v for k, v in scenes.SKINS.items()}, **{f"hair:{k}": v for k, v in scenes.HAIRS.items()},
           **{f"bg:{k}": v for k, v in scenes.BACKGROUNDS.items()}, **scenes.COLOURS}
_LABEL_VALUES = np.asarray(list(_LABELS.values()), np.float32)
_IS_SKIN = np.asarray([name.startswith("skin:") for name in _LABELS])


SKIN_RUN = 4


def _read_face(pixels: np.ndarray, background: np.ndarray) -> tuple[str, str] | None:
    """(hair, skin) when the middle of the picture is a face: the cheeks' box mostly skin-coloured
    (and not background: a gradient passes through skin-like colours)."""
    box = pixels[52:92, 44:84].reshape(-1, 3)
    skin = _IS_SKIN[np.argmin(((box[:, None, :] - _LABEL_VALUES[None]) ** 2).sum(axis=2), axis=1)]
    skin &= np.linalg.norm(box - background[52:92, 44:84].reshape(-1, 3), axis=1) > FACE_DISTANCE
    if skin.mean() < 0.5:
        return None
    skin_name = _nearest(np.median(box[skin], 0), scenes.SKINS)
    band = pixels[:92, 54:74]  # the middle columns, top down: background, hair, fringe, then skin
    band_skin = _IS_SKIN[np.argmin(((band.reshape(-1, 3)[:, None, :] - _LABEL_VALUES[None]) ** 2).sum(axis=2), axis=1)]
    band_skin &= np.linalg.norm(band - background[:92, 54:74], axis=2).reshape(-1) > FACE_DISTANCE
    rows = band_skin.reshape(band.shape[:2]).mean(axis=1) >= 0.6
    # The skin starts at the first run of SKIN_RUN skin rows: on a slightly blurred picture (any VAE's
    # output) the hair/background edge blends into one skin-like row, and the strip above that is background.
    starts = [y for y in range(len(rows) - SKIN_RUN + 1) if rows[y:y + SKIN_RUN].all()]
    top = starts[0] if starts else 48
    strip = pixels[max(0, top - 8):max(1, top - 2), 54:74].reshape(-1, 3)
    return _nearest(np.median(strip, 0), scenes.HAIRS), skin_name


def analyse(image) -> Analysis:
    """Read an RGB image (uint8 array or PIL image, resized to 128x128 if needed)."""
    from PIL import Image
    from scipy import ndimage

    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.shape[:2] != (scenes.SIZE, scenes.SIZE):
        image = np.asarray(Image.fromarray(image).resize((scenes.SIZE, scenes.SIZE), Image.BILINEAR))
    pixels = image.astype(np.float32)
    background, model = _background(pixels)
    foreground = np.linalg.norm(pixels - model, axis=2) > FOREGROUND_DISTANCE
    foreground = ndimage.binary_opening(foreground, iterations=1)

    face = _read_face(pixels, model)
    if face is not None:
        return Analysis(background, True, hair=face[0], skin=face[1])

    labels, count = ndimage.label(foreground)
    blobs = []
    for index in range(1, count + 1):
        mask = labels == index
        area = int(mask.sum())
        if area < MIN_AREA:
            continue
        inner = ndimage.binary_erosion(mask, iterations=2)
        colour_pixels = pixels[inner] if inner.sum() >= 10 else pixels[mask]
        colour = _nearest(np.median(colour_pixels, 0), scenes.COLOURS)
        ys, xs = np.nonzero(mask)
        cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
        shape, r = _classify_shape(mask)
        # bounding-box centre is steadier than the centroid for triangles and hearts
        bcx, bcy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        size = "big" if r > 0.5 * (scenes.SIZES["small"] + scenes.SIZES["big"]) else "small"
        blobs.append(Blob(colour, shape, _position(bcx, bcy), size, (cx, cy), area))
    blobs.sort(key=lambda b: -b.area)
    return Analysis(background, False, blobs=blobs)


def grade(scene: scenes.Scene, analysis: Analysis) -> dict[str, bool]:
    """Attribute -> right or wrong, for the attributes the scene's prompt names."""
    marks = {"background": analysis.background == scene.background, "face": analysis.face == (scene.kind == "face")}
    if scene.kind == "face":
        marks["hair"] = analysis.face and analysis.hair == scene.hair
        marks["skin"] = analysis.face and analysis.skin == scene.skin
        return marks
    if scene.kind == "shape":
        want = scene.objects[0]
        got = analysis.blobs[0] if analysis.blobs else None
        marks["colour"] = got is not None and got.colour == want.colour
        marks["shape"] = got is not None and got.shape == want.shape
        marks["position"] = got is not None and got.position == want.position
        marks["size"] = got is not None and got.size == want.size
        return marks
    # pairs: both objects (colour and shape, in either order) and their relation
    blobs = analysis.blobs[:2]
    first, second = scene.objects
    found = [next((b for b in blobs if b.colour == o.colour and b.shape == o.shape), None) for o in (first, second)]
    marks["objects"] = all(found) and found[0] is not found[1]
    relation_ok = False
    if marks["objects"]:
        (ax, ay), (bx, by) = found[0].centre, found[1].centre
        relation_ok = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[scene.relation]
    marks["relation"] = relation_ok
    return marks

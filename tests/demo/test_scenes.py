"""The procedural scenes: seeded, captioned in plain words, held-out combinations kept out of training."""
from __future__ import annotations

import numpy as np

from pipelines.demo import scenes


def test_same_seed_same_pictures_and_captions():
    a_images, a_captions, _ = scenes.training_pairs(6, seed=3)
    b_images, b_captions, _ = scenes.training_pairs(6, seed=3)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert a_images.shape == (6, 128, 128, 3) and a_images.dtype == np.uint8


def test_training_never_holds_a_held_out_combination():
    _, _, drawn = scenes.training_pairs(300, seed=1)
    assert not any(scenes.is_held_out(scene) for scene in drawn)
    held = scenes.held_out_scenes(20)
    assert all(scenes.is_held_out(scene) for scene in held)
    assert {scene.kind for scene in held} == {"shape", "face"}


def test_the_world_is_as_large_as_promised():
    assert len(scenes.SHAPES) >= 6 and len(scenes.COLOURS) >= 8 and len(scenes.BACKGROUNDS) >= 6
    assert scenes.GRADIENT in scenes.BACKGROUND_NAMES and len(scenes.POSITIONS) == 9 and set(scenes.SIZES) == {"small", "big"}


def test_captions_name_every_attribute_in_several_phrasings():
    scene = scenes.Scene("shape", "navy", (scenes.Shape("star", "yellow", "top left", "small"),))
    phrasings = {scenes.caption(scene, scenes.FixedStyle(style)) for style in range(scenes.CAPTION_STYLES)}
    assert len(phrasings) == scenes.CAPTION_STYLES
    for text in phrasings:
        assert all(word in text for word in ("star", "yellow", "top", "left", "small", "navy"))
    face = scenes.Scene("face", "olive", hair="blonde", skin="dark")
    assert all(w in scenes.caption(face) for w in ("blonde hair", "dark skin", "olive"))
    pair = scenes.Scene("pair", "white", (scenes.Shape("circle", "red"), scenes.Shape("square", "blue")), relation="left of")
    assert scenes.caption(pair) == "a red circle left of a blue square on a white background"


def test_every_caption_word_is_in_the_vocabulary():
    words = set(scenes.vocabulary())
    rng = np.random.default_rng(9)
    for _ in range(200):
        text = scenes.caption(scenes.random_scene(rng, held_out=None), rng)
        assert set(text.replace(",", " , ").split()) <= words


def test_the_foreground_mask_covers_the_object_and_nothing_else():
    scene = scenes.Scene("shape", "white", (scenes.Shape("square", "red", "top left", "big"),))
    image, coverage = scenes.render_with_mask(scene, None)
    assert np.array_equal(image, scenes.render(scene, None)), "the same picture as render"
    assert coverage.shape == (128, 128) and coverage.dtype == np.float32
    red = (image[..., 0] > 200) & (image[..., 1] < 80)
    assert coverage[red].min() > 0.5 and coverage[~red].max() < 0.6
    assert coverage[64:, :].max() == 0 and coverage[:, 64:].max() == 0, "nothing outside the top left"
    face, face_coverage = scenes.render_with_mask(scenes.Scene("face", "navy", hair="red", skin="dark"), None)
    assert 0.2 < (face_coverage > 0.5).mean() < 0.6 and face_coverage[0, 0] == 0 and face_coverage[64, 64] == 1


def _differences(a: scenes.Scene, b: scenes.Scene) -> set[str]:
    fields = {"background", "relation", "hair", "skin"}
    changed = {name for name in fields if getattr(a, name) != getattr(b, name)}
    for x, y in zip(a.objects, b.objects):
        changed |= {name for name in ("shape", "colour", "position", "size") if getattr(x, name) != getattr(y, name)}
    return changed


def test_a_minimal_partner_changes_one_word_and_is_never_held_out():
    rng = np.random.default_rng(4)
    mirrored = {"left": "right", "top left": {"top right", "bottom left"}, "bottom": "top"}
    fallbacks = 0
    for _ in range(400):
        scene = scenes.random_scene(rng)
        partner = scenes.minimal_partner(scene, rng)
        assert not scenes.is_held_out(partner)
        changed = _differences(scene, partner)
        if partner.kind != scene.kind or (scene.kind == "shape" and changed != {"position"}):
            fallbacks += 1  # every one-word partner is held out: any training scene instead
        elif scene.kind == "face":
            assert changed in ({"hair"}, {"skin"})
        elif scene.kind == "pair":
            assert changed == {"relation"} and {scene.relation, partner.relation} in ({"left of", "right of"}, {"above", "below"})
        else:
            old, new = scene.objects[0].position, partner.objects[0].position
            if old == "centre":
                assert new in ("left", "right", "top", "bottom")
            elif old in mirrored:
                assert new in (mirrored[old] if isinstance(mirrored[old], set) else {mirrored[old]})
            (c0, r0), (c1, r1) = scenes.POSITIONS[old], scenes.POSITIONS[new]
            assert old == "centre" or (c0 + c1, r0) == (2, r1) or (r0 + r1, c0) == (2, c1), "moved to the other side of one axis"
    # an edge position has one mirror, held out 1 time in 8; corners and the centre have more than one to try
    assert fallbacks <= 30, fallbacks

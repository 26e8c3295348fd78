"""`app.py generate --init-image FOLDER`: A1111's img2img batch from the command line. Each picture of the folder, in
name order, is the engine's img2img of that picture, saved under the picture's name in a fresh batch folder; masks
pair by name (or one serves all); a bad picture is skipped and named; nothing is written over."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.batch import BATCH_FOLDER, BatchPicture, batch_output_folder, named, paired
from pipelines.errors import InvalidRequest
from pipelines.infotext import parse_infotext
from tests.refine.test_img2img_inpaint import box_mask, picture
from tests.test_cli_refine import SIZE, array, engine, models, run, run_json  # noqa: F401  (the models fixture)


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, seed in ((2, 11), (1, 10), (3, 12)):  # written out of order: the batch runs them by name
        picture(SIZE, seed=seed).save(folder / f"frame_{index:04d}.png")
    (folder / "readme.txt").write_text("not a picture: not listed")
    return folder


def test_a_folder_runs_each_picture_by_name_and_saves_it_under_its_name(capsys, models, frames, tmp_path, demo_cache_dir, shared_manager):
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(frames), "--strength", "0.6")
    assert [p["picture"] for p in result["pictures"]] == ["frame_0001", "frame_0002", "frame_0003"] and result["done"] == 3
    folder = tmp_path / "outputs" / BATCH_FOLDER
    [batch] = folder.iterdir()
    assert result["batch"] == str(batch)
    assert sorted(p.name for p in batch.iterdir()) == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    for name in ("frame_0001", "frame_0003"):
        with Image.open(batch / f"{name}.png") as made:
            assert parse_infotext(made.info["parameters"])["Denoising strength"] == "0.6"
            wanted = engine(shared_manager, init_image=Image.open(frames / f"{name}.png"), denoising_strength=0.6)
            assert np.array_equal(array(made), wanted), name  # the picture's own img2img, nothing of the others'
    again = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(frames), "--strength", "0.6")
    assert again["batch"] != result["batch"] and len(list(folder.iterdir())) == 2  # a new folder: nothing written over


def test_masks_pair_by_name_and_a_bad_picture_is_skipped(capsys, models, frames, tmp_path, demo_cache_dir, shared_manager):
    masks = tmp_path / "masks"
    masks.mkdir()
    box_mask(SIZE, (8, 8, 40, 40)).save(masks / "frame_0001.png")
    box_mask(SIZE, (20, 20, 60, 60)).save(masks / "frame_0003.png")
    (frames / "frame_0004.png").write_text("damaged")
    box_mask(SIZE, (0, 0, 30, 30)).save(masks / "frame_0004.png")
    code, out, err = run(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(frames), "--mask", str(masks), "--mask-blur", "0")
    assert code == 0, err
    assert "note: No mask named like frame_0002: left out." in err
    assert "warning: skipped frame_0004: The picture frame_0004" in err and "Traceback" not in err
    assert "batch: 2 of 3 pictures in " in out and "skipped frame_0004" in out
    batch = next((tmp_path / "outputs" / BATCH_FOLDER).iterdir())
    assert sorted(p.name for p in batch.iterdir()) == ["frame_0001.png", "frame_0003.png"]
    with Image.open(batch / "frame_0003.png") as made:
        wanted = engine(shared_manager, init_image=Image.open(frames / "frame_0003.png"), mask=Image.open(masks / "frame_0003.png"), mask_blur=0)
        assert np.array_equal(array(made), wanted)  # its own mask


def test_one_mask_serves_every_picture(capsys, models, frames, tmp_path, demo_cache_dir):
    mask = tmp_path / "mask.png"
    box_mask(SIZE, (8, 8, 40, 40)).save(mask)
    result = run_json(capsys, models, tmp_path, demo_cache_dir, "--init-image", str(frames), "--mask", str(mask), "--batch-size", "2")
    batch = tmp_path / "outputs" / BATCH_FOLDER
    names = sorted(p.name for p in next(batch.iterdir()).iterdir())
    assert result["done"] == 3 and names == ["frame_0001-1.png", "frame_0001.png", "frame_0002-1.png", "frame_0002.png",
                                             "frame_0003-1.png", "frame_0003.png"]


@pytest.mark.parametrize("given, message", [
    ("empty", "error: --init-image '{root}/empty' holds no pictures (PNG, JPEG or WebP)."),
    ("masks-of-others", "error: No mask has the name of a picture"),
])
def test_a_folder_without_pictures_or_matching_masks_is_refused_before_anything_runs(capsys, models, frames, tmp_path, demo_cache_dir,
                                                                                   given, message):
    (tmp_path / "empty").mkdir()
    others = tmp_path / "masks-of-others"
    others.mkdir()
    for name in ("a.png", "b.png"):
        box_mask(SIZE, (8, 8, 40, 40)).save(others / name)
    args = ["--init-image", str(tmp_path / "empty")] if given == "empty" else ["--init-image", str(frames), "--mask", str(others)]
    code, _out, err = run(capsys, models, tmp_path, demo_cache_dir, *args)
    assert code == 2 and message.format(root=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "outputs" / BATCH_FOLDER).exists() or not any((tmp_path / "outputs" / BATCH_FOLDER).iterdir())


def test_pairing_rules(tmp_path):
    pictures = named([tmp_path / "x1.png", tmp_path / "x2.png"])
    assert paired(pictures) == ([BatchPicture(tmp_path / "x1.png", "x1"), BatchPicture(tmp_path / "x2.png", "x2")], [])
    uploads = named([tmp_path / "tmpab12.png", tmp_path / "tmp0000.png"], ["frame 7.png", "frame 10.png"])  # an upload keeps its name
    assert [item.name for item in paired(uploads)[0]] == ["frame 10", "frame 7"]  # file-name order, not the order given
    with pytest.raises(InvalidRequest, match="Add the pictures"):
        paired([])


def test_batch_folders_never_collide(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 12, 5, 16, 30, 0)
    first, second = batch_output_folder(tmp_path, now), batch_output_folder(tmp_path, now)
    assert (first.name, second.name) == ("2026-12-05_163000", "2026-12-05_163000-2")

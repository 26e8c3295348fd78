"""The face detailer on an inpainting run keeps the inpainting promise: only faces the mask touches are re-drawn, and
every pixel outside the mask is still the original's, bit for bit (the tiny detector plants two faces)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.infotext import parse_infotext
from pipelines.manager import ManagerConfig, PipelineManager
from tests.refine.test_img2img_inpaint import box_mask, picture
from tests.test_cli_refine import models  # noqa: F401  (tiny-sd15 and the tiny face detector)
from tests.tiny_models import tiny_request

SIZE = 128


@pytest.fixture(scope="module")
def manager(models, tmp_path_factory, demo_cache_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("detail-inpaint")
    return PipelineManager(ManagerConfig(models, root / "outputs", demo_cache_dir, device="cpu", include_hf_cache=False))


def test_only_faces_in_the_mask_are_redrawn_and_the_rest_is_the_original(manager):
    original = picture(SIZE, seed=4)
    mask = box_mask(SIZE, (0, 0, 64, 64))  # the first planted face (top left), not the second (bottom right)
    request = tiny_request("sd15", width=SIZE, height=SIZE, steps=4, seed=3, init_image=original, mask=mask, mask_blur=0,
                           denoising_strength=0.8, face_detail=True, face_detail_strength=0.6, face_detail_steps=4, save=False)
    detailed = manager.generate(request)
    plain = manager.generate(tiny_request("sd15", width=SIZE, height=SIZE, steps=4, seed=3, init_image=original, mask=mask, mask_blur=0,
                                          denoising_strength=0.8, save=False))
    assert "face detail" in detailed.stage_seconds
    assert any("1 face(s) outside the inpainting mask left as they are" in w for w in detailed.warnings), detailed.warnings
    assert parse_infotext(detailed.images[0].infotext)["Face detailer faces"] == "1"
    result = np.asarray(detailed.images[0].image, dtype=np.int16)
    source = np.asarray(original.convert("RGB"), dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], source[outside]), "the detailer changed pixels outside the inpainting mask"
    assert not np.array_equal(result, np.asarray(plain.images[0].image, dtype=np.int16)), "the face in the mask was not re-drawn"

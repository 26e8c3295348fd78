"""Listing the upscalers and upscaling images: PIL resizes, ESRGAN nets, tiling without seams."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import InvalidRequest, ModelLoadError, ModelNotFound
from pipelines.upscale import UPSCALER_BUILTINS, list_upscalers, upscale_image
from pipelines.upscale.rrdbnet import RRDBNet
from pipelines.upscale.upscalers import image_to_tensor, run_tiled, upscale_with_net
from tests.upscale import tiny_config, tiny_state, write_esrgan


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models" / "ESRGAN"
    write_esrgan(folder / "tiny_x4.safetensors", tiny_state(4))
    write_esrgan(folder / "sub" / "tiny_x1.safetensors", tiny_state(1))
    write_esrgan(folder / "tiny_x2.pth", tiny_state(2))
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    write_esrgan(folder / "Lanczos.safetensors", tiny_state(4))
    (folder / "notes.txt").write_text("not a model")
    return tmp_path / "models"


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    channels = len(mode)
    data = torch.randint(0, 256, (height, width, channels), generator=generator, dtype=torch.uint8)
    return Image.fromarray(data.numpy(), mode)


def test_list_upscalers_names_files_and_problems(models_dir):
    choices = {c.name: c for c in list_upscalers(models_dir)}
    assert list(choices)[:3] == list(UPSCALER_BUILTINS) == ["Latent", "Lanczos", "Nearest"]
    assert choices["tiny_x4"].usable and choices["tiny_x4"].scale == 4 and choices["tiny_x4"].kind == "esrgan"
    assert choices["tiny_x1"].usable and choices["tiny_x1"].scale == 1  # sub-folders are searched
    assert "pickle" in choices["tiny_x2"].problem
    assert "broken.safetensors" in choices["broken"].problem
    assert "notes" not in choices
    same_name = [c for c in list_upscalers(models_dir) if c.name == "Lanczos"]
    assert same_name[0].kind == "image" and "same name" in same_name[1].problem
    assert {c.name: c for c in list_upscalers(models_dir, allow_pickle=True)}["tiny_x2"].usable


def test_list_without_an_esrgan_folder_has_the_builtins(tmp_path):
    assert [c.name for c in list_upscalers(tmp_path)] == list(UPSCALER_BUILTINS)
    assert [c.name for c in list_upscalers(tmp_path / "missing")] == list(UPSCALER_BUILTINS)


@pytest.mark.parametrize("name, resample", [("Lanczos", Image.Resampling.LANCZOS), ("nearest", Image.Resampling.NEAREST)])
def test_pil_upscalers(tmp_path, name, resample):
    image = noise_image(30, 20)
    result = upscale_image(image, 1.5, name, tmp_path)
    assert result.size == (45, 30)
    assert result.tobytes() == image.resize((45, 30), resample).tobytes()


def test_latent_is_not_an_image_upscaler(tmp_path):
    with pytest.raises(ValueError, match="Latent"):
        upscale_image(noise_image(8, 8), 2, "Latent", tmp_path)


def test_unknown_name_and_bad_scale(models_dir):
    with pytest.raises(ModelNotFound, match=r"'nope'.*tiny_x4"):
        upscale_image(noise_image(8, 8), 2, "nope", models_dir)
    with pytest.raises(InvalidRequest, match="out of range"):
        upscale_image(noise_image(8, 8), 0, "Lanczos", models_dir)
    with pytest.raises(ModelLoadError, match="pickle"):
        upscale_image(noise_image(8, 8), 2, "tiny_x2", models_dir)


@pytest.mark.parametrize("name, scale, size", [
    ("tiny_x4", 2.0, (46, 34)),   # net x4, then Lanczos down to x2
    ("tiny_x4", 4.0, (92, 68)),   # the net's own scale: no resize
    ("tiny_x4", 6.0, (138, 102)), # two passes (x16), then down to x6
    ("tiny_x1", 1.5, (34, 26)),   # a x1 net runs once, then Lanczos up
])
def test_esrgan_upscale_gives_the_requested_size(models_dir, name, scale, size):
    result = upscale_image(noise_image(23, 17), scale, name, models_dir, tile=16, overlap=8)
    assert result.size == size and result.mode == "RGB"


def test_esrgan_at_its_own_scale_is_the_net_output(models_dir):
    image = noise_image(20, 12)
    result = upscale_image(image, 4, "tiny_x4", models_dir, tile=0)
    net = RRDBNet(tiny_config(4)).eval()
    net.load_state_dict(tiny_state(4))
    with torch.inference_mode():
        expected = net(image_to_tensor(image)).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(np.array(result)).permute(2, 0, 1), expected[0])


def test_alpha_is_kept(models_dir):
    result = upscale_image(noise_image(10, 8, "RGBA"), 2, "tiny_x4", models_dir)
    assert result.mode == "RGBA" and result.size == (20, 16)


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_tiled_output_equals_untiled(scale):
    torch.manual_seed(scale)
    net = RRDBNet(tiny_config(scale)).eval()
    x = torch.rand(1, 3, 53, 71)  # odd sides: padded to the unshuffle factor, then cropped back
    whole = run_tiled(net, x, tile=0)
    counts = []
    tiled = run_tiled(net, x, tile=24, overlap=16, progress=lambda done, total: counts.append((done, total)))
    assert whole.shape == tiled.shape == (1, 3, 53 * scale, 71 * scale)
    assert counts[-1] == (9, 9)  # 3 x 3 tiles of 24 (x2, x1: 24 is a multiple of 2 and 4)
    assert (whole - tiled).abs().max() < 1e-3
    assert (whole - run_tiled(net, x, tile=24, overlap=140)).abs().max() < 1e-6  # overlap beyond the receptive field


def test_stopping_from_the_progress_callback(models_dir):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        upscale_image(noise_image(40, 40), 2, "tiny_x4", models_dir, tile=16, progress=stop)


def test_out_of_memory_halves_the_tile():
    class SmallMemoryNet(RRDBNet):
        def forward(self, x):
            if max(x.shape[-2:]) > 72:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().forward(x)

    torch.manual_seed(0)
    net = SmallMemoryNet(tiny_config(4)).eval()
    image = noise_image(96, 80)
    result = upscale_with_net(image, (192, 160), net, tile=0, overlap=4)  # 96 px fails; 48 px tiles (+ 8 context) fit
    assert result.size == (192, 160)
    with pytest.raises(torch.OutOfMemoryError):
        upscale_with_net(image, (192, 160), net, tile=0, overlap=40)  # the context alone is too big: gives up below 32 px


def test_half_precision_overflow_is_redone_in_float32(models_dir):
    state = tiny_state(4)
    state["conv_last.bias"] = torch.full((3,), 1e5)  # beyond float16's 65504: Inf in half precision
    write_esrgan(models_dir / "ESRGAN" / "hot.safetensors", state)
    image = noise_image(12, 10)
    result = upscale_image(image, 2, "hot", models_dir, dtype=torch.float16)
    assert result.tobytes() == upscale_image(image, 2, "hot", models_dir, dtype=torch.float32).tobytes()
    state["conv_last.bias"] = torch.full((3,), float("nan"))
    write_esrgan(models_dir / "ESRGAN" / "nan.safetensors", state)
    with pytest.raises(ModelLoadError, match=r"nan\.safetensors gives NaN"):
        upscale_image(image, 2, "nan", models_dir)

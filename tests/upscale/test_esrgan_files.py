"""Loading ESRGAN files: round trips, the old layout, damaged and mismatched files, pickles, the memo."""
from __future__ import annotations

import os

import pytest
import torch

from pipelines.errors import ModelLoadError
from pipelines.upscale.esrgan import inspect_esrgan, load_esrgan
from tests.upscale import tiny_config, tiny_state, to_old_layout, write_esrgan


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_save_detect_load_round_trip(tmp_path, scale):
    state = tiny_state(scale, seed=scale)
    path = write_esrgan(tmp_path / f"tiny_x{scale}.safetensors", state)
    assert inspect_esrgan(path).config == tiny_config(scale)  # from the header alone
    net = load_esrgan(path)
    assert net.config == tiny_config(scale)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 16, 24)).shape == (1, 3, 16 * scale, 24 * scale)


def test_old_layout_file_gives_the_same_output_as_the_new_layout(tmp_path):
    state = tiny_state(4, seed=3)
    new = load_esrgan(write_esrgan(tmp_path / "new.safetensors", state))
    old = load_esrgan(write_esrgan(tmp_path / "old.safetensors", to_old_layout(state)))
    assert inspect_esrgan(tmp_path / "old.safetensors").config == tiny_config(4)
    x = torch.rand(1, 3, 20, 16)
    with torch.inference_mode():
        assert torch.equal(new(x), old(x))


def test_mismatched_file_names_the_file_and_the_difference(tmp_path):
    state = tiny_state(4)
    del state["body.1.rdb1.conv2.weight"]
    state["conv_hr.weight"] = torch.zeros(8, 8, 1, 1)
    path = write_esrgan(tmp_path / "mismatch.safetensors", state)
    with pytest.raises(ModelLoadError) as error:
        load_esrgan(path)
    message = str(error.value)
    assert "mismatch.safetensors" in message and "missing (body.1.rdb1.conv2.weight)" in message
    assert "conv_hr.weight (8, 8, 1, 1) instead of (8, 8, 3, 3)" in message
    assert inspect_esrgan(path).problem == message  # the list shows the same sentence


def test_a_file_that_is_not_an_esrgan_model(tmp_path):
    path = write_esrgan(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": torch.zeros(4, 4)})
    with pytest.raises(ModelLoadError, match=r"vae\.safetensors is not an ESRGAN"):
        load_esrgan(path)


def test_truncated_file_is_refused_with_its_name(tmp_path):
    path = write_esrgan(tmp_path / "cut.safetensors", tiny_state(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors is truncated"):
        load_esrgan(path)
    path.write_bytes(b"<html>not found</html>")
    assert "cut.safetensors" in inspect_esrgan(path).problem


def test_pickle_is_refused_unless_allowed(tmp_path):
    state = tiny_state(2)
    path = write_esrgan(tmp_path / "RealESRGAN_x2.pth", {"params_ema": state, "params": tiny_state(2, seed=9)})
    with pytest.raises(ModelLoadError, match=r"RealESRGAN_x2\.pth is a pickle"):
        load_esrgan(path)
    assert "pickle" in inspect_esrgan(path).problem
    assert inspect_esrgan(path, allow_pickle=True).problem is None
    net = load_esrgan(path, allow_pickle=True)
    assert net.config == tiny_config(2)
    assert torch.equal(net.conv_first.weight, state["conv_first.weight"])  # params_ema wins, as in Real-ESRGAN


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"conv_first.weight": Payload()}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.pth could not be read as a weights-only pickle"):
        load_esrgan(path, allow_pickle=True)


def test_loaded_nets_are_memoized_per_file_identity(tmp_path):
    path = write_esrgan(tmp_path / "memo.safetensors", tiny_state(4, seed=1))
    first = load_esrgan(path)
    assert load_esrgan(path) is first
    assert load_esrgan(path, dtype=torch.float64) is not first  # another placement is another entry
    write_esrgan(path, tiny_state(4, seed=2))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_esrgan(path)
    assert second is not first
    assert not torch.equal(second.conv_first.weight, first.conv_first.weight)

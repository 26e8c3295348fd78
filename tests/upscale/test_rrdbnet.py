"""The RRDBNet matches BasicSR's layout key for key, and the old ESRGAN names convert to it."""
from __future__ import annotations

import pytest
import torch

from pipelines.errors import ModelLoadError
from pipelines.upscale.rrdbnet import (RRDBConfig, RRDBNet, config_from_shapes, detect_config, expected_shapes,
                                       to_basicsr_names)
from tests.upscale import tiny_config, tiny_state, to_old_layout


def test_x4plus_has_the_official_parameter_count_and_names():
    with torch.device("meta"):
        net = RRDBNet()  # RealESRGAN_x4plus: num_feat 64, num_block 23, num_grow_ch 32
    assert sum(p.numel() for p in net.parameters()) == 16_697_987
    shapes = expected_shapes(RRDBConfig())
    assert shapes["conv_first.weight"] == (64, 3, 3, 3)
    assert shapes["body.0.rdb1.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["body.22.rdb3.conv2.weight"] == (32, 96, 3, 3)
    assert shapes["body.22.rdb3.conv5.weight"] == (64, 192, 3, 3)  # num_feat + 4 * num_grow_ch inputs
    assert shapes["body.22.rdb3.conv5.bias"] == (64,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        assert shapes[f"{name}.weight"] == (64, 64, 3, 3)
    assert shapes["conv_last.weight"] == (3, 64, 3, 3)
    assert "body.23.rdb1.conv1.weight" not in shapes
    assert len(shapes) == 2 + 23 * 3 * 5 * 2 + 5 * 2  # conv_first, the body, five convs after it


@pytest.mark.parametrize("scale, in_channels", [(4, 3), (2, 12), (1, 48)])
def test_scale_is_read_from_the_input_channels(scale, in_channels):
    shapes = expected_shapes(tiny_config(scale))
    assert shapes["conv_first.weight"] == (8, in_channels, 3, 3)
    assert detect_config(shapes, "x.safetensors") == tiny_config(scale)


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_output_is_scale_times_the_input(scale):
    net = RRDBNet(tiny_config(scale)).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 12, 20))
    assert out.shape == (1, 3, 12 * scale, 20 * scale)


def test_pixel_unshuffle_orders_channels_as_basicsr():
    # BasicSR's pixel_unshuffle: view (b, c, h/s, s, w/s, s), permute to (b, c, s, s, h/s, w/s).
    x = torch.rand(1, 3, 8, 12)
    s = 2
    reference = x.view(1, 3, 4, s, 6, s).permute(0, 1, 3, 5, 2, 4).reshape(1, 3 * s * s, 4, 6)
    assert torch.equal(torch.nn.functional.pixel_unshuffle(x, s), reference)


def test_old_layout_keys_convert_to_the_new_names():
    state = tiny_state(4)
    old = to_old_layout(state)
    assert "model.1.sub.1.RDB3.conv5.0.weight" in old and "model.1.sub.2.weight" in old and "model.10.bias" in old
    converted = to_basicsr_names(old, "old.pth")
    assert converted.keys() == state.keys()
    assert all(converted[k] is state[k] for k in state)


def test_old_layout_other_than_x4_is_refused_by_name():
    old = to_old_layout(tiny_state(4))
    old["model.13.weight"] = old.pop("model.10.weight")  # an x8-like tail
    with pytest.raises(ModelLoadError, match=r"old\.pth .*model\.13"):
        to_basicsr_names(old, "old.pth")


def test_shapes_that_do_not_fit_are_named():
    shapes = expected_shapes(tiny_config(4))
    del shapes["body.1.rdb2.conv3.bias"]
    shapes["extra.weight"] = (1,)
    shapes["conv_hr.weight"] = (8, 8, 1, 1)
    with pytest.raises(ModelLoadError) as error:
        config_from_shapes(shapes, "broken.safetensors")
    message = str(error.value)
    assert "broken.safetensors" in message
    assert "missing (body.1.rdb2.conv3.bias)" in message
    assert "unexpected (extra.weight)" in message
    assert "conv_hr.weight (8, 8, 1, 1) instead of (8, 8, 3, 3)" in message


@pytest.mark.parametrize("change, expected", [
    (lambda s: s.pop("conv_first.weight"), "not an ESRGAN"),
    (lambda s: s.update({"conv_first.weight": (8, 4, 3, 3)}), "4 input channels"),
    (lambda s: s.update({"conv_up3.weight": (8, 8, 3, 3)}), "x8"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("body.0.")], "body indices"),
])
def test_detection_says_what_is_wrong(change, expected):
    shapes = dict(expected_shapes(tiny_config(4)))
    change(shapes)
    with pytest.raises(ModelLoadError, match=expected):
        config_from_shapes(shapes, "odd.safetensors")

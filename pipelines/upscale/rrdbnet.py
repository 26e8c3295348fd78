"""RRDBNet, the ESRGAN / Real-ESRGAN generator, with the BasicSR key names, and reading its files' layout.

Written from the architecture as BasicSR defines it (`basicsr/archs/rrdbnet_arch.py`), so that the
official weight files load key for key:

    conv_first                      3x3 conv, in_ch -> num_feat
    body.N.rdb{1,2,3}.conv{1..5}    num_block RRDBs of three residual dense blocks each
    conv_body                       3x3 conv closing the trunk (added back to conv_first's output)
    conv_up1, conv_up2              two x2 nearest upsamplings, each followed by a 3x3 conv
    conv_hr, conv_last              two 3x3 convs at the output resolution

The net always upsamples x4. Real-ESRGAN's x2 and x1 models pixel-unshuffle the input first (by 2 or
4), so conv_first takes 3*4 or 3*16 channels: the input channels tell the scale, no guessing.

The original ESRGAN release (and A1111's old files) used another naming, `model.0`, `model.1.sub.N.RDB1.conv1.0`,
`model.3/6/8/10`; `convert_old_layout` renames those keys to the layout above (only the x4 upsampling
shape exists in the BasicSR net, so old x2/x8 files are refused by name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import ModelLoadError

RESIDUAL_SCALE = 0.2  # BasicSR scales every dense block's and every RRDB's residual by 0.2
LEAKY_SLOPE = 0.2
UNSHUFFLE_BY_IN_CHANNELS = {3: 1, 12: 2, 48: 4}  # conv_first input channels -> pixel-unshuffle factor
SCALE_BY_UNSHUFFLE = {1: 4, 2: 2, 4: 1}

V = TypeVar("V")


@dataclass(frozen=True)
class RRDBConfig:
    """The hyper-parameters a weight file fixes. The defaults are RealESRGAN_x4plus (16,697,987 parameters)."""

    scale: int = 4  # 4, 2 or 1: the output is `scale` times the input
    num_feat: int = 64  # trunk channels
    num_block: int = 23  # RRDBs in the trunk (the anime 6B model has 6)
    num_grow_ch: int = 32  # channels each dense conv adds
    num_in_ch: int = 3
    num_out_ch: int = 3

    @property
    def unshuffle(self) -> int:
        """Pixel-unshuffle factor of the input (inputs must have sides divisible by it)."""
        return {4: 1, 2: 2, 1: 4}[self.scale]


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier conv's output."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", nn.Conv2d(num_feat + (index - 1) * num_grow_ch, num_grow_ch, 3, 1, 1))
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks in a row, with a scaled residual around them."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN's generator. Input and output are RGB in [0, 1], shape (N, 3, H, W) -> (N, 3, H*scale, W*scale).

    For scale 2 and 1, H and W must be divisible by 2 and 4 (the pixel-unshuffle); `upscale_image`
    pads to that.
    """

    def __init__(self, config: RRDBConfig = RRDBConfig()):
        super().__init__()
        self.config = config
        feat = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * config.unshuffle**2, feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(feat, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat, config.num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LEAKY_SLOPE))


# --- the old ESRGAN layout -------------------------------------------------------------------------

OLD_RDB_KEY = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
OLD_TRUNK_CONV_KEY = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
OLD_TOP_KEY = re.compile(r"model\.(\d+)\.(weight|bias)")
# In the old Sequential, index 0 is conv_first, 1 the trunk, and for x4: upsample 2, conv 3, act 4,
# upsample 5, conv 6, act 7, conv 8 (HR), act 9, conv 10 (last). x2 (3, 5, 7) and x8 (3, 6, 9, 11, 13)
# have other upsampling stages that the BasicSR net does not have.
OLD_X4_TAIL = {3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"}


def is_old_layout(keys) -> bool:
    return "model.0.weight" in keys


def convert_old_layout(state: Mapping[str, V], filename: str) -> dict[str, V]:
    """Rename old-ESRGAN keys to BasicSR names; values (tensors, or shapes from a header) pass through.

    Keys that fit neither layout are kept under their own name, so the layout check names them.
    """
    tail = sorted({int(m.group(1)) for k in state if (m := OLD_TOP_KEY.fullmatch(k)) and int(m.group(1)) >= 2})
    if tail != sorted(OLD_X4_TAIL):
        layers = ", ".join(f"model.{i}" for i in tail) or "none"
        raise ModelLoadError(
            f"{filename} is an old-layout ESRGAN model with upsampling layers {layers}; only the x4 layout "
            f"(model.3, model.6, model.8, model.10) can be used. Pick an x4 model, or a Real-ESRGAN x2 model."
        )
    converted: dict[str, V] = {}
    for key, value in state.items():
        if m := OLD_RDB_KEY.fullmatch(key):
            block, rdb, conv, kind = m.groups()
            converted[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := OLD_TRUNK_CONV_KEY.fullmatch(key):
            converted[f"conv_body.{m.group(2)}"] = value  # the trunk's last entry is the plain conv
        elif (m := OLD_TOP_KEY.fullmatch(key)) and int(m.group(1)) == 0:
            converted[f"conv_first.{m.group(2)}"] = value
        elif m and int(m.group(1)) in OLD_X4_TAIL:
            converted[f"{OLD_X4_TAIL[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            converted[key] = value
    trunk_convs = {m.group(1) for k in state if (m := OLD_TRUNK_CONV_KEY.fullmatch(k))}
    if len(trunk_convs) > 1:
        raise ModelLoadError(f"{filename} has {len(trunk_convs)} trunk convolutions (model.1.sub.N.weight); an ESRGAN model has one.")
    return converted


# --- reading the hyper-parameters from names and shapes ------------------------------------------------


def detect_config(shapes: Mapping[str, Sequence[int]], filename: str) -> RRDBConfig:
    """The RRDBConfig that BasicSR-layout `shapes` (tensor name -> shape) were saved from.

    Read from the names and shapes alone (a safetensors header is enough): the scale from
    conv_first's input channels, num_feat from its output channels, num_block from the body indices,
    num_grow_ch from the first dense conv. Raises ModelLoadError saying what does not fit; the full
    key-by-key check happens when the weights load.
    """
    first = shapes.get("conv_first.weight")
    if first is None:
        sample = ", ".join(list(shapes)[:3]) or "no tensors"
        raise ModelLoadError(
            f"{filename} is not an ESRGAN / Real-ESRGAN (RRDBNet) model: no conv_first.weight or model.0.weight "
            f"(first keys: {sample})."
        )
    if len(first) != 4 or tuple(first[2:]) != (3, 3):
        raise ModelLoadError(f"{filename}: conv_first.weight has shape {tuple(first)}; an RRDBNet has a 3x3 convolution there.")
    num_feat, in_channels = int(first[0]), int(first[1])
    if in_channels not in UNSHUFFLE_BY_IN_CHANNELS:
        raise ModelLoadError(
            f"{filename}: conv_first takes {in_channels} input channels; an RGB RRDBNet takes 3 (x4), 12 (x2) or 48 (x1)."
        )
    if "conv_up3.weight" in shapes:
        raise ModelLoadError(f"{filename} is an x8 RRDBNet (it has conv_up3); only x4, x2 and x1 models can be used.")
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("body.") and k.split(".")[1].isdigit()}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        found = f"body indices {sorted(blocks)[:5]}" if blocks else "no body.N blocks"
        raise ModelLoadError(f"{filename} is not a complete RRDBNet: {found}; expected body.0 to body.N-1.")
    grow = shapes.get("body.0.rdb1.conv1.weight")
    if grow is None or len(grow) != 4:
        raise ModelLoadError(f"{filename} is not a complete RRDBNet: body.0.rdb1.conv1.weight is missing.")
    return RRDBConfig(
        scale=SCALE_BY_UNSHUFFLE[UNSHUFFLE_BY_IN_CHANNELS[in_channels]],
        num_feat=num_feat,
        num_block=max(blocks) + 1,
        num_grow_ch=int(grow[0]),
    )


def layout_problems(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], limit: int = 3) -> str | None:
    """How `found` (name -> shape) differs from `expected`, in words; None when they match key for key."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {tuple(found[k])} instead of {tuple(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            problems.append(f"{len(items)} keys {label} ({', '.join(items[:limit])}{more})")
    return "; ".join(problems) or None


def expected_shapes(config: RRDBConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of the net for `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        net = RRDBNet(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def to_basicsr_names(state: Mapping[str, V], filename: str) -> dict[str, V]:
    """`state` under BasicSR names: DataParallel's "module." prefix dropped, the old layout converted."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return convert_old_layout(state, filename) if is_old_layout(state) else state


def config_from_shapes(shapes: Mapping[str, Sequence[int]], filename: str) -> RRDBConfig:
    """The config of a file's tensor shapes (name -> shape, either layout); ModelLoadError naming what does not fit."""
    shapes = to_basicsr_names(shapes, filename)
    config = detect_config(shapes, filename)
    problem = layout_problems(expected_shapes(config), shapes)
    if problem:
        raise ModelLoadError(f"{filename} does not match the RRDBNet layout (x{config.scale}, {config.num_block} blocks): {problem}.")
    return config

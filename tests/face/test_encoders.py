"""EVA02-CLIP image tower and BiSeNet parsing: official key layouts, strict loading, what EVA-CLIP sees.

Full-size layouts are checked on `meta` against tables written from the published architecture;
behaviour runs on a tiny EVA tower (24 blocks, so the five hidden states exist) and the real-size
BiSeNet (13 M parameters, fast enough on a CPU) with seeded random weights, saved the way the
official files are (`torch.save` of the whole CLIP model's state dict, rotary buffers included).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face.bisenet import NON_FACE_CLASSES, BiSeNet, face_features_image, to_gray
from pipelines.face.encoders import EVA_FILE, PARSING_FILE, FaceEncoders, face_stage_dtype, load_bisenet, load_eva_tower
from pipelines.face.eva_clip import CLIP_MEAN, CLIP_STD, EvaVisionConfig, EvaVisionTower, apply_rotary, preprocess, rotary_tables
from pipelines.bench.tiny_face import TINY_EVA, official_eva_checkpoint as official_checkpoint, official_rope_tables, seeded, write_bisenet, write_eva

# -- layouts at full size ---------------------------------------------------------------------------


def official_eva_table() -> dict[str, tuple]:
    """EVA02-CLIP-L-14-336 `visual.*`: 336 px, patch 14, width 1024, 24 blocks, SwiGLU 2730, sub-LN, head 768."""
    table = {
        "cls_token": (1, 1, 1024), "pos_embed": (1, 577, 1024),
        "patch_embed.proj.weight": (1024, 3, 14, 14), "patch_embed.proj.bias": (1024,),
        "norm.weight": (1024,), "norm.bias": (1024,), "head.weight": (768, 1024), "head.bias": (768,),
    }
    for i in range(24):
        block = {
            "norm1.weight": (1024,), "norm1.bias": (1024,), "norm2.weight": (1024,), "norm2.bias": (1024,),
            "attn.q_proj.weight": (1024, 1024), "attn.k_proj.weight": (1024, 1024), "attn.v_proj.weight": (1024, 1024),
            "attn.q_bias": (1024,), "attn.v_bias": (1024,),
            "attn.inner_attn_ln.weight": (1024,), "attn.inner_attn_ln.bias": (1024,),
            "attn.proj.weight": (1024, 1024), "attn.proj.bias": (1024,),
            "mlp.w1.weight": (2730, 1024), "mlp.w1.bias": (2730,), "mlp.w2.weight": (2730, 1024), "mlp.w2.bias": (2730,),
            "mlp.ffn_ln.weight": (2730,), "mlp.ffn_ln.bias": (2730,), "mlp.w3.weight": (1024, 2730), "mlp.w3.bias": (1024,),
        }
        table.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return table


def test_full_size_eva_tower_has_exactly_the_official_keys_and_shapes():
    with torch.device("meta"):
        tower = EvaVisionTower()
    assert {k: tuple(v.shape) for k, v in tower.state_dict().items()} == official_eva_table()
    assert tower.config.tokens == 577 and tower.config.heads == 16
    assert tower.config.hidden_blocks == (4, 8, 12, 16, 20)
    # EVA02-L's published size: 304 M parameters in the image tower.
    assert 304e6 < sum(p.numel() for p in tower.parameters()) < 305e6


def test_full_size_bisenet_has_facexlibs_layout():
    with torch.device("meta"):
        network = BiSeNet()
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    learned = {k: v for k, v in network.state_dict().items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    resnet = sum(v.numel() for k, v in learned.items() if k.startswith("cp.resnet."))
    assert resnet == 11_176_512  # torchvision's ResNet-18 without its fc layer
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer4.1.bn2.running_var": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3), "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.weight": (128,), "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1), "ffm.conv1.weight": (64, 256, 1, 1), "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3), "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv.conv.weight": (64, 128, 3, 3), "conv_out32.conv_out.weight": (19, 64, 1, 1),
        "cp.resnet.bn1.num_batches_tracked": (),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert not any("layer1.0.downsample" in k for k in shapes)  # 64 -> 64, stride 1: no projection
    assert len(shapes) == 191


def official_rotate_half(x):
    """EVA-02's rotate_half: channel pairs (x1, x2) -> (-x2, x1)."""
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), dim=-1).reshape(*x.shape[:-2], -1)


# -- rotary positions --------------------------------------------------------------------------------


def test_rotary_tables_equal_eva02s():
    for config in (EvaVisionConfig(), TINY_EVA):
        ours = rotary_tables(config)
        official = official_rope_tables(config.grid, config.head_width)
        assert torch.allclose(ours[0], official[0]) and torch.allclose(ours[1], official[1])
    assert rotary_tables(EvaVisionConfig())[0].shape == (576, 64)


def test_rotation_leaves_the_class_token_and_matches_the_official_formula():
    cos, sin = rotary_tables(TINY_EVA)
    x = torch.randn(2, 1, TINY_EVA.tokens, 64)
    rotated = apply_rotary(x, cos, sin)
    assert torch.equal(rotated[:, :, 0], x[:, :, 0])
    patches = x[:, :, 1:]
    assert torch.allclose(rotated[:, :, 1:], patches * cos + official_rotate_half(patches) * sin)
    # A rotation: the norm of every channel pair is kept.
    pair_norm = lambda t: t[:, :, 1:].reshape(2, 1, -1, 32, 2).norm(dim=-1)  # noqa: E731
    assert torch.allclose(pair_norm(rotated), pair_norm(x), atol=1e-5)


# -- the tower ---------------------------------------------------------------------------------------


def test_hidden_states_are_the_inputs_of_blocks_4_8_12_16_20():
    tower = seeded(EvaVisionTower(TINY_EVA), 1)
    seen = {}
    for index, block in enumerate(tower.blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: seen.__setitem__(index, args[0].clone()))
    with torch.no_grad():
        embedding, hidden = tower(torch.randn(2, 3, 56, 56))
    assert embedding.shape == (2, 8)
    assert len(hidden) == 5
    for state, block in zip(hidden, (4, 8, 12, 16, 20)):
        assert torch.equal(state, seen[block])
        assert state.shape == (2, TINY_EVA.tokens, 64)


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="56x56"):
        EvaVisionTower(TINY_EVA)(torch.zeros(1, 3, 64, 64))


# -- loading the files -------------------------------------------------------------------------------


def test_official_layout_eva_checkpoint_loads_strictly_and_computes_the_same(tmp_path):
    path, tower = write_eva(tmp_path)
    loaded = load_eva_tower(path)
    assert loaded.config == TINY_EVA
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected, expected_hidden = tower(pixels)
        got, got_hidden = loaded(pixels)
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(got_hidden, expected_hidden))


def test_eva_checkpoint_wrapped_and_module_prefixed_loads(tmp_path):
    tower = seeded(EvaVisionTower(TINY_EVA), 4)
    state = {f"module.{k}": v for k, v in official_checkpoint(tower).items()}
    torch.save({"state_dict": state}, tmp_path / EVA_FILE)
    assert torch.equal(load_eva_tower(tmp_path / EVA_FILE).head.weight, tower.head.weight)


def test_eva_layout_errors_name_what_differs(tmp_path):
    tower = seeded(EvaVisionTower(TINY_EVA), 5)
    state = official_checkpoint(tower)
    del state["visual.blocks.3.attn.q_bias"]
    torch.save(state, tmp_path / EVA_FILE)
    with pytest.raises(ModelLoadError, match=r"1 missing \(blocks\.3\.attn\.q_bias\)"):
        load_eva_tower(tmp_path / EVA_FILE)

    state = official_checkpoint(tower)
    state["visual.blocks.0.attn.rope.freqs_cos"] = state["visual.blocks.0.attn.rope.freqs_cos"].flip(0)
    torch.save(state, tmp_path / EVA_FILE)
    with pytest.raises(ModelLoadError, match="rotary table"):
        load_eva_tower(tmp_path / EVA_FILE)

    torch.save({"text.token_embedding.weight": torch.zeros(3, 3)}, tmp_path / EVA_FILE)
    with pytest.raises(ModelLoadError, match="no visual"):
        load_eva_tower(tmp_path / EVA_FILE)


def test_truncated_or_foreign_files_are_load_errors(tmp_path):
    path, _ = write_eva(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="Cannot read the EVA-CLIP file"):
        load_eva_tower(path)
    bogus = tmp_path / PARSING_FILE
    bogus.write_text("<html>404</html>")
    with pytest.raises(ModelLoadError, match="Cannot read the face parsing file"):
        load_bisenet(bogus)


def test_bisenet_file_loads_strictly_also_without_batchnorm_counters(tmp_path):
    path, network = write_bisenet(tmp_path, drop_counters=True)
    loaded = load_bisenet(path)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = network(image)
        got = loaded(image)
    assert got.shape == (1, 19, 128, 128)
    assert torch.allclose(got, expected)
    state = network.state_dict()
    del state["ffm.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match="ffm.conv1.weight"):
        load_bisenet(path)


# -- what EVA-CLIP sees ------------------------------------------------------------------------------


def test_non_face_classes_white_and_the_face_gray():
    image = torch.rand(1, 3, 4, 5)
    labels = torch.tensor([[[0, 1, 2, 16, 18], [7, 8, 9, 14, 15], [10, 11, 12, 13, 17], [3, 4, 5, 6, 1]]])
    out = face_features_image(image, labels)
    gray = to_gray(image)
    assert torch.allclose(gray[:, 0], 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2])
    for y in range(4):
        for x in range(5):
            if int(labels[0, y, x]) in NON_FACE_CLASSES:
                assert torch.equal(out[0, :, y, x], torch.ones(3))
            else:
                assert torch.equal(out[0, :, y, x], gray[0, :, y, x])
                assert out[0, 0, y, x] == out[0, 1, y, x] == out[0, 2, y, x]


@pytest.fixture()
def encoder_files(tmp_path):
    write_eva(tmp_path / "eva_clip")
    write_bisenet(tmp_path / "facexlib")
    return tmp_path


def test_face_encoders_encode_an_aligned_face_and_release(encoder_files):
    encoders = FaceEncoders.load(encoder_files, "cpu")
    face = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    embedding, hidden, shown = encoders.encode(face)
    assert embedding.shape == (1, 8) and embedding.dtype == torch.float32
    assert [h.shape for h in hidden] == [(1, TINY_EVA.tokens, 64)] * 5
    assert shown.shape == (512, 512, 3) and shown.dtype == np.uint8
    # Every pixel is white (not face) or the face's gray: the three channels are equal everywhere.
    assert ((shown[..., 0] == shown[..., 1]) & (shown[..., 1] == shown[..., 2])).all()
    features, parsed = encoders.parse(face)
    assert np.array_equal(parsed, shown) and features.shape == (1, 3, 512, 512)
    again, _, _ = encoders.encode(face)
    assert torch.equal(again, embedding)  # deterministic
    other, _, _ = encoders.encode(255 - face)
    assert not torch.allclose(other, embedding)
    encoders.release()
    assert encoders.eva is None and encoders.parsing is None
    with pytest.raises(RuntimeError, match="released"):
        encoders.encode(face)


def test_missing_encoder_files_name_the_file_and_folder(tmp_path):
    with pytest.raises(ModelNotFound, match=r"parsing_bisenet\.pth .*facexlib"):
        FaceEncoders.load(tmp_path, "cpu")
    write_bisenet(tmp_path / "facexlib")
    with pytest.raises(ModelNotFound, match=r"EVA02_CLIP_L_336_psz14_s6B\.pt .*eva_clip"):
        FaceEncoders.load(tmp_path, "cpu")
    assert FaceEncoders.load(tmp_path, "cpu", with_eva=False).eva is None


# -- the official pipelines' input side: resize and precision ---------------------------------------


def normalized(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def test_eva_input_resize_is_torchvision_015s_bicubic_without_antialiasing():
    """The official 512 -> 336 resize: torchvision 0.15.2's tensor `resize(..., BICUBIC)`, whose
    antialias resolves to False for tensors: plain bicubic, align_corners=False, no clamp."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=generator)
    image[..., ::2, :] = 1.0  # fine stripes: where antialiasing changes the result most
    ours = preprocess(image, 336)
    reference = normalized(F.interpolate(image, size=(336, 336), mode="bicubic", align_corners=False, antialias=False))
    antialiased = normalized(F.interpolate(image, size=(336, 336), mode="bicubic", align_corners=False, antialias=True))
    assert ours.shape == (1, 3, 336, 336)
    assert torch.equal(ours, reference)
    assert (ours - antialiased).abs().max() > 0.5  # the antialiased resize Likeness used before differs clearly
    assert torch.equal(preprocess(image[..., :336, :336], 336), normalized(image[..., :336, :336]))  # right size: no resize


def test_encode_feeds_eva_the_unantialiased_resize_of_the_parsed_face(encoder_files):
    encoders = FaceEncoders.load(encoder_files, "cpu")
    seen = []
    encoders.eva.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    face = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    encoders.encode(face)
    features, _ = encoders.parse(face)
    size = TINY_EVA.image_size
    expected = normalized(F.interpolate(features, size=(size, size), mode="bicubic", align_corners=False, antialias=False))
    assert len(seen) == 1 and torch.equal(seen[0], expected)


@pytest.mark.parametrize("family, device, bf16, expected", [
    ("sdxl", "cpu", True, torch.float32),
    ("flux", "cpu", True, torch.float32),  # the FLUX transformer's CPU dtype; bf16 is emulated (slow) on most CPUs
    ("sdxl", "cuda", True, torch.float32),  # official v1.1: EVA-CLIP and the IDFormer in fp32
    ("flux", "cuda", True, torch.bfloat16),  # official PuLID-FLUX: weight_dtype=torch.bfloat16
    ("flux", "cuda", False, torch.float32),  # a GPU without bf16: the transformer's fp32 as well
    ("sdxl", "mps", True, torch.float32),
])
def test_face_stage_dtype_follows_the_official_pipeline_of_each_family(monkeypatch, family, device, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert face_stage_dtype(torch.device(device), family) == expected


def test_encoders_run_eva_in_the_dtype_given_and_return_it(encoder_files):
    encoders = FaceEncoders.load(encoder_files, "cpu", eva_dtype=torch.bfloat16)
    assert {p.dtype for p in encoders.eva.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in encoders.parsing.parameters()} == {torch.float32}  # BiSeNet: fp32 in both official pipelines
    seen = []
    encoders.eva.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    face = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    embedding, hidden, _ = encoders.encode(face)
    assert seen == [torch.bfloat16]
    assert embedding.dtype == torch.bfloat16 and {h.dtype for h in hidden} == {torch.bfloat16}

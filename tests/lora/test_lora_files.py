"""LoRA files without a model: family from the header, the A1111 hash, prompt tags, the RAM memo."""
from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors.torch import save_file

from pipelines.families import Family
from pipelines.lora import files as files_module
from pipelines.lora.files import StateDictMemo, close_names, detect_family, inspect_lora, lora_hash, scan_loras
from pipelines.lora.tags import LoraRef, LoraSyntaxError, extract_lora_tags, infotext_hashes, lora_refs, parse_infotext_hashes, parse_lora_arg
from tests.lora.make_loras import write_lora


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_family_and_layout_of_tiny_loras(tmp_path, tiny_pipes, family, layout):
    path = write_lora(tmp_path, "x", tiny_pipes[family], family, layout)
    entry = inspect_lora(path, "x")
    assert (entry.family, entry.layout, entry.problem) == (Family(family), layout, None)
    assert entry.text_encoder and entry.size_bytes == path.stat().st_size


def header(keys: dict) -> dict:
    return {key: {"dtype": "F16", "shape": list(shape), "data_offsets": [0, 0]} for key, shape in keys.items()}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, Family.SD15),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 640)}, Family.SDXL),
        ({"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}, Family.SD15),
        ({"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)}, Family.SDXL),
        ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072)}, Family.FLUX),
        ({"diffusion_model.single_blocks.0.linear1.lora_A.weight": (16, 3072)}, Family.FLUX),
        ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (16, 3072)}, Family.FLUX),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, Family.SD15),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)}, Family.SDXL),
        ({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 1280)}, None),
    ],
    ids=["sd15-kohya", "sdxl-sgm", "sd15-context", "sdxl-context", "flux-kohya", "flux-comfy", "flux-diffusers",
         "sd15-te-only", "sdxl-te2", "undecidable"],
)
def test_family_from_real_model_key_names(keys, expected):
    assert detect_family(header(keys))[0] is expected


def test_damaged_or_foreign_files_say_why(tmp_path):
    folder = tmp_path / "models" / "Lora"
    folder.mkdir(parents=True)
    (folder / "cut.safetensors").write_bytes(struct.pack("<Q", 200) + b"{" + b" " * 20)
    save_file({"encoder.down.0.weight": torch.zeros(2)}, str(folder / "vae.safetensors"))
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 3)}, str(folder / "which.safetensors"))
    entries = {e.name: e for e in scan_loras(tmp_path / "models")}
    assert entries["cut"].problem.startswith("cut.safetensors") and not entries["cut"].usable
    assert "holds no LoRA weights" in entries["vae"].problem
    assert "cannot tell" in entries["which"].problem and "which.safetensors" in entries["which"].problem


def test_both_folders_are_scanned_and_clashing_names_keep_their_path(tmp_path, tiny_pipes):
    models = tmp_path / "models"
    write_lora(models / "Lora", "style", tiny_pipes["sd15"], "sd15", "kohya")
    write_lora(models / "loras", "style", tiny_pipes["sdxl"], "sdxl", "kohya")
    write_lora(models / "Lora" / "sub", "detail", tiny_pipes["flux"], "flux", "diffusers")
    names = sorted(e.name for e in scan_loras(models))
    assert names == ["Lora/style", "detail", "loras/style"]


def test_lora_hash_is_a1111s(tmp_path, tiny_pipes):
    path = write_lora(tmp_path, "h", tiny_pipes["sd15"], "sd15", "kohya")
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    assert lora_hash(path) == hashlib.sha256(data[8 + length:]).hexdigest()[:12]


def test_the_memo_reads_a_file_once_and_hands_out_copies(tmp_path, tiny_pipes, monkeypatch):
    path = write_lora(tmp_path, "m", tiny_pipes["sd15"], "sd15", "kohya")
    memo = StateDictMemo()
    first, hit = memo.get(path)
    assert not hit
    monkeypatch.setattr(files_module, "read_state_dict", lambda _path: pytest.fail("the file was read again"))
    first.clear()  # diffusers' converters pop keys: the memo's own dict must not change
    second, hit = memo.get(path)
    assert hit and second and memo.hits == 1


def test_tags_anywhere_several_negative_and_default_weight():
    prompt, refs = extract_lora_tags("<lora:a:0.5>a cat, <lora:b> on a mat <lora:c:-1.25> <hypernet:h:1>, <lora:d:0.7:0.2>")
    assert prompt == "a cat,  on a mat  <hypernet:h:1>, "
    assert refs == [LoraRef("a", 0.5), LoraRef("b", 1.0), LoraRef("c", -1.25), LoraRef("d", 0.7, 0.2)]
    assert lora_refs("<lora:a:1> x <lora:a:0.3>") == [LoraRef("a", 0.3)]


@pytest.mark.parametrize(("tag", "text_encoders", "denoiser"), [
    ("<lora:d:0.7:0.2>", 0.7, 0.2),  # A1111: the first number is the text encoders', the second the UNet's
    ("<lora:d:0.7:0.7>", 0.7, 0.7),
    ("<lora:d:unet=0.3>", 1.0, 0.3),
    ("<lora:d:te=0>", 0.0, 1.0),
    ("<lora:d:0.5:te=0.9>", 0.9, 0.5),  # te= overrides the text encoders' only; the UNet keeps the first number
    ("<lora:d:0.5:unet=-1:te=2>", 2.0, -1.0),
    ("<lora:d:0.8:dyn=16>", 0.8, 0.8),  # LyCORIS' dynamic rank: read, no effect here
])
def test_a1111s_separate_text_encoder_and_unet_weights(tag, text_encoders, denoiser):
    (ref,) = extract_lora_tags(tag)[1]
    assert (ref.weight, ref.denoiser_weight) == (text_encoders, denoiser)
    assert (ref.unet_weight is None) == (text_encoders == denoiser), "one weight for both reads as a plain weight"


@pytest.mark.parametrize(("prompt", "expected"), [
    ("<lora:a:heavy>", "must be a number, got 'heavy'"),
    ("<lora:a:10.5>", "between -10 and 10"),
    ("<lora:a:nan>", "between -10 and 10"),
    ("<lora::1>", "names no LoRA"),
    ("<lora:a:1:heavy>", "must be a number, got 'heavy'"),
    ("<lora:a:unet=20>", "between -10 and 10"),
    ("<lora:a:strength=1>", "unknown argument strength="),
])
def test_bad_tags_say_why(prompt, expected):
    with pytest.raises(LoraSyntaxError, match=expected):
        extract_lora_tags(prompt)


def test_cli_form_and_infotext_hashes():
    assert parse_lora_arg("detail:0.6") == LoraRef("detail", 0.6)
    assert parse_lora_arg("detail") == LoraRef("detail", 1.0)
    with pytest.raises(LoraSyntaxError):
        parse_lora_arg("detail:x")
    text = infotext_hashes([("a", "0123456789ab"), ("b", "ba9876543210")])
    assert text == "a: 0123456789ab, b: ba9876543210"
    assert parse_infotext_hashes(text) == {"a": "0123456789ab", "b": "ba9876543210"}


def test_close_names():
    assert close_names("detial", ["detail", "style", "add_detail_xl"])[:2] == ["detail", "add_detail_xl"]

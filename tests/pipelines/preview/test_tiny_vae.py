"""Tiny autoencoder files: madebyollin's standalone decoder keys and diffusers' folder, per family; the
key map checked against the official layout; pickles, mismatches and damaged files named."""
from __future__ import annotations

import pytest
import torch

from pipelines.errors import ModelLoadError
from pipelines.families import Family
from pipelines.preview.tiny_vae import build_tiny_decoder, empty_decoder, find_tiny_decoder, to_diffusers_names
from tests.pipelines.preview.taesd_files import approx_dir, official_decoder, seeded_official, write_diffusers_folder, write_official

FAMILIES = list(Family)


@pytest.mark.parametrize("channels", [4, 16])
def test_official_keys_map_onto_the_full_size_diffusers_decoder(channels):
    """Every key of madebyollin's standalone decoder lands on DecoderTiny's key of the same shape (both built on meta)."""
    with torch.device("meta"):
        official = {k: tuple(v.shape) for k, v in official_decoder(channels).state_dict().items()}
    mapped = to_diffusers_names({k: torch.empty(shape, device="meta") for k, shape in official.items()})
    expected = {k: tuple(v.shape) for k, v in empty_decoder({"latent_channels": channels}).decoder.state_dict().items()}
    assert "1.weight" in official and "3.conv.0.weight" in official and "19.weight" in official
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert len(expected) == 67
    if channels == 4:  # madebyollin's README: 1,222,531 parameters in TAESD's decoder
        assert sum(v.numel() for v in empty_decoder({"latent_channels": 4}).decoder.parameters()) == 1_222_531


def test_whole_module_checkpoints_keep_only_the_decoder():
    state = {"encoder.0.weight": torch.zeros(1), "decoder.1.weight": torch.zeros(2), "decoder.layers.5.bias": torch.zeros(3)}
    assert set(to_diffusers_names(state)) == {"layers.0.weight", "layers.5.bias"}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("family", FAMILIES)
def test_official_file_decodes_as_madebyollins_decoder(tmp_path, family, suffix):
    path, reference = write_official(tmp_path, family, suffix, seed=3)
    found = find_tiny_decoder(tmp_path, family)
    assert found is not None and found.path == path
    net = build_tiny_decoder(found, allow_pickle=True)
    latents = torch.randn(1, family.spec.latent_channels, 6, 5, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        ours = net.decode(latents).sample
        theirs = reference(latents) * 2 - 1  # official: [0, 1]; diffusers: [-1, 1]
    assert ours.shape == (1, 3, 48, 40)  # 8x the latent
    assert ours.std() > 0.05
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_folder_decodes_as_the_saved_autoencoder(tmp_path, family):
    folder, saved = write_diffusers_folder(tmp_path, family, seed=5)
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    found = find_tiny_decoder(tmp_path, family)
    assert found is not None and found.path == folder
    net = build_tiny_decoder(found)
    assert net.encoder is None  # never built: the preview only decodes
    latents = torch.randn(1, family.spec.latent_channels, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net.decode(latents).sample, saved.decode(latents).sample)


def test_each_family_finds_only_its_own_file(tmp_path):
    write_official(tmp_path, Family.SDXL)
    assert find_tiny_decoder(tmp_path, Family.SD15) is None
    assert find_tiny_decoder(tmp_path, Family.FLUX) is None
    assert find_tiny_decoder(tmp_path, Family.SDXL).label == "TAESDXL"
    assert find_tiny_decoder(tmp_path / "nowhere", Family.SDXL) is None


def test_safetensors_is_preferred_over_a_pickle(tmp_path):
    write_official(tmp_path, Family.SD15, ".pth")
    safe, _ = write_official(tmp_path, Family.SD15, ".safetensors")
    assert find_tiny_decoder(tmp_path, Family.SD15).path == safe


def test_pickle_needs_the_pickle_setting(tmp_path):
    write_official(tmp_path, Family.SD15, ".pth")
    found = find_tiny_decoder(tmp_path, Family.SD15)
    with pytest.raises(ModelLoadError, match=r"taesd_decoder\.pth is a pickle checkpoint.*Allow pickle"):
        build_tiny_decoder(found, allow_pickle=False)
    assert build_tiny_decoder(found, allow_pickle=True) is not None


def test_decoder_for_other_latents_is_named(tmp_path):
    """A TAEF1 (16 channels) saved under TAESD's name: the message names the file and says which one fits."""
    state = seeded_official(16).state_dict()
    write_official(tmp_path, Family.SD15, state=state)
    with pytest.raises(ModelLoadError, match=r"taesd_decoder\.safetensors does not hold a TAESD decoder.*layers\.0\.weight is 64x16x3x3, expected 64x4x3x3"):
        build_tiny_decoder(find_tiny_decoder(tmp_path, Family.SD15))


def test_encoder_file_under_the_decoder_name_is_named(tmp_path):
    encoder = {"0.weight": torch.zeros(64, 3, 3, 3), "0.bias": torch.zeros(64), "1.conv.0.weight": torch.zeros(64, 64, 3, 3)}
    write_official(tmp_path, Family.SDXL, state=encoder)
    with pytest.raises(ModelLoadError, match=r"taesdxl_decoder\.safetensors does not hold a TAESDXL decoder.*missing"):
        build_tiny_decoder(find_tiny_decoder(tmp_path, Family.SDXL))


def test_folder_config_for_other_latents_is_named(tmp_path):
    folder, _ = write_diffusers_folder(tmp_path, Family.SD15)
    (folder.parent / "taef1").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (folder / name).rename(folder.parent / "taef1" / name)
    with pytest.raises(ModelLoadError, match=r"taef1 is a tiny autoencoder for 4 latent channels; FLUX\.1 latents have 16"):
        build_tiny_decoder(find_tiny_decoder(tmp_path, Family.FLUX))


def test_folder_without_weights_and_truncated_files_are_named(tmp_path):
    (approx_dir(tmp_path) / "taesd").mkdir()
    with pytest.raises(ModelLoadError, match=r"taesd/ has no diffusion_pytorch_model\.safetensors"):
        build_tiny_decoder(find_tiny_decoder(tmp_path, Family.SD15))
    (approx_dir(tmp_path) / "taesdxl_decoder.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ModelLoadError, match=r"taesdxl_decoder\.safetensors is empty or truncated"):
        build_tiny_decoder(find_tiny_decoder(tmp_path, Family.SDXL))

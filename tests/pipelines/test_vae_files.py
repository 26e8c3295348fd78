"""External VAEs (A1111's SD VAE): real VAE files in the original and the diffusers layouts, swapped in for one run."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.infotext import parse_infotext
from pipelines.vae_files import find_vae, vae_names
from tests.ldm_layout import vae_to_ldm
from tests.tiny_models import copy_model, tiny_request


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def vae_models(tmp_path_factory, tiny_pipes, model_zoo):
    models = tmp_path_factory.mktemp("vae-models")
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    vae = tiny_pipes["sd15"].vae
    own = {key: value.detach().clone().contiguous() for key, value in vae.state_dict().items()}
    folder = models / "vae"  # A1111's folder, found in any case
    save_file(vae_to_ldm(own, dict(vae.config)), str(folder.mkdir() or folder / "same-as-own.safetensors"))
    warmer = dict(own)
    warmer["decoder.conv_out.bias"] = own["decoder.conv_out.bias"] + torch.tensor([0.4, 0.0, -0.4])  # redder pictures
    save_file({f"first_stage_model.{k}": v for k, v in vae_to_ldm(warmer, dict(vae.config)).items()}, str(folder / "warm-ldm.safetensors"))
    save_file(warmer, str(folder / "warm-diffusers-layout.safetensors"))
    flux_vae = tiny_pipes["flux"].vae.state_dict()
    save_file({k: v.contiguous() for k, v in vae_to_ldm(flux_vae, dict(tiny_pipes["flux"].vae.config)).items()}, str(folder / "flux-ae.safetensors"))
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    return models


@pytest.fixture(scope="module")
def manager(tmp_path_factory, vae_models, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    return PipelineManager(ManagerConfig(vae_models, tmp_path_factory.mktemp("vae-out"), tmp_path_factory.mktemp("vae-cache"),
                                         device="cpu", include_hf_cache=False, latent_cache_entries=0))


def test_the_vae_folder_is_listed_by_file_name(vae_models):
    assert vae_names(vae_models) == ["Automatic", "flux-ae.safetensors", "same-as-own.safetensors", "truncated.safetensors",
                                     "warm-diffusers-layout.safetensors", "warm-ldm.safetensors"]
    assert find_vae("Automatic", vae_models) is None and find_vae("None", vae_models) is None
    assert find_vae("WARM-LDM", vae_models).name == "warm-ldm.safetensors"  # A1111 names without the suffix work too
    with pytest.raises(ModelNotFound, match="No VAE named 'nope'. Available: Automatic, flux-ae.safetensors"):
        find_vae("nope", vae_models)


def test_a_copy_of_the_models_own_vae_in_the_original_layout_gives_the_same_picture(manager):
    own = manager.generate(tiny_request(seed=3, save=False))
    same = manager.generate(tiny_request(seed=3, save=False, vae="same-as-own.safetensors"))
    assert np.array_equal(pixels(same), pixels(own))  # diffusers' converter read every weight where it belongs
    params = parse_infotext(same.images[0].infotext)
    digest = hashlib.sha256((manager.config.models_dir / "vae" / "same-as-own.safetensors").read_bytes()).hexdigest()[:10]
    assert (params["VAE"], params["VAE hash"]) == ("same-as-own.safetensors", digest)
    assert "VAE" not in parse_infotext(own.images[0].infotext) and "VAE hash" not in parse_infotext(own.images[0].infotext)


@pytest.mark.parametrize("name", ["warm-ldm.safetensors", "warm-diffusers-layout.safetensors"])
def test_another_vae_decodes_the_same_latents_differently_and_the_models_own_comes_back(manager, name):
    own = manager.generate(tiny_request(seed=4, save=False))
    warm = manager.generate(tiny_request(seed=4, save=False, vae=name))
    red_shift = (pixels(warm)[..., 0] - pixels(own)[..., 0]).mean() - (pixels(warm)[..., 2] - pixels(own)[..., 2]).mean()
    assert red_shift > 20, "the external VAE's decoder was not used"
    assert "VAE warm" in warm.stage_details["model load"]
    again = manager.generate(tiny_request(seed=4, save=False))
    assert np.array_equal(pixels(again), pixels(own)), "the model's own VAE was not put back"
    assert warm.kept_latents.vae_path.name == name
    redecoded = manager.redecode(warm.kept_latents, "fp32")
    assert redecoded.psnr_vs_first == [float("inf")]  # Re-decode uses the VAE the picture was made with


def test_another_familys_vae_or_a_broken_file_is_refused_and_the_model_still_works(manager):
    with pytest.raises(ModelLoadError, match="does not fit this model's VAE"):
        manager.generate(tiny_request(save=False, vae="flux-ae.safetensors"))
    with pytest.raises(ModelLoadError, match="The VAE file truncated.safetensors cannot be read"):
        manager.generate(tiny_request(save=False, vae="truncated.safetensors"))
    with pytest.raises(ModelNotFound, match="No VAE named 'missing.safetensors'"):
        manager.generate(tiny_request(save=False, vae="missing.safetensors"))
    assert manager.generate(tiny_request(save=False)).images


def test_img2img_with_an_external_vae_is_its_own_exact_repeat(make_manager, vae_models):
    manager = make_manager(vae_models)  # the exact-repeat latent cache on
    picture = manager.generate(tiny_request(seed=5, save=False)).images[0].image
    img2img = tiny_request(seed=6, save=False, init_image=picture, denoising_strength=0.5)
    manager.generate(img2img)
    assert manager.generate(img2img).cache_notes.get("latent cache") == "hit: denoising skipped"  # a true repeat
    other = manager.generate(dataclasses.replace(img2img, vae="warm-ldm.safetensors"))
    assert other.cache_notes["latent cache"] == "miss"  # the init image was encoded by another VAE: not a repeat


def test_a_vae_that_is_not_a_name_is_refused_by_the_request_check(manager):
    from pipelines.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"VAE must be a VAE's name \(or Automatic\), got 3."):
        manager.generate(tiny_request(save=False, vae=3))

"""Single-file checkpoints in the original layouts, discovered and generated through the manager.

The tiny SD 1.5 / SDXL pipelines are written with tests/ldm_layout.py in the original single-file
layout, with their tiny diffusers configs in a `<stem>.config/` sidecar (the loader reads that
instead of the bundled full-size configs). FLUX.1: a BFL-layout transformer file next to a tiny
FLUX diffusers folder, which provides the text encoders, tokenizers, VAE and scheduler.

Single-file and diffusers-folder copies of the same weights must give the same image for a seed.
"""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from pipelines.errors import ModelLoadError
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from tests.ldm_layout import export_flux_transformer_bfl, export_ldm_checkpoint
from tests.tiny_models import (
    build_tiny_flux_transformer,
    copy_model,
    install_tiny_flux_split,
    save_config_only,
    tiny_request,
)


def image_array(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def single_file_models(tmp_path_factory, tiny_pipes, model_zoo):
    models = tmp_path_factory.mktemp("single-file-models")
    for family in ("sd15", "sdxl"):
        export_ldm_checkpoint(tiny_pipes[family], models / f"single-{family}.safetensors", family)
        save_config_only(tiny_pipes[family], models / f"single-{family}.config")
        copy_model(model_zoo[family], models, f"folder-{family}")
    # FLUX: the diffusers folder, the same transformer as a BFL file, and a different transformer.
    copy_model(model_zoo["flux"], models, "flux-base")
    export_flux_transformer_bfl(tiny_pipes["flux"].transformer, models / "flux1-same.safetensors")
    export_flux_transformer_bfl(build_tiny_flux_transformer(seed=999), models / "flux1-other.safetensors")
    return models


@pytest.fixture(scope="module")
def single_file_manager(tmp_path_factory, single_file_models, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    config = ManagerConfig(
        single_file_models, tmp_path_factory.mktemp("sf-outputs"), tmp_path_factory.mktemp("sf-cache"),
        device="cpu", include_hf_cache=False,
    )
    return PipelineManager(config)


def test_single_files_are_discovered_with_family_and_format(single_file_manager, single_file_models):
    entries = {e.name: e for e in single_file_manager.models()}
    assert entries["single-sd15"].family is Family.SD15 and entries["single-sd15"].format == "single-file"
    assert entries["single-sdxl"].family is Family.SDXL and entries["single-sdxl"].format == "single-file"
    for name in ("single-sd15", "single-sdxl", "flux1-same", "flux1-other"):
        assert entries[name].usable, entries[name].problem
    # The sidecar config folders are not listed as models of their own.
    assert not any(name.endswith(".config") for name in entries)
    for name in ("flux1-same", "flux1-other"):
        assert entries[name].format == "flux-transformer"
        assert entries[name].family is Family.FLUX
        assert entries[name].base_path == single_file_models / "flux-base"
    assert entries["single-sd15"].size_bytes == (single_file_models / "single-sd15.safetensors").stat().st_size


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_single_file_generates_like_the_diffusers_folder(single_file_manager, single_file_models, family):
    single = single_file_manager.generate(tiny_request(family, model=f"single-{family}", seed=31))
    folder = single_file_manager.generate(tiny_request(family, model=f"folder-{family}", seed=31))
    assert single.images[0].image.size == folder.images[0].image.size
    assert np.array_equal(image_array(single), image_array(folder)), "the single file lost or changed weights"
    # A1111's model hash: the first 10 hex digits of the file's sha256; folders have none.
    digest = hashlib.sha256((single_file_models / f"single-{family}.safetensors").read_bytes()).hexdigest()[:10]
    assert parse_infotext(single.images[0].infotext)["Model hash"] == digest
    assert "Model hash" not in parse_infotext(folder.images[0].infotext)
    assert single.images[0].path and folder.images[0].path


def test_flux_transformer_file_generates_with_the_base_folder(single_file_manager, monkeypatch):
    install_tiny_flux_split(monkeypatch)  # diffusers' converter hard-codes FLUX.1's full width
    base = single_file_manager.generate(tiny_request("flux", model="flux-base", seed=12, save=False))
    same = single_file_manager.generate(tiny_request("flux", model="flux1-same", seed=12, save=False))
    other = single_file_manager.generate(tiny_request("flux", model="flux1-other", seed=12, save=False))
    assert same.images[0].image.size == (256, 256)
    # Same weights in another memory layout: float sums may round differently by one level at most.
    assert np.abs(image_array(same) - image_array(base)).max() <= 2
    assert np.abs(image_array(other) - image_array(base)).mean() > 2, "the transformer file's weights were not used"
    params = parse_infotext(same.images[0].infotext)
    assert params["Model"] == "flux1-same" and len(params["Model hash"]) == 10


def test_single_file_without_sidecar_and_mismatched_bundled_config_fails_clearly(tmp_path, tiny_pipes, make_manager):
    models = tmp_path / "models"
    export_ldm_checkpoint(tiny_pipes["sd15"], models / "tiny-v1-5.safetensors", "sd15")
    manager = make_manager(models)
    assert manager.entry("tiny-v1-5").usable  # the header looks like SD 1.5
    with pytest.raises(ModelLoadError) as raised:
        manager.generate(tiny_request("sd15", model="tiny-v1-5"))
    message = str(raised.value)
    assert "tiny-v1-5" in message
    assert "Stable Diffusion 1.5" in message
    assert not manager.cache.records(), "a failed load must leave nothing in the cache"


def test_shape_mismatch_message_is_actionable(tmp_path, tiny_pipes, make_manager):
    """Regression: diffusers' own text told the user to pass low_cpu_mem_usage / ignore_mismatched_sizes."""
    models = tmp_path / "models"
    export_ldm_checkpoint(tiny_pipes["sd15"], models / "tiny-v1-5.safetensors", "sd15")
    manager = make_manager(models)
    with pytest.raises(ModelLoadError) as raised:
        manager.generate(tiny_request("sd15", model="tiny-v1-5"))
    message = str(raised.value)
    assert "low_cpu_mem_usage" not in message and "ignore_mismatched_sizes" not in message
    assert "architecture" in message and "tiny-v1-5.config" in message


def test_single_file_missing_weights_is_refused(tmp_path, tiny_pipes, make_manager):
    """A file whose text encoder was cut out still looks like SD 1.5 by its header; loading it says what is missing."""
    from safetensors.torch import load_file, save_file

    models = tmp_path / "models"
    path = export_ldm_checkpoint(tiny_pipes["sd15"], tmp_path / "full.safetensors", "sd15")
    state = load_file(str(path))
    dropped = [k for k in state if k.startswith("model.diffusion_model.out.")]
    assert dropped
    for key in dropped:
        del state[key]
    models.mkdir()
    save_file(state, str(models / "partial.safetensors"))
    save_config_only(tiny_pipes["sd15"], models / "partial.config")
    manager = make_manager(models)
    with pytest.raises(ModelLoadError) as raised:
        manager.generate(tiny_request("sd15", model="partial"))
    message = str(raised.value)
    assert message.startswith("partial.safetensors lacks")
    assert "Stable Diffusion 1.5" in message and "incomplete" in message


def test_flux_transformer_without_base_folder_names_what_to_add(tmp_path, tiny_pipes, make_manager):
    models = tmp_path / "models"
    export_flux_transformer_bfl(tiny_pipes["flux"].transformer, models / "flux1-dev.safetensors")
    manager = make_manager(models)
    entry = manager.entry("flux1-dev")
    assert entry.format == "flux-transformer" and entry.base_path is None and not entry.usable
    assert "FLUX.1 diffusers folder" in entry.problem and "tokenizer_2" in entry.problem
    with pytest.raises(ModelLoadError, match="FLUX.1 diffusers folder"):
        manager.generate(tiny_request("flux", model="flux1-dev"))


def test_flux_base_folder_missing_a_part_names_it(tmp_path, model_zoo, tiny_pipes, make_manager, monkeypatch):
    install_tiny_flux_split(monkeypatch)
    models = tmp_path / "models"
    base = copy_model(model_zoo["flux"], models, "flux-base")
    export_flux_transformer_bfl(tiny_pipes["flux"].transformer, models / "flux1-dev.safetensors")
    shutil.rmtree(base / "tokenizer_2")
    manager = make_manager(models)
    with pytest.raises(ModelLoadError) as raised:
        manager.generate(tiny_request("flux", model="flux1-dev"))
    assert "tokenizer_2" in str(raised.value)
    with pytest.raises(ModelLoadError, match="tokenizer_2"):
        manager.generate(tiny_request("flux", model="flux-base"))

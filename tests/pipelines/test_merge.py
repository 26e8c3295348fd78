"""Checkpoint merger (A1111's tab): real tiny single-file checkpoints in A1111's layout, merged, listed and generated from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipelines.errors import GenerationCancelled, InvalidRequest, LikenessError, ModelNotFound
from pipelines.generate import CancelToken
from pipelines.merge import MergeRequest
from tests.ldm_layout import export_ldm_checkpoint
from tests.tiny_models import copy_model, save_config_only, tiny_request

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def write_variant(source: Path, target: Path, scale: float, shift: float, **replaced) -> Path:
    """`source`'s tensors changed (float ones x scale + shift), as another fine-tune of the same base."""
    state = {key: (value * scale + shift if value.is_floating_point() else value) for key, value in load_file(str(source)).items()}
    state.update(replaced)
    save_file(state, str(target), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_pipes, model_zoo):
    folder = tmp_path_factory.mktemp("merge-models")
    a = export_ldm_checkpoint(tiny_pipes["sd15"], folder / "a.safetensors", "sd15")
    save_config_only(tiny_pipes["sd15"], folder / "a.config")  # the tiny architecture's configs (a real SD 1.5 needs none)
    write_variant(a, folder / "b.safetensors", 1.5, 0.01)
    write_variant(a, folder / "c.safetensors", 0.5, -0.02)
    export_ldm_checkpoint(tiny_pipes["sdxl"], folder / "xl.safetensors", "sdxl")
    copy_model(model_zoo["sd15"], folder, "folder-sd15")
    return folder


@pytest.fixture
def manager(make_manager, models, tmp_path):
    own = tmp_path / "models"
    shutil.copytree(models, own)  # each test merges into its own folder
    return make_manager(own)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_weighted_sum_is_a_plus_m_times_b_minus_a_and_the_new_model_is_listed_and_generates(manager):
    folder = manager.config.models_dir
    seen = []
    result = manager.merge(MergeRequest("a", "b", multiplier=0.3), progress=lambda done, total: seen.append((done, total)))
    assert result.path == folder / "a_0.7-b_0.3-Weighted_sum-merged.safetensors" and result.name == "a_0.7-b_0.3-Weighted_sum-merged"
    a, b, merged = tensors(folder / "a.safetensors"), tensors(folder / "b.safetensors"), tensors(result.path)
    assert merged.keys() == a.keys() and seen[-1] == (len(a), len(a)) and len(seen) == len(a)
    for key, value in merged.items():
        if key == POSITION_IDS:
            assert torch.equal(value, a[key])  # never merged (A1111's skip list)
            continue
        expected = a[key].double() * 0.7 + b[key].double() * 0.3
        assert value.dtype == a[key].dtype and torch.allclose(value.double(), expected, atol=1e-6), key
    assert result.merged == len(a) - 1 and result.tensors == len(a)
    with safe_open(str(result.path), framework="pt") as handle:
        recipe = json.loads(handle.metadata()["sd_merge_recipe"])
    assert (recipe["interp_method"], recipe["multiplier"], recipe["primary_model"], recipe["secondary_model"]) == ("Weighted sum", 0.3, "a", "b")
    entry = manager.entry(result.name)
    assert entry.format == "single-file" and entry.family.value == "sd15" and entry.usable
    assert (folder / f"{result.name}.config" / "model_index.json").is_file()  # A's configs went with it
    image = manager.generate(tiny_request("sd15", model=result.name, seed=5, save=False)).images[0].image
    a_image = manager.generate(tiny_request("sd15", model="a", seed=5, save=False)).images[0].image
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(a_image, dtype=np.int16)).mean() > 1  # B's weights count


def test_multiplier_zero_and_one_give_a_and_b(manager):
    folder = manager.config.models_dir
    zero = tensors(manager.merge(MergeRequest("a", "b", multiplier=0, name="zero")).path)
    one = tensors(manager.merge(MergeRequest("a", "b", multiplier=1, name="one")).path)
    a, b = tensors(folder / "a.safetensors"), tensors(folder / "b.safetensors")
    assert all(torch.equal(zero[key], a[key]) for key in a)
    assert all(torch.allclose(one[key], b[key], atol=1e-6) for key in a if key != POSITION_IDS)


def test_add_difference_is_a_plus_m_times_b_minus_c(manager):
    folder = manager.config.models_dir
    result = manager.merge(MergeRequest("a", "b", "c", method="Add difference", multiplier=0.5))
    assert result.path.name == "a_0.5-b_0.5-Add_difference-merged.safetensors"
    a, b, c = (tensors(folder / f"{name}.safetensors") for name in "abc")
    merged = tensors(result.path)
    for key in a:
        if key != POSITION_IDS:
            expected = a[key].double() + (b[key].double() - c[key].double()) * 0.5
            assert torch.allclose(merged[key].double(), expected, atol=1e-6), key


def test_no_interpolation_as_float16_is_a_in_half_precision(manager):
    folder = manager.config.models_dir
    result = manager.merge(MergeRequest("a", method="No interpolation", half=True))
    assert result.path.name == "a-No_interpolation-merged.safetensors"
    a, merged = tensors(folder / "a.safetensors"), tensors(result.path)
    for key, value in a.items():
        assert merged[key].dtype == (torch.float16 if value.is_floating_point() else value.dtype)
        assert torch.equal(merged[key], value.half() if value.is_floating_point() else value)


def test_an_inpainting_a_keeps_its_mask_channels(manager):
    folder = manager.config.models_dir
    a = tensors(folder / "a.safetensors")
    out_channels, _, height, width = a[CONV_IN].shape
    nine = torch.cat([a[CONV_IN], torch.full((out_channels, 5, height, width), 0.25, dtype=a[CONV_IN].dtype)], dim=1)
    write_variant(folder / "a.safetensors", folder / "inpaint.safetensors", 1.0, 0.0, **{CONV_IN: nine})
    manager.refresh()
    merged = tensors(manager.merge(MergeRequest("inpaint", "b", multiplier=0.5, name="inpaint-b")).path)[CONV_IN]
    b = tensors(folder / "b.safetensors")[CONV_IN]
    assert merged.shape == nine.shape
    assert torch.allclose(merged[:, :4].double(), (nine[:, :4].double() + b.double()) / 2, atol=1e-6)
    assert torch.equal(merged[:, 4:], nine[:, 4:])


@pytest.mark.parametrize("fields, error, message", [
    ({"secondary": "xl"}, InvalidRequest, "xl (Stable Diffusion XL, single-file) and a (Stable Diffusion 1.5, single-file) are different kinds of model"),
    ({"secondary": "folder-sd15"}, InvalidRequest, "The secondary (B) model 'folder-sd15' is a diffusers model; the merger takes"),
    ({"secondary": "nope"}, ModelNotFound, "nope"),
    ({"secondary": ""}, InvalidRequest, "Choose the secondary (B) model."),
    ({"method": "Add difference"}, InvalidRequest, "Choose the tertiary (C) model."),
    ({"method": "Sum"}, InvalidRequest, "Interpolation method must be one of Weighted sum, Add difference, No interpolation"),
    ({"multiplier": 1.5}, InvalidRequest, "Multiplier (M) must be a number from 0 to 1, got 1.5."),
    ({"multiplier": float("nan")}, InvalidRequest, "Multiplier (M) must be a number from 0 to 1, got nan."),
    ({"name": "../escape"}, InvalidRequest, "is not a plain file name"),
    ({"name": "b"}, InvalidRequest, "b.safetensors exists already; choose another name"),
    ({"half": "yes"}, InvalidRequest, "Save as float16 must be true or false"),
])
def test_bad_requests_are_refused_before_anything_is_written(manager, fields, error, message):
    folder = manager.config.models_dir
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(error) as refused:
        manager.merge(MergeRequest(**({"primary": "a", "secondary": "b"} | fields)))
    assert message in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_another_architecture_is_refused_with_the_tensor_named_and_nothing_written(manager):
    folder = manager.config.models_dir
    a = tensors(folder / "a.safetensors")
    key = "first_stage_model.encoder.conv_in.weight"
    write_variant(folder / "a.safetensors", folder / "odd.safetensors", 1.0, 0.0, **{key: torch.zeros(a[key].shape[0] * 2, *a[key].shape[1:])})
    manager.refresh()
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(InvalidRequest, match=f"{key} has different shapes in the models"):
        manager.merge(MergeRequest("a", "odd", name="never"))
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_stop_writes_nothing(manager):
    folder = manager.config.models_dir
    cancel = CancelToken()
    before = sorted(p.name for p in folder.iterdir())

    def stop_half_way(done, total):
        if done == total // 2:
            cancel.cancel()

    with pytest.raises(GenerationCancelled, match="nothing was written"):
        manager.merge(MergeRequest("a", "b", name="stopped"), progress=stop_half_way, cancel=cancel)
    assert sorted(p.name for p in folder.iterdir()) == before  # no partial file, no temporary left


def test_tensors_only_a_has_are_kept_and_named(manager):
    folder = manager.config.models_dir
    extra = "model.diffusion_model.extra_tensor"
    write_variant(folder / "a.safetensors", folder / "a-plus.safetensors", 1.0, 0.0, **{extra: torch.ones(3)})
    manager.refresh()
    result = manager.merge(MergeRequest("a-plus", "b", name="plus"))
    assert torch.equal(tensors(result.path)[extra], torch.ones(3))
    assert result.notes[0] == f"1 of {result.tensors} tensors are not in every model and were kept as A's (e.g. {extra})."
    plain = manager.merge(MergeRequest("a", "b", name="plain"))
    assert not any("not in every model" in note for note in plain.notes)


def test_a_name_that_is_not_text_is_refused(manager):
    with pytest.raises(InvalidRequest, match="The new model's name must be text, got 3."):
        manager.merge(MergeRequest("a", "b", name=3))


@pytest.mark.parametrize("error, message", [
    (FileExistsError(17, "taken"), "appeared while merging; choose another name (nothing was overwritten)."),
    (OSError(28, "No space left on device"), "Could not write the merged model in"),
])
def test_a_name_taken_meanwhile_or_a_full_disk_is_a_message(manager, monkeypatch, error, message):
    def failing_write(folder, names, write):
        raise error

    monkeypatch.setattr("pipelines.merge.write_new", failing_write)
    with pytest.raises(LikenessError) as refused:
        manager.merge(MergeRequest("a", "b", name="never"))
    assert message in str(refused.value)
    if error.errno == 28:
        assert "the disk is full. Nothing was written." in str(refused.value)


# -- A1111's Bake in VAE --------------------------------------------------------------------------------------------


def write_vae_file(checkpoint: Path, target: Path, scale: float, prefixed: bool = False) -> dict[str, torch.Tensor]:
    """A VAE file in A1111's layout (a checkpoint's first_stage_model.* without the prefix, as vae-ft-mse ships), its
    weights changed so a bake shows; plus the keys such files carry that are not VAE weights."""
    prefix = "first_stage_model."
    state = {key[len(prefix):]: value * scale for key, value in tensors(checkpoint).items() if key.startswith(prefix)}
    extra = {"loss.logvar": torch.zeros(())}
    written = {(prefix + key if prefixed else key): value for key, value in (state | extra).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(written, str(target), metadata={"format": "pt"})
    return state


@pytest.mark.parametrize("prefixed", [False, True])
def test_bake_in_vae_puts_the_files_weights_in_the_merge(manager, prefixed):
    folder = manager.config.models_dir
    vae = write_vae_file(folder / "a.safetensors", folder / "VAE" / "brighter.safetensors", 1.01, prefixed)
    result = manager.merge(MergeRequest("a", "b", multiplier=0.5, name="baked", bake_vae="brighter.safetensors"))
    merged, plain_a, b = tensors(result.path), tensors(folder / "a.safetensors"), tensors(folder / "b.safetensors")
    for key, value in merged.items():
        if key.startswith("first_stage_model."):
            assert torch.equal(value, vae[key[len("first_stage_model."):]].to(value.dtype)), key
        elif key != POSITION_IDS and value.is_floating_point():
            assert torch.allclose(value.double(), plain_a[key].double() * 0.5 + b[key].double() * 0.5, atol=1e-6), key
    assert "loss.logvar" not in merged and "VAE baked in: brighter.safetensors" in result.notes[-1]
    with safe_open(str(result.path), framework="pt") as handle:
        assert json.loads(handle.metadata()["sd_merge_recipe"])["bake_in_vae"] == "brighter.safetensors"
    manager.generate(tiny_request("sd15", model=result.name, seed=5, save=False))  # the baked model loads and draws


def test_bake_in_vae_none_keeps_the_merged_vae(manager):
    folder = manager.config.models_dir
    result = manager.merge(MergeRequest("a", "b", multiplier=0.5, name="unbaked", bake_vae="None"))
    merged, a, b = tensors(result.path), tensors(folder / "a.safetensors"), tensors(folder / "b.safetensors")
    key = next(k for k in merged if k.startswith("first_stage_model.") and merged[k].is_floating_point())
    assert torch.allclose(merged[key].double(), a[key].double() * 0.5 + b[key].double() * 0.5, atol=1e-6)


def test_a_vae_that_cannot_be_baked_in_is_refused_before_anything_is_written(manager, tiny_pipes):
    folder = manager.config.models_dir
    before = sorted(folder.glob("*.safetensors"))
    (folder / "VAE").mkdir()
    save_file({k: v.contiguous() for k, v in tiny_pipes["sd15"].vae.state_dict().items()}, str(folder / "VAE" / "diffusers.safetensors"))
    with pytest.raises(InvalidRequest, match=r"does not fit a's VAE .*diffusers' layout"):
        manager.merge(MergeRequest("a", "b", bake_vae="diffusers.safetensors"))
    with pytest.raises(ModelNotFound, match="No VAE named 'nope.safetensors'"):
        manager.merge(MergeRequest("a", "b", bake_vae="nope.safetensors"))
    with pytest.raises(InvalidRequest, match="Bake in VAE must be a VAE's name"):
        manager.merge(MergeRequest("a", "b", bake_vae=3))
    tiny_pipes["sd15"].vae.save_pretrained(folder / "VAE" / "folder-vae")  # a diffusers VAE folder: listed for SD VAE, not bakeable
    with pytest.raises(InvalidRequest, match="The VAE folder-vae is a diffusers folder; Bake in VAE takes a VAE file"):
        manager.merge(MergeRequest("a", "b", bake_vae="folder-vae"))
    assert sorted(folder.glob("*.safetensors")) == before

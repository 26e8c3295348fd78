"""The catalog: what is found on disk, what cannot be used and why, and the Hugging Face cache scan."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from pipelines.catalog import DEMO_MODEL_NAME, scan_hf_cache, scan_models_folder
from pipelines.checkpoints import inspect_checkpoint, read_safetensors_header
from pipelines.errors import LikenessError, ModelLoadError, ModelNotFound
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from tests.ldm_layout import export_flux_transformer_bfl, export_ldm_checkpoint
from tests.tiny_models import copy_model, tiny_request

SD15_KEYS = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "model.diffusion_model.input_blocks.0.0.weight"]


def write_keys(path, keys, shapes: dict | None = None):
    """A valid safetensors file holding tiny tensors under `keys` (the header is all the catalog reads)."""
    shapes = shapes or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(shapes.get(key, (1,))) for key in keys}, str(path))
    return path


def entry_for(models_dir, name):
    return next(e for e in scan_models_folder(models_dir) if e.name == name)


# -- unknown names ---------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_available_ones(make_manager, tmp_path, model_zoo):
    copy_model(model_zoo["sd15"], tmp_path / "models", "my-model")
    manager = make_manager(tmp_path / "models")
    with pytest.raises(ModelNotFound) as raised:
        manager.generate(tiny_request("sd15", model="nope"))
    message = str(raised.value)
    assert "'nope'" in message
    assert "my-model" in message and DEMO_MODEL_NAME in message
    assert str(tmp_path / "models") in message
    assert isinstance(raised.value, LikenessError)


def test_default_model_prefers_a_real_model(make_manager, tmp_path, model_zoo):
    empty = make_manager(tmp_path / "empty")
    assert empty.default_model() == DEMO_MODEL_NAME and not empty.has_real_models()
    copy_model(model_zoo["sd15"], tmp_path / "models", "real")
    manager = make_manager(tmp_path / "models")
    assert manager.default_model() == "real" and manager.has_real_models()


def test_refresh_picks_up_new_models(make_manager, tmp_path, model_zoo):
    manager = make_manager(tmp_path / "models")
    assert [e.name for e in manager.models()] == [DEMO_MODEL_NAME]
    copy_model(model_zoo["sdxl"], tmp_path / "models", "sub/dropped-in")
    names = {e.name: e for e in manager.refresh()}
    assert names["sub/dropped-in"].family is Family.SDXL


# -- damaged and unsupported files -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, tiny_pipes):
    return export_ldm_checkpoint(tiny_pipes["sd15"], tmp_path_factory.mktemp("real") / "real.safetensors", "sd15")


def test_real_checkpoint_header_is_read(real_checkpoint):
    layout = inspect_checkpoint(real_checkpoint)
    assert (layout.family, layout.kind, layout.problem) == (Family.SD15, "ldm", None)


def test_truncated_safetensors(tmp_path, real_checkpoint, make_manager):
    models = tmp_path / "models"
    models.mkdir()
    data = real_checkpoint.read_bytes()
    (models / "cut.safetensors").write_bytes(data[: len(data) // 2])
    entry = entry_for(models, "cut")
    assert not entry.usable and entry.family is None
    assert "cut.safetensors is truncated" in entry.problem and "Download it again" in entry.problem
    manager = make_manager(models)
    with pytest.raises(ModelLoadError, match="truncated"):
        manager.generate(tiny_request("sd15", model="cut"))
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors_header(models / "cut.safetensors")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty or truncated"),
        (b"\x01\x02\x03", "empty or truncated"),
        (struct.pack("<Q", 10**9) + b"{}", "not a valid safetensors file (header length 1000000000"),
        (struct.pack("<Q", 0) + b"xx", "not a valid safetensors file (header length 0"),
        (struct.pack("<Q", 12) + b"\xff\xfe{not json}" + b"\0" * 8, "corrupt safetensors header ("),
        (struct.pack("<Q", 10) + b"{not json}" + b"\0" * 8, "corrupt safetensors header (JSONDecodeError)"),
        (struct.pack("<Q", 2) + b"[]", "corrupt safetensors header"),
        (struct.pack("<Q", 15) + b'{"a": {"x": 1}}', "corrupt safetensors header (entry 'a')"),
    ],
    ids=["empty", "3-bytes", "huge-length", "zero-length", "binary-header", "bad-json", "json-list", "no-offsets"],
)
def test_damaged_headers_get_a_reason(tmp_path, content, expected):
    path = tmp_path / "models" / "broken.safetensors"
    path.parent.mkdir()
    path.write_bytes(content)
    entry = entry_for(tmp_path / "models", "broken")
    assert not entry.usable
    assert expected in entry.problem
    assert entry.problem.startswith("broken.safetensors")


def test_file_without_tensors(tmp_path):
    path = tmp_path / "models" / "nothing.safetensors"
    path.parent.mkdir()
    save_file({}, str(path))
    assert entry_for(tmp_path / "models", "nothing").problem == "nothing.safetensors holds no tensors."


@pytest.mark.parametrize(
    ("keys", "shapes", "expected"),
    [
        (["foo.bar.weight", "baz.qux", "random_tensor_17"], None, "Unknown checkpoint layout (first keys: baz.qux, foo.bar.weight, random_tensor_17)"),
        (["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "model.diffusion_model.input_blocks.0.0.weight"], None, "Stable Diffusion 2.x"),
        (["conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight", "model.diffusion_model.input_blocks.0.0.weight"], None, "SDXL refiner"),
        (SD15_KEYS, {SD15_KEYS[1]: (32, 8, 3, 3)}, "takes 8 input channels"),
        (["model.diffusion_model.input_blocks.0.0.weight"], None, "only a UNet"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], None, "standalone VAE"),
    ],
    ids=["random-names", "sd2", "sdxl-refiner", "instruct", "unet-only", "vae"],
)
def test_unsupported_layouts_say_what_they_are(tmp_path, make_manager, keys, shapes, expected):
    write_keys(tmp_path / "models" / "odd.safetensors", keys, shapes)
    manager = make_manager(tmp_path / "models")
    entry = manager.entry("odd")
    assert not entry.usable and entry.family is None
    assert expected in entry.problem
    assert entry.label == "odd [unknown, single-file]"
    with pytest.raises(ModelLoadError) as raised:
        manager.generate(tiny_request("sd15", model="odd"))
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("keys", "family", "kind"),
    [
        (SD15_KEYS, Family.SD15, "ldm"),
        (["conditioner.embedders.0.transformer.text_model.x", "conditioner.embedders.1.model.y", "model.diffusion_model.z"], Family.SDXL, "ldm"),
        (["double_blocks.0.img_attn.qkv.weight"], Family.FLUX, "flux-transformer"),
        (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], Family.FLUX, "flux-transformer"),
        (["transformer_blocks.0.attn.add_q_proj.weight", "single_transformer_blocks.0.norm.linear.weight"], Family.FLUX, "flux-transformer"),
    ],
    ids=["sd15", "sdxl", "flux-bfl", "flux-comfyui", "flux-diffusers-names"],
)
def test_supported_layouts_by_header(tmp_path, keys, family, kind):
    layout = inspect_checkpoint(write_keys(tmp_path / "x.safetensors", keys))
    assert (layout.family, layout.kind, layout.problem) == (family, kind, None)


def test_real_flux_export_is_detected(tmp_path, tiny_pipes):
    path = export_flux_transformer_bfl(tiny_pipes["flux"].transformer, tmp_path / "f.safetensors", prefix="model.diffusion_model.")
    layout = inspect_checkpoint(path)
    assert (layout.family, layout.kind) == (Family.FLUX, "flux-transformer")


# -- pickle checkpoints ----------------------------------------------------------------------------


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoint_refused_by_default(tmp_path, make_manager):
    models = tmp_path / "models"
    models.mkdir()
    torch.save({key: torch.zeros(1) for key in SD15_KEYS}, models / "old.ckpt")
    manager = make_manager(models)
    entry = manager.entry("old")
    assert not entry.usable
    assert entry.format == "single-file"
    assert "pickle" in entry.problem and "safetensors" in entry.problem and "weights_only" in entry.problem
    with pytest.raises(ModelLoadError, match="safetensors"):
        manager.generate(tiny_request("sd15", model="old"))


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "state_dict"])
def test_pickle_keys_read_with_weights_only_when_allowed(tmp_path, wrapped):
    models = tmp_path / "models"
    models.mkdir()
    state = {key: torch.zeros(1) for key in SD15_KEYS}
    torch.save({"state_dict": state, "global_step": 1} if wrapped else state, models / "old.ckpt")
    entries = {e.name: e for e in scan_models_folder(models, allow_pickle=True)}
    assert entries["old"].family is Family.SD15 and entries["old"].usable


def test_allowed_pickle_checkpoint_generates(tmp_path, tiny_pipes, model_zoo, make_manager):
    from tests.ldm_layout import ldm_state_dict
    from tests.tiny_models import save_config_only

    models = tmp_path / "models"
    models.mkdir()
    state = {key: tensor.detach().clone().contiguous() for key, tensor in ldm_state_dict(tiny_pipes["sd15"], "sd15").items()}
    torch.save({"state_dict": state}, models / "tiny.ckpt")
    save_config_only(tiny_pipes["sd15"], models / "tiny.config")
    copy_model(model_zoo["sd15"], models, "folder")
    refused = make_manager(models)
    assert not refused.entry("tiny").usable
    manager = make_manager(models, allow_pickle=True)
    assert manager.entry("tiny").usable and manager.entry("tiny").family is Family.SD15
    pickled = manager.generate(tiny_request("sd15", model="tiny", seed=4, save=False))
    folder = manager.generate(tiny_request("sd15", model="folder", seed=4, save=False))
    assert pickled.images[0].image.tobytes() == folder.images[0].image.tobytes()


def test_pickle_with_code_is_not_executed(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"weights": torch.zeros(1), "evil": Payload(str(marker))}, models / "evil.pt")
    assert not marker.exists()
    entries = {e.name: e for e in scan_models_folder(models, allow_pickle=True)}
    assert not marker.exists(), "torch.load ran code from the pickle"
    assert not entries["evil"].usable
    assert "weights-only pickle" in entries["evil"].problem


def test_a_lora_file_is_not_listed_as_a_model(tmp_path, make_manager):
    write_keys(tmp_path / "models" / "odd.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], None)
    assert "odd" not in [e.name for e in make_manager(tmp_path / "models").models()]


def test_auxiliary_hidden_and_other_files_are_not_listed(tmp_path, real_checkpoint):
    models = tmp_path / "models"
    for folder in ("lora", "VAE", "embeddings", ".hidden", "ESRGAN", "VAE-approx"):
        (models / folder).mkdir(parents=True)
        (models / folder / "x.safetensors").write_bytes(real_checkpoint.read_bytes())
    (models / "notes.txt").write_text("not a model")
    (models / "real.safetensors").write_bytes(real_checkpoint.read_bytes())
    assert [e.name for e in scan_models_folder(models)] == ["real"]


def test_diffusers_folder_of_another_pipeline_or_broken_index(tmp_path, model_zoo):
    models = tmp_path / "models"
    inpaint = copy_model(model_zoo["sd15"], models, "inpaint")
    index = json.loads((inpaint / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInstructPix2PixPipeline"
    (inpaint / "model_index.json").write_text(json.dumps(index))
    (models / "broken").mkdir()
    (models / "broken" / "model_index.json").write_text("{not json")
    entries = {e.name: e for e in scan_models_folder(models)}
    assert "StableDiffusionInstructPix2PixPipeline" in entries["inpaint"].problem
    assert "cannot be read" in entries["broken"].problem
    # A diffusers folder's subfolders are its components, not models.
    assert set(entries) == {"inpaint", "broken"}


def test_a_file_and_a_folder_with_the_same_stem_are_both_listed(tmp_path, tiny_pipes, model_zoo, make_manager):
    from tests.tiny_models import save_config_only

    models = tmp_path / "models"
    export_ldm_checkpoint(tiny_pipes["sd15"], models / "x.safetensors", "sd15")
    save_config_only(tiny_pipes["sd15"], models / "x.config")
    folder = copy_model(model_zoo["sd15"], models, "x")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInstructPix2PixPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    manager = make_manager(models)
    real = [e for e in manager.models() if e.format != "demo"]
    assert len(real) == 2, [(e.name, e.format) for e in real]
    assert len({e.name for e in real}) == 2
    (single,) = [e for e in real if e.format == "single-file"]
    (broken,) = [e for e in real if e.format == "diffusers"]
    assert single.usable and not broken.usable
    # Both can be asked for by their listed names; the checkpoint generates.
    assert manager.entry(single.name) == single and manager.entry(broken.name) == broken
    assert manager.generate(tiny_request("sd15", model=single.name, save=False)).images


# -- the Hugging Face cache ------------------------------------------------------------------------


def fake_hf_cache(cache, repo_id: str, pipeline_folder, revision: str) -> int:
    """The hub's cache layout: blobs by sha256, a snapshot of links into them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / revision
    total = 0
    for path in sorted(pipeline_folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
            total += len(data)
        link = snapshot / path.relative_to(pipeline_folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return total


def test_hf_cache_model_is_listed_and_generates(tmp_path, model_zoo, make_manager):
    cache = tmp_path / "hub"
    blob_bytes = fake_hf_cache(cache, "org/tiny-sd", model_zoo["sd15"], "a" * 40)
    # A newer snapshot that refs/main does not point at must be ignored.
    newer = cache / "models--org--tiny-sd" / "snapshots" / ("b" * 40)
    newer.mkdir(parents=True)
    (newer / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    # Something that is not a pipeline (a bare model repo) is not listed.
    (cache / "models--org--just-a-unet" / "snapshots" / "c").mkdir(parents=True)

    entries = {e.name: e for e in scan_hf_cache(cache)}
    assert set(entries) == {"hf:org/tiny-sd"}
    entry = entries["hf:org/tiny-sd"]
    assert entry.format == "hf-cache" and entry.family is Family.SD15 and entry.usable
    assert entry.path.name == "a" * 40
    assert entry.size_bytes == blob_bytes > 0

    manager = make_manager(tmp_path / "models", include_hf_cache=True, hf_cache_dir=cache)
    result = manager.generate(tiny_request("sd15", model="hf:org/tiny-sd", seed=8))
    assert result.images[0].image.size == (64, 64)
    # The name holds a colon, so the infotext quotes it; it parses back unchanged.
    assert '"hf:org/tiny-sd"' in result.images[0].infotext
    assert parse_infotext(result.images[0].infotext)["Model"] == "hf:org/tiny-sd"
    # Same weights as the folder it was copied from.
    copy_model(model_zoo["sd15"], tmp_path / "models", "local")
    manager.refresh()
    local = manager.generate(tiny_request("sd15", model="local", seed=8, save=False))
    assert local.images[0].image.tobytes() == result.images[0].image.tobytes()


def test_hf_cache_without_refs_uses_the_newest_snapshot(tmp_path, model_zoo):
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "org/x", model_zoo["sd15"], "old")
    (cache / "models--org--x" / "refs" / "main").unlink()
    newer = cache / "models--org--x" / "snapshots" / "new"
    newer.mkdir()
    (newer / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    os.utime(newer, (2e9, 2e9))
    (entry,) = scan_hf_cache(cache)
    assert entry.path.name == "new" and entry.family is Family.FLUX


def test_hf_cache_is_not_scanned_when_turned_off(tmp_path, model_zoo, make_manager):
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "org/tiny-sd", model_zoo["sd15"], "a" * 40)
    manager = make_manager(tmp_path / "models", include_hf_cache=False, hf_cache_dir=cache)
    assert "hf:org/tiny-sd" not in {e.name for e in manager.models()}

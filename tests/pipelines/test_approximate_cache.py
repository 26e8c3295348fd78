"""The approximate latent cache: K table, resuming with the right scheduler state, partitions, LCBFU
eviction, time-to-live, persistence, and recovery from truncated or half-written files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipelines.caches.approximate import (
    ApproximateCache, ApproximateCacheConfig, k_for_similarity, keep_steps, parse_thresholds, scaled_step,
)
from pipelines.caches.approximate_run import Resume, resumed_from
from pipelines.demo_model import build_tiny_sd15_pipeline
from pipelines.families import Family
from pipelines.metrics import psnr
from pipelines.samplers import find_sampler
from pipelines.telemetry import StepDone
from tests.tiny_models import copy_model, tiny_request

DIM = 8


def vector(similarity: float) -> np.ndarray:
    """A unit vector whose cosine similarity to e0 is `similarity`."""
    v = np.zeros(DIM, dtype=np.float32)
    v[0], v[1] = similarity, math.sqrt(max(0.0, 1 - similarity**2))
    return v


def latents(value: float, shape=(1, 4, 8, 8)) -> torch.Tensor:
    return torch.full(shape, value)


def kept(total: int = 50) -> dict[int, torch.Tensor]:
    return {step: latents(step) for step in keep_steps(total)}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the K table --------------------------------------------------------------------------------------


def test_similarity_table_and_scaling():
    assert [k_for_similarity(s) for s in (0.99, 0.93, 0.87, 0.8, 0.7, 0.6)] == [25, 20, 15, 10, 5, None]
    assert k_for_similarity(0.95) == 20, "the table's bounds are exclusive: s > 0.95 for K=25"
    assert keep_steps(50) == [5, 10, 15, 20, 25]
    assert keep_steps(20) == [2, 4, 6, 8, 10]
    assert keep_steps(4) == [1, 2], "too few steps: the K that round to 0 are left out"
    assert scaled_step(15, 20) == 6
    table = parse_thresholds("0.9,0.8,0.7,0.6,0.5")
    assert k_for_similarity(0.85, table) == 20
    with pytest.raises(ValueError):
        parse_thresholds("0.9,0.8")
    with pytest.raises(ValueError):
        ApproximateCacheConfig(thresholds=((0.5, 25), (0.9, 20)))


def test_lookup_picks_k_from_similarity(tmp_path):
    cache = ApproximateCache(tmp_path)
    cache.store("p", vector(1.0), 50, kept(50))
    cases = {0.99: 25, 0.92: 20, 0.88: 15, 0.8: 10, 0.7: 5}
    for similarity, k in cases.items():
        hit = cache.lookup("p", vector(similarity), 50)
        assert hit is not None and hit.step == k, similarity
        assert hit.similarity == pytest.approx(similarity, abs=1e-4)
        assert torch.equal(hit.latents, latents(k))
    assert cache.lookup("p", vector(0.5), 50) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (5, 1, 5)


# -- resuming mid-schedule ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_pipe():
    pipe = build_tiny_sd15_pipeline(unet_channels=(32, 64, 64, 64), sd15_block_layout=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoise(pipe, sampler: str, prompt: str, steps: int, resume: Resume | None = None, seed: int = 3):
    pipe.scheduler = find_sampler(Family.SD15, sampler).make(pipe.scheduler.config)
    start = resume.start_step if resume else 0
    seen = []

    def on_step(_pipe, index, timestep, tensors):
        seen.append(int(timestep))
        if resume:
            resume.on_step(start + index + 1, tensors["latents"])
        return tensors

    with resumed_from(pipe, start):
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, width=64, height=64, output_type="latent",
                   generator=torch.Generator().manual_seed(seed), latents=resume.latents if resume else None,
                   callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"]).images
    return out, seen


def test_an_sd15_prompts_vector_is_clips_pooled_text_embedding_whatever_its_syntax(sd15_pipe):
    from pipelines.caches.approximate_run import prompt_vector
    from pipelines.prompts.encode import encode_weighted

    def pooled(words: str) -> torch.Tensor:  # CLIPTextModel's own pooling: the end-of-text token's row
        ids = sd15_pipe.tokenizer(words, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return sd15_pipe.text_encoder(ids).pooler_output[0]

    def vector(prompt: str) -> torch.Tensor:
        embeds = encode_weighted(sd15_pipe, prompt, "", torch.device("cpu"), 1, False, sdxl=False)
        return prompt_vector(Family.SD15, sd15_pipe, prompt, embeds)

    cosine = torch.nn.functional.cosine_similarity
    assert torch.allclose(vector("a red boat"), pooled("a red boat"), atol=1e-5)
    # weights, brackets and a LoRA tag change the encoded prompt's scale or nothing: the same direction as the words
    assert cosine(vector("a (red:1.3) [boat] <lora:style:0.8>"), pooled("a red boat"), dim=0) > 0.9999
    assert cosine(vector("a red boat"), pooled("a red boat, at sea"), dim=0) < 0.9999, "another prompt, another vector"


def test_a_textual_inversion_counts_its_vectors_when_the_vector_is_found(sd15_pipe, tmp_path):
    from safetensors.torch import save_file

    from pipelines.caches.approximate_run import prompt_vector
    from pipelines.prompts.embeddings import EmbeddingLibrary
    from pipelines.prompts.encode import encode_weighted

    # An inversion whose three vectors are the input embeddings of "red", "boat", "boat": "a redboat" then is "a red boat
    # boat" to the encoder, and its vector must be that prompt's, not the row its trigger's two word pieces point to.
    table = sd15_pipe.text_encoder.get_input_embeddings().weight.detach()
    words = [sd15_pipe.tokenizer.convert_tokens_to_ids(word) for word in ("red</w>", "boat</w>", "boat</w>")]
    assert sd15_pipe.tokenizer.unk_token_id not in words
    save_file({"emb_params": table[words].clone()}, tmp_path / "redboat.safetensors")
    used = EmbeddingLibrary(tmp_path).used_in("a redboat", "")
    assert [embedding.count for embedding in used] == [3]
    assert len(sd15_pipe.tokenizer("redboat", add_special_tokens=False).input_ids) != 3, "the trigger's own pieces must count otherwise"

    def vector(prompt: str, embeddings=()) -> torch.Tensor:
        embeds = encode_weighted(sd15_pipe, prompt, "", torch.device("cpu"), 1, False, sdxl=False, embeddings=embeddings)
        return prompt_vector(Family.SD15, sd15_pipe, prompt, embeds, embeddings)

    assert torch.allclose(vector("a redboat", used), vector("a red boat boat"), atol=1e-5)
    assert torch.allclose(vector("a (redboat:1.2), at sea", used), vector("a red boat boat, at sea"), atol=1e-3)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM", "Euler a"])
def test_resuming_reproduces_the_uninterrupted_run(sd15_pipe, sampler):
    steps, k = 10, 4
    keep = Resume(keep=frozenset({k}))
    full, full_timesteps = denoise(sd15_pipe, sampler, "a red boat", steps, keep)
    resumed, resumed_timesteps = denoise(sd15_pipe, sampler, "a red boat", steps, Resume(start_step=k, latents=keep.kept[k]))
    assert resumed_timesteps == full_timesteps[k:], "the resumed run must walk the rest of the same schedule"
    if sampler == "Euler a":  # the remaining noise comes from the generator, which the resumed run has not advanced
        assert psnr(full.numpy(), resumed.numpy(), peak=float(full.abs().max())) > 15
    else:
        assert torch.equal(full, resumed)
    assert type(sd15_pipe.scheduler).__name__.startswith("Resuming") is False, "the original scheduler is put back"


def test_multistep_solver_resumes_close(sd15_pipe):
    steps, k = 10, 4
    keep = Resume(keep=frozenset({k}))
    full, _ = denoise(sd15_pipe, "DPM++ 2M", "a red boat", steps, keep)
    resumed, seen = denoise(sd15_pipe, "DPM++ 2M", "a red boat", steps, Resume(start_step=k, latents=keep.kept[k]))
    assert len(seen) == steps - k
    assert psnr(full.numpy(), resumed.numpy(), peak=float(full.abs().max())) > 30


def test_manager_resumes_a_repeated_prompt_at_the_right_step(make_manager, shared_models_dir, tmp_path):
    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache")
    first = manager.generate(tiny_request("sd15", steps=20, seed=11, save=False, approximate_cache=True))
    assert first.cache_notes["approx cache"] == "miss"
    assert manager.approximate_cache().stats().entries == 5, "a miss keeps K = 5, 10, 15, 20, 25 of 50"
    steps_run = []
    second = manager.generate(tiny_request("sd15", steps=20, seed=99, save=False, approximate_cache=True),
                              listener=lambda e: steps_run.append(e.index) if isinstance(e, StepDone) else None)
    assert second.cache_notes["approx cache"] == "hit K=10 s=1.00"
    assert "Approx cache: hit K=10 s=1.00" in second.images[0].infotext
    assert steps_run == list(range(11, 21)), "only the last 10 of 20 steps run"
    # Same prompt, deterministic sampler: from step 10 on, the run is the first one's, whatever the seed.
    assert list(second.images[0].image.getdata()) == list(first.images[0].image.getdata())
    plain = manager.generate(tiny_request("sd15", steps=20, seed=99, save=False))
    assert "Approx cache" not in plain.images[0].infotext
    assert list(plain.images[0].image.getdata()) != list(first.images[0].image.getdata())


def test_flux_resumes_from_packed_latents(make_manager, shared_models_dir, tmp_path):
    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache")
    first = manager.generate(tiny_request("flux", steps=10, seed=1, save=False, approximate_cache=True))
    second = manager.generate(tiny_request("flux", steps=10, seed=2, save=False, approximate_cache=True))
    assert first.cache_notes["approx cache"] == "miss"
    assert second.cache_notes["approx cache"] == "hit K=5 s=1.00"
    assert list(second.images[0].image.getdata()) == list(first.images[0].image.getdata())


def test_a_batch_count_never_reuses_its_own_batches(make_manager, shared_models_dir, tmp_path):
    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache")
    result = manager.generate(tiny_request("sd15", steps=10, seed=5, batch_count=2, save=False, approximate_cache=True))
    assert result.cache_notes["approx cache"] == "miss"
    assert list(result.images[0].image.getdata()) != list(result.images[1].image.getdata())
    assert manager.approximate_cache().stats().entries == 2 * len(keep_steps(10))


# -- partitions ---------------------------------------------------------------------------------------


def test_other_model_or_size_never_hits(make_manager, model_zoo, tmp_path):
    models = tmp_path / "models"
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    copy_model(model_zoo["sd15"], models, "same-weights-other-name")
    manager = make_manager(models, cache_dir=tmp_path / "cache")
    manager.generate(tiny_request("sd15", steps=10, seed=1, save=False, approximate_cache=True))
    other_model = manager.generate(tiny_request("sd15", model="same-weights-other-name", steps=10, seed=2, save=False, approximate_cache=True))
    other_size = manager.generate(tiny_request("sd15", steps=10, seed=1, width=72, save=False, approximate_cache=True))
    other_steps = manager.generate(tiny_request("sd15", steps=12, seed=1, save=False, approximate_cache=True))
    other_cfg = manager.generate(tiny_request("sd15", steps=10, seed=1, cfg_scale=5.0, save=False, approximate_cache=True))
    assert [r.cache_notes["approx cache"] for r in (other_model, other_size, other_steps, other_cfg)] == ["miss"] * 4
    same = manager.generate(tiny_request("sd15", steps=10, seed=2, save=False, approximate_cache=True))
    assert same.cache_notes["approx cache"].startswith("hit")


def test_partitions_are_separate_indexes(tmp_path):
    cache = ApproximateCache(tmp_path)
    cache.store("model-a", vector(1.0), 50, kept())
    assert cache.lookup("model-b", vector(1.0), 50) is None
    assert cache.lookup("model-a", vector(1.0), 50) is not None


# -- eviction and expiry ----------------------------------------------------------------------------------


def test_lcbfu_evicts_the_least_beneficial_and_least_used_first(tmp_path):
    clock = Clock()
    cache = ApproximateCache(tmp_path, clock=clock)
    first = cache.store("p", vector(1.0), 50, {5: latents(5), 25: latents(25)})
    clock.now += 1
    second = cache.store("p", vector(-1.0), 50, {5: latents(5), 25: latents(25)})
    order = cache.eviction_order()
    # score K x uses, all used once: both K=5 first (older first), then both K=25.
    assert order == [(first, 5), (second, 5), (first, 25), (second, 25)]
    for _ in range(5):  # the first entry's K=5 latent is used five more times: 5 x 6 = 30 > 25 x 1
        assert cache.lookup("p", vector(0.7), 50).entry_id == first
    assert cache.eviction_order() == [(second, 5), (first, 25), (second, 25), (first, 5)]

    item_bytes = (tmp_path / f"e{first:08d}.s005.safetensors").stat().st_size
    total = cache.stats().bytes
    budget = ApproximateCache(tmp_path, ApproximateCacheConfig(max_bytes=total - item_bytes), clock=clock)
    budget.store("p", vector(0.0), 50, {25: latents(25)})  # must push out two K=5-sized items
    left = {(e, s) for e, s in budget.eviction_order()}
    assert (second, 5) not in left and (first, 5) in left, "the least beneficial, least used item leaves first"
    assert budget.stats().bytes <= total - item_bytes


def test_an_item_larger_than_the_budget_is_not_kept(tmp_path):
    cache = ApproximateCache(tmp_path, ApproximateCacheConfig(max_bytes=1000))
    assert cache.store("p", vector(1.0), 50, {25: latents(1, (1, 4, 64, 64))}) is None
    assert cache.stats().entries == 0 and cache.stats().bytes == 0
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_ttl_expiry(tmp_path):
    clock = Clock()
    cache = ApproximateCache(tmp_path, ApproximateCacheConfig(ttl_seconds=60), clock=clock)
    cache.store("p", vector(1.0), 50, kept())
    clock.now += 59
    assert cache.lookup("p", vector(1.0), 50) is not None
    clock.now += 2
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.stats().entries == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


# -- persistence and recovery -------------------------------------------------------------------------------


def test_persists_across_restart(tmp_path):
    cache = ApproximateCache(tmp_path)
    entry = cache.store("p", vector(1.0), 50, kept())
    cache.lookup("p", vector(0.99), 50)
    reopened = ApproximateCache(tmp_path)
    assert reopened.dropped_at_start == []
    hit = reopened.lookup("p", vector(0.99), 50)
    assert hit.entry_id == entry and hit.step == 25 and torch.equal(hit.latents, latents(25))
    uses = json.loads((tmp_path / "manifest.json").read_text())["entries"][0]["items"]["25"]["uses"]
    assert uses == 3, "uses are persisted: stored (1) + one hit per session"


def test_truncated_latent_file_is_dropped(tmp_path):
    cache = ApproximateCache(tmp_path)
    entry = cache.store("p", vector(1.0), 50, kept())
    path = tmp_path / f"e{entry:08d}.s025.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    reopened = ApproximateCache(tmp_path)
    assert any("step 25" in note for note in reopened.dropped_at_start)
    assert not path.exists()
    hit = reopened.lookup("p", vector(1.0), 50)
    assert hit.step == 20, "the deepest readable latent is used instead"


def test_latent_damaged_after_start_costs_the_item_not_the_run(tmp_path):
    cache = ApproximateCache(tmp_path)
    entry = cache.store("p", vector(1.0), 50, {25: latents(25)})
    path = tmp_path / f"e{entry:08d}.s025.safetensors"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size, unreadable
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.stats().entries == 0


def test_truncated_index_is_rebuilt_from_the_embeddings(tmp_path):
    cache = ApproximateCache(tmp_path)
    entry = cache.store("p", vector(1.0), 50, kept())
    index = next(tmp_path.glob("index-*.faiss"))
    index.write_bytes(index.read_bytes()[:50])
    reopened = ApproximateCache(tmp_path)
    assert any("rebuilt" in note for note in reopened.dropped_at_start)
    assert reopened.lookup("p", vector(1.0), 50).entry_id == entry
    assert ApproximateCache(tmp_path).dropped_at_start == [], "the rebuilt index was saved"


def test_a_write_cut_short_leaves_a_readable_cache(tmp_path):
    cache = ApproximateCache(tmp_path)
    entry = cache.store("p", vector(1.0), 50, kept())
    manifest = (tmp_path / "manifest.json").read_bytes()
    # A second put killed midway: its latents half written, one file complete but never committed,
    # and the new manifest only in its temporary file.
    (tmp_path / "e00000099.s005.safetensors.tmp").write_bytes(b"partial")
    (tmp_path / "e00000099.emb.safetensors").write_bytes(b"never committed")
    (tmp_path / "manifest.json.tmp").write_text('{"version": 1, "entries": [')
    reopened = ApproximateCache(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == manifest
    assert reopened.entry_ids() == [entry]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "e00000099.emb.safetensors").exists()
    assert reopened.lookup("p", vector(1.0), 50) is not None


def test_unreadable_manifest_starts_empty_without_crashing(tmp_path):
    cache = ApproximateCache(tmp_path)
    cache.store("p", vector(1.0), 50, kept())
    (tmp_path / "manifest.json").write_text("{not json")
    reopened = ApproximateCache(tmp_path)
    assert reopened.stats().entries == 0
    assert list(tmp_path.glob("manifest.json.bad-*"))
    assert reopened.lookup("p", vector(1.0), 50) is None
    reopened.store("p", vector(1.0), 50, kept())
    assert ApproximateCache(tmp_path).lookup("p", vector(1.0), 50) is not None


def test_clear_removes_everything(tmp_path):
    cache = ApproximateCache(tmp_path)
    cache.store("p", vector(1.0), 50, kept())
    cache.clear()
    assert cache.stats().entries == 0 and cache.stats().bytes == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert cache.lookup("p", vector(1.0), 50) is None

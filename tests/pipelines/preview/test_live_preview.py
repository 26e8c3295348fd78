"""TAESD live previews through the manager: full-size previews per family, the cheap fallback (no file:
silent; a bad file: named once), the final image untouched, the setting saved and applied live, and
the experiment runs' previews."""
from __future__ import annotations

import pytest

from pipelines.experiments.plan import AxisSpec, Experiment, build_plan
from pipelines.experiments.runner import run_experiment
from pipelines.families import Family
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.telemetry import Notice, PreviewReady
from settings.schema import AppSettings, SettingsStore
from tests.pipelines.preview.taesd_files import write_diffusers_folder, write_official
from tests.tiny_models import SIZES, copy_model, tiny_request

STEPS = 3  # previews after steps 1 and 2 (none after the last: the image itself follows)


def run(manager, request):
    """Generate; the previews and the notices the run published."""
    events = []
    result = manager.generate(request, listener=events.append)
    return result, [e.image for e in events if isinstance(e, PreviewReady)], [e for e in events if isinstance(e, Notice)]


@pytest.fixture
def family_manager(make_manager, model_zoo, tmp_path):
    """A CPU manager over a models folder holding one tiny model of `family`, a preview every step."""
    def make(family: str, **options):
        models = tmp_path / "models"
        if not (models / f"tiny-{family}").exists():
            copy_model(model_zoo[family], models, f"tiny-{family}")
        options.setdefault("preview_every", 1)
        options.setdefault("latent_cache_entries", 0)
        return make_manager(models, **options), models

    return make


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_taesd_preview_is_full_size_and_leaves_the_image_alone(family_manager, family):
    manager, models = family_manager(family, live_preview="TAESD")
    write_diffusers_folder(models, Family(family), seed=2)
    request = tiny_request(family, steps=STEPS, seed=9)
    tiny, tiny_previews, notices = run(manager, request)
    manager.config.live_preview = "cheap"
    cheap, cheap_previews, _ = run(manager, request)
    manager.config.preview_every = 0
    plain, no_previews, _ = run(manager, request)

    size, latent = SIZES[family], SIZES[family] // 8
    assert [p.size for p in tiny_previews] == [(size, size)] * (STEPS - 1)  # 8x the latent
    assert [p.size for p in cheap_previews] == [(latent, latent)] * (STEPS - 1)
    assert no_previews == [] and notices == []
    assert tiny_previews[0].tobytes() != cheap_previews[0].resize((size, size)).tobytes()
    assert len({p.tobytes() for p in tiny_previews}) == STEPS - 1  # each step's own latents
    # The final image is the same bytes whether the previews were TAESD, cheap or off.
    assert tiny.images[0].image.tobytes() == cheap.images[0].image.tobytes() == plain.images[0].image.tobytes()


def test_official_standalone_file_previews_through_the_manager(family_manager):
    manager, models = family_manager("sd15", live_preview="TAESD")
    write_official(models, Family.SD15)
    _, previews, notices = run(manager, tiny_request("sd15", steps=2))
    assert [p.size for p in previews] == [(64, 64)] and notices == []
    assert len(manager.tiny_decoders._memo) == 1


def test_no_file_means_the_cheap_preview_and_no_message(family_manager):
    manager, _ = family_manager("sd15", live_preview="TAESD")
    _, previews, notices = run(manager, tiny_request("sd15", steps=STEPS))
    manager.config.live_preview = "cheap"
    _, cheap_previews, _ = run(manager, tiny_request("sd15", steps=STEPS))
    assert notices == []
    assert [p.tobytes() for p in previews] == [p.tobytes() for p in cheap_previews]


def test_mismatched_file_is_named_once_and_the_preview_stays_cheap(family_manager):
    manager, models = family_manager("sdxl", live_preview="TAESD")
    write_official(models, Family.SDXL, state={"1.weight": __import__("torch").zeros(64, 16, 3, 3)})
    _, previews, first = run(manager, tiny_request("sdxl", steps=STEPS))
    _, again, second = run(manager, tiny_request("sdxl", steps=STEPS))
    assert len(first) == 1 and first[0].level == "warning"
    assert "taesdxl_decoder.safetensors does not hold a TAESDXL decoder" in first[0].text
    assert "cheap preview" in first[0].text
    assert second == []  # shown once per session
    latent = SIZES["sdxl"] // 8
    assert [p.size for p in previews + again] == [(latent, latent)] * (2 * (STEPS - 1))


def test_replacing_a_bad_file_with_a_good_one_takes_effect(family_manager):
    manager, models = family_manager("sd15", live_preview="TAESD")
    path, _ = write_official(models, Family.SD15, state={"1.weight": __import__("torch").zeros(1)})
    _, previews, notices = run(manager, tiny_request("sd15", steps=2))
    assert previews[0].size == (8, 8) and len(notices) == 1
    path.unlink()
    write_diffusers_folder(models, Family.SD15)
    _, previews, _ = run(manager, tiny_request("sd15", steps=2))
    assert previews[0].size == (64, 64)


def test_the_setting_round_trips_and_applies_live(family_manager, tmp_path):
    from ui.settings_tab import apply_live

    store = SettingsStore(tmp_path / "settings.json")
    settings = store.load()
    assert settings.live_preview == "cheap"
    assert AppSettings(live_preview="taesd").validate() == {"live_preview": "must be cheap or TAESD"}
    store.update(settings, {"live_preview": "TAESD"})
    assert store.load().live_preview == "TAESD"

    manager, models = family_manager("sd15")
    write_diffusers_folder(models, Family.SD15)
    assert manager.config.live_preview == "cheap"
    settings.models_dir, settings.outputs_dir = str(models), str(manager.config.outputs_dir)  # this manager's folders
    settings.include_hf_cache, settings.preview_every = False, 1
    apply_live(manager, settings)
    assert manager.config.live_preview == "TAESD"
    _, previews, _ = run(manager, tiny_request("sd15", steps=2))
    assert previews[0].size == (64, 64)


def test_a_bad_value_in_the_file_falls_back_to_cheap(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"live_preview": "TAESD2"}')
    store = SettingsStore(path)
    assert store.load().live_preview == "cheap"
    assert any("live_preview" in message for message in store.messages)


def test_experiment_runs_publish_the_chosen_preview(family_manager):
    """Experiments run through manager.generate: their previews (the manager's bus, A1111's /progress) follow the setting."""
    manager, models = family_manager("sd15", live_preview="TAESD")
    write_diffusers_folder(models, Family.SD15)
    seen, progress = [], []
    unsubscribe = manager.bus.subscribe(lambda e: seen.append(e.image) if isinstance(e, PreviewReady) else None)
    try:
        base = {"model": DEMO_MODEL_NAME, "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3}
        plan = build_plan(Experiment(base, [AxisSpec("cfg_scale", "1, 7")], repeats=1, warmup=False), manager)
        result = run_experiment(manager, plan, progress.append)
    finally:
        unsubscribe()
    assert result.finished_cells == 2
    assert [p.size for p in seen] == [(64, 64)] * 2
    # The experiment's own progress carries the running cell's latest preview, from its step 1 on.
    carried = [(p.cell_label, p.step, p.preview.size) for p in progress if p.preview is not None]
    assert {label for label, _, _ in carried} == {cell.label for cell in plan.cells}
    assert all(step >= 1 and size == (64, 64) for _, step, size in carried)
    assert all(p.preview is None for p in progress if p.step == 0)


def test_a_failing_decoder_never_costs_the_generation(family_manager, monkeypatch):
    """An error while loading or decoding (out of memory, say) is named once; the run finishes with cheap previews."""
    from pipelines.preview import live

    manager, models = family_manager("sd15", live_preview="TAESD")
    write_diffusers_folder(models, Family.SD15)
    monkeypatch.setattr(live, "tiny_preview", lambda *args: (_ for _ in ()).throw(RuntimeError("out of memory")))
    result, previews, notices = run(manager, tiny_request("sd15", steps=STEPS))
    assert len(result.images) == 1 and [p.size for p in previews] == [(8, 8)] * (STEPS - 1)
    assert [n.text for n in notices] == ["Live preview: the TAESD preview decode failed (RuntimeError: out of memory). Showing the cheap preview instead."]
    monkeypatch.setattr(live, "build_tiny_decoder", lambda *args: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    manager.tiny_decoders.clear()
    result, previews, notices = run(manager, tiny_request("sd15", steps=STEPS))
    assert len(result.images) == 1 and previews[0].size == (8, 8)
    assert len(notices) == 1 and "taesd could not be loaded (RuntimeError: CUDA out of memory)" in notices[0].text

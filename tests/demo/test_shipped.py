"""The shipped demo: loads offline from the repo, is small, and draws what the prompt says far above chance."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.demo import WEIGHTS_DIR, prompt_notes
from pipelines.demo_model import DEMO_DIR_ENV, demo_problem, ensure_demo_model
from pipelines.errors import ModelLoadError
from pipelines.manager import ManagerConfig, PipelineManager

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").is_file(), reason="the demo weights are not in this checkout")


@pytest.fixture(scope="module")
def shipped_pipe():
    from pipelines.demo import checker

    pipe = checker.load_pipe(WEIGHTS_DIR)
    checker.use_sampler(pipe)
    return pipe


def test_the_shipped_files_are_whole_and_small():
    assert demo_problem(WEIGHTS_DIR) is None
    weights = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert weights <= 25 * 2**20


def test_the_shipped_weights_come_from_train_demos_default_recipe():
    """`app.py train-demo --out DIR` retrains what ships: every recipe setting the first run recorded is the default (the
    VAE it started from, the time, threads and bfloat16 are the command line's and the machine's); a polish after it
    (`--resume-from`, README "Demo model") changes only the learning rate, its hold and the quiet timesteps."""
    from pipelines.demo.train import TrainConfig

    stages = [json.loads((WEIGHTS_DIR / "training.json").read_text())]
    while "resumed" in stages[-1]:
        stages.append(stages[-1]["resumed"])
    defaults = {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(TrainConfig()).items()}
    per_run = {"max_minutes", "threads", "vae_from", "resume_from", "bf16"}
    polish = {"unet_lr", "text_lr", "lr_hold", "late_quiet_share"}
    for depth, stage in enumerate(reversed(stages)):
        recorded = stage["config"]
        assert set(recorded) <= set(defaults)  # options added since default to what the run did (off)
        changed = {name for name in recorded if name not in per_run and recorded[name] != defaults[name]}
        assert changed <= (polish if depth else set()), (depth, changed)
        assert bool(depth) == bool(recorded.get("resume_from")), "the first run starts from scratch, each later one resumes"


def test_the_app_loads_the_shipped_folder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv(DEMO_DIR_ENV, str(WEIGHTS_DIR))  # the suite points the demo at the random one; not here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager = PipelineManager(ManagerConfig(tmp_path / "models", tmp_path / "outputs", tmp_path / "cache", device="cpu", include_hf_cache=False))
    assert manager.entry(DEMO_MODEL_NAME).path == WEIGHTS_DIR and manager.entry(DEMO_MODEL_NAME).usable
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("demo-model*"))  # nothing built at start
    from pipelines.request import GenerationRequest

    result = manager.generate(GenerationRequest(model=DEMO_MODEL_NAME, prompt="a red dragon in a castle", steps=4, width=128, height=128,
                                                seed=1, sampler="Euler a", save=False), telemetry=False)
    assert result.images[0].image.size == (128, 128)
    assert any("the demo knows only shapes" in w.lower() for w in result.warnings) and "dragon" in result.warnings[-1]


def test_a_prompt_in_the_vocabulary_gets_no_note():
    assert prompt_notes("demo", WEIGHTS_DIR, "a big red circle in the centre on a white background") == []
    assert prompt_notes("diffusers", WEIGHTS_DIR, "a dragon") == []


def test_a_damaged_demo_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    broken = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, broken)
    unet = broken / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    monkeypatch.setenv(DEMO_DIR_ENV, str(broken))
    with pytest.raises(ModelLoadError, match="git checkout") as error:
        ensure_demo_model()
    assert "unet/diffusion_pytorch_model.safetensors" in str(error.value) and "cut short" in str(error.value)
    shutil.copyfile(WEIGHTS_DIR / "unet" / "diffusion_pytorch_model.safetensors", unet)
    (broken / "vae" / "config.json").unlink()
    assert "vae/config.json is missing" in demo_problem(broken)
    # The app still starts and lists real models; the demo entry carries the message.
    manager = PipelineManager(ManagerConfig(tmp_path / "models", tmp_path / "outputs", tmp_path / "cache", device="cpu", include_hf_cache=False))
    assert not manager.entry(DEMO_MODEL_NAME).usable and "git checkout" in manager.entry(DEMO_MODEL_NAME).problem
    with pytest.raises(ModelLoadError, match="git checkout"):
        manager.load(DEMO_MODEL_NAME)


def test_beats_chance_by_a_wide_margin_on_held_out_prompts(shipped_pipe):
    from pipelines.demo import checker, scenes

    held_out = scenes.held_out_scenes(12)
    figures = checker.accuracy(shipped_pipe, held_out, steps=12)
    per = figures["per_attribute"]
    # the per-shape breakdown counts each single-object scene once, under its size and shape, and agrees with the shape figure
    singles = [s for s in held_out if s.kind == "shape"]
    assert sum(total for _, total in figures["per_shape"].values()) == len(singles) > 0
    assert set(figures["per_shape"]) == {f"{s.objects[0].size} {s.objects[0].shape}" for s in singles}
    assert sum(right for right, _ in figures["per_shape"].values()) == round(per["shape"] * len(singles))
    # chance: colour 1/8, position 1/9, background 1/7, face 1/2 (loose bounds, for a stable test)
    assert per["background"] >= 0.5 and per["face"] >= 0.75
    assert per.get("colour", 1.0) >= 0.4 and per.get("position", 1.0) >= 0.4


def test_every_sampler_draws_on_the_shipped_demo(shipped_pipe):
    """Its scheduler config is Euler's, which says nothing of clip_sample: diffusers' DDIM then clipped its x0
    guess to [-1, 1] and drew noise (background right 15 % of held-out prompts)."""
    from pipelines.demo import checker, scenes
    from pipelines.families import Family
    from pipelines.samplers import sampler_names

    euler_a = shipped_pipe.scheduler
    held_out = [s for s in scenes.held_out_scenes(24) if s.kind == "shape"][:6]
    try:
        for name in sampler_names(Family.SD15):
            checker.use_sampler(shipped_pipe, name)
            per = checker.accuracy(shipped_pipe, held_out, steps=20)["per_attribute"]  # Karras needs the demo's 20 steps
            assert per["background"] >= 0.8 and per["colour"] >= 0.5, (name, per)
    finally:
        shipped_pipe.scheduler = euler_a


def test_the_checker_makes_each_sampler_from_the_saved_config(shipped_pipe):
    """A Karras sampler does not lend its sigmas to the next one the checker switches to (UniPC and Euler have them too)."""
    from pipelines.demo import checker

    euler_a = shipped_pipe.scheduler
    try:
        checker.use_sampler(shipped_pipe, "DPM++ 2M Karras")
        assert shipped_pipe.scheduler.config.use_karras_sigmas
        checker.use_sampler(shipped_pipe, "UniPC")
        assert type(shipped_pipe.scheduler).__name__ == "UniPCMultistepScheduler" and not shipped_pipe.scheduler.config.use_karras_sigmas
    finally:
        shipped_pipe.scheduler = euler_a


def test_each_approximate_cache_prompt_is_graded_against_the_scene_it_asks_for():
    from pipelines.demo import checker, classify, scenes

    streams = checker.approx_streams()
    assert len(streams["related"]) == 10 and len(streams["unrelated"]) == 6
    for prompt, scene in streams["related"] + streams["unrelated"]:
        assert all(classify.grade(scene, classify.analyse(scenes.render(scene))).values()), prompt  # the scene as drawn reads right
        words = [word for obj in scene.objects for word in (obj.colour, obj.shape)] + [scene.hair, scene.skin, scene.background]
        assert all(word in prompt for word in words if word and word != scenes.GRADIENT), (prompt, words)


def test_the_checker_says_whether_the_approximate_caches_hits_draw_their_prompt(tmp_path):
    from pipelines.demo import checker

    manager = PipelineManager(ManagerConfig(tmp_path / "models", tmp_path / "outputs", tmp_path / "cache", device="cpu", include_hf_cache=False))
    app = checker.app_section(manager, quick=True, folder=WEIGHTS_DIR)
    for name, count in (("related", 10), ("unrelated", 6)):
        right, hits = app[f"approx_{name}_hits_right"]
        assert hits == round(app[f"approx_{name}_hit_rate"] * (count - 1)) and 0 <= right <= hits
    assert app["approx_related_hits_right"][1] >= 5  # the same circle in other words and colours: most of them hit

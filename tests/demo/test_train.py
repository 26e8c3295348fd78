"""The training script runs a few steps and writes a folder the app can load (CI never retrains)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipelines.demo.train import TrainConfig, train
from pipelines.demo_model import demo_problem


def test_a_few_steps_write_a_loadable_diffusers_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "demo"
    facts = train(out, TrainConfig(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=2, unet_batch=2, decoder_steps=2, decoder_batch=2))
    assert facts["unet_steps_done"] == 2 and not facts["stopped_early"]
    assert demo_problem(out) is None
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {record["phase"] for record in log} == {"vae", "unet", "decoder"}
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == torch.float16  # saved as fp16
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    pipe.to(torch.float32).set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, width=128, height=128, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()


def test_vae_from_resumes_with_the_earlier_runs_vae_and_skips_its_phases(tmp_path):
    from diffusers import AutoencoderKL

    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=2, unet_batch=2, decoder_steps=2, decoder_batch=2, threads=1)
    first = tmp_path / "first"
    train(first, TrainConfig(**small, max_minutes=0.0))  # the deadline ends the UNet phase at once
    resumed = tmp_path / "resumed"
    facts = train(resumed, TrainConfig(**small, vae_from=str(first / "vae")))
    phases = {json.loads(line)["phase"] for line in (resumed / "train_log.jsonl").read_text().splitlines()}
    assert phases == {"unet"}  # the VAE and decoder phases were skipped
    assert facts["timings"]["vae_from"] == str(first / "vae") and facts["timings"]["vae_and_decoder_s_in_earlier_run"] is not None
    earlier = AutoencoderKL.from_pretrained(first / "vae").state_dict()
    shipped = AutoencoderKL.from_pretrained(resumed / "vae").state_dict()
    key = "decoder.conv_out.weight"
    assert torch.equal(earlier[key], shipped[key])  # the same VAE


def test_resume_from_trains_a_finished_models_unet_further_and_keeps_its_history(tmp_path):
    from diffusers import UNet2DConditionModel

    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=2, unet_batch=2, decoder_steps=2, decoder_batch=2, threads=1)
    first = tmp_path / "first"
    before = train(first, TrainConfig(**small, seed=1))  # another seed: a rebuilt UNet would start elsewhere
    resumed = tmp_path / "resumed"
    facts = train(resumed, TrainConfig(**small, seed=0, resume_from=str(first)))
    assert facts["resumed"]["unet_steps_done"] == 2 and facts["unet_steps_total"] == 4
    assert facts["scaling_factor"] == before["scaling_factor"]  # the scale the UNet learnt with
    key = "conv_in.weight"
    old = UNet2DConditionModel.from_pretrained(first / "unet").state_dict()[key]
    new = UNet2DConditionModel.from_pretrained(resumed / "unet").state_dict()[key]
    assert old.shape == new.shape and not torch.equal(old, new)  # trained further, not rebuilt from scratch...
    assert (new.float() - old.float()).abs().max() < 1e-3  # ...and close to where it started (seed 0's init is not)


def test_train_demo_names_a_folder_that_is_not_a_trained_model(tmp_path, capsys):
    import app

    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--resume-from", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --resume-from") and "no training.json there" in error
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--vae-from", str(tmp_path)]) == 2
    assert "--vae-from" in capsys.readouterr().err
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--outline-weight", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --outline-weight 0.5: give 1")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--late-quiet-share", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --late-quiet-share 1.5: give a share from 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--axis-phase-steps", "-5"]) == 2
    assert capsys.readouterr().err.startswith("error: --axis-phase-steps -5: give 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--axis-phase-from", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --axis-phase-from -1: give a step")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--lr", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --lr 0.0: give a learning rate above 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--lr-hold", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --lr-hold 1.0: give a share from 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--polish-share", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --polish-share 1.0: give a share from 0 (no polish) to below 1")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--polish-lr", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --polish-lr 0.0: give a learning rate above 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--pair-difference-weight", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --pair-difference-weight -1.0: give 0")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--no-minimal-pairs", "--pair-difference-weight", "1"]) == 2
    assert "give it with --minimal-pairs" in capsys.readouterr().err
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--no-minimal-pairs", "--pairs-in-axis-phase-only"]) == 2
    assert "--pairs-in-axis-phase-only says when the minimal pairs train: give it with --minimal-pairs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_train_demo_passes_the_recipe_flags_given_and_keeps_the_defaults_of_the_rest(tmp_path, monkeypatch):
    import app
    from pipelines.demo import train as train_module

    configs = []
    monkeypatch.setattr(train_module, "train", lambda out, config: configs.append(config))
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--minimal-pairs", "--pair-difference-weight", "1",
                     "--axis-phase-steps", "2000", "--axis-phase-from", "6000", "--compile"]) == 0
    assert app.main(["train-demo", "--out", str(tmp_path / "out")]) == 0
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--no-bf16", "--polish-share", "0", "--polish-lr", "1e-4"]) == 0
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--resume-from", str(tmp_path), "--lr", "1.5e-4", "--lr-hold", "0"]) == 2
    (tmp_path / "training.json").write_text("{}")
    assert app.main(["train-demo", "--out", str(tmp_path / "out"), "--resume-from", str(tmp_path), "--lr", "1.5e-4", "--lr-hold", "0"]) == 0
    given, default, float32, polish = configs
    assert default.bf16 is None and float32.bf16 is False, "bfloat16 follows the CPU unless given"
    assert (float32.polish_share, float32.polish_lr) == (0.0, 1e-4) and default.polish_share == train_module.TrainConfig.polish_share
    assert default.compile is False and given.compile is True, "torch.compile only when asked"
    assert (polish.unet_lr, polish.text_lr, polish.lr_hold, polish.resume_from) == (1.5e-4, 1.5e-4, 0.0, str(tmp_path))
    assert (default.unet_lr, default.text_lr, default.lr_hold) == (6e-4, 6e-4, 0.7)
    assert (given.minimal_pairs, given.pair_difference_weight, given.axis_phase_steps, given.axis_phase_from) == (True, 1.0, 2000, 6000)
    assert given.late_quiet_share == default.late_quiet_share == train_module.TrainConfig.late_quiet_share, "not given: the recipe's"
    assert (default.minimal_pairs, default.axis_phase_steps, default.axis_phase_from) == (
        train_module.TrainConfig.minimal_pairs, train_module.TrainConfig.axis_phase_steps, train_module.TrainConfig.axis_phase_from)


def test_bfloat16_autocast_only_where_the_cpu_computes_it_natively(tmp_path, monkeypatch):
    from pipelines.demo import train as train_module
    from pipelines.demo.train import native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    for flags, native in (("fpu sse avx avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True),
                          ("avx512f avx512bw", False)):
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert native_bf16(cpuinfo) is native, flags
    assert native_bf16(tmp_path / "absent") is False, "flags unreadable (not Linux): float32, never the emulated path"
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=2, unet_batch=2, decoder_steps=2, decoder_batch=2, threads=1)
    for native in (False, True):
        monkeypatch.setattr(train_module, "native_bf16", lambda: native)
        facts = train(tmp_path / str(native), TrainConfig(**small))
        assert facts["bf16_autocast"] is native and facts["config"]["bf16"] is None, "the recipe records auto, the run what it used"
    assert train(tmp_path / "forced", TrainConfig(**small, bf16=False))["bf16_autocast"] is False  # given: kept on any CPU


def test_objects_weigh_more_in_the_loss_and_noisier_timesteps_come_more_often():
    from pipelines.demo.train import TrainConfig, loss_weights, render_scenes, sample_timesteps

    _, _, touched, _ = render_scenes(TrainConfig(scenes=6, seed=2, minimal_pairs=False))
    assert touched.shape == (6, 16, 16) and 0 < touched.mean() < 0.7, "objects touch some latent pixels, not all"
    weights = loss_weights(torch.from_numpy(touched), 3.0)
    assert weights.shape == (6, 1, 16, 16) and set(weights.unique().tolist()) == {1.0, 3.0}
    assert torch.equal(weights[:, 0] == 3.0, torch.from_numpy(touched))
    t = sample_timesteps(20000, 0.5, 1000, torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() < 1000
    assert abs((t >= 500).float().mean().item() - 0.75) < 0.02, "half redrawn from the noisier half: 75 % there"
    assert abs((sample_timesteps(20000, 0.0, 1000, torch.Generator().manual_seed(0)) >= 500).float().mean().item() - 0.5) < 0.02


def test_once_one_axis_is_learnt_the_unet_sees_scenes_placed_along_the_other_alone():
    from pipelines.demo import scenes
    from pipelines.demo.train import AxisCurriculum, position_axis

    square = lambda where: scenes.Scene("shape", "white", (scenes.Shape("square", "red", where, "big"),))
    pair = lambda relation: scenes.Scene("pair", "white", (scenes.Shape("circle", "red"), scenes.Shape("star", "blue")), relation=relation)
    assert [position_axis(square(w)) for w in ("left", "bottom right", "top", "centre")] == ["horizontal", "both", "vertical", ""]
    assert [position_axis(pair(r)) for r in ("right of", "above")] == ["horizontal", "vertical"]
    assert position_axis(scenes.Scene("face", "white", hair="red", skin="tan")) == ""
    axes = np.array(["", "horizontal", "vertical", "both", "horizontal"])
    curriculum = AxisCurriculum(axes, phase_steps=10)
    assert curriculum.positions == "all" and curriculum.pool().tolist() == [0, 1, 2, 3, 4], "every scene until an axis is learnt"
    curriculum.advance(0, {"vertical": 0.01, "horizontal": 0.02})
    curriculum.advance(1)
    assert curriculum.positions == "all"
    curriculum.advance(250, {"vertical": 0.4, "horizontal": 0.02})
    assert curriculum.positions == "horizontal" and curriculum.pool().tolist() == [0, 1, 4], "then the other axis alone"
    curriculum.advance(255, {"vertical": 0.4, "horizontal": 0.1})
    assert curriculum.positions == "horizontal", "neither learnt nor 10 steps spent"
    curriculum.advance(260)
    assert curriculum.positions == "all" and curriculum.finished, "its 10 steps spent"
    curriculum.advance(500, {"vertical": 0.01, "horizontal": 0.5})
    assert curriculum.positions == "all", "one phase only"
    learnt = AxisCurriculum(axes, phase_steps=10)
    learnt.advance(0, {"vertical": 0.02, "horizontal": 0.3})
    assert learnt.positions == "vertical" and learnt.pool().tolist() == [0, 2]
    learnt.advance(3, {"vertical": 0.3, "horizontal": 0.3})
    assert learnt.positions == "all" and learnt.finished, "the vertical axis learnt before its steps were spent"
    both = AxisCurriculum(axes, phase_steps=10)
    both.advance(0, {"vertical": 0.3, "horizontal": 0.3})
    assert both.finished and both.positions == "all", "both learnt together: no phase"
    assert AxisCurriculum(axes, phase_steps=0).finished, "0: off (the shipped recipe)"
    late = AxisCurriculum(axes, phase_steps=10, phase_from=1000)
    late.advance(250, {"vertical": 0.4, "horizontal": 0.02})
    assert late.positions == "all" and not late.finished, "one axis learnt, but before the phase's first step"
    late.advance(999, {"vertical": 0.4, "horizontal": 0.02})
    assert late.positions == "horizontal" and late.phase_start == 1000, "from step 1000 on"


def test_while_the_rate_anneals_most_timesteps_come_from_the_quieter_part():
    from pipelines.demo.train import sample_timesteps

    quiet = sample_timesteps(20000, 0.5, 1000, torch.Generator().manual_seed(0), quiet_share=0.8, quiet_limit=600)
    assert 0 <= quiet.min() and quiet.max() < 1000, "a fifth stay uniform over every timestep"
    assert abs((quiet < 600).float().mean().item() - (0.8 + 0.2 * 0.6)) < 0.02
    # none redrawn from the noisier half then: t >= 500 only as often as 0.8 x 100/600 + 0.2 x 1/2 (0.75 in the noisier mix)
    assert abs((quiet >= 500).float().mean().item() - (0.8 / 6 + 0.1)) < 0.02


def test_a_run_switches_to_quieter_timesteps_once_its_rate_anneals(tmp_path):
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=260, unet_batch=2, decoder_steps=2, decoder_batch=2,
                 threads=1, lr_hold=0.5, unet_channels=(8, 8, 8, 8), late_quiet_share=0.8, axis_phase_steps=100, polish_share=0.0)
    train(tmp_path / "demo", TrainConfig(**small))
    log = [json.loads(line) for line in (tmp_path / "demo" / "train_log.jsonl").read_text().splitlines()]
    quiet = {record["step"]: record["quiet_timesteps"] for record in log if record["phase"] == "unet"}
    assert not quiet[0] and not quiet[200] and quiet[250] and quiet[259]  # 200 warm-up steps, then 30 held, 30 annealed
    # the axis curriculum measures both axes every 250 steps; a model this small learns neither, so it never narrows the scenes
    measured = [record for record in log if "edge_response" in record]
    assert [record["step"] for record in measured] == [0, 250] and set(measured[0]["edge_response"]) == {"vertical", "horizontal"}
    assert {record["positions"] for record in log if record["phase"] == "unet"} == {"all"}


def test_the_last_share_of_the_unet_phase_is_a_polish_from_the_averaged_weights_at_a_lower_rate(tmp_path, monkeypatch):
    from pipelines.demo import train as train_module

    monkeypatch.setattr(train_module, "UNET_WARMUP", 20)
    loaded = []  # the step of each state the UNet is given (the averaged weights)
    real_optimizer = train_module._unet_optimizer
    monkeypatch.setattr(train_module, "_unet_optimizer", lambda unet, *args: loaded.append(unet) or real_optimizer(unet, *args))
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=300, unet_batch=2, decoder_steps=2, decoder_batch=2,
                 threads=1, lr_hold=0.5, unet_channels=(8, 8, 8, 8), late_quiet_share=0.8, axis_phase_steps=0)
    facts = train(tmp_path / "demo", TrainConfig(**small, polish_share=0.2, polish_lr=1.5e-4))
    assert facts["polish_from_step"] == 240 and facts["unet_steps_done"] == 300
    assert len(loaded) == 2, "a fresh optimizer when the polish begins"
    log = {record["step"]: record for record in (json.loads(line) for line in (tmp_path / "demo" / "train_log.jsonl").read_text().splitlines())
           if record["phase"] == "unet"}
    assert not log[225]["polish"] and log[225]["quiet_timesteps"] == 0.8, "the main run, annealing"
    assert log[225]["lr_factor"] < 0.2, "annealed by the polish's start (step 240 of 300)"
    assert log[250]["polish"] and log[250]["quiet_timesteps"] == 0.0 and log[250]["lr_factor"] == pytest.approx(0.25 * 11 / 20, abs=1e-4)
    assert log[275]["quiet_timesteps"] == 1.0 and 0.25 * 0.05 < log[275]["lr_factor"] < 0.25, "a quarter of the peak, annealing"
    plain = train(tmp_path / "plain", TrainConfig(**small, polish_share=0.0))
    assert plain["polish_from_step"] is None


def test_compile_runs_the_training_step_through_compiled_unet_regions_and_learns_the_same(tmp_path, monkeypatch):
    """dynamo's `eager` backend stands in for inductor (minutes of C++ compiling): the same graph capture, no codegen.
    Whether inductor's own backward is right is measured, not tested here (README "Demo model")."""
    from diffusers import UNet2DConditionModel

    from pipelines.demo import train as train_module
    from pipelines.demo.model import build_unet

    real_compile, calls = torch.compile, []

    class Recorded(torch.nn.Module):  # a module, as torch.compile's OptimizedModule is
        def __init__(self, module):
            super().__init__()
            self.optimized, self.kind = real_compile(module, backend="eager"), type(module).__name__

        def forward(self, *args, **kw):
            calls.append(self.kind)
            return self.optimized(*args, **kw)

    def compile_eager(module, **kwargs):
        return Recorded(module)

    monkeypatch.setattr(torch, "compile", compile_eager)
    monkeypatch.setattr(train_module, "UNET_WARMUP", 1)  # the peak rate at once: three steps move the weights
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=3, unet_batch=2, decoder_steps=2, decoder_batch=2,
                 threads=1, unet_channels=(8, 8, 8, 8), axis_phase_steps=0)
    compiled_facts = train(tmp_path / "compiled", TrainConfig(**small, compile=True))
    regions = Counter(type(module).__name__ for module in build_unet(0, (8, 8, 8, 8), heads=TrainConfig.unet_heads).modules())
    assert regions["ResnetBlock2D"] and regions["Transformer2DModel"]
    # every training step through every region and nothing else (the axis probe, the EMA, saving: the plain modules)
    assert Counter(calls) == {name: 3 * regions[name] for name in train_module.COMPILED_REGIONS}
    plain_facts = train(tmp_path / "plain", TrainConfig(**small))
    assert len(calls) == 3 * sum(regions[name] for name in train_module.COMPILED_REGIONS), "off: nothing compiled"
    assert compiled_facts["final_loss_smoothed"] == pytest.approx(plain_facts["final_loss_smoothed"], rel=1e-4)
    key = "conv_in.weight"
    compiled, plain = (UNet2DConditionModel.from_pretrained(tmp_path / name / "unet").state_dict()[key].float() for name in ("compiled", "plain"))
    initial = build_unet(0, (8, 8, 8, 8), heads=TrainConfig.unet_heads).state_dict()[key]
    assert (compiled - plain).abs().max() < 1e-3 < (plain - initial).abs().max(), "trained, and the same weights learnt"


def test_a_restarted_axis_phase_warms_the_learning_rate_up_again(tmp_path, monkeypatch):
    from pipelines.demo import train as train_module

    # a probe that says the vertical axis is learnt and the horizontal not: the phase starts after step 0
    monkeypatch.setattr(train_module, "axis_response", lambda *args: {"vertical": 0.5, "horizontal": 0.0})
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=30, unet_batch=2, decoder_steps=2, decoder_batch=2,
                 threads=1, unet_channels=(8, 8, 8, 8), axis_phase_steps=100, axis_phase_from=0)
    logged = {}
    for restart in (False, True):
        train(tmp_path / str(restart), TrainConfig(**small, axis_phase_restart=restart))
        log = [json.loads(line) for line in (tmp_path / str(restart) / "train_log.jsonl").read_text().splitlines()]
        logged[restart] = {record["step"]: record for record in log if record["phase"] == "unet"}
    assert logged[True][25]["positions"] == logged[False][25]["positions"] == "horizontal"
    assert logged[True][0]["lr_factor"] == logged[False][0]["lr_factor"], "the same until the phase starts"
    assert logged[True][25]["lr_factor"] == pytest.approx(logged[False][25]["lr_factor"] * 25 / 200, abs=1e-4), "step 25 of the new warm-up"


def test_pairs_in_the_axis_phase_only_pair_the_phases_batches_alone(tmp_path, monkeypatch):
    from pipelines.demo import train as train_module

    monkeypatch.setattr(train_module, "axis_response", lambda *args: {"vertical": 0.5, "horizontal": 0.0})
    drawn = []  # each step's partner offset (0: unpaired)
    real_draw = train_module.draw_batch

    def recording_draw(pool, partners, *args, **kwargs):
        drawn.append(partners)
        return real_draw(pool, partners, *args, **kwargs)

    monkeypatch.setattr(train_module, "draw_batch", recording_draw)
    small = dict(scenes=16, vae_steps=2, vae_batch=2, vae_crop=32, unet_steps=10, unet_batch=4, decoder_steps=2, decoder_batch=2,
                 threads=1, unet_channels=(8, 8, 8, 8), axis_phase_steps=5, axis_phase_from=0, minimal_pairs=True,
                 pair_difference_weight=1.0)
    train(tmp_path / "demo", TrainConfig(**small, pairs_in_axis_phase_only=True))
    assert drawn == [0] + [16] * 5 + [0] * 4, "paired during the 5 phase steps alone"
    drawn.clear()
    train(tmp_path / "always", TrainConfig(**small, pairs_in_axis_phase_only=False))
    assert drawn == [16] * 10, "pairs throughout (the option off)"


def test_the_learning_rate_holds_its_peak_then_anneals_and_a_deadline_ends_it_annealed():
    from pipelines.demo.train import _lr_factor

    assert _lr_factor(0, 1000, warmup=100, hold=0.7) == 0.01  # warm-up from near zero
    assert [_lr_factor(s, 1000, warmup=100, hold=0.7) for s in (99, 300, 700)] == [1.0, 1.0, 1.0]  # held at the peak
    falling = [_lr_factor(s, 1000, warmup=100, hold=0.7) for s in (750, 850, 950, 999)]
    assert falling == sorted(falling, reverse=True) and falling[0] < 1.0 and abs(falling[-1] - 0.05) < 1e-3
    # with no hold the cosine starts at once (the earlier recipe)
    assert _lr_factor(550, 1000, warmup=100, hold=0.0) < 0.55
    # time decides when steps do not: 99 % of the budget spent at step 200 of 16000 is near the floor
    assert _lr_factor(200, 16000, warmup=100, elapsed=0.99, hold=0.7) < 0.06


def test_the_axis_probe_tells_a_learnt_axis_from_an_unlearnt_one():
    from pipelines.demo import WEIGHTS_DIR, model
    from pipelines.demo.train import axis_response
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(WEIGHTS_DIR, local_files_only=True).to(torch.float32)
    trained = axis_response(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    # the shipped model places objects by the prompt along both axes; the probe reads a clear response on each
    assert min(trained.values()) > 0.2, trained
    # a model before training (the recipe's initial UNet and text encoder): the words barely move its first step
    untrained = axis_response(model.build_unet(0, (64, 96, 128, 128), heads=2), model.build_text_encoder(pipe.tokenizer, 0), pipe.tokenizer)
    assert set(untrained) == {"vertical", "horizontal"} and max(untrained.values()) < 0.1, untrained


def test_the_vae_kl_is_taken_in_float32_from_a_bfloat16_posterior():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from pipelines.demo.train import _kl

    parameters = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = DiagonalGaussianDistribution(parameters.double()).kl().mean()
    low = _kl(DiagonalGaussianDistribution(parameters.to(torch.bfloat16)))
    assert low.dtype == torch.float32
    # its parameters are rounded to bfloat16, the sum is not: within that rounding of the float64 figure
    assert abs(low.item() - reference.item()) / reference.item() < 0.02
    assert abs(_kl(DiagonalGaussianDistribution(parameters)).item() - reference.item()) / reference.item() < 1e-5


def test_the_vae_loss_weighs_errors_near_drawn_outlines_more_than_on_flat_colour():
    from pipelines.demo import scenes
    from pipelines.demo.train import _outline, _outline_l1, _to_tensor

    square = scenes.Scene("shape", "white", (scenes.Shape("square", "red", "centre", "big"),))
    gradient = scenes.Scene("shape", scenes.GRADIENT, (scenes.Shape("circle", "blue", "top left", "small"),))
    batch = _to_tensor(np.stack([scenes.render(square), scenes.render(gradient, np.random.default_rng(0))]))
    outline = _outline(batch)
    assert outline.shape == (2, 1, 128, 128) and set(outline.unique().tolist()) == {0.0, 1.0}
    # the square (half-width 24 * 0.85 around pixel 64) has its left edge at x = 43.6: a band of about 2 px each side
    row = outline[0, 0, 64]
    assert row[41:46].eq(1).all() and row[:38].eq(0).all() and row[50:78].eq(0).all()
    # a gradient background's slope is not an outline; the small circle in its corner is
    assert outline[1, 0, 64:, 64:].eq(0).all() and outline[1, 0, :50, :50].sum() > 20
    # weight 1 is the plain L1 (the shipped recipe's, exactly); at 9 the same error counts more where it sits on an outline
    noise = torch.rand(batch.shape, generator=torch.Generator().manual_seed(0)) * 0.2
    assert torch.equal(_outline_l1(batch + noise, batch, 1.0), torch.mean(torch.abs(batch + noise - batch)))
    on_edge, on_flat = torch.zeros_like(batch), torch.zeros_like(batch)
    on_edge[0, :, 60:68, 43] = 0.5
    on_flat[0, :, 60:68, 20] = 0.5
    assert _outline_l1(batch + on_edge, batch, 9.0) > 5 * _outline_l1(batch + on_flat, batch, 9.0)


def test_minimal_pairs_render_each_partner_with_its_scenes_jitter_and_share_noise_and_timestep():
    from pipelines.demo import scenes
    from pipelines.demo.train import draw_batch, render_scenes

    alone = render_scenes(TrainConfig(scenes=8, seed=2, minimal_pairs=False))
    images, captions, touched, axes = render_scenes(TrainConfig(scenes=8, seed=2, minimal_pairs=True))
    assert images.shape[0] == 16 and len(captions) == 16 and touched.shape[0] == 16 and len(axes) == 16
    assert np.array_equal(images[:8], alone[0]) and captions[:8] == alone[1], "the scenes themselves are the same as without pairs"
    for index in range(8):
        assert captions[index] != captions[index + 8] and not np.array_equal(images[index], images[index + 8])
        # the same background (a gradient's two ends too): the image corners, which no object reaches, agree
        corners = (slice(0, 4), slice(0, 4)), (slice(-4, None), slice(-4, None))
        for rows, cols in corners:
            assert np.array_equal(images[index][rows, cols], images[index + 8][rows, cols])
    config = TrainConfig(scenes=8, unet_batch=6, minimal_pairs=True, uncond_fraction=0.5)
    token_ids = torch.arange(16 * 4 * 3).view(16, 4, 3)
    means, stds = torch.randn(16, 4, 16, 16), torch.rand(16, 4, 16, 16)
    batch = draw_batch(np.arange(8), 8, token_ids, torch.zeros(3, dtype=torch.long), means, stds, 1.0, config,
                       np.random.default_rng(0), torch.Generator().manual_seed(0), 1000, quiet_share=0.0)
    assert np.array_equal(batch.index[3:], batch.index[:3] + 8), "the second half is the first half's partners"
    assert torch.equal(batch.noise[:3], batch.noise[3:]) and torch.equal(batch.timesteps[:3], batch.timesteps[3:])
    # the same phrasing (token ids differ only by the scene's offset of 8 * 4 * 3) and the same dropped captions
    dropped = (batch.ids == 0).all(dim=1)
    assert torch.equal(dropped[:3], dropped[3:])
    kept = ~dropped[:3]
    assert torch.equal(batch.ids[3:][kept] - batch.ids[:3][kept], torch.full_like(batch.ids[:3][kept], 8 * 12))
    assert not torch.equal(batch.latents[:3], batch.latents[3:])
    unpaired = draw_batch(np.arange(8), 0, token_ids, torch.zeros(3, dtype=torch.long), means, stds, 1.0,
                          TrainConfig(scenes=8, unet_batch=6), np.random.default_rng(0), torch.Generator().manual_seed(0), 1000, 0.0)
    assert len(unpaired.index) == 6 and not torch.equal(unpaired.noise[:3], unpaired.noise[3:])


def test_the_pair_difference_loss_counts_only_what_differs_within_a_pair():
    from pipelines.demo.train import pair_difference_loss

    shared = torch.randn(3, 4, 16, 16)
    weights = torch.ones(6, 1, 16, 16)
    none_dropped = np.zeros(6, bool)
    assert pair_difference_loss(torch.cat([shared, shared]), weights, none_dropped).item() == 0.0, "the same error twice: nothing differs"
    apart = torch.cat([shared, shared + 0.5])
    assert abs(pair_difference_loss(apart, weights, none_dropped).item() - 0.25) < 1e-6
    # where either scene of a pair has an object counts more: an error there weighs more than on the background
    objects = weights.clone()
    objects[3:, :, :8] = 3.0  # the partners' objects in the top half
    top, bottom = torch.cat([shared, shared]), torch.cat([shared, shared])
    top[3:, :, :8] += 0.5
    bottom[3:, :, 8:] += 0.5
    assert pair_difference_loss(top, objects, none_dropped) > pair_difference_loss(bottom, objects, none_dropped)
    # a pair whose captions were both dropped (the same input twice) is left out; all dropped: zero
    dropped = np.array([True, False, False, True, False, False])
    first_apart = torch.cat([shared, shared])
    first_apart[3] += 1.0
    assert pair_difference_loss(first_apart, weights, dropped).item() == 0.0
    assert pair_difference_loss(apart, weights, np.ones(6, bool)).item() == 0.0

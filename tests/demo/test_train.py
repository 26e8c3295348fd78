"""The training script runs a few steps and writes a folder the app can load (CI never retrains)."""
from __future__ import annotations

import json

import numpy as np
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

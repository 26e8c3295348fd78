"""What crosses from a worker to the UI process, and the pool's checks that need no cluster."""
from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from pipelines.distributed.pool import WorkerStartError, check_reachable, rebuild_error
from pipelines.distributed.wire import WorkerFailure, pack_images, pack_result, unpack_result
from pipelines.errors import GenerationCancelled, ModelNotFound
from pipelines.request import GeneratedImage, GenerationRequest, GenerationResult
from tests.distributed import REPO_ROOT


def sample_result() -> GenerationResult:
    image = Image.effect_noise((32, 24), 40).convert("RGB")
    return GenerationResult([GeneratedImage(image, 7, "a cat\nSteps: 2, Seed: 7")], GenerationRequest(model="m", prompt="a cat"),
                            {"denoise": 0.5}, [0.25, 0.25], 0.6, 123, "process RSS", "cpu", "fp32", "fp32",
                            warnings=["w"], cache_notes={"prompt memo": "miss"})


def test_a_result_comes_back_with_the_same_pixels_and_facts():
    original = sample_result()
    back = unpack_result(pack_result(original, "worker-1", {"jobs_done": 1}))
    assert back.images[0].image.tobytes() == original.images[0].image.tobytes()
    assert (back.seeds, back.images[0].infotext, back.stage_seconds, back.warnings, back.device) == \
           ([7], original.images[0].infotext, {"denoise": 0.5}, ["w"], "cpu")
    assert back.kept_latents is None  # the latents stay on the worker


def test_a_worker_error_is_raised_again_with_its_class_and_sentence():
    error = rebuild_error(WorkerFailure("ModelNotFound", "No model named 'x'."))
    assert isinstance(error, ModelNotFound) and str(error) == "No model named 'x'."
    stopped = rebuild_error(WorkerFailure("GenerationCancelled", "Generation stopped by the user.",
                                          pack_images(sample_result().images)))
    assert isinstance(stopped, GenerationCancelled) and stopped.partial[0].seed == 7
    assert type(rebuild_error(WorkerFailure("SystemExit", "no"))).__name__ == "LikenessError"  # never another class


def test_an_unreachable_cluster_is_named_at_once():
    with pytest.raises(WorkerStartError, match="Cannot reach the Ray cluster at 127.0.0.1:9"):
        check_reachable("127.0.0.1:9", timeout_s=2)
    with pytest.raises(WorkerStartError, match="is not host:port"):
        check_reachable("nowhere")


def test_ray_is_not_imported_without_workers():
    code = "import sys, app, pipelines.manager, pipelines.distributed.pool; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]

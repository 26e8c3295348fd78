"""The tiny antelopev2 ONNX pack lives in `pipelines.bench.tiny_onnx` (the PuLID benchmark builds it too)."""
from pipelines.bench.tiny_onnx import *  # noqa: F401,F403

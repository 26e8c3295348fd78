"""The Likeness engine: catalog, model cache, generation, telemetry. Never imports Gradio.

Set before diffusers or huggingface_hub are imported: they read it once, at import. Likeness never
downloads; with this set, a config folder that is not found locally fails instead of fetching.

onnxruntime (the face detector) otherwise writes a telemetry device id to
`~/.cache/Microsoft/DeveloperTools/.onnxruntime/` the first time it loads; with telemetry off it
writes nothing outside Likeness's own folders.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

"""The Likeness engine: catalog, model cache, generation, telemetry. Never imports Gradio.

Set before diffusers or huggingface_hub are imported: they read it once, at import. Likeness never
downloads; with this set, a config folder that is not found locally fails instead of fetching.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

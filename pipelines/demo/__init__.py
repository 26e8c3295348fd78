"""The demo model: procedural scenes, their classifier, the trainer and the shipped weights.

Nothing here imports torch at import time; the app only needs `WEIGHTS_DIR` at start.
"""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Off until a training run passes `bench --suite demo` clearly: the first run on the shared 2-core
# machine (1500 UNet steps) learnt backgrounds and faces but not shapes or positions, so the app keeps
# the random demo. Turning it on: train (`app.py train-demo --out pipelines/demo/weights`), check, flip.
SHIP_TRAINED_DEMO = False

DEMO_KNOWS = "the demo knows only shapes, colours, positions and simple faces"


def prompt_notes(model_format: str, folder: Path, prompt: str) -> list[str]:
    """The readout's note for a trained-demo prompt with words outside its vocabulary (it still generates)."""
    if model_format != "demo" or not (folder / "training.json").is_file():
        return []  # a real model, or the random demo the tests use
    from pipelines.demo.scenes import known_words

    unknown = [word for word in dict.fromkeys(_words(prompt)) if word not in known_words()]
    if not unknown:
        return []
    shown = ", ".join(unknown[:6]) + (" …" if len(unknown) > 6 else "")
    return [f"Not in the demo's vocabulary: {shown}. {DEMO_KNOWS[0].upper() + DEMO_KNOWS[1:]}; "
            "put a real SD 1.5 / SDXL / FLUX.1 model in the models folder for anything else."]


def _words(prompt: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+", prompt.lower())

# The Generate tab's example prompts (128x128, 20 steps): one click fills the form.
EXAMPLE_PROMPTS = (
    "a big red circle in the centre on a white background",
    "a small yellow star in the top right corner on a navy background",
    "a portrait of a person with blonde hair and tan skin on a gray background",
    "a big green heart at the bottom on a black background",
    "a blue square left of an orange triangle on a cream background",
    "a face with black hair and dark skin on a gradient background",
)
DEFAULT_SIZE = 128
DEFAULT_STEPS = 20

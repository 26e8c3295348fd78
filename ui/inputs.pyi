"""Number inputs whose API values are checked with a message.

Gradio's own Slider and Number compare an API client's value with their bounds before any handler
runs: `None`, `"abc"` or NaN end there in a TypeError that the client only sees as "The upstream
Gradio app has raised an exception". These subclasses check the value first and raise `gr.Error`
naming the field, which Gradio passes to the client (and shows in the browser) as it is. The
browser draws them as the plain components (`is_template`).
"""
from __future__ import annotations

import math

import gradio as gr

from pipelines.request import shown


def check_number(label: str | None, payload) -> None:
    name = label or "This field"
    if payload is None:
        raise gr.Error(f"{name} is empty; enter a number.")
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise gr.Error(f"{name} must be a number, got {shown(payload)}.")
    if not math.isfinite(payload):
        raise gr.Error(f"{name} must be a finite number, got {payload}.")

from gradio.events import Dependency

class Slider(gr.Slider):
    is_template = True  # drawn by the browser as gr.Slider

    def preprocess(self, payload):
        check_number(self.label, payload)
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Number(gr.Number):
    is_template = True  # drawn by the browser as gr.Number

    def preprocess(self, payload):
        if payload is not None:  # an empty box is the handler's to report (e.g. "Seed is empty")
            check_number(self.label, payload)
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component
"""Presentation: the Gradio app (`ui.app`) and the command line (`ui.cli`). Only calls `pipelines`."""

"""The Settings tab: every setting, typed and validated, saved atomically; live where possible."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr

from pipelines.manager import PipelineManager
from settings.schema import SETTING_INFO, AppSettings, SettingsStore, coerce_setting


def component_for(name: str, value):
    info = SETTING_INFO[name]
    label = info.label + (" (applies after restart)" if info.needs_restart else "")
    common = {"label": label, "info": info.help, "value": value, "elem_id": f"setting_{name}"}
    if isinstance(value, bool):
        return gr.Checkbox(**common)
    if isinstance(value, int):
        return gr.Number(precision=0, **common)
    if isinstance(value, float):
        return gr.Number(**common)
    return gr.Textbox(**common)


def apply_live(manager: PipelineManager, settings: AppSettings) -> None:
    """Settings the running manager can take without a restart."""
    config = manager.config
    rescan = (Path(settings.models_dir) != config.models_dir or settings.include_hf_cache != config.include_hf_cache
              or settings.allow_pickle != config.allow_pickle)
    config.models_dir = Path(settings.models_dir)
    manager.face.models_dir = config.models_dir
    config.outputs_dir = Path(settings.outputs_dir)
    config.include_hf_cache = settings.include_hf_cache
    config.allow_pickle = settings.allow_pickle
    config.preview_every = settings.preview_every
    manager.cache.ram_budget_bytes = int(settings.ram_cache_gb * 2**30)
    if rescan:
        manager.refresh()


def build(manager: PipelineManager, settings: AppSettings, store: SettingsStore) -> dict:
    names = list(SETTING_INFO)
    components = [component_for(name, getattr(settings, name)) for name in names]
    save = gr.Button("Save settings", variant="primary", elem_id="settings_save")
    message = gr.Markdown(elem_id="settings_message")

    def on_save(*values):
        candidate = dataclasses.replace(settings)
        problems = []
        for name, value in zip(names, values):
            default = getattr(AppSettings(), name)
            if value is None or (isinstance(value, str) and not value.strip() and not isinstance(default, str)):
                problems.append(f"{SETTING_INFO[name].label}: enter a value.")
                continue
            try:
                setattr(candidate, name, coerce_setting(value, default))
            except ValueError as error:
                problems.append(f"{SETTING_INFO[name].label}: {error}.")
        problems += [f"{SETTING_INFO[name].label} {text}." for name, text in candidate.validate().items()]
        if problems:
            return "⚠ Not saved: " + " ".join(problems)
        try:
            store.save(candidate)
        except OSError as error:
            return f"⚠ Not saved: {store.path} cannot be written ({error.strerror or error})."
        restart = [SETTING_INFO[n].label for n in names if SETTING_INFO[n].needs_restart and getattr(candidate, n) != getattr(settings, n)]
        for name in names:
            setattr(settings, name, getattr(candidate, name))
        apply_live(manager, settings)
        return f"Saved to {store.path}." + (f" Restart to apply: {', '.join(restart)}." if restart else "")

    save.click(on_save, components, message, api_name="save_settings")
    return {"components": dict(zip(names, components))}

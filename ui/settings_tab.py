"""The Settings tab: every setting, typed and validated, saved atomically; live where possible.

Several pages may be open at once. Each page keeps the values its form was filled with (`loaded`);
showing the tab refreshes the fields the user has not edited, and saving applies only the fields that
differ from `loaded` onto the current settings, so a page opened before another page's save never
undoes it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import gradio as gr

from pipelines.caches.memo import POLICIES
from pipelines.fast_paths import COMPILE_MODES
from pipelines.lora.fuse import LORA_FUSE_MODES, FusePolicy
from pipelines.manager import PipelineManager
from pipelines.preview import PREVIEW_CHOICES
from pipelines.vae import VAE_CHOICES
from settings.schema import PATH_FIELDS, SETTING_INFO, AppSettings, SettingsStore, coerce_setting, resolve_path
from ui.last_used import vae_rule_info

# Folders, pickle loading and the device change what the server reads and runs: a browser on another
# machine may change them only when the app asks for a login (--gradio-auth).
# What a remote browser without a login may not change: folders, code-running files, the device, the shared
# cache store, and the input size limit (raising it lets a client make the server decode huge pictures).
PROTECTED = ("models_dir", "outputs_dir", "cache_dir", "allow_pickle", "include_hf_cache", "device", "approx_cache_uri",
             "max_input_megapixels")

# The tab's sections, in order; a setting not named here (a new one) goes under "Other".
SECTIONS: dict[str, tuple[str, ...]] = {
    "Models and memory": ("models_dir", "device", "ram_cache_gb", "vram_reserve_gb", "include_hf_cache", "allow_pickle",
                          "torch_compile", "lora_fuse", "channels_last"),
    "Generation": ("outputs_dir", "preview_every", "live_preview", "max_input_megapixels"),
    "VAE": ("vae_dtype", "vae_tiling", "vae_slicing", "vae_honour_force_upcast", "vae_sticky_fallback"),
    "Caches": ("cache_dir", "prompt_memo_policy", "prompt_memo_entries", "latent_cache_entries", "approx_cache_thresholds",
               "approx_cache_max_mb", "approx_cache_ttl_hours", "approx_cache_uri"),
    "Face": ("face_memo_entries", "onnx_gpu_mem_limit_mb"),
    "Experiments": ("experiment_confirm_cells",),
    "Server": ("max_queue_size",),
}
# Settings with a fixed list of values: a dropdown, from the engine's own lists (device: see device_choices).
SETTING_CHOICES: dict[str, tuple[str, ...]] = {
    "vae_dtype": VAE_CHOICES,
    "torch_compile": COMPILE_MODES,
    "lora_fuse": LORA_FUSE_MODES,
    "prompt_memo_policy": POLICIES,
    "live_preview": PREVIEW_CHOICES,
}
ERROR_CLASS = "setting-error"
OPEN_SECTIONS = 1  # sections open when the page is shown; the others open on a click, or when they hold a refused field


def device_choices() -> list[str]:
    """auto, cpu and the accelerators this machine has; other values (cuda:3) may still be typed."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def sections(names) -> dict[str, list[str]]:
    """SECTIONS restricted to `names`, plus "Other" for any name SECTIONS does not place."""
    placed = {name for members in SECTIONS.values() for name in members}
    grouped = {title: [name for name in members if name in names] for title, members in SECTIONS.items()}
    grouped["Other"] = [name for name in names if name not in placed]
    return {title: members for title, members in grouped.items() if members}


def help_for(name: str, override: str | None = None) -> str:
    info = SETTING_INFO[name]
    return info.help + (f" This run: set by {override}; written to the file only if you change it here." if override else "")


def component_for(name: str, value, override: str | None = None):
    info = SETTING_INFO[name]
    label = info.label + (" (applies after restart)" if info.needs_restart else "")
    common = {"label": label, "info": help_for(name, override), "value": value, "elem_id": f"setting_{name}", "elem_classes": ["setting"]}
    if name == "device":  # typed values (cuda:3) stay possible: the setting's own check judges them
        return gr.Dropdown(device_choices(), allow_custom_value=True, **common)
    if name in SETTING_CHOICES:
        return gr.Dropdown(list(SETTING_CHOICES[name]), **common)
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
    config.outputs_dir = Path(settings.outputs_dir)
    config.include_hf_cache = settings.include_hf_cache
    config.allow_pickle = settings.allow_pickle
    config.preview_every = settings.preview_every
    config.live_preview = settings.live_preview
    config.max_input_pixels = int(settings.max_input_megapixels * 1e6)
    manager.cache.ram_budget_bytes = int(settings.ram_cache_gb * 2**30)
    if settings.lora_fuse != config.lora_fuse:
        config.lora_fuse = settings.lora_fuse
        manager.lora_fuse = FusePolicy(settings.lora_fuse)
    if rescan:
        manager.refresh()


def is_trusted(request) -> bool:
    """A request from this machine (loopback), or from a user who logged in. No request: a direct call."""
    if request is None or getattr(request, "username", None):
        return True
    host = getattr(getattr(request, "client", None), "host", None) or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # unknown: treat as remote


def find_changes(names: list[str], values, loaded: dict) -> tuple[dict, dict[str, str]]:
    """The fields whose form value differs from the value the form was loaded with, typed; and, by field, what is wrong."""
    defaults = AppSettings()
    changes, problems = {}, {}
    for name, value in zip(names, values):
        if value == loaded.get(name):
            continue
        default = getattr(defaults, name)
        if value is None or (isinstance(value, str) and not value.strip() and not isinstance(default, str)):
            problems[name] = "enter a value"
            continue
        try:
            value = coerce_setting(value, default)
        except ValueError as error:
            problems[name] = str(error)
            continue
        if name in PATH_FIELDS:
            value = resolve_path(value.strip())
        if value != loaded.get(name):
            changes[name] = value
    return changes, problems


def read_changes(names: list[str], values, loaded: dict) -> tuple[dict, list[str]]:
    """As `find_changes`, with the problems as sentences naming their field."""
    changes, problems = find_changes(names, values, loaded)
    return changes, [f"{SETTING_INFO[name].label}: {text}." for name, text in problems.items()]


def labels(names) -> str:
    return ", ".join(SETTING_INFO[name].label for name in names)


def build(manager: PipelineManager, settings: AppSettings, store: SettingsStore, tab: gr.Tab | None = None,
          generate_vae: gr.Radio | None = None) -> dict:
    """Lay out the tab; `tab` (this tab) refreshes the form when shown; `generate_vae` follows the VAE default."""
    names = list(SETTING_INFO)  # the components' order, and the save_settings API's parameters
    made = {}
    with gr.Column(elem_id="settings_form"):
        with gr.Row(elem_id="settings_bar"):  # sticky (ui/style.py): Save stays in view while the form scrolls
            save = gr.Button("Save settings", variant="primary", elem_id="settings_save", scale=0, min_width=160)
            message = gr.Markdown(elem_id="settings_message")
        grouped = sections(names)
        accordions = []
        for number, (title, members) in enumerate(grouped.items()):
            # Only the first section starts open: all open, the page is several screens long.
            with gr.Accordion(title, open=number < OPEN_SECTIONS, elem_id="settings_section_" + title.split()[0].lower()) as accordion:
                accordions.append(accordion)
                half = (len(members) + 1) // 2
                with gr.Row():
                    for column in (members[:half], members[half:]):
                        with gr.Column():
                            for name in column:
                                made[name] = component_for(name, getattr(settings, name), store.overrides.get(name))
    components = [made[name] for name in names]

    def marks(problems: dict[str, str]) -> list:
        """Each field's frame and help: red with its problem first when refused, plain otherwise."""
        return [gr.update(elem_classes=["setting", ERROR_CLASS], info=f"⚠ {problems[name]}. {help_for(name, store.overrides.get(name))}")
                if name in problems else gr.update(elem_classes=["setting"], info=help_for(name, store.overrides.get(name)))
                for name in names]

    def current() -> dict:
        return {name: getattr(settings, name) for name in names}

    # What this page's form was filled with; per browser session.
    loaded = gr.State(current())

    def on_show(snapshot: dict, *values):
        """Fields the user has not edited take the current settings (another page may have saved)."""
        fresh, kept = current(), dict(snapshot)
        updates = []
        for name, value in zip(names, values):
            if value == snapshot.get(name):
                updates.append(gr.update(value=fresh[name]))
                kept[name] = fresh[name]
            else:
                updates.append(gr.update())
        return *updates, kept

    # Named parameters before *values: Gradio injects gr.Request only into those.
    def on_save(request: gr.Request, snapshot: dict, *values):
        unchanged = marks({})
        changes, problems = find_changes(names, values, snapshot)
        refused = [] if is_trusted(request) else [name for name in changes if name in PROTECTED]
        for name in refused:
            del changes[name]
        refusal = (f" ⚠ Not saved from a browser on another machine without a login: {labels(refused)}. Change them on this "
                   "machine, or start the app with --gradio-auth." if refused else "")
        problems |= {name: text for name, text in dataclasses.replace(settings, **changes).validate().items() if name not in problems}
        if problems:
            sentences = " ".join(f"{SETTING_INFO[name].label}: {text}." for name, text in problems.items())
            return "⚠ Not saved (the fields marked in red): " + sentences + refusal, *marks(problems), snapshot, gr.update()
        if not changes:
            return ("Nothing changed; nothing saved." if not refused else refusal.strip()), *unchanged, snapshot, gr.update()
        elsewhere = [name for name in names if name not in changes and getattr(settings, name) != snapshot.get(name)]
        try:
            store.update(settings, changes)
        except ValueError as error:
            return f"⚠ Not saved: {error}.", *unchanged, snapshot, gr.update()
        except OSError as error:
            return f"⚠ Not saved: {store.path} cannot be written ({error.strerror or error}).", *unchanged, snapshot, gr.update()
        apply_live(manager, settings)
        restart = [name for name in changes if SETTING_INFO[name].needs_restart]
        text = f"Saved {labels(changes)} to {store.path}."
        if restart:
            text += f" Restart to apply: {labels(restart)}."
        if elsewhere:
            text += f" Kept what was saved elsewhere since this page was shown: {labels(elsewhere)} (the form now shows it)."
        fresh = current()
        vae = (gr.update(value=settings.vae_dtype, info=vae_rule_info(settings.vae_dtype, manager.vae_auto_brief()))
               if "vae_dtype" in changes else gr.update())
        return text + refusal, *[gr.update(value=fresh[name], elem_classes=["setting"], info=help_for(name, store.overrides.get(name)))
                                 for name in names], fresh, vae

    def on_save_opening_refused(request: gr.Request, snapshot: dict, *values):
        """on_save, and the sections holding a refused field open, so the field marked in red is in view."""
        outputs = on_save(request, snapshot, *values)
        refused = {name for name, update in zip(names, outputs[1:]) if ERROR_CLASS in (update.get("elem_classes") or ())}
        return *outputs, *[gr.update(open=True) if refused & set(members) else gr.update() for members in grouped.values()]

    vae_output = [generate_vae] if generate_vae is not None else [gr.State()]
    save.click(on_save_opening_refused, [loaded, *components], [message, *components, loaded, *vae_output, *accordions],
               api_name="save_settings")
    if tab is not None:
        tab.select(on_show, [loaded, *components], [*components, loaded], api_visibility="private", queue=False)
    return {"components": dict(zip(names, components)), "loaded": loaded, "on_save": on_save}

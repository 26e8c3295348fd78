"""The Settings tab's rules without a browser: which fields a form changed, and who may change folders."""
from __future__ import annotations

from types import SimpleNamespace

from settings.schema import PROJECT_ROOT, SETTING_INFO
from ui.settings_tab import PROTECTED, is_trusted, read_changes


def fake_request(host: str, username: str | None = None):
    return SimpleNamespace(client=SimpleNamespace(host=host), username=username)


def test_loopback_or_logged_in_requests_are_trusted():
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"):
        assert is_trusted(fake_request(host)), host
    for host in ("192.168.1.20", "10.0.0.3", "2001:db8::1", "example.org", ""):
        assert not is_trusted(fake_request(host)), host
        assert is_trusted(fake_request(host, username="alice")), host
    assert is_trusted(None), "a direct call (no HTTP request) is the app itself"
    assert set(PROTECTED) <= set(SETTING_INFO)


def test_only_fields_that_differ_from_the_loaded_form_are_changes():
    names = ["preview_every", "ram_cache_gb", "models_dir", "allow_pickle"]
    loaded = {"preview_every": 5, "ram_cache_gb": 16.0, "models_dir": "/m", "allow_pickle": False}
    changes, problems = read_changes(names, [5, 16.0, "/m", False], loaded)
    assert changes == {} and problems == []
    changes, problems = read_changes(names, [7, 16, " my-models ", True], loaded)
    assert changes == {"preview_every": 7, "models_dir": str(PROJECT_ROOT / "my-models"), "allow_pickle": True}
    assert problems == []
    changes, problems = read_changes(names, [None, "x", "/m", False], loaded)
    assert changes == {} and len(problems) == 2 and "enter a value" in problems[0]


def test_a_remote_browser_without_login_saves_only_unprotected_fields(make_manager, tmp_path):
    import gradio as gr

    from settings.schema import SettingsStore
    from ui import settings_tab

    manager = make_manager(include_hf_cache=False)
    store = SettingsStore(tmp_path / "s.json")
    settings = store.load()
    settings.models_dir, settings.include_hf_cache = str(manager.config.models_dir), False
    with gr.Blocks():
        tab = settings_tab.build(manager, settings, store)
    names = list(SETTING_INFO)
    loaded = {name: getattr(settings, name) for name in names}
    form = dict(loaded, preview_every=3, allow_pickle=True, outputs_dir="/remote/elsewhere")

    message, *rest = tab["on_save"](fake_request("192.168.1.20"), loaded, *[form[name] for name in names])
    assert "Saved Live preview every N steps" in message
    assert "Not saved from a browser on another machine without a login: Outputs folder, Allow pickle checkpoints" in message
    assert settings.preview_every == 3 and settings.allow_pickle is False and settings.outputs_dir != "/remote/elsewhere"
    assert manager.config.allow_pickle is False

    fresh = {name: getattr(settings, name) for name in names}
    message, *rest = tab["on_save"](fake_request("192.168.1.20", username="alice"), fresh,
                                    *[dict(fresh, allow_pickle=True)[name] for name in names])
    assert "Saved Allow pickle checkpoints" in message and settings.allow_pickle is True and manager.config.allow_pickle is True


def test_every_setting_has_one_section_and_every_choice_is_valid():
    import dataclasses

    from settings.schema import AppSettings
    from ui.settings_tab import SECTIONS, SETTING_CHOICES, device_choices, sections

    grouped = sections(list(SETTING_INFO))
    placed = [name for members in grouped.values() for name in members]
    assert sorted(placed) == sorted(SETTING_INFO), "each setting shows exactly once"
    assert "Other" not in grouped, f"place these in a section: {grouped.get('Other')}"
    assert {name for members in SECTIONS.values() for name in members} <= set(SETTING_INFO), "a section names an unknown setting"
    assert sections(["preview_every", "brand_new"])["Other"] == ["brand_new"], "a new setting still shows"

    for name, choices in {**SETTING_CHOICES, "device": tuple(device_choices())}.items():
        assert getattr(AppSettings(), name) in choices, name
        for choice in choices:
            assert name not in dataclasses.replace(AppSettings(), **{name: choice}).validate(), (name, choice)
        assert name in dataclasses.replace(AppSettings(), **{name: "no-such-choice"}).validate(), name


def test_problems_are_kept_per_field():
    from ui.settings_tab import find_changes

    loaded = {"preview_every": 5, "ram_cache_gb": 16.0}
    changes, problems = find_changes(["preview_every", "ram_cache_gb"], [None, 2.5], loaded)
    assert changes == {"ram_cache_gb": 2.5} and problems == {"preview_every": "enter a value"}


def test_the_input_size_limit_applies_at_once_and_is_protected(make_manager):
    from settings.schema import AppSettings
    from ui.settings_tab import PROTECTED, apply_live

    manager = make_manager()
    settings = AppSettings(models_dir=str(manager.config.models_dir), outputs_dir=str(manager.config.outputs_dir),
                           include_hf_cache=False, max_input_megapixels=2.5)
    apply_live(manager, settings)
    assert manager.config.max_input_pixels == 2_500_000
    assert "max_input_megapixels" in PROTECTED  # a remote browser cannot make the server decode bigger pictures

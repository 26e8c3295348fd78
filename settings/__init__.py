"""Typed, persisted configuration of Likeness."""
from settings.schema import AppSettings, SettingsStore, load_settings

__all__ = ["AppSettings", "SettingsStore", "load_settings"]

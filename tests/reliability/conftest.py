"""The browser and live-app fixtures of the UI tests, for the reliability suite too."""
from tests.ui.conftest import browser, live_app, page  # noqa: F401

"""The tiny SD 1.5 and SDXL pipelines the prompt tests encode with (built once per session)."""
import pytest


@pytest.fixture(scope="module")
def sd15(tiny_pipes):
    return tiny_pipes["sd15"]


@pytest.fixture(scope="module")
def sdxl(tiny_pipes):
    return tiny_pipes["sdxl"]

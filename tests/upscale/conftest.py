import pytest

from pipelines.upscale import forget_loaded


@pytest.fixture(autouse=True)
def _empty_memo():
    """Each test reads its ESRGAN files anew: the loaded-net memo keys on the path, and tmp paths repeat."""
    forget_loaded()
    yield
    forget_loaded()

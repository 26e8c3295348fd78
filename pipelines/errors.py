"""Errors the user can act on. Their message is shown as is in the UI, the CLI and the API."""


class LikenessError(Exception):
    """Base class: `str(error)` is a complete sentence for the user, no traceback needed."""


class InvalidRequest(LikenessError):
    pass


class ModelNotFound(LikenessError):
    pass


class ModelLoadError(LikenessError):
    pass


class GenerationCancelled(LikenessError):
    def __init__(self, message: str = "Generation stopped by the user.", partial=None):
        super().__init__(message)
        self.partial = partial  # images finished before the stop, if any


class OutputError(LikenessError):
    pass

"""Silence library chatter (progress bars, deprecation notes) so our own readout stays readable."""
import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by accident
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # DPM++ SDE's Brownian tree (torchsde) warns when a float32 step time lands a rounding error outside its interval
    # (A1111's console shows it on such runs); the tree clamps the time and the noise is the same.
    warnings.filterwarnings("ignore", message=r"Should have (ta>=t0|tb<=t1) but got", module=r"torchsde")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)

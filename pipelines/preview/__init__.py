"""Live previews during the denoise: A1111's "Approx cheap" map or the tiny autoencoders.

"cheap" is a fixed linear map from latent channels to RGB (`pipelines.generate.latent_preview`):
free, no files, 1/8 of the image size. "TAESD" decodes with madebyollin's tiny autoencoder for the
model's family (TAESD for SD 1.5, TAESDXL for SDXL, TAEF1 for FLUX.1) when its file is in
`models/VAE-approx/` (`tiny_vae.py`), at the image's full size; without a usable file the preview
stays "cheap" (`live.py`). This module stays import-light: the settings schema reads the choices.
"""

PREVIEW_CHOICES = ("cheap", "TAESD")

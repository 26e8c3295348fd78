"""Pixel work for img2img, inpainting and the face detailer: pure PIL/numpy/torch, no model calls.

`image_ops` resizes (A1111's three resize modes) and pastes back, `masks` turns what the user painted
into the masks the sampler and the paste-back need, `regions` finds where to cut ("only masked", faces).
The steps below are AUTOMATIC1111's img2img, in its order:

    init = flatten_image(init)                       # transparency onto white, as A1111
    painted = mask_from_layers(editor_layers)        # or an uploaded mask image
    notes = check_mask(painted, init.size)           # InvalidRequest when nothing is painted
    mask = prepare_mask(painted, *init.size, blur_x=4, blur_y=4, invert=False)

    # Inpaint area "Whole picture": everything at the generation size W x H.
    image = resize_image(init, mode, W, H)
    mask_wh = resize_image(mask, mode, W, H)
    start = fill_for_content(image, mask_wh, masked_content)          # then encode
    nmask = latent_mask(mask_wh, H // 8, W // 8)
    ...sample with blend_latents(denoised, init_latent, nmask), decode -> generated
    result = paste_back(image, generated, None, overlay_mask(mask_wh))

    # Inpaint area "Only masked": a crop around the mask, generated at W x H, pasted into the full image.
    region = expand_region(crop_region(mask, padding), W, H, *init.size)
    start = fill_for_content(crop_to_target(init, region, W, H), crop_to_target(mask, region, W, H), masked_content)
    nmask = latent_mask(crop_to_target(mask, region, W, H), H // 8, W // 8)
    ...
    result = paste_back(init, generated, region, mask)

    # Face detailer: a padded box per face, generated at W x H, pasted with a feathered edge.
    region = face_crop_region(face.bbox, *image.size, padding_ratio, (W, H))
    result = paste_feathered(image, generated, region, feather_px)
"""
from pipelines.refine.image_ops import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    RESIZE_AND_FILL,
    RESIZE_MODES,
    Region,
    crop_to_target,
    feathered_mask,
    flatten_image,
    paste_back,
    paste_feathered,
    resize_image,
)
from pipelines.refine.masks import (
    EMPTY_MASK_MESSAGE,
    MASKED_CONTENT,
    WHOLE_IMAGE_NOTE,
    blend_latents,
    blur_mask,
    check_mask,
    fill_for_content,
    fill_masked,
    latent_mask,
    mask_from_layers,
    masked_latent,
    overlay_mask,
    painted_mask,
    prepare_mask,
)
from pipelines.refine.regions import crop_region, expand_region, face_crop_region, region_inside

__all__ = [
    "CROP_AND_RESIZE", "EMPTY_MASK_MESSAGE", "JUST_RESIZE", "MASKED_CONTENT", "RESIZE_AND_FILL", "RESIZE_MODES",
    "WHOLE_IMAGE_NOTE", "Region", "blend_latents", "blur_mask", "check_mask", "crop_region", "crop_to_target",
    "expand_region", "face_crop_region", "feathered_mask", "fill_for_content", "flatten_image", "fill_masked", "latent_mask",
    "mask_from_layers", "masked_latent", "overlay_mask", "painted_mask", "paste_back", "paste_feathered",
    "prepare_mask", "region_inside", "resize_image",
]

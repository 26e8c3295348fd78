"""AUTOMATIC1111's API bodies and responses (`modules/api/models.py`), field for field.

A1111 builds its txt2img model from `StableDiffusionProcessingTxt2Img.__init__`: every field is
optional, with the dataclass's default. The same names and defaults here, so existing clients send
what they always send. Fields Likeness does not use are still accepted (mapping.py warns about the
ones set to something that would change the image); unknown fields are kept as extras and warned about.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        """A1111 declares every field Optional: `"steps": null` is the default, not an error."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if not (value is None and key in cls.model_fields)}
        return data

    def extras(self) -> list[str]:
        return sorted(self.model_extra or {})

    def known(self) -> dict:
        """The body as A1111 echoes it in `parameters`: every declared field, defaults included."""
        return self.model_dump(exclude=set(self.model_extra or {}))


class LikenessExtras(BaseModel):
    """Likeness's own fields (the face detailer), accepted at the top level of txt2img and img2img bodies
    as A1111 clients add extra keys; echoed in `parameters` only when sent."""

    face_detail: bool = Field(default=False, description="Likeness: re-draw each detected face at full resolution "
                              "(with a face reference in alwayson_scripts.pulid, the same identity).")
    face_detail_strength: Optional[float] = Field(default=None, description="Likeness: the detailer's denoising strength, 0-1 (default 0.4).")
    face_detail_steps: int = Field(default=0, description="Likeness: the detailer's steps (0 = the same as steps).")
    face_detail_prompt: str = Field(default="", description="Likeness: the detailer's prompt (empty = the main prompt).")
    face_detail_faces: Union[str, list[int]] = Field(default="", description='Likeness: which faces, 1 = the largest: "1,3" or [1, 3]; empty = all.')


LIKENESS_FIELDS = tuple(LikenessExtras.model_fields)


class _Processing(_Body, LikenessExtras):
    """The fields txt2img and img2img share (`StableDiffusionProcessing`, A1111 1.10)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: Optional[list[str]] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    denoising_strength: Optional[float] = None
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False
    firstpass_image: Optional[str] = None
    comments: Optional[dict] = None
    force_task_id: Optional[str] = None
    sampler_index: str = "Euler"
    script_name: Optional[str] = None
    script_args: list = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: Optional[str] = None

    def known(self) -> dict:
        """The body as A1111 echoes it in `parameters`: every A1111 field, defaults included; Likeness's
        own fields only when the client sent them."""
        values = super().known()
        for name in LIKENESS_FIELDS:
            if name not in self.model_fields_set:
                values.pop(name, None)
        return values


class Txt2ImgRequest(_Processing):
    """`StableDiffusionProcessingTxt2Img` as the API takes it (A1111 1.10)."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(_Processing):
    """`StableDiffusionProcessingImg2Img` as the API takes it (A1111 1.10), with A1111's API defaults
    (note `inpaint_full_res` true and padding 0, unlike the web UI's)."""

    init_images: Optional[list] = None
    resize_mode: int = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: Optional[int] = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    include_init_images: bool = False
    denoising_strength: float = 0.75


class TextToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(default=None, description="The generated images, base64 PNG with the infotext inside.")
    parameters: dict
    info: str


class ImageToImageResponse(TextToImageResponse):
    pass


class _ExtrasBase(_Body):
    """A1111's `ExtrasBaseRequest` (/extra-single-image, /extra-batch-images): the upscale fields."""

    resize_mode: int = Field(default=0, description="0: upscale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h.")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, description="Not in Likeness (no GFPGAN); any other value than 0 is noted in html_info.")
    codeformer_visibility: float = Field(default=0, description="Not in Likeness (no CodeFormer); noted in html_info.")
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImageRequest(_ExtrasBase):
    image: str = Field(default="", description="The picture, base64 (a data: URL too).")


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchImagesRequest(_ExtrasBase):
    imageList: list[FileData] = Field(default_factory=list)


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: Optional[str] = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(BaseModel):
    image: str = Field(description="The base64 encoded PNG image")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class ProgressResponse(BaseModel):
    progress: float = Field(description="The progress with a range of 0 to 1")
    eta_relative: float
    state: dict
    current_image: Optional[str] = None
    textinfo: Optional[str] = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: Optional[str]
    negative_prompt: Optional[str]


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]]
    default_rho: Optional[float]
    need_inner_model: Optional[bool]


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: Optional[str]
    model_path: Optional[str]
    model_url: Optional[str]
    scale: Optional[float]


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: Optional[str]
    sha256: Optional[str]
    filename: str
    config: Optional[str]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict


class EmbeddingsResponse(BaseModel):
    loaded: dict
    skipped: dict


class MemoryResponse(BaseModel):
    ram: dict
    cuda: dict

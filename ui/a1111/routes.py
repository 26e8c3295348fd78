"""AUTOMATIC1111's web API, `/sdapi/v1/...`, on the same server and port as the UI (`--api`).

The routes are handed to Gradio's FastAPI app when it is created (`launch(app_kwargs=...)`), so they
exist before the server starts. Every route goes through `A1111Route`, which (1) checks HTTP Basic
auth when `--api-auth` is set, before reading anything, (2) reads the body with a size limit
(Content-Length and the stream), and (3) answers every error in A1111's shape,
`{"error", "detail", "body", "errors"}`: 422 for bad input and engine refusals, 500 for the rest
(the traceback goes to the log only).

Generations run in a worker thread and take their turn on the manager's JobBoard (ui/jobs.py),
shared with the browser tabs: one GPU job at a time, and `progress`/`interrupt`/`skip` act on
whichever job runs.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import torch
from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic

from pipelines.errors import GenerationCancelled, InvalidRequest, LikenessError
from pipelines.extras import plan_upscale
from pipelines.generate import CancelToken
from pipelines.images import MAX_TEXT_CHARS, open_image, read_embedded_text
from pipelines.infotext import parse_infotext
from pipelines.jobs import tagged
from pipelines.request import MAX_CLIP_SKIP, MAX_TOKEN_MERGING
from pipelines.upscale import LATENT, list_upscalers
from pipelines.vae import VAE_CHOICES
from pipelines.vae_files import vae_files
from ui.a1111 import mapping, models
from ui.a1111.script_info import script_info, script_names
from ui.jobs import Job, board_for

log = logging.getLogger("likeness")
PREFIX = "/sdapi/v1"
MAX_BODY_BYTES = 50 * 2**20  # a few 4 MB photos in base64 fit many times over
NOT_SUPPORTED = "is not a Likeness option and was ignored"


class BodyTooLarge(Exception):
    pass


def error_response(status: int, error: str, detail: str, errors: str | None = None, headers: dict | None = None) -> JSONResponse:
    """A1111's error body (modules/api/api.py handle_exception); `body` is never echoed back."""
    return JSONResponse(status_code=status, content={"error": error, "detail": detail, "body": "", "errors": errors or detail},
                        headers=headers)


def validation_detail(error: RequestValidationError) -> str:
    """Pydantic's errors as one line per field, without the input values (a body may hold megabytes of base64)."""
    parts = []
    for item in error.errors():
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "JSON decode error")
            parts.append(f"The body is not valid JSON ({reason} at character {item.get('loc', ('', '?'))[-1]}).")
            continue
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request body is not valid."


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"The request body is {int(declared):,} bytes; the API takes at most {limit:,}.")
        except ValueError:
            raise BodyTooLarge("The Content-Length header is not a number.") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is over {limit:,} bytes, the most the API takes.")
        chunks.append(chunk)
    return b"".join(chunks)


def api_user(header: str | None, credentials: tuple[tuple[str, str], ...]) -> str:
    """The authenticated API user's name ("" without --api-auth: the single-user default)."""
    if not credentials or not basic_auth_ok(header, credentials):
        return ""
    return base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")[0]


def basic_auth_ok(header: str | None, credentials: tuple[tuple[str, str], ...]) -> bool:
    """HTTP Basic against every user:password pair, in constant time for a given header."""
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        user, colon, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return False
    if not colon:
        return False
    ok = False
    for known_user, known_password in credentials:
        same_user = secrets.compare_digest(user.encode(), known_user.encode())
        same_password = secrets.compare_digest(password.encode(), known_password.encode())
        ok |= same_user and same_password
    return ok


def route_class(credentials: tuple[tuple[str, str], ...], max_body_bytes: int) -> type[APIRoute]:
    class A1111Route(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                if credentials and not basic_auth_ok(request.headers.get("authorization"), credentials):
                    return error_response(401, "HTTPException", "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})
                try:
                    if request.method in ("POST", "PUT", "PATCH"):
                        request._body = await read_limited(request, max_body_bytes)  # FastAPI's handler reads the cached body
                    return await handler(request)
                except BodyTooLarge as error:
                    return error_response(422, "BodyTooLarge", str(error))
                except RequestValidationError as error:
                    detail = validation_detail(error)
                    return error_response(422, "RequestValidationError", detail)
                except HTTPException as error:
                    return error_response(error.status_code, "HTTPException", str(error.detail), headers=getattr(error, "headers", None))
                except LikenessError as error:
                    return error_response(422, type(error).__name__, str(error))
                except Exception as error:  # noqa: BLE001 - every failure is an answer, never a dropped connection
                    log.exception("API error: %s %s", request.method, request.url.path)
                    return error_response(500, type(error).__name__, f"Internal error ({type(error).__name__}); the server keeps running. See its log.")

            return guarded

    return A1111Route


@dataclass
class ApiContext:
    manager: Any
    settings: Any
    options: Any  # ui.server.ServerOptions
    defaults: mapping.ApiDefaults
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def board(self):
        return board_for(self.manager)

    @property
    def hashes_file(self) -> Path:
        return Path(self.manager.config.cache_dir) / "hashes.json"


def build_router(manager, settings, options, max_body_bytes: int = MAX_BODY_BYTES) -> APIRouter:
    """All `/sdapi/v1` routes over the one manager."""
    context = ApiContext(manager, settings, options, mapping.ApiDefaults(manager.default_model(), getattr(settings, "vae_dtype", "auto")),
                         max_body_bytes)
    credentials = tuple(getattr(options, "api_auth", ()) or ())
    dependencies = [Depends(HTTPBasic(auto_error=False))] if credentials else []  # shows the lock in /docs; A1111Route checks
    router = APIRouter(prefix=PREFIX, route_class=route_class(credentials, max_body_bytes), dependencies=dependencies, tags=["A1111 API"])
    board = context.board

    async def generate(body: models.Txt2ImgRequest | models.Img2ImgRequest, request: Request):
        prepared = await anyio.to_thread.run_sync(mapping.prepare, body, manager, context.defaults)  # images decoded and checked here
        # Each API user's approximate-cache entries are its own (no login: the single-user default).
        prepared.request = replace(prepared.request, cache_namespace=api_user(request.headers.get("authorization"), credentials))
        token = CancelToken()
        watcher = asyncio.ensure_future(cancel_on_disconnect(request, token))  # a client that went away does not keep the GPU
        try:
            return await anyio.to_thread.run_sync(run_generation, context, body, prepared, token)
        finally:
            watcher.cancel()

    @router.post("/txt2img", response_model=models.TextToImageResponse)
    async def txt2img(body: models.Txt2ImgRequest, request: Request):
        return await generate(body, request)

    @router.post("/img2img", response_model=models.ImageToImageResponse)
    async def img2img(body: models.Img2ImgRequest, request: Request):
        return await generate(body, request)

    @router.get("/progress", response_model=models.ProgressResponse)
    async def progress(skip_current_image: bool = False):
        figures = board.progress()
        preview = figures["preview"]
        image = None if preview is None or skip_current_image else await anyio.to_thread.run_sync(mapping.image_b64, preview)
        return {"progress": figures["progress"], "eta_relative": figures["eta_relative"], "state": figures["state"],
                "current_image": image, "textinfo": figures["textinfo"]}

    @router.post("/interrupt")
    async def interrupt():
        board.interrupt()
        return {}

    @router.post("/skip")
    async def skip():
        board.skip()
        return None

    @router.get("/options")
    async def get_options():
        return await anyio.to_thread.run_sync(current_options, context)

    @router.post("/options")
    async def set_options(req: dict[str, Any] = Body(...)):
        return await anyio.to_thread.run_sync(apply_options, context, req)

    @router.get("/cmd-flags")
    async def cmd_flags():
        return command_flags(context)

    @router.get("/sd-models", response_model=list[models.SDModelItem])
    async def sd_models():
        return await anyio.to_thread.run_sync(lambda: [mapping.model_item(e, context.hashes_file) for e in manager.models() if e.usable])

    @router.post("/refresh-checkpoints")
    async def refresh_checkpoints():
        await anyio.to_thread.run_sync(manager.refresh)
        return None

    @router.post("/unload-checkpoint")
    async def unload_checkpoint():  # A1111: the model to CPU RAM, to free the GPU for something else
        await anyio.to_thread.run_sync(manager.offload_models)
        return {}

    @router.post("/reload-checkpoint")
    async def reload_checkpoint():  # A1111: the current checkpoint back on the GPU (loaded if it is not)
        await anyio.to_thread.run_sync(manager.load, context.defaults.model)
        return {}

    @router.post("/refresh-vae")
    async def refresh_vae():  # models/VAE is read each time it is listed or used: nothing is held to refresh
        return None

    @router.post("/refresh-embeddings")
    async def refresh_embeddings():  # the embeddings folder is read at each use too
        return None

    @router.get("/sd-vae")
    async def sd_vae():  # A1111 lists the files of models/VAE ("Automatic" and "None" are options, not files)
        files = await anyio.to_thread.run_sync(vae_files, Path(manager.config.models_dir), manager.config.allow_pickle)
        return [{"model_name": name, "filename": str(path)} for name, path in files.items()]

    @router.get("/samplers", response_model=list[models.SamplerItem])
    async def samplers():
        return mapping.sampler_items()

    @router.get("/schedulers", response_model=list[models.SchedulerItem])
    async def schedulers():
        return mapping.scheduler_items()

    @router.get("/upscalers", response_model=list[models.UpscalerItem])
    async def upscalers():
        return await anyio.to_thread.run_sync(upscaler_items, manager)

    @router.get("/latent-upscale-modes")
    async def latent_upscale_modes():
        return [{"name": LATENT}]

    @router.get("/loras", response_model=list[models.LoraItem])
    async def loras():
        # A1111 lists every file of models/Lora; its `metadata` is the file's own, which Likeness does not read.
        return [{"name": e.name, "alias": e.name, "path": str(e.path), "metadata": {}} for e in manager.loras()]

    @router.post("/refresh-loras")
    async def refresh_loras():
        await anyio.to_thread.run_sync(manager.refresh)
        return None

    @router.get("/embeddings", response_model=models.EmbeddingsResponse)
    async def embeddings():
        return await anyio.to_thread.run_sync(manager.embeddings.listing)

    async def nothing():
        return []

    # Lists A1111 clients read at start-up; Likeness has none of these (yet).
    @router.get("/prompt-styles", response_model=list[models.PromptStyleItem])
    async def prompt_styles():
        styles = await anyio.to_thread.run_sync(manager.styles.styles)
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    for route in ("hypernetworks", "face-restorers", "realesrgan-models", "extensions"):
        router.add_api_route(f"/{route}", nothing, methods=["GET"], name=route)

    @router.get("/scripts")
    async def scripts():
        return script_names()

    @router.get("/script-info")
    async def scripts_info():
        return script_info()

    @router.post("/png-info", response_model=models.PNGInfoResponse)
    async def png_info(req: models.PNGInfoRequest):
        return await anyio.to_thread.run_sync(read_png_info, req.image)

    @router.post("/extra-single-image", response_model=models.ExtrasSingleImageResponse)
    async def extra_single_image(body: models.ExtrasSingleImageRequest, request: Request):
        return await run_extras(context, body, [body.image], request)

    @router.post("/extra-batch-images", response_model=models.ExtrasBatchImagesResponse)
    async def extra_batch_images(body: models.ExtrasBatchImagesRequest, request: Request):
        return await run_extras(context, body, [item.data for item in body.imageList], request)

    @router.get("/memory", response_model=models.MemoryResponse)
    async def memory():
        return await anyio.to_thread.run_sync(memory_figures, manager)

    return router


def api_app_kwargs(manager, settings, options) -> dict:
    """What `demo.launch(app_kwargs=...)` needs to serve the API: the routes, and FastAPI's /docs."""
    return {"routes": list(build_router(manager, settings, options).routes), "docs_url": "/docs"}


# -- txt2img and img2img ----------------------------------------------------------------------------

def upscaler_items(manager) -> list[dict]:
    """A1111's /upscalers: "None" first (a plain resize), then Lanczos, Nearest and each usable ESRGAN file.
    "Latent" is a latent upscale mode (/latent-upscale-modes), as in A1111."""
    items = [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}]
    for choice in list_upscalers(Path(manager.config.models_dir), manager.config.allow_pickle):
        if choice.kind == "latent" or not choice.usable:
            continue
        path = str(choice.path) if choice.path else None
        items.append({"name": choice.name, "model_name": "ESRGAN" if choice.kind == "esrgan" else None, "model_path": path,
                      "model_url": None, "scale": float(choice.scale) if choice.scale else 4.0})
    return items


async def cancel_on_disconnect(request: Request, token: CancelToken, poll_s: float = 0.5) -> None:
    while not await request.is_disconnected():
        await anyio.sleep(poll_s)
    log.info("API client went away: stopping its txt2img job.")
    token.cancel()


def run_generation(context: ApiContext, body: models.Txt2ImgRequest | models.Img2ImgRequest, prepared: mapping.Prepared,
                   token: CancelToken) -> dict:
    """Wait for the GPU, generate, answer A1111's response; the photos' temp folder is always removed."""
    manager = context.manager
    img2img = isinstance(body, models.Img2ImgRequest)
    job = Job.for_request("api", "scripts_img2img" if img2img else "scripts_txt2img", prepared.request, token)
    folder = None
    result, images, notes = None, [], []
    try:
        with tagged(source="api", kind=job.kind.removeprefix("scripts_")), context.board.turn(job):
            face = prepared.face
            if face is not None:
                folder, paths = write_photos(Path(manager.config.cache_dir), prepared.photos)
                face = replace(face, photos=tuple(paths))
            try:
                # "Prompts from file or textbox": a run per line; several init_images: a run per picture and batch
                for one in prepared.lines or [prepared.request]:
                    result = manager.generate(one, cancel=job.token, face=face)
                    images += result.images
                    notes += result.warnings if prepared.lines and one is not prepared.lines[-1] else []
            except GenerationCancelled as stop:
                images += list(stop.partial or [])
                notes.append(f"Interrupted: {len(images)} image(s) finished before the stop.")
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    if result is not None:
        if prepared.keep_model:
            context.defaults.model = prepared.request.model
        if prepared.keep_vae:
            context.defaults.vae_dtype = prepared.request.vae_dtype
        if prepared.keep_clip_skip:
            context.defaults.clip_skip = prepared.request.clip_skip
        if prepared.keep_sd_vae:
            context.defaults.vae = prepared.request.vae
        if prepared.keep_token_merging:
            context.defaults.token_merging_ratio = prepared.request.token_merging_ratio
    warnings = list(dict.fromkeys(prepared.warnings + (result.warnings if result else []) + notes))  # a run per picture says it once
    encoded = [mapping.encode_png(item.image, item.infotext) for item in images] if body.send_images else []
    if img2img and body.include_init_images and body.send_images:  # A1111 appends the init image after the results
        encoded += [mapping.image_b64(picture) for picture in prepared.init_pictures or [prepared.request.init_image]]
    return {"images": encoded, "parameters": mapping.echo_parameters(body),
            "info": mapping.info_json(body, result, images, warnings, job.timestamp, len(prepared.init_pictures) or None)}


async def run_extras(context: ApiContext, body, images: list[str], request: Request) -> dict:
    """Upscale each picture (A1111's extras routes): decoded and checked first, then one job on the board for all of them."""
    limit = context.manager.config.max_input_pixels
    if not images:
        raise InvalidRequest("imageList is empty: send at least one picture ({\"data\": base64, \"name\": ...}).")
    what = ["image"] if isinstance(body, models.ExtrasSingleImageRequest) else [f"imageList[{n}]" for n in range(len(images))]
    if what == ["image"] and not images[0]:
        raise InvalidRequest("image is empty: send the picture to upscale as base64.")
    pictures = await anyio.to_thread.run_sync(lambda: [mapping.decode_input_image(text, name, limit) for text, name in zip(images, what)])
    token = CancelToken()
    watcher = asyncio.ensure_future(cancel_on_disconnect(request, token))
    try:
        return await anyio.to_thread.run_sync(upscale_pictures, context, body, pictures, token)
    finally:
        watcher.cancel()


def upscale_pictures(context: ApiContext, body, pictures: list, token: CancelToken) -> dict:
    requests = [mapping.extras_request(body, picture) for picture in pictures]
    for upscale, _ in requests:  # every picture checked before the first one runs
        plan_upscale(upscale, Path(context.manager.config.models_dir), context.manager.config.allow_pickle)
    job = Job("api", "extras", token, steps=1, batch_count=len(requests))
    results = []
    with tagged(source="api", kind="extras"), context.board.turn(job):
        for upscale, _ in requests:
            results.append(context.manager.upscale(upscale, cancel=token))
    notes = requests[0][1] + [note for result in results for note in result.notes]
    html_info = mapping.extras_html(results[-1].postprocessing, list(dict.fromkeys(notes)))
    encoded = [mapping.extras_png(result) for result in results] if body.show_extras_results else []
    if isinstance(body, models.ExtrasSingleImageRequest):
        return {"html_info": html_info, "image": encoded[0] if encoded else None}
    return {"html_info": html_info, "images": encoded}


def write_photos(cache_dir: Path, photos: list[bytes]) -> tuple[str, list[str]]:
    """The checked photos in a private folder under the cache folder (removed by the caller)."""
    parent = cache_dir / "api-photos"
    parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="job-", dir=parent)  # mode 0700
    paths = []
    for index, data in enumerate(photos):
        path = os.path.join(folder, f"photo-{index + 1}")
        with open(path, "wb") as handle:
            handle.write(data)
        paths.append(path)
    return folder, paths


# -- options ----------------------------------------------------------------------------------------

LIVE_PREVIEW_TYPES = {"cheap": "Approx cheap", "TAESD": "TAESD"}  # Settings live_preview -> A1111's show_progress_type

def current_options(context: ApiContext) -> dict:
    """A1111 option names Likeness has a value for, and Likeness's own (prefixed `likeness_`)."""
    manager, defaults = context.manager, context.defaults
    title, sha = defaults.model, None
    try:
        item = mapping.model_item(manager.entry(defaults.model), context.hashes_file)
        title, sha = item["title"], item["sha256"]
    except LikenessError:
        pass
    preview = manager.config.preview_every
    return {
        "sd_model_checkpoint": title,
        "sd_checkpoint_hash": sha,
        "sd_vae": defaults.vae,
        "CLIP_stop_at_last_layers": defaults.clip_skip,
        "token_merging_ratio": defaults.token_merging_ratio,
        "show_progress_every_n_steps": preview,
        "live_previews_enable": preview > 0,
        "live_previews_image_format": "png",
        "show_progress_type": LIVE_PREVIEW_TYPES.get(manager.config.live_preview, "Approx cheap"),
        "samples_format": "png",
        "samples_save": False,
        "outdir_samples": str(manager.config.outputs_dir),
        "outdir_txt2img_samples": str(manager.config.outputs_dir),
        "likeness_vae_dtype": defaults.vae_dtype,
        "likeness_vae_tiling": manager.config.vae_tiling,
        "likeness_vae_slicing": manager.config.vae_slicing,
    }


def apply_options(context: ApiContext, req: dict) -> dict:
    """Apply what maps onto Likeness (for this server's run; the settings file is not changed).
    A bad value for a known option refuses the whole request (422) before anything is applied."""
    manager, defaults = context.manager, context.defaults
    changes, ignored = [], {}
    for key, value in req.items():
        if key == "sd_model_checkpoint":
            name = mapping.find_model(manager, value)
            changes.append(lambda name=name: setattr(defaults, "model", name))
        elif key in ("likeness_vae_dtype", "vae_dtype"):
            if value not in VAE_CHOICES:
                raise InvalidRequest(f"{key} must be one of {', '.join(VAE_CHOICES)}, got {value!r}.")
            changes.append(lambda value=value: setattr(defaults, "vae_dtype", value))
        elif key in ("show_progress_every_n_steps", "likeness_preview_every"):
            if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 1000:
                raise InvalidRequest(f"{key} must be a whole number from -1 to 1000, got {value!r}.")
            changes.append(lambda value=value: setattr(manager.config, "preview_every", max(value, 0)))
        elif key == "live_previews_enable":
            if not isinstance(value, bool):
                raise InvalidRequest(f"live_previews_enable must be true or false, got {value!r}.")
            every = manager.config.preview_every or getattr(context.settings, "preview_every", 5) or 5
            changes.append(lambda on=value, every=every: setattr(manager.config, "preview_every", every if on else 0))
        elif key == "show_progress_type" and value in LIVE_PREVIEW_TYPES.values():  # "Full" and "Approx NN" are not offered
            choice = next(name for name, a1111 in LIVE_PREVIEW_TYPES.items() if a1111 == value)
            changes.append(lambda choice=choice: setattr(manager.config, "live_preview", choice))
        elif key in ("likeness_vae_tiling", "likeness_vae_slicing"):
            if not isinstance(value, bool):
                raise InvalidRequest(f"{key} must be true or false, got {value!r}.")
            changes.append(lambda key=key, value=value: setattr(manager.config, key.removeprefix("likeness_"), value))
        elif key == "sd_vae":
            vae = mapping.api_vae(manager, value, key)
            changes.append(lambda vae=vae: setattr(defaults, "vae", vae))
        elif key == "CLIP_stop_at_last_layers":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLIP_SKIP:
                raise InvalidRequest(f"CLIP_stop_at_last_layers must be a whole number from 1 to {MAX_CLIP_SKIP}, got {value!r}.")
            changes.append(lambda value=value: setattr(defaults, "clip_skip", value))
        elif key == "token_merging_ratio":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TOKEN_MERGING:
                raise InvalidRequest(f"token_merging_ratio must be between 0 (off) and {MAX_TOKEN_MERGING:g}, got {value!r}.")
            changes.append(lambda value=value: setattr(defaults, "token_merging_ratio", float(value)))
        elif key == "samples_format" and isinstance(value, str) and value.lower() == "png":
            pass
        else:
            ignored[key] = f"{key}={value!r} {NOT_SUPPORTED}." if len(repr(value)) < 80 else f"{key} {NOT_SUPPORTED}."
    for change in changes:
        change()
    return {"applied": sorted(k for k in req if k not in ignored), "ignored": ignored}


def command_flags(context: ApiContext) -> dict:
    """A1111's flag names where Likeness has one; credentials are never shown, only whether they are set."""
    options, manager = context.options, context.manager
    return {
        "api": True,
        "api_auth": "(set)" if getattr(options, "api_auth", ()) else None,
        "gradio_auth": "(set)" if getattr(options, "auth", ()) else None,
        "listen": bool(getattr(options, "listen", False)),
        "port": getattr(options, "port", None),
        "nowebui": False,
        "ckpt_dir": str(manager.config.models_dir),
        "models_dir": str(manager.config.models_dir),
        "outputs_dir": str(manager.config.outputs_dir),
        "cache_dir": str(manager.config.cache_dir),
        "device": str(manager.device),
        "max_upload_mb": getattr(options, "max_upload_mb", None),
    }


# -- png-info, memory ---------------------------------------------------------------------------------

def read_png_info(text: str) -> dict:
    """The infotext of a base64 image, read from its header chunks: no pixel is decoded."""
    if not text.strip():
        return {"info": "", "items": {}, "parameters": {}}
    data = mapping.decode_base64(text, "image")
    info = read_embedded_text(data)[0] or ""  # wherever the chunk stands, capped, no pixel decoded
    with open_image(data, what="image") as image:
        items = {k: v[:MAX_TEXT_CHARS] for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


def memory_figures(manager) -> dict:
    import psutil

    try:
        process = psutil.Process(os.getpid())
        rss = process.memory_info().rss
        total = psutil.virtual_memory().total
        ram = {"free": total - rss, "used": rss, "total": total}
    except Exception as error:  # noqa: BLE001 - A1111 reports the error in the field
        ram = {"error": str(error)}
    device = manager.device
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)

        def pair(name):
            return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

        cuda = {"system": {"free": free, "used": total - free, "total": total}, "active": pair("active_bytes"),
                "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}
    else:
        cuda = {"error": "unavailable"}
    return {"ram": ram, "cuda": cuda}

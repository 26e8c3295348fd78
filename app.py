"""Likeness: fast text-to-image and face-reference portraits on your own GPU.

    python app.py                      launch the web UI on 127.0.0.1:7860
    python app.py generate --prompt …  generate headless
    python app.py models               list the models found
    python app.py bench --suite core   run the benchmarks
    python app.py train-demo --out DIR train the demo model (procedural shapes and faces)
    python app.py experiment --config FILE   run a settings experiment (grid, timings, fidelity)

Builds settings -> the one pipeline manager -> the UI or a CLI command, and passes them down.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--models-dir", help="folder with your models (default: ./models, or $LIKENESS_MODELS_DIR)")
    parent.add_argument("--outputs-dir", help="where images are saved (default: ./outputs, or $LIKENESS_OUTPUTS_DIR)")
    parent.add_argument("--cache-dir", help="where the demo model and caches live (default: ./.cache)")
    parent.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    parent.add_argument("--approx-cache-uri", metavar="URI",
                        help="approximate cache store: ./cache.db (Milvus Lite) or http://host:19530 (a shared Milvus server); "
                             "default: the embedded faiss index (needs requirements-scale.txt)")
    parent.add_argument("--workers", choices=("ray",), help="run generations on Ray workers (needs requirements-scale.txt): "
                        "the web UI, its API, `generate` and `experiment`; one per GPU, or --worker-count CPU workers")
    parent.add_argument("--worker-count", type=int, metavar="N", help="--workers ray: how many workers (default: one per GPU, else 1)")
    parent.add_argument("--ray-address", metavar="ADDR", help="--workers ray: join an existing Ray cluster (host:6379) instead of a local one")
    parent.add_argument("--workers-fallback", action="store_true",
                        help="--workers ray: when the workers cannot start, say why and run in this process instead of exiting")
    parent.add_argument("--settings", type=Path, help="settings file (default: settings/user_settings.json)")
    parent.add_argument("--verbose", action="store_true", help="debug logging")
    return parent


def pixels(text: str) -> int:
    """--width/--height: a positive whole number (0 must not quietly become the default size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a size; use a positive number of pixels such as 512")
    return value


def size_pair(text: str) -> tuple[int, int]:
    """--seed-resize-from: WIDTHxHEIGHT, e.g. 512x768."""
    width, _, height = text.strip().lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write WIDTHxHEIGHT, e.g. 512x768")
    return int(width), int(height)


def schedule_type(text: str) -> str:
    """--schedule-type: one of ours, by label or A1111's name ("SGM Uniform", "sgm_uniform")."""
    from pipelines.choices import SCHEDULE_TYPES
    from pipelines.samplers import find_schedule_type

    found = find_schedule_type(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a schedule type; use one of: {', '.join(SCHEDULE_TYPES)}")
    return found


def build_parser() -> argparse.ArgumentParser:
    from pipelines.bench import SUITES
    from pipelines.choices import MERGE_METHODS, VAE_CHOICES
    from pipelines.demo import DEFAULT_CFG as DEMO_CFG
    from pipelines.request import DEEPCACHE_SCHEDULES, FLUX_CACHE_CHOICES, GenerationRequest
    from pipelines.samplers import SAMPLER_NAMES

    common = common_options()
    parser = argparse.ArgumentParser(prog="app.py", description="Likeness", parents=[common])
    parser.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 instead of 127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]", help="require a login for the web UI and its API")
    parser.add_argument("--gradio-auth-path", type=Path, metavar="FILE", help="the same pairs from a file (commas or one pair per line)")
    parser.add_argument("--max-upload-mb", type=int, default=200, help="largest file a browser or API client may upload (default 200)")
    parser.add_argument("--api", action="store_true", help="serve AUTOMATIC1111's web API under /sdapi/v1 on the same port (docs at /docs)")
    parser.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="require HTTP Basic auth for the /sdapi API")
    commands = parser.add_subparsers(dest="command")

    defaults = GenerationRequest(model="", prompt="")
    gen = commands.add_parser("generate", parents=[common], help="generate images without the UI")
    gen.add_argument("--prompt", help="the prompt (needed unless --prompts-file gives the prompts)")
    gen.add_argument("--negative-prompt", default="")
    lines = gen.add_argument_group("prompts from a file (A1111's \"Prompts from file or textbox\" script)")
    lines.add_argument("--prompts-file", metavar="FILE", help="one generation per line: a prompt, or A1111's --tag value options "
                                                              "(--prompt \"a cat\" --steps 30 --seed 5); the other flags are each line's defaults")
    lines.add_argument("--iterate-seed", action="store_true", help="add batch size x batch count to the seed after each line")
    lines.add_argument("--same-seed", action="store_true", help="one random seed for every line (when --seed is -1)")
    lines.add_argument("--prompt-position", choices=("start", "end"), default="start",
                       help="a line's prompt goes before (default) or after --prompt")
    gen.add_argument("--style", action="append", default=[], metavar="NAME",
                     help="apply a prompt style from the models folder's styles.csv (A1111's file); repeatable, applied in order")
    gen.add_argument("--lora", action="append", default=[], metavar="NAME:WEIGHT",
                     help="apply models/Lora/NAME.safetensors (weight default 1, -10..10); repeatable; same as <lora:NAME:WEIGHT> in --prompt")
    gen.add_argument("--model", help="model name as `app.py models` lists it (default: first real model, else the demo)")
    gen.add_argument("--steps", type=int, default=defaults.steps)
    gen.add_argument("--cfg-scale", "--cfg", type=float, default=None,
                     help=f"default: the model family's (SD 1.5 {defaults.cfg_scale:g}, SDXL 6, FLUX.1 3.5; the trained demo {DEMO_CFG:g})")
    gen.add_argument("--seed", type=int, default=-1, help="-1 = random; the seed used is printed and saved")
    gen.add_argument("--subseed", type=int, default=-1, metavar="SEED", help="variation seed (A1111's Extra; -1 = random); needs --subseed-strength")
    gen.add_argument("--seed-resize-from", type=size_pair, default=(0, 0), metavar="WxH",
                     help="A1111's Resize seed from: draw the seed's noise at this size, centred, to keep a composition found at "
                          "another size (SD 1.5 and SDXL text-to-image)")
    gen.add_argument("--subseed-strength", type=float, default=0.0, metavar="S",
                     help="how far each image's noise turns toward its variation seed's, 0-1 (0 = off; SD 1.5 and SDXL text-to-image)")
    gen.add_argument("--width", type=pixels, default=None, help="default: the model family's size")
    gen.add_argument("--height", type=pixels, default=None)
    gen.add_argument("--sampler", default=None,
                     help=f"one of: {', '.join(SAMPLER_NAMES)} (A1111's older names such as 'DPM++ 2M Karras' work too)")
    gen.add_argument("--schedule-type", type=schedule_type, default="Automatic", metavar="TYPE",
                     help="A1111's Schedule type: Automatic (the sampler's default: Karras for DPM++ 2M), Uniform, Karras, "
                          "Exponential, SGM Uniform (for Lightning/Hyper/Turbo models), Beta")
    gen.add_argument("--clip-skip", type=int, default=1, metavar="N",
                     help="SD 1.5: read the prompt from the text encoder's Nth layer from the end, as A1111's Clip skip (1 = last, 1-12)")
    gen.add_argument("--vae", default="Automatic", metavar="NAME",
                     help="A1111's SD VAE: a file of models/VAE (e.g. vae-ft-mse-840000-ema-pruned.safetensors) instead of the model's own")
    gen.add_argument("--tiling", action="store_true", help="a picture that repeats seamlessly, as A1111's Tiling (SD 1.5, SDXL)")
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--batch-count", type=int, default=1)
    gen.add_argument("--vae-dtype", choices=VAE_CHOICES, default=None,
                     help="VAE decode precision (default: the vae_dtype setting, auto = bf16 on capable NVIDIA GPUs, else fp32)")
    gen.add_argument("--deepcache", type=int, default=1, metavar="N",
                     help="DeepCache interval for SD 1.5/SDXL: one full UNet step, then N-1 cached (1 = off)")
    gen.add_argument("--deepcache-branch", type=int, default=0, help="DeepCache skip branch: 0 = fastest, higher = closer to the uncached image")
    gen.add_argument("--deepcache-schedule", choices=DEEPCACHE_SCHEDULES, default="uniform")
    gen.add_argument("--flux-cache", choices=FLUX_CACHE_CHOICES, default="off",
                     help="FLUX.1 block cache (diffusers' hooks)")
    gen.add_argument("--flux-cache-threshold", type=float, default=0.08, help="first-block / magcache threshold (0.08 is nearly lossless)")
    gen.add_argument("--approx-cache", action="store_true",
                     help="approximate cache: resume from a similar earlier prompt's latents (faster, not exact; see README)")
    gen.add_argument("--no-save", action="store_true", help="do not write images to the outputs folder")
    add_face_options(gen)
    add_refine_options(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON result instead of text")

    models = commands.add_parser("models", parents=[common], help="list the model catalog")
    models.add_argument("--json", action="store_true")

    bench = commands.add_parser("bench", parents=[common], help="run a benchmark suite")
    bench.add_argument("--suite", default="core", choices=SUITES)
    bench.add_argument("--json", dest="json_file", type=Path, help="also write the figures to this JSON file")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    bench.add_argument("--budget-s", type=float, default=420.0, help="gpu suite: seconds the rows may take; rows that would not fit are skipped")
    bench.add_argument("--dry-run", action="store_true", help="gpu suite: the same rows on the CPU with tiny configs (a check, not figures)")
    bench.add_argument("--sizes", type=lambda text: tuple(int(n) for n in text.split(",")), metavar="N,N,...",
                       help="scale suite: approximate-cache entries to time lookups at (default 1000,10000,100000; --quick 1000,10000)")
    bench.add_argument("--milvus-uri", metavar="URI", help="scale suite: also time lookups on this Milvus server (http://host:19530), "
                       "in collections of the bench's own")

    from pipelines.demo.train import TrainConfig as recipe  # numpy alone; the help shows the defaults

    train_demo = commands.add_parser("train-demo", help="train the demo model from procedural scenes (about 1 hour on 2 CPU cores)")
    train_demo.add_argument("--out", type=Path, required=True, help="folder for the trained model (diffusers layout, fp16)")
    train_demo.add_argument("--seed", type=int, default=0)
    train_demo.add_argument("--max-minutes", type=float, default=60.0, help="stop the UNet phase early (and say so) past this")
    train_demo.add_argument("--threads", type=int, default=2, help="torch threads (1 on a machine shared with other work)")
    train_demo.add_argument("--resume-from", type=Path, help="a finished model folder: train its UNet and text encoder further "
                            "(its VAE is kept)")
    train_demo.add_argument("--vae-from", type=Path, help="use a trained VAE (an earlier run's DIR/vae-phase1 while it runs, or DIR/vae): skip the VAE phases")
    train_demo.add_argument("--outline-weight", type=float, default=1.0, help="VAE phases: weigh the L1 near drawn outlines this many "
                            "times (1, the shipped recipe: an even L1; 9 keeps small stars: see README)")
    train_demo.add_argument("--late-quiet-share", type=float, default=None, help="UNet phase: once the learning rate anneals, draw "
                            f"this share (0-1) of the timesteps from the quieter part t < 600 (default: the recipe's, {recipe.late_quiet_share}; see README)")
    train_demo.add_argument("--axis-phase-steps", type=int, default=None, help="UNet phase: once one position axis is learnt, show "
                            f"only scenes placed along the other until it is learnt too, or for N steps (default: the recipe's, {recipe.axis_phase_steps}; see README)")
    train_demo.add_argument("--axis-phase-from", type=int, default=None, help="UNet phase, with --axis-phase-steps: start that "
                            f"phase no earlier than step N (default: the recipe's, {recipe.axis_phase_from}; see README)")
    train_demo.add_argument("--axis-phase-restart", action=argparse.BooleanOptionalAction, default=None, help="UNet phase: "
                            "start that phase from the averaged weights with a fresh optimizer and learning-rate warm-up "
                            "(default: the recipe's, on; see README)")
    train_demo.add_argument("--minimal-pairs", action=argparse.BooleanOptionalAction, default=None, help="UNet phase: half of each "
                            "batch is the other half with one caption word changed (other side, hair or skin), same noise "
                            "(default: the recipe's, on; see README)")
    train_demo.add_argument("--pairs-in-axis-phase-only", action=argparse.BooleanOptionalAction, default=None, help="UNet "
                            "phase, with --minimal-pairs: pairs only during the axis phase (default: the recipe's, on; see README)")
    train_demo.add_argument("--lr", type=float, default=None, help="UNet phase: the peak learning rate of the UNet and the text "
                            "encoder (default: the recipe's, 6e-4; lower to polish a model with --resume-from)")
    train_demo.add_argument("--lr-hold", type=float, default=None, help="UNet phase: the share (0-1) of its time the learning rate "
                            "stays at its peak before it anneals (default: the recipe's, 0.7)")
    train_demo.add_argument("--polish-share", type=float, default=None, help="UNet phase: its last share (0-1) polishes: the averaged "
                            "weights, a fresh optimizer, --polish-lr, quieter timesteps alone (default: the recipe's, "
                            f"{recipe.polish_share:g}; 0: none; see README)")
    train_demo.add_argument("--polish-lr", type=float, default=None, help="UNet phase, with --polish-share: the polish's peak "
                            f"learning rate (default: the recipe's, {recipe.polish_lr:g})")
    train_demo.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="UNet phase: its training step "
                            "through torch.compile, the UNet's ResNet blocks and transformers one by one (measured slower than eager "
                            "in the whole loop on 2 cores; needs a C++ compiler; default: the recipe's, off; see README)")
    train_demo.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast in every phase "
                            "(default: where the CPU computes it natively, AVX512-BF16 or AMX; elsewhere it is emulated, ~16x slower)")
    train_demo.add_argument("--pair-difference-weight", type=float, default=None, help="UNet phase, with --minimal-pairs: also "
                            f"count the pair's difference this many times (default: the recipe's, {recipe.pair_difference_weight:g}; see README)")

    upscale = commands.add_parser("upscale", parents=[common], help="upscale finished pictures, as A1111's Extras tab (see README)")
    upscale.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="the pictures to upscale (PNG, JPEG, WebP)")
    upscale.add_argument("--upscaler", default="Lanczos", help="Lanczos, Nearest, an ESRGAN file's name (models/ESRGAN) or None; default Lanczos")
    upscale.add_argument("--scale", type=float, default=2.0, help="Scale by this factor (default 2), unless --width and --height are given")
    upscale.add_argument("--width", type=int, default=0, help="Scale to this width (with --height): upscaled to cover it, then cut to it")
    upscale.add_argument("--height", type=int, default=0)
    upscale.add_argument("--no-crop", action="store_true", help="with --width/--height: keep the covering picture, not cut to the size")
    upscale.add_argument("--upscaler-2", default="None", help="a second upscaler blended in (with --upscaler-2-visibility)")
    upscale.add_argument("--upscaler-2-visibility", type=float, default=0.0, metavar="V", help="0-1: how much of the second upscaler's picture")
    upscale.add_argument("--no-save", action="store_true", help="do not write the pictures (a check of the settings and the time)")
    upscale.add_argument("--json", action="store_true", help="print one JSON line per picture instead of text")

    merge = commands.add_parser("merge", parents=[common], help="merge single-file checkpoints, as A1111's Checkpoint Merger (see README)")
    merge.add_argument("--primary", "-a", required=True, metavar="A", help="model A, as `app.py models` names it")
    merge.add_argument("--secondary", "-b", default="", metavar="B", help="model B (not for No interpolation)")
    merge.add_argument("--tertiary", "-c", default="", metavar="C", help="model C (Add difference only)")
    merge.add_argument("--method", choices=MERGE_METHODS, default=MERGE_METHODS[0],
                       help="Weighted sum: A x (1-M) + B x M; Add difference: A + (B-C) x M; No interpolation: A alone")
    merge.add_argument("--multiplier", "-m", type=float, default=0.3, metavar="M", help="0-1 (default 0.3)")
    merge.add_argument("--name", default="", help="the new file's name (default A1111's: A_0.7-B_0.3-Weighted_sum-merged); written next to A")
    merge.add_argument("--fp16", action="store_true", help="save as float16 (half the size)")
    merge.add_argument("--bake-vae", default="None", metavar="NAME",
                       help="A1111's Bake in VAE: a VAE file of models/VAE (A1111's layout) written in place of A's VAE")
    merge.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    experiment = commands.add_parser("experiment", parents=[common], help="run a settings experiment from a file (see README)")
    experiment.add_argument("--config", type=Path, required=True, help="experiment file (JSON), e.g. one exported by the Experiments tab")
    experiment.add_argument("--out", type=Path, help="folder for the grid, tables and definition (default: <outputs>/experiments/<time>)")
    experiment.add_argument("--yes", action="store_true", help="run a grid above the experiment_confirm_cells setting without asking")
    experiment.add_argument("--json", action="store_true", help="print one JSON summary instead of text")
    return parser


def add_face_options(gen: argparse.ArgumentParser) -> None:
    """The Face tab's controls as flags (PuLID with SDXL or FLUX.1 models)."""
    from pipelines.choices import ORTHO_MODES
    from pipelines.face.options import MAX_PHOTOS, FaceOptions

    face = FaceOptions()
    group = gen.add_argument_group("face reference (PuLID, SDXL and FLUX.1)")
    group.add_argument("--face", action="append", metavar="PHOTO", help=f"a reference photo of the person (repeat for up to {MAX_PHOTOS})")
    group.add_argument("--face-index", action="append", type=int, metavar="N",
                       help="which detected face to use, per photo in order (1 = the largest, the default)")
    group.add_argument("--id-weight", type=float, default=face.id_weight,
                       help="ID weight: SDXL 0-5 (default 0.8), FLUX.1 0-3 (default 1), as the official PuLID apps; 0 = PuLID off")
    group.add_argument("--start-step", type=int, default=face.start_step, help="first step with the ID (FLUX.1: 4 photoreal, 0-1 stylised)")
    group.add_argument("--num-zero", type=int, default=face.num_zero, help="SDXL: more = more editable, less likeness (0-80)")
    group.add_argument("--ortho", choices=ORTHO_MODES, default=face.ortho, help="SDXL: orthogonal ID attention")
    group.add_argument("--true-cfg", type=float, default=face.true_cfg, help="FLUX.1: true CFG scale with the negative prompt (1 = off)")
    group.add_argument("--true-cfg-start", type=int, default=face.true_cfg_start, help="FLUX.1: first step of true CFG")


def add_refine_options(gen: argparse.ArgumentParser) -> None:
    """img2img, inpainting, hires fix and the face detailer as flags (A1111's img2img options, named for a shell).

    Every default is None so that a flag given without the mode it belongs to is an error, not silently
    ignored; ui/cli.py fills in GenerationRequest's defaults."""
    from pipelines.choices import MASKED_CONTENT, RESIZE_MODES
    from pipelines.request import GenerationRequest

    d = GenerationRequest(model="", prompt="")
    img = gen.add_argument_group("img2img and inpainting (SD 1.5, SDXL, FLUX.1)")
    img.add_argument("--init-image", metavar="PATH", help="start from this picture instead of noise (img2img); a folder runs each of "
                                                          "its pictures in name order (A1111's img2img batch), saved under their own "
                                                          "names in outputs/img2img-batch/<time>/")
    img.add_argument("--strength", type=float, metavar="S",
                     help=f"denoising strength 0-1: 0 keeps the picture, 1 ignores it (default {d.denoising_strength:g})")
    img.add_argument("--resize-mode", metavar="MODE",
                     help=f"how a picture of another size is fitted: {', '.join(f'{i} = {m}' for i, m in enumerate(RESIZE_MODES))} "
                          "(or just, crop, fill; default: just resize)")
    img.add_argument("--mask", metavar="PATH", help="inpaint: white (or painted, in a transparent PNG) = repaint; the rest is kept. "
                                                    "With a folder of pictures: a folder of masks named as the pictures, or one mask for all")
    img.add_argument("--mask-blur", type=int, metavar="PX", help=f"feather the mask edge by this many pixels (default {d.mask_blur})")
    img.add_argument("--masked-content", metavar="KIND",
                     help=f"what the masked area starts from: {', '.join(MASKED_CONTENT)} (default {d.inpainting_fill})")
    img.add_argument("--only-masked", action="store_true", help="inpaint a padded crop around the mask at full resolution")
    img.add_argument("--only-masked-padding", type=int, metavar="PX", help=f"pixels around the mask for --only-masked (default {d.inpaint_full_res_padding})")
    img.add_argument("--invert-mask", action="store_true", help="repaint what the mask does NOT cover")
    hires = gen.add_argument_group("hires fix (a second pass at a larger size)")
    hires.add_argument("--hires-scale", type=float, metavar="X", help="1-4; 1 = off (default). E.g. 1.5 or 2")
    hires.add_argument("--hires-upscaler", metavar="NAME", help="Latent (default), Lanczos, Nearest or an ESRGAN file in models/ESRGAN")
    hires.add_argument("--hires-steps", type=int, metavar="N", help="steps of the second pass (default 0 = the same as --steps)")
    hires.add_argument("--hires-denoising", type=float, metavar="S", help=f"denoising strength of the second pass, 0-1 (default {d.hires_denoising:g})")
    hires.add_argument("--hires-prompt", metavar="TEXT", help="what the second pass reads instead of --prompt (A1111's Hires prompt)")
    hires.add_argument("--hires-negative-prompt", metavar="TEXT", help="what the second pass reads instead of --negative-prompt")
    hires.add_argument("--hires-sampler", metavar="NAME", help="the second pass's own sampler (A1111's Hires sampler; default: --sampler's)")
    hires.add_argument("--hires-checkpoint", metavar="MODEL", help="another installed model of the same family runs the second pass "
                       "(A1111's Hires checkpoint; default: --model)")
    hires.add_argument("--hires-schedule-type", type=schedule_type, metavar="TYPE",
                       help="the second pass's own schedule type (default: --schedule-type's)")
    gen.add_argument("--token-merging", type=float, metavar="R", dest="token_merging_ratio",
                     help="A1111's Token merging ratio (ToMe, SD 1.5 / SDXL): the share of the tokens merged before each "
                          "full-resolution self-attention, 0-0.75 (default 0 = off); faster at large sizes")
    refiner = gen.add_argument_group("refiner (A1111's: another model of the family takes over the last steps)")
    refiner.add_argument("--refiner", metavar="MODEL", help="an installed model of --model's family that runs the steps after --refiner-switch-at "
                         "and what follows (hires pass, decode, face detailer)")
    refiner.add_argument("--refiner-switch-at", type=float, metavar="S",
                         help=f"the share of the steps on --model before the refiner takes over, 0.01-1 (default {d.refiner_switch_at:g}: 16 of 20)")
    detail = gen.add_argument_group("face detailer (each detected face redrawn at full resolution; keeps --face's identity)")
    detail.add_argument("--face-detail", action="store_true", help="turn the face detailer on")
    detail.add_argument("--face-detail-strength", type=float, metavar="S", help=f"denoising strength on the faces, 0-1 (default {d.face_detail_strength:g})")
    detail.add_argument("--face-detail-steps", type=int, metavar="N", help="steps per face (default 0 = the same as --steps)")
    detail.add_argument("--face-detail-prompt", metavar="TEXT", help="prompt for the faces (default: the main prompt)")
    detail.add_argument("--face-detail-faces", metavar="LIST", help='which faces, 1 = the largest: "1,3" (default: all)')


def build_manager(settings):
    from pipelines.caches.approximate import parse_thresholds
    from pipelines.manager import ManagerConfig, PipelineManager

    config = ManagerConfig(
        models_dir=Path(settings.models_dir),
        outputs_dir=Path(settings.outputs_dir),
        cache_dir=Path(settings.cache_dir),
        device=settings.device,
        ram_cache_bytes=int(settings.ram_cache_gb * 2**30),
        vram_reserve_bytes=int(settings.vram_reserve_gb * 2**30),
        include_hf_cache=settings.include_hf_cache,
        allow_pickle=settings.allow_pickle,
        preview_every=settings.preview_every,
        live_preview=settings.live_preview,
        vae_tiling=settings.vae_tiling,
        vae_slicing=settings.vae_slicing,
        vae_honour_force_upcast=settings.vae_honour_force_upcast,
        vae_sticky_fallback=settings.vae_sticky_fallback,
        prompt_memo_policy=settings.prompt_memo_policy,
        prompt_memo_entries=settings.prompt_memo_entries,
        latent_cache_entries=settings.latent_cache_entries,
        approx_cache_thresholds=parse_thresholds(settings.approx_cache_thresholds),
        approx_cache_max_bytes=settings.approx_cache_max_mb * 2**20,
        approx_cache_ttl_seconds=settings.approx_cache_ttl_hours * 3600,
        approx_cache_uri=settings.approx_cache_uri,
        face_memo_entries=settings.face_memo_entries,
        onnx_gpu_mem_limit_mb=settings.onnx_gpu_mem_limit_mb,
        torch_compile=settings.torch_compile,
        channels_last=settings.channels_last,
        lora_fuse=settings.lora_fuse,
        max_input_pixels=int(settings.max_input_megapixels * 1e6),
    )
    return PipelineManager(config)


def check_device(settings, store) -> str | None:
    """A device this machine lacks: named by a flag or LIKENESS_DEVICE, the error to report; read from
    the settings file, start with the default instead (the file is kept as a backup, the page says so)."""
    from pipelines.devices import pick_device

    try:
        pick_device(settings.device)
    except ValueError as error:
        if store.fall_back_to_default(settings, "device", str(error).split(": ", 1)[-1]):
            return None
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Flags that are wrong by themselves, and an unusable experiment file, are refused before torch, the
    # settings or the models load.
    from pipelines.errors import InvalidRequest
    from pipelines.exit_status import EXIT_BAD_INPUT

    problem = train_demo_problem(args) if args.command == "train-demo" else workers_flags_problem(args)
    options = experiment = None
    if problem is None:
        try:
            options, experiment = early_inputs(args)
        except (OSError, ValueError, InvalidRequest) as error:
            problem = str(error)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "train-demo":  # needs no settings or manager
        return train_demo(args)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="likeness: %(message)s", stream=sys.stderr)
    for chatty in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from pipelines.quiet import quiet_libraries
    from settings import load_settings
    from ui.cli import cmd_generate, cmd_merge, cmd_models, cmd_upscale, run_guarded

    quiet_libraries()
    overrides = {"models_dir": args.models_dir, "outputs_dir": args.outputs_dir, "cache_dir": args.cache_dir, "device": args.device,
                 "approx_cache_uri": args.approx_cache_uri}
    settings, store = load_settings(args.settings, overrides)
    problem = check_device(settings, store)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for message in store.messages:
        logging.getLogger("likeness").warning(message)
    try:
        manager = build_manager(settings)
    except ValueError as error:  # e.g. --device cuda on a machine without CUDA
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.getLogger("likeness").info("VAE decode: %s", manager.vae_status())

    if args.command == "generate":
        args.vae_dtype = args.vae_dtype or settings.vae_dtype
        return with_workers(manager, args, lambda front: run_guarded(lambda: cmd_generate(front, fill_family_defaults(front, args))))
    if args.command == "models":
        return run_guarded(lambda: cmd_models(manager, args))
    if args.command == "upscale":
        return run_guarded(lambda: cmd_upscale(manager, args))
    if args.command == "merge":
        return run_guarded(lambda: cmd_merge(manager, args))
    if args.command == "experiment":
        from pipelines.experiments.cli import cmd_experiment

        return with_workers(manager, args, lambda front: run_guarded(lambda: cmd_experiment(front, experiment, args, settings.experiment_confirm_cells)))
    if args.command == "bench":
        from pipelines.bench import run_suite

        return run_guarded(lambda: run_suite(args.suite, manager, args.json_file, quick=args.quick,
                                                   budget_s=args.budget_s, dry_run=args.dry_run, sizes=args.sizes,
                                                   milvus_uri=args.milvus_uri))
    from ui.app import launch, prepare_models

    if args.workers:
        prepare_models(manager)  # the demo model is built before the workers read the catalog
    return with_workers(manager, args, lambda front: launch(front, settings, store, options))


def early_inputs(args):
    """(server options, experiment): what the web UI and `experiment` read from their flags alone, before
    anything heavy loads. OSError, ValueError or InvalidRequest name the flag or the file when unusable."""
    if args.command is None:
        return server_options(args), None
    if args.command == "experiment":
        from pipelines.experiments.plan import read_experiment

        return None, read_experiment(args.config)
    return None, None


def train_demo_problem(args) -> str | None:
    """`train-demo`'s folders that hold no trained model, or a recipe flag out of range or without its partner: what to say."""
    for flag, folder, needed in (("--vae-from", args.vae_from, "config.json"), ("--resume-from", args.resume_from, "training.json")):
        if folder is not None and not (folder / needed).is_file():
            return (f"{flag} {folder}: no {needed} there; give a trained VAE folder (DIR/vae-phase1 or DIR/vae) "
                    "for --vae-from, a finished train-demo folder for --resume-from")
    if not args.outline_weight >= 1.0:
        return f"--outline-weight {args.outline_weight}: give 1 (an even L1) or more"
    if args.late_quiet_share is not None and not 0.0 <= args.late_quiet_share <= 1.0:
        return f"--late-quiet-share {args.late_quiet_share}: give a share from 0 (the noisier mix throughout) to 1"
    if args.axis_phase_steps is not None and args.axis_phase_steps < 0:
        return f"--axis-phase-steps {args.axis_phase_steps}: give 0 (off) or more steps"
    if args.axis_phase_from is not None and args.axis_phase_from < 0:
        return f"--axis-phase-from {args.axis_phase_from}: give a step, 0 (as soon as one axis is learnt) or more"
    if args.lr is not None and not 0.0 < args.lr < 1.0:
        return f"--lr {args.lr}: give a learning rate above 0 and below 1 (the recipe's is 6e-4)"
    if args.lr_hold is not None and not 0.0 <= args.lr_hold < 1.0:
        return f"--lr-hold {args.lr_hold}: give a share from 0 (anneal at once) to below 1"
    if args.polish_share is not None and not 0.0 <= args.polish_share < 1.0:
        return f"--polish-share {args.polish_share}: give a share from 0 (no polish) to below 1"
    if args.polish_lr is not None and not 0.0 < args.polish_lr < 1.0:
        return f"--polish-lr {args.polish_lr}: give a learning rate above 0 and below 1 (the recipe's is 1.5e-4)"
    if args.pair_difference_weight is not None and not args.pair_difference_weight >= 0.0:
        return f"--pair-difference-weight {args.pair_difference_weight}: give 0 (off) or more"
    from pipelines.demo.train import TrainConfig  # numpy alone: the flags are checked before torch loads

    pairs = TrainConfig.minimal_pairs if args.minimal_pairs is None else args.minimal_pairs
    if args.pair_difference_weight and not pairs:
        return "--pair-difference-weight counts the minimal pairs' difference: give it with --minimal-pairs"
    if args.pairs_in_axis_phase_only and not pairs:
        return "--pairs-in-axis-phase-only says when the minimal pairs train: give it with --minimal-pairs"
    return None


def train_demo(args) -> int:
    """`app.py train-demo` (its flags checked by `train_demo_problem`)."""
    from pipelines.demo.train import TrainConfig, train
    from pipelines.exit_status import EXIT_OK


    flags = ("late_quiet_share", "axis_phase_steps", "axis_phase_from", "axis_phase_restart", "minimal_pairs", "pair_difference_weight",
             "pairs_in_axis_phase_only", "bf16", "lr_hold", "polish_share", "polish_lr", "compile")
    recipe = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}  # flags not given keep TrainConfig's defaults
    if args.lr is not None:
        recipe.update(unet_lr=args.lr, text_lr=args.lr)  # one rate for both, as the recipe has
    train(args.out, TrainConfig(seed=args.seed, max_minutes=args.max_minutes, threads=args.threads, outline_weight=args.outline_weight,
                                vae_from=str(args.vae_from) if args.vae_from else None,
                                resume_from=str(args.resume_from) if args.resume_from else None, **recipe))
    return EXIT_OK


def workers_flags_problem(args) -> str | None:
    """--worker-count, --ray-address or --workers-fallback without --workers ray, a count below 1, or a
    command that does not run on workers (models, bench): what to say."""
    extras = [flag for flag, value in (("--worker-count", args.worker_count), ("--ray-address", args.ray_address),
                                       ("--workers-fallback", args.workers_fallback)) if value]
    if not args.workers:
        return f"{', '.join(extras)} only mean something with --workers ray" if extras else None
    if args.command in ("models", "bench"):
        return (f"`app.py {args.command}` runs in this process (it does not generate on workers): "
                "leave out --workers, --worker-count and --ray-address")
    if args.worker_count is not None and args.worker_count < 1:
        return f"--worker-count must be at least 1, got {args.worker_count}"
    return None


def with_workers(manager, args, run) -> int:
    """`run(manager)`, or with `--workers ray` `run(front)`: the same command with its generations on a Ray
    worker pool (pipelines/distributed), which is shut down afterwards. A pool that cannot start is a
    one-line error (exit 2), or with --workers-fallback a warning and the command in this process."""
    if not args.workers:
        return run(manager)
    from pipelines.distributed.front import DispatchingManager
    from pipelines.distributed.pool import PoolConfig, WorkerPool, WorkerStartError
    from pipelines.exit_status import EXIT_BAD_INPUT

    pool = WorkerPool(manager.config, PoolConfig(count=args.worker_count, address=args.ray_address))
    try:
        pool.start()
    except WorkerStartError as error:
        pool.shutdown()
        if args.workers_fallback:
            logging.getLogger("likeness").warning("%s Running in this process instead (--workers-fallback).", error)
            return run(manager)
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return run(DispatchingManager(manager, pool))
    finally:
        pool.shutdown()


def server_options(args):
    """The web server's exposure from the flags; ValueError/OSError with the flag named when they are unusable."""
    from ui.server import ServerOptions, parse_credentials

    auth = ()
    if args.gradio_auth:
        auth += parse_credentials(args.gradio_auth)
    if args.gradio_auth_path:
        try:
            text = args.gradio_auth_path.read_text()
        except OSError as error:
            raise OSError(f"--gradio-auth-path: cannot read {args.gradio_auth_path} ({error.strerror or error})") from None
        auth += parse_credentials(text, f"--gradio-auth-path {args.gradio_auth_path}")
    if args.max_upload_mb < 1:
        raise ValueError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    api_auth = parse_credentials(args.api_auth, "--api-auth") if args.api_auth else ()
    return ServerOptions(listen=args.listen, port=args.port, auth=auth, max_upload_mb=args.max_upload_mb, api=args.api, api_auth=api_auth)


def fill_family_defaults(manager, args):
    """Size, CFG and sampler default to the chosen model's (its family's, or the demo's own)."""
    from pipelines.errors import ModelNotFound
    from pipelines.request import GenerationRequest

    try:
        entry = manager.entry(args.model or manager.default_model())
    except ModelNotFound:
        entry = None  # generate() reports the unknown name with the list of models
    if entry is not None and entry.family is not None:
        start = entry.starting_values()
        args.width = args.width or start.size[0]
        args.height = args.height or start.size[1]
        args.sampler = args.sampler or entry.family.spec.default_sampler
        if args.cfg_scale is None:
            args.cfg_scale = start.cfg
    if args.cfg_scale is None:
        args.cfg_scale = GenerationRequest.cfg_scale
    return args


if __name__ == "__main__":
    sys.exit(main())

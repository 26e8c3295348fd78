"""Checkpoint merger: two or three single-file checkpoints of one family into a new one, as A1111's tab does.

A1111's methods (modules/extras.py `run_modelmerger`), tensor by tensor, M the multiplier:

- **Weighted sum**: A x (1 - M) + B x M (A1111 computes it as A + (B - A) x M: the same numbers).
- **Add difference**: A + (B - C) x M: what B learnt on top of C, added to A (e.g. an inpainting A plus a
  style B minus its base C).
- **No interpolation**: A alone (a copy, in float16 with *Save as float16*).

Every floating-point tensor A and B (and C) share with one shape is merged; a tensor only A has, or
an integer one, is A's; CLIP's `position_ids` are never merged (A1111 skips them too). An inpainting A
(9 input channels) with a normal B (4) merges the first 4 channels and keeps A's mask channels, as
A1111; another shape mismatch is refused with the tensor named, before anything is written. The files
are read lazily (safetensors' `safe_open`), one tensor of each at a time, so the RAM it needs is the
merged model's; the result is written once, complete, under its name (`pipelines.atomic.write_new`: a
crash never leaves a partial file) next to A, with A1111's `sd_merge_recipe` metadata and A's
`<name>.config/` folder if it has one. An existing name is refused: a merge never overwrites a file.
"""
from __future__ import annotations

import errno
import json
import math
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipelines.atomic import write_new
from pipelines.catalog import ModelEntry
from pipelines.choices import MERGE_METHODS
from pipelines.errors import GenerationCancelled, InvalidRequest, OutputError
from pipelines.generate import CancelToken

METHODS = MERGE_METHODS  # A1111's names, in its order
MERGEABLE_FORMATS = ("single-file", "flux-transformer")
SKIPPED_KEYS = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)  # A1111's checkpoint_dict_skip_on_merge
NAME_RULE = re.compile(r"^[\w][\w .+\-()\[\]]{0,150}$")  # a file name, no folders: letters, digits, space . + - ( ) [ ]

KeyProgress = Callable[[int, int], None]  # (tensors done, tensors in all)


@dataclass(frozen=True)
class MergeRequest:
    primary: str  # A: its tensors not in B are kept as they are
    secondary: str = ""  # B
    tertiary: str = ""  # C: Add difference only
    method: str = METHODS[0]
    multiplier: float = 0.3  # M
    name: str = ""  # the new file's name without .safetensors; "" = A1111's (A_0.7-B_0.3-Weighted_sum-merged)
    half: bool = False  # Save as float16
    bake_vae: str = "None"  # A1111's "Bake in VAE": a file of models/VAE whose weights replace the merge's VAE ("None": A's)


@dataclass
class MergeResult:
    path: Path
    name: str  # the catalog's name for the new model
    seconds: float
    tensors: int  # tensors written
    merged: int  # of which merged from two or three models
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MergePlan:
    a: ModelEntry
    b: ModelEntry | None
    c: ModelEntry | None
    file_name: str
    vae: dict | None = None  # Bake in VAE: the file's tensors by the checkpoint's key (first_stage_model.*)


def default_name(request: MergeRequest) -> str:
    """A1111's: `A_0.7-B_0.3-Weighted_sum-merged` (A's name alone for No interpolation)."""
    def stem(name: str) -> str:
        return Path(name).stem if name.endswith(".safetensors") else Path(name).name

    if request.method == METHODS[2]:
        return f"{stem(request.primary)}-{METHODS[2].replace(' ', '_')}-merged"
    weights = f"{stem(request.primary)}_{round(1 - request.multiplier, 2)}-{stem(request.secondary)}_{round(request.multiplier, 2)}"
    return f"{weights}-{request.method.replace(' ', '_')}-merged"


def _entry(find: Callable[[str], ModelEntry], name, role: str) -> ModelEntry:
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"Choose the {role} model.")
    entry = find(name.strip())
    if not entry.usable:
        raise InvalidRequest(f"The {role} model {entry.name!r} cannot be used: {entry.problem}")
    if entry.format not in MERGEABLE_FORMATS or entry.path.suffix.lower() != ".safetensors":
        raise InvalidRequest(f"The {role} model {entry.name!r} is a {entry.format} model; the merger takes single-file "
                             ".safetensors checkpoints (A1111's format).")
    return entry


def plan_merge(request: MergeRequest, find: Callable[[str], ModelEntry], find_vae: Callable[[str], Path | None] | None = None) -> MergePlan:
    """Check every field (InvalidRequest naming it); `find` is the catalog's lookup (ModelNotFound for a name it lacks),
    `find_vae` models/VAE's (None for "None"), needed only to bake a VAE in."""
    if request.method not in METHODS:
        raise InvalidRequest(f"Interpolation method must be one of {', '.join(METHODS)}; got {request.method!r}.")
    multiplier = request.multiplier
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier) or not 0 <= multiplier <= 1:
        raise InvalidRequest(f"Multiplier (M) must be a number from 0 to 1, got {multiplier!r}.")
    if not isinstance(request.half, bool):
        raise InvalidRequest(f"Save as float16 must be true or false, got {request.half!r}.")
    a = _entry(find, request.primary, "primary (A)")
    b = c = None
    if request.method != METHODS[2]:
        b = _entry(find, request.secondary, "secondary (B)")
    if request.method == METHODS[1]:
        c = _entry(find, request.tertiary, "tertiary (C)")
    for other in (b, c):
        if other is not None and (other.family, other.format) != (a.family, a.format):
            raise InvalidRequest(f"{other.name} ({other.family.spec.label}, {other.format}) and {a.name} ({a.family.spec.label}, "
                                 f"{a.format}) are different kinds of model: merge models of one family.")
    name = request.name.strip() if isinstance(request.name, str) else request.name
    if not isinstance(name, str):
        raise InvalidRequest(f"The new model's name must be text, got {name!r}.")
    name = name.removesuffix(".safetensors") or default_name(request)
    if not NAME_RULE.match(name):
        raise InvalidRequest(f"The new model's name {name!r} is not a plain file name: use letters, digits, spaces and . + - ( ) [ ], "
                             "no folders, at most 150 characters.")
    file_name = f"{name}.safetensors"
    if (a.path.parent / file_name).exists():
        raise InvalidRequest(f"{a.path.parent / file_name} exists already; choose another name (a merge never overwrites a file).")
    return MergePlan(a, b, c, file_name, baked_vae(request.bake_vae, a, find_vae))


def baked_vae(name, a: ModelEntry, find_vae: Callable[[str], Path | None] | None) -> dict | None:
    """Bake in VAE: the VAE file's tensors under the checkpoint's names (`first_stage_model.` + A1111's VAE names), each
    checked against A's; None for "None". A1111 bakes only a file in its own layout into an SD checkpoint, and so here:
    anything else is refused with the reason, before the merge starts."""
    if name in (None, "", "None") or (isinstance(name, str) and name.strip() in ("", "None", "Automatic")):
        return None
    if not isinstance(name, str) or find_vae is None:
        raise InvalidRequest(f"Bake in VAE must be a VAE's name from models/VAE (or None), got {name!r}.")
    path = find_vae(name)
    if path is None:
        return None
    if path.is_dir():
        raise InvalidRequest(f"The VAE {path.name} is a diffusers folder; Bake in VAE takes a VAE file in A1111's layout "
                             "(as vae-ft-mse-840000-ema-pruned.safetensors).")
    from safetensors import safe_open

    from pipelines.face.weight_files import read_torch_file

    state = read_torch_file(path, "VAE")
    prefix = "first_stage_model."
    vae = {(key if key.startswith(prefix) else prefix + key): tensor for key, tensor in state.items()}
    with safe_open(str(a.path), framework="pt") as primary:
        ours = {key: primary.get_slice(key).get_shape() for key in primary.keys() if key.startswith(prefix)}
    if not ours:
        raise InvalidRequest(f"{a.name} has no VAE of its own to replace ({a.family.spec.label}); Bake in VAE works on SD 1.5 and SDXL "
                             "checkpoints, as in A1111.")
    fitting = {key: tensor for key, tensor in vae.items() if key in ours and list(tensor.shape) == list(ours[key])}
    if len(fitting) < len(ours):
        missing = sorted(set(ours) - set(fitting))
        raise InvalidRequest(f"The VAE {path.name} does not fit {a.name}'s VAE ({len(missing)} of its {len(ours)} weights missing or of "
                             f"another shape, e.g. {missing[0]}): a VAE of another family, or in diffusers' layout (Bake in VAE takes "
                             "A1111's layout).")
    return fitting


def _merged(key: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, method: str, m: float) -> torch.Tensor:
    if a.shape != b.shape or (c is not None and c.shape != a.shape):
        inpainting = a.dim() == 4 and b.dim() == 4 and a.shape[1] == 9 and b.shape[1] == 4 and a.shape[0] == b.shape[0] \
            and (c is None or c.shape == b.shape)
        if not inpainting:
            shapes = " vs ".join(str(tuple(t.shape)) for t in (a, b, c) if t is not None)
            raise InvalidRequest(f"{key} has different shapes in the models ({shapes}): they are not the same architecture.")
        head = _merged(key, a[:, :4], b, c, method, m)  # A1111: an inpainting A keeps its mask channels
        return torch.cat([head, a[:, 4:]], dim=1)
    work = torch.float32  # fp16 checkpoints are merged in fp32, then stored back
    if method == METHODS[0]:
        result = a.to(work) + (b.to(work) - a.to(work)) * m
    else:
        result = a.to(work) + (b.to(work) - c.to(work)) * m
    return result.to(a.dtype)


def merge_checkpoints(request: MergeRequest, find: Callable[[str], ModelEntry], progress: KeyProgress | None = None,
                      cancel: CancelToken | None = None, find_vae: Callable[[str], Path | None] | None = None) -> MergeResult:
    """Merge as `request` says (checked by `plan_merge` first) and write the new file next to A."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    plan = plan_merge(request, find, find_vae)
    start = time.perf_counter()
    notes: list[str] = []
    with ExitStack() as files:
        a, b, c = (files.enter_context(safe_open(str(entry.path), framework="pt")) if entry else None for entry in (plan.a, plan.b, plan.c))
        keys = list(a.keys())
        b_keys = set(b.keys()) if b is not None else set()
        c_keys = set(c.keys()) if c is not None else set()
        merged_state: dict[str, torch.Tensor] = {}
        merged = 0
        for index, key in enumerate(keys, 1):
            if cancel is not None and cancel.cancelled:
                raise GenerationCancelled("Stopped: the merge was interrupted; nothing was written.")
            tensor = a.get_tensor(key)
            mergeable = b is not None and key in b_keys and (c is None or key in c_keys) and key not in SKIPPED_KEYS \
                and tensor.is_floating_point()
            if mergeable:
                tensor = _merged(key, tensor, b.get_tensor(key), c.get_tensor(key) if c is not None else None, request.method,
                                 float(request.multiplier))
                merged += 1
            if plan.vae is not None and key in plan.vae:  # Bake in VAE: the file's weight, in A's dtype
                tensor = plan.vae[key].to(tensor.dtype)
            if request.half and tensor.is_floating_point():
                tensor = tensor.half()
            merged_state[key] = tensor.contiguous()
            if progress is not None:
                progress(index, len(keys))
        metadata = {"format": "pt", "sd_merge_recipe": json.dumps(_recipe(request, plan))}
    only_a = [key for key in keys if b is not None and (key not in b_keys or (c is not None and key not in c_keys))]
    if only_a:
        notes.append(f"{len(only_a)} of {len(keys)} tensors are not in every model and were kept as A's (e.g. {only_a[0]}).")
    folder = plan.a.path.parent
    try:
        path = write_new(folder, [plan.file_name], lambda temporary: save_file(merged_state, str(temporary), metadata=metadata))
    except FileExistsError:
        raise InvalidRequest(f"{folder / plan.file_name} appeared while merging; choose another name (nothing was overwritten).") from None
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise OutputError(f"Could not write the merged model in {folder}: {reason}. Nothing was written.") from None
    _copy_config(plan.a.path, path, notes)
    if plan.vae is not None:
        notes.append(f"VAE baked in: {request.bake_vae} ({len(plan.vae)} tensors).")
    return MergeResult(path, plan.file_name.removesuffix(".safetensors"), time.perf_counter() - start, len(keys), merged, notes)


def _copy_config(primary: Path, merged: Path, notes: list[str]) -> None:
    """A's `<name>.config/` folder (the configs of an unusual architecture, `pipelines.loading`) goes with the merge, as
    A1111 copies A's .yaml: the new file loads as A does."""
    sidecar = primary.with_name(primary.stem + ".config")
    if (sidecar / "model_index.json").is_file():
        target = merged.with_name(merged.stem + ".config")
        if not target.exists():
            shutil.copytree(sidecar, target)
            notes.append(f"{sidecar.name}/ copied to {target.name}/ (A's configs).")


def _recipe(request: MergeRequest, plan: MergePlan) -> dict:
    """A1111's `sd_merge_recipe` keys (those that apply here)."""
    return {"type": "webui", "primary_model_hash": None, "secondary_model_hash": None, "tertiary_model_hash": None,
            "interp_method": request.method, "multiplier": request.multiplier, "save_as_half": request.half,
            "custom_name": request.name, "config_source": "A", "bake_in_vae": request.bake_vae if plan.vae is not None else None, "discard_weights": "", "is_inpainting": False,
            "is_instruct_pix2pix": False, "primary_model": plan.a.name, "secondary_model": plan.b.name if plan.b else None,
            "tertiary_model": plan.c.name if plan.c else None}

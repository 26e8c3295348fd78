"""img2img batch (A1111's img2img "Batch"): many pictures through one img2img or inpaint request, one after another.

Each result is saved under its picture's own name (`frame_0007.png`; further images of a batch size above 1 as
`frame_0007-1.png`...) in a fresh folder per batch, so video frames keep their order and nothing already written is
overwritten. Masks pair with pictures by file name, as A1111's inpaint batch mask directory: one mask alone serves
every picture; otherwise a picture without a mask of its name is left out, and the batch says so.

The engine side only: the img2img tab and the CLI run `BatchPicture`s through the manager with their own progress."""
from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.atomic import write_new
from pipelines.errors import InvalidRequest, OutputError
from pipelines.images import open_image
from pipelines.outputs import png_with_parameters
from pipelines.refine import flatten_image
from pipelines.request import MAX_SEED, random_seed, seed_after

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BATCH_FOLDER = "img2img-batch"  # under the outputs folder: one folder per batch, named by its start time
MAX_BATCH_PICTURES = 10_000


@dataclass(frozen=True)
class BatchPicture:
    path: Path
    name: str  # the picture's file stem: what the readout shows and the result is saved as
    mask: Path | None = None


def folder_pictures(folder, what: str = "The input folder") -> list[Path]:
    """The pictures of a folder (PNG, JPEG, WebP; not its subfolders), in file-name order; InvalidRequest naming the
    problem when it is not a folder or holds none."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InvalidRequest(f"{what} {str(path)!r} is not a folder.")
    pictures = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
    if not pictures:
        raise InvalidRequest(f"{what} {str(path)!r} holds no pictures (PNG, JPEG or WebP).")
    return pictures


def named(paths: list, names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(file name, path) pairs: the files' own names when given (uploads land in temporary folders under other
    names), else the paths'."""
    paths = [Path(p) for p in paths]
    return list(zip(names or [p.name for p in paths], paths))


def paired(pictures: list[tuple[str, Path]], masks: list[tuple[str, Path]] = ()) -> tuple[list[BatchPicture], list[str]]:
    """The batch's pictures with their masks (both as `named` pairs), and notes. A1111's rule: one mask serves every
    picture; otherwise each takes the mask of its file name, and one without is left out (said in the notes)."""
    if not pictures:
        raise InvalidRequest("Add the pictures to run first.")
    if len(pictures) > MAX_BATCH_PICTURES:
        raise InvalidRequest(f"A batch takes at most {MAX_BATCH_PICTURES} pictures, got {len(pictures)}.")
    # In file-name order, however they were given (uploads come in the order they were picked): frames stay in order.
    items = sorted((BatchPicture(Path(path), Path(name).stem) for name, path in pictures), key=lambda item: item.name)
    masks = list(masks)
    if not masks:
        return items, []
    if len(masks) == 1:  # one mask for every picture, as A1111
        return [BatchPicture(item.path, item.name, Path(masks[0][1])) for item in items], []
    by_stem = {Path(name).stem: Path(path) for name, path in masks}
    chosen = [BatchPicture(item.path, item.name, by_stem.get(item.name)) for item in items]
    left_out = [item.name for item in chosen if item.mask is None]
    notes = [f"No mask named like {', '.join(left_out)}: left out."] if left_out else []
    if len(left_out) == len(chosen):
        raise InvalidRequest(f"No mask has the name of a picture ({', '.join(name for name, _ in masks[:5])}...); a mask pairs with "
                             "the picture of the same file name, or give one mask for all.")
    return [item for item in chosen if item.mask is not None], notes


def open_batch_picture(item: BatchPicture, max_pixels: int):
    """The picture (transparency flattened on white) and its mask (or None), checked from their headers first."""
    picture = open_image(item.path, max_pixels=max_pixels, what=f"The picture {item.name}")
    mask = open_image(item.mask, max_pixels=max_pixels, what=f"The mask for {item.name}") if item.mask is not None else None
    try:
        picture.load()
        if mask is not None:
            mask.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidRequest(f"The picture {item.name} or its mask is damaged or incomplete ({error}).") from None
    return flatten_image(picture), mask


def batch_output_folder(outputs_dir, now: dt.datetime | None = None) -> Path:
    """A new folder for this batch's results: outputs/img2img-batch/<date>_<time>[-n]."""
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H%M%S")
    parent = Path(outputs_dir) / BATCH_FOLDER
    for candidate in itertools.chain([stamp], (f"{stamp}-{n}" for n in itertools.count(2))):
        folder = parent / candidate
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as error:
            raise OutputError(f"Could not make the batch folder {folder}: {error.strerror or error}. Choose a writable "
                              "outputs folder (--outputs-dir or Settings).") from error
    raise AssertionError("unreachable")


def save_under_name(result, name: str, folder: Path) -> None:
    """Each image of `result` under the picture's name (crash-safe, never over an existing file); sets its path."""
    for item in result.images:
        candidates = itertools.chain([f"{name}.png"], (f"{name}-{n}.png" for n in itertools.count(1)))
        try:
            item.path = str(write_new(folder, candidates, lambda temporary, item=item: item.image.save(
                temporary, format="PNG", pnginfo=png_with_parameters(item.image, item.infotext))))
        except OSError as error:
            raise OutputError(f"Could not save {name}.png in {folder}: {error.strerror or error}. Nothing was written for it.") from error


def picture_batch_runs(base, pictures: list) -> list:
    """A1111's img2img with several init pictures in one request: each picture is one image of the batch (the batch size
    becomes their number), batch after batch (`batch_count`); image i of the whole job gets seed + i and, with a
    variation, subseed + i, as A1111 numbers them. Here that is one run per picture and batch (the engine's batch shares
    one picture), in A1111's order: the first batch's pictures, then the next batch's. InvalidRequest when there are
    more pictures than the batch size, as A1111 refuses them."""
    counts = (base.batch_size, base.batch_count)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
        return [replace(base, init_image=pictures[0])]  # the request's own check names the bad count
    if len(pictures) > base.batch_size:
        raise InvalidRequest(f"{len(pictures)} init images but batch size {base.batch_size}: each init image is one image of the "
                             f"batch, as in A1111, so give batch_size {len(pictures)} (or send fewer images).")
    varied = isinstance(base.subseed_strength, (int, float)) and base.subseed_strength > 0
    first_seed, first_subseed = _job_seed(base.seed), _job_seed(base.subseed) if varied else None
    runs = []
    for index, picture in enumerate(pictures * base.batch_count):
        numbered = {"seed": _numbered(base.seed, first_seed, index)}
        if varied:
            numbered["subseed"] = _numbered(base.subseed, first_subseed, index)
        runs.append(replace(base, init_image=picture, batch_size=1, batch_count=1, **numbered))
    return runs


def _job_seed(seed) -> int | None:
    """-1: one random seed for the whole job; a seed in range: itself; anything else None (the request's check names it)."""
    if seed == -1:
        return random_seed()
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED else None


def _numbered(asked, first: int | None, index: int):
    """Image `index`'s seed: the job's first + index, wrapping as the engine's batches do; a bad seed as it was asked."""
    return asked if first is None else seed_after(first, index)

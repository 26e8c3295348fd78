"""How well can the demo checker score at best? Its classifier on held-out scenes, drawn (a) as the
scene generator draws them and (b) after a round trip through a VAE (encode, posterior mean, decode).

(a) is the classifier's own ceiling; (b) is the ceiling a demo model with that VAE can reach even
with a perfect UNet (the UNet only ever produces latents for that decoder). The scenes are the
checker's held-out split (`scenes.held_out_scenes`), each rendered with jitter as in training.

    python scripts/demo_vae_ceiling.py --count 96 --vae pipelines/demo/weights/vae --vae /tmp/run/vae-phase1
    python scripts/demo_vae_ceiling.py --count 96 --failures /tmp/fails   # also save the images that fail

Runs on one torch thread by default: this machine's cores are shared.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo import classify, scenes  # noqa: E402


def held_out_images(count: int, seed: int = 7) -> tuple[list[scenes.Scene], np.ndarray]:
    """The checker's held-out scenes and one jittered rendering of each (seeded: the same every run)."""
    held_out = scenes.held_out_scenes(count, seed)
    images = np.stack([scenes.render(scene, np.random.default_rng(10_000 + index)) for index, scene in enumerate(held_out)])
    return held_out, images


def load_vae(folder: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, local_files_only=True).float().eval()


def round_trip(vae, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Each image encoded (posterior mean) and decoded again, uint8."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
            out.append(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def score(held_out: list[scenes.Scene], images: np.ndarray) -> tuple[dict[str, float], list[tuple[int, list[str], str]], dict[str, str]]:
    """Per-attribute accuracy (plus 'all'), each miss as (index, wrong attributes, what was read), and
    shape accuracy per drawn shape and size ("right/count")."""
    right, total = Counter(), Counter()
    shape_right, shape_total = Counter(), Counter()
    misses = []
    for index, (scene, image) in enumerate(zip(held_out, images)):
        analysis = classify.analyse(image)
        marks = classify.grade(scene, analysis)
        for name, ok in marks.items():
            total[name] += 1
            right[name] += ok
        if scene.kind == "shape":
            key = f"{scene.objects[0].size} {scene.objects[0].shape}"
            shape_total[key] += 1
            shape_right[key] += marks["shape"]
        total["all"] += 1
        right["all"] += all(marks.values())
        if not all(marks.values()):
            misses.append((index, [k for k, v in marks.items() if not v], _reading(analysis)))
    per_shape = {key: f"{shape_right[key]}/{shape_total[key]}" for key in sorted(shape_total)}
    return {name: right[name] / total[name] for name in total}, misses, per_shape


def _reading(analysis: classify.Analysis) -> str:
    if analysis.face:
        return f"face hair={analysis.hair} skin={analysis.skin} bg={analysis.background}"
    blob = analysis.blobs[0] if analysis.blobs else None
    if blob is None:
        return f"no object, bg={analysis.background}"
    return f"{blob.size} {blob.colour} {blob.shape} at {blob.position}, bg={analysis.background}"


def _describe(scene: scenes.Scene) -> str:
    if scene.kind == "face":
        return f"face hair={scene.hair} skin={scene.skin} bg={scene.background}"
    obj = scene.objects[0]
    return f"{obj.size} {obj.colour} {obj.shape} at {obj.position}, bg={scene.background}"


def save_failures(folder: Path, label: str, held_out, originals: np.ndarray, images: np.ndarray, misses, limit: int = 12) -> None:
    """Original | this image side by side (4x nearest-neighbour), one png per miss, plus a text index."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, wrong, reading in misses[:limit]:
        pair = np.concatenate([originals[index], np.full((128, 4, 3), 255, np.uint8), images[index]], axis=1)
        name = f"{label}-{index:03d}.png"
        Image.fromarray(pair).resize((pair.shape[1] * 3, pair.shape[0] * 3), Image.NEAREST).save(folder / name)
        lines.append(f"{name}: wanted {_describe(held_out[index])}; read {reading}; wrong: {', '.join(wrong)}")
    (folder / f"{label}.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=96, help="held-out scenes (the checker uses 96)")
    parser.add_argument("--vae", type=Path, action="append", default=[], help="a VAE folder (repeatable)")
    parser.add_argument("--failures", type=Path, help="save failing images (original | reconstruction) here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    held_out, originals = held_out_images(args.count)
    columns = {"originals": score(held_out, originals)}
    if args.failures:
        save_failures(args.failures, "originals", held_out, originals, originals, columns["originals"][1])
    for folder in args.vae:
        start = time.perf_counter()
        images = round_trip(load_vae(folder), originals)
        l1 = float(np.mean(np.abs(images.astype(np.float32) - originals.astype(np.float32)))) / 255
        label = folder.parent.name + "/" + folder.name
        columns[label] = score(held_out, images)
        print(f"{label}: mean L1 {l1:.4f} (0-1 scale), {time.perf_counter() - start:.1f} s", flush=True)
        if args.failures:
            save_failures(args.failures, label.replace("/", "_"), held_out, originals, images, columns[label][1])

    names = [n for n in ("colour", "shape", "position", "size", "background", "face", "hair", "skin", "all")
             if n in columns["originals"][0]]
    kinds = Counter(scene.kind for scene in held_out)
    print(f"\n{args.count} held-out scenes ({', '.join(f'{v} {k}' for k, v in kinds.items())})")
    print(f"{'attribute':<11}" + "".join(f"{label[-28:]:>30}" for label in columns))
    for name in names:
        print(f"{name:<11}" + "".join(f"{columns[label][0].get(name, float('nan')):>30.1%}" for label in columns))
    print("\nshape right per drawn shape and size")
    for key in columns["originals"][2]:
        print(f"{key:<14}" + "".join(f"{columns[label][2][key]:>30}" for label in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

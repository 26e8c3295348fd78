"""From reference photos to a PuLID hook: the face stage of a generation.

The face models (insightface detector + recognizer, BiSeNet, EVA-CLIP, IDFormer) load only when a
face is used, run once per new photo, and leave the compute device before denoising starts: the
onnxruntime sessions are released (their CUDA arena lives outside PyTorch's allocator, where
`empty_cache` cannot reach it) and the torch models go back to the CPU. The ID embeddings are
memoized by the photos' content hash, so a second generation with the same photo skips the stage.
This is what keeps the VAE decode as fast with PuLID as without it.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines import devices
from pipelines.caches.memo import MemoCache
from pipelines.errors import InvalidRequest, ModelLoadError
from pipelines.face.detect import FaceChoice, FaceDetector, FaceDetectorConfig, align_face, load_reference_image
from pipelines.face.encoders import EVA_FILE, PARSING_FILE, FaceEncoders, face_stage_dtype
from pipelines.face.eva_clip import EvaVisionConfig
from pipelines.face.files import face_file_status, missing_message, require_face_files
from pipelines.face.idformer import IDFormerConfig, IdentityEmbedding, encode_identity, placed_encoder
from pipelines.face.options import MAX_PHOTOS, FaceOptions
from pipelines.face.pulid_weights import PulidWeights, find_pulid_file, load_pulid_weights
from pipelines.families import Family

log = logging.getLogger("likeness")


@dataclass
class PhotoFace:
    """What the Face tab shows for one photo: the official demo's debug view."""

    source: str
    digest: str
    image: np.ndarray  # RGB as used for detection (after orientation, colour conversion, downscale)
    choice: FaceChoice
    aligned: np.ndarray  # 512x512 RGB crop
    parsing_input: np.ndarray | None = None  # the image that goes to EVA-CLIP (background white, face gray)
    notes: list[str] = field(default_factory=list)
    provider: str | None = None  # the onnxruntime provider the detector ran on


@dataclass(frozen=True)
class Identity:
    embedding: IdentityEmbedding  # CPU tensors
    digest: str  # short hash of the photos + choices + weights: for the infotext and cache keys
    notes: tuple[str, ...]
    from_memo: bool


def photo_digest(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()[:16]


def check_files_fit(weights: PulidWeights, eva: EvaVisionConfig, arcface_dim: int) -> None:
    """ModelLoadError naming the files when EVA-CLIP's (or the recognizer's) sizes do not fit the ID
    encoder of the PuLID file, e.g. a test-sized EVA-CLIP beside the full PuLID. Checked before the
    encoder runs, where torch would only say "mat1 and mat2 shapes cannot be multiplied"."""
    expected = weights.encoder.config
    if eva.width == expected.vit_dim and arcface_dim + eva.embed_dim == expected.id_cond_dim:
        return
    raise ModelLoadError(
        f"The face files do not fit together: {EVA_FILE} gives hidden states of width {eva.width} and a condition of "
        f"{arcface_dim + eva.embed_dim} (ArcFace {arcface_dim} + EVA-CLIP {eva.embed_dim}), but the ID encoder in "
        f"{weights.path.name} expects width {expected.vit_dim} and {expected.id_cond_dim} (the official files: 1024 and "
        f"512 + 768). Use the official {EVA_FILE}, glintr100.onnx and {weights.path.name} together."
    )


class FaceService:
    """Owned by the pipeline manager; one per app."""

    def __init__(self, models_dir: Path, device: torch.device, memo: MemoCache, gpu_mem_limit_mb: int = 2048,
                 idformer_config: IDFormerConfig | None = None):
        self.models_dir = Path(models_dir)
        # The IDFormer's sizes are not all readable from its file (heads); None = the official ones.
        self.idformer_config = idformer_config
        self.device = device
        self.memo = memo
        self.detector_config = FaceDetectorConfig(device=str(device) if device.type == "cuda" else "cpu", gpu_mem_limit_mb=gpu_mem_limit_mb)
        self._weights: dict[str, PulidWeights] = {}
        self._lock = threading.Lock()
        self.last_provider: str | None = None

    # -- files ---------------------------------------------------------------------------------

    def file_status(self, family: str | None = None):
        return face_file_status(self.models_dir, family)

    def missing(self, family: str | None = None) -> str:
        return missing_message(self.file_status(family))

    # -- detection (the Face tab's per-photo view) ---------------------------------------------

    def inspect(self, photos, face_index: tuple[int, ...] = (), *, parse: bool = True) -> list[PhotoFace]:
        """Detect, pick and align the face of each photo; the detector is released afterwards.

        With `parse` and the BiSeNet file present, also the image EVA-CLIP will see (the official
        demo's debug view); without the file that view is left out, never an error.
        """
        faces = self._detect(self._load_photos(photos), face_index)
        if parse and self._has(PARSING_FILE):
            encoders = FaceEncoders.load(self.models_dir, self.device, with_eva=False)
            try:
                for face in faces:
                    face.parsing_input = encoders.parse(face.aligned)[1]
            finally:
                encoders.release()
        return faces

    def _load_photos(self, photos) -> list[tuple[np.ndarray, list[str]]]:
        if not photos:
            raise InvalidRequest("Add a reference photo with a face (1 to 4 photos).")
        if len(photos) > MAX_PHOTOS:
            raise InvalidRequest(f"Use at most {MAX_PHOTOS} reference photos; got {len(photos)}.")
        loaded = []
        for photo in photos:
            notes: list[str] = []
            loaded.append((load_reference_image(photo, notes=notes), notes))
        return loaded

    def _detect(self, loaded: list[tuple[np.ndarray, list[str]]], face_index: tuple[int, ...]) -> list[PhotoFace]:
        detector = FaceDetector.from_models_dir(self.models_dir, self.detector_config)
        results = []
        try:
            for number, (rgb, notes) in enumerate(loaded):
                source = f"photo {number + 1}"
                index = face_index[number] if number < len(face_index) else 0
                choice = detector.find_face(rgb, source=source, index=index)
                aligned = align_face(rgb, choice.face.kps)
                results.append(PhotoFace(source, photo_digest(rgb), rgb, choice, aligned, None, notes + list(choice.notes),
                                         detector.provider))
            self.last_provider = detector.provider
        finally:
            detector.release()
        return results

    def _has(self, name: str) -> bool:
        return any(s.name == name and s.present for s in self.file_status())

    # -- identity ------------------------------------------------------------------------------

    def require_files(self, family: Family) -> None:
        """ModelNotFound naming every missing file (and its folder) that `family` needs."""
        require_face_files(self.models_dir, family.value)

    def weights(self, family: Family, unet=None, transformer=None) -> PulidWeights:
        with self._lock:
            if family.value not in self._weights:
                path = find_pulid_file(self.models_dir, family.value)
                self._weights[family.value] = load_pulid_weights(path, family.value, unet=unet, transformer=transformer,
                                                                     encoder_config=self.idformer_config)
            return self._weights[family.value]

    def identity(self, options: FaceOptions, family: Family, weights: PulidWeights) -> Identity:
        """The ID embeddings for the photos; from the memo, without running any face model, when
        the same photos (by content) and face choices were embedded before with these weights.
        Callers check the files first (`require_files`), before loading the PuLID weights."""
        loaded = self._load_photos(options.photos)
        key = (tuple(photo_digest(rgb) for rgb, _ in loaded), tuple(options.index_for(i) for i in range(len(loaded))), weights.tag)
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:10]
        # The digests are of the photos as prepared for detection (after the 1024 px resize), so a
        # change of that preparation is a new key by itself. The compute dtype is in the memo key
        # (not in the Face hash): an embedding made on another device/precision is never served.
        memo_key = (*key, str(face_stage_dtype(self.device, weights.family)))
        cached = self.memo.get(memo_key)
        if cached is not None:
            embedding, notes = cached
            return Identity(embedding, digest, notes, True)
        started = time.perf_counter()
        faces = self._detect(loaded, options.face_index)
        notes = tuple(note for f in faces for note in f.notes)
        embedding = self._embed(faces, weights)
        self.memo.put(memo_key, (embedding, notes), time.perf_counter() - started)
        return Identity(embedding, digest, notes, False)

    def _embed(self, faces: list[PhotoFace], weights: PulidWeights) -> IdentityEmbedding:
        """EVA-CLIP + IDFormer in the official precision of the weights' family (`face_stage_dtype`:
        float32 for SDXL; bfloat16 for FLUX.1 on a GPU), the ID condition built in that dtype as the
        official code does (ArcFace cast to it, EVA's embedding L2-normalised in it). The embeddings
        are handed back in float32 on the CPU (exact for bf16) and the hooks cast them."""
        dtype = face_stage_dtype(self.device, weights.family)
        encoders = FaceEncoders.load(self.models_dir, self.device, eva_dtype=dtype)
        encoder = None
        try:
            id_conds, hidden_states = [], []
            for face in faces:
                check_files_fit(weights, encoders.eva.config, face.choice.face.embedding.size)
                eva_embedding, hidden, parsing_input = encoders.encode(face.aligned)
                face.parsing_input = parsing_input
                arcface = torch.from_numpy(face.choice.face.embedding).reshape(1, -1).to(self.device, dtype)
                eva = torch.nn.functional.normalize(eva_embedding, dim=-1)
                id_conds.append(torch.cat([arcface, eva], dim=-1))
                hidden_states.append(hidden)
            encoder = placed_encoder(weights.encoder, self.device, dtype)
            with torch.no_grad():
                embedding = encode_identity(encoder, id_conds, hidden_states)
            return IdentityEmbedding(embedding.cond.float().cpu(), embedding.uncond.float().cpu())
        finally:
            # Nothing of the face stage may stay on the device for the denoiser and the VAE decode:
            # the placed IDFormer copy is dropped here (the kept one never left the CPU).
            del encoder
            encoders.release()
            devices.free_device_memory(self.device)

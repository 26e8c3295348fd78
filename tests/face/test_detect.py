"""Face detection, embedding, alignment and photo loading, on CPU with tiny antelopev2 stand-ins.

The tiny detector (pipelines/bench/tiny_onnx.py) reports faces planted at known places; the photos are
real ones shipped by installed packages (insightface's data/images, scikit-image's astronaut).
"""
from __future__ import annotations

import gc
import io
import logging
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch  # noqa: F401  (before insightface, as the app does)
from PIL import Image

import insightface
from insightface.app import FaceAnalysis
from pipelines.errors import InvalidRequest, ModelLoadError, ModelNotFound
from pipelines.face.detect import (
    ALIGN_BORDER_RGB,
    FFHQ_TEMPLATE_512,
    DetectedFace,
    FaceDetector,
    FaceDetectorConfig,
    FaceError,
    align_face,
    execution_providers,
    face_alignment_matrix,
    load_reference_image,
    pick_face,
)
from pipelines.bench import tiny_onnx

IMAGES = Path(insightface.__file__).parent / "data" / "images"
CPU = FaceDetectorConfig(cpu_threads=1)

# Faces in t1.jpg (1280x886, six people), in photo pixels, and the order of their box areas.
T1_BOXES = {
    "ross": (460, 250, 590, 400),  # 130 x 150
    "joey": (905, 55, 1025, 195),  # 120 x 140
    "chandler": (745, 320, 870, 450),  # 125 x 130
    "rachel": (60, 260, 170, 390),  # 110 x 130
    "monica": (270, 130, 380, 250),  # 110 x 120
    "phoebe": (1135, 265, 1240, 385),  # 105 x 120
}
T1_SCORES = (0.6, 0.95, 0.7, 0.8, 0.9, 0.75)  # not in size order: sorting must use the area
ASTRONAUT_BOX = (170, 62, 275, 167)
TOM_HANKS_BOX = (11, 20, 101, 110)  # the photo is an ArcFace-aligned 112x112 crop


def rgb(path: Path) -> np.ndarray:
    return load_reference_image(path)


def astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


def pack(folder: Path, image_shape, boxes, scores=None, **options) -> Path:
    return tiny_onnx.write_antelopev2(folder, tiny_onnx.planted_from_photo(image_shape, boxes, scores), **options)


def detector_for(folder: Path, config: FaceDetectorConfig = CPU) -> FaceDetector:
    return FaceDetector(folder / "scrfd_10g_bnkps.onnx", folder / "glintr100.onnx", config)


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return rgb(IMAGES / "t1.jpg")


@pytest.fixture(scope="module")
def t1_pack(tmp_path_factory, t1) -> Path:
    return pack(tmp_path_factory.mktemp("t1") / "antelopev2", t1.shape, list(T1_BOXES.values()), T1_SCORES)


# -- insightface routing of the tiny files ---------------------------------------------------


@pytest.mark.parametrize("normalise, mean, std", [(False, 127.5, 127.5), (True, 0.0, 1.0)])
def test_insightface_routes_the_tiny_pack(tmp_path, normalise, mean, std):
    folder = pack(tmp_path / "antelopev2", (640, 640), [(100, 100, 300, 320)], normalise=normalise)
    app = FaceAnalysis(name=str(folder), root=str(tmp_path), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))

    assert set(app.models) == {"detection", "recognition"}
    detection, recognition = app.models["detection"], app.models["recognition"]
    assert (type(detection).__name__, detection.taskname) == ("SCRFD", "detection")
    assert (detection.fmc, detection._feat_stride_fpn, detection._num_anchors, detection.use_kps) == (3, [8, 16, 32], 2, True)
    assert detection.static_input_size is None  # symbolic H and W, like the real file
    assert (type(recognition).__name__, recognition.taskname) == ("ArcFaceONNX", "recognition")
    assert recognition.input_size == (112, 112)
    assert (recognition.input_mean, recognition.input_std) == (mean, std)  # Sub/Mul node names decide

    faces = app.get(np.full((640, 640, 3), 128, np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, [100, 100, 300, 320], atol=1e-3)
    np.testing.assert_allclose(faces[0].kps, tiny_onnx.keypoints_for_box((100, 100, 300, 320)), atol=1e-3)
    assert faces[0].embedding.shape == (512,)
    # The static 640x640 copy insightface builds on first use was made from the rewritten graph.
    assert set(detection.resolution_sessions) == {(640, 640)}


def test_normalising_and_plain_recognizers_agree(tmp_path):
    """Sub/Mul inside the graph with raw pixels == insightface's (x - 127.5) / 127.5 outside."""
    image = rgb(IMAGES / "Tom_Hanks_54745.png")
    embeddings = []
    for normalise in (False, True):
        folder = pack(tmp_path / f"n{normalise}" / "antelopev2", image.shape, [TOM_HANKS_BOX], normalise=normalise)
        with detector_for(folder) as detector:
            embeddings.append(detector.detect(image)[0].embedding)
    np.testing.assert_allclose(embeddings[0], embeddings[1], rtol=1e-4, atol=1e-4)


# -- detection on real photos ----------------------------------------------------------------


def test_tom_hanks_one_face(tmp_path):
    image = rgb(IMAGES / "Tom_Hanks_54745.png")
    folder = pack(tmp_path / "antelopev2", image.shape, [TOM_HANKS_BOX])
    with detector_for(folder) as detector:
        faces = detector.detect(image)
        assert detector.provider == "CPUExecutionProvider"
        assert detector.providers == {"detection": ["CPUExecutionProvider"], "recognition": ["CPUExecutionProvider"]}
        assert detector.notes == []

    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.bbox, TOM_HANKS_BOX, atol=0.05)
    np.testing.assert_allclose(face.kps, tiny_onnx.keypoints_for_box(TOM_HANKS_BOX), atol=0.05)
    assert face.det_score == pytest.approx(0.9)
    assert face.area == pytest.approx(90 * 90, rel=1e-3)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.all(np.isfinite(face.embedding)) and np.linalg.norm(face.embedding) > 1.0  # raw, not unit
    assert np.linalg.norm(face.normed_embedding) == pytest.approx(1.0)
    # The keypoints sit where a face's are: eyes above the nose, nose above the mouth.
    eyes_y, nose_y, mouth_y = face.kps[:2, 1].mean(), face.kps[2, 1], face.kps[3:, 1].mean()
    assert eyes_y < nose_y < mouth_y and face.kps[0, 0] < face.kps[1, 0]


def test_group_photo_largest_first(t1, t1_pack):
    with detector_for(t1_pack) as detector:
        faces = detector.detect(t1)
        again = detector.detect(t1)

    assert len(faces) == 6
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    np.testing.assert_allclose(faces[0].bbox, T1_BOXES["ross"], atol=0.05)
    expected = sorted(T1_BOXES.values(), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    np.testing.assert_allclose([f.bbox for f in faces], expected, atol=0.05)
    assert faces[0].det_score == pytest.approx(0.6)  # the largest face is not the best-scored one
    # Deterministic, and each face gets its own embedding.
    np.testing.assert_array_equal(np.stack([f.embedding for f in faces]), np.stack([f.embedding for f in again]))
    normed = np.stack([f.normed_embedding for f in faces])
    similarity = normed @ normed.T
    assert np.all(similarity[~np.eye(6, dtype=bool)] < 0.999)


def test_pick_face_largest_by_default_and_any_other(t1, t1_pack):
    with detector_for(t1_pack) as detector:
        choice = detector.find_face(t1, source="t1.jpg")
        faces = list(choice.faces)
    assert choice.index == 0 and choice.face is faces[0] and len(faces) == 6
    assert any("6 faces found in t1.jpg; using the largest" in note for note in choice.notes)

    other = pick_face(faces, index=3, source="t1.jpg")
    np.testing.assert_allclose(other.face.bbox, T1_BOXES["rachel"], atol=0.05)
    assert "using face #4" in other.notes[0]
    with pytest.raises(FaceError, match="t1.jpg has 6 faces; there is no face #7"):
        pick_face(faces, index=6, source="t1.jpg")


def test_astronaut_face_and_alignment(tmp_path):
    image = astronaut()
    folder = pack(tmp_path / "antelopev2", image.shape, [ASTRONAUT_BOX])
    with detector_for(folder) as detector:
        face = detector.find_face(image, source="astronaut").face
    np.testing.assert_allclose(face.bbox, ASTRONAUT_BOX, atol=0.05)

    crop = align_face(image, face.kps)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    matrix = face_alignment_matrix(face.kps)
    mapped = np.hstack([face.kps, np.ones((5, 1))]) @ matrix.T
    np.testing.assert_allclose(mapped, FFHQ_TEMPLATE_512, atol=0.5)
    # The crop really is the face: it equals the photo warped around the face box, not the border.
    assert not np.any(np.all(crop == ALIGN_BORDER_RGB, axis=2)[200:400, 150:360])


def test_no_face_found_is_a_clear_error(t1, tmp_path):
    folder = pack(tmp_path / "antelopev2", t1.shape, [])
    with detector_for(folder) as detector:
        assert detector.detect(t1) == []
        with pytest.raises(FaceError, match=r"No face found in t1\.jpg\.") as caught:
            detector.find_face(t1, source="t1.jpg")
    assert isinstance(caught.value, InvalidRequest)


def test_tiny_face_refused_or_noted(tmp_path):
    image = astronaut()
    folder = pack(tmp_path / "antelopev2", image.shape, [(200, 90, 220, 110)])
    with detector_for(folder) as detector:
        faces = detector.detect(image)
        with pytest.raises(FaceError, match=r"only 20x20 px; Likeness needs at least 32x32 px"):
            detector.find_face(image, source="astronaut")
    relaxed = pick_face(faces, min_face_px=0, source="astronaut")
    assert any("is small (20x20 px)" in note for note in relaxed.notes)


# -- sessions, providers, memory -------------------------------------------------------------


def test_release_drops_every_session(t1, t1_pack):
    detector = detector_for(t1_pack)
    assert detector.sessions() == [] and not detector.loaded
    detector.detect(t1)
    held = detector.sessions()
    assert len(held) == 3  # recognizer, detector, detector's static 640x640 copy
    refs = [weakref.ref(session) for session in held]
    del held
    detector.release()
    gc.collect()
    assert not detector.loaded and detector.sessions() == []
    assert all(ref() is None for ref in refs)
    assert len(detector.detect(t1)) == 6  # loads again on demand
    detector.release()


def test_cuda_options_cap_the_arena():
    providers, options, note = execution_providers(
        FaceDetectorConfig(device="cuda:1", gpu_mem_limit_mb=512), available=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"] and note == ""
    assert options[0] == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(512 * 1024 * 1024)}
    assert execution_providers(FaceDetectorConfig(device="cpu"), available=["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == ["CPUExecutionProvider"]


def test_cuda_requested_without_a_cuda_build_runs_on_cpu_and_says_so(t1, t1_pack):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with detector_for(t1_pack, FaceDetectorConfig(device="cuda", cpu_threads=1)) as detector:
        assert len(detector.detect(t1)) == 6
        assert detector.provider == "CPUExecutionProvider"
        assert any("install onnxruntime-gpu in place of onnxruntime" in note for note in detector.notes)


def test_only_the_two_needed_files_are_loaded(t1, t1_pack, tmp_path):
    """Other .onnx files in the folder (antelopev2's extras, a stray recognizer) are not loaded."""
    with detector_for(t1_pack) as clean:
        expected = clean.detect(t1)[0].embedding
    folder = pack(tmp_path / "antelopev2", t1.shape, list(T1_BOXES.values()), T1_SCORES)
    tiny_onnx.onnx.save(tiny_onnx.recognizer_model(seed=99), folder / "arcface_stray.onnx")
    # insightface alone keeps the first file per task in name order: the stray one wins.
    app = FaceAnalysis(name=str(folder), root=str(tmp_path), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"])
    assert Path(app.models["recognition"].model_file).name == "arcface_stray.onnx"
    del app

    detector = detector_for(folder)
    faces = detector.detect(t1)
    assert Path(detector._app.models["recognition"].model_file).name == "glintr100.onnx"
    np.testing.assert_array_equal(faces[0].embedding, expected)
    staging = detector._staging
    assert staging is not None and staging.is_dir()
    detector.release()
    assert not staging.exists()


def test_from_models_dir_finds_nested_pack_and_names_missing_files(tmp_path, t1):
    with pytest.raises(ModelNotFound) as caught:
        FaceDetector.from_models_dir(tmp_path / "models", insightface_root=tmp_path / "home")
    message = str(caught.value)
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message
    assert str(tmp_path / "models" / "insightface" / "antelopev2") in message

    nested = pack(tmp_path / "models" / "insightface" / "antelopev2" / "antelopev2", t1.shape, [T1_BOXES["ross"]])
    detector = FaceDetector.from_models_dir(tmp_path / "models", CPU, insightface_root=tmp_path / "home")
    assert detector.detector_path == nested / "scrfd_10g_bnkps.onnx"
    assert len(detector.detect(t1)) == 1
    assert detector._staging is None  # a folder holding just the two files is used as is
    detector.release()


def test_broken_model_file_is_a_load_error(tmp_path, t1):
    folder = tmp_path / "antelopev2"
    folder.mkdir()
    (folder / "scrfd_10g_bnkps.onnx").write_bytes(b"not onnx")
    tiny_onnx.onnx.save(tiny_onnx.recognizer_model(), folder / "glintr100.onnx")
    with pytest.raises(ModelLoadError, match="Could not load the face models"):
        detector_for(folder).detect(t1)


def test_detect_rejects_non_rgb_arrays(t1_pack):
    with pytest.raises(ValueError, match="RGB uint8"):
        detector_for(t1_pack).detect(np.zeros((64, 64), np.uint8))


# -- alignment -------------------------------------------------------------------------------


def test_alignment_undoes_rotation_and_scale():
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = (FFHQ_TEMPLATE_512 - 256) @ rotation.T * 0.4 + [300, 200]
    image = np.zeros((500, 600, 3), np.uint8)
    for x, y in kps:
        cv2.circle(image, (int(round(x)), int(round(y))), 3, (255, 0, 0), -1)

    for size in (512, 256):
        crop = align_face(image, kps, size=size)
        assert crop.shape == (size, size, 3)
        for x, y in FFHQ_TEMPLATE_512 * size / 512:  # each dot lands on its template point
            assert crop[int(round(y)), int(round(x)), 0] > 200
    # A face filling a small photo: the crop reaches past its edges, filled with facexlib's grey.
    white = np.full((200, 200, 3), 255, np.uint8)
    crop = align_face(white, (FFHQ_TEMPLATE_512 - 256) * 0.5 + 100)
    assert tuple(crop[0, 0]) == ALIGN_BORDER_RGB and tuple(crop[256, 256]) == (255, 255, 255)


def test_alignment_rejects_degenerate_keypoints():
    with pytest.raises(FaceError, match="degenerate"):
        align_face(np.zeros((64, 64, 3), np.uint8), np.zeros((5, 2)))


# -- reference photos: every kind of file a user may hand in ---------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hanks() -> Image.Image:
    return Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB")


def test_rgb_path_bytes_and_pil_agree(hanks):
    from_path = load_reference_image(IMAGES / "Tom_Hanks_54745.png")
    assert from_path.shape == (112, 112, 3) and from_path.dtype == np.uint8
    np.testing.assert_array_equal(load_reference_image(encode(hanks, "PNG")), from_path)
    np.testing.assert_array_equal(load_reference_image(hanks), from_path)


def test_grayscale(hanks):
    gray = load_reference_image(encode(hanks.convert("L"), "PNG"))
    assert gray.shape == (112, 112, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    np.testing.assert_array_equal(gray[..., 0], np.asarray(hanks.convert("L")))


def test_transparency_becomes_white(hanks):
    rgba = hanks.convert("RGBA")
    alpha = np.full((112, 112), 255, np.uint8)
    alpha[:, :56] = 0
    rgba.putalpha(Image.fromarray(alpha))
    out = load_reference_image(encode(rgba, "PNG"))
    assert np.all(out[:, :56] == 255)
    np.testing.assert_array_equal(out[:, 56:], np.asarray(hanks)[:, 56:])

    la = hanks.convert("LA")
    la.putalpha(Image.fromarray(alpha))
    out = load_reference_image(encode(la, "PNG"))
    assert np.all(out[:, :56] == 255) and out.shape == (112, 112, 3)
    np.testing.assert_array_equal(load_reference_image(la.convert("La")), out)  # premultiplied

    palette = hanks.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    index = palette.getpixel((0, 0))
    out = load_reference_image(encode(palette, "PNG", transparency=index))
    assert tuple(out[0, 0]) == (255, 255, 255)

    numpy_rgba = np.dstack([np.asarray(hanks), alpha])
    out = load_reference_image(numpy_rgba)
    assert np.all(out[:, :56] == 255)


def test_cmyk(hanks):
    out = load_reference_image(encode(hanks.convert("CMYK"), "TIFF"))
    np.testing.assert_array_equal(out, np.asarray(hanks))
    jpeg = load_reference_image(encode(hanks.convert("CMYK"), "JPEG", quality=95))
    assert jpeg.shape == (112, 112, 3) and np.abs(jpeg.astype(int) - np.asarray(hanks)).mean() < 8


def test_sixteen_bit_gray_is_scaled_not_clipped():
    values = np.array([[0, 257 * 64], [32896, 65535]], np.uint16).repeat(20, 0).repeat(20, 1)
    ok, png = cv2.imencode(".png", values)
    out = load_reference_image(png.tobytes())
    assert Image.open(io.BytesIO(png.tobytes())).mode == "I;16"
    assert out[0, 0, 0] == 0 and out[0, 39, 0] == 64 and out[39, 0, 0] == 128 and out[39, 39, 0] == 255

    big_endian = Image.frombytes("I;16B", (40, 40), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(load_reference_image(big_endian), out)
    int32 = Image.fromarray(values.astype(np.int32))
    assert int32.mode == "I"
    np.testing.assert_array_equal(load_reference_image(int32), out)
    # 16-bit storage holding 8-bit values (PIL's own convert("I;16") makes these) stays as is.
    eight_in_sixteen = Image.open(IMAGES / "Tom_Hanks_54745.png").convert("L").convert("I;16")
    np.testing.assert_array_equal(load_reference_image(eight_in_sixteen)[..., 0], np.asarray(eight_in_sixteen.convert("L")))


def test_forty_eight_bit_png_and_uint16_arrays():
    rgb16 = np.zeros((40, 40, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 65535, 257 * 100, 0
    ok, png = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR
    out = load_reference_image(png.tobytes())
    assert out.dtype == np.uint8 and tuple(out[5, 5]) == (255, 100, 0)
    assert tuple(load_reference_image(rgb16)[5, 5]) == (255, 100, 0)
    assert tuple(load_reference_image(np.full((40, 40, 3), 0.5, np.float32))[0, 0]) == (128, 128, 128)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    out = load_reference_image(encode(image, "JPEG", exif=exif, quality=95))
    assert out.shape == (60, 40, 3)  # portrait now
    assert out[5, 20, 0] > 200 and out[55, 20, 2] > 200  # red on top, blue below


def official_resize_long(image: np.ndarray, resize_long_edge: int) -> np.ndarray:
    """PuLID's `pulid/utils.py:resize_numpy_image_long`, as the official apps call it with 1024."""
    h, w = image.shape[:2]
    if max(h, w) <= resize_long_edge:
        return image
    k = resize_long_edge / max(h, w)
    return cv2.resize(image, (int(w * k), int(h * k)), interpolation=cv2.INTER_LANCZOS4)


def test_huge_photo_is_downscaled_and_says_so(caplog):
    notes: list[str] = []
    with caplog.at_level(logging.INFO, logger="likeness"):
        out = load_reference_image(np.zeros((3000, 5000, 3), np.uint8), name="big.png", notes=notes)
    assert out.shape == (614, 1024, 3)  # 3000 * 1024 / 5000 = 614.4: truncated, as the official int()
    assert notes == ["big.png is 5000x3000 px; downscaled to 1024x614 (long side 1024) for face detection."]
    assert notes[0] in caplog.text


def test_photos_are_resized_as_the_official_apps_do(hanks):
    """Long side 1024 with Lanczos (INTER_LANCZOS4), truncated sizes, small photos untouched; pixel
    for pixel the official `resize_numpy_image_long(image, 1024)` of the decoded photo."""
    rng = np.random.default_rng(3)
    big = cv2.resize(np.asarray(hanks.convert("RGB")), (1999, 1337), interpolation=cv2.INTER_CUBIC)  # a real photo's texture
    big = np.clip(big.astype(np.int16) + rng.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)
    ours = load_reference_image(big)
    official = official_resize_long(big, 1024)
    # 1337 * (1024 / 1999) = 684.9 -> 684, and 1999 * (1024 / 1999) = 1023.99999... -> 1023: the official
    # truncation can even take a pixel off the long side; followed as it is, so the crops are the same.
    assert ours.shape == official.shape == (684, 1023, 3)
    np.testing.assert_array_equal(ours, official)
    # Not the area filter Likeness used before (nor any other): the filter itself is the official one.
    assert not np.array_equal(ours, cv2.resize(big, (1023, 684), interpolation=cv2.INTER_AREA))
    # Portrait photos: the long side is the height.
    tall = np.ascontiguousarray(big.transpose(1, 0, 2))
    np.testing.assert_array_equal(load_reference_image(tall), official_resize_long(tall, 1024))
    # At or below 1024 nothing changes: the official code never enlarges.
    for shape in ((1024, 700, 3), (112, 112, 3), (800, 1024, 3)):
        small = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(load_reference_image(small), small)


def test_big_jpegs_decode_at_full_size_before_the_resize(hanks):
    """No reduced-size JPEG decode (PIL draft): the official code resizes the fully decoded photo."""
    photo = Image.fromarray(cv2.resize(np.asarray(hanks.convert("RGB")), (4200, 2800), interpolation=cv2.INTER_CUBIC))
    jpeg = encode(photo, "JPEG", quality=92)
    notes: list[str] = []
    out = load_reference_image(jpeg, notes=notes)
    full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    np.testing.assert_array_equal(out, official_resize_long(full, 1024))
    assert out.shape == (682, 1024, 3)
    assert notes[0].startswith("the uploaded photo is 4200x2800 px; downscaled to 1024x682")


@pytest.mark.parametrize(
    "source, message",
    [
        (b"just some text, not a photo", "is not an image Likeness can read"),
        (b"", "is not an image Likeness can read"),
        (12345, "Expected a photo"),
        (np.zeros((10, 10, 3), np.uint8), r"only 10x10 px, too small"),
        (np.zeros((20, 20, 2), np.uint8), "is not an image"),
    ],
)
def test_bad_inputs_raise_face_errors(source, message):
    with pytest.raises(FaceError, match=message):
        load_reference_image(source)


def test_corrupt_missing_and_non_image_files(tmp_path, hanks):
    jpeg = encode(hanks, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(FaceError, match=r"cut\.jpg is damaged or incomplete"):
        load_reference_image(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(FaceError, match=r"notes\.txt is not an image Likeness can read"):
        load_reference_image(text)
    with pytest.raises(FaceError, match=r"absent\.png was not found"):
        load_reference_image(tmp_path / "absent.png")
    with pytest.raises(FaceError, match="is a folder"):
        load_reference_image(tmp_path)


def test_detected_face_is_plain_data():
    face = DetectedFace(np.array([0, 0, 40, 50], np.float32), np.zeros((5, 2), np.float32), 0.9, np.ones(512, np.float32), 2000.0)
    assert face.size == (40.0, 50.0)
    assert pick_face([face]).notes == ("The face in the photo is small (40x50 px); likeness may be weaker than with a closer photo.",)


def test_huge_photo_is_refused_from_its_header_before_decoding(tmp_path):
    import psutil

    from tests.pipelines.test_images import write_huge_png

    path = tmp_path / "huge.png"
    write_huge_png(path)  # 13000x13000, a few hundred kB on disk, ~500 MB as RGB
    before = psutil.Process().memory_info().rss
    with pytest.raises(FaceError, match=r"huge\.png is 13000x13000 pixels \(169 megapixels\).*at most 100 megapixels"):
        load_reference_image(path)
    with pytest.raises(FaceError, match="at most 100 megapixels"):
        load_reference_image(path.read_bytes())
    assert psutil.Process().memory_info().rss - before < 50 * 2**20, "the pixels were decoded"

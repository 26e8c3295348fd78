"""Tiny ONNX stand-ins for insightface's antelopev2 pack, built with `onnx.helper` (CPU tests).

insightface 2.1 routes every `*.onnx` file of a pack folder by the file's shape alone
(`insightface/model_zoo/model_zoo.py`, `ModelRouter.get_model`): 5 or more outputs -> SCRFD
detector; a square input of at least 112 px, divisible by 16, with one output -> ArcFace
recognizer. These two graphs are built to be routed exactly like the real files:

- `scrfd_10g_bnkps.onnx`: input `1x3xHxW` (H and W symbolic, like the real file), 9 outputs in
  SCRFD's order (scores, box distances, keypoint offsets; each for strides 8, 16, 32), so
  insightface picks fmc=3, two anchors per cell and keypoints. The outputs are constant maps
  that put each `PlantedFace` at a known place of the 640x640 detector input (the letterboxed
  photo); the maps are sliced (or zero-padded) to the input's size, so insightface's static
  640x640 re-export of the graph (`_static_scrfd_model`) works too.
- `glintr100.onnx`: input `Nx3x112x112`, one output `Nx512`: 16x16 average pooling (7x7x3 =
  147 numbers) times a seeded 147x512 matrix, so different crops give different embeddings.
  With `normalise=True` the graph starts with nodes named `Sub...` and `Mul...`, which makes
  insightface feed raw 0..255 pixels (input mean 0, std 1) instead of (x - 127.5) / 127.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipelines.face.detect import FFHQ_TEMPLATE_512

DET_SIZE = 640
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime from 1.14 on

# The square face box that the FFHQ 5-point template sits in (512 space): eyes at 30%/70% of the
# width and 35% of the height, mouth corners at 76%, like a detector's box around a real face.
_TEMPLATE_BOX = np.array([96.0, 128.0, 416.0, 448.0])


@dataclass(frozen=True)
class PlantedFace:
    """One face the tiny detector reports, in pixels of the 640x640 detector input."""

    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float = 0.9
    kps: tuple[tuple[float, float], ...] | None = None  # 5 points; default: template fitted to the box

    def keypoints(self) -> np.ndarray:
        if self.kps is not None:
            return np.asarray(self.kps, dtype=np.float64).reshape(5, 2)
        return keypoints_for_box(self.bbox)


def keypoints_for_box(bbox: Sequence[float]) -> np.ndarray:
    """The FFHQ template scaled (uniformly) and moved into `bbox`: an exact similarity of it."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    scale = ((x2 - x1) + (y2 - y1)) / 2 / (_TEMPLATE_BOX[2] - _TEMPLATE_BOX[0])
    template_center = (_TEMPLATE_BOX[:2] + _TEMPLATE_BOX[2:]) / 2
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    return center + (FFHQ_TEMPLATE_512 - template_center) * scale


def det_scale(image_shape: Sequence[int], det_size: int = DET_SIZE) -> float:
    """insightface's letterbox factor (SCRFD._detect_candidates): photo pixel -> detector pixel."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if height / width > 1.0:
        new_height = det_size
    else:
        new_height = int(det_size * (height / width))
    return new_height / height


def planted_from_photo(image_shape: Sequence[int], boxes: Sequence[Sequence[float]], scores: Sequence[float] | None = None) -> list[PlantedFace]:
    """Faces given as boxes in photo pixels, moved to detector-input pixels."""
    scale = det_scale(image_shape)
    scores = list(scores) if scores is not None else [0.9] * len(boxes)
    return [PlantedFace(tuple(float(v) * scale for v in box), score) for box, score in zip(boxes, scores)]


def _stride_for(bbox: Sequence[float]) -> int:
    side = min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    return 32 if side >= 96 else 16 if side >= 40 else 8


def _canvases(faces: Sequence[PlantedFace]) -> dict[int, dict[str, np.ndarray]]:
    """stride -> {"score": (G,G,A,1), "bbox": (G,G,A,4), "kps": (G,G,A,10)} for a 640 input."""
    maps = {}
    for stride in STRIDES:
        g = DET_SIZE // stride
        maps[stride] = {
            "score": np.zeros((g, g, NUM_ANCHORS, 1), np.float32),
            "bbox": np.ones((g, g, NUM_ANCHORS, 4), np.float32),
            "kps": np.zeros((g, g, NUM_ANCHORS, 10), np.float32),
        }
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        stride = _stride_for(face.bbox)
        g = DET_SIZE // stride
        gx = int(np.clip(round((x1 + x2) / 2 / stride), 0, g - 1))
        gy = int(np.clip(round((y1 + y2) / 2 / stride), 0, g - 1))
        canvas = maps[stride]
        free = [a for a in range(NUM_ANCHORS) if canvas["score"][gy, gx, a, 0] == 0]
        if not free:
            raise ValueError(f"too many planted faces on one cell of stride {stride}: {face}")
        anchor = free[0]
        cx, cy = gx * stride, gy * stride  # insightface's anchor centre for this cell
        canvas["score"][gy, gx, anchor, 0] = face.score
        canvas["bbox"][gy, gx, anchor] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / stride
        canvas["kps"][gy, gx, anchor] = ((face.keypoints() - [cx, cy]) / stride).reshape(-1)
    return maps


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(array, name=f"{name}_value"))


def detector_model(faces: Sequence[PlantedFace]) -> onnx.ModelProto:
    """An SCRFD-shaped graph (9 outputs) that reports `faces` for a 640x640 input."""
    nodes = [
        helper.make_node("Shape", ["input.1"], ["shape"], name="shape"),
        _const("two", np.array([2], np.int64)),
        _const("four", np.array([4], np.int64)),
        _const("zero", np.array([0], np.int64)),
        helper.make_node("Slice", ["shape", "two", "four", "zero"], ["hw"], name="hw"),
        _const("zeros4", np.zeros(4, np.int64)),
        _const("zeros2", np.zeros(2, np.int64)),
        _const("axes01", np.array([0, 1], np.int64)),
        _const("starts00", np.zeros(2, np.int64)),
    ]
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride, canvas in _canvases(faces).items():
        g = DET_SIZE // stride
        s = f"_{stride}"
        nodes += [
            _const("stride" + s, np.array([stride, stride], np.int64)),
            _const("grid" + s, np.array([g, g], np.int64)),
            helper.make_node("Div", ["hw", "stride" + s], ["cells" + s], name="cells" + s),
            helper.make_node("Sub", ["cells" + s, "grid" + s], ["excess" + s], name="excess" + s),
            helper.make_node("Max", ["excess" + s, "zeros2"], ["grow" + s], name="grow" + s),
            helper.make_node("Concat", ["zeros4", "grow" + s, "zeros2"], ["pads" + s], name="pads" + s, axis=0),
        ]
        for kind, array in canvas.items():
            name = f"{kind}{s}"
            width = array.shape[-1]
            nodes += [
                _const(f"{name}_map", array),
                _const(f"{name}_shape", np.array([-1, width], np.int64)),
                helper.make_node("Pad", [f"{name}_map", "pads" + s], [f"{name}_padded"], name=f"{name}_pad", mode="constant"),
                helper.make_node("Slice", [f"{name}_padded", "starts00", "cells" + s, "axes01"], [f"{name}_cells"], name=f"{name}_slice"),
                helper.make_node("Reshape", [f"{name}_cells", f"{name}_shape"], [name], name=f"{name}_flat"),
            ]
            outputs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors{s}", width]))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],  # SCRFD's order: all scores, all boxes, all kps
    )
    return _finish(graph)


def recognizer_model(seed: int = 0, normalise: bool = False) -> onnx.ModelProto:
    """An ArcFace-shaped graph: Nx3x112x112 -> Nx512, seeded weights."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((147, 512)) / np.sqrt(147)).astype(np.float32)
    nodes, source = [], "data"
    if normalise:
        # insightface looks for node *names* starting with Sub/Mul among the first 8 nodes.
        nodes += [
            _const("mean", np.array(127.5, np.float32)),
            _const("scale", np.array(1 / 127.5, np.float32)),
            helper.make_node("Sub", ["data", "mean"], ["centered"], name="Sub_mean"),
            helper.make_node("Mul", ["centered", "scale"], ["normalised"], name="Mul_scale"),
        ]
        source = "normalised"
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], name="pool", kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        _const("weight", weight),
        helper.make_node("MatMul", ["flat", "weight"], ["fc1"], name="embed"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])],
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="likeness-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def write_antelopev2(folder: Path, faces: Sequence[PlantedFace], seed: int = 0, normalise: bool = False) -> Path:
    """Write `scrfd_10g_bnkps.onnx` and `glintr100.onnx` into `folder` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(detector_model(faces), folder / "scrfd_10g_bnkps.onnx")
    onnx.save(recognizer_model(seed, normalise), folder / "glintr100.onnx")
    return folder

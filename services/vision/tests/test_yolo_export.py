"""Our ultralytics-export decoding matches a plain reference decoding on a real YOLOv8 model."""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from edge_vision import DetectOptions, Detector, OnnxRuntimeModel, create_backend
from PIL import Image

SCORE, IOU, INPUT = 0.25, 0.7, 640


def reference_detect(model: Path, data: bytes) -> list[tuple[int, float, list[float]]]:
    """ultralytics' predict path written out plainly: letterbox (grey 114), NCHW float 0-1,
    per-candidate best class, greedy per-class NMS, un-letterbox, clip. Loops, no cv2."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    gain = min(INPUT / w, INPUT / h)
    nw, nh = round(w * gain), round(h * gain)
    left, top = round((INPUT - nw) / 2 - 0.1), round((INPUT - nh) / 2 - 0.1)
    canvas = np.full((INPUT, INPUT, 3), 114, dtype=np.uint8)
    canvas[top : top + nh, left : left + nw] = np.asarray(image.resize((nw, nh), Image.BILINEAR))
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: tensor})
    rows = output[0]  # (4 + nc, N)

    candidates = []
    for j in range(rows.shape[1]):
        cx, cy, bw, bh = (float(v) for v in rows[:4, j])
        class_id, score = 0, float(rows[4, j])
        for c in range(1, rows.shape[0] - 4):
            if float(rows[4 + c, j]) > score:
                class_id, score = c, float(rows[4 + c, j])
        if score >= SCORE:
            candidates.append(
                (score, class_id, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            )
    candidates.sort(key=lambda c: -c[0])

    def overlap(a: list[float], b: list[float]) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union if union > 0 else 0.0

    kept: list[tuple[float, int, list[float]]] = []
    for score, class_id, box in candidates:
        if all(k[1] != class_id or overlap(k[2], box) <= IOU for k in kept):
            kept.append((score, class_id, box))

    found = []
    for score, class_id, (x0, y0, x1, y1) in kept:
        back = [(x0 - left) / gain, (y0 - top) / gain, (x1 - left) / gain, (y1 - top) / gain]
        back = [min(max(v, 0.0), float(w if i % 2 == 0 else h)) for i, v in enumerate(back)]
        found.append((class_id, score, back))
    return found


@pytest.fixture(scope="module")
def yolo(fall_model: Path) -> Detector:
    spec = OnnxRuntimeModel(
        id="fall-detection",
        path=str(fall_model),
        decoder="yolo",
        resize="letterbox",
        resample="bilinear",
    )
    return Detector(spec, create_backend(spec))


def test_names_come_from_onnx_metadata(yolo: Detector) -> None:
    """Class names are read from the export's `names` metadata; input size from its shape."""
    assert yolo.labels == {0: "Normal", 1: "Fall"}
    assert yolo.backend.input_size == (640, 640)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_matches_reference_decoding(
    yolo: Detector, fall_model: Path, photo: Callable[[str], bytes], name: str
) -> None:
    """Same detections as the reference, box for box: class, score, original-pixel box."""
    data = photo(name)
    ours = yolo.detect(
        data, DetectOptions(score_threshold=SCORE, iou_threshold=IOU, max_detections=300)
    ).detections
    reference = reference_detect(fall_model, data)
    assert reference, "the reference found nobody: the comparison would be empty"
    assert len(ours) == len(reference)
    for mine, (class_id, score, box) in zip(ours, reference, strict=True):
        assert mine.class_id == class_id
        assert mine.label == yolo.labels[class_id]
        assert mine.score == pytest.approx(score, abs=1e-5)
        assert mine.box == pytest.approx(box, abs=0.01)

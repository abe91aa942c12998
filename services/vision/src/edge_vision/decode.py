"""Raw model outputs -> candidate boxes (x0, y0, x1, y1 in model-input pixels), scores, classes.

One function per output family, all returning `Candidates`; thresholds, NMS and the mapping
back to the original image happen after, the same for every family (edge_vision.postprocess).
"""

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

DecoderKind = Literal["ssd", "ssd_raw", "yolo", "yolo_split"]

DFL_BINS = 16
"""Bins per box side in YOLOv8's distribution focal loss head (ultralytics' reg_max)."""
SPLIT_BRANCHES = 3
"""rknn_model_zoo's YOLOv8 export: one branch per stride (8, 16, 32)."""


class Candidates(NamedTuple):
    boxes: np.ndarray
    """(N, 4) float32 x0, y0, x1, y1 in model-input pixels."""
    scores: np.ndarray
    """(N,) float32."""
    class_ids: np.ndarray
    """(N,) int64, the model's own class numbering."""


def decode_ssd(outputs: Sequence[np.ndarray], input_size: tuple[int, int]) -> Candidates:
    """TFLite detection post-process outputs: boxes (ymin, xmin, ymax, xmax in 0-1), classes,
    scores, count. Boxes can stray slightly outside 0-1 and are clipped."""
    boxes, classes, scores, count = (np.asarray(o) for o in outputs)
    n = min(int(count.reshape(-1)[0]), scores.shape[-1])
    yxyx = np.clip(boxes.reshape(-1, 4)[:n], 0.0, 1.0)
    width, height = input_size
    xyxy = yxyx[:, [1, 0, 3, 2]] * np.array([width, height, width, height], dtype=np.float32)
    return Candidates(
        xyxy.astype(np.float32),
        scores.reshape(-1)[:n].astype(np.float32),
        np.rint(classes.reshape(-1)[:n]).astype(np.int64),
    )


def decode_ssd_raw(
    outputs: Sequence[np.ndarray],
    input_size: tuple[int, int],
    *,
    anchors: np.ndarray,
    scales: np.ndarray,
) -> Candidates:
    """An SSD cut before its detection post-process (what runs on an NPU): box encodings
    `[1, N, 4]` (ty, tx, th, tw) and class logits `[1, N, 1 + classes]`, background first.

    The TF Object Detection API's box coder, as the TFLite post-process applies it: with
    `anchors` (N, 4: y-centre, x-centre, height, width, 0-1) and `scales` (4: y, x, h, w;
    10, 10, 5, 5 for this SSD), centre = t / scale * anchor size + anchor centre and
    size = exp(t / scale) * anchor size. A candidate's class is its best non-background one,
    its score that logit's sigmoid (the argmax first: the sigmoid is monotonic, so one per
    anchor instead of one per class). Boxes are clipped to 0-1, as `decode_ssd` does.
    """
    encodings, logits = (np.asarray(o, dtype=np.float32) for o in outputs)
    t = encodings.reshape(-1, 4) / scales
    centre = t[:, :2] * anchors[:, 2:] + anchors[:, :2]
    half = np.exp(t[:, 2:]) * anchors[:, 2:] / 2
    yxyx = np.clip(np.concatenate([centre - half, centre + half], axis=1), 0.0, 1.0)
    width, height = input_size
    xyxy = yxyx[:, [1, 0, 3, 2]] * np.array([width, height, width, height], dtype=np.float32)
    classes = logits.reshape(len(t), -1)[:, 1:]
    class_ids = classes.argmax(axis=1)
    best = classes[np.arange(len(classes)), class_ids]
    scores = 1.0 / (1.0 + np.exp(-best))
    return Candidates(
        xyxy.astype(np.float32), scores.astype(np.float32), class_ids.astype(np.int64)
    )


def decode_yolo(outputs: Sequence[np.ndarray], input_size: tuple[int, int]) -> Candidates:
    """ultralytics' single-tensor export `[1, 4 + nc, N]`: cx, cy, w, h in input pixels, then
    one (already sigmoid) score per class; a candidate's score is its best class's."""
    rows = np.asarray(outputs[0], dtype=np.float32)[0].T  # (N, 4 + nc)
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    class_scores = rows[:, 4:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), class_ids]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return Candidates(boxes, scores, class_ids.astype(np.int64))


def dfl_distances(box: np.ndarray) -> np.ndarray:
    """(4 * bins, H, W) logits -> (4, H, W) expected distances (left, top, right, bottom), in
    grid cells: a softmax over each side's bins, then its mean bin index."""
    sides = box.reshape(4, DFL_BINS, *box.shape[1:])
    sides = np.exp(sides - sides.max(axis=1, keepdims=True))
    sides /= sides.sum(axis=1, keepdims=True)
    bins = np.arange(DFL_BINS, dtype=np.float32).reshape(1, DFL_BINS, 1, 1)
    return (sides * bins).sum(axis=1)


def decode_yolo_split(outputs: Sequence[np.ndarray], input_size: tuple[int, int]) -> Candidates:
    """rknn_model_zoo's YOLOv8 outputs, NCHW, per branch: DFL box logits `[1, 64, H, W]`,
    class scores `[1, nc, H, W]` (sigmoid applied), optionally a score sum `[1, 1, H, W]`
    (a fast-reject hint for C code; not needed here)."""
    if not outputs or len(outputs) % SPLIT_BRANCHES:
        raise ValueError(f"expected {SPLIT_BRANCHES} branches of outputs, got {len(outputs)}")
    per_branch = len(outputs) // SPLIT_BRANCHES
    all_boxes, all_scores = [], []
    for branch in range(SPLIT_BRANCHES):
        box = np.asarray(outputs[per_branch * branch], dtype=np.float32)[0]
        cls = np.asarray(outputs[per_branch * branch + 1], dtype=np.float32)[0]
        grid_h, grid_w = box.shape[1:]
        stride_x, stride_y = input_size[0] / grid_w, input_size[1] / grid_h
        dist = dfl_distances(box)
        col, row = np.meshgrid(np.arange(grid_w) + 0.5, np.arange(grid_h) + 0.5)
        xyxy = np.stack(
            [
                (col - dist[0]) * stride_x,
                (row - dist[1]) * stride_y,
                (col + dist[2]) * stride_x,
                (row + dist[3]) * stride_y,
            ]
        )
        all_boxes.append(xyxy.reshape(4, -1).T)
        all_scores.append(cls.reshape(cls.shape[0], -1).T)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    class_scores = np.concatenate(all_scores)
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(class_scores)), class_ids]
    return Candidates(boxes, scores, class_ids.astype(np.int64))


Decoder = Callable[[Sequence[np.ndarray], tuple[int, int]], Candidates]

DECODERS: dict[DecoderKind, Decoder] = {
    "ssd": decode_ssd,
    "yolo": decode_yolo,
    "yolo_split": decode_yolo_split,
}
"""The decoders that need nothing but the outputs."""


def make_decoder(kind: DecoderKind, priors: str = "") -> Decoder:
    """The decoder for `kind`; `ssd_raw` reads its anchors and scales from `priors`, an `.npz`
    written beside the cut model (tools/rknn/cut.py)."""
    if kind != "ssd_raw":
        return DECODERS[kind]
    if not priors:
        raise ValueError("the ssd_raw decoder needs a priors file (anchors and scales)")
    with np.load(Path(priors)) as saved:
        anchors = saved["anchors"].astype(np.float32)
        scales = saved["scales"].astype(np.float32)
    if anchors.ndim != 2 or anchors.shape[1] != 4 or scales.shape != (4,):
        raise ValueError(f"{priors}: anchors {anchors.shape} / scales {scales.shape} malformed")
    return partial(decode_ssd_raw, anchors=anchors, scales=scales)

"""An SSD cut before its post-process (box encodings + class logits + anchors) decodes to known
boxes, then through the shared class-aware NMS."""

from pathlib import Path

import numpy as np
import pytest
from edge_common.protocol.vision import DetectOptions
from edge_vision.decode import decode_ssd_raw, make_decoder
from edge_vision.postprocess import select
from edge_vision.preprocess import Placement

SCALES = np.array([10.0, 10.0, 5.0, 5.0], dtype=np.float32)
INPUT = (300, 300)
CLASSES = 5  # plus the background column


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def encode(boxes: list[tuple[float, float, float, float]], anchors: np.ndarray) -> np.ndarray:
    """The TF OD API box coder's inverse: (ymin, xmin, ymax, xmax) 0-1 -> (ty, tx, th, tw)."""
    yxyx = np.array(boxes, dtype=np.float64)
    centre = (yxyx[:, :2] + yxyx[:, 2:]) / 2
    size = yxyx[:, 2:] - yxyx[:, :2]
    t_centre = (centre - anchors[:, :2]) / anchors[:, 2:] * SCALES[:2]
    t_size = np.log(size / anchors[:, 2:]) * SCALES[2:]
    return np.concatenate([t_centre, t_size], axis=1).astype(np.float32)[None]


# (ymin, xmin, ymax, xmax) 0-1, class (0-based, background excluded), score; anchor near each
OBJECTS = [
    ((0.10, 0.20, 0.50, 0.60), 0, 0.90),
    ((0.12, 0.22, 0.52, 0.62), 3, 0.80),  # overlaps the first, another class: both survive
    ((0.11, 0.21, 0.51, 0.61), 0, 0.70),  # overlaps the first, same class: suppressed
    ((0.60, 0.05, 0.95, 0.30), 2, 0.60),
]
ANCHORS = np.array(
    [  # y-centre, x-centre, height, width: deliberately off the objects, so the coder matters
        [0.25, 0.45, 0.30, 0.50],
        [0.35, 0.40, 0.50, 0.30],
        [0.30, 0.40, 0.40, 0.40],
        [0.80, 0.20, 0.20, 0.20],
        [0.50, 0.50, 0.10, 0.10],  # an empty anchor: background wins
    ],
    dtype=np.float32,
)


def outputs() -> list[np.ndarray]:
    boxes = [box for box, _, _ in OBJECTS] + [(0.45, 0.45, 0.55, 0.55)]
    encodings = encode(boxes, ANCHORS.astype(np.float64))
    logits = np.full((1, len(ANCHORS), 1 + CLASSES), -12.0, dtype=np.float32)
    for i, (_, class_id, score) in enumerate(OBJECTS):
        logits[0, i, 1 + class_id] = logit(score)
    logits[0, :, 0] = 6.0  # a confident background column must never become a class
    return [encodings, logits]


def test_decodes_known_boxes_classes_and_scores() -> None:
    """Every anchor's box comes back in input pixels with its best class and sigmoid score."""
    boxes, scores, class_ids = decode_ssd_raw(outputs(), INPUT, anchors=ANCHORS, scales=SCALES)
    assert boxes.shape == (len(ANCHORS), 4)
    for i, ((y0, x0, y1, x1), class_id, score) in enumerate(OBJECTS):
        assert boxes[i] == pytest.approx([x0 * 300, y0 * 300, x1 * 300, y1 * 300], abs=1e-3)
        assert class_ids[i] == class_id
        assert scores[i] == pytest.approx(score, abs=1e-5)
    assert scores[-1] < 1e-4  # only background there


def test_non_square_input_and_clipping() -> None:
    """x scales by the width, y by the height; a box past the edge is clipped to the input."""
    anchors = np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    encodings = encode([(-0.2, 0.5, 0.4, 1.3)], anchors.astype(np.float64))
    logits = np.array([[[0.0, logit(0.9)]]], dtype=np.float32)
    boxes, _, _ = decode_ssd_raw([encodings, logits], (640, 480), anchors=anchors, scales=SCALES)
    assert boxes[0] == pytest.approx([320.0, 0.0, 640.0, 192.0], abs=1e-3)


def test_select_keeps_other_classes_and_maps_back() -> None:
    """Through select: same-class overlap suppressed, other classes kept, original pixels."""
    candidates = decode_ssd_raw(outputs(), INPUT, anchors=ANCHORS, scales=SCALES)
    # a 600x900 (w x h) original stretched to 300x300
    placement = Placement(scale_x=0.5, scale_y=300 / 900)
    labels = {0: "person", 2: "car", 3: "dog"}
    found = select(candidates, DetectOptions(), labels, placement, (600, 900))
    assert [(d.label, round(d.score, 3)) for d in found] == [
        ("person", 0.9),
        ("dog", 0.8),
        ("car", 0.6),
    ]
    assert found[0].box == pytest.approx((120.0, 90.0, 360.0, 450.0), abs=1e-2)


def test_make_decoder_reads_priors(tmp_path: Path) -> None:
    """make_decoder('ssd_raw', priors) decodes with the anchors and scales saved beside a model."""
    priors = tmp_path / "m.priors.npz"
    np.savez(priors, anchors=ANCHORS, scales=SCALES)
    decode = make_decoder("ssd_raw", str(priors))
    direct = decode_ssd_raw(outputs(), INPUT, anchors=ANCHORS, scales=SCALES)
    for got, want in zip(decode(outputs(), INPUT), direct, strict=True):
        np.testing.assert_array_equal(got, want)


def test_make_decoder_refuses_missing_or_malformed_priors(tmp_path: Path) -> None:
    """No priors, or anchors not (N, 4), is a load-time error rather than a wrong decode."""
    with pytest.raises(ValueError, match="priors"):
        make_decoder("ssd_raw")
    bad = tmp_path / "bad.npz"
    np.savez(bad, anchors=ANCHORS[:, :3], scales=SCALES)
    with pytest.raises(ValueError, match="malformed"):
        make_decoder("ssd_raw", str(bad))

"""rknn_model_zoo's per-scale YOLOv8 outputs (DFL boxes + class scores) decode to known boxes."""

import numpy as np
import pytest
from edge_common.protocol.vision import DetectOptions
from edge_vision.decode import decode_yolo_split
from edge_vision.postprocess import select
from edge_vision.preprocess import Placement

BOXES = [
    ((100.0, 120.0, 180.0, 200.0, 0, 0.9), 8),  # 80x80 px: small, on stride 8
    ((300.25, 40.5, 420.75, 260.0, 2, 0.8), 16),
    ((200.0, 150.0, 600.0, 630.0, 1, 0.7), 32),  # large, on stride 32
    ((150.0, 100.0, 550.0, 560.0, 0, 0.6), 32),  # IoU 0.62 with the previous, another class
]


@pytest.mark.parametrize("with_score_sum", [False, True])
@pytest.mark.parametrize("input_size", [(640, 640), (640, 384)])
def test_decodes_known_boxes(split_outputs, with_score_sum: bool, input_size) -> None:
    """Every known box comes back with its class and score; 2 or 3 outputs per branch."""
    inside = [(b, s) for b, s in BOXES if b[3] <= input_size[1]]
    outputs = split_outputs(inside, input_size=input_size, with_score_sum=with_score_sum)
    assert len(outputs) == (9 if with_score_sum else 6)
    boxes, scores, class_ids = decode_yolo_split(outputs, input_size)
    cells = sum((input_size[0] // s) * (input_size[1] // s) for s in (8, 16, 32))
    assert boxes.shape == (cells, 4)
    hit = scores > 0.5
    assert hit.sum() == len(inside)
    order = np.argsort(-scores[hit])
    for (x0, y0, x1, y1, class_id, score), _ in sorted(inside, key=lambda b: -b[0][5]):
        i = order[0]
        order = order[1:]
        assert boxes[hit][i] == pytest.approx([x0, y0, x1, y1], abs=1e-3)
        assert class_ids[hit][i] == class_id
        assert scores[hit][i] == pytest.approx(score)


def test_select_maps_to_original_and_keeps_other_classes(split_outputs) -> None:
    """Through select: overlapping boxes of different classes survive, boxes un-letterboxed."""
    outputs = split_outputs(BOXES)
    # a 1280x1280 original letterboxed to 640x640: gain 0.5, no padding
    placement = Placement(scale_x=0.5, scale_y=0.5)
    labels = {0: "person", 1: "car", 2: "dog"}
    found = select(
        decode_yolo_split(outputs, (640, 640)), DetectOptions(), labels, placement, (1280, 1280)
    )
    assert [(d.label, round(d.score, 3)) for d in found] == [
        ("person", 0.9),
        ("dog", 0.8),
        ("car", 0.7),
        ("person", 0.6),
    ]
    assert found[2].box == pytest.approx((400.0, 300.0, 1200.0, 1260.0), abs=1e-2)


def test_wrong_output_count_is_refused() -> None:
    """Outputs that are not 3 equal branches are an error, not a silent mis-decode."""
    with pytest.raises(ValueError, match="branches"):
        decode_yolo_split([np.zeros((1, 64, 80, 80), np.float32)] * 4, (640, 640))

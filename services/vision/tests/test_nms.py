"""Class-aware NMS: what is kept, in which order."""

import numpy as np
import pytest
from edge_vision.nms import nms


def run(boxes: list, scores: list, classes: list, iou: float = 0.5, limit: int = 100) -> list:
    return nms(
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(scores, dtype=np.float32),
        np.asarray(classes, dtype=np.int64),
        iou,
        limit,
    ).tolist()


def test_empty() -> None:
    """No candidates, no detections (and no error)."""
    assert run([], [], []) == []


def test_identical_boxes_same_class_keep_the_best() -> None:
    """Copies of one box leave only the best-scoring one."""
    box = [10, 10, 50, 50]
    assert run([box, box, box], [0.6, 0.9, 0.7], [1, 1, 1]) == [1]


def test_identical_boxes_equal_scores_keep_the_first() -> None:
    """Ties are broken by input order, so the result is deterministic."""
    box = [10, 10, 50, 50]
    assert run([box, box], [0.8, 0.8], [0, 0]) == [0]


def test_different_classes_never_suppress_each_other() -> None:
    """A cup on a table: overlapping boxes of two classes both survive."""
    assert run(
        [[0, 0, 100, 100], [0, 0, 100, 100], [5, 5, 95, 95]], [0.9, 0.8, 0.7], [0, 1, 2]
    ) == [
        0,
        1,
        2,
    ]


@pytest.mark.parametrize(("threshold", "kept"), [(0.5, [0]), (0.7, [0, 1])])
def test_iou_threshold_is_per_call(threshold: float, kept: list[int]) -> None:
    """Boxes overlapping by IoU 0.6 are suppressed at 0.5 and kept at 0.7."""
    # [0, 0, 100, 100] and [0, 25, 100, 125]: intersection 7500, union 12500, IoU 0.6
    assert run([[0, 0, 100, 100], [0, 25, 100, 125]], [0.9, 0.8], [3, 3], threshold) == kept


def test_max_detections_keeps_the_best() -> None:
    """Disjoint boxes come back best first, cut at the limit."""
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(5)]
    assert run(boxes, [0.1, 0.5, 0.3, 0.9, 0.7], [0] * 5, limit=3) == [3, 4, 1]


def test_degenerate_boxes_do_not_divide_by_zero() -> None:
    """Zero-area boxes have IoU 0 with everything: kept, no NaN."""
    assert run([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], [0, 0]) == [0, 1]

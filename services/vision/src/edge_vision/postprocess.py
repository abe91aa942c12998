"""Candidates -> the request's detections: score and class filters, NMS, original pixels."""

import numpy as np
from edge_common.protocol.vision import Detection, DetectOptions

from edge_vision.decode import Candidates
from edge_vision.labels import Labels, label_of
from edge_vision.nms import nms
from edge_vision.preprocess import Placement


def select(
    candidates: Candidates,
    options: DetectOptions,
    labels: Labels,
    placement: Placement,
    size: tuple[int, int],
) -> list[Detection]:
    """Detections best first, boxes in the original image of `size` (width, height).

    NMS runs in model-input pixels, before boxes are clipped to the image, as ultralytics does:
    clipping first would change the overlaps it compares.
    """
    boxes, scores, class_ids = candidates
    wanted = scores >= options.score_threshold
    if options.classes is not None:
        allowed = [cid for cid, name in labels.items() if name in options.classes]
        wanted &= np.isin(class_ids, allowed)
    boxes, scores, class_ids = boxes[wanted], scores[wanted], class_ids[wanted]
    kept = nms(boxes, scores, class_ids, options.iou_threshold, options.max_detections)
    original = placement.to_original(boxes[kept], *size)
    return [
        Detection(
            label=label_of(labels, int(class_ids[i])),
            class_id=int(class_ids[i]),
            score=float(scores[i]),
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        )
        for i, box in zip(kept, original, strict=True)
    ]

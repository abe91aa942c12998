"""The shipped SSD-MobileNet-v2 on onnxruntime finds the labelled objects in sample photos."""

import io
from collections.abc import Callable

import numpy as np
import pytest
from edge_vision import DetectOptions, Detector
from edge_vision.nms import iou_one_to_many
from PIL import Image

# Boxes recorded in models/PROVENANCE.md (x0, y0, x1, y1 in original pixels).
EXPECTED = {
    "astronaut": [("person", (11, 7, 374, 511))],
    "chelsea": [("cat", (5, 1, 410, 297))],
    "coffee": [("cup", (170, 10, 407, 310)), ("dining table", (0, 2, 600, 396))],
    "motorcycle_left": [("motorcycle", (110, 68, 679, 452))],
    "grace_hopper": [("tie", (224, 419, 288, 538)), ("person", (0, 14, 511, 593))],
}
SIZES = {
    "astronaut": (512, 512),
    "chelsea": (451, 300),
    "coffee": (600, 400),
    "motorcycle_left": (741, 500),
    "grace_hopper": (512, 600),
}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(iou_one_to_many(np.asarray(a), np.asarray([b]))[0])


def assert_found(detections: list, expected: list[tuple[str, tuple[int, ...]]]) -> None:
    for label, box in expected:
        matches = [d for d in detections if d.label == label and iou(d.box, box) >= 0.5]
        assert matches, f"no {label} with IoU >= 0.5 against {box} in {detections}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_finds_labelled_objects(ssd: Detector, photo: Callable[[str], bytes], name: str) -> None:
    """Each recorded label is detected at score >= 0.5 with IoU >= 0.5 against its box."""
    result = ssd.detect(photo(name), DetectOptions(score_threshold=0.5))
    assert (result.width, result.height) == SIZES[name]
    assert_found(result.detections, EXPECTED[name])
    assert all(d.score >= 0.5 for d in result.detections)
    for d in result.detections:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= result.width
        assert 0 <= y0 <= y1 <= result.height


@pytest.mark.parametrize("colour", [(128, 128, 128), (0, 0, 0), (255, 255, 255)])
def test_blank_image_has_no_detection(
    ssd: Detector, encode: Callable[..., bytes], colour: tuple[int, int, int]
) -> None:
    """A uniform image yields nothing above the default threshold."""
    blank = encode(Image.new("RGB", (300, 300), colour))
    assert ssd.detect(blank).detections == []


def test_class_filter_and_max_detections(ssd: Detector, photo: Callable[[str], bytes]) -> None:
    """`classes` keeps only the named labels; `max_detections` keeps the best ones."""
    only_tables = ssd.detect(photo("coffee"), DetectOptions(classes=frozenset({"dining table"})))
    assert [d.label for d in only_tables.detections] == ["dining table"]
    best = ssd.detect(photo("coffee"), DetectOptions(max_detections=1))
    assert [d.label for d in best.detections] == ["cup"]
    low = ssd.detect(photo("coffee"), DetectOptions(score_threshold=0.05))
    assert len(low.detections) > 2
    assert [d.score for d in low.detections] == sorted(
        (d.score for d in low.detections), reverse=True
    )


def test_exif_rotated_photo_boxes_in_displayed_pixels(
    ssd: Detector, photo: Callable[[str], bytes], encode: Callable[..., bytes]
) -> None:
    """A JPEG stored sideways with EXIF orientation 6 is detected as displayed, boxes included."""
    upright = Image.open(io.BytesIO(photo("motorcycle_left"))).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    result = ssd.detect(encode(sideways, "JPEG", quality=95, exif=exif))
    assert (result.width, result.height) == SIZES["motorcycle_left"]
    assert_found(result.detections, EXPECTED["motorcycle_left"])

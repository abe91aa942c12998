"""The vision protocol, per detection request (see edge_common.wire for the shared parts):

router -> `vision.detect.<model>` (request/reply): DetectRequest, naming `stream_to`
worker -> reply: Accepted, or a micro service error (wire.ErrorCode: invalid_image and
          image_too_large for a bad image)
worker -> `stream_to`: Alive while it waits for the NPU, then exactly one Detected or
          Failed
router -> `vision.cancel.<request_id>`, `vision.alive.<instance>`: as for llm
"""

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from edge_common.wire import PROTOCOL_VERSION, Alive, Failed, Wire, model_token

SERVICE: Final = "vision"
DEFAULT_MODEL: Final = "ssd-mobilenet-v2-coco"
"""The detector every vision worker serves when configured with none."""
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]


class DetectOptions(Wire):
    """Per-request post-processing knobs."""

    score_threshold: Unit = 0.5
    """Detections scoring below this are dropped."""
    iou_threshold: Unit = 0.45
    """Same-class boxes overlapping a better one by more than this IoU are suppressed."""
    classes: frozenset[str] | None = None
    """Keep only these labels; None keeps every class."""
    max_detections: Annotated[int, Meta(ge=1, le=1000)] = 100
    """At most this many detections, best first."""


class Detection(Wire):
    """One object, its box in the original image's pixels (after EXIF orientation)."""

    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1; 0 <= x0 <= x1 <= width, 0 <= y0 <= y1 <= height."""


class Timings(Wire):
    """Wall time of each stage, in milliseconds."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


class DetectResult(Wire):
    """Detections best first, the image size they refer to, and where the time went."""

    detections: list[Detection]
    width: int
    height: int
    timings: Timings


class DetectRequest(Wire, tag="detect", kw_only=True):
    v: int = PROTOCOL_VERSION
    request_id: str
    model: str
    image: bytes
    """The encoded image (PNG, JPEG, WebP, BMP, GIF)."""
    options: DetectOptions = DetectOptions()
    stream_to: str = ""
    """Inbox for the events; the transport fills it in."""


class Detected(Wire, tag="detected", kw_only=True):
    """The answer: the job's last event."""

    model: str
    result: DetectResult
    n: int = 0
    """Numbered like the llm protocol's Delta.n."""


Event = Detected | Failed | Alive
decode_request = msgspec.msgpack.Decoder(DetectRequest).decode
decode_event = msgspec.msgpack.Decoder(Event).decode


def detect_subject(model: str) -> str:
    """`vision.detect.<model>`, the id escaped as for llm (wire.model_token)."""
    return f"{SERVICE}.detect.{model_token(model)}"


class VisionStats(Wire):
    """What a vision instance adds to its micro STATS (each endpoint's `data`)."""

    resident: list[str] = msgspec.field(default_factory=list)
    """Detectors loaded now."""
    switch_s: float = 0.0
    """Seconds a detector switch takes (EWMA of the load with its evictions, the other
    workers' included)."""

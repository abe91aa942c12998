"""Settings of the vision service (`EDGE_VISION_*`, see edge_common.settings)."""

import msgspec
from edge_common.settings import WorkerSettings

from edge_vision.backends import ModelSpec


class VisionSettings(WorkerSettings, frozen=True, kw_only=True):
    port: int = 8102
    """Port of the /health and /metrics HTTP server."""
    models: list[ModelSpec] = msgspec.field(default_factory=list)
    """Detectors served, as a JSON list (`type` picks the backend of each: onnxruntime or
    rknnlite); empty = the bundled SSD-MobileNet-v2 COCO on the CPU."""
    pinned: str = ""
    """Detector kept loaded at all times; empty = the first of `models`. The others load on
    demand within the board's memory budget (edge_common.residency)."""
    stall_s: float = 10.0
    """A detection that has not finished this long after it started is aborted (a wedged
    NPU call; a CPU detection takes tens of milliseconds)."""
    max_image_mb: float = 5.0
    """Largest encoded image."""
    max_image_pixels: int = 40_000_000
    """Most pixels (width x height) of an image."""

"""Object detection for the edge gateway: image bytes in, labelled boxes in original pixels out.

No NATS here: `Detector` (preprocess -> backend -> decode -> NMS) is the logic the `vision`
service wraps. Backends are built only through `create_backend(spec)`.
"""

from edge_common.protocol.vision import Detection, DetectOptions, DetectResult, Timings

from edge_vision.backends import ModelSpec, OnnxRuntimeModel, RknnLiteModel, create_backend
from edge_vision.catalog import default_model
from edge_vision.detector import Detector
from edge_vision.errors import BackendError, ImageTooLarge, InvalidImage, VisionError
from edge_vision.preprocess import ImageLimits

__all__ = [
    "BackendError",
    "DetectOptions",
    "DetectResult",
    "Detection",
    "Detector",
    "ImageLimits",
    "ImageTooLarge",
    "InvalidImage",
    "ModelSpec",
    "OnnxRuntimeModel",
    "RknnLiteModel",
    "Timings",
    "VisionError",
    "create_backend",
    "default_model",
]

"""Detection backends, one module each (Frigate's pattern). `create_backend(spec)` is the only
door in; a backend's runtime is imported when it is built, so a missing SDK disables only it."""

from edge_vision.backends.base import Backend, ModelBase
from edge_vision.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeModel
from edge_vision.backends.rknnlite import RknnLiteBackend, RknnLiteModel

ModelSpec = OnnxRuntimeModel | RknnLiteModel
"""A model entry in settings, told apart by its `type` tag."""

__all__ = [
    "Backend",
    "ModelBase",
    "ModelSpec",
    "OnnxRuntimeModel",
    "RknnLiteModel",
    "create_backend",
]


def create_backend(spec: ModelSpec) -> Backend:
    """Load `spec`'s model on its runtime; raises BackendError when that is impossible."""
    match spec:
        case OnnxRuntimeModel():
            return OnnxRuntimeBackend(spec)
        case RknnLiteModel():
            return RknnLiteBackend(spec)

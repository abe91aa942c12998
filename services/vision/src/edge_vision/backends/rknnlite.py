"""NPU backend: a `.rknn` model through rknn-toolkit-lite2's `RKNNLite` (aarch64 boards only).

The SDK is imported when a backend is built, never at import time: elsewhere it is not
installed (the `npu` extra is empty off aarch64) and only this backend is unavailable.
The NPU takes NHWC uint8 RGB; any normalisation was baked into the model at conversion.
"""

from typing import Annotated

import numpy as np
from msgspec import Meta

from edge_vision.backends.base import ModelBase, Size
from edge_vision.errors import BackendError


class RknnLiteModel(ModelBase, frozen=True, kw_only=True, tag="rknnlite"):
    input_size: Size
    """(width, height) the model was converted for (RKNNLite cannot be asked)."""
    core_mask: Annotated[int, Meta(ge=0, le=0xFFFF)] = 0
    """RKNNLite's NPU core mask: 0 = let the driver choose, else bit n = core n
    (RK3576: 1 = core 0, 2 = core 1, 3 = both)."""


class RknnLiteBackend:
    def __init__(self, spec: RknnLiteModel) -> None:
        try:
            from rknnlite.api import RKNNLite
        except ImportError as exc:
            raise BackendError(
                "the rknnlite backend needs rknn-toolkit-lite2: an aarch64 board with "
                "edge-vision[npu] installed"
            ) from exc
        self.input_size = spec.input_size
        self.metadata: dict[str, str] = {}
        self._rknn = RKNNLite()
        # The SDK reports failure as a non-zero return code, not an exception.
        if (ret := self._rknn.load_rknn(spec.path)) != 0:
            self._rknn.release()
            raise BackendError(f"RKNNLite.load_rknn({spec.path}) returned {ret}")
        if (ret := self._rknn.init_runtime(core_mask=spec.core_mask)) != 0:
            self._rknn.release()
            raise BackendError(f"RKNNLite.init_runtime(core_mask={spec.core_mask}) returned {ret}")

    def infer(self, image: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(image[np.newaxis], dtype=np.uint8)
        outputs = self._rknn.inference(inputs=[batch])
        if outputs is None:  # the SDK logs the reason and returns None
            raise BackendError("RKNNLite.inference failed")
        return [np.asarray(output) for output in outputs]

    def close(self) -> None:
        self._rknn.release()

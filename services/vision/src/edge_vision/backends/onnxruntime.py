"""CPU backend: any ONNX detector through onnxruntime (the default here and in CI).

The input's layout (NHWC/NCHW), dtype and size are read from the model, so one backend serves
the int8 SSD (NHWC uint8) and ultralytics exports (NCHW float, 0-1) alike.
"""

from typing import Annotated

import numpy as np
from msgspec import Meta

from edge_vision.backends.base import ModelBase
from edge_vision.errors import BackendError

_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeModel(ModelBase, frozen=True, kw_only=True, tag="onnxruntime"):
    threads: Annotated[int, Meta(ge=0)] = 1
    """Intra-op threads; 1 keeps the other cores for the LLM and the router, 0 = all cores."""
    input_scale: float = 1 / 255
    """Multiplier applied to the 0-255 pixels when the model takes floats."""


class OnnxRuntimeBackend:
    def __init__(self, spec: OnnxRuntimeModel) -> None:
        import onnxruntime  # lazily: ~0.2 s to import, and not needed by the NPU backend

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        try:
            self._session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
                spec.path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's pybind errors share no useful base class
            raise BackendError(f"onnxruntime could not load {spec.path}: {exc}") from exc
        (model_input,) = self._session.get_inputs()
        self._input_name = model_input.name
        shape = model_input.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise BackendError(f"{spec.path}: input shape {shape} is not a fixed 4-D image")
        self._channels_first = shape[1] == 3
        height, width = shape[2:] if self._channels_first else shape[1:3]
        self.input_size = (width, height)
        self._dtype = _DTYPES.get(model_input.type)
        if self._dtype is None:
            raise BackendError(f"{spec.path}: input type {model_input.type} is not supported")
        self._scale = spec.input_scale
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)

    def infer(self, image: np.ndarray) -> list[np.ndarray]:
        batch = image[np.newaxis]
        if self._channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        tensor = np.ascontiguousarray(batch, dtype=self._dtype)
        if self._dtype is not np.uint8:
            tensor *= self._dtype(self._scale)
        return self._session.run(None, {self._input_name: tensor})

    def close(self) -> None:
        del self._session

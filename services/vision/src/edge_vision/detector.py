"""`Detector`: image bytes -> detections, one model on one backend (preprocess -> infer ->
decode -> select). Blocking; the service runs it in a worker thread."""

import time
from pathlib import Path

from edge_common.protocol.vision import DetectOptions, DetectResult, Timings

from edge_vision.backends import Backend, ModelSpec
from edge_vision.decode import DECODERS
from edge_vision.labels import Labels, labels_from_metadata, read_labels
from edge_vision.postprocess import select
from edge_vision.preprocess import ImageLimits, fit, open_image


class Detector:
    """Runs `spec`'s model on an already built `backend` (see `create_backend`)."""

    def __init__(
        self, spec: ModelSpec, backend: Backend, *, limits: ImageLimits | None = None
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.limits = limits or ImageLimits()
        metadata = backend.metadata
        self.labels: Labels = (
            read_labels(Path(spec.labels)) if spec.labels else labels_from_metadata(metadata)
        )
        self._decode = DECODERS[spec.decoder]

    def detect(self, data: bytes, options: DetectOptions | None = None) -> DetectResult:
        """Detections in `data` (an encoded image), boxes in its pixels as a viewer shows it.

        Raises InvalidImage / ImageTooLarge for bad input, BackendError when the runtime fails.
        """
        options = options or DetectOptions()
        started = time.perf_counter()
        image = open_image(data, self.limits)
        size = image.size
        spec = self.spec
        pixels, placement = fit(
            image, self.backend.input_size, spec.resize, spec.resample, spec.pad_value
        )
        preprocessed = time.perf_counter()
        outputs = self.backend.infer(pixels)
        inferred = time.perf_counter()
        candidates = self._decode(outputs, self.backend.input_size)
        detections = select(candidates, options, self.labels, placement, size)
        done = time.perf_counter()
        return DetectResult(
            detections=detections,
            width=size[0],
            height=size[1],
            timings=Timings(
                preprocess_ms=(preprocessed - started) * 1000,
                inference_ms=(inferred - preprocessed) * 1000,
                postprocess_ms=(done - inferred) * 1000,
            ),
        )

    def close(self) -> None:
        self.backend.close()

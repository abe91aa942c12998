"""`Detector`: image bytes -> detections, one model on one backend (preprocess -> infer ->
decode -> select). Blocking; the service runs it in a worker thread. `ResidentDetector` is
one the service's Residency loads and unloads (edge_common.residency)."""

import time
from pathlib import Path

import msgspec
import numpy as np
from edge_common.protocol.vision import DetectOptions, DetectResult, Timings
from PIL import Image

from edge_vision.backends import Backend, ModelSpec, create_backend
from edge_vision.decode import make_decoder
from edge_vision.labels import Labels, labels_from_metadata, read_labels
from edge_vision.postprocess import select
from edge_vision.preprocess import ImageLimits, Placement, fit, open_image


class Opened(msgspec.Struct, frozen=True, kw_only=True):
    """An image decoded and checked, not yet fitted to a model's input."""

    image: Image.Image
    decode_ms: float


def open_checked(data: bytes, limits: ImageLimits) -> Opened:
    """`data` (an encoded image) decoded, oriented, RGB.

    Raises InvalidImage / ImageTooLarge for bad input: cheap to call at accept time."""
    started = time.perf_counter()
    image = open_image(data, limits)
    return Opened(image=image, decode_ms=(time.perf_counter() - started) * 1000)


class Prepared(msgspec.Struct, frozen=True, kw_only=True):
    """An image ready for the model: its input tensor and how to map boxes back."""

    pixels: np.ndarray
    placement: Placement
    size: tuple[int, int]
    """The original (oriented) image's width and height."""
    preprocess_ms: float


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
        self._decode = make_decoder(spec.decoder, spec.priors)

    def prepare(self, data: bytes) -> "Prepared":
        """`data` (an encoded image) decoded and fitted to the model's input.

        Raises InvalidImage / ImageTooLarge for bad input."""
        return self.fit(open_checked(data, self.limits))

    def fit(self, opened: Opened) -> "Prepared":
        """An opened image fitted to the model's input."""
        started = time.perf_counter()
        spec, image = self.spec, opened.image
        pixels, placement = fit(
            image, self.backend.input_size, spec.resize, spec.resample, spec.pad_value
        )
        return Prepared(
            pixels=pixels,
            placement=placement,
            size=image.size,
            preprocess_ms=opened.decode_ms + (time.perf_counter() - started) * 1000,
        )

    def run(self, prepared: "Prepared", options: DetectOptions | None = None) -> DetectResult:
        """Detections in a prepared image, boxes in its pixels as a viewer shows it.

        Raises BackendError when the runtime fails."""
        options = options or DetectOptions()
        started = time.perf_counter()
        outputs = self.backend.infer(prepared.pixels)
        inferred = time.perf_counter()
        candidates = self._decode(outputs, self.backend.input_size)
        detections = select(candidates, options, self.labels, prepared.placement, prepared.size)
        done = time.perf_counter()
        return DetectResult(
            detections=detections,
            width=prepared.size[0],
            height=prepared.size[1],
            timings=Timings(
                preprocess_ms=prepared.preprocess_ms,
                inference_ms=(inferred - started) * 1000,
                postprocess_ms=(done - inferred) * 1000,
            ),
        )

    def detect(self, data: bytes, options: DetectOptions | None = None) -> DetectResult:
        """prepare, then run: detections in `data`, an encoded image."""
        return self.run(self.prepare(data), options)

    def close(self) -> None:
        self.backend.close()


class ResidentDetector:
    """A detector loaded on demand: its backend is built by load() and freed by unload()."""

    def __init__(self, spec: ModelSpec, limits: ImageLimits) -> None:
        self.spec = spec
        self.limits = limits
        self.footprint_mb = spec.memory_mb or max(
            1, round(Path(spec.path).stat().st_size * 1.2 / 2**20)
        )
        self.detector: Detector | None = None

    def load(self) -> None:
        if self.detector is None:
            self.detector = Detector(self.spec, create_backend(self.spec), limits=self.limits)

    def unload(self) -> None:
        if self.detector is not None:
            self.detector.close()
            self.detector = None

"""The rknnlite backend against a double of rknn-toolkit-lite2's `RKNNLite`.

The double honours the SDK's contract as Rockchip documents and ships it: `load_rknn` and
`init_runtime` return 0 or a negative error code (they do not raise), `init_runtime` takes a
core mask, `inference(inputs=[...])` takes NHWC uint8 batches and returns a list of numpy
outputs in the model's output order (NCHW for a converted ONNX), or None when it fails.
"""

import importlib.util
import io
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from edge_vision import BackendError, Detector, RknnLiteModel, create_backend
from PIL import Image

VALID_RK3576_MASKS = {0, 1, 2, 3}  # auto, core 0, core 1, both


class RKNNLiteDouble:
    """Stands in for `rknnlite.api.RKNNLite`; replays canned outputs for any valid input."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_0_1 = 0, 1, 2, 3
    instances: ClassVar[list["RKNNLiteDouble"]] = []
    outputs: ClassVar[list[np.ndarray] | None] = None
    input_shape: ClassVar[tuple[int, ...]] = (1, 640, 640, 3)

    def __init__(self) -> None:
        self.path: str | None = None
        self.core_mask: int | None = None
        self.inputs: list[np.ndarray] = []
        self.released = False
        RKNNLiteDouble.instances.append(self)

    def load_rknn(self, path: str) -> int:
        if not Path(path).is_file():
            return -1
        self.path = path
        return 0

    def init_runtime(self, core_mask: int = 0) -> int:
        if self.path is None or core_mask not in VALID_RK3576_MASKS:
            return -1
        self.core_mask = core_mask
        return 0

    def inference(self, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
        assert self.core_mask is not None, "inference before init_runtime"
        assert not self.released, "inference after release"
        (batch,) = inputs
        if batch.shape != self.input_shape or batch.dtype != np.uint8:
            return None  # the SDK logs "input shape mismatch" and returns None
        self.inputs.append(batch.copy())
        return None if self.outputs is None else [o.copy() for o in self.outputs]

    def release(self) -> None:
        self.released = True


@pytest.fixture
def rknnlite(monkeypatch: pytest.MonkeyPatch) -> type[RKNNLiteDouble]:
    """Installs the double as `rknnlite.api`, where the backend imports it from."""
    package = types.ModuleType("rknnlite")
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = RKNNLiteDouble  # type: ignore[attr-defined]
    package.api = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rknnlite", package)
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    monkeypatch.setattr(RKNNLiteDouble, "instances", [])
    monkeypatch.setattr(RKNNLiteDouble, "outputs", None)
    return RKNNLiteDouble


@pytest.fixture
def model_files(tmp_path: Path) -> tuple[Path, Path]:
    rknn = tmp_path / "yolov8n.rknn"
    rknn.write_bytes(b"RKNN")  # the double only checks the file is there
    labels = tmp_path / "labels.txt"
    labels.write_text("person\nbicycle\ncar\n")
    return rknn, labels


def spec(rknn: Path, labels: Path, **overrides: object) -> RknnLiteModel:
    fields: dict = {
        "id": "yolov8n",
        "path": str(rknn),
        "labels": str(labels),
        "decoder": "yolo_split",
        "resize": "letterbox",
        "pad_value": 0,
        "input_size": (640, 640),
        "core_mask": 2,
    }
    return RknnLiteModel(**(fields | overrides))


def test_detects_through_the_npu_contract(
    rknnlite: type[RKNNLiteDouble],
    model_files: tuple[Path, Path],
    split_outputs: Callable[..., list[np.ndarray]],
) -> None:
    """NHWC uint8 in on the chosen core; the split outputs decode to boxes in original pixels."""
    # a 1280x720 photo letterboxes to 640x360 at gain 0.5, 140 px of black above and below
    rknnlite.outputs = split_outputs([((100.0, 200.0, 300.0, 400.0, 2, 0.85), 16)], classes=3)
    detector = Detector(spec(*model_files), create_backend(spec(*model_files)))
    data = io.BytesIO()
    Image.new("RGB", (1280, 720), (200, 10, 10)).save(data, "PNG")
    result = detector.detect(data.getvalue())

    (runtime,) = rknnlite.instances
    assert runtime.core_mask == 2
    (batch,) = runtime.inputs
    assert batch.shape == (1, 640, 640, 3)
    assert batch.dtype == np.uint8
    assert batch[0, 0, 0].tolist() == [0, 0, 0]  # padding, pad_value 0 as rknn_model_zoo
    assert batch[0, 320, 320].tolist() == [200, 10, 10]  # RGB order, not BGR
    (found,) = result.detections
    assert (found.label, found.class_id) == ("car", 2)
    assert found.box == pytest.approx((200.0, 120.0, 600.0, 520.0), abs=0.01)
    detector.close()
    assert runtime.released


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"path": "/nonexistent/model.rknn"}, "load_rknn"),
        ({"core_mask": 4}, "init_runtime"),  # no third core on the RK3576
    ],
)
def test_non_zero_return_codes_raise_and_release(
    rknnlite: type[RKNNLiteDouble],
    model_files: tuple[Path, Path],
    overrides: dict,
    message: str,
) -> None:
    """A failing load or init is a BackendError naming the call, and the runtime is released."""
    with pytest.raises(BackendError, match=message) as caught:
        create_backend(spec(*model_files, **overrides))
    assert caught.value.code == "backend_error"
    (runtime,) = rknnlite.instances
    assert runtime.released


def test_failed_inference_raises(
    rknnlite: type[RKNNLiteDouble], model_files: tuple[Path, Path]
) -> None:
    """`inference` returning None (the SDK's failure) is a BackendError, not a crash later."""
    backend = create_backend(spec(*model_files, input_size=(320, 320)))  # the double wants 640
    with pytest.raises(BackendError, match="inference"):
        backend.infer(np.zeros((320, 320, 3), dtype=np.uint8))


@pytest.mark.skipif(
    importlib.util.find_spec("rknnlite") is not None, reason="rknn-toolkit-lite2 is installed"
)
def test_missing_sdk_disables_only_this_backend(model_files: tuple[Path, Path]) -> None:
    """Without rknn-toolkit-lite2 (any non-aarch64 machine) building it says what is missing."""
    with pytest.raises(BackendError, match=r"edge-vision\[npu\]"):
        create_backend(spec(*model_files))

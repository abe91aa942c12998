"""The NPU conversion's graph cuts (tools/rknn/cut.py), checked without rknn-toolkit2: the cut
ONNX under onnxruntime plus our decoders finds what the full model finds on the sample photos
(graph editing needs `onnx`, in the dev group)."""

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from edge_common.protocol.vision import Detection
from edge_vision import DetectOptions, Detector, OnnxRuntimeModel, create_backend, default_model
from edge_vision.nms import iou_one_to_many

CUT = Path(__file__).resolve().parents[3] / "tools" / "rknn" / "cut.py"
PHOTOS = ["astronaut", "chelsea", "coffee", "motorcycle_left", "grace_hopper"]


@pytest.fixture(scope="module")
def cut() -> ModuleType:
    """tools/rknn/cut.py (a script of the tool environment, not a package)."""
    spec = importlib.util.spec_from_file_location("rknn_cut", CUT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detect_all(spec: OnnxRuntimeModel, photo: Callable[[str], bytes]) -> list[list[Detection]]:
    detector = Detector(spec, create_backend(spec))
    try:
        options = DetectOptions(score_threshold=0.3)
        return [detector.detect(photo(name), options).detections for name in PHOTOS]
    finally:
        detector.close()


def assert_same(full: list[list[Detection]], cut: list[list[Detection]]) -> None:
    """Same labels in the same order, boxes IoU >= 0.98, scores within 0.01, on every photo."""
    assert any(full), "the photos should give detections at all"
    for want, got in zip(full, cut, strict=True):
        assert [d.label for d in got] == [d.label for d in want]
        for a, b in zip(want, got, strict=True):
            assert iou_one_to_many(np.array(a.box), np.array([b.box]))[0] >= 0.98
            assert b.score == pytest.approx(a.score, abs=0.01)


def test_ssd_cut_with_ssd_raw_decoder_matches_full_model(
    cut: ModuleType, photo: Callable[[str], bytes], tmp_path: Path
) -> None:
    """The SSD cut before its post-process + `ssd_raw` (anchors from the graph) = the full SSD."""
    shipped = default_model()
    model, priors = tmp_path / "ssd.cut.onnx", tmp_path / "ssd.priors.npz"
    cut.save_ssd(Path(shipped.path), model, priors)
    with np.load(priors) as saved:
        assert saved["anchors"].shape == (1917, 4)
        assert saved["scales"].tolist() == [10.0, 10.0, 5.0, 5.0]
    cut_spec = OnnxRuntimeModel(
        id="ssd-cut",
        path=str(model),
        labels=shipped.labels,
        decoder="ssd_raw",
        priors=str(priors),
        resize=shipped.resize,
        resample=shipped.resample,
    )
    assert_same(detect_all(shipped, photo), detect_all(cut_spec, photo))


def test_yolo_cut_with_split_decoder_matches_full_model(
    cut: ModuleType, photo: Callable[[str], bytes], fall_model: Path, tmp_path: Path
) -> None:
    """YOLOv8 cut before DFL/concat (per-stride box + class outputs) + `yolo_split` = the export."""
    import onnx

    model = tmp_path / "yolo.cut.onnx"
    cut.save_yolo(fall_model, model)
    outputs = onnx.load(model).graph.output
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in outputs]
    assert shapes == [
        [1, 64, 80, 80],
        [1, 2, 80, 80],
        [1, 64, 40, 40],
        [1, 2, 40, 40],
        [1, 64, 20, 20],
        [1, 2, 20, 20],
    ]
    common = {"resize": "letterbox", "resample": "bilinear", "pad_value": 114}
    full = OnnxRuntimeModel(id="yolo", path=str(fall_model), decoder="yolo", **common)
    split = OnnxRuntimeModel(id="yolo-cut", path=str(model), decoder="yolo_split", **common)
    assert_same(detect_all(full, photo), detect_all(split, photo))

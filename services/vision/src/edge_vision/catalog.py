"""The models edge_vision ships (package data under `edge_vision/models/`)."""

from pathlib import Path

from edge_common.protocol.vision import DEFAULT_MODEL

from edge_vision.backends import OnnxRuntimeModel

MODELS_DIR = Path(__file__).parent / "models"


def default_model(*, threads: int = 1) -> OnnxRuntimeModel:
    """SSD-MobileNet-v2 COCO, int8, 300x300, post-processing in the graph, on the CPU.

    Plain bicubic resize, as the scores in models/PROVENANCE.md were recorded with.
    """
    return OnnxRuntimeModel(
        id=DEFAULT_MODEL,
        path=str(MODELS_DIR / "ssd_mobilenet_v2_coco.onnx"),
        labels=str(MODELS_DIR / "coco_labels.txt"),
        decoder="ssd",
        resize="stretch",
        resample="bicubic",
        threads=threads,
    )

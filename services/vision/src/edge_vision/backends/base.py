"""What every detection backend offers, and what every backend's model entry configures."""

from typing import Annotated, Protocol

import msgspec
import numpy as np
from msgspec import Meta

from edge_vision.decode import DecoderKind
from edge_vision.preprocess import Resample, ResizeMode

Size = tuple[Annotated[int, Meta(gt=0)], Annotated[int, Meta(gt=0)]]


class ModelBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields shared by every backend's model Struct; each adds its own and a `type` tag."""

    id: str
    """Model id clients use in `model`."""
    path: str
    """The model file."""
    decoder: DecoderKind
    """Output family: `ssd` (post-processing in the graph), `ssd_raw` (an SSD cut before it:
    box encodings + class logits, with `priors`), `yolo` (ultralytics single tensor),
    `yolo_split` (rknn_model_zoo's per-scale DFL + class outputs)."""
    priors: str = ""
    """`ssd_raw` only: the `.npz` of anchors and box coder scales written beside the cut model."""
    resize: ResizeMode = "stretch"
    """`stretch` to the input size (SSD's training) or `letterbox` (YOLO's)."""
    resample: Resample = "bicubic"
    """Resize filter; scores move with it (see models/PROVENANCE.md)."""
    pad_value: Annotated[int, Meta(ge=0, le=255)] = 114
    """Letterbox padding grey (ultralytics: 114; rknn_model_zoo's C demo: 0)."""
    labels: str = ""
    """Labels file (`<id> <name>` lines); empty = the model's metadata `names`, if any."""
    memory_mb: Annotated[int, Meta(ge=0)] = 0
    """Memory the loaded model takes, for the board's memory budget; 0 = 1.2 x the file's
    size."""


class Backend(Protocol):
    """A loaded model: RGB pixels in, the runtime's raw outputs out."""

    input_size: tuple[int, int]
    """(width, height) the image must be resized to."""
    metadata: dict[str, str]
    """The model file's key/value metadata (ultralytics' `names`, ...); may be empty."""

    def infer(self, image: np.ndarray) -> list[np.ndarray]:
        """Run one (height, width, 3) uint8 RGB image of `input_size`; blocking."""
        ...

    def close(self) -> None:
        """Free the runtime (NPU context, session); the backend is unusable after."""
        ...

"""Graph cuts before the post-processing an NPU cannot run, as rknn_model_zoo does.

- SSD-MobileNet-v2 (TFLite detection post-process, converted by tf2onnx): cut before the box
  decoding and NMS, and its NHWC input turned NCHW (what rknn-toolkit2 expects). The cut graph
  outputs the raw box encodings `[1, N, 4]` (ty, tx, th, tw) and
  the class logits `[1, N, 1 + classes]` (background first); the anchors (a uint8 constant in the
  graph, dequantised here) and the box coder's scales go to a `.npz` beside it, for
  edge_vision's `ssd_raw` decoder.
- YOLOv8 (ultralytics export, single `[1, 4 + nc, N]` output): cut before the DFL and the concat.
  The cut graph outputs, per stride 8, 16, 32, the box distribution `[1, 64, H, W]` and the
  class scores `[1, nc, H, W]` (sigmoid added), edge_vision's `yolo_split` layout.

Needs only `onnx` and numpy, so the default test suite can check the cuts under onnxruntime
without rknn-toolkit2. `python cut.py ssd|yolo SRC DST` runs one cut.
"""

import argparse
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

# tf2onnx keeps the TFLite tensor names for these (its own constants get run-dependent names,
# see edge_vision/models/PROVENANCE.md, so nothing below relies on those).
SSD_BOXES = "Squeeze_dequant"
"""Box encodings, dequantised, `[1, N, 4]`: the input of the box decoding."""
SSD_LOGITS = "concat_dequant"
"""Class logits, dequantised, `[1, N, 1 + classes]`: the input of the score sigmoid."""
SSD_ANCHORS = "anchors"
"""uint8 `[N, 4]` constant: anchor y-centre, x-centre, height, width (0-1), quantised."""

# ultralytics' Detect head: cv2.<level>.2 is a level's last box conv, cv3.<level>.2 its class conv.
_YOLO_HEAD = re.compile(r"/model\.\d+/cv([23])\.(\d)/cv\1\.\2\.2/Conv$")


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


def _extract(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The subgraph from the model's inputs to `outputs`, keeping its metadata (ultralytics'
    `names`), which onnx's Extractor drops."""
    inputs = [i.name for i in model.graph.input]
    # data propagation: the SSD's Reshape targets are computed, and the Extractor's own
    # inference (without it) leaves the cut tensors' shapes unknown
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    cut = Extractor(model).extract_model(inputs, outputs)
    cut.metadata_props.extend(model.metadata_props)
    cut.producer_name = model.producer_name
    onnx.checker.check_model(cut)
    return cut


def ssd_priors(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The anchors (N, 4: y-centre, x-centre, height, width; float32, 0-1) and the box coder's
    scales (4: y, x, h, w) the graph decodes with.

    The anchors are dequantised with the graph's own DequantizeLinear parameters; the scales
    are the constant the box encodings are divided by."""
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    if SSD_ANCHORS not in constants or SSD_BOXES not in {o for n in graph.node for o in n.output}:
        raise ValueError("not tf2onnx's SSD with the TFLite detection post-process")
    anchors = constants[SSD_ANCHORS]
    # anchors -> Slice -> DequantizeLinear(scale, zero point): every slice shares the parameters
    dequantize = next(
        node
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        for producer in graph.node
        if producer.op_type == "Slice"
        and producer.input[0] == SSD_ANCHORS
        and node.input[0] == producer.output[0]
    )
    scale = constants[dequantize.input[1]].astype(np.float32)
    zero_point = constants[dequantize.input[2]].astype(np.float32)
    priors = (anchors.astype(np.float32) - zero_point) * scale
    (divide,) = [n for n in _consumers(graph, SSD_BOXES) if n.op_type == "Div"]
    scales = constants[divide.input[1]].astype(np.float32).reshape(4)
    return priors, scales


def channels_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its NHWC image input taken as NCHW instead (a Transpose in front).

    rknn-toolkit2 reads an ONNX input's dim 1 as its channels (and inference feeds NHWC
    pixels into that NCHW layout itself); the TFLite-born SSD takes NHWC."""
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    n, h, w, c = (d.dim_value for d in dims)
    nhwc = f"{image.name}_nhwc"
    for node in model.graph.node:
        node.input[:] = [nhwc if name == image.name else name for name in node.input]
    model.graph.node.insert(
        0, helper.make_node("Transpose", [image.name], [nhwc], name=nhwc, perm=[0, 2, 3, 1])
    )
    for dim, size in zip(dims, (n, c, h, w), strict=True):
        dim.dim_value = size
    return model


def cut_ssd(model: onnx.ModelProto) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The SSD up to its box encodings and class logits, taking NCHW, plus its anchors and
    scales."""
    anchors, scales = ssd_priors(model)
    return channels_first(_extract(model, [SSD_BOXES, SSD_LOGITS])), anchors, scales


def yolo_head(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(box conv output, class conv output) per level, stride 8 first."""
    found: dict[tuple[str, str], str] = {}
    for node in model.graph.node:
        if match := _YOLO_HEAD.search(node.name):
            found[match.group(1), match.group(2)] = node.output[0]
    levels = sorted({level for _, level in found})
    if not levels or any(("2", lv) not in found or ("3", lv) not in found for lv in levels):
        raise ValueError("no ultralytics Detect head (cv2.N.2 / cv3.N.2 convs) in the graph")
    return [(found["2", lv], found["3", lv]) for lv in levels]


def cut_yolo(model: onnx.ModelProto) -> onnx.ModelProto:
    """The YOLOv8 up to its per-level box distributions and sigmoid class scores."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # edited below: a copy
    outputs: list[str] = []
    for level, (box, cls) in enumerate(yolo_head(model)):
        scores = f"scores_{level}"
        model.graph.node.append(helper.make_node("Sigmoid", [cls], [scores], name=scores))
        outputs += [box, scores]
    return _extract(model, outputs)


def save_ssd(src: Path, dst: Path, priors: Path) -> None:
    """Cut the SSD ONNX at `src` into `dst`, its anchors and scales into `priors` (.npz)."""
    cut, anchors, scales = cut_ssd(onnx.load(src))
    onnx.save(cut, dst)
    np.savez(priors, anchors=anchors, scales=scales)


def save_yolo(src: Path, dst: Path) -> None:
    """Cut the YOLOv8 ONNX at `src` into `dst`."""
    onnx.save(cut_yolo(onnx.load(src)), dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=["ssd", "yolo"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    if args.family == "ssd":
        save_ssd(args.src, args.dst, args.dst.with_suffix(".priors.npz"))
    else:
        save_yolo(args.src, args.dst)


if __name__ == "__main__":
    main()

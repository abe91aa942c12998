"""ONNX -> `.rknn` for the RK3576 NPU, INT8-calibrated on sample photos, graph cut first.

For each model edge_vision runs (the shipped SSD-MobileNet-v2 COCO, a YOLOv8 export), in OUT:

- `<name>.cut.onnx`: the model cut before the post-processing the NPU cannot run (cut.py);
  the SSD also gets `<name>.priors.npz` (anchors and box coder scales) for the `ssd_raw` decoder
- `calibration/<name>/*.png` + `<name>.dataset.txt`: the sample photos through edge_vision's own
  pre-processing for that model (resize mode, filter, padding), so the quantiser sees exactly
  what inference will be fed; PNG keeps those pixels exact
- `<name>.rknn`: rknn-toolkit2's INT8 (w8a8) build for `rk3576`. A float model (the YOLO) is
  calibrated on those photos; an already-INT8 one (the SSD: TFLite's quantisation-aware uint8
  model, QDQ pairs in the ONNX) keeps its own scales, as rknn-toolkit2 requires

The photos are read where their wheels put them in the project's venv (scikit-image's
`skimage/data`, matplotlib's `grace_hopper.jpg`), never copied into the repository. Runs in
tools/rknn's own environment (rknn-toolkit2 and its pins):

    uv run --project tools/rknn python tools/rknn/convert.py [--out DIR] [--models ssd yolo]
"""

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cut
from edge_vision.backends import OnnxRuntimeModel
from edge_vision.catalog import default_model
from edge_vision.preprocess import ImageLimits, fit, open_image
from PIL import Image

if TYPE_CHECKING:
    from rknn.api import RKNN

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "build"
PLATFORM = "rk3576"

CALIBRATION = [
    "skimage/data/astronaut.png",
    "skimage/data/camera.png",
    "skimage/data/chelsea.png",
    "skimage/data/coffee.png",
    "skimage/data/motorcycle_left.png",
    "skimage/data/motorcycle_right.png",
    "skimage/data/rocket.jpg",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
]
"""Photos of people, animals, vehicles and things (the bench's five among them), relative to
the venv's site-packages."""


def site_packages(venv: Path) -> Path:
    """The site-packages of `venv` (the project's, which holds the sample photos)."""
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {venv}: run ./dev first")
    return found[0]


@dataclass(frozen=True)
class Target:
    """One model to convert: where its ONNX is, how to cut it, and how edge_vision runs it."""

    name: str
    source: Callable[[Path], Path]
    """site-packages -> the full ONNX model."""
    family: str
    """`ssd` or `yolo` (which cut)."""
    spec: Callable[[Path, Path], OnnxRuntimeModel]
    """(cut ONNX, priors) -> edge_vision's spec for the cut model (decoder, resize, labels)."""
    mean: float
    std: float
    """The NPU takes 0-255 uint8; (pixel - mean) / std is baked into the `.rknn`, standing in for
    what the ONNX expects (the SSD: raw uint8; the YOLO: float 0-1)."""
    quantized: bool
    """The ONNX is already INT8 (QuantizeLinear/DequantizeLinear pairs carrying the source's own
    scales): rknn-toolkit2 keeps those and refuses to calibrate again."""


def _ssd_spec(model: Path, priors: Path) -> OnnxRuntimeModel:
    shipped = default_model()
    return OnnxRuntimeModel(
        id=f"{shipped.id}-cut",
        path=str(model),
        labels=shipped.labels,
        decoder="ssd_raw",
        priors=str(priors),
        resize=shipped.resize,
        resample=shipped.resample,
    )


def _yolo_spec(model: Path, _priors: Path) -> OnnxRuntimeModel:
    # ultralytics' preprocessing: letterbox on grey 114, bilinear; labels from the metadata
    return OnnxRuntimeModel(
        id="yolov8-fall-cut",
        path=str(model),
        decoder="yolo_split",
        resize="letterbox",
        resample="bilinear",
        pad_value=114,
    )


TARGETS = {
    "ssd": Target(
        name="ssd_mobilenet_v2_coco",
        source=lambda _site: Path(default_model().path),
        family="ssd",
        spec=_ssd_spec,
        mean=0.0,
        std=1.0,
        # TFLite's quantisation-aware uint8 model, kept by tf2onnx as QDQ pairs
        quantized=True,
    ),
    "yolo": Target(
        name="yolov8_fall",
        source=lambda site: site / "fall_detection" / "models" / "best_fp16.onnx",
        family="yolo",
        spec=_yolo_spec,
        mean=0.0,
        std=255.0,
        quantized=False,
    ),
}


@dataclass(frozen=True)
class Converted:
    """What one conversion wrote, and how long its steps took."""

    target: Target
    source: Path
    cut_model: Path
    priors: Path
    rknn: Path
    cut_s: float
    build_s: float

    def spec(self) -> OnnxRuntimeModel:
        """edge_vision's spec for the cut model (the simulator runs the same decoder on it)."""
        return self.target.spec(self.cut_model, self.priors)


def write_calibration(target: Target, spec: OnnxRuntimeModel, site: Path, out: Path) -> Path:
    """The calibration photos pre-processed for `spec`'s input, and the dataset list naming them."""
    import onnxruntime

    session = onnxruntime.InferenceSession(spec.path, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    height, width = shape[2:] if shape[1] == 3 else shape[1:3]
    folder = out / "calibration" / target.name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for relative in CALIBRATION:
        image = open_image((site / relative).read_bytes(), ImageLimits())
        pixels, _ = fit(image, (width, height), spec.resize, spec.resample, spec.pad_value)
        path = folder / f"{Path(relative).stem}.png"
        Image.fromarray(pixels).save(path)
        lines.append(str(path))
    dataset = out / f"{target.name}.dataset.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


@contextmanager
def building(target: Target, site: Path, out: Path) -> Iterator[tuple[Converted, "RKNN"]]:
    """Cut, calibrate, build and export `target` into `out`; yields what was written and the
    built RKNN object (its simulator runs only a model built in the same session, not one
    loaded back with load_rknn), released on exit. Raises RuntimeError when rknn fails."""
    from rknn.api import RKNN  # ~3 s to import (torch): only when converting

    out.mkdir(parents=True, exist_ok=True)
    source = target.source(site)
    cut_model = out / f"{target.name}.cut.onnx"
    priors = out / f"{target.name}.priors.npz"
    started = time.perf_counter()
    if target.family == "ssd":
        cut.save_ssd(source, cut_model, priors)
    else:
        cut.save_yolo(source, cut_model)
    cut_s = time.perf_counter() - started
    dataset = None
    if not target.quantized:
        dataset = str(write_calibration(target, target.spec(cut_model, priors), site, out))

    rknn_path = out / f"{target.name}.rknn"
    started = time.perf_counter()
    rknn = RKNN(verbose=False)
    try:
        rknn.config(
            mean_values=[[target.mean] * 3],
            std_values=[[target.std] * 3],
            target_platform=PLATFORM,
        )
        # rknn-toolkit2 reports failure as a non-zero return code, not an exception
        for step, ret in (
            ("load_onnx", lambda: rknn.load_onnx(model=str(cut_model))),
            ("build", lambda: rknn.build(do_quantization=dataset is not None, dataset=dataset)),
            ("export_rknn", lambda: rknn.export_rknn(str(rknn_path))),
        ):
            if (code := ret()) != 0:
                raise RuntimeError(f"{target.name}: RKNN.{step} returned {code}")
        converted = Converted(
            target=target,
            source=source,
            cut_model=cut_model,
            priors=priors,
            rknn=rknn_path,
            cut_s=cut_s,
            build_s=time.perf_counter() - started,
        )
        yield converted, rknn
    finally:
        rknn.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--models", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument(
        "--venv", type=Path, default=REPO / ".venv", help="the venv holding the sample photos"
    )
    args = parser.parse_args()
    site = site_packages(args.venv)
    for key in args.models:
        with building(TARGETS[key], site, args.out) as (done, _):
            print(
                f"{done.rknn} ({done.rknn.stat().st_size / 1e6:.1f} MB): cut {done.cut_s:.1f} s, "
                f"build {done.build_s:.1f} s"
            )


if __name__ == "__main__":
    main()

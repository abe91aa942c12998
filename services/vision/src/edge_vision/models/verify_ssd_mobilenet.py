"""Check the converted SSD-MobileNet-v2 ONNX on photos that ship in wheels; print PROVENANCE rows.

Run in a throwaway environment holding onnxruntime, pillow, scikit-image and matplotlib (and,
for the side-by-side with the source model, tensorflow-cpu 2.15 + numpy<2):

    python verify_ssd_mobilenet.py MODEL_DIR [TFLITE]

It prints the model's I/O signature, the detections per photo (score >= 0.5) with the top one's
box in original pixel coordinates, the single-thread latency, and, given the source .tflite, the
largest score/box difference between the ONNX and TFLite outputs.
"""

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import onnxruntime as ort
import skimage
from PIL import Image

SIZE = 300
THRESHOLD = 0.5
TIMING_RUNS = 50

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, int]


def photos() -> dict[str, Path]:
    """The sample photos, found inside the installed wheels (no download)."""
    skdata = Path(skimage.__file__).parent / "data"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png"]
    found = {Path(n).stem: skdata / n for n in names}
    found["grace_hopper"] = mpl / "grace_hopper.jpg"
    return found


def read_labels(path: Path) -> dict[int, str]:
    """`coco_labels.txt` lines are `<id>  <name>`; ids are the model's class outputs, with gaps."""
    labels = {}
    for line in path.read_text().splitlines():
        ident, name = line.split(maxsplit=1)
        labels[int(ident)] = name.strip()
    return labels


def prepare(image: Image.Image) -> np.ndarray:
    """Plain (aspect-distorting) resize to 300x300, RGB uint8 NHWC.

    Bicubic is Pillow's default for `resize`; scores move by up to ~0.1 with the filter (see
    PROVENANCE.md), so a test must use the filter its recorded numbers came from.
    """
    resized = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)[np.newaxis]


def kept(outputs: Outputs) -> list[tuple[int, float, np.ndarray]]:
    """(class, score, box) of the detections at or above the threshold, best first."""
    boxes, classes, scores, count = outputs
    found = [(int(classes[i]), float(scores[i]), boxes[i]) for i in range(count)]
    return [(cls, score, box) for cls, score, box in found if score >= THRESHOLD]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (ymin, xmin, ymax, xmax) boxes."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def onnx_runner(model: Path) -> tuple[ort.InferenceSession, Callable[[np.ndarray], Outputs]]:
    """One-thread session: the number reported is per core, as on a board sharing its cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> Outputs:
        boxes, classes, scores, count = session.run(None, {name: batch})
        return boxes[0], classes[0], scores[0], int(count[0])

    return session, run


def tflite_runner(model: Path) -> Callable[[np.ndarray], Outputs]:
    """The source model under TFLite's own interpreter, for the side-by-side."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outs = [d["index"] for d in interpreter.get_output_details()]

    def run(batch: np.ndarray) -> Outputs:
        interpreter.set_tensor(index, batch)
        interpreter.invoke()
        boxes, classes, scores, count = (interpreter.get_tensor(i) for i in outs)
        return boxes[0], classes[0], scores[0], int(count[0])

    return run


def ms_per_image(run: Callable[[np.ndarray], Outputs], batch: np.ndarray) -> str:
    """Median and best wall time of one inference after a warm-up (best: least disturbed)."""
    run(batch)
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1000)
    return f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms"


def main() -> None:
    model_dir = Path(sys.argv[1])
    labels = read_labels(model_dir / "coco_labels.txt")
    session, run = onnx_runner(model_dir / "ssd_mobilenet_v2_coco.onnx")
    reference = tflite_runner(Path(sys.argv[2])) if len(sys.argv) > 2 else None

    print(f"onnxruntime {ort.__version__}")
    for kind, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for arg in args:
            print(f"{kind} {arg.name!r} {arg.shape} {arg.type}")

    for name, path in photos().items():
        image = Image.open(path)
        width, height = image.size
        batch = prepare(image)
        outputs = run(batch)
        print(f"\n{name} {width}x{height}, count={outputs[3]}, detections >= {THRESHOLD}:")
        for cls, score, box in kept(outputs):
            # Boxes can stray a little outside 0-1 (seen: -0.013); clip as the service must.
            ymin, xmin, ymax, xmax = np.clip(box, 0.0, 1.0)
            pixels = [round(xmin * width), round(ymin * height)]
            pixels += [round(xmax * width), round(ymax * height)]
            print(f"  {labels[cls]} (class {cls}) {score:.3f} box x0,y0,x1,y1 px {pixels}")
        print(f"  onnxruntime 1 thread: {ms_per_image(run, batch)}")
        if reference is not None:
            ours, theirs = kept(outputs), kept(reference(batch))
            same = [c for c, _, _ in ours] == [c for c, _, _ in theirs]
            pairs = list(zip(ours, theirs, strict=False))
            score_diff = max((abs(a[1] - b[1]) for a, b in pairs), default=0.0)
            min_iou = min((iou(a[2], b[2]) for a, b in pairs), default=1.0)
            print(
                f"  vs tflite (>= {THRESHOLD}): same classes in order {same}, "
                f"max |score diff| {score_diff:.3f}, min IoU {min_iou:.3f}, "
                f"tflite 1 thread: {ms_per_image(reference, batch)}"
            )

    blank = np.full((1, SIZE, SIZE, 3), 128, dtype=np.uint8)
    _, _, scores, count = run(blank)
    print(f"\nblank grey: count={count}, max score {scores[:count].max(initial=0.0):.3f}")


if __name__ == "__main__":
    main()

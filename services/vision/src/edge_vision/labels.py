"""Class names: a model's class id -> label."""

import ast
from pathlib import Path

Labels = dict[int, str]


def read_labels(path: Path) -> Labels:
    """A labels file: lines `<id> <name>` (ids may have gaps, as COCO's 90-id numbering does),
    or just `<name>` per line, the line number then being the id."""
    labels: Labels = {}
    for number, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        first, _, rest = line.strip().partition(" ")
        if first.isdigit() and rest.strip():
            labels[int(first)] = rest.strip()
        else:
            labels[number] = line.strip()
    return labels


def labels_from_metadata(metadata: dict[str, str]) -> Labels:
    """ultralytics writes `names` into the ONNX metadata as a Python dict literal,
    e.g. "{0: 'Normal', 1: 'Fall'}"; literal_eval reads it without running code."""
    text = metadata.get("names")
    if not text:
        return {}
    names = ast.literal_eval(text)
    if not isinstance(names, dict):
        raise ValueError(f"ONNX metadata `names` is not a dict: {text[:80]!r}")
    return {int(k): str(v) for k, v in names.items()}


def label_of(labels: Labels, class_id: int) -> str:
    """The name of `class_id`, or a stable placeholder for ids the labels do not cover."""
    return labels.get(class_id, f"class_{class_id}")

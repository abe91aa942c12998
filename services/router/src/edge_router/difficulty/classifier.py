"""The difficulty classifier: logistic regression over a prompt's unit sentence embedding,
with the weights train.py fitted (weights.json). Pure Python, read once."""

import array
import math
from functools import cache
from pathlib import Path

import msgspec

HERE = Path(__file__).parent
WEIGHTS = HERE / "weights.json"
PROMPTS = HERE / "prompts.jsonl"


class Weights(msgspec.Struct, frozen=True, kw_only=True):
    """What train.py writes: the classifier and where it came from."""

    embedder: str
    """The rag embedder whose vectors the weights read (its id)."""
    dimension: int
    weights: list[float]
    bias: float
    threshold: float
    """Probability from which a prompt counts as hard (PolicySettings.difficulty_threshold
    overrides it)."""
    l2: float
    """The regularisation the weights were fitted with."""
    trained_on: int
    heldout: int
    heldout_agreement: float
    """Share of held-out prompts the classifier labels as prompts.jsonl does."""


class Classifier:
    def __init__(self, w: Weights) -> None:
        self.embedder, self.threshold, self.dimension = w.embedder, w.threshold, w.dimension
        self._weights, self._bias = w.weights, w.bias

    def probability(self, vector: "array.array[float] | list[float]") -> float:
        """P(the prompt needs the cloud) for its unit embedding."""
        z = self._bias + math.fsum(map(float.__mul__, self._weights, vector))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@cache
def classifier() -> Classifier:
    """The shipped classifier (weights.json), read once."""
    return Classifier(msgspec.json.decode(WEIGHTS.read_bytes(), type=Weights))

"""Fit the difficulty classifier on prompts.jsonl and write weights.json.

Embeds every prompt with the rag worker's default embedder, in process (edge_rag's Embedder:
the same model, tokenizer and int8 graph the worker serves), reading each prompt through
policy.embedding_window exactly as the router does. Fits L2-regularised logistic regression
by Newton's method on the `train` split (the strength picked by 5-fold cross-validation on
`train`), then prints agreement and the confusion matrix on the `heldout` split, which took no
part in fitting or in picking anything.

    .venv/bin/python -m edge_router.difficulty.train [--write]
"""

import argparse
import json

import msgspec
import numpy as np
from edge_rag.backends import create_backend, default_embedder
from edge_rag.embed import Embedder

from edge_router import policy
from edge_router import protocol as p
from edge_router.difficulty.classifier import PROMPTS, WEIGHTS, Weights
from edge_router.settings import PolicySettings

L2_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
"""Regularisation strengths tried (per sample: the penalty is l2 * n / 2 * |w|^2)."""
THRESHOLD = 0.5
FOLDS = 5
LABELS = ("local", "cloud")


def fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and bias of L2-regularised logistic regression (the bias unpenalised)."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, l2 * n)
    penalty[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-a @ w))
        grad = a.T @ (p - y) + penalty * w
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def predict(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ w + b)))


def cross_validated(x: np.ndarray, y: np.ndarray, l2: float) -> float:
    """Agreement of `l2` over FOLDS folds of the training split (interleaved, deterministic)."""
    folds = np.arange(len(y)) % FOLDS
    right = 0
    for k in range(FOLDS):
        w, b = fit(x[folds != k], y[folds != k], l2)
        right += int(((predict(x[folds == k], w, b) >= THRESHOLD) == y[folds == k]).sum())
    return right / len(y)


def confusion(y: np.ndarray, p: np.ndarray) -> list[list[int]]:
    """Rows: the label (local, cloud); columns: the classifier's call (local, cloud)."""
    return [[int(((y == i) & ((p >= THRESHOLD) == j)).sum()) for j in (0, 1)] for i in (0, 1)]


def report(name: str, rows: list[dict], y: np.ndarray, p: np.ndarray) -> None:
    matrix = confusion(y, p)
    agree = (matrix[0][0] + matrix[1][1]) / len(y)
    print(f"{name}: {len(y)} prompts, agreement {agree:.1%}")
    print(f"{'':>16}{'called local':>14}{'called cloud':>14}")
    for label, row in zip(LABELS, matrix, strict=True):
        print(f"{'labelled ' + label:>16}{row[0]:>14}{row[1]:>14}")
    for lang in sorted({r["language"] for r in rows}):
        mask = np.array([r["language"] == lang for r in rows])
        print(f"  {lang}: {((p[mask] >= THRESHOLD) == y[mask]).mean():.0%} of {mask.sum()}")


def keyword_calls(rows: list[dict]) -> np.ndarray:
    """1.0 where the keyword score (the fallback, and the policy before the classifier)
    calls the prompt hard, as a one-message `auto` request."""
    cfg = PolicySettings()
    calls = []
    for r in rows:
        request = p.ChatCompletionRequest(model="auto", messages=[p.UserMessage(content=r["text"])])
        calls.append(policy.difficulty(policy.features_of(request), cfg).hard)
    return np.array(calls, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write weights.json")
    args = parser.parse_args()
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]
    spec = default_embedder()
    embedder = Embedder(spec, create_backend(spec))
    texts = [policy.embedding_window([r["text"]]) for r in rows]
    x = np.vstack([embedder.embed([t]).vectors for t in texts]).astype(np.float64)
    y = np.array([LABELS.index(r["label"]) for r in rows], dtype=np.float64)
    train = np.array([r["split"] == "train" for r in rows])
    scores = {l2: cross_validated(x[train], y[train], l2) for l2 in L2_GRID}
    l2 = max(L2_GRID, key=lambda s: (scores[s], s))  # ties: the stronger regularisation
    print("5-fold agreement on train by l2:", {k: round(v, 3) for k, v in scores.items()})
    w, b = fit(x[train], y[train], l2)
    held = [r for r, t in zip(rows, train, strict=True) if not t]
    report("train", [r for r, t in zip(rows, train, strict=True) if t], y[train],
           predict(x[train], w, b))  # fmt: skip
    p_held = predict(x[~train], w, b)
    report("held-out", held, y[~train], p_held)
    for r, prob, label in zip(held, p_held, y[~train], strict=True):
        if (prob >= THRESHOLD) != label:
            print(f"  missed ({r['label']}, p={prob:.2f}): {r['text'][:90]!r}")
    report("held-out, keyword score", held, y[~train], keyword_calls(held))
    matrix = confusion(y[~train], p_held)
    weights = Weights(
        embedder=embedder.model,
        dimension=int(x.shape[1]),
        weights=[round(float(v), 5) for v in w],
        bias=round(b, 5),
        threshold=THRESHOLD,
        l2=l2,
        trained_on=int(train.sum()),
        heldout=int((~train).sum()),
        heldout_agreement=round((matrix[0][0] + matrix[1][1]) / int((~train).sum()), 4),
    )
    if args.write:
        WEIGHTS.write_bytes(msgspec.json.format(msgspec.json.encode(weights)) + b"\n")
        print(f"wrote {WEIGHTS} (l2 {l2})")
    embedder.close()


if __name__ == "__main__":
    main()

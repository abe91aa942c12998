"""The CPU backend: an ONNX embedding model on onnxruntime (any BERT-class export whose inputs
are input_ids, attention_mask and optionally token_type_ids).

A rewritten graph (backends/graph.py) runs as two sessions: calls without padding (every
call of a one-text-per-call embedder) on the graph without the attention mask, which is
faster; padded batches on the masked graph, loaded on the first one."""

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edge_rag.backends.base import OnnxRuntimeEmbedder
from edge_rag.backends.graph import rewritten, unmasked
from edge_rag.errors import BackendError

if TYPE_CHECKING:
    import onnxruntime as ort

SLOWER = ["SkipLayerNormFusion"]
"""onnxruntime fusions that slow these models down: its CPU SkipLayerNormalization took
175 us where the Add + LayerNormalization it replaces took 29 (one [1, 70, 384] residual,
onnxruntime 1.32); without it the default model runs ~25% faster, same vectors."""


class OnnxRuntimeBackend:
    device: Literal["cpu", "npu"] = "cpu"
    fixed_shape: tuple[int, int] | None = None  # onnxruntime takes dynamic axes

    def __init__(self, spec: OnnxRuntimeEmbedder) -> None:
        import onnxruntime as ort  # here: a missing runtime disables only this backend

        if not Path(spec.path).is_file():
            raise BackendError(f"embedding model {spec.id}: no file {spec.path}")
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = spec.threads
        self._options.inter_op_num_threads = 1  # sequential graph: no inter-op pool to spin up
        self._options.log_severity_level = 3  # int8 graphs warn about unused initialisers
        self._lock = threading.Lock()
        self._padded: ort.InferenceSession | None = None
        try:
            self._path = rewritten(spec.path, spec.optimize)
            graph = unmasked(self._path) if self._path != spec.path else None
            self._unpadded = self._load(graph) if graph else None
            session = self._unpadded or self._padded_session()
        except Exception as exc:  # onnx and onnxruntime raise their own untyped errors
            raise BackendError(
                f"embedding model {spec.id}: cannot load {spec.path}: {exc}"
            ) from exc
        self._inputs = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise BackendError(f"embedding model {spec.id}: no input {', '.join(missing)}")
        outputs = [o.name for o in session.get_outputs()]
        if spec.output and spec.output not in outputs:
            raise BackendError(f"embedding model {spec.id}: no output {spec.output!r}")
        self._output = spec.output or outputs[0]

    def infer(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = token_type_ids
        try:
            session = self._unpadded
            if session is None or not attention_mask.all():
                session = self._padded_session()
            [out] = session.run([self._output], feed)
        except Exception as exc:
            raise BackendError(f"embedding inference failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def _padded_session(self) -> "ort.InferenceSession":
        """The graph as rewritten (with the attention mask), loaded on first use."""
        with self._lock:
            if self._padded is None:
                self._padded = self._load(self._path)
            return self._padded

    def _load(self, model: str) -> "ort.InferenceSession":
        import onnxruntime as ort

        return ort.InferenceSession(
            model, self._options, providers=["CPUExecutionProvider"], disabled_optimizers=SLOWER
        )

    def close(self) -> None:
        self._unpadded = self._padded = None

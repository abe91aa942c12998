"""The CPU backend: an ONNX embedding model on onnxruntime (any BERT-class export whose inputs
are input_ids, attention_mask and optionally token_type_ids)."""

from pathlib import Path
from typing import Literal

import numpy as np

from edge_rag.backends.base import OnnxRuntimeEmbedder
from edge_rag.backends.graph import rewritten
from edge_rag.errors import BackendError

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
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1  # sequential graph: no inter-op pool to spin up
        options.log_severity_level = 3  # int8 graphs warn about unused initialisers
        try:
            path = rewritten(spec.path, spec.optimize)
            self._session = ort.InferenceSession(
                path, options, providers=["CPUExecutionProvider"], disabled_optimizers=SLOWER
            )
        except Exception as exc:  # onnx and onnxruntime raise their own untyped errors
            raise BackendError(
                f"embedding model {spec.id}: cannot load {spec.path}: {exc}"
            ) from exc
        self._inputs = {i.name for i in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise BackendError(f"embedding model {spec.id}: no input {', '.join(missing)}")
        outputs = [o.name for o in self._session.get_outputs()]
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
            [out] = self._session.run([self._output], feed)
        except Exception as exc:
            raise BackendError(f"embedding inference failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        del self._session

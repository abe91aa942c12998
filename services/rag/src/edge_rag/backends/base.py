"""What every embedding backend offers, and what every backend's model entry configures.

A backend runs token ids through the network and nothing else: tokenizing, batching,
padding, pooling and normalising are the Embedder's (edge_rag.embed), so an NPU backend
(RKNN: fixed shapes, converted with the recipe of edge_vision's models) only has to say
which shape it was built for.
"""

from typing import Annotated, Literal, Protocol

import msgspec
import numpy as np
from msgspec import Meta


class EmbedderBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields shared by every backend's model Struct; each adds its own and a `type` tag."""

    id: str
    """Model id clients use (`model` of /v1/embeddings)."""
    path: str
    """The model file."""
    tokenizer: str
    """The Hugging Face `tokenizer.json` that goes with it (BERT WordPiece, or any other)."""
    max_tokens: Annotated[int, Meta(ge=8, le=8192)] = 256
    """Longest input in tokens, special tokens included (all-MiniLM-L6-v2: 256)."""
    batch_size: Annotated[int, Meta(ge=1, le=1024)] = 32
    """Texts per inference call."""
    parallel: Annotated[int, Meta(ge=0, le=64)] = 0
    """Inference calls run at once (each batch on its own thread); 0 = one per core."""
    pooled: bool = False
    """The output is already one vector per text (e.g. paraphrase-MiniLM's 4th output);
    False: it is the last hidden state [batch, tokens, dim], mean-pooled over the mask."""
    output: str = ""
    """Output tensor to read; empty = the model's first output."""


class Backend(Protocol):
    """A loaded embedding network: token ids in, hidden states (or pooled vectors) out."""

    device: Literal["cpu", "npu"]
    fixed_shape: tuple[int, int] | None
    """(batch, tokens) every call must have (an RKNN model's static shape): the Embedder
    pads to it; None = any shape."""

    def infer(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> np.ndarray:
        """int64 [batch, tokens] arrays in; [batch, tokens, dim] (or [batch, dim] for a
        pooled model) float32 out; blocking, safe to call from several threads."""
        ...

    def close(self) -> None:
        """Free the runtime; the backend is unusable after."""
        ...


class OnnxRuntimeEmbedder(EmbedderBase, frozen=True, kw_only=True, tag="onnxruntime"):
    """An ONNX model on onnxruntime's CPU provider."""

    threads: Annotated[int, Meta(ge=0)] = 1
    """onnxruntime intra-op threads per call; 0 = one per core. 1: the cores go to
    `parallel` calls instead. One ~70-token text on two threads cost 1.85x the CPU of one
    thread (spinning, barriers), and on a shared machine ingest fell to half (bench/rag.py:
    "1 call x cores" vs the default)."""
    optimize: Literal["int8", "fused", "off"] = "int8"
    """Rewrite the graph once (cached, see backends/graph.py): "fused" = one attention
    kernel per layer instead of torch's decomposed attention; "int8" = that plus int8
    matmuls (about 2x faster on the default model); "off" = run the file as it is."""


Device = Literal["cpu", "npu"]

"""Settings of the rag service (`EDGE_RAG_*`, see edge_common.settings)."""

from edge_common.settings import WorkerSettings

from edge_rag.backends import EmbedderSpec
from edge_rag.store import StoreConfig


class RagSettings(WorkerSettings, frozen=True, kw_only=True):
    port: int = 8103
    """Port of the /health and /metrics HTTP server."""
    data_dir: str = ".run/rag"
    """Where the registry (registry.sqlite3) and the embedded store's files live."""
    embedder: EmbedderSpec | None = None
    """The embedding model, as JSON: {"type": "onnxruntime", "id": ..., "path": MODEL.onnx,
    "tokenizer": tokenizer.json, "max_tokens": 256, "batch_size": 32, "parallel": 0,
    "threads": 1, "pooled": false, "output": "", "optimize": "int8"}: any BERT-class ONNX
    export (e.g. m3e-small for Chinese); "optimize" rewrites its graph once (fused
    attention and GELU, int8 matmuls: see backends/graph.py; "off" runs the file as it is);
    "parallel" calls (0 = one per core) of "threads" onnxruntime threads each; none = the
    bundled all-MiniLM-L6-v2 (384 dimensions), rewritten to int8, one text per call."""
    store: StoreConfig = StoreConfig()
    """The vector store, as JSON: {"type": "qdrant-edge"} (default, in-process, under
    data_dir) or {"type": "qdrant", "url": "http://host:6333", "api_key": "", "prefix": ""}
    (no url: qdrant-client's local mode under data_dir); "hnsw": {"m", "ef_construct",
    "ef", "full_scan_threshold", "quantize", "oversampling"} tunes the index."""
    chunk_tokens: int = 112
    """Most tokens in a chunk (capped to the embedder's max_tokens less 16). 112 + the
    section line + 2 special tokens fit the 128 tokens all-MiniLM-L6-v2 was trained on, and
    embedding cost grows with length (bench/rag.py: chunks/s and tokens/s at 112 vs 200)."""
    overlap_tokens: int = 24
    """Tokens of whole paragraphs or sentences a chunk repeats from the one before."""
    stall_s: float = 60.0
    """An ingest that stores no batch for this long is aborted."""
    ingest_batch: int = 64
    """Chunks embedded and stored per step (a progress event each)."""
